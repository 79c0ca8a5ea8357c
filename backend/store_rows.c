/* The store's small tables: metadata, the outbox, the JSON cache, events and drains. */
#include "backend/store_internal.h"
#include "backend/util.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

int store_set_meta(struct store *s, const char *key, const char *value)
{
	sqlite3_stmt *st;
	int r = store_prepare(s, "INSERT OR REPLACE INTO meta VALUES(?,?)", &st);
	if (r < 0)
		return r;
	store_bind_text(st, 1, key);
	store_bind_text(st, 2, value);
	return store_stmt_run(st);
}

char *store_get_meta(struct store *s, const char *key)
{
	sqlite3_stmt *st;
	if (store_prepare(s, "SELECT value FROM meta WHERE key=?", &st) < 0)
		return NULL;
	store_bind_text(st, 1, key);
	char *v = sqlite3_step(st) == SQLITE_ROW ? store_col_text(st, 0) : NULL;
	sqlite3_finalize(st);
	return v;
}

int store_outbox_add(struct store *s, const char *kind, const char *key, const char *body,
		     int64_t *ret_id)
{
	sqlite3 *db = store_db(s);
	if (!db)
		return -EIO;
	sqlite3_stmt *st;
	int rc = sqlite3_prepare_v2(
		db, "INSERT INTO outbox(kind, key, body, created_at) VALUES(?,?,?,?)", -1, &st,
		NULL);
	if (rc != SQLITE_OK)
		return store_sqlite_to_errno(rc);
	store_bind_text(st, 1, kind);
	store_bind_text(st, 2, key);
	store_bind_text(st, 3, body);
	sqlite3_bind_double(st, 4, clock_wall_s());
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return store_sqlite_to_errno(rc);
	if (ret_id)
		*ret_id = sqlite3_last_insert_rowid(db);
	return 0;
}

int store_outbox_list(struct store *s, const char *kind, int64_t **ret_ids, char ***ret_keys,
		      char ***ret_bodies, size_t *ret_n)
{
	sqlite3_stmt *st;
	int rc = store_prepare(s, "SELECT id, key, body FROM outbox WHERE kind=? ORDER BY id", &st);
	if (rc < 0)
		return rc;
	store_bind_text(st, 1, kind);
	size_t n = 0, cap = 8;
	int64_t *ids = xmalloc(cap * sizeof(*ids));
	char **keys = xmalloc(cap * sizeof(*keys));
	char **bodies = xmalloc(cap * sizeof(*bodies));
	while (sqlite3_step(st) == SQLITE_ROW) {
		if (n == cap) {
			cap *= 2;
			ids = xrealloc(ids, cap * sizeof(*ids));
			keys = xrealloc(keys, cap * sizeof(*keys));
			bodies = xrealloc(bodies, cap * sizeof(*bodies));
		}
		ids[n] = sqlite3_column_int64(st, 0);
		keys[n] = store_col_text(st, 1);
		bodies[n++] = store_col_text(st, 2);
	}
	sqlite3_finalize(st);
	*ret_ids = ids;
	*ret_keys = keys;
	*ret_bodies = bodies;
	*ret_n = n;
	return 0;
}

int store_outbox_done(struct store *s, int64_t id)
{
	sqlite3_stmt *st;
	int r = store_prepare(s, "DELETE FROM outbox WHERE id=?", &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, id);
	return store_stmt_run(st);
}

int store_cache_put(struct store *s, const char *key, const char *json, double fetched_at)
{
	sqlite3_stmt *st;
	int rc = store_prepare(s, "INSERT OR REPLACE INTO cache VALUES(?,?,?)", &st);
	if (rc < 0)
		return rc;
	store_bind_text(st, 1, key);
	store_bind_text(st, 2, json);
	sqlite3_bind_double(st, 3, fetched_at);
	return store_stmt_run(st);
}

int store_cache_get(struct store *s, const char *key, char **ret_json, double *ret_fetched_at)
{
	sqlite3_stmt *st;
	int rc = store_prepare(s, "SELECT json, fetched_at FROM cache WHERE key=?", &st);
	if (rc < 0)
		return rc;
	store_bind_text(st, 1, key);
	int r = -ENOENT;
	if (sqlite3_step(st) == SQLITE_ROW) {
		*ret_json = store_col_text(st, 0);
		if (ret_fetched_at)
			*ret_fetched_at = sqlite3_column_double(st, 1);
		r = 0;
	}
	sqlite3_finalize(st);
	return r;
}

int store_events_add(struct store *s, const struct store_event *evs, size_t n, int64_t keep)
{
	sqlite3 *db;
	int r = store_begin(s, &db);
	if (r < 0)
		return r;
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO events VALUES(?,?,?)", -1, &st,
				    NULL);
	r = store_sqlite_to_errno(rc);
	int64_t newest = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		sqlite3_reset(st);
		sqlite3_bind_int64(st, 1, evs[i].seq);
		sqlite3_bind_double(st, 2, evs[i].at);
		sqlite3_bind_text(st, 3, evs[i].line, (int) evs[i].len, SQLITE_TRANSIENT);
		r = store_sqlite_to_errno(sqlite3_step(st));
		if (evs[i].seq > newest)
			newest = evs[i].seq;
	}
	sqlite3_finalize(st);
	/* the retention: a range of the primary key, so pruning costs what it removes */
	if (r == 0 && keep > 0 && newest > keep) {
		r = store_sqlite_to_errno(
			sqlite3_prepare_v2(db, "DELETE FROM events WHERE seq <= ?", -1, &st, NULL));
		if (r == 0) {
			sqlite3_bind_int64(st, 1, newest - keep);
			r = store_stmt_run(st);
		}
	}
	if (r == 0)
		r = store_exec_sql(db, "COMMIT");
	if (r < 0)
		store_exec_sql(db, "ROLLBACK");
	return r;
}

int store_events_load(struct store *s, size_t max, struct store_event **ret, size_t *ret_n)
{
	sqlite3_stmt *st;
	int rc = store_prepare(s,
			       "SELECT seq, at, line FROM (SELECT * FROM events ORDER BY seq DESC"
			       " LIMIT ?) ORDER BY seq",
			       &st);
	if (rc < 0)
		return rc;
	sqlite3_bind_int64(st, 1, (sqlite3_int64) max);
	struct store_event *evs = NULL;
	size_t n = 0, cap = 0;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (n == cap) {
			cap = cap ? 2 * cap : 64;
			evs = xrealloc(evs, cap * sizeof(*evs));
		}
		struct store_event *e = &evs[n++];
		e->seq = sqlite3_column_int64(st, 0);
		e->at = sqlite3_column_double(st, 1);
		e->len = (size_t) sqlite3_column_bytes(st, 2);
		e->line = xmalloc(e->len + 1);
		memcpy(e->line, sqlite3_column_text(st, 2), e->len);
		e->line[e->len] = '\0';
	}
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE) {
		store_events_free(evs, n);
		return store_sqlite_to_errno(rc);
	}
	*ret = evs;
	*ret_n = n;
	return 0;
}

void store_events_free(struct store_event *evs, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(evs[i].line);
	free(evs);
}

int store_set_drain(struct store *s, const char *node, bool draining, double since)
{
	sqlite3_stmt *st;
	int r = store_prepare(s,
			      draining ? "INSERT OR IGNORE INTO drains VALUES(?,?)"
				       : "DELETE FROM drains WHERE node=?",
			      &st);
	if (r < 0)
		return r;
	store_bind_text(st, 1, node);
	if (draining)
		sqlite3_bind_double(st, 2, since);
	return store_stmt_run(st);
}

int store_load_drains(struct store *s, char ***ret_nodes, size_t *ret_n)
{
	sqlite3_stmt *st;
	int rc = store_prepare(s, "SELECT node FROM drains ORDER BY node", &st);
	if (rc < 0)
		return rc;
	char **nodes = NULL;
	size_t n = 0;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		nodes = xrealloc(nodes, (n + 2) * sizeof(*nodes));
		nodes[n++] = store_col_text(st, 0);
	}
	sqlite3_finalize(st);
	if (nodes)
		nodes[n] = NULL;
	*ret_nodes = nodes;
	*ret_n = n;
	return rc == SQLITE_DONE ? 0 : store_sqlite_to_errno(rc);
}
