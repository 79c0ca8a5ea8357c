/* The node API served by the agent: GET /api/node/health and GET /api/node/system. */
#pragma once

#include <stddef.h>

#include "tools/agent/server.h"
#include "tools/agent/sysinfo.h"

/* What the handlers read; passed as the server's userdata. Everything is borrowed and
 * must outlive the server. */
struct api_context {
	const char *name;                /* the node's name in the cluster */
	const char *state_dir;           /* absolute; its filesystem is the reported disk */
	struct sysinfo_sampler *sampler; /* CPU and GPU samples */
};

/* The route table, api_n_routes rows. */
extern const struct route api_routes[];
extern const size_t api_n_routes;
