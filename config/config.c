/* Loading and validating hosts.json into an immutable struct config.
 *
 * The document is parsed by jansson, then walked once: each section is checked and copied
 * into the struct. A problem stops the walk with one sentence that names the offending
 * value by its path and, through locate.c, by its line and column in the source text.
 * Token files are read last, so that a broken document is reported before a missing file.
 *
 * Allocation failures abort, as in util.c's buffers: a config is small and bounded by
 * CONFIG_MAX_FILE_SIZE, and checking every strdup would hide the logic. */
#include "config/config.h"

#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/util.h"
#include "config/locate.h"

#define LOADER_MAX_DEPTH 8
#define MAX_PORT         65535

static const struct cfg_probe probe_defaults = {
	.interval_s = 30,
	.timeout_ms = 2000,
	.stale_after_s = 120,
	.offline_after_s = 600,
	.unhealthy_after = 3,
	.max_age_ms = 1000,
	.heartbeat_s = 45,
};

static const struct cfg_thresholds threshold_defaults = {
	.cpu = {80, 95},
	.memory = {85, 95},
	.disk = {80, 90},
	.load = {4.0, 8.0},
};

static const struct cfg_tasks tasks_defaults = {
	.run_as = CFG_RUN_AS_SUBMITTER,
	.allow_root = false,
	.drafts_per_user = 64,
	.draft_bytes_per_user = 16l << 20,
	.queued_per_user = 10000,
	.finished_cached = 1000,
	.retention = {.output_days = 30, .output_mb = 1024, .records_days = 0},
};

static const struct cfg_artifacts artifacts_defaults = {
	.max_files = 100,
	.max_bytes = 4096ll << 20,
	.cache_max_bytes = 64ll << 20,
};

static const char *const tier_names[] = {"powerhouse", "standard", "light", NULL};
static const char *const run_as_names[] = {"submitter", "agent", NULL};

/* The state of one load: the source for locating errors, and the path being checked. */
struct loader {
	const char *text; /* source text, or NULL (no positions) */
	size_t len;
	const char *name; /* file name used in messages */
	const char *dir;  /* directory that relative token files resolve against */
	char *errbuf;
	size_t errlen;
	struct config *c; /* being filled */
	struct locate_step path[LOADER_MAX_DEPTH];
	size_t depth;
	size_t skip;     /* leading steps of path not in text (1 in a drop-in: the host's name) */
	char where[256]; /* scratch for ld_where() */
	char quoted[2][96]; /* scratch for ld_quote() */
	char value[64];     /* scratch for ld_value() */
};

static void set_error(char *errbuf, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void set_error(char *errbuf, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	if (!errbuf || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(errbuf, errlen, fmt, ap);
	va_end(ap);
}

/* Frees a secret after overwriting it. */
static void free_secret(char *s)
{
	if (!s)
		return;
	explicit_bzero(s, strlen(s));
	free(s);
}

static void ld_push(struct loader *ld, const char *key)
{
	if (ld->depth >= LOADER_MAX_DEPTH)
		abort();
	ld->path[ld->depth++] = (struct locate_step){.key = key};
}

static void ld_push_index(struct loader *ld, size_t index)
{
	if (ld->depth >= LOADER_MAX_DEPTH)
		abort();
	ld->path[ld->depth++] = (struct locate_step){.key = NULL, .index = index};
}

static void ld_pop(struct loader *ld)
{
	ld->depth--;
}

/* The current path for messages: "hosts.spark1.services.agent.port", or "the top level". */
static const char *ld_where(struct loader *ld)
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
static const char *ld_quote(struct loader *ld, int slot, const char *s)
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
static const char *ld_value(struct loader *ld, const json_t *v)
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

/* Reports an error at the current path: "NAME:LINE:COLUMN: MESSAGE". Returns -EINVAL. */
static int ld_fail(struct loader *ld, enum locate_target target, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int ld_fail(struct loader *ld, enum locate_target target, const char *fmt, ...)
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
		set_error(ld->errbuf, ld->errlen, "%s:%d:%d: %s", ld->name, line, col,
			  msg.data ? msg.data : "");
	else
		set_error(ld->errbuf, ld->errlen, "%s: %s", ld->name, msg.data ? msg.data : "");
	buf_free(&msg);
	return -EINVAL;
}

/* The known word (NULL-terminated list) nearest to `word` within edit distance 2, or NULL. */
static const char *suggest(const char *word, const char *const *known)
{
	size_t n = 0;
	while (known[n])
		n++;
	return util_closest_word(word, known, n, 2);
}

/* The configured host name nearest to `word` within edit distance 2, or NULL. */
static const char *suggest_host(const struct config *c, const char *word)
{
	const char **names = xcalloc(c->n_hosts ? c->n_hosts : 1, sizeof(*names));
	const char *best;
	for (size_t i = 0; i < c->n_hosts; i++)
		names[i] = c->hosts[i].name;
	best = util_closest_word(word, names, c->n_hosts, 2);
	free(names);
	return best;
}

/* Rejects keys of `obj` that are not in `known`, suggesting the nearest known one. */
static int check_keys(struct loader *ld, const json_t *obj, const char *const *known)
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
		snprintf(where, sizeof(where), "%s", ld_where(ld));
		const char *hint = suggest(key, known);
		int r;
		ld_push(ld, key);
		if (hint) {
			r = ld_fail(ld, LOCATE_KEY, "unknown key %s in %s; did you mean \"%s\"?",
				    ld_quote(ld, 0, key), where, hint);
		} else {
			struct buf list;
			buf_init(&list);
			for (size_t i = 0; known[i]; i++)
				buf_printf(&list, "%s%s", i ? ", " : "", known[i]);
			r = ld_fail(ld, LOCATE_KEY, "unknown key %s in %s (known keys: %s)",
				    ld_quote(ld, 0, key), where, list.data);
			buf_free(&list);
		}
		ld_pop(ld);
		return r;
	}
	return 0;
}

/* Checks that the value at the current path is an object. */
static int expect_object(struct loader *ld, const json_t *v)
{
	if (json_is_object(v))
		return 0;
	return ld_fail(ld, LOCATE_VALUE, "%s must be an object ({...}), not %s", ld_where(ld),
		       ld_value(ld, v));
}

/* Reads an optional integer member within [min, max]; leaves *out alone when absent. */
static int parse_int(struct loader *ld, const json_t *obj, const char *key, long min, long max,
		     int *out)
{
	json_t *v = json_object_get(obj, key);
	int r = 0;
	if (!v)
		return 0;
	ld_push(ld, key);
	if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
		r = ld_fail(ld, LOCATE_VALUE, "%s must be an integer from %ld to %ld, not %s",
			    ld_where(ld), min, max, ld_value(ld, v));
	else
		*out = (int) json_integer_value(v);
	ld_pop(ld);
	return r;
}

/* Reads an optional string member; leaves *out alone when absent. Borrows from the doc. */
static int parse_string(struct loader *ld, const json_t *obj, const char *key, bool nonempty,
			const char **out)
{
	json_t *v = json_object_get(obj, key);
	int r = 0;
	if (!v)
		return 0;
	ld_push(ld, key);
	if (!json_is_string(v))
		r = ld_fail(ld, LOCATE_VALUE, "%s must be a string, not %s", ld_where(ld),
			    ld_value(ld, v));
	else if (nonempty && json_string_length(v) == 0)
		r = ld_fail(ld, LOCATE_VALUE, "%s must not be empty", ld_where(ld));
	else if (strlen(json_string_value(v)) != json_string_length(v))
		r = ld_fail(ld, LOCATE_VALUE, "%s must not contain a NUL character", ld_where(ld));
	else
		*out = json_string_value(v);
	ld_pop(ld);
	return r;
}

/* Reads an optional boolean member; leaves *out alone when absent. */
static int parse_bool(struct loader *ld, const json_t *obj, const char *key, bool *out)
{
	json_t *v = json_object_get(obj, key);
	int r = 0;
	if (!v)
		return 0;
	ld_push(ld, key);
	if (!json_is_boolean(v))
		r = ld_fail(ld, LOCATE_VALUE, "%s must be true or false, not %s", ld_where(ld),
			    ld_value(ld, v));
	else
		*out = json_is_true(v);
	ld_pop(ld);
	return r;
}

/* Reads an optional "run_as" member ("submitter" or "agent"). */
static int parse_run_as(struct loader *ld, const json_t *obj, enum cfg_run_as *out)
{
	const char *v = NULL;
	int r = parse_string(ld, obj, "run_as", true, &v);
	if (r < 0 || !v)
		return r;
	for (int i = 0; run_as_names[i]; i++) {
		if (!strcmp(v, run_as_names[i])) {
			*out = (enum cfg_run_as) i;
			return 0;
		}
	}
	ld_push(ld, "run_as");
	r = ld_fail(ld, LOCATE_VALUE,
		    "%s must be \"submitter\" (tasks run as the user who submitted them) or "
		    "\"agent\" (as the agent's own user), not %s",
		    ld_where(ld), ld_quote(ld, 0, v));
	ld_pop(ld);
	return r;
}

/* A host name becomes a directory under nodes/ and appears in routing, logs and URLs:
 * letters, digits, '.', '_' and '-', not starting with '.' or '-'. */
static bool host_name_ok(const char *name)
{
	if (!name_is_valid(name) || name[0] == '.' || name[0] == '-')
		return false;
	for (const char *p = name; *p; p++) {
		char c = *p;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

/* An address goes into a URL as written: printable, no spaces, nothing that ends a host. */
static bool address_ok(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++) {
		unsigned char c = (unsigned char) *s;
		if (c <= ' ' || c == 0x7f || strchr("/?#@\\\"", c))
			return false;
	}
	return true;
}

/* A URL path: starts with '/', printable, no spaces. */
static bool url_path_ok(const char *s)
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

static bool in_list(const char *s, const char *const *list)
{
	for (size_t i = 0; list[i]; i++)
		if (strcmp(s, list[i]) == 0)
			return true;
	return false;
}

static char *path_join(const char *dir, const char *rel)
{
	struct buf b;
	if (rel[0] == '/' || !dir)
		return xstrdup(rel);
	buf_init(&b);
	buf_printf(&b, "%s%s%s", dir, dir[0] && dir[strlen(dir) - 1] == '/' ? "" : "/", rel);
	return buf_steal(&b, NULL);
}

/* "token" in a config would put a secret into a file that is shown and copied around. */
static int reject_inline_token(struct loader *ld, const json_t *obj)
{
	int r;
	if (!json_object_get(obj, "token"))
		return 0;
	ld_push(ld, "token");
	r = ld_fail(ld, LOCATE_KEY,
		    "a token is never written in the config; put it in a file that only its owner "
		    "can read and name that file with \"token_file\"");
	ld_pop(ld);
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
static int check_ca_file(struct loader *ld, const char *path)
{
	if (access(path, R_OK) == 0)
		return 0;
	return ld_fail(ld, LOCATE_VALUE, "%s names %s, which cannot be read: %s", ld_where(ld),
		       ld_quote(ld, 0, path), strerror(errno));
}

/* "tls" (true, false, or {"fingerprint": "sha256:...", "ca_file": "PATH"}) and
 * "insecure_http" (a boolean) of a host or a service, into t. */
static int parse_transport(struct loader *ld, const json_t *obj, struct cfg_transport *t)
{
	static const char *const keys[] = {"fingerprint", "ca_file", NULL};
	json_t *tls = json_object_get(obj, "tls");
	json_t *insecure = json_object_get(obj, "insecure_http");
	const char *fp = NULL, *ca = NULL;
	int r = 0;

	if (insecure) {
		ld_push(ld, "insecure_http");
		if (!json_is_boolean(insecure))
			r = ld_fail(ld, LOCATE_VALUE, "%s must be true or false, not %s",
				    ld_where(ld), ld_value(ld, insecure));
		else
			t->insecure_http = json_is_true(insecure);
		ld_pop(ld);
		if (r < 0)
			return r;
	}
	if (!tls)
		return 0;
	ld_push(ld, "tls");
	if (json_is_boolean(tls)) {
		t->tls = json_is_true(tls);
		goto out_pop;
	}
	if (!json_is_object(tls)) {
		r = ld_fail(ld, LOCATE_VALUE,
			    "%s must be true, false, {\"fingerprint\": \"sha256:...\"} or "
			    "{\"ca_file\": \"PATH\"}, not %s",
			    ld_where(ld), ld_value(ld, tls));
		goto out_pop;
	}
	r = check_keys(ld, tls, keys);
	if (r == 0)
		r = parse_string(ld, tls, "fingerprint", true, &fp);
	if (r == 0 && fp && !config_fingerprint_is_valid(fp)) {
		ld_push(ld, "fingerprint");
		r = ld_fail(ld, LOCATE_VALUE,
			    "%s must be \"sha256:\" and the 44-character base64 of 32 bytes, as "
			    "clusterfs-agent --fingerprint CERT prints it, not %s",
			    ld_where(ld), ld_quote(ld, 0, fp));
		ld_pop(ld);
	}
	if (r == 0)
		r = parse_string(ld, tls, "ca_file", true, &ca);
	if (r < 0)
		goto out_pop;
	t->tls = true;
	t->fingerprint = fp ? xstrdup(fp) : NULL;
	t->ca_file = ca ? path_join(ld->dir, ca) : NULL;
	if (t->ca_file) {
		ld_push(ld, "ca_file");
		r = check_ca_file(ld, t->ca_file);
		ld_pop(ld);
	}
out_pop:
	ld_pop(ld);
	return r;
}

static void transport_clear(struct cfg_transport *t)
{
	free(t->ca_file);
	free(t->fingerprint);
}

/* The top level's "tls": {"ca_file": "PATH"}, what "tls": true verifies against. */
static int parse_tls(struct loader *ld, const json_t *doc)
{
	static const char *const keys[] = {"ca_file", NULL};
	json_t *tls = json_object_get(doc, "tls");
	const char *ca = NULL;
	int r;

	if (!tls)
		return 0;
	ld_push(ld, "tls");
	r = expect_object(ld, tls);
	if (r == 0)
		r = check_keys(ld, tls, keys);
	if (r == 0)
		r = parse_string(ld, tls, "ca_file", true, &ca);
	if (r == 0 && ca) {
		ld->c->tls_ca_file = path_join(ld->dir, ca);
		ld_push(ld, "ca_file");
		r = check_ca_file(ld, ld->c->tls_ca_file);
		ld_pop(ld);
	}
	ld_pop(ld);
	return r;
}

static int parse_cluster(struct loader *ld, const json_t *doc)
{
	const char *name = "clusterfs";
	int r = parse_string(ld, doc, "cluster", true, &name);
	if (r < 0)
		return r;
	if (!name_is_valid(name)) {
		ld_push(ld, "cluster");
		r = ld_fail(
			ld, LOCATE_VALUE,
			"cluster name %s must be printable, without '/', and not \".\" or \"..\"",
			ld_quote(ld, 0, name));
		ld_pop(ld);
		return r;
	}
	ld->c->cluster = xstrdup(name);
	return 0;
}

static int parse_auth(struct loader *ld, const json_t *doc)
{
	static const char *const keys[] = {"token_file", NULL};
	json_t *auth = json_object_get(doc, "auth");
	const char *file = NULL;
	int r = 0;

	if (auth) {
		ld_push(ld, "auth");
		r = expect_object(ld, auth);
		if (r == 0)
			r = reject_inline_token(ld, auth);
		if (r == 0)
			r = check_keys(ld, auth, keys);
		if (r == 0)
			r = parse_string(ld, auth, "token_file", true, &file);
		ld_pop(ld);
		if (r < 0)
			return r;
	}
	ld->c->token_file = file ? path_join(ld->dir, file) : config_default_token_path();
	return 0;
}

static int parse_probe(struct loader *ld, const json_t *doc)
{
	static const char *const keys[] = {
		"interval_s",      "timeout_ms", "stale_after_s", "offline_after_s",
		"unhealthy_after", "max_age_ms", "heartbeat_s",   NULL};
	struct cfg_probe *p = &ld->c->probe;
	json_t *probe = json_object_get(doc, "probe");
	int r;

	if (!probe)
		return 0;
	ld_push(ld, "probe");
	r = expect_object(ld, probe);
	if (r == 0)
		r = check_keys(ld, probe, keys);
	if (r == 0)
		r = parse_int(ld, probe, "interval_s", 1, 86400, &p->interval_s);
	if (r == 0)
		r = parse_int(ld, probe, "timeout_ms", 1, 300000, &p->timeout_ms);
	if (r == 0)
		r = parse_int(ld, probe, "stale_after_s", 1, 30 * 86400, &p->stale_after_s);
	if (r == 0)
		r = parse_int(ld, probe, "offline_after_s", 1, 30 * 86400, &p->offline_after_s);
	if (r == 0)
		r = parse_int(ld, probe, "unhealthy_after", 1, 1000, &p->unhealthy_after);
	if (r == 0)
		r = parse_int(ld, probe, "max_age_ms", 0, 3600000, &p->max_age_ms);
	if (r == 0)
		r = parse_int(ld, probe, "heartbeat_s", 1, 86400, &p->heartbeat_s);
	if (r == 0 && p->offline_after_s < p->stale_after_s) {
		ld_push(ld, json_object_get(probe, "offline_after_s") ? "offline_after_s"
								      : "stale_after_s");
		r = ld_fail(ld, LOCATE_VALUE,
			    "probe.offline_after_s (%d) must be at least probe.stale_after_s (%d)",
			    p->offline_after_s, p->stale_after_s);
		ld_pop(ld);
	}
	ld_pop(ld);
	return r;
}

/* "join": {"listen": "ADDR:PORT", "token_file": F, "tls": {"cert_file", "key_file"},
 * "forget_after_s": N, "announce": BOOL}. Join traffic is HTTPS from the start: tls is
 * required. */
static int parse_join(struct loader *ld, const json_t *doc)
{
	static const char *const keys[] = {"listen",         "token_file", "tls",
					   "forget_after_s", "announce",   NULL};
	static const char *const tls_keys[] = {"cert_file", "key_file", NULL};
	struct cfg_join *j = &ld->c->join;
	json_t *join = json_object_get(doc, "join"), *tls;
	const char *listen = NULL, *token_file = NULL, *cert = NULL, *key = NULL;
	int r;

	if (!join)
		return 0;
	ld_push(ld, "join");
	r = expect_object(ld, join);
	if (r == 0)
		r = reject_inline_token(ld, join);
	if (r == 0)
		r = check_keys(ld, join, keys);
	if (r == 0)
		r = parse_string(ld, join, "listen", true, &listen);
	if (r == 0)
		r = parse_string(ld, join, "token_file", true, &token_file);
	if (r == 0)
		r = parse_int(ld, join, "forget_after_s", 0, 365 * 86400, &j->forget_after_s);
	if (r == 0)
		r = parse_bool(ld, join, "announce", &j->announce);
	if (r == 0 && j->forget_after_s && j->forget_after_s < ld->c->probe.offline_after_s) {
		ld_push(ld, "forget_after_s");
		r = ld_fail(ld, LOCATE_VALUE,
			    "join.forget_after_s (%d) must be 0 (never) or at least "
			    "probe.offline_after_s (%d): a node is forgotten once it is offline",
			    j->forget_after_s, ld->c->probe.offline_after_s);
		ld_pop(ld);
	}
	if (r == 0 && (!listen || !token_file))
		r = ld_fail(ld, LOCATE_VALUE,
			    "%s needs \"listen\" (\"ADDR:PORT\") and \"token_file\" (the join "
			    "token, mode 0600)",
			    ld_where(ld));
	tls = r == 0 ? json_object_get(join, "tls") : NULL;
	if (r == 0 && !tls)
		r = ld_fail(ld, LOCATE_VALUE,
			    "%s needs \"tls\": {\"cert_file\": F, \"key_file\": F}: join "
			    "traffic carries tokens and is HTTPS only",
			    ld_where(ld));
	if (r == 0) {
		ld_push(ld, "tls");
		r = expect_object(ld, tls);
		if (r == 0)
			r = check_keys(ld, tls, tls_keys);
		if (r == 0)
			r = parse_string(ld, tls, "cert_file", true, &cert);
		if (r == 0)
			r = parse_string(ld, tls, "key_file", true, &key);
		if (r == 0 && (!cert || !key))
			r = ld_fail(ld, LOCATE_VALUE, "%s needs both cert_file and key_file",
				    ld_where(ld));
		ld_pop(ld);
	}
	ld_pop(ld);
	if (r < 0)
		return r;
	j->enabled = true;
	j->listen = xstrdup(listen);
	j->token_file = path_join(ld->dir, token_file);
	j->cert_file = path_join(ld->dir, cert);
	j->key_file = path_join(ld->dir, key);
	return 0;
}

static int parse_events(struct loader *ld, const json_t *doc)
{
	static const char *const keys[] = {"keep", NULL};
	json_t *events = json_object_get(doc, "events");
	int r;

	if (!events)
		return 0;
	ld_push(ld, "events");
	r = expect_object(ld, events);
	if (r == 0)
		r = check_keys(ld, events, keys);
	if (r == 0)
		r = parse_int(ld, events, "keep", 100, 10000000, &ld->c->events.keep);
	ld_pop(ld);
	return r;
}

/* Reads an optional number member within [min, max]; leaves *out alone when absent. */
static int parse_number(struct loader *ld, const json_t *obj, const char *key, double min,
			double max, double *out)
{
	json_t *v = json_object_get(obj, key);
	int r = 0;
	if (!v)
		return 0;
	ld_push(ld, key);
	if (!json_is_number(v) || json_number_value(v) < min || json_number_value(v) > max)
		r = ld_fail(ld, LOCATE_VALUE, "%s must be a number from %g to %g, not %s",
			    ld_where(ld), min, max, ld_value(ld, v));
	else
		*out = json_number_value(v);
	ld_pop(ld);
	return r;
}

/* tasks.retention: how long finished tasks' output and records are kept (0: for ever). */
static int parse_retention(struct loader *ld, const json_t *tasks)
{
	static const char *const keys[] = {"output_days", "output_mb", "records_days", NULL};
	struct cfg_retention *p = &ld->c->tasks.retention;
	json_t *v = json_object_get(tasks, "retention");
	int r;

	if (!v)
		return 0;
	ld_push(ld, "retention");
	r = expect_object(ld, v);
	if (r == 0)
		r = check_keys(ld, v, keys);
	if (r == 0)
		r = parse_number(ld, v, "output_days", 0, 36500, &p->output_days);
	if (r == 0)
		r = parse_number(ld, v, "output_mb", 0, 1 << 30, &p->output_mb);
	if (r == 0)
		r = parse_number(ld, v, "records_days", 0, 36500, &p->records_days);
	if (r == 0 && p->records_days > 0 && p->output_days > p->records_days) {
		ld_push(ld, "output_days");
		r = ld_fail(ld, LOCATE_VALUE,
			    "%s is %g, longer than records_days (%g): output goes with its task's "
			    "record, so keep it at most as long",
			    ld_where(ld), p->output_days, p->records_days);
		ld_pop(ld);
	}
	ld_pop(ld);
	return r;
}

static int parse_tasks(struct loader *ld, const json_t *doc)
{
	static const char *const keys[] = {"run_as",
					   "allow_root",
					   "group",
					   "drafts_per_user",
					   "draft_bytes_per_user",
					   "queued_per_user",
					   "finished_cached",
					   "retention",
					   NULL};
	struct cfg_tasks *t = &ld->c->tasks;
	json_t *tasks = json_object_get(doc, "tasks");
	const char *group = NULL;
	int bytes_mb = (int) (t->draft_bytes_per_user >> 20);
	int r;

	if (!tasks)
		return 0;
	ld_push(ld, "tasks");
	r = expect_object(ld, tasks);
	if (r == 0)
		r = check_keys(ld, tasks, keys);
	if (r == 0)
		r = parse_run_as(ld, tasks, &t->run_as);
	if (r == 0)
		r = parse_bool(ld, tasks, "allow_root", &t->allow_root);
	if (r == 0)
		r = parse_int(ld, tasks, "drafts_per_user", 1, 100000, &t->drafts_per_user);
	if (r == 0)
		r = parse_int(ld, tasks, "draft_bytes_per_user", 1, 1024, &bytes_mb);
	if (r == 0)
		r = parse_int(ld, tasks, "queued_per_user", 1, 10000000, &t->queued_per_user);
	if (r == 0)
		r = parse_int(ld, tasks, "finished_cached", 0, 10000000, &t->finished_cached);
	if (r == 0)
		r = parse_retention(ld, tasks);
	if (r == 0)
		r = parse_string(ld, tasks, "group", true, &group);
	if (r == 0 && group) {
		struct group gr, *res = NULL;
		char scratch[4096];
		ld_push(ld, "group");
		if (getgrnam_r(group, &gr, scratch, sizeof(scratch), &res) != 0 || !res)
			r = ld_fail(ld, LOCATE_VALUE,
				    "%s names %s, which is not a group on this machine; create it "
				    "(groupadd) or leave \"group\" out",
				    ld_where(ld), ld_quote(ld, 0, group));
		else {
			t->group = xstrdup(group);
			t->group_gid = res->gr_gid;
		}
		ld_pop(ld);
	}
	t->draft_bytes_per_user = (long) bytes_mb << 20;
	ld_pop(ld);
	return r;
}

static int parse_artifacts(struct loader *ld, const json_t *doc)
{
	static const char *const keys[] = {"max_files", "max_mb", "cache_max_mb", "inputs_root",
					   NULL};
	struct cfg_artifacts *a = &ld->c->artifacts;
	json_t *obj = json_object_get(doc, "artifacts");
	int max_mb = (int) (a->max_bytes >> 20), cache_mb = (int) (a->cache_max_bytes >> 20);
	const char *root = NULL;
	int r;

	if (!obj)
		return 0;
	ld_push(ld, "artifacts");
	r = expect_object(ld, obj);
	if (r == 0)
		r = check_keys(ld, obj, keys);
	if (r == 0)
		r = parse_int(ld, obj, "max_files", 0, 100000, &a->max_files);
	if (r == 0)
		r = parse_int(ld, obj, "max_mb", 0, 16 * 1024 * 1024, &max_mb);
	if (r == 0)
		r = parse_int(ld, obj, "cache_max_mb", 0, 16 * 1024 * 1024, &cache_mb);
	if (r == 0)
		r = parse_string(ld, obj, "inputs_root", true, &root);
	if (r == 0 && root) {
		ld_push(ld, "inputs_root");
		if (root[0] != '/')
			r = ld_fail(ld, LOCATE_VALUE, "%s must be an absolute path, not %s",
				    ld_where(ld), ld_quote(ld, 0, root));
		else
			a->inputs_root = xstrdup(root);
		ld_pop(ld);
	}
	a->max_bytes = (long long) max_mb << 20;
	a->cache_max_bytes = (long long) cache_mb << 20;
	ld_pop(ld);
	return r;
}

/* One [warning, critical] pair; `max` bounds percentages (0 for no upper bound). */
static int parse_pair(struct loader *ld, const json_t *obj, const char *key, double max,
		      double out[2])
{
	json_t *v = json_object_get(obj, key);
	double pair[2];
	int r = 0;

	if (!v)
		return 0;
	ld_push(ld, key);
	if (!json_is_array(v) || json_array_size(v) != 2) {
		r = ld_fail(ld, LOCATE_VALUE,
			    "%s must be [warning, critical], e.g. [%g, %g], not %s", ld_where(ld),
			    out[0], out[1], ld_value(ld, v));
		goto out_pop;
	}
	for (size_t i = 0; i < 2; i++) {
		json_t *e = json_array_get(v, i);
		ld_push_index(ld, i);
		if (!json_is_number(e) || json_number_value(e) < 0 ||
		    (max > 0 && json_number_value(e) > max)) {
			if (max > 0)
				r = ld_fail(ld, LOCATE_VALUE,
					    "%s must be a number from 0 to %g, not %s",
					    ld_where(ld), max, ld_value(ld, e));
			else
				r = ld_fail(ld, LOCATE_VALUE,
					    "%s must be a number of at least 0, not %s",
					    ld_where(ld), ld_value(ld, e));
		}
		ld_pop(ld);
		if (r < 0)
			goto out_pop;
		pair[i] = json_number_value(e);
	}
	if (pair[0] > pair[1]) {
		r = ld_fail(ld, LOCATE_VALUE,
			    "%s has its warning level %g above its critical level %g", ld_where(ld),
			    pair[0], pair[1]);
		goto out_pop;
	}
	out[0] = pair[0];
	out[1] = pair[1];
out_pop:
	ld_pop(ld);
	return r;
}

static int parse_thresholds(struct loader *ld, const json_t *doc)
{
	static const char *const keys[] = {"cpu", "memory", "disk", "load", NULL};
	struct cfg_thresholds *t = &ld->c->thresholds;
	json_t *th = json_object_get(doc, "thresholds");
	int r;

	if (!th)
		return 0;
	ld_push(ld, "thresholds");
	r = expect_object(ld, th);
	if (r == 0)
		r = check_keys(ld, th, keys);
	if (r == 0)
		r = parse_pair(ld, th, "cpu", 100, t->cpu);
	if (r == 0)
		r = parse_pair(ld, th, "memory", 100, t->memory);
	if (r == 0)
		r = parse_pair(ld, th, "disk", 100, t->disk);
	if (r == 0)
		r = parse_pair(ld, th, "load", 0, t->load);
	ld_pop(ld);
	return r;
}

/* An array of valid names (capabilities), copied into a new NULL-free array. */
static int parse_name_list(struct loader *ld, const json_t *obj, const char *key, char ***ret_list,
			   size_t *ret_n)
{
	json_t *v = json_object_get(obj, key);
	char **list;
	int r = 0;

	if (!v)
		return 0;
	ld_push(ld, key);
	if (!json_is_array(v)) {
		r = ld_fail(ld, LOCATE_VALUE, "%s must be a list of names, e.g. [\"gpu\"], not %s",
			    ld_where(ld), ld_value(ld, v));
		ld_pop(ld);
		return r;
	}
	list = xcalloc(json_array_size(v), sizeof(*list));
	*ret_list = list;
	for (size_t i = 0; i < json_array_size(v); i++) {
		json_t *e = json_array_get(v, i);
		ld_push_index(ld, i);
		if (!json_is_string(e) || !name_is_valid(json_string_value(e)) ||
		    strlen(json_string_value(e)) != json_string_length(e))
			r = ld_fail(ld, LOCATE_VALUE,
				    "%s must be a non-empty printable name without '/', not %s",
				    ld_where(ld), ld_value(ld, e));
		ld_pop(ld);
		if (r < 0)
			break;
		list[(*ret_n)++] = xstrdup(json_string_value(e));
	}
	ld_pop(ld);
	return r;
}

static int parse_host_service(struct loader *ld, const char *name, const json_t *v,
			      struct cfg_service *s)
{
	static const char *const keys[] = {"port", "path", "type", "tls", "insecure_http", NULL};
	const char *path = "", *kind = NULL;
	int r;

	ld_push(ld, name);
	if (!name_is_valid(name)) {
		r = ld_fail(
			ld, LOCATE_KEY,
			"service name %s must be printable, without '/', and not \".\" or \"..\"",
			ld_quote(ld, 0, name));
		ld_pop(ld);
		return r;
	}
	s->name = xstrdup(name);
	r = expect_object(ld, v);
	if (r == 0)
		r = check_keys(ld, v, keys);
	if (r == 0 && !json_object_get(v, "port"))
		r = ld_fail(ld, LOCATE_VALUE, "%s has no \"port\"; give it as {\"port\": 8080}",
			    ld_where(ld));
	if (r == 0)
		r = parse_int(ld, v, "port", 1, MAX_PORT, &s->port);
	if (r == 0)
		r = parse_string(ld, v, "path", false, &path);
	if (r == 0 && path[0] && !url_path_ok(path)) {
		ld_push(ld, "path");
		r = ld_fail(ld, LOCATE_VALUE,
			    "%s must be a URL path starting with '/' and without spaces, not %s",
			    ld_where(ld), ld_quote(ld, 0, path));
		ld_pop(ld);
	}
	if (r == 0)
		r = parse_string(ld, v, "type", true, &kind);
	if (r == 0 && strcmp(name, "agent") == 0 &&
	    (json_object_get(v, "tls") || json_object_get(v, "insecure_http"))) {
		ld_push(ld, json_object_get(v, "tls") ? "tls" : "insecure_http");
		r = ld_fail(ld, LOCATE_KEY,
			    "%s: the agent's \"tls\" and \"insecure_http\" belong to the host, "
			    "beside \"host\"",
			    ld_where(ld));
		ld_pop(ld);
	}
	if (r == 0)
		r = parse_transport(ld, v, &s->transport);
	ld_pop(ld);
	if (r < 0)
		return r;
	s->path = xstrdup(path);
	s->kind = kind ? xstrdup(kind) : NULL;
	return 0;
}

static int parse_host_services(struct loader *ld, const json_t *host, struct cfg_host *h)
{
	json_t *svcs = json_object_get(host, "services"), *v;
	const char *name;
	int r;

	if (!svcs)
		return 0;
	ld_push(ld, "services");
	r = expect_object(ld, svcs);
	if (r == 0) {
		h->services = xcalloc(json_object_size(svcs), sizeof(*h->services));
		json_object_foreach (svcs, name, v) {
			r = parse_host_service(ld, name, v, &h->services[h->n_services++]);
			if (r < 0)
				break;
		}
	}
	ld_pop(ld);
	return r;
}

/* A host's "host" (required: an address), "name", "role" and "tier", borrowed from v.
 * Returns 0 or the loader's error. */
static int parse_host_identity(struct loader *ld, const json_t *v, const char **address,
			       const char **display, const char **role, const char **tier)
{
	int r = 0;
	if (!json_object_get(v, "host"))
		r = ld_fail(ld, LOCATE_VALUE,
			    "%s has no \"host\"; give the machine's address, e.g. \"host\": "
			    "\"10.0.0.1\"",
			    ld_where(ld));
	if (r == 0)
		r = parse_string(ld, v, "host", true, address);
	if (r == 0 && !address_ok(*address)) {
		ld_push(ld, "host");
		r = ld_fail(ld, LOCATE_VALUE,
			    "%s must be an IP address or DNS name without spaces, '/', '?', '#' or "
			    "'@', not %s",
			    ld_where(ld), ld_quote(ld, 0, *address));
		ld_pop(ld);
	}
	if (r == 0)
		r = parse_string(ld, v, "name", false, display);
	if (r == 0)
		r = parse_string(ld, v, "role", false, role);
	if (r == 0 && (*role)[0] && !name_is_valid(*role)) {
		ld_push(ld, "role");
		r = ld_fail(ld, LOCATE_VALUE, "%s must be printable, without '/', not %s",
			    ld_where(ld), ld_quote(ld, 0, *role));
		ld_pop(ld);
	}
	if (r == 0)
		r = parse_string(ld, v, "tier", true, tier);
	if (r == 0 && *tier && !in_list(*tier, tier_names)) {
		ld_push(ld, "tier");
		r = ld_fail(ld, LOCATE_VALUE,
			    "%s must be \"powerhouse\", \"standard\" or \"light\", not %s",
			    ld_where(ld), ld_quote(ld, 0, *tier));
		ld_pop(ld);
	}
	return r;
}

/* The agent's port of h: services.agent.port or "port" (the same when both are given), else
 * the default. Returns 0 or the loader's error. */
static int host_agent_port(struct loader *ld, struct cfg_host *h, int port)
{
	int r = 0;
	const struct cfg_service *agent = config_host_service(h, "agent");
	if (agent && port && agent->port != port) {
		ld_push(ld, "port");
		r = ld_fail(ld, LOCATE_VALUE,
			    "%s is %d but services.agent.port of the same host is %d; give "
			    "the agent's port once",
			    ld_where(ld), port, agent->port);
		ld_pop(ld);
	} else if (agent) {
		h->agent_port = agent->port;
	} else if (port) {
		h->agent_port = port;
	}
	return r;
}

static int parse_host(struct loader *ld, const char *name, const json_t *v, struct cfg_host *h)
{
	static const char *const keys[] = {"host",
					   "name",
					   "role",
					   "tier",
					   "capabilities",
					   "queue_depth",
					   "port",
					   "token_file",
					   "services",
					   "tls",
					   "insecure_http",
					   "run_as",
					   "reverse",
					   "agent_fingerprint",
					   NULL};
	const char *address = NULL, *display = NULL, *role = "", *tier = NULL, *token_file = NULL;
	int port = 0, r;

	h->queue_depth = 10;
	h->agent_port = CONFIG_DEFAULT_AGENT_PORT;
	h->run_as = CFG_RUN_AS_INHERIT;
	ld_push(ld, name);
	if (!host_name_ok(name)) {
		r = ld_fail(ld, LOCATE_KEY,
			    "host name %s cannot name a directory; use letters, digits, '.', '_' "
			    "and '-', not starting with '.' or '-'",
			    ld_quote(ld, 0, name));
		ld_pop(ld);
		return r;
	}
	h->name = xstrdup(name);
	r = expect_object(ld, v);
	if (r == 0)
		r = reject_inline_token(ld, v);
	if (r == 0)
		r = check_keys(ld, v, keys);
	if (r == 0)
		r = parse_host_identity(ld, v, &address, &display, &role, &tier);
	if (r == 0)
		r = parse_name_list(ld, v, "capabilities", &h->capabilities, &h->n_capabilities);
	if (r == 0)
		r = parse_int(ld, v, "queue_depth", 1, 10000, &h->queue_depth);
	if (r == 0)
		r = parse_int(ld, v, "port", 1, MAX_PORT, &port);
	if (r == 0)
		r = parse_string(ld, v, "token_file", true, &token_file);
	if (r == 0)
		r = parse_run_as(ld, v, &h->run_as);
	if (r == 0)
		r = parse_bool(ld, v, "reverse", &h->reverse);
	const char *agent_fp = NULL;
	if (r == 0)
		r = parse_string(ld, v, "agent_fingerprint", true, &agent_fp);
	if (r == 0 && agent_fp && !config_fingerprint_is_valid(agent_fp)) {
		ld_push(ld, "agent_fingerprint");
		r = ld_fail(ld, LOCATE_VALUE, "%s must be \"sha256:BASE64\", not %s", ld_where(ld),
			    ld_quote(ld, 0, agent_fp));
		ld_pop(ld);
	}
	if (r == 0)
		r = parse_transport(ld, v, &h->transport);
	if (r == 0)
		r = parse_host_services(ld, v, h);
	if (r == 0)
		r = host_agent_port(ld, h, port);
	ld_pop(ld);
	if (r < 0)
		return r;

	h->address = xstrdup(address);
	h->display_name = display ? xstrdup(display) : NULL;
	h->role = xstrdup(role);
	h->tier = tier ? xstrdup(tier) : NULL;
	/* Resolved here; read with the other token files once the whole document is valid. */
	h->token_file = token_file ? path_join(ld->dir, token_file) : NULL;
	return 0;
}

static int host_cmp(const void *a, const void *b)
{
	return strcmp(((const struct cfg_host *) a)->name, ((const struct cfg_host *) b)->name);
}

static int parse_hosts(struct loader *ld, const json_t *doc)
{
	struct config *c = ld->c;
	json_t *hosts = json_object_get(doc, "hosts"), *v;
	const char *name;
	int r;

	if (!hosts)
		return ld_fail(ld, LOCATE_VALUE,
			       "the config has no \"hosts\"; list the machines as \"hosts\": "
			       "{\"NAME\": {\"host\": \"ADDRESS\"}}");
	ld_push(ld, "hosts");
	r = expect_object(ld, hosts);
	if (r == 0) {
		c->hosts = xcalloc(json_object_size(hosts), sizeof(*c->hosts));
		json_object_foreach (hosts, name, v) {
			r = parse_host(ld, name, v, &c->hosts[c->n_hosts++]);
			if (r < 0)
				break;
		}
	}
	ld_pop(ld);
	if (r < 0)
		return r;
	qsort(c->hosts, c->n_hosts, sizeof(*c->hosts), host_cmp);
	return 0;
}

/* Checks that the string at the current path names a host in "hosts". */
static int check_host_ref(struct loader *ld, const json_t *v)
{
	const char *hint;
	if (!json_is_string(v))
		return ld_fail(ld, LOCATE_VALUE, "%s must be a host name (a string), not %s",
			       ld_where(ld), ld_value(ld, v));
	if (config_find_host(ld->c, json_string_value(v)))
		return 0;
	hint = suggest_host(ld->c, json_string_value(v));
	if (hint)
		return ld_fail(ld, LOCATE_VALUE,
			       "%s names host %s, which is not in \"hosts\"; did you mean \"%s\"?",
			       ld_where(ld), ld_quote(ld, 0, json_string_value(v)), hint);
	return ld_fail(ld, LOCATE_VALUE, "%s names host %s, which is not in \"hosts\"",
		       ld_where(ld), ld_quote(ld, 0, json_string_value(v)));
}

/* One list of a routing policy: hosts (known host names), roles, tiers. */
static int parse_routing_list(struct loader *ld, const json_t *policy, const char *key)
{
	json_t *v = json_object_get(policy, key);
	int r = 0;

	if (!v)
		return 0;
	ld_push(ld, key);
	if (!json_is_array(v)) {
		r = ld_fail(ld, LOCATE_VALUE, "%s must be a list of strings, not %s", ld_where(ld),
			    ld_value(ld, v));
		ld_pop(ld);
		return r;
	}
	for (size_t i = 0; i < json_array_size(v) && r == 0; i++) {
		json_t *e = json_array_get(v, i);
		ld_push_index(ld, i);
		if (strcmp(key, "hosts") == 0) {
			/* the Slurm cluster's node may be routed to like a host */
			bool slurm = ld->c->slurm && json_is_string(e) &&
				     !strcmp(json_string_value(e), ld->c->slurm->name);
			r = slurm ? 0 : check_host_ref(ld, e);
		} else if (!json_is_string(e) || json_string_length(e) == 0) {
			r = ld_fail(ld, LOCATE_VALUE, "%s must be a non-empty string, not %s",
				    ld_where(ld), ld_value(ld, e));
		} else if (strcmp(key, "tiers") == 0 &&
			   !in_list(json_string_value(e), tier_names)) {
			r = ld_fail(ld, LOCATE_VALUE,
				    "%s must be \"powerhouse\", \"standard\" or \"light\", not %s",
				    ld_where(ld), ld_quote(ld, 0, json_string_value(e)));
		}
		ld_pop(ld);
	}
	ld_pop(ld);
	return r;
}

static int parse_routing(struct loader *ld, const json_t *doc)
{
	static const char *const keys[] = {"hosts", "roles", "tiers", NULL};
	json_t *routing = json_object_get(doc, "routing"), *v;
	const char *type;
	int r;

	if (!routing) {
		ld->c->routing = json_object();
		return ld->c->routing ? 0 : -ENOMEM;
	}
	ld_push(ld, "routing");
	r = expect_object(ld, routing);
	if (r == 0) {
		json_object_foreach (routing, type, v) {
			if (!name_is_valid(type)) {
				ld_push(ld, type);
				r = ld_fail(ld, LOCATE_KEY,
					    "task type %s must be printable, without '/'",
					    ld_quote(ld, 0, type));
				ld_pop(ld);
				break;
			}
			ld_push(ld, type);
			r = expect_object(ld, v);
			if (r == 0)
				r = check_keys(ld, v, keys);
			if (r == 0)
				r = parse_routing_list(ld, v, "hosts");
			if (r == 0)
				r = parse_routing_list(ld, v, "roles");
			if (r == 0)
				r = parse_routing_list(ld, v, "tiers");
			ld_pop(ld);
			if (r < 0)
				break;
		}
	}
	ld_pop(ld);
	if (r < 0)
		return r;
	ld->c->routing = json_incref(routing);
	return 0;
}

static int parse_service_file(struct loader *ld, const char *name, const json_t *v)
{
	static const char *const keys[] = {"get", "post", NULL};
	const char *path = NULL, *method;
	int r;

	ld_push(ld, name);
	if (!name_is_valid(name)) {
		r = ld_fail(ld, LOCATE_KEY,
			    "file name %s must be printable, without '/', and not \".\" or \"..\"",
			    ld_quote(ld, 0, name));
		goto out_pop;
	}
	r = expect_object(ld, v);
	if (r == 0)
		r = check_keys(ld, v, keys);
	if (r < 0)
		goto out_pop;
	if (json_object_get(v, "get") && json_object_get(v, "post")) {
		ld_push(ld, "post");
		r = ld_fail(ld, LOCATE_KEY,
			    "%s has both \"get\" and \"post\"; a file is either read (get) or "
			    "written (post)",
			    ld_where(ld));
		ld_pop(ld);
		goto out_pop;
	}
	if (!json_object_get(v, "get") && !json_object_get(v, "post")) {
		r = ld_fail(ld, LOCATE_VALUE,
			    "%s needs \"get\" or \"post\" with a URL path, e.g. {\"get\": "
			    "\"/api/status\"}",
			    ld_where(ld));
		goto out_pop;
	}
	method = json_object_get(v, "get") ? "get" : "post";
	r = parse_string(ld, v, method, true, &path);
	if (r == 0 && !url_path_ok(path)) {
		ld_push(ld, method);
		r = ld_fail(ld, LOCATE_VALUE,
			    "%s must be a URL path starting with '/' and without spaces, not %s",
			    ld_where(ld), ld_quote(ld, 0, path));
		ld_pop(ld);
	}
out_pop:
	ld_pop(ld);
	return r;
}

static int parse_service(struct loader *ld, const char *name, const json_t *v)
{
	static const char *const keys[] = {"host", "port", "files", "tls", "insecure_http", NULL};
	struct config *c = ld->c;
	json_t *files, *f;
	const char *file;
	int port = 0, r;

	ld_push(ld, name);
	if (!name_is_valid(name)) {
		r = ld_fail(
			ld, LOCATE_KEY,
			"service name %s must be printable, without '/', and not \".\" or \"..\"",
			ld_quote(ld, 0, name));
		goto out_pop;
	}
	r = expect_object(ld, v);
	if (r == 0)
		r = check_keys(ld, v, keys);
	if (r < 0)
		goto out_pop;
	if (!json_object_get(v, "host")) {
		r = ld_fail(ld, LOCATE_VALUE, "%s has no \"host\"; name one of \"hosts\"",
			    ld_where(ld));
		goto out_pop;
	}
	ld_push(ld, "host");
	r = check_host_ref(ld, json_object_get(v, "host"));
	ld_pop(ld);
	if (r < 0)
		goto out_pop;
	if (!json_object_get(v, "port")) {
		r = ld_fail(ld, LOCATE_VALUE, "%s has no \"port\"; give it as \"port\": 8080",
			    ld_where(ld));
		goto out_pop;
	}
	r = parse_int(ld, v, "port", 1, MAX_PORT, &port);
	if (r < 0)
		goto out_pop;
	c->service_names[c->n_service_transports] = xstrdup(name);
	r = parse_transport(ld, v, &c->service_transports[c->n_service_transports++]);
	if (r < 0)
		goto out_pop;
	files = json_object_get(v, "files");
	if (!files)
		goto out_pop;
	ld_push(ld, "files");
	r = expect_object(ld, files);
	if (r == 0) {
		json_object_foreach (files, file, f) {
			r = parse_service_file(ld, file, f);
			if (r < 0)
				break;
		}
	}
	ld_pop(ld);
out_pop:
	ld_pop(ld);
	return r;
}

static int parse_services(struct loader *ld, const json_t *doc)
{
	json_t *services = json_object_get(doc, "services"), *v;
	const char *name;
	int r;

	if (!services) {
		ld->c->services = json_object();
		return ld->c->services ? 0 : -ENOMEM;
	}
	ld_push(ld, "services");
	r = expect_object(ld, services);
	if (r == 0) {
		size_t n = json_object_size(services);
		ld->c->service_names = xcalloc(n, sizeof(*ld->c->service_names));
		ld->c->service_transports = xcalloc(n, sizeof(*ld->c->service_transports));
		json_object_foreach (services, name, v) {
			r = parse_service(ld, name, v);
			if (r < 0)
				break;
		}
	}
	ld_pop(ld);
	if (r < 0)
		return r;
	ld->c->services = json_incref(services);
	return 0;
}

/* The seed's "local_host", "default_trainer", "default_inference": kept in doc, checked. */
static int parse_seed_refs(struct loader *ld, const json_t *doc)
{
	static const char *const keys[] = {"local_host", "default_trainer", "default_inference",
					   NULL};
	for (size_t i = 0; keys[i]; i++) {
		json_t *v = json_object_get(doc, keys[i]);
		int r;
		if (!v)
			continue;
		ld_push(ld, keys[i]);
		r = check_host_ref(ld, v);
		ld_pop(ld);
		if (r < 0)
			return r;
	}
	return 0;
}

/* Reads the token files once the document is known to be valid. The global one is needed
 * when auth.token_file names it or some host has no token_file of its own; when it is only
 * the default location and does not exist, hosts go without a token (their agents will
 * answer 401, which the node shows). Named files must exist and be private. */
static int read_tokens(struct loader *ld, const json_t *doc)
{
	struct config *c = ld->c;
	json_t *auth = json_object_get(doc, "auth");
	bool named = auth && json_object_get(auth, "token_file");
	bool needed = named;
	char *global = NULL, msg[512];
	int r = 0;

	for (size_t i = 0; i < c->n_hosts; i++)
		if (!c->hosts[i].token_file)
			needed = true;
	if (needed && c->token_file) {
		r = token_read_file(c->token_file, &global, msg, sizeof(msg));
		if (r < 0 && named) {
			ld_push(ld, "auth");
			ld_push(ld, "token_file");
			ld_fail(ld, LOCATE_VALUE, "%s", msg);
			ld_pop(ld);
			ld_pop(ld);
			return r;
		}
		if (r < 0 && r != -ENOENT && r != -ENOTDIR) {
			set_error(ld->errbuf, ld->errlen, "%s: %s", ld->name, msg);
			return r;
		}
		r = 0;
	}

	for (size_t i = 0; i < c->n_hosts; i++) {
		struct cfg_host *h = &c->hosts[i];
		if (h->token_file) {
			r = token_read_file(h->token_file, &h->token, msg, sizeof(msg));
			if (r < 0 && h->dropin) {
				set_error(ld->errbuf, ld->errlen, "%s: token_file: %s", h->dropin,
					  msg);
				break;
			}
			if (r < 0) {
				ld_push(ld, "hosts");
				ld_push(ld, h->name);
				ld_push(ld, "token_file");
				ld_fail(ld, LOCATE_VALUE, "%s", msg);
				ld_pop(ld);
				ld_pop(ld);
				ld_pop(ld);
				break;
			}
		} else {
			h->token_file = c->token_file ? xstrdup(c->token_file) : NULL;
			h->token = global ? xstrdup(global) : NULL;
		}
	}
	free_secret(global);
	if (r == 0 && c->join.enabled) {
		r = token_read_file(c->join.token_file, &c->join.token, msg, sizeof(msg));
		if (r < 0) {
			ld_push(ld, "join");
			ld_push(ld, "token_file");
			ld_fail(ld, LOCATE_VALUE, "%s", msg);
			ld_pop(ld);
			ld_pop(ld);
		}
	}
	return r;
}

/* "rest": "http://HOST:PORT" or "https://HOST:PORT" (no path). */
static int parse_rest_url(struct loader *ld, const char *url, struct cfg_slurm *sl)
{
	const char *rest = NULL;
	if (strncmp(url, "http://", 7) == 0)
		rest = url + 7;
	else if (strncmp(url, "https://", 8) == 0) {
		rest = url + 8;
		sl->transport.tls = true;
	}
	char host[256] = "";
	int port = 6820, n = 0;
	bool ok = rest && *rest && *rest != '/' && *rest != ':';
	if (ok && rest[0] == '[') {
		ok = sscanf(rest, "[%255[^]]]%n", host, &n) == 1;
	} else if (ok) {
		size_t len = strcspn(rest, ":/");
		ok = len < sizeof(host);
		if (ok) {
			memcpy(host, rest, len);
			host[len] = '\0';
			n = (int) len;
		}
	}
	if (ok && rest[n] == ':') {
		char *end;
		long p = strtol(rest + n + 1, &end, 10);
		ok = end != rest + n + 1 && p > 0 && p < 65536;
		port = (int) p;
		n = (int) (end - rest);
	}
	if (ok && rest[n] == '/' && rest[n + 1] == '\0')
		n++;
	ok = ok && rest[n] == '\0' && host[0];
	if (!ok) {
		ld_push(ld, "rest");
		int r = ld_fail(ld, LOCATE_VALUE,
				"%s must be slurmrestd's address as http://HOST:PORT or "
				"https://HOST:PORT, not %s",
				ld_where(ld), ld_quote(ld, 0, url));
		ld_pop(ld);
		return r;
	}
	sl->address = xstrdup(host);
	sl->port = port;
	return 0;
}

static void slurm_free(struct cfg_slurm *sl)
{
	if (!sl)
		return;
	free(sl->name);
	free(sl->prefix);
	free(sl->address);
	free(sl->token_file);
	free(sl->user);
	free(sl->partition);
	free(sl->api);
	free(sl->output_dir);
	transport_clear(&sl->transport);
	free(sl);
}

/* A string member that must be given. */
static int require_string(struct loader *ld, const json_t *obj, const char *key, const char **out)
{
	int r = parse_string(ld, obj, key, true, out);
	if (r == 0 && !*out)
		r = ld_fail(ld, LOCATE_KEY, "%s needs \"%s\"", ld_where(ld), key);
	return r;
}

/* The "slurm" section (README, "Slurm"). The JWT itself is read by the backend, which
 * re-reads it when the file changes; here the file must exist and be private. */
/* The Slurm token file, resolved beside the config into sl->token_file: it must be there
 * and private now; its content is the backend's. Returns 0 or the loader's error. */
static int slurm_token_file(struct loader *ld, struct cfg_slurm *sl, const char *token_file)
{
	int r;
	char msg[512], *secret = NULL;
	sl->token_file = path_join(ld->dir, token_file);
	r = token_read_file(sl->token_file, &secret, msg, sizeof(msg));
	free_secret(secret);
	if (r < 0) {
		ld_push(ld, "token_file");
		ld_fail(ld, LOCATE_VALUE, "%s", msg);
		ld_pop(ld);
	}
	return r;
}

static int parse_slurm(struct loader *ld, const json_t *doc)
{
	static const char *const keys[] = {"name",       "prefix",      "rest", "token_file",
					   "user",       "partition",   "api",  "output_dir",
					   "interval_s", "queue_depth", "tls",  "insecure_http",
					   NULL};
	json_t *v = json_object_get(doc, "slurm");
	const char *name = "slurm", *prefix = NULL, *rest = NULL, *token_file = NULL, *user = NULL,
		   *partition = NULL, *api = NULL, *output_dir = NULL;
	int r;

	if (!v)
		return 0;
	struct cfg_slurm *sl = xcalloc(1, sizeof(*sl));
	sl->interval_s = ld->c->probe.interval_s;
	sl->queue_depth = 64;
	ld_push(ld, "slurm");
	r = expect_object(ld, v);
	if (r == 0)
		r = reject_inline_token(ld, v);
	if (r == 0)
		r = check_keys(ld, v, keys);
	if (r == 0)
		r = parse_string(ld, v, "name", true, &name);
	if (r == 0 && (!name_is_valid(name) || name[0] == '.' || name[0] == '-')) {
		ld_push(ld, "name");
		r = ld_fail(ld, LOCATE_VALUE,
			    "%s must be a node name (letters, digits, '.', '_', '-'), not %s",
			    ld_where(ld), ld_quote(ld, 0, name));
		ld_pop(ld);
	}
	if (r == 0)
		r = parse_string(ld, v, "prefix", false, &prefix);
	if (r == 0 && prefix && prefix[0] && !name_is_valid(prefix)) {
		ld_push(ld, "prefix");
		r = ld_fail(ld, LOCATE_VALUE, "%s must be printable and without '/', not %s",
			    ld_where(ld), ld_quote(ld, 0, prefix));
		ld_pop(ld);
	}
	if (r == 0)
		r = require_string(ld, v, "rest", &rest);
	if (r == 0)
		r = parse_rest_url(ld, rest, sl);
	if (r == 0)
		r = require_string(ld, v, "token_file", &token_file);
	if (r == 0)
		r = require_string(ld, v, "user", &user);
	if (r == 0)
		r = require_string(ld, v, "partition", &partition);
	if (r == 0)
		r = require_string(ld, v, "output_dir", &output_dir);
	if (r == 0)
		r = parse_string(ld, v, "api", true, &api);
	if (r == 0 && api &&
	    (strncmp(api, "v0.0.", 5) || !api[5] ||
	     strspn(api + 5, "0123456789") != strlen(api + 5))) {
		ld_push(ld, "api");
		r = ld_fail(ld, LOCATE_VALUE,
			    "%s must be an OpenAPI version of slurmrestd such as \"v0.0.38\", not "
			    "%s",
			    ld_where(ld), ld_quote(ld, 0, api));
		ld_pop(ld);
	}
	if (r == 0)
		r = parse_int(ld, v, "interval_s", 1, 86400, &sl->interval_s);
	if (r == 0)
		r = parse_int(ld, v, "queue_depth", 1, 100000, &sl->queue_depth);
	if (r == 0)
		r = parse_transport(ld, v, &sl->transport);
	if (r == 0 && config_find_host(ld->c, name)) {
		ld_push(ld, "name");
		r = ld_fail(ld, LOCATE_VALUE,
			    "%s %s is also a host in \"hosts\"; give the Slurm cluster another "
			    "\"name\"",
			    ld_where(ld), ld_quote(ld, 0, name));
		ld_pop(ld);
	}
	if (r == 0)
		r = slurm_token_file(ld, sl, token_file);
	ld_pop(ld);
	if (r < 0) {
		slurm_free(sl);
		return r;
	}
	sl->name = xstrdup(name);
	if (prefix)
		sl->prefix = xstrdup(prefix);
	else {
		sl->prefix = xcalloc(1, strlen(name) + 2);
		sprintf(sl->prefix, "%s-", name);
	}
	sl->user = xstrdup(user);
	sl->partition = xstrdup(partition);
	sl->api = api ? xstrdup(api) : NULL;
	sl->output_dir = path_join(ld->dir, output_dir);
	ld->c->slurm = sl;
	return 0;
}

static void host_clear(struct cfg_host *h)
{
	free(h->name);
	free(h->display_name);
	free(h->address);
	free(h->role);
	free(h->tier);
	for (size_t i = 0; i < h->n_capabilities; i++)
		free(h->capabilities[i]);
	free(h->capabilities);
	for (size_t i = 0; i < h->n_services; i++) {
		free(h->services[i].name);
		free(h->services[i].path);
		free(h->services[i].kind);
		transport_clear(&h->services[i].transport);
	}
	free(h->services);
	free_secret(h->token);
	free(h->token_file);
	free(h->dropin);
	transport_clear(&h->transport);
}

static void config_free(struct config *c)
{
	for (size_t i = 0; i < c->n_hosts; i++)
		host_clear(&c->hosts[i]);
	free(c->hosts);
	free(c->path);
	free(c->cluster);
	free(c->token_file);
	free(c->tasks.group);
	free(c->artifacts.inputs_root);
	free(c->tls_ca_file);
	for (size_t i = 0; i < c->n_service_transports; i++) {
		free(c->service_names[i]);
		transport_clear(&c->service_transports[i]);
	}
	free(c->service_names);
	free(c->service_transports);
	json_decref(c->routing);
	json_decref(c->services);
	json_decref(c->doc);
	free(c->join.listen);
	free(c->join.token_file);
	free_secret(c->join.token);
	free(c->join.cert_file);
	free(c->join.key_file);
	free(c->dropin_dir);
	for (size_t i = 0; i < c->n_warnings; i++)
		free(c->warnings[i]);
	free(c->warnings);
	slurm_free(c->slurm);
	free(c);
}

static struct config *config_alloc(void)
{
	struct config *c = xcalloc(1, sizeof(*c));
	c->refcount = 1;
	c->probe = probe_defaults;
	c->thresholds = threshold_defaults;
	c->tasks = tasks_defaults;
	c->artifacts = artifacts_defaults;
	c->events.keep = 10000;
	return c;
}

/* Formats a jansson parse error: "NAME:LINE:COLUMN: ..." when jansson knows where. */
static void syntax_error(const char *name, const json_error_t *e, char *errbuf, size_t errlen)
{
	char pos[64] = "";
	if (e->line > 0)
		snprintf(pos, sizeof(pos), "%d:%d: ", e->line, e->column > 0 ? e->column : 1);
	if (json_error_code(e) == json_error_duplicate_key)
		set_error(errbuf, errlen, "%s:%s%s; a key may appear only once in an object", name,
			  pos, e->text);
	else
		set_error(errbuf, errlen, "%s:%sinvalid JSON: %s", name, pos, e->text);
}

static void add_warning(struct config *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void add_warning(struct config *c, const char *fmt, ...)
{
	struct buf b;
	va_list ap;
	buf_init(&b);
	va_start(ap, fmt);
	buf_vprintf(&b, fmt, ap);
	va_end(ap);
	c->warnings = xrealloc(c->warnings, (c->n_warnings + 1) * sizeof(*c->warnings));
	c->warnings[c->n_warnings++] = buf_steal(&b, NULL);
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/* Parses one hosts.d/NAME.json into the next slot of c->hosts (room is made by the
 * caller). Errors carry the drop-in's own FILE:LINE:COLUMN. */
static void host_clear(struct cfg_host *h);
static int load_dropin(struct config *c, const char *name, const char *file, char *errbuf,
		       size_t errlen)
{
	char *text = NULL;
	size_t len = 0;
	json_error_t jerr;
	int r = file_read_all(file, CONFIG_MAX_DROPIN_SIZE, &text, &len);
	if (r < 0) {
		set_error(errbuf, errlen, "%s: cannot read the drop-in: %s", file,
			  r == -EFBIG ? "larger than 64 KiB" : strerror(-r));
		return r;
	}
	json_t *v = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!v) {
		syntax_error(file, &jerr, errbuf, errlen);
		free(text);
		return -EINVAL;
	}
	struct loader ld = {
		.text = text,
		.len = len,
		.name = file,
		.dir = c->dropin_dir,
		.errbuf = errbuf,
		.errlen = errlen,
		.c = c,
		.skip = 1,
	};
	struct cfg_host *h = &c->hosts[c->n_hosts];
	memset(h, 0, sizeof(*h));
	/* positions are looked up from the file's root: the host object is the document */
	r = parse_host(&ld, name, v, h);
	if (r < 0) {
		host_clear(h);
		memset(h, 0, sizeof(*h));
	} else {
		h->dropin = xstrdup(file);
		c->n_hosts++;
	}
	json_decref(v);
	free(text);
	return r;
}

/* Loads every hosts.d/NAME.json (a missing directory is no drop-ins), in name order so
 * that the first error reported is always the same one. */
static int load_dropins(struct config *c, char *errbuf, size_t errlen)
{
	DIR *d = opendir(c->dropin_dir);
	if (!d)
		return errno == ENOENT || errno == ENOTDIR ? 0 : -errno;
	char **names = NULL;
	size_t n = 0, cap = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		size_t l = strlen(e->d_name);
		if (e->d_name[0] == '.' || l <= 5 || strcmp(e->d_name + l - 5, ".json") != 0)
			continue;
		if (n == cap) {
			cap = cap ? 2 * cap : 16;
			names = xrealloc(names, cap * sizeof(*names));
		}
		names[n++] = xstrndup(e->d_name, l - 5);
	}
	closedir(d);
	if (n)
		qsort(names, n, sizeof(*names), name_cmp);
	c->hosts = xrealloc(c->hosts, (c->n_hosts + n + 1) * sizeof(*c->hosts));
	size_t n_typed = c->n_hosts;
	int r = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		char *file = NULL;
		struct buf b;
		buf_init(&b);
		buf_printf(&b, "%s/%s.json", c->dropin_dir, names[i]);
		file = buf_steal(&b, NULL);
		struct cfg_host key = {.name = names[i]};
		if (bsearch(&key, c->hosts, n_typed, sizeof(*c->hosts), host_cmp))
			add_warning(c,
				    "%s is ignored: hosts.json has a host named \"%s\", which "
				    "wins; rename one of them",
				    file, names[i]);
		else
			r = load_dropin(c, names[i], file, errbuf, errlen);
		free(file);
	}
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	if (r == 0)
		qsort(c->hosts, c->n_hosts, sizeof(*c->hosts), host_cmp);
	return r;
}

int config_remove_dropin(const struct cfg_host *h)
{
	if (!h->dropin)
		return -EPERM;
	if (unlink(h->dropin) < 0)
		return -errno;
	/* its token file, if the join listener put it there (not one the entry names) */
	const char *slash = strrchr(h->dropin, '/');
	if (h->token_file && slash &&
	    strncmp(h->token_file, h->dropin, (size_t) (slash - h->dropin) + 1) == 0 &&
	    !strchr(h->token_file + (slash - h->dropin) + 1, '/'))
		unlink(h->token_file);
	return 0;
}

int config_check_host(const char *name, const json_t *entry, char *errbuf, size_t errlen)
{
	struct config *c = config_alloc();
	struct cfg_host h = {0};
	struct loader ld = {
		.name = "the registration",
		.dir = "/",
		.errbuf = errbuf,
		.errlen = errlen,
		.c = c,
	};
	int r = parse_host(&ld, name, entry, &h);
	host_clear(&h);
	config_free(c);
	return r;
}

static int load_text(const char *text, size_t len, const char *name, const char *dir,
		     const char *path, struct config **ret, char *errbuf, size_t errlen)
{
	struct loader ld = {
		.name = name,
		.dir = dir,
		.errbuf = errbuf,
		.errlen = errlen,
	};
	static const char *const keys[] = {
		"cluster", "auth",       "probe",           "thresholds",
		"tasks",   "hosts",      "routing",         "services",
		"tls",     "local_host", "default_trainer", "default_inference",
		"join",    "slurm",      "events",          "artifacts",
		NULL};
	json_error_t jerr;
	json_t *doc;
	struct config *c;
	int r;

	if (len > CONFIG_MAX_FILE_SIZE) {
		set_error(errbuf, errlen, "%s: the config is larger than %u bytes", name,
			  CONFIG_MAX_FILE_SIZE);
		return -EFBIG;
	}
	if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0) {
		text += 3; /* a byte order mark, as some editors write */
		len -= 3;
	}
	ld.text = text;
	ld.len = len;

	doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!doc) {
		syntax_error(name, &jerr, errbuf, errlen);
		return -EINVAL;
	}
	if (!json_is_object(doc)) {
		r = ld_fail(&ld, LOCATE_VALUE,
			    "the config must be a JSON object ({\"hosts\": {...}}), not %s",
			    ld_value(&ld, doc));
		json_decref(doc);
		return r;
	}

	c = config_alloc();
	c->doc = doc;
	c->path = path ? xstrdup(path) : NULL;
	ld.c = c;
	r = check_keys(&ld, doc, keys);
	if (r == 0)
		r = parse_cluster(&ld, doc);
	if (r == 0)
		r = parse_auth(&ld, doc);
	if (r == 0)
		r = parse_tls(&ld, doc);
	if (r == 0)
		r = parse_probe(&ld, doc);
	if (r == 0)
		r = parse_thresholds(&ld, doc);
	if (r == 0)
		r = parse_tasks(&ld, doc);
	if (r == 0)
		r = parse_artifacts(&ld, doc);
	if (r == 0)
		r = parse_join(&ld, doc);
	if (r == 0)
		r = parse_events(&ld, doc);
	if (r == 0)
		r = parse_hosts(&ld, doc);
	if (r == 0 && path) {
		c->dropin_dir = path_join(dir, CONFIG_DROPIN_DIR);
		r = load_dropins(c, errbuf, errlen);
	}
	if (r == 0)
		r = parse_slurm(&ld, doc);
	if (r == 0)
		r = parse_routing(&ld, doc);
	if (r == 0)
		r = parse_services(&ld, doc);
	if (r == 0)
		r = parse_seed_refs(&ld, doc);
	if (r == 0)
		r = read_tokens(&ld, doc);
	if (r < 0) {
		config_free(c);
		return r;
	}
	*ret = c;
	return 0;
}

/* An absolute form of `path` (not resolving symlinks: the watcher follows the name). */
static char *path_absolute(const char *path)
{
	char *cwd, *abs;
	if (path[0] == '/')
		return xstrdup(path);
	cwd = getcwd(NULL, 0);
	if (!cwd)
		return xstrdup(path);
	abs = path_join(cwd, path[0] == '.' && path[1] == '/' ? path + 2 : path);
	free(cwd);
	return abs;
}

int config_load_file(const char *path, struct config **ret, char *errbuf, size_t errlen)
{
	char *text = NULL, *abs, *dir, *slash;
	size_t len = 0;
	int r;

	r = file_read_all(path, CONFIG_MAX_FILE_SIZE, &text, &len);
	if (r == -EFBIG) {
		set_error(errbuf, errlen, "%s: the config is larger than %u bytes", path,
			  CONFIG_MAX_FILE_SIZE);
		return r;
	}
	if (r < 0) {
		set_error(errbuf, errlen, "%s: cannot read the config: %s", path, strerror(-r));
		return r;
	}
	abs = path_absolute(path);
	dir = xstrdup(abs);
	slash = strrchr(dir, '/');
	if (slash == dir)
		slash[1] = '\0';
	else if (slash)
		*slash = '\0';
	r = load_text(text, len, path, dir, abs, ret, errbuf, errlen);
	free(dir);
	free(abs);
	free(text);
	return r;
}

int config_load_string(const char *text, const char *name, const char *dir, struct config **ret,
		       char *errbuf, size_t errlen)
{
	char *cwd = NULL;
	int r;

	if (!dir)
		dir = cwd = getcwd(NULL, 0);
	r = load_text(text, strlen(text), name ? name : "(string)", dir, NULL, ret, errbuf, errlen);
	free(cwd);
	return r;
}

char *config_default_token_path(void)
{
	const char *env = getenv("CLUSTERFS_TOKEN_FILE");
	struct buf b;

	if (env && env[0])
		return xstrdup(env);
	buf_init(&b);
	env = getenv("XDG_CONFIG_HOME");
	if (env && env[0] == '/') { /* the XDG spec ignores relative values */
		buf_printf(&b, "%s/clusterfs/token", env);
		return buf_steal(&b, NULL);
	}
	env = getenv("HOME");
	if (!env || env[0] != '/') {
		struct passwd *pw = getpwuid(getuid());
		env = pw ? pw->pw_dir : NULL;
	}
	if (!env || env[0] != '/')
		return NULL;
	buf_printf(&b, "%s/.config/clusterfs/token", env);
	return buf_steal(&b, NULL);
}

/* This machine's hostname, made into a valid host name ("localhost" when there is none). */
static char *default_host_name(void)
{
	char name[256];
	size_t n = 0;

	if (gethostname(name, sizeof(name)) < 0)
		name[0] = '\0';
	name[sizeof(name) - 1] = '\0';
	for (char *p = name; *p && n < 64; p++) {
		char c = *p;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			c = '-';
		if (n == 0 && (c == '.' || c == '-'))
			continue;
		name[n++] = c;
	}
	name[n] = '\0';
	return xstrdup(n ? name : "localhost");
}

int config_default(struct config **ret, char *errbuf, size_t errlen)
{
	struct config *c = config_alloc();
	struct cfg_host *h;
	char msg[512];
	int r;

	c->cluster = xstrdup("clusterfs");
	c->token_file = config_default_token_path();
	c->doc = json_object();
	c->routing = json_object();
	c->services = json_object();
	if (!c->doc || !c->routing || !c->services) {
		config_free(c);
		return -ENOMEM;
	}
	c->hosts = xcalloc(1, sizeof(*c->hosts));
	c->n_hosts = 1;
	h = &c->hosts[0];
	h->name = default_host_name();
	h->address = xstrdup("127.0.0.1");
	h->agent_port = CONFIG_DEFAULT_AGENT_PORT;
	h->role = xstrdup("");
	h->queue_depth = 10;
	h->run_as = CFG_RUN_AS_INHERIT;
	if (c->token_file) {
		h->token_file = xstrdup(c->token_file);
		r = token_read_file(c->token_file, &h->token, msg, sizeof(msg));
		if (r < 0 && r != -ENOENT && r != -ENOTDIR) {
			set_error(errbuf, errlen, "%s", msg);
			config_free(c);
			return r;
		}
	}
	*ret = c;
	return 0;
}

struct config *config_ref(struct config *c)
{
	if (c)
		__atomic_add_fetch(&c->refcount, 1, __ATOMIC_RELAXED);
	return c;
}

void config_unref(struct config *c)
{
	if (c && __atomic_sub_fetch(&c->refcount, 1, __ATOMIC_ACQ_REL) == 0)
		config_free(c);
}

int config_queue_depth(const struct config *c, const char *name)
{
	const struct cfg_host *h = config_find_host(c, name);
	if (h)
		return h->queue_depth;
	if (c->slurm && !strcmp(name, c->slurm->name))
		return c->slurm->queue_depth;
	return 10;
}

const struct cfg_host *config_find_host(const struct config *c, const char *name)
{
	struct cfg_host key = {.name = (char *) name};
	if (!c || !name || c->n_hosts == 0)
		return NULL;
	return bsearch(&key, c->hosts, c->n_hosts, sizeof(*c->hosts), host_cmp);
}

const struct cfg_transport *config_service_transport(const struct config *c, const char *name)
{
	for (size_t i = 0; c && name && i < c->n_service_transports; i++)
		if (strcmp(c->service_names[i], name) == 0)
			return &c->service_transports[i];
	return NULL;
}

const struct cfg_service *config_host_service(const struct cfg_host *h, const char *name)
{
	if (!h || !name)
		return NULL;
	for (size_t i = 0; i < h->n_services; i++)
		if (strcmp(h->services[i].name, name) == 0)
			return &h->services[i];
	return NULL;
}

static json_t *render_pair(const double pair[2])
{
	return json_pack("[ff]", pair[0], pair[1]);
}

/* A transport as the config's rendering shows it: fingerprints are public, not secrets. */
static void render_transport(json_t *o, const struct cfg_transport *t)
{
	if (t->tls) {
		json_t *tls = json_object();
		json_object_set_new(tls, "fingerprint",
				    t->fingerprint ? json_string(t->fingerprint) : json_null());
		json_object_set_new(tls, "ca_file",
				    t->ca_file ? json_string(t->ca_file) : json_null());
		json_object_set_new(o, "tls", tls);
	} else {
		json_object_set_new(o, "tls", json_false());
	}
	json_object_set_new(o, "insecure_http", json_boolean(t->insecure_http));
}

static json_t *render_host(const struct cfg_host *h)
{
	json_t *o = json_object(), *caps = json_array(), *svcs = json_object();

	json_object_set_new(o, "host", json_string(h->address));
	if (h->display_name)
		json_object_set_new(o, "name", json_string(h->display_name));
	json_object_set_new(o, "role", json_string(h->role));
	if (h->tier)
		json_object_set_new(o, "tier", json_string(h->tier));
	json_object_set_new(o, "agent_port", json_integer(h->agent_port));
	for (size_t i = 0; i < h->n_capabilities; i++)
		json_array_append_new(caps, json_string(h->capabilities[i]));
	json_object_set_new(o, "capabilities", caps);
	json_object_set_new(o, "queue_depth", json_integer(h->queue_depth));
	if (h->run_as != CFG_RUN_AS_INHERIT)
		json_object_set_new(o, "run_as", json_string(config_run_as_name(h->run_as)));
	for (size_t i = 0; i < h->n_services; i++) {
		const struct cfg_service *s = &h->services[i];
		json_t *so = json_object();
		json_object_set_new(so, "port", json_integer(s->port));
		if (s->path[0])
			json_object_set_new(so, "path", json_string(s->path));
		if (s->kind)
			json_object_set_new(so, "type", json_string(s->kind));
		if (strcmp(s->name, "agent") != 0)
			render_transport(so, &s->transport);
		json_object_set_new(svcs, s->name, so);
	}
	json_object_set_new(o, "services", svcs);
	render_transport(o, &h->transport);
	json_object_set_new(o, "token_file",
			    h->token_file ? json_string(h->token_file) : json_null());
	json_object_set_new(o, "token", h->token ? json_string("(redacted)") : json_null());
	if (h->dropin)
		json_object_set_new(o, "dropin", json_string(h->dropin));
	return o;
}

enum cfg_run_as config_host_run_as(const struct config *c, const struct cfg_host *h)
{
	return h && h->run_as != CFG_RUN_AS_INHERIT ? h->run_as : c->tasks.run_as;
}

const char *config_run_as_name(enum cfg_run_as r)
{
	return r == CFG_RUN_AS_AGENT ? "agent" : "submitter";
}

char *config_render(const struct config *c)
{
	static const char *const seed_keys[] = {"local_host", "default_trainer",
						"default_inference", NULL};
	json_t *o = json_object(), *auth = json_object(), *probe, *th, *hosts = json_object();
	char *text;
	struct buf b;

	json_object_set_new(o, "cluster", json_string(c->cluster));
	json_object_set_new(o, "file", c->path ? json_string(c->path) : json_null());
	json_object_set_new(auth, "token_file",
			    c->token_file ? json_string(c->token_file) : json_null());
	json_object_set_new(o, "auth", auth);
	json_object_set_new(o, "tls",
			    json_pack("{so}", "ca_file",
				      c->tls_ca_file ? json_string(c->tls_ca_file) : json_null()));
	probe = json_pack("{si si si si si si}", "interval_s", c->probe.interval_s, "timeout_ms",
			  c->probe.timeout_ms, "stale_after_s", c->probe.stale_after_s,
			  "offline_after_s", c->probe.offline_after_s, "unhealthy_after",
			  c->probe.unhealthy_after, "max_age_ms", c->probe.max_age_ms);
	json_object_set_new(probe, "heartbeat_s", json_integer(c->probe.heartbeat_s));
	json_object_set_new(o, "probe", probe);
	if (c->join.enabled)
		json_object_set_new(o, "join",
				    json_pack("{ss ss ss s{ss ss} si sb}", "listen", c->join.listen,
					      "token_file", c->join.token_file, "token",
					      "(redacted)", "tls", "cert_file", c->join.cert_file,
					      "key_file", c->join.key_file, "forget_after_s",
					      c->join.forget_after_s, "announce",
					      c->join.announce));
	if (c->dropin_dir)
		json_object_set_new(o, "dropin_dir", json_string(c->dropin_dir));
	th = json_pack("{so so so so}", "cpu", render_pair(c->thresholds.cpu), "memory",
		       render_pair(c->thresholds.memory), "disk", render_pair(c->thresholds.disk),
		       "load", render_pair(c->thresholds.load));
	json_object_set_new(o, "thresholds", th);
	json_object_set_new(
		o, "tasks",
		json_pack("{ss sb so si sI si si s{sf sf sf}}", "run_as",
			  config_run_as_name(c->tasks.run_as), "allow_root", c->tasks.allow_root,
			  "group", c->tasks.group ? json_string(c->tasks.group) : json_null(),
			  "drafts_per_user", c->tasks.drafts_per_user, "draft_bytes_per_user",
			  (json_int_t) (c->tasks.draft_bytes_per_user >> 20), "queued_per_user",
			  c->tasks.queued_per_user, "finished_cached", c->tasks.finished_cached,
			  "retention", "output_days", c->tasks.retention.output_days, "output_mb",
			  c->tasks.retention.output_mb, "records_days",
			  c->tasks.retention.records_days));
	json_object_set_new(o, "events", json_pack("{si}", "keep", c->events.keep));
	for (size_t i = 0; i < c->n_hosts; i++)
		json_object_set_new(hosts, c->hosts[i].name, render_host(&c->hosts[i]));
	json_object_set_new(o, "hosts", hosts);
	json_object_set(o, "routing", c->routing);
	json_t *services = json_deep_copy(c->services);
	const char *sname;
	json_t *sv;
	json_object_foreach (services, sname, sv) {
		const struct cfg_transport *t = config_service_transport(c, sname);
		if (t && json_is_object(sv))
			render_transport(sv, t);
	}
	json_object_set_new(o, "services", services);
	if (c->slurm) {
		const struct cfg_slurm *sl = c->slurm;
		json_t *so = json_pack("{ss ss ss si ss ss ss so ss si si}", "name", sl->name,
				       "prefix", sl->prefix, "address", sl->address, "port",
				       sl->port, "token_file", sl->token_file, "user", sl->user,
				       "partition", sl->partition, "api",
				       sl->api ? json_string(sl->api) : json_string("(discovered)"),
				       "output_dir", sl->output_dir, "interval_s", sl->interval_s,
				       "queue_depth", sl->queue_depth);
		render_transport(so, &sl->transport);
		json_object_set_new(o, "slurm", so);
	}
	for (size_t i = 0; seed_keys[i]; i++) {
		json_t *v = c->doc ? json_object_get(c->doc, seed_keys[i]) : NULL;
		if (v)
			json_object_set(o, seed_keys[i], v);
	}

	text = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15));
	json_decref(o);
	if (!text)
		return NULL;
	buf_init(&b);
	buf_puts(&b, text);
	buf_puts(&b, "\n");
	free(text);
	return buf_steal(&b, NULL);
}
