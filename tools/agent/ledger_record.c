/* The checkpoint ledger: the record route. An entry is checked, then stored in one
 * transaction committed before the answer; a record_id seen before answers with the entry
 * stored then (exactly-once delivery), a step that has an entry already is a conflict. */
#include "tools/agent/ledger_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
		record_id = xstrdup(json_string_value(rid));
		json_object_del(e, "record_id"); /* it is there: rid is its value */
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
			*ret_stored = xstrdup((const char *) sqlite3_column_text(st, 0));
			sqlite3_finalize(st);
			ledger_rollback(db);
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
