/* The durable store: opening and migrating, one connection per thread, and the helpers
 * every part of it shares (store_internal.h says which file holds what). */
#include "backend/store_internal.h"
#include "backend/util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

int store_sqlite_to_errno(int rc)
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
		int r = store_sqlite_to_errno(rc);
		sqlite3_close(db);
		return r;
	}
	sqlite3_busy_timeout(db, 10000);
	sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", NULL, NULL, NULL);
	*ret = db;
	return 0;
}

/* This thread's connection, opened on first use. NULL on failure. */
int store_begin(struct store *s, sqlite3 **ret_db)
{
	sqlite3 *db = store_db(s);
	if (!db)
		return -EIO;
	*ret_db = db;
	return store_exec_sql(db, "BEGIN IMMEDIATE");
}

sqlite3 *store_db(struct store *s)
{
	struct conn *c = pthread_getspecific(s->key);
	if (c)
		return c->db;
	c = xcalloc(1, sizeof(*c));
	if (conn_open(s, &c->db) < 0) {
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

int store_exec_sql(sqlite3 *db, const char *sql)
{
	return store_sqlite_to_errno(sqlite3_exec(db, sql, NULL, NULL, NULL));
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
		int r = store_exec_sql(db, "BEGIN IMMEDIATE");
		if (r == 0)
			r = store_exec_sql(db, migrations[v]);
		if (r == 0)
			r = store_exec_sql(db, set);
		if (r == 0)
			r = store_exec_sql(db, "COMMIT");
		if (r < 0) {
			snprintf(errbuf, errlen, "cannot migrate the store to version %d: %s",
				 v + 1, sqlite3_errmsg(db));
			store_exec_sql(db, "ROLLBACK");
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
int store_prepare(struct store *s, const char *sql, sqlite3_stmt **ret_st)
{
	sqlite3 *db = store_db(s);
	if (!db)
		return -EIO;
	return store_sqlite_to_errno(sqlite3_prepare_v2(db, sql, -1, ret_st, NULL));
}

/* Runs a statement that returns no rows and finalizes it. 0 or -errno. */
int store_stmt_run(sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return store_sqlite_to_errno(rc);
}

int store_open(const char *dir, struct store **ret, char *errbuf, size_t errlen)
{
	struct store *s = xcalloc(1, sizeof(*s));
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
		id = xstrdup(hex);
	}
	snprintf(s->instance_id, sizeof(s->instance_id), "%s", id);
	free(id);
	*ret = s;
	return 0;
}

/* Takes every connection off the store and closes it. */
static void conns_close(struct store *s)
{
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
}

void store_close(struct store *s)
{
	if (!s)
		return;
	conns_close(s);
	pthread_key_delete(s->key);
	pthread_mutex_destroy(&s->lock);
	free(s->path);
	free(s);
}

void store_close_connections(struct store *s)
{
	pthread_setspecific(s->key, NULL);
	conns_close(s);
}

void store_set_durable(struct store *s, bool full)
{
	sqlite3 *db = store_db(s);
	if (db)
		store_exec_sql(db, full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL");
}

const char *store_instance_id(struct store *s)
{
	return s->instance_id;
}

void store_bind_text(sqlite3_stmt *st, int i, const char *s)
{
	if (s)
		sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
	else
		sqlite3_bind_null(st, i);
}

void store_bind_time(sqlite3_stmt *st, int i, double t)
{
	if (t > 0)
		sqlite3_bind_double(st, i, t);
	else
		sqlite3_bind_null(st, i);
}

char *store_col_text(sqlite3_stmt *st, int i)
{
	const unsigned char *s = sqlite3_column_text(st, i);
	return s ? xstrdup((const char *) s) : NULL;
}
