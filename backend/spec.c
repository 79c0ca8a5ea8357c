/* Parsing and checking task specs (their canonical JSON is spec_json.c's).
 *
 * jansson parses (rejecting duplicate keys); each field is then checked in a fixed order,
 * and the first problem stops the walk with one sentence. Values shown in messages are
 * JSON-escaped to ASCII and shortened, so a hostile spec cannot put control characters or
 * megabytes into NAME.error.
 *
 * Allocation failures abort, as in util.c's buffers and config.c: a spec is small. */
#include "backend/spec.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/util.h"

#define CPUS_MAX   1024
#define MEM_MB_MAX (16 * 1024 * 1024) /* 16 TiB */
#define GPUS_MAX   64
#define CWD_MAX    4095
#define SHOWN_MAX  48 /* characters of a value shown in a message */
#define MODEL_MAX  512

static const char *const spec_fields[] = {"cmd",      "model",   "prompt", "messages",  "options",
					  "pull",     "node",    "type",   "requires",  "resources",
					  "priority", "env",     "cwd",    "timeout_s", "retries",
					  "after",    "outputs", "inputs"};
#define N_SPEC_FIELDS (sizeof(spec_fields) / sizeof(spec_fields[0]))

static const char *const resource_fields[] = {"cpus", "mem_mb", "gpus"};
#define N_RESOURCE_FIELDS (sizeof(resource_fields) / sizeof(resource_fields[0]))

const char *const spec_priority_names[4] = {"P0", "P1", "P2", "P3"};

/* Words people write for a field (from other schedulers' specs), so that a typo of one
 * of them still finds the field: "comand" is 3 edits from "cmd" but 1 from "command". */
struct alias {
	const char *word, *field;
};

static const struct alias spec_aliases[] = {
	{"command", "cmd"},
	{"commands", "cmd"},
	{"script", "cmd"},
	{"shell", "cmd"},
	{"argv", "cmd"},
	{"args", "cmd"},
	{"host", "node"},
	{"hostname", "node"},
	{"nodes", "node"},
	{"target", "node"},
	{"class", "type"},
	{"kind", "type"},
	{"require", "requires"},
	{"requirements", "requires"},
	{"capabilities", "requires"},
	{"needs", "requires"},
	{"resource", "resources"},
	{"prio", "priority"},
	{"environment", "env"},
	{"environ", "env"},
	{"workdir", "cwd"},
	{"working_dir", "cwd"},
	{"directory", "cwd"},
	{"timeout", "timeout_s"},
	{"time_limit", "timeout_s"},
	{"retry", "retries"},
	{"max_retries", "retries"},
	{"depends", "after"},
	{"depends_on", "after"},
	{"dependencies", "after"},
	{"deps", "after"},
	{"llm", "model"},
	{"input", "prompt"},
	{"query", "prompt"},
	{"chat", "messages"},
	{"parameters", "options"},
	{NULL, NULL},
};

static const struct alias resource_aliases[] = {
	{"cores", "cpus"},       {"memory", "mem_mb"}, {"mem", "mem_mb"}, {"ram", "mem_mb"},
	{"memory_mb", "mem_mb"}, {"ram_mb", "mem_mb"}, {NULL, NULL},
};

struct parser {
	char *errbuf;
	size_t errlen;
};

static int fail(struct parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail_value(struct parser *p, const json_t *v, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Writes one sentence into the error buffer; returns -EINVAL. */
static int fail(struct parser *p, const char *fmt, ...)
{
	va_list ap;
	if (p->errbuf && p->errlen) {
		va_start(ap, fmt);
		vsnprintf(p->errbuf, p->errlen, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

/* `s` as a JSON string literal in ASCII, shortened to about SHOWN_MAX characters without
 * splitting an escape sequence. */
static void show_string(const char *s, char *out, size_t outlen)
{
	json_t *j = json_string(s);
	char *d = j ? json_dumps(j, JSON_ENCODE_ANY | JSON_ENSURE_ASCII) : NULL;
	size_t n, i = 1;

	json_decref(j);
	if (!d) {
		snprintf(out, outlen, "\"?\"");
		return;
	}
	n = strlen(d);
	if (n <= SHOWN_MAX) {
		snprintf(out, outlen, "%s", d);
	} else {
		while (i < n - 1) {
			size_t step = d[i] != '\\' ? 1 : d[i + 1] == 'u' ? 6 : 2;
			if (i + step > SHOWN_MAX - 4)
				break;
			i += step;
		}
		snprintf(out, outlen, "%.*s...\"", (int) i, d);
	}
	free(d);
}

/* A short description of a JSON value for messages: scalars as JSON, containers by kind. */
static void show_value(const json_t *v, char *out, size_t outlen)
{
	char *d;

	switch (json_typeof(v)) {
	case JSON_OBJECT: snprintf(out, outlen, "an object"); return;
	case JSON_ARRAY: snprintf(out, outlen, "a list"); return;
	case JSON_STRING: show_string(json_string_value(v), out, outlen); return;
	default:
		d = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
		snprintf(out, outlen, "%.*s", SHOWN_MAX, d ? d : "a value");
		free(d);
		return;
	}
}

static bool in_charset(char c, bool allow_at)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '.' || c == '_' || c == '-' || (allow_at && c == '@');
}

static bool id_is_valid(const char *id, bool allow_at)
{
	size_t n = strlen(id);
	if (n == 0 || n > SPEC_NAME_MAX || id[0] == '.')
		return false;
	for (size_t i = 0; i < n; i++)
		if (!in_charset(id[i], allow_at))
			return false;
	return true;
}

bool spec_name_is_valid(const char *id)
{
	return id && id_is_valid(id, false);
}

static bool env_name_is_valid(const char *s)
{
	if (!((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z') || s[0] == '_'))
		return false;
	for (size_t i = 1; s[i]; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
		      (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
			return false;
	return true;
}

/* The field `key` was probably meant to be: the nearest known field or alias within
 * distance 2 (fields first on a tie), or NULL. */
static const char *closest_field(const char *key, const char *const *known, size_t n_known,
				 const struct alias *aliases)
{
	const char *words[64];
	size_t n = 0, n_aliases = 0;
	const char *hit;

	for (size_t i = 0; i < n_known && n < 64; i++)
		words[n++] = known[i];
	for (; aliases[n_aliases].word && n < 64; n_aliases++)
		words[n++] = aliases[n_aliases].word;
	hit = util_closest_word(key, words, n, 2);
	for (size_t i = 0; hit && i < n_aliases; i++)
		if (hit == aliases[i].word)
			return aliases[i].field;
	return hit;
}

/* Writes one sentence about the value v into the error buffer: fmt's words, then ", not "
 * and v as show_value() shows it. Returns -EINVAL. */
static int fail_value(struct parser *p, const json_t *v, const char *fmt, ...)
{
	char shown[SHOWN_MAX + 16];
	struct buf what;
	va_list ap;

	buf_init(&what);
	va_start(ap, fmt);
	buf_vprintf(&what, fmt, ap);
	va_end(ap);
	show_value(v, shown, sizeof(shown));
	fail(p, "%s, not %s", what.data ? what.data : "", shown);
	buf_free(&what);
	return -EINVAL;
}

/* Rejects an unknown key of an object: with a did-you-mean when one is within distance 2
 * of a field or an alias, else with the list of known keys. `prefix` is "" or
 * "resources.". */
static int fail_unknown(struct parser *p, const char *prefix, const char *key,
			const char *const *known, size_t n_known, const struct alias *aliases)
{
	char shown[SHOWN_MAX + 16], list[256] = "";
	const char *hint = closest_field(key, known, n_known, aliases);
	size_t used = 0;

	/* The key shown with its prefix inside one pair of quotes. */
	show_string(key, shown, sizeof(shown));
	if (hint)
		return fail(p, "unknown field \"%s%s; did you mean \"%s%s\"?", prefix, shown + 1,
			    prefix, hint);
	for (size_t i = 0; i < n_known && used < sizeof(list); i++)
		used += (size_t) snprintf(list + used, sizeof(list) - used, "%s%s", i ? ", " : "",
					  known[i]);
	return fail(p, "unknown field \"%s%s (known fields: %s)", prefix, shown + 1, list);
}

/* Reads a whole number in [min, max] (an integral real such as 4.0 counts). */
static int get_int(struct parser *p, const json_t *v, const char *field, const char *what,
		   long long min, long long max, int *ret)
{
	long long x;

	if (json_is_integer(v)) {
		x = json_integer_value(v);
	} else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
		   fabs(json_real_value(v)) < 1e15) {
		x = (long long) json_real_value(v);
	} else {
		return fail_value(p, v, "field \"%s\" must be %s", field, what);
	}
	if (x < min || x > max)
		return fail_value(p, v, "field \"%s\" must be %s", field, what);
	*ret = (int) x;
	return 0;
}

/* A NULL-terminated copy of an array's strings, in order. */
static char **strv_from_array(const json_t *a, size_t *ret_n)
{
	size_t n = json_array_size(a);
	char **v = xcalloc(n + 1, sizeof(*v));
	for (size_t i = 0; i < n; i++)
		v[i] = xstrdup(json_string_value(json_array_get(a, i)));
	*ret_n = n;
	return v;
}

static void strv_free(char **v)
{
	if (!v)
		return;
	for (size_t i = 0; v[i]; i++)
		free(v[i]);
	free(v);
}

static int parse_cmd(struct parser *p, const json_t *v, struct task_spec *s)
{
	if (json_is_string(v)) {
		const char *c = json_string_value(v);
		if (c[strspn(c, " \t\r\n")] == '\0')
			return fail(p, "field \"cmd\" must not be empty");
		s->shell = xstrdup(c);
		return 0;
	}
	if (!json_is_array(v))
		return fail_value(p, v,
				  "field \"cmd\" must be a shell command string or an argv list of "
				  "strings");
	if (json_array_size(v) == 0)
		return fail(p, "field \"cmd\" must not be an empty list");
	for (size_t i = 0; i < json_array_size(v); i++) {
		const json_t *e = json_array_get(v, i);
		if (!json_is_string(e))
			return fail_value(p, e, "field \"cmd[%zu]\" must be a string", i);
	}
	if (json_string_length(json_array_get(v, 0)) == 0)
		return fail(p, "field \"cmd[0]\" (the program) must not be empty");
	s->argv = strv_from_array(v, &s->argc);
	return 0;
}

static int parse_model(struct parser *p, const json_t *v, struct task_spec *s)
{
	const char *m = json_string_value(v);
	bool ok = m && m[0] && strlen(m) <= MODEL_MAX;

	for (const unsigned char *c = (const unsigned char *) m; ok && *c; c++)
		ok = *c > ' ' && *c != 0x7f;
	if (!ok)
		return fail_value(
			p, v,
			"field \"model\" must be a model name, like \"qwen3:8b\" (no spaces, at "
			"most %d bytes)",
			MODEL_MAX);
	s->model = xstrdup(m);
	return 0;
}

static int parse_prompt(struct parser *p, const json_t *v, struct task_spec *s)
{
	if (!json_is_string(v) || json_string_length(v) == 0)
		return fail_value(p, v, "field \"prompt\" must be a non-empty string");
	s->prompt = xstrdup(json_string_value(v));
	return 0;
}

static int parse_messages(struct parser *p, const json_t *v, struct task_spec *s)
{
	static const char *const roles[] = {"system", "user", "assistant", "tool"};

	if (!json_is_array(v) || json_array_size(v) == 0)
		return fail_value(
			p, v,
			"field \"messages\" must be a non-empty list of {\"role\", \"content\"} "
			"objects");
	for (size_t i = 0; i < json_array_size(v); i++) {
		const json_t *m = json_array_get(v, i);
		const char *role = json_string_value(json_object_get(m, "role"));
		bool known = false;
		for (size_t r = 0; role && r < sizeof(roles) / sizeof(roles[0]); r++)
			known |= !strcmp(role, roles[r]);
		if (!json_is_object(m) || !known || !json_is_string(json_object_get(m, "content")))
			return fail_value(
				p, m,
				"field \"messages[%zu]\" must be an object with \"role\" (system, "
				"user, assistant or tool) and \"content\" (a string)",
				i);
	}
	s->messages = json_deep_copy(v);
	return 0;
}

static int parse_options(struct parser *p, const json_t *v, struct task_spec *s)
{
	if (!json_is_object(v))
		return fail_value(
			p, v, "field \"options\" must be an object, like {\"temperature\": 0.2}");
	if (json_object_size(v) > 0)
		s->options = json_deep_copy(v);
	return 0;
}

static int parse_pull(struct parser *p, const json_t *v, struct task_spec *s)
{
	if (!json_is_boolean(v))
		return fail_value(p, v, "field \"pull\" must be true or false");
	s->pull = json_is_true(v);
	return 0;
}

static int parse_node(struct parser *p, const json_t *v, struct task_spec *s)
{
	const char *n = json_string_value(v);

	if (!n || (strcmp(n, "any") != 0 && strcmp(n, "all") != 0 && !id_is_valid(n, false)))
		return fail_value(
			p, v,
			"field \"node\" must be \"any\", \"all\" or a node name (letters, "
			"digits, '.', '_', '-'; at most %d)",
			SPEC_NAME_MAX);
	free(s->node);
	s->node = xstrdup(n);
	return 0;
}

static int parse_type(struct parser *p, const json_t *v, struct task_spec *s)
{
	const char *t = json_string_value(v);

	if (!t || !name_is_valid(t))
		return fail_value(
			p, v,
			"field \"type\" must be a routing class such as \"build\" (printable, "
			"without '/')");
	s->type = xstrdup(t);
	return 0;
}

static int parse_requires(struct parser *p, const json_t *v, struct task_spec *s)
{
	if (!json_is_array(v))
		return fail_value(
			p, v, "field \"requires\" must be a list of capabilities, like [\"gpu\"]");
	for (size_t i = 0; i < json_array_size(v); i++) {
		const json_t *e = json_array_get(v, i);
		if (!json_is_string(e) || json_string_length(e) == 0)
			return fail_value(p, e,
					  "field \"requires[%zu]\" must be a capability name (a "
					  "non-empty string)",
					  i);
	}
	strv_free(s->requires);
	s->requires = strv_from_array(v, &s->n_requires);
	return 0;
}

static int parse_resources(struct parser *p, const json_t *v, struct task_spec *s)
{
	char what[64];
	const char *key;
	json_t *e;
	int r;

	if (!json_is_object(v))
		return fail_value(p, v,
				  "field \"resources\" must be an object, like {\"cpus\": 4, "
				  "\"mem_mb\": 8000, \"gpus\": 1}");
	json_object_foreach ((json_t *) v, key, e) {
		size_t i;
		for (i = 0; i < N_RESOURCE_FIELDS; i++)
			if (strcmp(key, resource_fields[i]) == 0)
				break;
		if (i == N_RESOURCE_FIELDS)
			return fail_unknown(p, "resources.", key, resource_fields,
					    N_RESOURCE_FIELDS, resource_aliases);
	}
	if ((e = json_object_get(v, "cpus")) && !json_is_null(e)) {
		snprintf(what, sizeof(what), "a whole number from 1 to %d", CPUS_MAX);
		r = get_int(p, e, "resources.cpus", what, 1, CPUS_MAX, &s->cpus);
		if (r < 0)
			return r;
	}
	if ((e = json_object_get(v, "mem_mb")) && !json_is_null(e)) {
		snprintf(what, sizeof(what), "a whole number of megabytes from 1 to %d",
			 MEM_MB_MAX);
		r = get_int(p, e, "resources.mem_mb", what, 1, MEM_MB_MAX, &s->mem_mb);
		if (r < 0)
			return r;
	}
	if ((e = json_object_get(v, "gpus")) && !json_is_null(e)) {
		snprintf(what, sizeof(what), "a whole number from 0 to %d", GPUS_MAX);
		r = get_int(p, e, "resources.gpus", what, 0, GPUS_MAX, &s->gpus);
		if (r < 0)
			return r;
	}
	return 0;
}

static int parse_priority(struct parser *p, const json_t *v, struct task_spec *s)
{
	const char *t = json_string_value(v);

	for (int i = 0; t && i < 4; i++) {
		if (strcmp(t, spec_priority_names[i]) == 0) {
			s->priority = i;
			return 0;
		}
	}
	return fail_value(p, v, "field \"priority\" must be one of \"P0\", \"P1\", \"P2\", \"P3\"");
}

static int parse_env(struct parser *p, const json_t *v, struct task_spec *s)
{
	char name[SHOWN_MAX + 16];
	const char *key;
	json_t *e;

	if (!json_is_object(v))
		return fail_value(
			p, v, "field \"env\" must be an object of strings, like {\"CC\": \"gcc\"}");
	json_object_foreach ((json_t *) v, key, e) {
		show_string(key, name, sizeof(name));
		if (!env_name_is_valid(key))
			return fail(p,
				    "field \"env\" has key %s, which is not a variable name "
				    "(letters, digits and '_', not starting with a digit)",
				    name);
		if (!json_is_string(e))
			return fail_value(p, e, "field \"env.%s must be a string", name + 1);
	}
	if (json_object_size(v) > 0)
		s->env = json_deep_copy(v);
	return 0;
}

static int parse_cwd(struct parser *p, const json_t *v, struct task_spec *s)
{
	const char *c = json_string_value(v);

	if (!c || c[0] != '/' || strlen(c) > CWD_MAX)
		return fail_value(
			p, v,
			"field \"cwd\" must be an absolute path (starting with '/', at most "
			"%d bytes)",
			CWD_MAX);
	s->cwd = xstrdup(c);
	return 0;
}

static int parse_after(struct parser *p, const json_t *v, struct task_spec *s)
{
	char shown[SHOWN_MAX + 16];

	if (!json_is_array(v))
		return fail_value(p, v,
				  "field \"after\" must be a list of task ids, like [\"build-1\"]");
	for (size_t i = 0; i < json_array_size(v); i++) {
		const json_t *e = json_array_get(v, i);
		if (!json_is_string(e) || !id_is_valid(json_string_value(e), true))
			return fail_value(
				p, e,
				"field \"after[%zu]\" must be a task id (letters, digits, "
				"'.', '_', '-', '@'; at most %d; not starting with '.')",
				i, SPEC_NAME_MAX);
		for (size_t j = 0; j < i; j++) {
			if (strcmp(json_string_value(e), json_string_value(json_array_get(v, j))) ==
			    0) {
				show_value(e, shown, sizeof(shown));
				return fail(p, "field \"after\" lists %s twice", shown);
			}
		}
	}
	strv_free(s->after);
	s->after = strv_from_array(v, &s->n_after);
	return 0;
}

bool spec_path_is_relative(const char *name)
{
	size_t len = strlen(name);
	if (!len || len > SPEC_PATH_MAX || name[0] == '/')
		return false;
	for (const char *c = name; *c; c++)
		if ((unsigned char) *c < 0x20 || *c == 0x7f)
			return false;
	for (const char *seg = name;;) {
		const char *end = strchr(seg, '/');
		size_t n = end ? (size_t) (end - seg) : strlen(seg);
		if (n == 0 || (n == 1 && seg[0] == '.') || (n == 2 && !strncmp(seg, "..", 2)))
			return false;
		if (!end)
			return true;
		seg = end + 1;
	}
}

static int parse_outputs(struct parser *p, const json_t *v, struct task_spec *s)
{
	if (!json_is_array(v) || json_array_size(v) > SPEC_OUTPUTS_MAX)
		return fail_value(
			p, v,
			"field \"outputs\" must be a list of at most %d paths relative to the "
			"task's directory, like [\"model.npy\", \"metrics/*.json\"]",
			SPEC_OUTPUTS_MAX);
	for (size_t i = 0; i < json_array_size(v); i++) {
		const json_t *e = json_array_get(v, i);
		if (!json_is_string(e) || !spec_path_is_relative(json_string_value(e)))
			return fail_value(
				p, e,
				"field \"outputs[%zu]\" must be a path relative to the task's "
				"directory (no \"..\", not absolute)",
				i);
	}
	strv_free(s->outputs);
	s->outputs = strv_from_array(v, &s->n_outputs);
	return 0;
}

/* "TASK[@NODE|@*]/PATH": the producer's task id (TASK@NODE, or TASK for "@*") into
 * ret_task (size SPEC_NAME_MAX + 1); false when malformed. */
static bool input_source_task(const char *src, bool *ret_all, char *ret_task)
{
	const char *slash = strchr(src, '/');
	if (!slash || slash == src || (size_t) (slash - src) > SPEC_NAME_MAX ||
	    !spec_path_is_relative(slash + 1))
		return false;
	size_t n = (size_t) (slash - src);
	*ret_all = n > 2 && !strncmp(slash - 2, "@*", 2);
	if (*ret_all)
		n -= 2;
	memcpy(ret_task, src, n);
	ret_task[n] = '\0';
	return id_is_valid(ret_task, true);
}

static int parse_inputs(struct parser *p, const json_t *v, struct task_spec *s)
{
	const char *name;
	json_t *src;
	if (!json_is_object(v) || json_object_size(v) > SPEC_INPUTS_MAX)
		return fail_value(p, v,
				  "field \"inputs\" must be an object of at most %d names, like "
				  "{\"base.npy\": \"round1@n2/model.npy\", \"w/\": "
				  "\"train@*/weights.npy\", \"data.csv\": \"/shared/data.csv\"}",
				  SPEC_INPUTS_MAX);
	json_object_foreach ((json_t *) v, name, src) {
		char task[SPEC_NAME_MAX + 1], bare[SPEC_PATH_MAX + 2];
		bool all = false;
		size_t n = strlen(name);
		snprintf(bare, sizeof(bare), "%s", name);
		bool dir = n > 1 && name[n - 1] == '/';
		if (dir)
			bare[n - 1] = '\0';
		if (!spec_path_is_relative(bare))
			return fail(
				p,
				"field \"inputs\": %.*s is not a name relative to the task's "
				"directory (no \"..\", not absolute; \"DIR/\" for several files)",
				SHOWN_MAX, name);
		const char *sv = json_string_value(src);
		if (sv && sv[0] == '/') {
			if (strstr(sv, "/../") ||
			    (strlen(sv) >= 3 && !strcmp(sv + strlen(sv) - 3, "/..")) ||
			    strlen(sv) > CWD_MAX)
				return fail(p,
					    "field \"inputs.%.*s\": %.*s must not contain \"..\"",
					    SHOWN_MAX, name, SHOWN_MAX, sv);
			continue;
		}
		if (!sv || !input_source_task(sv, &all, task))
			return fail_value(
				p, src,
				"field \"inputs.%.*s\" must be \"TASK/PATH\", \"TASK@NODE/PATH\", "
				"\"TASK@*/PATH\" (every copy of a node \"all\" task) or an absolute "
				"path on the control plane",
				SHOWN_MAX, name);
		if ((all || strpbrk(strchr(sv, '/'), "*?[")) && !dir)
			return fail(
				p,
				"field \"inputs.%.*s\": %.*s may name several files, so its name "
				"must be a directory, ending in '/'",
				SHOWN_MAX, name, SHOWN_MAX, sv);
		/* the producer is a dependency: the input waits for it */
		bool known = false;
		for (size_t i = 0; i < s->n_after; i++)
			known = known || !strcmp(s->after[i], task);
		if (!known) {
			s->after = xrealloc(s->after, (s->n_after + 2) * sizeof(*s->after));
			s->after[s->n_after++] = xstrdup(task);
			s->after[s->n_after] = NULL;
		}
	}
	if (json_object_size(v) > 0) {
		json_decref(s->inputs);
		s->inputs = json_deep_copy(v);
	}
	return 0;
}

static int parse_timeout(struct parser *p, const json_t *v, struct task_spec *s)
{
	return get_int(p, v, "timeout_s",
		       "a whole number of seconds from 0 (none) to 604800 (7 days)", 0,
		       SPEC_TIMEOUT_MAX, &s->timeout_s);
}

static int parse_retries(struct parser *p, const json_t *v, struct task_spec *s)
{
	return get_int(p, v, "retries", "a whole number from 0 to 10", 0, SPEC_RETRIES_MAX,
		       &s->retries);
}

/* Every field, in the order they are checked (and shown in the canonical JSON). */
static const struct {
	const char *name;
	int (*parse)(struct parser *p, const json_t *v, struct task_spec *s);
} field_parsers[] = {
	{"cmd", parse_cmd},           {"model", parse_model},
	{"prompt", parse_prompt},     {"messages", parse_messages},
	{"options", parse_options},   {"pull", parse_pull},
	{"node", parse_node},         {"type", parse_type},
	{"requires", parse_requires}, {"resources", parse_resources},
	{"priority", parse_priority}, {"env", parse_env},
	{"cwd", parse_cwd},           {"timeout_s", parse_timeout},
	{"retries", parse_retries},   {"after", parse_after},
	{"outputs", parse_outputs},   {"inputs", parse_inputs},
};
_Static_assert(sizeof(field_parsers) / sizeof(field_parsers[0]) == N_SPEC_FIELDS,
	       "field_parsers and spec_fields list the same fields");

void spec_free(struct task_spec *s)
{
	if (!s)
		return;
	free(s->shell);
	strv_free(s->argv);
	free(s->node);
	free(s->type);
	strv_free(s->requires);
	json_decref(s->env);
	free(s->cwd);
	strv_free(s->after);
	free(s->model);
	free(s->prompt);
	json_decref(s->messages);
	json_decref(s->options);
	strv_free(s->outputs);
	json_decref(s->inputs);
	free(s);
}

static bool has(const json_t *doc, const char *field)
{
	const json_t *v = json_object_get(doc, field);
	return v && !json_is_null(v);
}

/* A command ("cmd") or a prompt ("model" with "prompt" or "messages"): exactly one kind,
 * and only the fields that kind has. */
static int check_kind(struct parser *p, const json_t *doc)
{
	static const char *const prompt_only[] = {"prompt", "messages", "options", "pull"};
	static const char *const cmd_only[] = {"env", "cwd", "outputs", "inputs"};

	if (has(doc, "cmd") && has(doc, "model"))
		return fail(p, "a spec is a command (\"cmd\") or a prompt (\"model\" with "
			       "\"prompt\" or \"messages\"), not both");
	if (has(doc, "model")) {
		if (has(doc, "prompt") && has(doc, "messages"))
			return fail(p, "give \"prompt\" (one text) or \"messages\" (a chat), not "
				       "both");
		if (!has(doc, "prompt") && !has(doc, "messages"))
			return fail(p, "a prompt task needs \"prompt\" (a string) or "
				       "\"messages\" (a chat) beside \"model\"");
		for (size_t i = 0; i < sizeof(cmd_only) / sizeof(cmd_only[0]); i++)
			if (has(doc, cmd_only[i]))
				return fail(p,
					    "field \"%s\" is for commands; a prompt task runs no "
					    "process",
					    cmd_only[i]);
		return 0;
	}
	for (size_t i = 0; i < sizeof(prompt_only) / sizeof(prompt_only[0]); i++)
		if (has(doc, prompt_only[i]))
			return fail(p,
				    "field \"%s\" belongs to a prompt task, which needs \"model\" "
				    "(and no \"cmd\")",
				    prompt_only[i]);
	if (!has(doc, "cmd"))
		return fail(p, "missing required field \"cmd\" (a shell string or an argv list), "
			       "or \"model\" and \"prompt\" for a prompt task");
	return 0;
}

/* Explains a jansson load error in one sentence. */
static int fail_syntax(struct parser *p, const json_error_t *e)
{
	if (json_error_code(e) == json_error_out_of_memory) {
		fail(p, "out of memory while parsing the spec");
		return -ENOMEM;
	}
	if (json_error_code(e) == json_error_duplicate_key) {
		/* jansson says: duplicate object key near '"KEY"' */
		const char *near = strstr(e->text, "near '");
		size_t n = near ? strlen(near + 6) : 0;
		if (n >= 3 && near[6] == '"' && near[6 + n - 1] == '\'')
			return fail(
				p, "line %d, column %d: key %.*s appears twice; give each key once",
				e->line, e->column, (int) (n - 1), near + 6);
		return fail(p, "line %d, column %d: a key appears twice; give each key once",
			    e->line, e->column);
	}
	if (e->line < 1)
		return fail(p, "%s", e->text);
	return fail(p, "line %d, column %d: %s", e->line, e->column, e->text);
}

int spec_parse(const char *text, size_t len, struct task_spec **ret_spec, char *errbuf,
	       size_t errlen)
{
	struct parser p = {.errbuf = errbuf, .errlen = errlen};
	struct task_spec *s;
	json_error_t jerr;
	json_t *doc, *v;
	const char *key;
	size_t blank = 0;
	int r = 0;

	if (errbuf && errlen)
		errbuf[0] = '\0';
	while (blank < len && strchr(" \t\r\n", text[blank]) && text[blank])
		blank++;
	if (blank == len)
		return fail(&p, "the spec is empty; it must be a JSON object, like {\"cmd\": "
				"\"make test\"}");

	doc = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
	if (!doc)
		return fail_syntax(&p, &jerr);
	if (!json_is_object(doc)) {
		json_decref(doc);
		return fail(&p, "the spec must be a JSON object, like {\"cmd\": \"make test\"}");
	}

	json_object_foreach (doc, key, v) {
		size_t i;
		for (i = 0; i < N_SPEC_FIELDS; i++)
			if (strcmp(key, spec_fields[i]) == 0)
				break;
		if (i == N_SPEC_FIELDS) {
			r = fail_unknown(&p, "", key, spec_fields, N_SPEC_FIELDS, spec_aliases);
			json_decref(doc);
			return r;
		}
	}
	r = check_kind(&p, doc);
	if (r < 0) {
		json_decref(doc);
		return r;
	}

	s = xcalloc(1, sizeof(*s));
	s->node = xstrdup("any");
	s->priority = SPEC_PRIORITY_DEF;
	s->requires = xcalloc(1, sizeof(*s->requires));
	s->after = xcalloc(1, sizeof(*s->after));
	s->outputs = xcalloc(1, sizeof(*s->outputs));

	for (size_t i = 0; i < N_SPEC_FIELDS && r == 0; i++) {
		v = json_object_get(doc, field_parsers[i].name);
		if (v && !json_is_null(v))
			r = field_parsers[i].parse(&p, v, s);
	}

	json_decref(doc);
	if (r < 0) {
		spec_free(s);
		return r;
	}
	*ret_spec = s;
	return 0;
}
