/* The node API served by the agent: GET /api/node/health, GET /api/node/system and the
 * task API under /api/node/tasks (tasks.h). */
#pragma once

#include <jansson.h>
#include <stddef.h>

#include "httpd/server.h"
#include "tools/agent/sysinfo.h"
#include "tools/agent/tasks.h"

/* What the handlers read; passed as the server's userdata. Everything is borrowed and
 * must outlive the server. */
struct api_context {
	const char *name;                /* the node's name in the cluster */
	const char *state_dir;           /* absolute; its filesystem is the reported disk */
	struct sysinfo_sampler *sampler; /* CPU and GPU samples */
	struct tasks *tasks;             /* the task registry */
	struct ledger *ledger;           /* --ledger FILE (ledger.h); NULL: none */
	volatile bool stopping;          /* set when the agent stops: fetches give up */
};

/* The documents of GET /api/node/health and GET /api/node/system, also pushed by a joined
 * agent (join.h). Return a new reference, 0 or -errno with one sentence in errbuf. */
int api_health_doc(const struct api_context *ctx, json_t **ret_doc, char *errbuf, size_t errlen);
int api_system_doc(const struct api_context *ctx, json_t **ret_doc, char *errbuf, size_t errlen);

/* The route table, api_n_routes rows. */
extern const struct route api_routes[];
extern const size_t api_n_routes;
/* The requests whose body is streamed to disk (an input sent by the control plane). */
extern const struct upload_route api_uploads[];
extern const size_t api_n_uploads;
