/* The checkpoint ledger (ledger.h) on SQLite: the file, its connections, SQL helpers.
 * Schema version 1:
 *
 *   entries(step INTEGER PRIMARY KEY, record_id TEXT UNIQUE, entry TEXT NOT NULL)
 *       entry: the JSON object as recorded, less record_id, with created_at
 *   metrics(name, step, value; PRIMARY KEY (name, step))
 *       one row per metric of each entry, so that a best value is an index lookup;
 *       value keeps the JSON number's type (integer or real)
 *
 * The file is marked with application_id LEDGER_APPLICATION_ID and user_version
 * LEDGER_SCHEMA_VERSION. Entries are written as JSON by ledger_json_write()
 * (ledger_json.c); the routes are in ledger_read.c and ledger_record.c. */
#include "tools/agent/ledger_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LEDGER_SCHEMA_VERSION  1
#define LEDGER_APPLICATION_ID  0x4346534c /* "CFSL" */
#define LEDGER_BUSY_TIMEOUT_MS 5000       /* a writer waits this long for another */

static const char ledger_schema[] = "CREATE TABLE entries ("
				    "  step INTEGER PRIMARY KEY,"
				    "  record_id TEXT UNIQUE,"
				    "  entry TEXT NOT NULL);"
				    "CREATE TABLE metrics ("
				    "  name TEXT NOT NULL,"
				    "  step INTEGER NOT NULL REFERENCES entries (step),"
				    "  value NOT NULL,"
				    "  PRIMARY KEY (name, step)) WITHOUT ROWID;"
				    "CREATE INDEX metrics_by_value ON metrics (name, value, step);";

/* Maps an SQLite result code on `db` to a negative errno. */
static int ledger_errno(sqlite3 *db, int rc)
{
	int sys = db ? sqlite3_system_errno(db) : 0;

	switch (rc & 0xff) {
	case SQLITE_NOMEM: return -ENOMEM;
	case SQLITE_BUSY:
	case SQLITE_LOCKED: return -EBUSY;
	case SQLITE_FULL: return -ENOSPC;
	case SQLITE_READONLY: return -EROFS;
	case SQLITE_PERM:
	case SQLITE_AUTH: return -EACCES;
	case SQLITE_NOTADB:
	case SQLITE_CORRUPT: return -EBADMSG;
	case SQLITE_CANTOPEN:
	case SQLITE_IOERR: return sys > 0 ? -sys : -EIO;
	default: return -EIO;
	}
}

/* Says what went wrong on `db` in errbuf and returns it as -errno. */
int ledger_sql_error(sqlite3 *db, int rc, char *errbuf, size_t errlen)
{
	snprintf(errbuf, errlen, "%s", db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
	return ledger_errno(db, rc);
}

/* Runs SQL that returns no rows. 0 or -errno with errbuf. */
int ledger_exec(sqlite3 *db, const char *sql, char *errbuf, size_t errlen)
{
	int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
	return rc == SQLITE_OK ? 0 : ledger_sql_error(db, rc, errbuf, errlen);
}

/* Rolls back the open transaction, if any, keeping the error already in errbuf. */
void ledger_rollback(sqlite3 *db)
{
	if (!sqlite3_get_autocommit(db))
		sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
}

/* Prepares `sql`. 0 or -errno with errbuf. */
int ledger_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **ret_stmt, char *errbuf,
		   size_t errlen)
{
	int rc = sqlite3_prepare_v2(db, sql, -1, ret_stmt, NULL);
	return rc == SQLITE_OK ? 0 : ledger_sql_error(db, rc, errbuf, errlen);
}

/* Reads the integer a single-value query returns. 0 or -errno with errbuf. */
static int ledger_query_int(sqlite3 *db, const char *sql, int64_t *ret_value, char *errbuf,
			    size_t errlen)
{
	sqlite3_stmt *st;
	int r = ledger_prepare(db, sql, &st, errbuf, errlen);
	if (r < 0)
		return r;
	int rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*ret_value = sqlite3_column_int64(st, 0);
	else
		r = ledger_sql_error(db, rc == SQLITE_DONE ? SQLITE_ERROR : rc, errbuf, errlen);
	sqlite3_finalize(st);
	return r;
}

/* Opens a connection to `path` set up for the ledger: synchronous FULL, a busy timeout.
 * 0 or -errno with errbuf. */
static int ledger_connect(const char *path, sqlite3 **ret_db, char *errbuf, size_t errlen)
{
	sqlite3 *db = NULL;
	int rc = sqlite3_open_v2(
		path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
	int r;

	if (rc != SQLITE_OK) {
		r = ledger_sql_error(db, rc, errbuf, errlen);
		sqlite3_close(db);
		return r;
	}
	sqlite3_busy_timeout(db, LEDGER_BUSY_TIMEOUT_MS);
	r = ledger_exec(db, "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON", errbuf, errlen);
	if (r < 0) {
		sqlite3_close(db);
		return r;
	}
	*ret_db = db;
	return 0;
}

/* Puts the file in WAL mode and creates the schema, or checks the one it has. 0 or
 * -errno with errbuf. */
static int ledger_setup(sqlite3 *db, char *errbuf, size_t errlen)
{
	sqlite3_stmt *st;
	int64_t version, app_id, n_objects;
	int r;

	r = ledger_prepare(db, "PRAGMA journal_mode = WAL", &st, errbuf, errlen);
	if (r < 0)
		return r;
	int rc = sqlite3_step(st);
	const char *mode = rc == SQLITE_ROW ? (const char *) sqlite3_column_text(st, 0) : NULL;
	if (rc != SQLITE_ROW)
		r = ledger_sql_error(db, rc, errbuf, errlen);
	else if (!mode || strcmp(mode, "wal") != 0) {
		snprintf(errbuf, errlen,
			 "the file cannot be put in WAL mode (it stays in %s "
			 "mode); is it on a network filesystem?",
			 mode ? mode : "another");
		r = -EOPNOTSUPP;
	}
	sqlite3_finalize(st);
	if (r < 0)
		return r;

	r = ledger_exec(db, "BEGIN IMMEDIATE", errbuf, errlen);
	if (r < 0)
		return r;
	if ((r = ledger_query_int(db, "PRAGMA user_version", &version, errbuf, errlen)) < 0 ||
	    (r = ledger_query_int(db, "PRAGMA application_id", &app_id, errbuf, errlen)) < 0 ||
	    (r = ledger_query_int(db, "SELECT count(*) FROM sqlite_schema", &n_objects, errbuf,
				  errlen)) < 0)
		goto err_rollback;

	if (app_id != LEDGER_APPLICATION_ID && (app_id != 0 || n_objects > 0)) {
		snprintf(errbuf, errlen,
			 "the file is an SQLite database but not a checkpoint "
			 "ledger (it holds other tables)");
		r = -EINVAL;
		goto err_rollback;
	}
	if (version > LEDGER_SCHEMA_VERSION) {
		snprintf(errbuf, errlen,
			 "the ledger has schema version %lld, written by a newer clusterfs-agent; "
			 "this one knows version %d",
			 (long long) version, LEDGER_SCHEMA_VERSION);
		r = -EPROTONOSUPPORT;
		goto err_rollback;
	}
	if (version == 0) {
		char sql[128];
		r = ledger_exec(db, ledger_schema, errbuf, errlen);
		if (r < 0)
			goto err_rollback;
		snprintf(sql, sizeof(sql), "PRAGMA application_id = %d; PRAGMA user_version = %d",
			 LEDGER_APPLICATION_ID, LEDGER_SCHEMA_VERSION);
		r = ledger_exec(db, sql, errbuf, errlen);
		if (r < 0)
			goto err_rollback;
	}
	return ledger_exec(db, "COMMIT", errbuf, errlen);

err_rollback:
	ledger_rollback(db);
	return r;
}

/* Makes the creation of `path` durable: fsyncs the directory that holds it. */
static int ledger_sync_parent(const char *path)
{
	_cleanup_free_ char *dir = xstrdup(path);
	char *slash = strrchr(dir, '/');
	if (!slash)
		return -EINVAL;
	slash[slash == dir ? 1 : 0] = '\0';
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int r = fsync(fd) < 0 ? -errno : 0;
	close(fd);
	return r;
}

int ledger_open(const char *path, struct ledger **ret_ledger, char *errbuf, size_t errlen)
{
	sqlite3 *db;
	int r;

	r = ledger_connect(path, &db, errbuf, errlen);
	if (r < 0)
		return r;
	r = ledger_setup(db, errbuf, errlen);
	sqlite3_close(db);
	if (r < 0)
		return r;

	struct ledger *l = xcalloc(1, sizeof(*l));
	l->path = realpath(path, NULL);
	if (!l->path) {
		r = -errno;
		snprintf(errbuf, errlen, "cannot resolve the path: %s", strerror(-r));
		goto err_free_ledger;
	}
	r = ledger_sync_parent(l->path);
	if (r < 0) {
		snprintf(errbuf, errlen, "cannot sync its directory: %s", strerror(-r));
		goto err_free_ledger;
	}
	r = -pthread_key_create(&l->key, NULL);
	if (r < 0) {
		snprintf(errbuf, errlen, "cannot create a thread key: %s", strerror(-r));
		goto err_free_ledger;
	}
	pthread_mutex_init(&l->lock, NULL);
	*ret_ledger = l;
	return 0;

err_free_ledger:
	free(l->path);
	free(l);
	return r;
}

void ledger_close(struct ledger *l)
{
	if (!l)
		return;
	struct ledger_conn *c = l->conns;
	while (c) {
		struct ledger_conn *next = c->next;
		sqlite3_close(c->db);
		free(c);
		c = next;
	}
	pthread_key_delete(l->key);
	pthread_mutex_destroy(&l->lock);
	free(l->path);
	free(l);
}

/* The calling thread's connection, opened on first use. 0 or -errno with errbuf. */
int ledger_db(struct ledger *l, sqlite3 **ret_db, char *errbuf, size_t errlen)
{
	struct ledger_conn *c = pthread_getspecific(l->key);
	int r;

	if (c) {
		*ret_db = c->db;
		return 0;
	}
	c = xcalloc(1, sizeof(*c));
	r = ledger_connect(l->path, &c->db, errbuf, errlen);
	if (r < 0) {
		free(c);
		return r;
	}
	r = -pthread_setspecific(l->key, c);
	if (r < 0) {
		snprintf(errbuf, errlen, "out of memory");
		sqlite3_close(c->db);
		free(c);
		return r;
	}
	pthread_mutex_lock(&l->lock);
	c->next = l->conns;
	l->conns = c;
	pthread_mutex_unlock(&l->lock);
	*ret_db = c->db;
	return 0;
}
