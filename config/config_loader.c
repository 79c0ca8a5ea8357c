/* Config: the loader's primitives. The path being checked and the sentences that name a
 * value by it (and by FILE:LINE:COLUMN, through locate.c); the typed readers of optional
 * members; the checks several sections share; a host's or a service's transport. */
#include "config/config_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/util.h"

void config_set_error(char *errbuf, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	if (!errbuf || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(errbuf, errlen, fmt, ap);
	va_end(ap);
}

/* Frees a secret after overwriting it. */
void config_free_secret(char *s)
{
	if (!s)
		return;
	explicit_bzero(s, strlen(s));
	free(s);
}

void config_ld_push(struct loader *ld, const char *key)
{
	if (ld->depth >= LOADER_MAX_DEPTH)
		abort();
	ld->path[ld->depth++] = (struct locate_step){.key = key};
}

void config_ld_push_index(struct loader *ld, size_t index)
{
	if (ld->depth >= LOADER_MAX_DEPTH)
		abort();
	ld->path[ld->depth++] = (struct locate_step){.key = NULL, .index = index};
}

void config_ld_pop(struct loader *ld)
{
	ld->depth--;
}

/* The current path for messages: "hosts.spark1.services.agent.port", or "the top level". */
const char *config_ld_where(struct loader *ld)
{
	struct buf b;
	if (ld->depth == 0)
		return "the top level";
	buf_init(&b);
	for (size_t i = 0; i < ld->depth; i++) {
		if (ld->path[i].key)
			buf_printf(&b, "%s%s", i ? "." : "", ld->path[i].key);
		else
			buf_printf(&b, "[%zu]", ld->path[i].index);
	}
	snprintf(ld->where, sizeof(ld->where), "%s", b.data);
	buf_free(&b);
	for (char *p = ld->where; *p; p++)
		if ((unsigned char) *p < 0x20 || *p == 0x7f)
			*p = '?';
	return ld->where;
}

/* A string in double quotes with JSON escapes, shortened if long, safe for one log line. */
const char *config_ld_quote(struct loader *ld, int slot, const char *s)
{
	char *out = ld->quoted[slot];
	size_t cap = sizeof(ld->quoted[slot]), n = 0;
	out[n++] = '"';
	for (; *s; s++) {
		unsigned char c = (unsigned char) *s;
		if (n + 8 >= cap) {
			memcpy(out + n, "...", 3);
			n += 3;
			break;
		}
		if (c == '"' || c == '\\')
			n += (size_t) snprintf(out + n, cap - n, "\\%c", c);
		else if (c < 0x20 || c == 0x7f)
			n += (size_t) snprintf(out + n, cap - n, "\\u%04x", c);
		else
			out[n++] = (char) c;
	}
	out[n++] = '"';
	out[n] = '\0';
	return out;
}

/* A JSON value as written in compact form, shortened, for "..., not VALUE". */
const char *config_ld_value(struct loader *ld, const json_t *v)
{
	char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
	if (!s)
		return "(unprintable)";
	size_t len = strlen(s), cap = sizeof(ld->value);
	if (len >= cap)
		snprintf(ld->value, cap, "%.*s...", (int) (cap - 4), s);
	else
		memcpy(ld->value, s, len + 1);
	free(s);
	for (char *p = ld->value; *p; p++)
		if ((unsigned char) *p < 0x20 || *p == 0x7f)
			*p = '?';
	return ld->value;
}

int config_ld_fail(struct loader *ld, enum locate_target target, const char *fmt, ...)
{
	struct buf msg;
	int line, col;
	va_list ap;

	buf_init(&msg);
	va_start(ap, fmt);
	buf_vprintf(&msg, fmt, ap);
	va_end(ap);
	if (ld->text && ld->depth >= ld->skip &&
	    locate_json(ld->text, ld->len, ld->path + ld->skip, ld->depth - ld->skip, target, &line,
			&col) == 0)
		config_set_error(ld->errbuf, ld->errlen, "%s:%d:%d: %s", ld->name, line, col,
				 msg.data ? msg.data : "");
	else
		config_set_error(ld->errbuf, ld->errlen, "%s: %s", ld->name,
				 msg.data ? msg.data : "");
	buf_free(&msg);
	return -EINVAL;
}

/* Formats a jansson parse error: "NAME:LINE:COLUMN: ..." when jansson knows where. */
void config_syntax_error(const char *name, const json_error_t *e, char *errbuf, size_t errlen)
{
	char pos[64] = "";
	if (e->line > 0)
		snprintf(pos, sizeof(pos), "%d:%d: ", e->line, e->column > 0 ? e->column : 1);
	if (json_error_code(e) == json_error_duplicate_key)
		config_set_error(errbuf, errlen, "%s:%s%s; a key may appear only once in an object",
				 name, pos, e->text);
	else
		config_set_error(errbuf, errlen, "%s:%sinvalid JSON: %s", name, pos, e->text);
}

/* The known word (NULL-terminated list) nearest to `word` within edit distance 2, or NULL. */
static const char *suggest(const char *word, const char *const *known)
{
	size_t n = 0;
	while (known[n])
		n++;
	return util_closest_word(word, known, n, 2);
}

/* Rejects keys of `obj` that are not in `known`, suggesting the nearest known one. */
int config_check_keys(struct loader *ld, const json_t *obj, const char *const *known)
{
	const char *key;
	json_t *v;

	json_object_foreach ((json_t *) obj, key, v) {
		bool ok = false;
		for (size_t i = 0; known[i] && !ok; i++)
			ok = strcmp(key, known[i]) == 0;
		if (ok)
			continue;

		char where[sizeof(ld->where)];
		snprintf(where, sizeof(where), "%s", config_ld_where(ld));
		const char *hint = suggest(key, known);
		int r;
		config_ld_push(ld, key);
		if (hint) {
			r = config_ld_fail(ld, LOCATE_KEY,
					   "unknown key %s in %s; did you mean \"%s\"?",
					   config_ld_quote(ld, 0, key), where, hint);
		} else {
			struct buf list;
			buf_init(&list);
			for (size_t i = 0; known[i]; i++)
				buf_printf(&list, "%s%s", i ? ", " : "", known[i]);
			r = config_ld_fail(ld, LOCATE_KEY, "unknown key %s in %s (known keys: %s)",
					   config_ld_quote(ld, 0, key), where, list.data);
			buf_free(&list);
		}
		config_ld_pop(ld);
		return r;
	}
	return 0;
}

/* Checks that the value at the current path is an object. */
int config_expect_object(struct loader *ld, const json_t *v)
{
	if (json_is_object(v))
		return 0;
	return config_ld_fail(ld, LOCATE_VALUE, "%s must be an object ({...}), not %s",
			      config_ld_where(ld), config_ld_value(ld, v));
}

int config_open_object(struct loader *ld, const json_t *obj, const char *key,
		       const char *const *known, json_t **ret_obj)
{
	json_t *v = json_object_get(obj, key);
	int r;

	if (!v)
		return 0;
	config_ld_push(ld, key);
	r = config_expect_object(ld, v);
	if (r == 0)
		r = config_check_keys(ld, v, known);
	if (r < 0) {
		config_ld_pop(ld);
		return r;
	}
	*ret_obj = v;
	return 1;
}

int config_enter_entry(struct loader *ld, const char *what, const char *name, const json_t *v,
		       const char *const *known)
{
	int r;
	config_ld_push(ld, name);
	if (!name_is_valid(name))
		return config_ld_fail(
			ld, LOCATE_KEY,
			"%s name %s must be printable, without '/', and not \".\" or \"..\"", what,
			config_ld_quote(ld, 0, name));
	r = config_expect_object(ld, v);
	if (r == 0)
		r = config_check_keys(ld, v, known);
	return r;
}

/* Reads an optional integer member within [min, max]; leaves *out alone when absent. */
int config_parse_int(struct loader *ld, const json_t *obj, const char *key, long min, long max,
		     int *out)
{
	json_t *v = json_object_get(obj, key);
	int r = 0;
	if (!v)
		return 0;
	config_ld_push(ld, key);
	if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
		r = config_ld_fail(ld, LOCATE_VALUE,
				   "%s must be an integer from %ld to %ld, not %s",
				   config_ld_where(ld), min, max, config_ld_value(ld, v));
	else
		*out = (int) json_integer_value(v);
	config_ld_pop(ld);
	return r;
}

/* Reads an optional number member within [min, max]; leaves *out alone when absent. */
int config_parse_number(struct loader *ld, const json_t *obj, const char *key, double min,
			double max, double *out)
{
	json_t *v = json_object_get(obj, key);
	int r = 0;
	if (!v)
		return 0;
	config_ld_push(ld, key);
	if (!json_is_number(v) || json_number_value(v) < min || json_number_value(v) > max)
		r = config_ld_fail(ld, LOCATE_VALUE, "%s must be a number from %g to %g, not %s",
				   config_ld_where(ld), min, max, config_ld_value(ld, v));
	else
		*out = json_number_value(v);
	config_ld_pop(ld);
	return r;
}

/* Reads an optional string member; leaves *out alone when absent. Borrows from the doc. */
int config_parse_string(struct loader *ld, const json_t *obj, const char *key, bool nonempty,
			const char **out)
{
	json_t *v = json_object_get(obj, key);
	int r = 0;
	if (!v)
		return 0;
	config_ld_push(ld, key);
	if (!json_is_string(v))
		r = config_ld_fail(ld, LOCATE_VALUE, "%s must be a string, not %s",
				   config_ld_where(ld), config_ld_value(ld, v));
	else if (nonempty && json_string_length(v) == 0)
		r = config_ld_fail(ld, LOCATE_VALUE, "%s must not be empty", config_ld_where(ld));
	else if (strlen(json_string_value(v)) != json_string_length(v))
		r = config_ld_fail(ld, LOCATE_VALUE, "%s must not contain a NUL character",
				   config_ld_where(ld));
	else
		*out = json_string_value(v);
	config_ld_pop(ld);
	return r;
}

/* Reads an optional boolean member; leaves *out alone when absent. */
int config_parse_bool(struct loader *ld, const json_t *obj, const char *key, bool *out)
{
	json_t *v = json_object_get(obj, key);
	int r = 0;
	if (!v)
		return 0;
	config_ld_push(ld, key);
	if (!json_is_boolean(v))
		r = config_ld_fail(ld, LOCATE_VALUE, "%s must be true or false, not %s",
				   config_ld_where(ld), config_ld_value(ld, v));
	else
		*out = json_is_true(v);
	config_ld_pop(ld);
	return r;
}

static const char *const run_as_names[] = {"submitter", "agent", NULL};

/* Reads an optional "run_as" member ("submitter" or "agent"). */
int config_parse_run_as(struct loader *ld, const json_t *obj, enum cfg_run_as *out)
{
	const char *v = NULL;
	int r = config_parse_string(ld, obj, "run_as", true, &v);
	if (r < 0 || !v)
		return r;
	for (int i = 0; run_as_names[i]; i++) {
		if (!strcmp(v, run_as_names[i])) {
			*out = (enum cfg_run_as) i;
			return 0;
		}
	}
	config_ld_push(ld, "run_as");
	r = config_ld_fail(ld, LOCATE_VALUE,
			   "%s must be \"submitter\" (tasks run as the user who submitted them) or "
			   "\"agent\" (as the agent's own user), not %s",
			   config_ld_where(ld), config_ld_quote(ld, 0, v));
	config_ld_pop(ld);
	return r;
}

/* A URL path: starts with '/', printable, no spaces. */
bool config_url_path_ok(const char *s)
{
	if (s[0] != '/')
		return false;
	for (; *s; s++) {
		unsigned char c = (unsigned char) *s;
		if (c <= ' ' || c == 0x7f)
			return false;
	}
	return true;
}

bool config_in_list(const char *s, const char *const *list)
{
	for (size_t i = 0; list[i]; i++)
		if (strcmp(s, list[i]) == 0)
			return true;
	return false;
}

char *config_path_join(const char *dir, const char *rel)
{
	struct buf b;
	if (rel[0] == '/' || !dir)
		return xstrdup(rel);
	buf_init(&b);
	buf_printf(&b, "%s%s%s", dir, dir[0] && dir[strlen(dir) - 1] == '/' ? "" : "/", rel);
	return buf_steal(&b, NULL);
}

/* "token" in a config would put a secret into a file that is shown and copied around. */
int config_reject_inline_token(struct loader *ld, const json_t *obj)
{
	int r;
	if (!json_object_get(obj, "token"))
		return 0;
	config_ld_push(ld, "token");
	r = config_ld_fail(
		ld, LOCATE_KEY,
		"a token is never written in the config; put it in a file that only its owner "
		"can read and name that file with \"token_file\"");
	config_ld_pop(ld);
	return r;
}

bool config_fingerprint_is_valid(const char *fp)
{
	size_t plen = strlen(CFG_FINGERPRINT_PREFIX);
	unsigned char digest[33];
	if (strncmp(fp, CFG_FINGERPRINT_PREFIX, plen) != 0 || strlen(fp + plen) != 44)
		return false;
	return util_base64_decode(fp + plen, digest, sizeof(digest)) == 32;
}

/* A CA file must be readable when the config is loaded, not at the first request. */
int config_check_ca_file(struct loader *ld, const char *path)
{
	if (access(path, R_OK) == 0)
		return 0;
	return config_ld_fail(ld, LOCATE_VALUE, "%s names %s, which cannot be read: %s",
			      config_ld_where(ld), config_ld_quote(ld, 0, path), strerror(errno));
}

/* "tls" (true, false, or {"fingerprint": "sha256:...", "ca_file": "PATH"}) and
 * "insecure_http" (a boolean) of a host or a service, into t. */
int config_parse_transport(struct loader *ld, const json_t *obj, struct cfg_transport *t)
{
	static const char *const keys[] = {"fingerprint", "ca_file", NULL};
	json_t *tls = json_object_get(obj, "tls");
	json_t *insecure = json_object_get(obj, "insecure_http");
	const char *fp = NULL, *ca = NULL;
	int r = 0;

	if (insecure) {
		config_ld_push(ld, "insecure_http");
		if (!json_is_boolean(insecure))
			r = config_ld_fail(ld, LOCATE_VALUE, "%s must be true or false, not %s",
					   config_ld_where(ld), config_ld_value(ld, insecure));
		else
			t->insecure_http = json_is_true(insecure);
		config_ld_pop(ld);
		if (r < 0)
			return r;
	}
	if (!tls)
		return 0;
	config_ld_push(ld, "tls");
	if (json_is_boolean(tls)) {
		t->tls = json_is_true(tls);
		goto out_pop;
	}
	if (!json_is_object(tls)) {
		r = config_ld_fail(ld, LOCATE_VALUE,
				   "%s must be true, false, {\"fingerprint\": \"sha256:...\"} or "
				   "{\"ca_file\": \"PATH\"}, not %s",
				   config_ld_where(ld), config_ld_value(ld, tls));
		goto out_pop;
	}
	r = config_check_keys(ld, tls, keys);
	if (r == 0)
		r = config_parse_string(ld, tls, "fingerprint", true, &fp);
	if (r == 0 && fp && !config_fingerprint_is_valid(fp)) {
		config_ld_push(ld, "fingerprint");
		r = config_ld_fail(
			ld, LOCATE_VALUE,
			"%s must be \"sha256:\" and the 44-character base64 of 32 bytes, as "
			"clusterfs-agent --fingerprint CERT prints it, not %s",
			config_ld_where(ld), config_ld_quote(ld, 0, fp));
		config_ld_pop(ld);
	}
	if (r == 0)
		r = config_parse_string(ld, tls, "ca_file", true, &ca);
	if (r < 0)
		goto out_pop;
	t->tls = true;
	t->fingerprint = fp ? xstrdup(fp) : NULL;
	t->ca_file = ca ? config_path_join(ld->dir, ca) : NULL;
	if (t->ca_file) {
		config_ld_push(ld, "ca_file");
		r = config_check_ca_file(ld, t->ca_file);
		config_ld_pop(ld);
	}
out_pop:
	config_ld_pop(ld);
	return r;
}

void config_transport_clear(struct cfg_transport *t)
{
	free(t->ca_file);
	free(t->fingerprint);
}
