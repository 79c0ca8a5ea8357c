/* The store's task rows: inserts and updates, loads, listings by page and counts, and
 * the attempts. */
#include "backend/store_internal.h"
#include "backend/util.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

void store_task_clear(struct store_task *t)
{
	char *owned[] = {t->id,          t->parent, t->spec,      t->state, t->node,
			 t->dispatch_id, t->reason, t->placement, t->user};
	for (size_t i = 0; i < sizeof(owned) / sizeof(owned[0]); i++)
		free(owned[i]);
	memset(t, 0, sizeof(*t));
}

/* Binds what an update writes, in the order both the INSERT and the UPDATE name it: the
 * mutable fields as ?1 to ?10, the id as ?11. */
static void bind_task_fields(sqlite3_stmt *st, const struct store_task *t)
{
	store_bind_text(st, 1, t->state);
	store_bind_text(st, 2, t->node);
	store_bind_text(st, 3, t->dispatch_id);
	store_bind_text(st, 4, t->reason);
	store_bind_text(st, 5, t->placement);
	sqlite3_bind_int(st, 6, t->exit_code);
	sqlite3_bind_int(st, 7, t->attempts);
	sqlite3_bind_int(st, 8, t->priority);
	store_bind_time(st, 9, t->started_at);
	store_bind_time(st, 10, t->finished_at);
	store_bind_text(st, 11, t->id);
}

static int insert_one(sqlite3 *db, struct store_task *t)
{
	static const char sql[] =
		"INSERT INTO tasks(state, node, dispatch_id, reason, placement, exit_code,"
		" attempts, priority, started_at, finished_at, id, parent, spec, uid, submitted_at,"
		" user, gid) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)";
	sqlite3_stmt *st;
	int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
	if (rc != SQLITE_OK)
		return store_sqlite_to_errno(rc);
	bind_task_fields(st, t);
	store_bind_text(st, 12, t->parent);
	store_bind_text(st, 13, t->spec);
	sqlite3_bind_int64(st, 14, (sqlite3_int64) t->uid);
	store_bind_time(st, 15, t->submitted_at);
	store_bind_text(st, 16, t->user);
	sqlite3_bind_int64(st, 17, (sqlite3_int64) t->gid);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return store_sqlite_to_errno(rc);
	t->seq = sqlite3_last_insert_rowid(db);
	return 0;
}

int store_insert_tasks(struct store *s, struct store_task *ts, size_t n)
{
	sqlite3 *db;
	int r = store_begin(s, &db);
	if (r < 0)
		return r;
	for (size_t i = 0; i < n && r == 0; i++)
		r = insert_one(db, &ts[i]);
	if (r == 0)
		r = store_exec_sql(db, "COMMIT");
	if (r < 0)
		store_exec_sql(db, "ROLLBACK");
	return r;
}

int store_insert_task(struct store *s, struct store_task *t)
{
	return store_insert_tasks(s, t, 1);
}

int store_update_task(struct store *s, const struct store_task *t)
{
	static const char sql[] =
		"UPDATE tasks SET state=?, node=?, dispatch_id=?, reason=?, placement=?,"
		" exit_code=?, attempts=?, priority=?, started_at=?, finished_at=? WHERE id=?";
	sqlite3 *db = store_db(s);
	if (!db)
		return -EIO;
	sqlite3_stmt *st;
	int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
	if (rc != SQLITE_OK)
		return store_sqlite_to_errno(rc);
	bind_task_fields(st, t);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? (sqlite3_changes(db) ? 0 : -ENOENT) : store_sqlite_to_errno(rc);
}

void store_tasks_free(struct store_task *ts, size_t n)
{
	for (size_t i = 0; i < n; i++)
		store_task_clear(&ts[i]);
	free(ts);
}

#define TASK_COLUMNS                                                                               \
	"id, parent, spec, state, node, dispatch_id, reason, placement, exit_code, attempts,"      \
	" priority, uid, submitted_at, started_at, finished_at, seq, user, gid"

/* Reads one row of TASK_COLUMNS. */
static void task_from_row(sqlite3_stmt *st, struct store_task *t)
{
	memset(t, 0, sizeof(*t));
	t->id = store_col_text(st, 0);
	t->parent = store_col_text(st, 1);
	t->spec = store_col_text(st, 2);
	t->state = store_col_text(st, 3);
	t->node = store_col_text(st, 4);
	t->dispatch_id = store_col_text(st, 5);
	t->reason = store_col_text(st, 6);
	t->placement = store_col_text(st, 7);
	t->exit_code = sqlite3_column_int(st, 8);
	t->attempts = sqlite3_column_int(st, 9);
	t->priority = sqlite3_column_int(st, 10);
	t->uid = (uid_t) sqlite3_column_int64(st, 11);
	t->submitted_at = sqlite3_column_double(st, 12);
	t->started_at = sqlite3_column_double(st, 13);
	t->finished_at = sqlite3_column_double(st, 14);
	t->seq = sqlite3_column_int64(st, 15);
	t->user = store_col_text(st, 16);
	t->gid = (gid_t) sqlite3_column_int64(st, 17);
}

/* Steps a prepared SELECT of TASK_COLUMNS into a new array, and finalizes it. */
static int load_rows(sqlite3_stmt *st, struct store_task **ret, size_t *ret_n)
{
	struct store_task *ts = NULL;
	size_t n = 0, cap = 0;
	int rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (n == cap) {
			cap = cap ? 2 * cap : 16;
			ts = xrealloc(ts, cap * sizeof(*ts));
		}
		task_from_row(st, &ts[n++]);
	}
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE) {
		store_tasks_free(ts, n);
		return store_sqlite_to_errno(rc);
	}
	*ret = ts;
	*ret_n = n;
	return 0;
}

int store_load_unfinished(struct store *s, struct store_task **ret, size_t *ret_n)
{
	sqlite3_stmt *st;
	int r = store_prepare(s, "SELECT " TASK_COLUMNS " FROM tasks WHERE grp < 2 ORDER BY seq",
			      &st);
	return r < 0 ? r : load_rows(st, ret, ret_n);
}

int store_load_task(struct store *s, const char *id, struct store_task *ret)
{
	sqlite3_stmt *st;
	int r = store_prepare(s, "SELECT " TASK_COLUMNS " FROM tasks WHERE id=?", &st);
	if (r < 0)
		return r;
	store_bind_text(st, 1, id);
	struct store_task *ts = NULL;
	size_t n = 0;
	r = load_rows(st, &ts, &n);
	if (r < 0)
		return r;
	if (n == 1) {
		*ret = ts[0];
		free(ts);
		return 0;
	}
	store_tasks_free(ts, n);
	return -ENOENT;
}

int store_load_recent(struct store *s, size_t max, struct store_task **ret, size_t *ret_n)
{
	sqlite3_stmt *st;
	int r = store_prepare(s, "SELECT " TASK_COLUMNS " FROM tasks ORDER BY seq DESC LIMIT ?",
			      &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, (sqlite3_int64) max);
	return load_rows(st, ret, ret_n);
}

int store_list_children(struct store *s, const char *parent, char ***ret_ids, size_t *ret_n)
{
	sqlite3_stmt *st;
	int rc = store_prepare(s, "SELECT id FROM tasks WHERE parent=? ORDER BY seq", &st);
	if (rc < 0)
		return rc;
	store_bind_text(st, 1, parent);
	char **ids = xcalloc(1, sizeof(*ids));
	size_t n = 0;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		ids = xrealloc(ids, (n + 2) * sizeof(*ids));
		ids[n++] = store_col_text(st, 0);
		ids[n] = NULL;
	}
	sqlite3_finalize(st);
	*ret_ids = ids;
	*ret_n = n;
	return rc == SQLITE_DONE ? 0 : store_sqlite_to_errno(rc);
}

int store_list_page(struct store *s, int group, const char *node, int64_t after, size_t max,
		    store_page_fn fn, void *arg)
{
	/* each form walks one index from `after`: a page costs what it returns */
	const char *sql = node ? "SELECT seq, id FROM tasks WHERE node=?3 AND seq>?1"
				 " ORDER BY seq LIMIT ?2"
			  : group < 0
				  ? "SELECT seq, id FROM tasks WHERE seq>?1 ORDER BY seq LIMIT ?2"
				  : "SELECT seq, id FROM tasks WHERE grp=?4 AND seq>?1"
				    " ORDER BY seq LIMIT ?2";
	sqlite3_stmt *st;
	int rc = store_prepare(s, sql, &st);
	if (rc < 0)
		return rc;
	sqlite3_bind_int64(st, 1, after);
	sqlite3_bind_int64(st, 2, (sqlite3_int64) max);
	if (node)
		store_bind_text(st, 3, node);
	else if (group >= 0)
		sqlite3_bind_int(st, 4, group);
	int n = 0;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		n++;
		if (fn(arg, sqlite3_column_int64(st, 0), (const char *) sqlite3_column_text(st, 1)))
			break;
	}
	sqlite3_finalize(st);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? n : store_sqlite_to_errno(rc);
}

int store_count_tasks(struct store *s, store_count_fn fn, void *arg)
{
	/* one walk of the (node, state, seq) index, which holds every row */
	sqlite3_stmt *st;
	int rc = store_prepare(
		s,
		"SELECT node, state, count(*) FROM tasks INDEXED BY tasks_by_node_state"
		" GROUP BY node, state",
		&st);
	if (rc < 0)
		return rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW)
		fn(arg, (const char *) sqlite3_column_text(st, 0),
		   (const char *) sqlite3_column_text(st, 1), sqlite3_column_int64(st, 2));
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? 0 : store_sqlite_to_errno(rc);
}

int store_node_failures_since_success(struct store *s, const char *node)
{
	sqlite3_stmt *st;
	int rc = store_prepare(
		s,
		"SELECT count(*) FROM tasks WHERE node=?1 AND state IN ('failed', 'timed_out',"
		" 'lost') AND seq > coalesce((SELECT max(seq) FROM tasks WHERE node=?1 AND"
		" state='succeeded'), 0)",
		&st);
	if (rc < 0)
		return 0;
	store_bind_text(st, 1, node);
	int n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
	sqlite3_finalize(st);
	return n;
}

int store_count_ended_since(struct store *s, double since, store_ended_fn fn, void *arg)
{
	sqlite3_stmt *st;
	int rc = store_prepare(s,
			       "SELECT node, state, finished_at FROM tasks WHERE finished_at >= ?"
			       " AND node IS NOT NULL",
			       &st);
	if (rc < 0)
		return rc;
	sqlite3_bind_double(st, 1, since);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW)
		fn(arg, (const char *) sqlite3_column_text(st, 0),
		   (const char *) sqlite3_column_text(st, 1), sqlite3_column_double(st, 2));
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? 0 : store_sqlite_to_errno(rc);
}

int store_add_attempt(struct store *s, const char *task_id, int attempt, const char *node,
		      const char *dispatch_id, const char *state, int exit_code, double started_at,
		      double finished_at)
{
	static const char sql[] = "INSERT OR REPLACE INTO attempts VALUES(?,?,?,?,?,?,?,?)";
	sqlite3_stmt *st;
	int r = store_prepare(s, sql, &st);
	if (r < 0)
		return r;
	store_bind_text(st, 1, task_id);
	sqlite3_bind_int(st, 2, attempt);
	store_bind_text(st, 3, node);
	store_bind_text(st, 4, dispatch_id);
	store_bind_text(st, 5, state);
	sqlite3_bind_int(st, 6, exit_code);
	store_bind_time(st, 7, started_at);
	store_bind_time(st, 8, finished_at);
	return store_stmt_run(st);
}
