/* The agent's side of artifacts over HTTP (issue 14; artifacts.h has the files):
 *   GET  /api/node/tasks/ID/files        the task's files.json: {"files": [{"name", "size",
 *                                        "sha256"}], "error"?}; {"files": [], "pending":
 *                                        true} before the task's outputs were collected
 *   GET  /api/node/tasks/ID/files/NAME   one output's bytes (X-Sha256: its digest), sent
 *                                        from the file; also with ?expires=T&sig=S instead
 *                                        of the bearer token (httpd/server.h)
 *   POST /api/node/staging/ID/NAME       {"url", "sha256", "size"?}: fetches an input for
 *                                        the task with dispatch id ID, not created yet,
 *                                        into STATE_DIR/staging/ID/NAME, streamed to disk,
 *                                        and checks its digest; 200 {"name", "size",
 *                                        "sha256"}, 502 when the fetch failed, 409 when the
 *                                        digest differs (nothing is kept then)
 *   PUT  /api/node/staging/ID/NAME[?sha256=HEX]  the input's bytes as the body, written
 *                                        to disk as they arrive (never collected), and
 *                                        checked against HEX when given; answers as POST */
#pragma once

#include <stdbool.h>

#include "httpd/server.h"

/* Empties STATE_DIR/staging: inputs are written there without an fsync (they serve a task
 * that is about to start), so what a crash left there is not trusted. At start. */
void staging_reset(const char *state_dir);

/* Handlers; state_dir is the agent's, absolute; borrowed. req->params[0] is the id,
 * params[1] the name. `stopping`, when it becomes true, aborts a fetch in progress. */
int staging_handle_manifest(const char *state_dir, struct request *req, struct response *resp);
int staging_handle_file(const char *state_dir, struct request *req, struct response *resp);
/* PUT: the upload route's piece handler, and the handler once the body is complete. */
int staging_upload(const char *state_dir, struct request *req, const char *data, size_t len);
int staging_handle_put(const char *state_dir, struct request *req, struct response *resp);
int staging_handle_stage(const char *state_dir, const volatile bool *stopping, struct request *req,
			 struct response *resp);
