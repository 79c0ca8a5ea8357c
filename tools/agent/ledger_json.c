/* The checkpoint ledger: entries as JSON. ledger_json_write() prints every real with the
 * fewest digits that read back as the same double: metric values come back exactly as
 * they were recorded, and 0.61 stays 0.61. */
#include "tools/agent/ledger_internal.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
void ledger_json_write(struct buf *out, json_t *v)
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
json_t *ledger_entry_parse(const char *text, int64_t step)
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
int ledger_entry_write(struct buf *out, const char *text, int64_t step)
{
	json_t *e = ledger_entry_parse(text, step);
	if (!e)
		return -EBADMSG;
	ledger_json_write(out, e);
	json_decref(e);
	return 0;
}
