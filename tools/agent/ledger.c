/* The checkpoint ledger (ledger.h) on SQLite. Schema version 1:
 *
 *   entries(step INTEGER PRIMARY KEY, record_id TEXT UNIQUE, entry TEXT NOT NULL)
 *       entry: the JSON object as recorded, less record_id, with created_at
 *   metrics(name, step, value; PRIMARY KEY (name, step))
 *       one row per metric of each entry, so that a best value is an index lookup;
 *       value keeps the JSON number's type (integer or real)
 *
 * The file is marked with application_id LEDGER_APPLICATION_ID and user_version
 * LEDGER_SCHEMA_VERSION. Entries are written as JSON by ledger_json_write(), which prints
 * every real with the fewest digits that read back as the same double: metric values
 * come back exactly as they were recorded, and 0.61 stays 0.61. */
#include "tools/agent/ledger.h"

#include "backend/util.h"
#include "tools/agent/api.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>
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

/* ---- SQLite helpers ---- */

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
static int ledger_sql_error(sqlite3 *db, int rc, char *errbuf, size_t errlen)
{
	snprintf(errbuf, errlen, "%s", db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
	return ledger_errno(db, rc);
}

/* Runs SQL that returns no rows. 0 or -errno with errbuf. */
static int ledger_exec(sqlite3 *db, const char *sql, char *errbuf, size_t errlen)
{
	int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
	return rc == SQLITE_OK ? 0 : ledger_sql_error(db, rc, errbuf, errlen);
}

/* Rolls back the open transaction, if any, keeping the error already in errbuf. */
static void ledger_rollback(sqlite3 *db)
{
	if (!sqlite3_get_autocommit(db))
		sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
}

/* Prepares `sql`. 0 or -errno with errbuf. */
static int ledger_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **ret_stmt, char *errbuf,
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
	_cleanup_free_ char *dir = strdup(path);
	if (!dir)
		return -ENOMEM;
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

	struct ledger *l = calloc(1, sizeof(*l));
	if (!l) {
		snprintf(errbuf, errlen, "out of memory");
		return -ENOMEM;
	}
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
static int ledger_db(struct ledger *l, sqlite3 **ret_db, char *errbuf, size_t errlen)
{
	struct ledger_conn *c = pthread_getspecific(l->key);
	int r;

	if (c) {
		*ret_db = c->db;
		return 0;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		snprintf(errbuf, errlen, "out of memory");
		return -ENOMEM;
	}
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

/* ---- JSON output ---- */

static void ledger_json_write_string(struct buf *out, const char *s)
{
	const char *run = s;

	buf_puts(out, "\"");
	for (const char *p = s; *p; p++) {
		unsigned char ch = (unsigned char) *p;
		if (ch != '"' && ch != '\\' && ch >= 0x20)
			continue;
		buf_append(out, run, (size_t) (p - run));
		run = p + 1;
		switch (ch) {
		case '"': buf_puts(out, "\\\""); break;
		case '\\': buf_puts(out, "\\\\"); break;
		case '\n': buf_puts(out, "\\n"); break;
		case '\r': buf_puts(out, "\\r"); break;
		case '\t': buf_puts(out, "\\t"); break;
		default: buf_printf(out, "\\u%04x", ch); break;
		}
	}
	buf_puts(out, run);
	buf_puts(out, "\"");
}

/* The shortest decimal form that reads back as `v`, and still reads as a real. */
static void ledger_json_write_real(struct buf *out, double v)
{
	char s[40];

	if (!isfinite(v)) {
		buf_puts(out, "null");
		return;
	}
	for (int prec = 15; prec <= 17; prec++) {
		snprintf(s, sizeof(s), "%.*g", prec, v);
		if (strtod(s, NULL) == v)
			break;
	}
	buf_puts(out, s);
	if (!strpbrk(s, ".eE"))
		buf_puts(out, ".0");
}

/* Appends `v` as compact JSON. Borrows v. */
static void ledger_json_write(struct buf *out, json_t *v)
{
	const char *key;
	json_t *item;
	size_t i;
	bool first = true;

	switch (json_typeof(v)) {
	case JSON_OBJECT:
		buf_puts(out, "{");
		json_object_foreach (v, key, item) {
			if (!first)
				buf_puts(out, ",");
			first = false;
			ledger_json_write_string(out, key);
			buf_puts(out, ":");
			ledger_json_write(out, item);
		}
		buf_puts(out, "}");
		break;
	case JSON_ARRAY:
		buf_puts(out, "[");
		json_array_foreach (v, i, item) {
			if (i > 0)
				buf_puts(out, ",");
			ledger_json_write(out, item);
		}
		buf_puts(out, "]");
		break;
	case JSON_STRING: ledger_json_write_string(out, json_string_value(v)); break;
	case JSON_INTEGER: buf_printf(out, "%" JSON_INTEGER_FORMAT, json_integer_value(v)); break;
	case JSON_REAL: ledger_json_write_real(out, json_real_value(v)); break;
	case JSON_TRUE: buf_puts(out, "true"); break;
	case JSON_FALSE: buf_puts(out, "false"); break;
	case JSON_NULL: buf_puts(out, "null"); break;
	}
}

/* Parses an entry as stored. Returns a new object, or NULL when the row is damaged (which
 * only an outside edit of the file can do). */
static json_t *ledger_entry_parse(const char *text, int64_t step)
{
	json_t *e = text ? json_loads(text, 0, NULL) : NULL;
	if (!json_is_object(e)) {
		log_warn("ledger: the entry at step %lld is not a JSON object; skipped",
			 (long long) step);
		json_decref(e);
		return NULL;
	}
	return e;
}

/* Appends the entry stored as `text`. -EBADMSG when it is damaged. */
static int ledger_entry_write(struct buf *out, const char *text, int64_t step)
{
	json_t *e = ledger_entry_parse(text, step);
	if (!e)
		return -EBADMSG;
	ledger_json_write(out, e);
	json_decref(e);
	return 0;
}

/* ---- responses ---- */

/* Sends what was written in resp->body (plus "\n") with `status`. */
static int ledger_reply(struct response *resp, unsigned status)
{
	buf_puts(&resp->body, "\n");
	resp->status = status;
	return 0;
}

/* Answers a storage failure: 503 when another writer held the ledger too long, else 500.
 * Logs once, here. */
static int ledger_reply_failure(struct response *resp, const struct ledger *l, int r,
				const char *doing, const char *errbuf)
{
	log_err("ledger %s: cannot %s: %s", l->path, doing, errbuf);
	if (r == -EBUSY) {
		response_set_error(resp, 503, "the ledger is busy; try again shortly");
		response_add_header(resp, "Retry-After", "1");
	} else {
		response_set_error(resp, 500, "cannot %s the ledger: %s", doing, errbuf);
	}
	return 0;
}

/* The ledger of the agent handling `req`, or NULL after answering 404. */
static struct ledger *ledger_of(struct request *req, struct response *resp)
{
	const struct api_context *ctx = req->userdata;
	if (!ctx->ledger)
		response_set_error(resp, 404,
				   "this agent serves no ledger (start it with --ledger FILE)");
	return ctx->ledger;
}

/* Parses a step: decimal digits only, at most INT64_MAX. */
static bool ledger_step_parse(const char *s, int64_t *ret_step)
{
	int64_t v = 0;

	if (!*s)
		return false;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return false;
		int d = *s - '0';
		if (v > (INT64_MAX - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*ret_step = v;
	return true;
}

/* Whether lower values of `metric` are better by default: losses, errors, perplexities. */
static bool ledger_lower_by_default(const char *metric)
{
	return strcasestr(metric, "loss") || strcasestr(metric, "error") ||
	       strcasestr(metric, "perplexity") || strcasestr(metric, "ppl");
}

/* ---- handlers ---- */

int ledger_handle_list(struct request *req, struct response *resp)
{
	struct ledger *l = ledger_of(req, resp);
	char errbuf[256];
	sqlite3_stmt *st;
	sqlite3 *db;
	int r, rc;
	bool first = true;

	if (!l)
		return 0;
	if ((r = ledger_db(l, &db, errbuf, sizeof(errbuf))) < 0 ||
	    (r = ledger_prepare(db, "SELECT step, entry FROM entries ORDER BY step", &st, errbuf,
				sizeof(errbuf))) < 0)
		return ledger_reply_failure(resp, l, r, "read", errbuf);

	buf_puts(&resp->body, "{\"entries\":[");
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		size_t mark = resp->body.len;
		if (!first)
			buf_puts(&resp->body, ",");
		if (ledger_entry_write(&resp->body, (const char *) sqlite3_column_text(st, 1),
				       sqlite3_column_int64(st, 0)) < 0) {
			resp->body.len = mark;
			resp->body.data[mark] = '\0';
			continue;
		}
		first = false;
	}
	if (rc != SQLITE_DONE) {
		r = ledger_sql_error(db, rc, errbuf, sizeof(errbuf));
		sqlite3_finalize(st);
		return ledger_reply_failure(resp, l, r, "read", errbuf);
	}
	sqlite3_finalize(st);
	buf_puts(&resp->body, "]}");
	return ledger_reply(resp, 200);
}

int ledger_handle_get(struct request *req, struct response *resp)
{
	struct ledger *l = ledger_of(req, resp);
	const char *arg = req->params[0];
	char errbuf[256];
	sqlite3_stmt *st;
	sqlite3 *db;
	int64_t step;
	int r, rc;

	if (!l)
		return 0;
	if (strcmp(arg, "record") == 0) {
		response_set_error(resp, 405, "method %.16s not allowed on %.200s", req->method,
				   req->path);
		response_add_header(resp, "Allow", "POST");
		return 0;
	}
	if (!ledger_step_parse(arg, &step)) {
		response_set_error(resp, 400, "the step must be a whole number >= 0, not \"%.40s\"",
				   arg);
		return 0;
	}
	if ((r = ledger_db(l, &db, errbuf, sizeof(errbuf))) < 0 ||
	    (r = ledger_prepare(db, "SELECT entry FROM entries WHERE step = ?", &st, errbuf,
				sizeof(errbuf))) < 0)
		return ledger_reply_failure(resp, l, r, "read", errbuf);
	sqlite3_bind_int64(st, 1, step);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		r = ledger_entry_write(&resp->body, (const char *) sqlite3_column_text(st, 0),
				       step);
		if (r < 0)
			snprintf(errbuf, sizeof(errbuf), "the entry at step %lld is damaged",
				 (long long) step);
	} else if (rc != SQLITE_DONE) {
		r = ledger_sql_error(db, rc, errbuf, sizeof(errbuf));
	}
	sqlite3_finalize(st);
	if (r < 0)
		return ledger_reply_failure(resp, l, r, "read", errbuf);
	if (rc == SQLITE_DONE) {
		response_set_error(resp, 404, "no checkpoint at step %lld", (long long) step);
		return 0;
	}
	return ledger_reply(resp, 200);
}

/* The best row of `metric`: its step and value, from a prepared statement left on that
 * row. 1 when found, 0 when no entry has the metric, -errno with errbuf. */
static int ledger_find_best(sqlite3 *db, const char *metric, bool lower, bool with_entry,
			    sqlite3_stmt **ret_stmt, char *errbuf, size_t errlen)
{
	static const char *const sql[2][2] = {
		{
			"SELECT step, value FROM metrics WHERE name = ?"
			" ORDER BY value DESC, step ASC LIMIT 1",
			"SELECT step, value FROM metrics WHERE name = ?"
			" ORDER BY value ASC, step ASC LIMIT 1",
		},
		{
			"SELECT m.step, m.value, e.entry FROM metrics m JOIN entries e USING (step)"
			" WHERE m.name = ? ORDER BY m.value DESC, m.step ASC LIMIT 1",
			"SELECT m.step, m.value, e.entry FROM metrics m JOIN entries e USING (step)"
			" WHERE m.name = ? ORDER BY m.value ASC, m.step ASC LIMIT 1",
		},
	};
	sqlite3_stmt *st;
	int r = ledger_prepare(db, sql[with_entry][lower], &st, errbuf, errlen);
	if (r < 0)
		return r;
	sqlite3_bind_text(st, 1, metric, -1, SQLITE_STATIC);
	int rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*ret_stmt = st;
		return 1;
	}
	r = rc == SQLITE_DONE ? 0 : ledger_sql_error(db, rc, errbuf, errlen);
	sqlite3_finalize(st);
	return r;
}

int ledger_handle_best(struct request *req, struct response *resp)
{
	struct ledger *l = ledger_of(req, resp);
	const char *metric = request_get_query(req, "metric");
	const char *direction = request_get_query(req, "direction");
	char errbuf[256];
	sqlite3_stmt *st;
	sqlite3 *db;
	bool lower;
	int r;

	if (!l)
		return 0;
	if (!metric || !*metric) {
		response_set_error(resp, 400,
				   "the query parameter \"metric\" is required, like "
				   "/api/ledger/best?metric=val_loss");
		return 0;
	}
	if (!direction) {
		lower = ledger_lower_by_default(metric);
	} else if (strcmp(direction, "lower") == 0 || strcmp(direction, "higher") == 0) {
		lower = direction[0] == 'l';
	} else {
		response_set_error(resp, 400,
				   "the query parameter \"direction\" must be \"lower\" "
				   "or \"higher\"");
		return 0;
	}

	if ((r = ledger_db(l, &db, errbuf, sizeof(errbuf))) < 0 ||
	    (r = ledger_find_best(db, metric, lower, true, &st, errbuf, sizeof(errbuf))) < 0)
		return ledger_reply_failure(resp, l, r, "read", errbuf);
	if (r == 0) {
		response_set_error(resp, 404, "no checkpoint has metric %.200s", metric);
		return 0;
	}
	int64_t step = sqlite3_column_int64(st, 0);
	json_t *e = ledger_entry_parse((const char *) sqlite3_column_text(st, 2), step);
	sqlite3_finalize(st);
	if (!e) {
		snprintf(errbuf, sizeof(errbuf), "the entry at step %lld is damaged",
			 (long long) step);
		return ledger_reply_failure(resp, l, -EBADMSG, "read", errbuf);
	}
	if (json_object_set_new(e, "best_by", json_string(metric)) < 0 ||
	    json_object_set_new(e, "direction",
				json_string(lower ? "lower is better" : "higher is better")) < 0) {
		json_decref(e);
		return -ENOMEM;
	}
	ledger_json_write(&resp->body, e);
	json_decref(e);
	return ledger_reply(resp, 200);
}

/* The summary document, read in one transaction so that its parts agree. Returns a new
 * object, or NULL with -errno in *ret_err and errbuf. */
static json_t *ledger_summarize(sqlite3 *db, int *ret_err, char *errbuf, size_t errlen)
{
	sqlite3_stmt *names = NULL, *st = NULL;
	json_t *doc = NULL, *best = NULL;
	int r, rc;

	r = ledger_exec(db, "BEGIN", errbuf, errlen);
	if (r < 0)
		goto err;
	r = ledger_prepare(db, "SELECT count(*), min(step), max(step) FROM entries", &st, errbuf,
			   errlen);
	if (r < 0)
		goto err_rollback;
	rc = sqlite3_step(st);
	if (rc != SQLITE_ROW) {
		r = ledger_sql_error(db, rc, errbuf, errlen);
		goto err_rollback;
	}
	best = json_object();
	doc = json_object();
	if (!best || !doc ||
	    json_object_set_new(doc, "count", json_integer(sqlite3_column_int64(st, 0))) < 0)
		goto err_nomem;
	for (int col = 1; col <= 2; col++) {
		json_t *v = sqlite3_column_type(st, col) == SQLITE_NULL
				    ? json_null()
				    : json_integer(sqlite3_column_int64(st, col));
		if (json_object_set_new(doc, col == 1 ? "first_step" : "last_step", v) < 0)
			goto err_nomem;
	}
	sqlite3_finalize(st);
	st = NULL;

	r = ledger_prepare(db, "SELECT DISTINCT name FROM metrics ORDER BY name", &names, errbuf,
			   errlen);
	if (r < 0)
		goto err_rollback;
	while ((rc = sqlite3_step(names)) == SQLITE_ROW) {
		const char *name = (const char *) sqlite3_column_text(names, 0);
		bool lower = ledger_lower_by_default(name);
		r = ledger_find_best(db, name, lower, false, &st, errbuf, errlen);
		if (r < 0)
			goto err_rollback;
		if (r == 0)
			continue;
		json_t *value = sqlite3_column_type(st, 1) == SQLITE_INTEGER
					? json_integer(sqlite3_column_int64(st, 1))
					: json_real(sqlite3_column_double(st, 1));
		json_t *b =
			json_pack("{s:I,s:o,s:s}", "step", (json_int_t) sqlite3_column_int64(st, 0),
				  "value", value, "direction", lower ? "lower" : "higher");
		sqlite3_finalize(st);
		st = NULL;
		if (json_object_set_new(best, name, b) < 0)
			goto err_nomem;
	}
	if (rc != SQLITE_DONE) {
		r = ledger_sql_error(db, rc, errbuf, errlen);
		goto err_rollback;
	}
	sqlite3_finalize(names);
	names = NULL;
	r = ledger_exec(db, "COMMIT", errbuf, errlen);
	if (r < 0)
		goto err_rollback;
	if (json_object_set_new(doc, "best", best) < 0) {
		best = NULL;
		goto err_nomem;
	}
	return doc;

err_nomem:
	snprintf(errbuf, errlen, "out of memory");
	r = -ENOMEM;
err_rollback:
	sqlite3_finalize(st);
	sqlite3_finalize(names);
	ledger_rollback(db);
err:
	json_decref(best);
	json_decref(doc);
	*ret_err = r;
	return NULL;
}

int ledger_handle_summary(struct request *req, struct response *resp)
{
	struct ledger *l = ledger_of(req, resp);
	char errbuf[256];
	sqlite3 *db;
	int r;

	if (!l)
		return 0;
	r = ledger_db(l, &db, errbuf, sizeof(errbuf));
	if (r < 0)
		return ledger_reply_failure(resp, l, r, "read", errbuf);
	json_t *doc = ledger_summarize(db, &r, errbuf, sizeof(errbuf));
	if (!doc)
		return ledger_reply_failure(resp, l, r, "read", errbuf);
	ledger_json_write(&resp->body, doc);
	json_decref(doc);
	return ledger_reply(resp, 200);
}

/* Characters in UTF-8 text. */
static size_t utf8_length(const char *s)
{
	size_t n = 0;
	for (; *s; s++)
		if (((unsigned char) *s & 0xc0) != 0x80)
			n++;
	return n;
}

/* Checks a recorded entry and makes it the one to store: without record_id (returned in
 * *ret_record_id, a new string or NULL), with created_at. 0, or -EINVAL with a sentence
 * naming the field in errbuf. */
static int ledger_entry_check(json_t *e, char **ret_record_id, char *errbuf, size_t errlen)
{
	json_t *step = json_object_get(e, "step"), *metrics = json_object_get(e, "metrics");
	json_t *path = json_object_get(e, "path"), *created = json_object_get(e, "created_at");
	json_t *rid = json_object_get(e, "record_id");
	const char *name;
	json_t *v;

	if (!json_is_integer(step) || json_integer_value(step) < 0) {
		snprintf(errbuf, errlen, "field \"step\" %s a whole number >= 0",
			 step ? "must be" : "is missing; it must be");
		return -EINVAL;
	}
	if (!json_is_object(metrics) || json_object_size(metrics) == 0) {
		snprintf(errbuf, errlen,
			 "field \"metrics\" %s a non-empty object of numbers, like "
			 "{\"val_loss\": 0.61}",
			 metrics ? "must be" : "is missing; it must be");
		return -EINVAL;
	}
	json_object_foreach (metrics, name, v) {
		if (!*name) {
			snprintf(errbuf, errlen,
				 "field \"metrics\" has a metric with an empty name");
			return -EINVAL;
		}
		if (!json_is_number(v)) {
			snprintf(errbuf, errlen,
				 "metric \"%.100s\" in field \"metrics\" must be a "
				 "number",
				 name);
			return -EINVAL;
		}
	}
	if (!json_is_string(path) || json_string_length(path) == 0) {
		snprintf(errbuf, errlen,
			 "field \"path\" %s a non-empty string saying where the "
			 "checkpoint is",
			 path ? "must be" : "is missing; it must be");
		return -EINVAL;
	}
	if (created && !json_is_string(created) && !json_is_number(created)) {
		snprintf(errbuf, errlen,
			 "field \"created_at\" must be a time, as a string or a "
			 "number");
		return -EINVAL;
	}
	if (rid && (!json_is_string(rid) || json_string_length(rid) == 0 ||
		    utf8_length(json_string_value(rid)) > LEDGER_RECORD_ID_MAX)) {
		snprintf(errbuf, errlen,
			 "field \"record_id\" must be a string of 1 to %d characters",
			 LEDGER_RECORD_ID_MAX);
		return -EINVAL;
	}

	char *record_id = NULL;
	if (rid) {
		record_id = strdup(json_string_value(rid));
		if (!record_id || json_object_del(e, "record_id") < 0) {
			free(record_id);
			return -ENOMEM;
		}
	}
	if (!created) {
		char ts[32];
		clock_format_utc(clock_wall_s(), ts);
		if (json_object_set_new(e, "created_at", json_string(ts)) < 0) {
			free(record_id);
			return -ENOMEM;
		}
	}
	*ret_record_id = record_id;
	return 0;
}

/* What recording one entry came to. */
enum ledger_outcome {
	LEDGER_RECORDED,  /* stored now */
	LEDGER_DUPLICATE, /* its record_id was stored before: *ret_stored is that entry */
	LEDGER_CONFLICT,  /* its step has another entry */
};

/* Stores `e` (checked; `text` is its JSON) in one transaction, committed before this
 * returns. 0 with the outcome, or -errno with errbuf. */
static int ledger_store(sqlite3 *db, json_t *e, const char *text, const char *record_id,
			enum ledger_outcome *ret_outcome, char **ret_stored, char *errbuf,
			size_t errlen)
{
	int64_t step = json_integer_value(json_object_get(e, "step"));
	sqlite3_stmt *st = NULL;
	const char *name;
	json_t *v;
	int r, rc;

	r = ledger_exec(db, "BEGIN IMMEDIATE", errbuf, errlen);
	if (r < 0)
		return r;

	if (record_id) {
		r = ledger_prepare(db, "SELECT entry FROM entries WHERE record_id = ?", &st, errbuf,
				   errlen);
		if (r < 0)
			goto err_rollback;
		sqlite3_bind_text(st, 1, record_id, -1, SQLITE_STATIC);
		rc = sqlite3_step(st);
		if (rc == SQLITE_ROW) {
			char *stored = strdup((const char *) sqlite3_column_text(st, 0));
			sqlite3_finalize(st);
			ledger_rollback(db);
			if (!stored) {
				snprintf(errbuf, errlen, "out of memory");
				return -ENOMEM;
			}
			*ret_stored = stored;
			*ret_outcome = LEDGER_DUPLICATE;
			return 0;
		}
		if (rc != SQLITE_DONE) {
			r = ledger_sql_error(db, rc, errbuf, errlen);
			goto err_rollback;
		}
		sqlite3_finalize(st);
		st = NULL;
	}

	r = ledger_prepare(db,
			   "INSERT INTO entries (step, record_id, entry) VALUES (?, ?, ?)"
			   " ON CONFLICT (step) DO NOTHING",
			   &st, errbuf, errlen);
	if (r < 0)
		goto err_rollback;
	sqlite3_bind_int64(st, 1, step);
	if (record_id)
		sqlite3_bind_text(st, 2, record_id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, text, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc != SQLITE_DONE) {
		r = ledger_sql_error(db, rc, errbuf, errlen);
		goto err_rollback;
	}
	sqlite3_finalize(st);
	st = NULL;
	if (sqlite3_changes(db) == 0) {
		ledger_rollback(db);
		*ret_outcome = LEDGER_CONFLICT;
		return 0;
	}

	r = ledger_prepare(db, "INSERT INTO metrics (name, step, value) VALUES (?, ?, ?)", &st,
			   errbuf, errlen);
	if (r < 0)
		goto err_rollback;
	json_object_foreach (json_object_get(e, "metrics"), name, v) {
		sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, step);
		if (json_is_integer(v))
			sqlite3_bind_int64(st, 3, json_integer_value(v));
		else
			sqlite3_bind_double(st, 3, json_real_value(v));
		rc = sqlite3_step(st);
		if (rc != SQLITE_DONE) {
			r = ledger_sql_error(db, rc, errbuf, errlen);
			goto err_rollback;
		}
		sqlite3_reset(st);
	}
	sqlite3_finalize(st);
	st = NULL;

	r = ledger_exec(db, "COMMIT", errbuf, errlen);
	if (r < 0)
		goto err_rollback;
	*ret_outcome = LEDGER_RECORDED;
	return 0;

err_rollback:
	sqlite3_finalize(st);
	ledger_rollback(db);
	return r;
}

int ledger_handle_record(struct request *req, struct response *resp)
{
	struct ledger *l = ledger_of(req, resp);
	_cleanup_free_ char *record_id = NULL, *stored = NULL;
	enum ledger_outcome outcome = LEDGER_CONFLICT;
	char errbuf[256];
	json_error_t jerr;
	struct buf text;
	sqlite3 *db;
	int r;

	if (!l)
		return 0;
	if (req->body_len > LEDGER_ENTRY_MAX) {
		response_set_error(resp, 413, "the entry is %zu bytes; the limit is %d",
				   req->body_len, LEDGER_ENTRY_MAX);
		return 0;
	}
	json_t *e = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
	if (!e) {
		response_set_error(resp, 400, "the body is not valid JSON: %s (line %d, column %d)",
				   jerr.text, jerr.line, jerr.column);
		return 0;
	}
	if (!json_is_object(e)) {
		json_decref(e);
		response_set_error(resp, 400,
				   "the body must be a JSON object, like {\"step\": "
				   "1000, \"metrics\": {\"val_loss\": 0.61}, \"path\": "
				   "\"/ckpt/step-1000\"}");
		return 0;
	}
	r = ledger_entry_check(e, &record_id, errbuf, sizeof(errbuf));
	if (r < 0) {
		json_decref(e);
		if (r != -EINVAL)
			return r;
		response_set_error(resp, 400, "%s", errbuf);
		return 0;
	}

	int64_t step = json_integer_value(json_object_get(e, "step"));
	buf_init(&text);
	ledger_json_write(&text, e);
	r = ledger_db(l, &db, errbuf, sizeof(errbuf));
	if (r == 0)
		r = ledger_store(db, e, text.data, record_id, &outcome, &stored, errbuf,
				 sizeof(errbuf));
	json_decref(e);
	if (r < 0) {
		buf_free(&text);
		return ledger_reply_failure(resp, l, r, "write", errbuf);
	}

	switch (outcome) {
	case LEDGER_RECORDED:
		log_info("ledger: recorded the checkpoint at step %lld", (long long) step);
		buf_printf(&resp->body, "{\"entry\":%s}", text.data);
		buf_free(&text);
		return ledger_reply(resp, 201);
	case LEDGER_DUPLICATE:
		buf_free(&text);
		buf_puts(&resp->body, "{\"entry\":");
		if (ledger_entry_write(&resp->body, stored, step) < 0) {
			snprintf(errbuf, sizeof(errbuf), "the entry of record_id %.128s is damaged",
				 record_id);
			return ledger_reply_failure(resp, l, -EBADMSG, "read", errbuf);
		}
		buf_puts(&resp->body, ",\"duplicate\":true}");
		return ledger_reply(resp, 200);
	case LEDGER_CONFLICT: break;
	}
	buf_free(&text);
	response_set_error(resp, 409, "step %lld is recorded already", (long long) step);
	return 0;
}
