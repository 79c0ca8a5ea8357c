/* The node API served by the agent: GET /api/node/health, GET /api/node/system and the
 * task API under /api/node/tasks (tasks.h). */
#pragma once

#include <stddef.h>

#include "tools/agent/server.h"
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
};

/* The route table, api_n_routes rows. */
extern const struct route api_routes[];
extern const size_t api_n_routes;
