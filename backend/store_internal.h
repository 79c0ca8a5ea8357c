/* The store: the private header of backend/store*.c, never included elsewhere. It holds
 * the store's structures and the helpers the files share.
 *
 * Threads and locks: a struct store is shared by every thread; each thread has its own
 * sqlite connection (store_db()), found through s->key. s->lock guards only the list of
 * connections (s->conns), which store_close() walks; nothing else is held under it.
 *
 * The files:
 * - store.c: opening, the migrations, connections, durability, the shared helpers;
 * - store_tasks.c: task rows and attempts, listings and counts;
 * - store_output.c: kept output, its total, and the retention (store_prune);
 * - store_rows.c: the small tables: meta, outbox, cache, events, drains;
 * - store_backup.c: snapshots and restores (sqlite's online backup API). */
#pragma once

#include "backend/store.h"

#include <pthread.h>
#include <sqlite3.h>

struct conn {
	sqlite3 *db;
	struct conn *next; /* in store->conns */
};

struct store {
	char *path;
	char instance_id[40];
	pthread_key_t key; /* this thread's struct conn */
	pthread_mutex_t lock;
	struct conn *conns; /* every connection, for store_close; protected by lock */
};

/* The errno for an sqlite result code (0 for SQLITE_OK, _DONE and _ROW). */
int store_sqlite_to_errno(int rc);
/* This thread's connection, opened on first use. NULL on failure. */
sqlite3 *store_db(struct store *s);
/* Runs sql (no rows) on db. 0 or -errno. */
int store_exec_sql(sqlite3 *db, const char *sql);
/* Begins a write transaction (BEGIN IMMEDIATE) on this thread's connection, set in
 * *ret_db. 0 or -errno (-EIO when the connection cannot be opened). */
int store_begin(struct store *s, sqlite3 **ret_db);
/* Prepares sql on the calling thread's connection. 0 or -errno. */
int store_prepare(struct store *s, const char *sql, sqlite3_stmt **ret_st);
/* Runs a statement that returns no rows and finalizes it. 0 or -errno. */
int store_stmt_run(sqlite3_stmt *st);
/* Binds s (copied), or NULL when s is NULL. */
void store_bind_text(sqlite3_stmt *st, int i, const char *s);
/* Binds a wall time, or NULL for 0 (not yet). */
void store_bind_time(sqlite3_stmt *st, int i, double t);
/* Column i as a new string, or NULL. */
char *store_col_text(sqlite3_stmt *st, int i);
