/* The checkpoint ledger: the answers every route gives, and the read routes: the list,
 * one step, the best entry by a metric, the summary. */
#include "tools/agent/ledger_internal.h"

#include "tools/agent/api.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* Sends what was written in resp->body (plus "\n") with `status`. */
int ledger_reply(struct response *resp, unsigned status)
{
	buf_puts(&resp->body, "\n");
	resp->status = status;
	return 0;
}

/* Answers a storage failure: 503 when another writer held the ledger too long, else 500.
 * Logs once, here. */
int ledger_reply_failure(struct response *resp, const struct ledger *l, int r, const char *doing,
			 const char *errbuf)
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
struct ledger *ledger_of(struct request *req, struct response *resp)
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
