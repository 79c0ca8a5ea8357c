/* The checkpoint ledger: the private header of tools/agent/ledger*.c, never included
 * elsewhere. It holds the ledger's structure and the functions the files share:
 *
 *   ledger.c         the SQLite file (schema, WAL, checks), its connections, SQL helpers
 *   ledger_json.c    entries as JSON, every real in its shortest exact form
 *   ledger_read.c    the answers, and the read routes (list, one step, best, summary)
 *   ledger_record.c  the record route: checking an entry, storing it exactly once
 *
 * Threads: each server thread has its own SQLite connection (ledger_db()); ledger->lock
 * guards only the list of them. Functions that take errbuf write one sentence there when
 * they return -errno. */
#pragma once

#include <jansson.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdint.h>

#include "backend/util.h"
#include "tools/agent/ledger.h"

/* One server thread's connection. */
struct ledger_conn {
	sqlite3 *db;
	struct ledger_conn *next; /* protected by ledger->lock */
};

struct ledger {
	char *path;        /* absolute; immutable */
	pthread_key_t key; /* the calling thread's struct ledger_conn */
	pthread_mutex_t lock;
	struct ledger_conn *conns; /* every connection opened; protected by lock */
};

/* ---- ledger.c ---- */

/* The calling thread's connection, opened on first use. 0 or -errno with errbuf. */
int ledger_db(struct ledger *l, sqlite3 **ret_db, char *errbuf, size_t errlen);
/* Says what went wrong on `db` in errbuf and returns it as -errno. */
int ledger_sql_error(sqlite3 *db, int rc, char *errbuf, size_t errlen);
/* Runs SQL that returns no rows. 0 or -errno with errbuf. */
int ledger_exec(sqlite3 *db, const char *sql, char *errbuf, size_t errlen);
/* Rolls back the open transaction, if any, keeping the error already in errbuf. */
void ledger_rollback(sqlite3 *db);
/* Prepares `sql`. 0 or -errno with errbuf. */
int ledger_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **ret_stmt, char *errbuf,
		   size_t errlen);

/* ---- ledger_json.c ---- */

/* Appends `v` as compact JSON. Borrows v. */
void ledger_json_write(struct buf *out, json_t *v);
/* Parses an entry as stored. Returns a new object, or NULL when the row is damaged (which
 * only an outside edit of the file can do). */
json_t *ledger_entry_parse(const char *text, int64_t step);
/* Appends the entry stored as `text`. -EBADMSG when it is damaged. */
int ledger_entry_write(struct buf *out, const char *text, int64_t step);

/* ---- ledger_read.c ---- */

/* Sends what was written in resp->body (plus "\n") with `status`. */
int ledger_reply(struct response *resp, unsigned status);
/* Answers a storage failure: 503 when another writer held the ledger too long, else 500.
 * Logs once, here. */
int ledger_reply_failure(struct response *resp, const struct ledger *l, int r, const char *doing,
			 const char *errbuf);
/* The ledger of the agent handling `req`, or NULL after answering 404. */
struct ledger *ledger_of(struct request *req, struct response *resp);
