/* The store's kept output: one row per task and stream, the running total of its bytes,
 * and the retention that prunes output and whole finished tasks (store_prune). */
#include "backend/store_internal.h"
#include "backend/util.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* Adds delta to a running total, in the caller's transaction. */
static int totals_add(sqlite3 *db, const char *key, int64_t delta)
{
	sqlite3_stmt *st;
	int rc = sqlite3_prepare_v2(db,
				    "INSERT INTO totals VALUES(?1, ?2) ON CONFLICT(key) DO UPDATE"
				    " SET value = value + ?2",
				    -1, &st, NULL);
	if (rc != SQLITE_OK)
		return store_sqlite_to_errno(rc);
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, delta);
	return store_stmt_run(st);
}

/* The kept bytes of one task's output (both streams), in the caller's transaction. */
static int64_t output_bytes_of(sqlite3 *db, const char *task_id, const char *stream)
{
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(db,
			       "SELECT coalesce(sum(length(data)), 0) FROM output WHERE task_id=?"
			       " AND (?2 IS NULL OR stream=?2)",
			       -1, &st, NULL) != SQLITE_OK)
		return 0;
	store_bind_text(st, 1, task_id);
	store_bind_text(st, 2, stream);
	int64_t n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
	sqlite3_finalize(st);
	return n;
}

int64_t store_output_total(struct store *s)
{
	sqlite3_stmt *st;
	if (store_prepare(s, "SELECT value FROM totals WHERE key='output_bytes'", &st) < 0)
		return 0;
	int64_t n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
	sqlite3_finalize(st);
	return n;
}

/* Empties a task's kept output, noting when (a read says so). In the caller's
 * transaction. */
static int prune_output_of(sqlite3 *db, const char *task_id, double now)
{
	int64_t old = output_bytes_of(db, task_id, NULL);
	sqlite3_stmt *st;
	int r = store_sqlite_to_errno(
		sqlite3_prepare_v2(db,
				   "UPDATE output SET data = x'', pruned_at = ?2"
				   " WHERE task_id=?1 AND length(data) > 0",
				   -1, &st, NULL));
	if (r < 0)
		return r;
	store_bind_text(st, 1, task_id);
	sqlite3_bind_double(st, 2, now);
	r = store_stmt_run(st);
	if (r == 0 && old)
		r = totals_add(db, "output_bytes", -old);
	return r;
}

/* Removes one task's record, attempts and output. In the caller's transaction. */
static int delete_task_of(sqlite3 *db, const char *task_id)
{
	int64_t old = output_bytes_of(db, task_id, NULL);
	static const char *const sqls[] = {
		"DELETE FROM output WHERE task_id=?",
		"DELETE FROM attempts WHERE task_id=?",
		"DELETE FROM tasks WHERE id=?",
	};
	int r = 0;
	for (size_t i = 0; i < 3 && r == 0; i++) {
		sqlite3_stmt *st;
		r = store_sqlite_to_errno(sqlite3_prepare_v2(db, sqls[i], -1, &st, NULL));
		if (r == 0) {
			store_bind_text(st, 1, task_id);
			r = store_stmt_run(st);
		}
	}
	if (r == 0 && old)
		r = totals_add(db, "output_bytes", -old);
	return r;
}

/* What one run of store_prune removed, told after its commit. */
struct pruned {
	char *id, *node, *state; /* node and state: of a removed record; NULL for output */
};

/* Retention, step one: the records finished longer than p->records_s ago, at most batch,
 * deleted; they are added to gone (*n of them). Returns 0 or -errno. */
static int prune_records(sqlite3 *db, const struct store_retention *p, double now, size_t batch,
			 struct pruned *gone, size_t *n)
{
	sqlite3_stmt *st;
	int r = store_sqlite_to_errno(sqlite3_prepare_v2(
		db,
		"SELECT id, node, state FROM tasks WHERE finished_at IS NOT NULL AND"
		" finished_at < ? AND grp >= 2 ORDER BY finished_at, seq LIMIT ?",
		-1, &st, NULL));
	if (r == 0) {
		sqlite3_bind_double(st, 1, now - p->records_s);
		sqlite3_bind_int64(st, 2, (sqlite3_int64) batch);
		while (sqlite3_step(st) == SQLITE_ROW) {
			gone[*n].id = store_col_text(st, 0);
			gone[*n].node = store_col_text(st, 1);
			gone[(*n)++].state = store_col_text(st, 2);
		}
		sqlite3_finalize(st);
	}
	for (size_t i = 0; i < *n && r == 0; i++)
		r = delete_task_of(db, gone[i].id);
	return r;
}

/* Retention, step two: output, oldest end first, from where the last run stopped (the
 * cursor in meta), while it is older than p->output_s or the total is over p->output_bytes;
 * up to batch entries of gone in all (*ret_n so far, updated). *next gets when the next one
 * is due. Returns 0 or -errno. */
static int prune_outputs(sqlite3 *db, const struct store_retention *p, double now, size_t batch,
			 struct pruned *gone, size_t *ret_n, double *next)
{
	int64_t total = 0;
	sqlite3_stmt *st;
	size_t n = *ret_n, n_records = n;
	int r;
	if (sqlite3_prepare_v2(db, "SELECT value FROM totals WHERE key='output_bytes'", -1, &st,
			       NULL) == SQLITE_OK) {
		if (sqlite3_step(st) == SQLITE_ROW)
			total = sqlite3_column_int64(st, 0);
		sqlite3_finalize(st);
	}
	double cur_at = 0;
	long long cur_seq = 0;
	if (sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key='retention_cursor'", -1, &st,
			       NULL) == SQLITE_OK) {
		if (sqlite3_step(st) == SQLITE_ROW &&
		    sscanf((const char *) sqlite3_column_text(st, 0), "%lf %lld", &cur_at,
			   &cur_seq) != 2)
			cur_at = cur_seq = 0;
		sqlite3_finalize(st);
	}
	r = store_sqlite_to_errno(sqlite3_prepare_v2(
		db,
		"SELECT id, finished_at, seq FROM tasks WHERE finished_at IS NOT NULL AND"
		" (finished_at, seq) > (?1, ?2) AND grp >= 2 ORDER BY finished_at, seq"
		" LIMIT ?3",
		-1, &st, NULL));
	if (r == 0) {
		sqlite3_bind_double(st, 1, cur_at);
		sqlite3_bind_int64(st, 2, cur_seq);
		sqlite3_bind_int64(st, 3, (sqlite3_int64) (batch - n));
		while (sqlite3_step(st) == SQLITE_ROW) {
			double at = sqlite3_column_double(st, 1);
			bool old = p->output_s > 0 && at < now - p->output_s;
			bool over = p->output_bytes > 0 && total > p->output_bytes;
			if (!old && !over) {
				/* the next one is due when it grows old enough */
				if (p->output_s > 0)
					*next = at + p->output_s;
				break;
			}
			gone[n].id = store_col_text(st, 0);
			total -= output_bytes_of(db, gone[n++].id, NULL);
			cur_at = at;
			cur_seq = sqlite3_column_int64(st, 2);
		}
		sqlite3_finalize(st);
	}
	for (size_t i = n_records; i < n && r == 0; i++)
		r = prune_output_of(db, gone[i].id, now);
	if (r == 0 && n > n_records) {
		char cur[64];
		snprintf(cur, sizeof(cur), "%.6f %lld", cur_at, cur_seq);
		r = store_sqlite_to_errno(sqlite3_prepare_v2(
			db, "INSERT OR REPLACE INTO meta VALUES('retention_cursor', ?)", -1, &st,
			NULL));
		if (r == 0) {
			store_bind_text(st, 1, cur);
			r = store_stmt_run(st);
		}
	}
	*ret_n = n;
	return r;
}

int store_prune(struct store *s, const struct store_retention *p, double now, size_t batch,
		store_pruned_fn fn, void *arg, double *ret_next)
{
	double next = 0;
	sqlite3 *db;
	int r = store_begin(s, &db);
	if (r < 0)
		return r;
	struct pruned *gone = xcalloc(batch + 1, sizeof(*gone));
	size_t n = 0;
	/* records first: what goes needs no pruning of its output */
	if (p->records_s > 0)
		r = prune_records(db, p, now, batch, gone, &n);
	size_t n_records = n;
	if (r == 0 && n < batch && (p->output_s > 0 || p->output_bytes > 0))
		r = prune_outputs(db, p, now, batch, gone, &n, &next);
	if (r == 0)
		r = store_exec_sql(db, "COMMIT");
	if (r < 0)
		store_exec_sql(db, "ROLLBACK");
	for (size_t i = 0; i < n; i++) {
		if (r == 0)
			fn(arg, gone[i].id, gone[i].node, gone[i].state, i < n_records);
		free(gone[i].id);
		free(gone[i].node);
		free(gone[i].state);
	}
	free(gone);
	if (r < 0)
		return r;
	*ret_next = n == batch ? now : next;
	return (int) n;
}

int store_put_output(struct store *s, const char *task_id, const char *stream, const char *data,
		     size_t len)
{
	sqlite3 *db;
	int r = store_begin(s, &db);
	if (r < 0)
		return r;
	int64_t old = output_bytes_of(db, task_id, stream);
	sqlite3_stmt *st;
	r = store_sqlite_to_errno(sqlite3_prepare_v2(
		db, "INSERT OR REPLACE INTO output(task_id, stream, data) VALUES(?,?,?)", -1, &st,
		NULL));
	if (r == 0) {
		store_bind_text(st, 1, task_id);
		store_bind_text(st, 2, stream);
		sqlite3_bind_blob(st, 3, data ? data : "", (int) len, SQLITE_TRANSIENT);
		r = store_stmt_run(st);
	}
	if (r == 0)
		r = totals_add(db, "output_bytes", (int64_t) len - old);
	if (r == 0)
		r = store_exec_sql(db, "COMMIT");
	if (r < 0)
		store_exec_sql(db, "ROLLBACK");
	return r;
}

/* What a read of pruned output gives instead. */
static void pruned_mark(double at, struct buf *out)
{
	char mark[160];
	time_t secs = (time_t) at;
	struct tm tm;
	gmtime_r(&secs, &tm);
	strftime(mark, sizeof(mark),
		 "[clusterfs: output removed by the retention policy (tasks.retention) at "
		 "%Y-%m-%dT%H:%M:%SZ]\n",
		 &tm);
	buf_puts(out, mark);
}

int store_get_output(struct store *s, const char *task_id, const char *stream, char **ret_data,
		     size_t *ret_len)
{
	static const char sql[] = "SELECT data, pruned_at FROM output WHERE task_id=? AND stream=?";
	sqlite3_stmt *st;
	int rc = store_prepare(s, sql, &st);
	if (rc < 0)
		return rc;
	store_bind_text(st, 1, task_id);
	store_bind_text(st, 2, stream);
	struct buf b;
	buf_init(&b);
	buf_append(&b, "", 0);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW && sqlite3_column_type(st, 1) != SQLITE_NULL)
		pruned_mark(sqlite3_column_double(st, 1), &b);
	else if (rc == SQLITE_ROW)
		buf_append(&b, sqlite3_column_blob(st, 0), (size_t) sqlite3_column_bytes(st, 0));
	sqlite3_finalize(st);
	*ret_data = buf_steal(&b, ret_len);
	return 0;
}

int store_output_size(struct store *s, const char *task_id, const char *stream, size_t *ret_len)
{
	sqlite3_stmt *st;
	int rc = store_prepare(s,
			       "SELECT length(data), pruned_at FROM output WHERE task_id=?1"
			       " AND (?2 IS NULL OR stream=?2)",
			       &st);
	if (rc < 0)
		return rc;
	store_bind_text(st, 1, task_id);
	store_bind_text(st, 2, stream);
	size_t n = 0;
	while (sqlite3_step(st) == SQLITE_ROW) {
		if (sqlite3_column_type(st, 1) == SQLITE_NULL) {
			n += (size_t) sqlite3_column_int64(st, 0);
			continue;
		}
		struct buf mark;
		buf_init(&mark);
		pruned_mark(sqlite3_column_double(st, 1), &mark);
		n += mark.len;
		buf_free(&mark);
	}
	sqlite3_finalize(st);
	*ret_len = n;
	return 0;
}
