/* The durable store: sqlite, WAL, one connection per thread. */
#include "backend/store.h"
#include "backend/util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

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

/* Migrations: entry i brings the schema from version i to i + 1. */
static const char *const migrations[] = {
	"CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
	"CREATE TABLE tasks(seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,"
	" parent TEXT, spec TEXT NOT NULL, state TEXT NOT NULL, node TEXT, dispatch_id TEXT,"
	" reason TEXT, placement TEXT, exit_code INTEGER NOT NULL DEFAULT -1,"
	" attempts INTEGER NOT NULL DEFAULT 0, priority INTEGER NOT NULL DEFAULT 2,"
	" uid INTEGER NOT NULL, submitted_at REAL, started_at REAL, finished_at REAL);"
	"CREATE TABLE attempts(task_id TEXT NOT NULL, attempt INTEGER NOT NULL, node TEXT,"
	" dispatch_id TEXT, state TEXT, exit_code INTEGER, started_at REAL, finished_at REAL,"
	" PRIMARY KEY(task_id, attempt));"
	"CREATE TABLE output(task_id TEXT NOT NULL, stream TEXT NOT NULL, data BLOB NOT NULL,"
	" PRIMARY KEY(task_id, stream));"
	"CREATE TABLE outbox(id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, key TEXT,"
	" body TEXT NOT NULL, created_at REAL NOT NULL);"
	"CREATE TABLE cache(key TEXT PRIMARY KEY, json TEXT NOT NULL, fetched_at REAL NOT NULL);",
	/* 2: who submitted, by name and group (tasks run as that user, files belong to it) */
	"ALTER TABLE tasks ADD COLUMN user TEXT;"
	"ALTER TABLE tasks ADD COLUMN gid INTEGER NOT NULL DEFAULT 0;",
	/* 3: what happened and which nodes are drained, kept across restarts */
	"CREATE TABLE events(seq INTEGER PRIMARY KEY, at REAL NOT NULL, line TEXT NOT NULL);"
	"CREATE TABLE drains(node TEXT PRIMARY KEY, since REAL NOT NULL);",
	/* 4: the store is the source of listings and of finished tasks: a group by state
	 * (0 queued, 1 dispatched or running, 2 succeeded, 3 the other ends) and indexes
	 * that seek to a position, count by node and state, find children and the oldest
	 * ends; the total of kept output for the retention */
	"ALTER TABLE tasks ADD COLUMN grp INTEGER GENERATED ALWAYS AS (CASE state"
	" WHEN 'queued' THEN 0 WHEN 'dispatched' THEN 1 WHEN 'running' THEN 1"
	" WHEN 'succeeded' THEN 2 ELSE 3 END) VIRTUAL;"
	"CREATE INDEX tasks_by_group ON tasks(grp, seq);"
	"CREATE INDEX tasks_by_node ON tasks(node, seq) WHERE node IS NOT NULL;"
	"CREATE INDEX tasks_by_node_state ON tasks(node, state, seq);"
	"CREATE INDEX tasks_by_parent ON tasks(parent) WHERE parent IS NOT NULL;"
	"CREATE INDEX tasks_by_end ON tasks(finished_at, seq) WHERE finished_at IS NOT NULL;"
	"ALTER TABLE output ADD COLUMN pruned_at REAL;"
	"CREATE TABLE totals(key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
	"INSERT INTO totals SELECT 'output_bytes', coalesce(sum(length(data)), 0) FROM output;",
	/* 5: knowledge/ (backend/knowledge.c): every version of every document, a deletion
	 * being one with no data; seq orders all versions for the replicas; the directories
	 * made by mkdir */
	"CREATE TABLE knowledge(path TEXT NOT NULL, version INTEGER NOT NULL,"
	" parent TEXT NOT NULL, data BLOB, deleted INTEGER NOT NULL DEFAULT 0,"
	" committed_at REAL NOT NULL, uid INTEGER NOT NULL, seq INTEGER NOT NULL UNIQUE,"
	" PRIMARY KEY(path, version));"
	"CREATE INDEX knowledge_by_parent ON knowledge(parent, path);"
	"CREATE TABLE knowledge_dirs(path TEXT PRIMARY KEY, parent TEXT NOT NULL,"
	" uid INTEGER NOT NULL, created_at REAL NOT NULL);"
	"CREATE INDEX knowledge_dirs_by_parent ON knowledge_dirs(parent);",
};

_Static_assert(sizeof(migrations) / sizeof(migrations[0]) == STORE_SCHEMA_VERSION,
	       "one migration per schema version");

static int sqlite_to_errno(int rc)
{
	switch (rc & 0xff) {
	case SQLITE_OK:
	case SQLITE_DONE:
	case SQLITE_ROW: return 0;
	case SQLITE_CONSTRAINT: return -EEXIST;
	case SQLITE_BUSY:
	case SQLITE_LOCKED: return -EBUSY;
	case SQLITE_NOMEM: return -ENOMEM;
	case SQLITE_FULL: return -ENOSPC;
	case SQLITE_READONLY:
	case SQLITE_PERM:
	case SQLITE_AUTH: return -EACCES;
	case SQLITE_CANTOPEN: return -ENOENT;
	default: return -EIO;
	}
}

static void conn_destroy(void *arg)
{
	(void) arg; /* closed by store_close: the thread may end before the store */
}

static int conn_open(struct store *s, sqlite3 **ret)
{
	sqlite3 *db = NULL;
	int rc = sqlite3_open_v2(s->path, &db,
				 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
				 NULL);
	if (rc != SQLITE_OK) {
		int r = sqlite_to_errno(rc);
		sqlite3_close(db);
		return r;
	}
	sqlite3_busy_timeout(db, 10000);
	sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", NULL, NULL, NULL);
	*ret = db;
	return 0;
}

/* This thread's connection, opened on first use. NULL on failure. */
static sqlite3 *store_db(struct store *s)
{
	struct conn *c = pthread_getspecific(s->key);
	if (c)
		return c->db;
	c = calloc(1, sizeof(*c));
	if (!c || conn_open(s, &c->db) < 0) {
		free(c);
		return NULL;
	}
	pthread_setspecific(s->key, c);
	pthread_mutex_lock(&s->lock);
	c->next = s->conns;
	s->conns = c;
	pthread_mutex_unlock(&s->lock);
	return c->db;
}

static int exec_sql(sqlite3 *db, const char *sql)
{
	return sqlite_to_errno(sqlite3_exec(db, sql, NULL, NULL, NULL));
}

static int migrate(sqlite3 *db, char *errbuf, size_t errlen)
{
	sqlite3_stmt *st;
	int version = 0;
	if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK) {
		if (sqlite3_step(st) == SQLITE_ROW)
			version = sqlite3_column_int(st, 0);
		sqlite3_finalize(st);
	}
	int latest = (int) (sizeof(migrations) / sizeof(migrations[0]));
	if (version > latest) {
		snprintf(errbuf, errlen,
			 "the store's schema version %d is newer than this clusterfs knows (%d)",
			 version, latest);
		return -EPROTO;
	}
	for (int v = version; v < latest; v++) {
		char set[64];
		snprintf(set, sizeof(set), "PRAGMA user_version=%d;", v + 1);
		int r = exec_sql(db, "BEGIN IMMEDIATE");
		if (r == 0)
			r = exec_sql(db, migrations[v]);
		if (r == 0)
			r = exec_sql(db, set);
		if (r == 0)
			r = exec_sql(db, "COMMIT");
		if (r < 0) {
			snprintf(errbuf, errlen, "cannot migrate the store to version %d: %s",
				 v + 1, sqlite3_errmsg(db));
			exec_sql(db, "ROLLBACK");
			return r;
		}
	}
	return 0;
}

sqlite3 *store_thread_db(struct store *s)
{
	return store_db(s);
}

/* Prepares sql on the calling thread's connection. 0 or -errno. */
static int store_prepare(struct store *s, const char *sql, sqlite3_stmt **ret_st)
{
	sqlite3 *db = store_db(s);
	if (!db)
		return -EIO;
	return sqlite_to_errno(sqlite3_prepare_v2(db, sql, -1, ret_st, NULL));
}

/* Runs a statement that returns no rows and finalizes it. 0 or -errno. */
static int stmt_run(sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return sqlite_to_errno(rc);
}

int store_open(const char *dir, struct store **ret, char *errbuf, size_t errlen)
{
	struct store *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	struct buf p;
	buf_init(&p);
	buf_printf(&p, "%s/clusterfs.db", dir);
	s->path = buf_steal(&p, NULL);
	pthread_mutex_init(&s->lock, NULL);
	pthread_key_create(&s->key, conn_destroy);
	/* The store holds specs (with their env) and output: the owner's only. sqlite makes
	 * its -wal and -shm files with the database's mode, so the database is made 0600
	 * first, and files an older version left open are closed up. */
	int fd = open(s->path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0 || fchmod(fd, 0600) < 0) {
		snprintf(errbuf, errlen, "cannot open the store %s: %s", s->path, strerror(errno));
		if (fd >= 0)
			close(fd);
		store_close(s);
		return -EIO;
	}
	close(fd);
	for (int i = 0; i < 2; i++) {
		struct buf side;
		buf_init(&side);
		buf_printf(&side, "%s%s", s->path, i ? "-shm" : "-wal");
		chmod(side.data, 0600);
		buf_free(&side);
	}
	sqlite3 *db = store_db(s);
	if (!db) {
		snprintf(errbuf, errlen, "cannot open the store %s", s->path);
		store_close(s);
		return -EIO;
	}
	int r = migrate(db, errbuf, errlen);
	if (r < 0) {
		store_close(s);
		return r;
	}
	char *id = store_get_meta(s, "instance_id");
	if (!id) {
		unsigned char rnd[12];
		fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
		if (fd < 0 || read(fd, rnd, sizeof(rnd)) != (ssize_t) sizeof(rnd)) {
			if (fd >= 0)
				close(fd);
			snprintf(errbuf, errlen, "cannot read /dev/urandom");
			store_close(s);
			return -EIO;
		}
		close(fd);
		char hex[32];
		for (size_t i = 0; i < sizeof(rnd); i++)
			sprintf(hex + 2 * i, "%02x", rnd[i]);
		r = store_set_meta(s, "instance_id", hex);
		if (r < 0) {
			snprintf(errbuf, errlen, "cannot write the store %s: %s", s->path,
				 strerror(-r));
			store_close(s);
			return r;
		}
		id = strdup(hex);
	}
	snprintf(s->instance_id, sizeof(s->instance_id), "%s", id);
	free(id);
	*ret = s;
	return 0;
}

void store_close(struct store *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	struct conn *c = s->conns;
	s->conns = NULL;
	pthread_mutex_unlock(&s->lock);
	while (c) {
		struct conn *next = c->next;
		sqlite3_close_v2(c->db);
		free(c);
		c = next;
	}
	pthread_key_delete(s->key);
	pthread_mutex_destroy(&s->lock);
	free(s->path);
	free(s);
}

void store_close_connections(struct store *s)
{
	pthread_mutex_lock(&s->lock);
	struct conn *c = s->conns;
	s->conns = NULL;
	pthread_mutex_unlock(&s->lock);
	pthread_setspecific(s->key, NULL);
	while (c) {
		struct conn *next = c->next;
		sqlite3_close_v2(c->db);
		free(c);
		c = next;
	}
}

void store_set_durable(struct store *s, bool full)
{
	sqlite3 *db = store_db(s);
	if (db)
		exec_sql(db, full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL");
}

const char *store_instance_id(struct store *s)
{
	return s->instance_id;
}

void store_task_clear(struct store_task *t)
{
	free(t->id);
	free(t->parent);
	free(t->spec);
	free(t->state);
	free(t->node);
	free(t->dispatch_id);
	free(t->reason);
	free(t->placement);
	free(t->user);
	memset(t, 0, sizeof(*t));
}

static void bind_text(sqlite3_stmt *st, int i, const char *s)
{
	if (s)
		sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
	else
		sqlite3_bind_null(st, i);
}

static void bind_time(sqlite3_stmt *st, int i, double t)
{
	if (t > 0)
		sqlite3_bind_double(st, i, t);
	else
		sqlite3_bind_null(st, i);
}

static int insert_one(sqlite3 *db, struct store_task *t)
{
	static const char sql[] =
		"INSERT INTO tasks(id, parent, spec, state, node, dispatch_id, reason, placement,"
		" exit_code, attempts, priority, uid, submitted_at, started_at, finished_at, user,"
		" gid) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)";
	sqlite3_stmt *st;
	int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
	if (rc != SQLITE_OK)
		return sqlite_to_errno(rc);
	bind_text(st, 1, t->id);
	bind_text(st, 2, t->parent);
	bind_text(st, 3, t->spec);
	bind_text(st, 4, t->state);
	bind_text(st, 5, t->node);
	bind_text(st, 6, t->dispatch_id);
	bind_text(st, 7, t->reason);
	bind_text(st, 8, t->placement);
	sqlite3_bind_int(st, 9, t->exit_code);
	sqlite3_bind_int(st, 10, t->attempts);
	sqlite3_bind_int(st, 11, t->priority);
	sqlite3_bind_int64(st, 12, (sqlite3_int64) t->uid);
	bind_time(st, 13, t->submitted_at);
	bind_time(st, 14, t->started_at);
	bind_time(st, 15, t->finished_at);
	bind_text(st, 16, t->user);
	sqlite3_bind_int64(st, 17, (sqlite3_int64) t->gid);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return sqlite_to_errno(rc);
	t->seq = sqlite3_last_insert_rowid(db);
	return 0;
}

int store_insert_tasks(struct store *s, struct store_task *ts, size_t n)
{
	sqlite3 *db = store_db(s);
	if (!db)
		return -EIO;
	int r = exec_sql(db, "BEGIN IMMEDIATE");
	if (r < 0)
		return r;
	for (size_t i = 0; i < n && r == 0; i++)
		r = insert_one(db, &ts[i]);
	if (r == 0)
		r = exec_sql(db, "COMMIT");
	if (r < 0)
		exec_sql(db, "ROLLBACK");
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
		return sqlite_to_errno(rc);
	bind_text(st, 1, t->state);
	bind_text(st, 2, t->node);
	bind_text(st, 3, t->dispatch_id);
	bind_text(st, 4, t->reason);
	bind_text(st, 5, t->placement);
	sqlite3_bind_int(st, 6, t->exit_code);
	sqlite3_bind_int(st, 7, t->attempts);
	sqlite3_bind_int(st, 8, t->priority);
	bind_time(st, 9, t->started_at);
	bind_time(st, 10, t->finished_at);
	bind_text(st, 11, t->id);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? (sqlite3_changes(db) ? 0 : -ENOENT) : sqlite_to_errno(rc);
}

static char *col_text(sqlite3_stmt *st, int i)
{
	const unsigned char *s = sqlite3_column_text(st, i);
	return s ? strdup((const char *) s) : NULL;
}

void store_tasks_free(struct store_task *ts, size_t n)
{
	for (size_t i = 0; i < n; i++)
		store_task_clear(&ts[i]);
	free(ts);
}

/* Adds delta to a running total, in the caller's transaction. */
static int totals_add(sqlite3 *db, const char *key, int64_t delta)
{
	sqlite3_stmt *st;
	int rc = sqlite3_prepare_v2(db,
				    "INSERT INTO totals VALUES(?1, ?2) ON CONFLICT(key) DO UPDATE"
				    " SET value = value + ?2",
				    -1, &st, NULL);
	if (rc != SQLITE_OK)
		return sqlite_to_errno(rc);
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, delta);
	return stmt_run(st);
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
	bind_text(st, 1, task_id);
	bind_text(st, 2, stream);
	int64_t n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
	sqlite3_finalize(st);
	return n;
}

#define TASK_COLUMNS                                                                               \
	"id, parent, spec, state, node, dispatch_id, reason, placement, exit_code, attempts,"      \
	" priority, uid, submitted_at, started_at, finished_at, seq, user, gid"

/* Reads one row of TASK_COLUMNS. */
static void task_from_row(sqlite3_stmt *st, struct store_task *t)
{
	memset(t, 0, sizeof(*t));
	t->id = col_text(st, 0);
	t->parent = col_text(st, 1);
	t->spec = col_text(st, 2);
	t->state = col_text(st, 3);
	t->node = col_text(st, 4);
	t->dispatch_id = col_text(st, 5);
	t->reason = col_text(st, 6);
	t->placement = col_text(st, 7);
	t->exit_code = sqlite3_column_int(st, 8);
	t->attempts = sqlite3_column_int(st, 9);
	t->priority = sqlite3_column_int(st, 10);
	t->uid = (uid_t) sqlite3_column_int64(st, 11);
	t->submitted_at = sqlite3_column_double(st, 12);
	t->started_at = sqlite3_column_double(st, 13);
	t->finished_at = sqlite3_column_double(st, 14);
	t->seq = sqlite3_column_int64(st, 15);
	t->user = col_text(st, 16);
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
		return sqlite_to_errno(rc);
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
	bind_text(st, 1, id);
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
	bind_text(st, 1, parent);
	char **ids = xcalloc(1, sizeof(*ids));
	size_t n = 0;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		ids = xrealloc(ids, (n + 2) * sizeof(*ids));
		ids[n++] = col_text(st, 0);
		ids[n] = NULL;
	}
	sqlite3_finalize(st);
	*ret_ids = ids;
	*ret_n = n;
	return rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
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
		bind_text(st, 3, node);
	else if (group >= 0)
		sqlite3_bind_int(st, 4, group);
	int n = 0;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		n++;
		if (fn(arg, sqlite3_column_int64(st, 0), (const char *) sqlite3_column_text(st, 1)))
			break;
	}
	sqlite3_finalize(st);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? n : sqlite_to_errno(rc);
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
	return rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
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
	bind_text(st, 1, node);
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
	return rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
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
	int r = sqlite_to_errno(sqlite3_prepare_v2(db,
						   "UPDATE output SET data = x'', pruned_at = ?2"
						   " WHERE task_id=?1 AND length(data) > 0",
						   -1, &st, NULL));
	if (r < 0)
		return r;
	bind_text(st, 1, task_id);
	sqlite3_bind_double(st, 2, now);
	r = stmt_run(st);
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
		r = sqlite_to_errno(sqlite3_prepare_v2(db, sqls[i], -1, &st, NULL));
		if (r == 0) {
			bind_text(st, 1, task_id);
			r = stmt_run(st);
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
	int r = sqlite_to_errno(sqlite3_prepare_v2(
		db,
		"SELECT id, node, state FROM tasks WHERE finished_at IS NOT NULL AND"
		" finished_at < ? AND grp >= 2 ORDER BY finished_at, seq LIMIT ?",
		-1, &st, NULL));
	if (r == 0) {
		sqlite3_bind_double(st, 1, now - p->records_s);
		sqlite3_bind_int64(st, 2, (sqlite3_int64) batch);
		while (sqlite3_step(st) == SQLITE_ROW) {
			gone[*n].id = col_text(st, 0);
			gone[*n].node = col_text(st, 1);
			gone[(*n)++].state = col_text(st, 2);
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
	r = sqlite_to_errno(sqlite3_prepare_v2(
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
			gone[n].id = col_text(st, 0);
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
		r = sqlite_to_errno(sqlite3_prepare_v2(
			db, "INSERT OR REPLACE INTO meta VALUES('retention_cursor', ?)", -1, &st,
			NULL));
		if (r == 0) {
			bind_text(st, 1, cur);
			r = stmt_run(st);
		}
	}
	*ret_n = n;
	return r;
}

int store_prune(struct store *s, const struct store_retention *p, double now, size_t batch,
		store_pruned_fn fn, void *arg, double *ret_next)
{
	sqlite3 *db = store_db(s);
	if (!db)
		return -EIO;
	double next = 0;
	int r = exec_sql(db, "BEGIN IMMEDIATE");
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
		r = exec_sql(db, "COMMIT");
	if (r < 0)
		exec_sql(db, "ROLLBACK");
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

int store_add_attempt(struct store *s, const char *task_id, int attempt, const char *node,
		      const char *dispatch_id, const char *state, int exit_code, double started_at,
		      double finished_at)
{
	static const char sql[] = "INSERT OR REPLACE INTO attempts VALUES(?,?,?,?,?,?,?,?)";
	sqlite3_stmt *st;
	int r = store_prepare(s, sql, &st);
	if (r < 0)
		return r;
	bind_text(st, 1, task_id);
	sqlite3_bind_int(st, 2, attempt);
	bind_text(st, 3, node);
	bind_text(st, 4, dispatch_id);
	bind_text(st, 5, state);
	sqlite3_bind_int(st, 6, exit_code);
	bind_time(st, 7, started_at);
	bind_time(st, 8, finished_at);
	return stmt_run(st);
}

int store_put_output(struct store *s, const char *task_id, const char *stream, const char *data,
		     size_t len)
{
	sqlite3 *db = store_db(s);
	if (!db)
		return -EIO;
	int r = exec_sql(db, "BEGIN IMMEDIATE");
	if (r < 0)
		return r;
	int64_t old = output_bytes_of(db, task_id, stream);
	sqlite3_stmt *st;
	r = sqlite_to_errno(sqlite3_prepare_v2(
		db, "INSERT OR REPLACE INTO output(task_id, stream, data) VALUES(?,?,?)", -1, &st,
		NULL));
	if (r == 0) {
		bind_text(st, 1, task_id);
		bind_text(st, 2, stream);
		sqlite3_bind_blob(st, 3, data ? data : "", (int) len, SQLITE_TRANSIENT);
		r = stmt_run(st);
	}
	if (r == 0)
		r = totals_add(db, "output_bytes", (int64_t) len - old);
	if (r == 0)
		r = exec_sql(db, "COMMIT");
	if (r < 0)
		exec_sql(db, "ROLLBACK");
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
	bind_text(st, 1, task_id);
	bind_text(st, 2, stream);
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
	bind_text(st, 1, task_id);
	bind_text(st, 2, stream);
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

int store_set_meta(struct store *s, const char *key, const char *value)
{
	sqlite3_stmt *st;
	int r = store_prepare(s, "INSERT OR REPLACE INTO meta VALUES(?,?)", &st);
	if (r < 0)
		return r;
	bind_text(st, 1, key);
	bind_text(st, 2, value);
	return stmt_run(st);
}

char *store_get_meta(struct store *s, const char *key)
{
	sqlite3_stmt *st;
	if (store_prepare(s, "SELECT value FROM meta WHERE key=?", &st) < 0)
		return NULL;
	bind_text(st, 1, key);
	char *v = sqlite3_step(st) == SQLITE_ROW ? col_text(st, 0) : NULL;
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
		return sqlite_to_errno(rc);
	bind_text(st, 1, kind);
	bind_text(st, 2, key);
	bind_text(st, 3, body);
	sqlite3_bind_double(st, 4, clock_wall_s());
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return sqlite_to_errno(rc);
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
	bind_text(st, 1, kind);
	size_t n = 0, cap = 8;
	int64_t *ids = malloc(cap * sizeof(*ids));
	char **keys = malloc(cap * sizeof(*keys));
	char **bodies = malloc(cap * sizeof(*bodies));
	while (sqlite3_step(st) == SQLITE_ROW) {
		if (n == cap) {
			cap *= 2;
			ids = realloc(ids, cap * sizeof(*ids));
			keys = realloc(keys, cap * sizeof(*keys));
			bodies = realloc(bodies, cap * sizeof(*bodies));
		}
		ids[n] = sqlite3_column_int64(st, 0);
		keys[n] = col_text(st, 1);
		bodies[n++] = col_text(st, 2);
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
	return stmt_run(st);
}

int store_cache_put(struct store *s, const char *key, const char *json, double fetched_at)
{
	sqlite3_stmt *st;
	int rc = store_prepare(s, "INSERT OR REPLACE INTO cache VALUES(?,?,?)", &st);
	if (rc < 0)
		return rc;
	bind_text(st, 1, key);
	bind_text(st, 2, json);
	sqlite3_bind_double(st, 3, fetched_at);
	return stmt_run(st);
}

int store_cache_get(struct store *s, const char *key, char **ret_json, double *ret_fetched_at)
{
	sqlite3_stmt *st;
	int rc = store_prepare(s, "SELECT json, fetched_at FROM cache WHERE key=?", &st);
	if (rc < 0)
		return rc;
	bind_text(st, 1, key);
	int r = -ENOENT;
	if (sqlite3_step(st) == SQLITE_ROW) {
		*ret_json = col_text(st, 0);
		if (ret_fetched_at)
			*ret_fetched_at = sqlite3_column_double(st, 1);
		r = 0;
	}
	sqlite3_finalize(st);
	return r;
}

int store_events_add(struct store *s, const struct store_event *evs, size_t n, int64_t keep)
{
	sqlite3 *db = store_db(s);
	if (!db)
		return -EIO;
	int r = exec_sql(db, "BEGIN IMMEDIATE");
	if (r < 0)
		return r;
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO events VALUES(?,?,?)", -1, &st,
				    NULL);
	r = sqlite_to_errno(rc);
	int64_t newest = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		sqlite3_reset(st);
		sqlite3_bind_int64(st, 1, evs[i].seq);
		sqlite3_bind_double(st, 2, evs[i].at);
		sqlite3_bind_text(st, 3, evs[i].line, (int) evs[i].len, SQLITE_TRANSIENT);
		r = sqlite_to_errno(sqlite3_step(st));
		if (evs[i].seq > newest)
			newest = evs[i].seq;
	}
	sqlite3_finalize(st);
	/* the retention: a range of the primary key, so pruning costs what it removes */
	if (r == 0 && keep > 0 && newest > keep) {
		r = sqlite_to_errno(
			sqlite3_prepare_v2(db, "DELETE FROM events WHERE seq <= ?", -1, &st, NULL));
		if (r == 0) {
			sqlite3_bind_int64(st, 1, newest - keep);
			r = stmt_run(st);
		}
	}
	if (r == 0)
		r = exec_sql(db, "COMMIT");
	if (r < 0)
		exec_sql(db, "ROLLBACK");
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
			evs = realloc(evs, cap * sizeof(*evs));
		}
		struct store_event *e = &evs[n++];
		e->seq = sqlite3_column_int64(st, 0);
		e->at = sqlite3_column_double(st, 1);
		e->len = (size_t) sqlite3_column_bytes(st, 2);
		e->line = malloc(e->len + 1);
		memcpy(e->line, sqlite3_column_text(st, 2), e->len);
		e->line[e->len] = '\0';
	}
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE) {
		store_events_free(evs, n);
		return sqlite_to_errno(rc);
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
	bind_text(st, 1, node);
	if (draining)
		sqlite3_bind_double(st, 2, since);
	return stmt_run(st);
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
		nodes = realloc(nodes, (n + 2) * sizeof(*nodes));
		nodes[n++] = col_text(st, 0);
	}
	sqlite3_finalize(st);
	if (nodes)
		nodes[n] = NULL;
	*ret_nodes = nodes;
	*ret_n = n;
	return rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
}

/* The directory of the store's file, as a new string. */
static char *store_dir(const struct store *s)
{
	const char *slash = strrchr(s->path, '/');
	return slash ? strndup(s->path, (size_t) (slash - s->path)) : strdup(".");
}

/* Copies the database `src` into a new file at `dest` with the online backup API, in one
 * step: one read transaction on the source, so the copy holds exactly the transactions
 * committed before it began (in WAL mode writers go on meanwhile). */
static int backup_into(sqlite3 *src, const char *dest, char *errbuf, size_t errlen)
{
	sqlite3 *dst = NULL;
	int rc = sqlite3_open_v2(dest, &dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK) {
		snprintf(errbuf, errlen, "cannot open %s: %s", dest, sqlite3_errmsg(dst));
		sqlite3_close(dst);
		return sqlite_to_errno(rc);
	}
	/* a scratch file: a crash midway leaves a file that is thrown away anyway */
	sqlite3_exec(dst, "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;", NULL, NULL, NULL);
	sqlite3_backup *b = sqlite3_backup_init(dst, "main", src, "main");
	if (!b) {
		snprintf(errbuf, errlen, "cannot copy into %s: %s", dest, sqlite3_errmsg(dst));
		sqlite3_close(dst);
		return -EIO;
	}
	for (int tries = 0; tries < 100; tries++) {
		rc = sqlite3_backup_step(b, -1);
		if (rc != SQLITE_BUSY && rc != SQLITE_LOCKED)
			break;
		sqlite3_sleep(10);
	}
	sqlite3_backup_finish(b);
	int r = rc == SQLITE_DONE ? 0 : sqlite_to_errno(rc);
	if (r < 0)
		snprintf(errbuf, errlen, "cannot copy into %s: %s", dest, sqlite3_errstr(rc));
	if (sqlite3_close(dst) != SQLITE_OK && r == 0) {
		snprintf(errbuf, errlen, "cannot finish %s", dest);
		r = -EIO;
	}
	return r;
}

int store_snapshot(struct store *s, int *ret_fd, char *errbuf, size_t errlen)
{
	sqlite3 *db = store_db(s);
	if (!db) {
		snprintf(errbuf, errlen, "cannot open the store %s", s->path);
		return -EIO;
	}
	char *dir = store_dir(s);
	struct buf tmp;
	buf_init(&tmp);
	buf_printf(&tmp, "%s/.backup-XXXXXX", dir);
	free(dir);
	/* 0600 from mkostemp: the copy holds what the store holds */
	int fd = mkostemp(tmp.data, O_CLOEXEC);
	if (fd < 0) {
		int r = -errno;
		snprintf(errbuf, errlen, "cannot make a file in the state directory: %s",
			 strerror(errno));
		buf_free(&tmp);
		return r;
	}
	int r = backup_into(db, tmp.data, errbuf, errlen);
	/* the open fd is the copy from now on: nothing is left behind in the state dir */
	unlink(tmp.data);
	buf_free(&tmp);
	if (r < 0) {
		close(fd);
		return r;
	}
	*ret_fd = fd;
	return 0;
}

/* Checks that `db` is a clusterfs store this version can use: sound, with the tables,
 * an instance id and a schema version from 1 to STORE_SCHEMA_VERSION. */
static int check_restorable(sqlite3 *db, const char *file, int *ret_version, char *errbuf,
			    size_t errlen)
{
	sqlite3_stmt *st;
	int rc = sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, &st, NULL);
	if (rc != SQLITE_OK) {
		snprintf(errbuf, errlen, "%s is not an sqlite database: %s", file,
			 sqlite3_errmsg(db));
		return -EINVAL;
	}
	rc = sqlite3_step(st);
	const unsigned char *ok = rc == SQLITE_ROW ? sqlite3_column_text(st, 0) : NULL;
	if (!ok || strcmp((const char *) ok, "ok")) {
		snprintf(errbuf, errlen, "%s is damaged (sqlite quick_check: %s)", file,
			 ok ? (const char *) ok : sqlite3_errmsg(db));
		sqlite3_finalize(st);
		return -EINVAL;
	}
	sqlite3_finalize(st);
	int version = 0;
	if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK) {
		if (sqlite3_step(st) == SQLITE_ROW)
			version = sqlite3_column_int(st, 0);
		sqlite3_finalize(st);
	}
	if (version > STORE_SCHEMA_VERSION) {
		snprintf(errbuf, errlen,
			 "%s has schema version %d, newer than this clusterfs knows (%d): restore "
			 "it with the clusterfs that made it, or a newer one",
			 file, version, STORE_SCHEMA_VERSION);
		return -EPROTO;
	}
	bool store = false;
	if (version >= 1 && sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key='instance_id'",
					       -1, &st, NULL) == SQLITE_OK) {
		store = sqlite3_step(st) == SQLITE_ROW;
		sqlite3_finalize(st);
	}
	if (!store || sqlite3_prepare_v2(db, "SELECT count(*) FROM tasks", -1, &st, NULL)) {
		snprintf(errbuf, errlen,
			 "%s is not a clusterfs store (schema version %d, no instance id or no "
			 "tasks)",
			 file, version);
		return -EINVAL;
	}
	sqlite3_finalize(st);
	*ret_version = version;
	return 0;
}

/* The pid of a process that has the store at `db` open, or 0. Every sqlite connection to
 * a WAL database holds a read lock on the "dead man switch" byte of its -shm file (the
 * unix VFS: byte 128) for as long as it is open, so a write-lock probe there finds it. */
static pid_t store_user_pid(const char *db)
{
	struct buf shm;
	buf_init(&shm);
	buf_printf(&shm, "%s-shm", db);
	int fd = open(shm.data, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	buf_free(&shm);
	if (fd < 0)
		return 0;
	struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 128, .l_len = 1};
	pid_t pid = fcntl(fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK ? fl.l_pid : 0;
	close(fd);
	return pid;
}

int store_restore(const char *file, const char *dir, int *ret_version, char *errbuf, size_t errlen)
{
	sqlite3 *src = NULL;
	int rc = sqlite3_open_v2(file, &src, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK) {
		snprintf(errbuf, errlen, "cannot open %s: %s", file, sqlite3_errmsg(src));
		sqlite3_close(src);
		return -ENOENT;
	}
	int r = check_restorable(src, file, ret_version, errbuf, errlen);
	struct buf tmp, dest;
	buf_init(&tmp);
	buf_init(&dest);
	buf_printf(&tmp, "%s/.restore-XXXXXX", dir);
	buf_printf(&dest, "%s/clusterfs.db", dir);
	int fd = -1;
	pid_t user = r == 0 ? store_user_pid(dest.data) : 0;
	if (user) {
		snprintf(errbuf, errlen,
			 "%s is open in process %d (a clusterfs daemon that uses this state "
			 "directory?): stop it first, even with --force",
			 dest.data, (int) user);
		r = -EBUSY;
	}
	if (r == 0) {
		fd = mkostemp(tmp.data, O_CLOEXEC);
		if (fd < 0) {
			r = -errno;
			snprintf(errbuf, errlen, "cannot make a file in %s: %s", dir,
				 strerror(errno));
		}
	}
	if (r == 0)
		r = backup_into(src, tmp.data, errbuf, errlen);
	sqlite3_close(src);
	if (r == 0 && fsync(fd) < 0) {
		r = -errno;
		snprintf(errbuf, errlen, "cannot write %s: %s", tmp.data, strerror(errno));
	}
	if (fd >= 0)
		close(fd);
	if (r == 0) {
		/* an old store's WAL would be replayed into the restored file: it goes first */
		for (int i = 0; i < 2; i++) {
			struct buf side;
			buf_init(&side);
			buf_printf(&side, "%s%s", dest.data, i ? "-shm" : "-wal");
			if (unlink(side.data) < 0 && errno != ENOENT && r == 0) {
				r = -errno;
				snprintf(errbuf, errlen, "cannot remove %s: %s", side.data,
					 strerror(errno));
			}
			buf_free(&side);
		}
	}
	if (r == 0 && rename(tmp.data, dest.data) < 0) {
		r = -errno;
		snprintf(errbuf, errlen, "cannot rename %s to %s: %s", tmp.data, dest.data,
			 strerror(errno));
	}
	if (r < 0 && fd >= 0)
		unlink(tmp.data);
	buf_free(&tmp);
	buf_free(&dest);
	if (r < 0)
		return r;
	/* opening migrates it to this version and makes its files 0600 */
	struct store *s = NULL;
	r = store_open(dir, &s, errbuf, errlen);
	store_close(s);
	return r;
}
