/* Task specs: the JSON a user drops into /cluster/tasks/new/NAME.json, parsed and checked.
 *
 * Pure: no I/O, no globals. A rejected spec is explained in one sentence that names the
 * field, what it must be and what it was, so the fs layer can show it in NAME.error. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#define SPEC_NAME_MAX     128
#define SPEC_TIMEOUT_MAX  (7 * 24 * 3600) /* seconds */
#define SPEC_RETRIES_MAX  10
#define SPEC_PRIORITY_DEF 2

/* An accepted spec. Owns every pointer; release with spec_free(). */
struct task_spec {
	char *shell; /* "cmd" as a string: run with /bin/sh -c; or NULL */
	char **argv; /* "cmd" as a list of strings (NULL-terminated); or NULL */
	size_t argc;
	char *node;      /* "any" (default), "all", or a node name */
	char *type;      /* routing class, or NULL */
	char **requires; /* capabilities, NULL-terminated (may be empty, never NULL) */
	size_t n_requires;
	int cpus, mem_mb, gpus; /* "resources", 0 when not asked */
	int priority;           /* 0..3 from "P0".."P3"; default 2 */
	json_t *env;   /* object of string values (owned reference), or NULL when none/empty */
	char *cwd;     /* absolute path, or NULL */
	int timeout_s; /* 0 = none; at most SPEC_TIMEOUT_MAX */
	int retries;   /* 0..SPEC_RETRIES_MAX, default 0 */
	char **after;  /* task ids that must have succeeded first, NULL-terminated, never NULL;
			* with the producers of "inputs" added */
	size_t n_after;
	/* A prompt task (no cmd): the control plane asks a model server of the node. */
	char *model;      /* "model", or NULL for a command */
	char *prompt;     /* "prompt" (one text), or NULL */
	json_t *messages; /* "messages" (a chat: [{role, content}, ...]), or NULL */
	json_t *options;  /* "options" passed through to the server, or NULL when none */
	bool pull;        /* "pull": pull the model first when no node has it */
	char **outputs;   /* "outputs": paths and globs relative to the task's cwd,
			 * NULL-terminated, never NULL */
	size_t n_outputs;
	json_t *inputs; /* "inputs": object of NAME -> "TASK[@NODE|@*]/PATH" or "/ABS/PATH"
			 * (owned reference), or NULL when none */
};

#define SPEC_OUTPUTS_MAX 64  /* patterns in "outputs" */
#define SPEC_INPUTS_MAX  256 /* entries in "inputs" */
#define SPEC_PATH_MAX    255 /* bytes in an output path or input name */

/* True when `p` is a relative path with no empty, "." or ".." component, printable, at
 * most SPEC_PATH_MAX bytes (an output's name, an input's name without its final '/'). */
bool spec_path_is_relative(const char *p);

/* Parses and checks a spec from text (len bytes, not necessarily NUL-terminated).
 * On failure returns -EINVAL (-ENOMEM if jansson ran out of memory) and writes ONE
 * sentence, without a trailing newline, into errbuf (syntax errors start with
 * "line L, column C: "). An unknown field gets a did-you-mean (within 2 edits of a field
 * or of a common synonym such as "command" or "depends_on"), else the list of fields.
 * Optional fields may be null (same as absent). Parses a stored canonical spec (spec_to_json) back the same way.
 * Returns 0 and a new spec in *ret_spec. */
int spec_parse(const char *text, size_t len, struct task_spec **ret_spec, char *errbuf,
	       size_t errlen);

/* Frees a spec; NULL is fine. */
void spec_free(struct task_spec *s);

/* The canonical JSON of a spec: every field in a fixed order, defaults filled in, cmd as
 * given; "type" and "cwd" are null when unset, "resources" holds only what was asked.
 * A prompt task has model, prompt or messages, options and pull in cmd's place, and no env
 * or cwd.
 * spec_parse() accepts it back. Returns a new reference, or NULL when out of memory. */
json_t *spec_to_json(const struct task_spec *s);

/* The names of the priorities 0..3, as specs write them ("P0" is the most urgent). */
extern const char *const spec_priority_names[4];

/* True when id is a valid task name: [A-Za-z0-9._-]{1,128}, not starting with '.'
 * (so never "." or ".."). */
bool spec_name_is_valid(const char *id);
