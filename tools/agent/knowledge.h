/* The node's replica of knowledge/ (issue 14): the control plane PUTs every version of
 * every document, in the order it committed them (their seq), and DELETEs deleted ones;
 * the agent keeps the latest of each as a plain file under its replica directory, which
 * tasks read at $CLUSTERFS_KNOWLEDGE, and reports the last seq it holds as
 * "knowledge_seq" in its health document, so that the control plane sends what is
 * missing after an outage.
 *
 * The replica directory is STATE_DIR-knowledge, beside the 0700 state directory (tasks of
 * other users cannot enter that): 0755, documents 0444, each written to a temporary file
 * and renamed into place, so a reader sees a whole version or the one before. The seq
 * is kept in STATE_DIR/knowledge.seq. Handlers run on server threads; thread-safe. */
#pragma once

#include <stdint.h>

#include "httpd/server.h"

/* Makes the replica directory of state_dir and reads the seq; sets CLUSTERFS_KNOWLEDGE in
 * the agent's environment for its supervisors. 0 or -errno with a sentence in errbuf. */
int knowledge_replica_open(const char *state_dir, char *errbuf, size_t errlen);
/* The last seq applied (0: none). */
int64_t knowledge_replica_seq(void);

/* PUT /api/node/knowledge/{*}?version=N&seq=S with the document's bytes, and
 * DELETE /api/node/knowledge/{*}?version=N&seq=S. A seq at or below the one held is
 * answered 200 and changes nothing. */
int knowledge_handle_put(const char *state_dir, struct request *req, struct response *resp);
int knowledge_handle_delete(const char *state_dir, struct request *req, struct response *resp);
