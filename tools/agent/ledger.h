/* The checkpoint ledger an agent serves with --ledger FILE: a training host's record of
 * its checkpoints (step, metrics, path, created_at and any other fields), kept in an
 * SQLite file in WAL mode with synchronous FULL, so that an entry is on disk before the
 * answer that says it was recorded. Served under /api/ledger:
 *
 *   GET  /api/ledger                 {"entries": [entry, ...]}, by step ascending
 *   GET  /api/ledger/STEP            the entry, 404 when none
 *   GET  /api/ledger/best?metric=M[&direction=lower|higher]
 *                                    the best entry by M, plus "best_by" and "direction"
 *   GET  /api/ledger/summary         count, first/last step, best value of every metric
 *   POST /api/ledger/record          records an entry: 201, 200 for a record_id seen
 *                                    before (exactly-once delivery), 409 for a step that
 *                                    has an entry already
 *
 * Entries are returned as recorded, less "record_id", which is the ledger's own. Each
 * server thread gets its own SQLite connection. */
#pragma once

#include <stddef.h>

#include "httpd/server.h"

#define LEDGER_ENTRY_MAX     (64 * 1024) /* bytes in a recorded entry; more is 413 */
#define LEDGER_RECORD_ID_MAX 128         /* characters in a record_id */

struct ledger;

/* Opens the ledger in `path`, creating the file and its schema when missing, and checks
 * that it is one (schema version, WAL mode). Returns a new ledger, 0 or -errno with a
 * sentence in errbuf (errlen bytes). Borrows path. */
int ledger_open(const char *path, struct ledger **ret_ledger, char *errbuf, size_t errlen);
/* Closes every connection and frees the ledger; call it after the server has stopped.
 * NULL is a no-op. */
void ledger_close(struct ledger *l);

/* The route handlers. req->userdata is the agent's struct api_context (api.h); when its
 * ledger is NULL they answer 404, saying how to start the agent with one. Thread-safe. */
int ledger_handle_list(struct request *req, struct response *resp);
int ledger_handle_get(struct request *req, struct response *resp); /* params[0]: step */
int ledger_handle_best(struct request *req, struct response *resp);
int ledger_handle_summary(struct request *req, struct response *resp);
int ledger_handle_record(struct request *req, struct response *resp);
