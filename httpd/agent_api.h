/* The agent's REST API as the daemon and the agent both know it: its paths and limits.
 * The agent routes these paths (tools/agent/api.c); the daemon calls them (backend/). The
 * full contract is tools/agent/TASKS-API.md. */
#pragma once

#define AGENT_API_HEALTH  "/api/node/health"  /* GET: the health document */
#define AGENT_API_SYSTEM  "/api/node/system"  /* GET: the system document */
#define AGENT_API_TASKS   "/api/node/tasks"   /* GET: list; POST: dispatch; /{id}/...: one */
#define AGENT_API_STAGING "/api/node/staging" /* /{id}/{name}: a task's inputs, staged */
#define AGENT_API_KNOWLEDGE                                                                        \
	"/api/node/knowledge" /* /{path}?version=&seq=: PUT or DELETE a knowledge version */

/* The largest health or system answer the daemon reads, in bytes. */
#define AGENT_API_DOC_MAX (1u << 20)
/* The most output bytes one GET .../stdout?offset=&limit= returns (and its default). */
#define AGENT_API_OUTPUT_MAX (1024 * 1024)

/* Cores a node can claim; more is a lie (the daemon's range check of "cores"). */
#define AGENT_API_MAX_CORES (1 << 20)
