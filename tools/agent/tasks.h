/* The agent's task registry and the task API (see TASKS-API.md): every task the agent
 * knows, kept in memory and backed by STATE_DIR/tasks/ID, which a supervisor process per
 * task writes (see supervisor.h). The registry never learns a result other than from
 * result.json, so a restarted agent rebuilds it exactly by scanning that directory. */
#pragma once

#include <jansson.h>
#include <stddef.h>

#include "httpd/agent_api.h"
#include "httpd/server.h"

#define TASKS_MAX_RUNNING 256                  /* more running tasks are refused with 503 */
#define TASKS_ID_MAX      200                  /* bytes in a task id */
#define TASKS_OUTPUT_MAX  AGENT_API_OUTPUT_MAX /* bytes per output request, and the default */

struct tasks;

/* Opens the registry under `state_dir` (borrowed): creates STATE_DIR/tasks if needed,
 * re-adopts every task found there and starts keeping spare task directories (spares.h).
 * `exe` (borrowed) is the supervisor program (SUPERVISOR_PROGRAM), which is run for every
 * task; `node` (borrowed) is the agent's name, which error sentences give. Tasks run as
 * the agent's effective user unless their request names another (which only root can
 * grant). Returns a new registry, 0 or -errno. */
int tasks_open(const char *state_dir, const char *exe, const char *node, struct tasks **ret_tasks);
/* The caps on every task's outputs (artifacts.h): a request's own "outputs_max_files"
 * and "outputs_max_bytes" can only lower them. Call before serving. */
void tasks_set_output_limits(struct tasks *t, long long max_files, long long max_bytes);
/* Frees the registry. Running tasks carry on under their supervisors. NULL is a no-op. */
void tasks_close(struct tasks *t);

/* Calls fn(arg) (with the registry's lock held: it must not call back) whenever a task
 * starts or reaches its final state; NULL stops it. Thread-safe. */
void tasks_set_notify(struct tasks *t, void (*fn)(void *arg), void *arg);

/* Reaps supervisors this agent started that have exited, without blocking. Call it on
 * SIGCHLD. Thread-safe. */
void tasks_reap(struct tasks *t);
/* The number of running tasks. Thread-safe. */
size_t tasks_count_running(struct tasks *t);

/* Checks a POST /api/node/tasks body before anything is created: 0, or -EINVAL with one
 * sentence in msg (an unknown field, a bad id, cmd, env, cwd, timeout or user). Borrows. */
int tasks_check_request(json_t *doc, char *msg, size_t msglen);

/* The HTTP handlers, thread-safe. req->params[0] is the task id where the path has one. */
/* POST /api/node/tasks */
int tasks_handle_create(struct tasks *t, struct request *req, struct response *resp);
/* GET /api/node/tasks[?since=T][&index=N&wait=S]: with index, the tasks that changed
 * after change number N and those running; when none changed, the answer waits up to S
 * seconds (a long poll) for one to change. */
int tasks_handle_list(struct tasks *t, struct request *req, struct response *resp);
/* GET /api/node/tasks/ID */
int tasks_handle_get(struct tasks *t, struct request *req, struct response *resp);
/* GET /api/node/tasks/ID/stdout and .../stderr; `stream` is "stdout" or "stderr". */
int tasks_handle_output(struct tasks *t, const char *stream, struct request *req,
			struct response *resp);
/* POST /api/node/tasks/ID/cancel */
int tasks_handle_cancel(struct tasks *t, struct request *req, struct response *resp);
