/* Unit tests for backend/spec: parsing, every rejection sentence, did-you-mean, defaults,
 * names, and the canonical JSON round trip.
 * Prints TAP ("ok N - name"); exits non-zero when any check failed. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/spec.h"
#include "backend/util.h"

#include "tests/unit/check.h"

static char err[512];

#define MISSING_CMD                                                                                \
	"missing required field \"cmd\" (a shell string or an argv list), or \"model\" and "       \
	"\"prompt\" for a prompt task"

static struct task_spec *parse_ok(const char *text)
{
	struct task_spec *s = NULL;
	int r = spec_parse(text, strlen(text), &s, err, sizeof(err));
	if (r != 0)
		printf("# unexpected rejection of %s: %s\n", text, err);
	return r == 0 ? s : NULL;
}

/* True when text is rejected with exactly `want`. */
static bool rejects(const char *text, const char *want)
{
	struct task_spec *s = NULL;
	int r = spec_parse(text, strlen(text), &s, err, sizeof(err));
	if (r != -EINVAL || s != NULL || strcmp(err, want) != 0) {
		printf("# spec:  %s\n# want:  %s\n# got:   %d %s\n", text, want, r, err);
		spec_free(s);
		return false;
	}
	return true;
}

static void test_defaults(void)
{
	struct task_spec *s = parse_ok("{\"cmd\": \"make test\"}");

	CHECK(s != NULL, "defaults: a shell string alone is a spec");
	if (!s)
		return;
	CHECK(strcmp(s->shell, "make test") == 0 && s->argv == NULL && s->argc == 0,
	      "defaults: cmd string kept as shell");
	CHECK(strcmp(s->node, "any") == 0, "defaults: node any");
	CHECK(s->type == NULL && s->cwd == NULL && s->env == NULL, "defaults: no type, cwd, env");
	CHECK(s->requires && s->requires[0] == NULL && s->n_requires == 0,
	      "defaults: requires is an empty NULL-terminated list");
	CHECK(s->after && s->after[0] == NULL && s->n_after == 0,
	      "defaults: after is an empty NULL-terminated list");
	CHECK(s->cpus == 0 && s->mem_mb == 0 && s->gpus == 0, "defaults: no resources");
	CHECK(s->priority == 2, "defaults: priority P2");
	CHECK(s->timeout_s == 0 && s->retries == 0, "defaults: no timeout, no retries");
	spec_free(s);

	s = parse_ok("{\"cmd\": \"true\", \"node\": null, \"type\": null, \"cwd\": null, "
		     "\"env\": {}, \"resources\": {}, \"requires\": [], \"after\": []}");
	CHECK(s && strcmp(s->node, "any") == 0 && !s->type && !s->cwd && !s->env &&
		      s->n_requires == 0 && s->cpus == 0,
	      "defaults: null, {} and [] mean not given");
	spec_free(s);
	spec_free(NULL);
}

static void test_full(void)
{
	const char *text = "{\n"
			   "  \"cmd\": [\"python3\", \"train.py\", \"\", \"--lr=0.1\"],\n"
			   "  \"node\": \"spark-1.lan\",\n"
			   "  \"type\": \"deep_reasoning\",\n"
			   "  \"requires\": [\"gpu\", \"docker\"],\n"
			   "  \"resources\": {\"cpus\": 4, \"mem_mb\": 8000.0, \"gpus\": 1},\n"
			   "  \"priority\": \"P0\",\n"
			   "  \"env\": {\"CUDA_VISIBLE_DEVICES\": \"0\", \"_x1\": \"\"},\n"
			   "  \"cwd\": \"/srv/work dir\",\n"
			   "  \"timeout_s\": 604800,\n"
			   "  \"retries\": 10,\n"
			   "  \"after\": [\"prep\", \"fetch@homelab\", \"a_b-c.d\"]\n"
			   "}\n";
	struct task_spec *s = parse_ok(text);

	CHECK(s != NULL, "full: every field accepted");
	if (!s)
		return;
	CHECK(s->shell == NULL && s->argc == 4 && strcmp(s->argv[0], "python3") == 0 &&
		      strcmp(s->argv[2], "") == 0 && strcmp(s->argv[3], "--lr=0.1") == 0 &&
		      s->argv[4] == NULL,
	      "full: argv kept in order, NULL-terminated, empty args allowed");
	CHECK(strcmp(s->node, "spark-1.lan") == 0, "full: node name");
	CHECK(strcmp(s->type, "deep_reasoning") == 0, "full: type");
	CHECK(s->n_requires == 2 && strcmp(s->requires[0], "gpu") == 0 &&
		      strcmp(s->requires[1], "docker") == 0 && s->requires[2] == NULL,
	      "full: requires");
	CHECK(s->cpus == 4 && s->mem_mb == 8000 && s->gpus == 1,
	      "full: resources (an integral real counts)");
	CHECK(s->priority == 0, "full: P0");
	CHECK(json_object_size(s->env) == 2 &&
		      strcmp(json_string_value(json_object_get(s->env, "CUDA_VISIBLE_DEVICES")),
			     "0") == 0,
	      "full: env");
	CHECK(strcmp(s->cwd, "/srv/work dir") == 0, "full: cwd");
	CHECK(s->timeout_s == 604800 && s->retries == 10, "full: limits at their maximum");
	CHECK(s->n_after == 3 && strcmp(s->after[1], "fetch@homelab") == 0 && s->after[3] == NULL,
	      "full: after allows '@'");
	spec_free(s);

	s = parse_ok("{\"cmd\": \"x\", \"node\": \"all\", \"priority\": \"P3\"}");
	CHECK(s && strcmp(s->node, "all") == 0 && s->priority == 3, "full: node all, P3");
	spec_free(s);

	/* Not NUL-terminated: only len bytes are read. */
	const char buf[] = {'{', '"', 'c', 'm', 'd', '"', ':', '"', 'l', 's', '"', '}', 'X', 'Y'};
	s = NULL;
	CHECK(spec_parse(buf, 12, &s, err, sizeof(err)) == 0 && s && strcmp(s->shell, "ls") == 0,
	      "full: text is bounded by len");
	spec_free(s);
}

static void test_syntax(void)
{
	CHECK(rejects("{\"cmd\": \"a\",\n \"x\": }", "line 2, column 7: unexpected token near '}'"),
	      "syntax: jansson's error with line and column");
	CHECK(rejects("{\"cmd\": \"a\"} x", "line 1, column 14: end of file expected near 'x'"),
	      "syntax: trailing garbage");
	CHECK(rejects("{\"cmd\": \"make\",\n \"cmd\": \"b\"}",
		      "line 2, column 6: key \"cmd\" appears twice; give each key once"),
	      "syntax: a duplicate key is its own sentence");
	CHECK(rejects("{\"cmd\": \"x\", \"env\": {\"A\": \"1\", \"A\": \"2\"}}",
		      "line 1, column 34: key \"A\" appears twice; give each key once"),
	      "syntax: a duplicate nested key too");
	CHECK(rejects("",
		      "the spec is empty; it must be a JSON object, like {\"cmd\": \"make test\"}"),
	      "syntax: empty text");
	CHECK(rejects(" \n\t ",
		      "the spec is empty; it must be a JSON object, like {\"cmd\": \"make test\"}"),
	      "syntax: blank text");
	CHECK(rejects("[\"make\"]",
		      "the spec must be a JSON object, like {\"cmd\": \"make test\"}"),
	      "syntax: a list is not a spec");
	CHECK(rejects("\"make\"", "the spec must be a JSON object, like {\"cmd\": \"make test\"}"),
	      "syntax: a string is not a spec");
	CHECK(rejects("42", "the spec must be a JSON object, like {\"cmd\": \"make test\"}"),
	      "syntax: a number is not a spec");
	CHECK(rejects("{\"cmd\": \"a\\u0000b\"}",
		      "line 1, column 18: \\u0000 is not allowed without JSON_ALLOW_NUL near "
		      "'\"a\\u0000b\"'"),
	      "syntax: NUL in a string");

	struct task_spec *s = NULL;
	CHECK(spec_parse(NULL, 0, &s, err, sizeof(err)) == -EINVAL && s == NULL,
	      "syntax: NULL text of length 0 is empty");
	CHECK(spec_parse("{}", 2, &s, NULL, 0) == -EINVAL && s == NULL,
	      "syntax: no error buffer is fine");
	char tiny[8];
	CHECK(spec_parse("{}", 2, &s, tiny, sizeof(tiny)) == -EINVAL &&
		      strcmp(tiny, "missing") == 0,
	      "syntax: the sentence is truncated to the buffer");
}

static void test_fields(void)
{
	CHECK(rejects("{\"comand\": \"make\"}", "unknown field \"comand\"; did you mean \"cmd\"?"),
	      "unknown: did you mean cmd");
	CHECK(rejects("{\"cmd\": \"x\", \"timeout\": 5}",
		      "unknown field \"timeout\"; did you mean \"timeout_s\"?"),
	      "unknown: did you mean timeout_s");
	CHECK(rejects("{\"cmd\": \"x\", \"retires\": 1}",
		      "unknown field \"retires\"; did you mean \"retries\"?"),
	      "unknown: a transposition counts as one edit");
	CHECK(rejects("{\"cmd\": \"x\", \"Node\": \"a\"}",
		      "unknown field \"Node\"; did you mean \"node\"?"),
	      "unknown: case differs");
	CHECK(rejects("{\"cmd\": \"x\", \"xyzzy\": []}",
		      "unknown field \"xyzzy\" (known fields: cmd, model, prompt, messages, "
		      "options, pull, node, type, requires, resources, priority, env, cwd, "
		      "timeout_s, retries, after, outputs, inputs)"),
	      "unknown: far from everything lists the known fields");
	CHECK(rejects("{\"cmd\": \"x\", \"depends_on\": []}",
		      "unknown field \"depends_on\"; did you mean \"after\"?"),
	      "unknown: a word from other schedulers names its field");
	CHECK(rejects("{\"cmd\": \"x\", \"enviroment\": {}}",
		      "unknown field \"enviroment\"; did you mean \"env\"?"),
	      "unknown: a typo of an alias names its field");
	CHECK(rejects("{\"cmd\": \"x\", \"resources\": {\"memory\": 4}}",
		      "unknown field \"resources.memory\"; did you mean \"resources.mem_mb\"?"),
	      "unknown: resources aliases");
	CHECK(rejects("{\"cmd\": \"x\", \"a\\\"b\\n\": 1}",
		      "unknown field \"a\\\"b\\n\" (known fields: cmd, model, prompt, messages, "
		      "options, pull, node, type, requires, resources, priority, env, cwd, "
		      "timeout_s, retries, after, outputs, inputs)"),
	      "unknown: the key is shown escaped");
	CHECK(rejects("{\"comand\": \"make\", \"cmd\": \"x\"}",
		      "unknown field \"comand\"; did you mean \"cmd\"?"),
	      "unknown: reported even when cmd is there");
	CHECK(rejects("{}", MISSING_CMD), "missing: no cmd");
	CHECK(rejects("{\"cmd\": null}", MISSING_CMD), "missing: cmd null");
	CHECK(rejects("{\"node\": \"n1\"}", MISSING_CMD), "missing: other fields but no cmd");

	/* cmd */
	CHECK(rejects("{\"cmd\": \"\"}", "field \"cmd\" must not be empty"), "cmd: empty string");
	CHECK(rejects("{\"cmd\": \" \\t\\n\"}", "field \"cmd\" must not be empty"),
	      "cmd: blank string");
	CHECK(rejects("{\"cmd\": []}", "field \"cmd\" must not be an empty list"),
	      "cmd: empty list");
	CHECK(rejects("{\"cmd\": 42}",
		      "field \"cmd\" must be a shell command string or an argv list of strings, "
		      "not 42"),
	      "cmd: a number");
	CHECK(rejects("{\"cmd\": {\"sh\": \"x\"}}",
		      "field \"cmd\" must be a shell command string or an argv list of strings, "
		      "not an object"),
	      "cmd: an object");
	CHECK(rejects("{\"cmd\": [\"ls\", \"-l\", 3]}", "field \"cmd[2]\" must be a string, not 3"),
	      "cmd: a non-string argument");
	CHECK(rejects("{\"cmd\": [\"ls\", [\"-l\"]]}",
		      "field \"cmd[1]\" must be a string, not a list"),
	      "cmd: a nested list");
	CHECK(rejects("{\"cmd\": [\"\", \"-l\"]}",
		      "field \"cmd[0]\" (the program) must not be empty"),
	      "cmd: empty program");

	/* node */
	CHECK(rejects("{\"cmd\": \"x\", \"node\": \"a/b\"}",
		      "field \"node\" must be \"any\", \"all\" or a node name (letters, digits, "
		      "'.', '_', '-'; at most 128), not \"a/b\""),
	      "node: a slash");
	CHECK(rejects("{\"cmd\": \"x\", \"node\": \"\"}",
		      "field \"node\" must be \"any\", \"all\" or a node name (letters, digits, "
		      "'.', '_', '-'; at most 128), not \"\""),
	      "node: empty");
	CHECK(rejects("{\"cmd\": \"x\", \"node\": \"..\"}",
		      "field \"node\" must be \"any\", \"all\" or a node name (letters, digits, "
		      "'.', '_', '-'; at most 128), not \"..\""),
	      "node: dot-dot");
	CHECK(rejects("{\"cmd\": \"x\", \"node\": [\"n1\"]}",
		      "field \"node\" must be \"any\", \"all\" or a node name (letters, digits, "
		      "'.', '_', '-'; at most 128), not a list"),
	      "node: a list");
	CHECK(rejects("{\"cmd\": \"x\", \"node\": \"a@b\"}",
		      "field \"node\" must be \"any\", \"all\" or a node name (letters, digits, "
		      "'.', '_', '-'; at most 128), not \"a@b\""),
	      "node: no '@' in node names");
	{
		char text[400], name[200];
		memset(name, 'n', 129);
		name[129] = '\0';
		snprintf(text, sizeof(text), "{\"cmd\": \"x\", \"node\": \"%s\"}", name);
		CHECK(rejects(text, "field \"node\" must be \"any\", \"all\" or a node name "
				    "(letters, digits, '.', '_', '-'; at most 128), not "
				    "\"nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn...\""),
		      "node: 129 characters, shown shortened");
		name[128] = '\0';
		snprintf(text, sizeof(text), "{\"cmd\": \"x\", \"node\": \"%s\"}", name);
		struct task_spec *s = parse_ok(text);
		CHECK(s && strlen(s->node) == 128, "node: 128 characters are fine");
		spec_free(s);
	}

	/* type */
	CHECK(rejects("{\"cmd\": \"x\", \"type\": \"\"}",
		      "field \"type\" must be a routing class such as \"build\" (printable, "
		      "without '/'), not \"\""),
	      "type: empty");
	CHECK(rejects("{\"cmd\": \"x\", \"type\": \"a/b\"}",
		      "field \"type\" must be a routing class such as \"build\" (printable, "
		      "without '/'), not \"a/b\""),
	      "type: a slash");
	CHECK(rejects("{\"cmd\": \"x\", \"type\": 7}",
		      "field \"type\" must be a routing class such as \"build\" (printable, "
		      "without '/'), not 7"),
	      "type: a number");

	/* requires */
	CHECK(rejects("{\"cmd\": \"x\", \"requires\": \"gpu\"}",
		      "field \"requires\" must be a list of capabilities, like [\"gpu\"], not "
		      "\"gpu\""),
	      "requires: a string");
	CHECK(rejects("{\"cmd\": \"x\", \"requires\": [\"gpu\", \"\"]}",
		      "field \"requires[1]\" must be a capability name (a non-empty string), not "
		      "\"\""),
	      "requires: an empty capability");
	CHECK(rejects("{\"cmd\": \"x\", \"requires\": [true]}",
		      "field \"requires[0]\" must be a capability name (a non-empty string), not "
		      "true"),
	      "requires: a boolean");

	/* resources */
	CHECK(rejects("{\"cmd\": \"x\", \"resources\": {\"cpus\": -2}}",
		      "field \"resources.cpus\" must be a whole number from 1 to 1024, not -2"),
	      "resources: negative cpus");
	CHECK(rejects("{\"cmd\": \"x\", \"resources\": {\"cpus\": 0}}",
		      "field \"resources.cpus\" must be a whole number from 1 to 1024, not 0"),
	      "resources: zero cpus");
	CHECK(rejects("{\"cmd\": \"x\", \"resources\": {\"cpus\": 1025}}",
		      "field \"resources.cpus\" must be a whole number from 1 to 1024, not 1025"),
	      "resources: too many cpus");
	CHECK(rejects("{\"cmd\": \"x\", \"resources\": {\"cpus\": 2.5}}",
		      "field \"resources.cpus\" must be a whole number from 1 to 1024, not 2.5"),
	      "resources: fractional cpus");
	CHECK(rejects("{\"cmd\": \"x\", \"resources\": {\"cpus\": \"4\"}}",
		      "field \"resources.cpus\" must be a whole number from 1 to 1024, not \"4\""),
	      "resources: cpus as a string");
	CHECK(rejects("{\"cmd\": \"x\", \"resources\": {\"cpus\": 99999999999999}}",
		      "field \"resources.cpus\" must be a whole number from 1 to 1024, not "
		      "99999999999999"),
	      "resources: huge cpus do not wrap");
	CHECK(rejects("{\"cmd\": \"x\", \"resources\": {\"mem_mb\": 0}}",
		      "field \"resources.mem_mb\" must be a whole number of megabytes from 1 to "
		      "16777216, not 0"),
	      "resources: zero memory");
	CHECK(rejects("{\"cmd\": \"x\", \"resources\": {\"gpus\": -1}}",
		      "field \"resources.gpus\" must be a whole number from 0 to 64, not -1"),
	      "resources: negative gpus");
	CHECK(rejects("{\"cmd\": \"x\", \"resources\": {\"cpu\": 4}}",
		      "unknown field \"resources.cpu\"; did you mean \"resources.cpus\"?"),
	      "resources: did you mean cpus");
	CHECK(rejects("{\"cmd\": \"x\", \"resources\": {\"disk\": 4}}",
		      "unknown field \"resources.disk\" (known fields: cpus, mem_mb, gpus)"),
	      "resources: unknown key lists the known ones");
	CHECK(rejects("{\"cmd\": \"x\", \"resources\": [4]}",
		      "field \"resources\" must be an object, like {\"cpus\": 4, \"mem_mb\": 8000, "
		      "\"gpus\": 1}, not a list"),
	      "resources: a list");
	{
		struct task_spec *s = parse_ok("{\"cmd\": \"x\", \"resources\": {\"gpus\": 0}}");
		CHECK(s && s->gpus == 0, "resources: zero gpus is allowed");
		spec_free(s);
	}

	/* priority */
	CHECK(rejects("{\"cmd\": \"x\", \"priority\": \"P9\"}",
		      "field \"priority\" must be one of \"P0\", \"P1\", \"P2\", \"P3\", not \"P9\""),
	      "priority: P9");
	CHECK(rejects("{\"cmd\": \"x\", \"priority\": 1}",
		      "field \"priority\" must be one of \"P0\", \"P1\", \"P2\", \"P3\", not 1"),
	      "priority: a number");
	CHECK(rejects("{\"cmd\": \"x\", \"priority\": \"p1\"}",
		      "field \"priority\" must be one of \"P0\", \"P1\", \"P2\", \"P3\", not \"p1\""),
	      "priority: lower case");

	/* env */
	CHECK(rejects("{\"cmd\": \"x\", \"env\": [\"A=1\"]}",
		      "field \"env\" must be an object of strings, like {\"CC\": \"gcc\"}, not a "
		      "list"),
	      "env: a list");
	CHECK(rejects("{\"cmd\": \"x\", \"env\": {\"PATH\": 3}}",
		      "field \"env.PATH\" must be a string, not 3"),
	      "env: a number value");
	CHECK(rejects("{\"cmd\": \"x\", \"env\": {\"1FOO\": \"a\"}}",
		      "field \"env\" has key \"1FOO\", which is not a variable name (letters, "
		      "digits and '_', not starting with a digit)"),
	      "env: a key starting with a digit");
	CHECK(rejects("{\"cmd\": \"x\", \"env\": {\"A=B\": \"a\"}}",
		      "field \"env\" has key \"A=B\", which is not a variable name (letters, "
		      "digits and '_', not starting with a digit)"),
	      "env: a key with '='");
	CHECK(rejects("{\"cmd\": \"x\", \"env\": {\"\": \"a\"}}",
		      "field \"env\" has key \"\", which is not a variable name (letters, "
		      "digits and '_', not starting with a digit)"),
	      "env: an empty key");

	/* cwd */
	CHECK(rejects("{\"cmd\": \"x\", \"cwd\": \"src\"}",
		      "field \"cwd\" must be an absolute path (starting with '/', at most 4095 "
		      "bytes), not \"src\""),
	      "cwd: relative");
	CHECK(rejects("{\"cmd\": \"x\", \"cwd\": \"\"}",
		      "field \"cwd\" must be an absolute path (starting with '/', at most 4095 "
		      "bytes), not \"\""),
	      "cwd: empty");

	/* timeout_s, retries */
	CHECK(rejects("{\"cmd\": \"x\", \"timeout_s\": 604801}",
		      "field \"timeout_s\" must be a whole number of seconds from 0 (none) to "
		      "604800 (7 days), not 604801"),
	      "timeout_s: over 7 days");
	CHECK(rejects("{\"cmd\": \"x\", \"timeout_s\": -1}",
		      "field \"timeout_s\" must be a whole number of seconds from 0 (none) to "
		      "604800 (7 days), not -1"),
	      "timeout_s: negative");
	CHECK(rejects("{\"cmd\": \"x\", \"timeout_s\": \"1h\"}",
		      "field \"timeout_s\" must be a whole number of seconds from 0 (none) to "
		      "604800 (7 days), not \"1h\""),
	      "timeout_s: a string");
	CHECK(rejects("{\"cmd\": \"x\", \"retries\": 11}",
		      "field \"retries\" must be a whole number from 0 to 10, not 11"),
	      "retries: 11");
	CHECK(rejects("{\"cmd\": \"x\", \"retries\": true}",
		      "field \"retries\" must be a whole number from 0 to 10, not true"),
	      "retries: a boolean");

	/* after */
	CHECK(rejects("{\"cmd\": \"x\", \"after\": \"prep\"}",
		      "field \"after\" must be a list of task ids, like [\"build-1\"], not "
		      "\"prep\""),
	      "after: a string");
	CHECK(rejects("{\"cmd\": \"x\", \"after\": [\"ok\", \"../etc\"]}",
		      "field \"after[1]\" must be a task id (letters, digits, '.', '_', '-', '@'; "
		      "at most 128; not starting with '.'), not \"../etc\""),
	      "after: a path");
	CHECK(rejects("{\"cmd\": \"x\", \"after\": [\".hidden\"]}",
		      "field \"after[0]\" must be a task id (letters, digits, '.', '_', '-', '@'; "
		      "at most 128; not starting with '.'), not \".hidden\""),
	      "after: a leading dot");
	CHECK(rejects("{\"cmd\": \"x\", \"after\": [1]}",
		      "field \"after[0]\" must be a task id (letters, digits, '.', '_', '-', '@'; "
		      "at most 128; not starting with '.'), not 1"),
	      "after: a number");
	CHECK(rejects("{\"cmd\": \"x\", \"after\": [\"a\", \"b\", \"a\"]}",
		      "field \"after\" lists \"a\" twice"),
	      "after: a duplicate");
}

static void test_artifacts(void)
{
	struct task_spec *s = parse_ok(
		"{\"cmd\": \"x\", \"after\": [\"a\"], \"outputs\": [\"m.npy\", \"metrics/*.json\"], "
		"\"inputs\": {\"base.npy\": \"r1@n2/model.npy\", \"w/\": \"t@*/w.npy\", "
		"\"more/\": \"a/*.txt\", \"d.csv\": \"/srv/d.csv\"}}");
	CHECK(s && s->n_outputs == 2 && !strcmp(s->outputs[1], "metrics/*.json"),
	      "outputs: paths and globs");
	/* the producers join "after", once each, in the order the inputs name them */
	CHECK(s && s->n_after == 3 && !strcmp(s->after[0], "a") && !strcmp(s->after[1], "r1@n2") &&
		      !strcmp(s->after[2], "t"),
	      "inputs: producers are dependencies");
	CHECK(s && json_object_size(s->inputs) == 4, "inputs: kept as given");
	if (s) {
		json_t *j = spec_to_json(s);
		char *text = json_dumps(j, JSON_COMPACT);
		struct task_spec *again = parse_ok(text);
		CHECK(again && again->n_after == 3 && again->n_outputs == 2,
		      "inputs and outputs: the canonical spec parses back the same");
		spec_free(again);
		free(text);
		json_decref(j);
	}
	spec_free(s);
	CHECK(rejects("{\"cmd\": \"x\", \"outputs\": [\"../x\"]}",
		      "field \"outputs[0]\" must be a path relative to the task's directory (no "
		      "\"..\", not absolute), not \"../x\""),
	      "outputs: .. is refused");
	CHECK(rejects("{\"cmd\": \"x\", \"outputs\": [\"/etc/passwd\"]}",
		      "field \"outputs[0]\" must be a path relative to the task's directory (no "
		      "\"..\", not absolute), not \"/etc/passwd\""),
	      "outputs: an absolute path is refused");
	CHECK(rejects("{\"cmd\": \"x\", \"inputs\": {\"w\": \"t@*/w.npy\"}}",
		      "field \"inputs.w\": t@*/w.npy may name several files, so its name must be a "
		      "directory, ending in '/'"),
	      "inputs: several files need a directory");
	CHECK(rejects("{\"cmd\": \"x\", \"inputs\": {\"a/../b\": \"t/w\"}}",
		      "field \"inputs\": a/../b is not a name relative to the task's directory (no "
		      "\"..\", not absolute; \"DIR/\" for several files)"),
	      "inputs: a name with ..");
	CHECK(rejects("{\"cmd\": \"x\", \"inputs\": {\"a\": \"/srv/../etc/passwd\"}}",
		      "field \"inputs.a\": /srv/../etc/passwd must not contain \"..\""),
	      "inputs: a control-plane path with ..");
	CHECK(rejects("{\"cmd\": \"x\", \"inputs\": {\"a\": \"nopath\"}}",
		      "field \"inputs.a\" must be \"TASK/PATH\", \"TASK@NODE/PATH\", \"TASK@*/PATH\" "
		      "(every copy of a node \"all\" task) or an absolute path on the control "
		      "plane, not \"nopath\""),
	      "inputs: a source without a path");
}

static void test_shown_values(void)
{
	CHECK(rejects("{\"cmd\": \"x\", \"cwd\": \"\\u00e9t\\u00e9\"}",
		      "field \"cwd\" must be an absolute path (starting with '/', at most 4095 "
		      "bytes), not \"\\u00E9t\\u00E9\""),
	      "shown: non-ASCII is escaped");
	CHECK(rejects("{\"cmd\": \"x\", \"cwd\": \"a\\u0001b\"}",
		      "field \"cwd\" must be an absolute path (starting with '/', at most 4095 "
		      "bytes), not \"a\\u0001b\""),
	      "shown: control characters are escaped");
	/* 41 characters then an escape: the escape is dropped whole, not split. */
	CHECK(rejects("{\"cmd\": \"x\", \"cwd\": "
		      "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\\u00e9aaaaaaa\"}",
		      "field \"cwd\" must be an absolute path (starting with '/', at most 4095 "
		      "bytes), not \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...\""),
	      "shown: a long value is cut before an escape");
}

static void test_names(void)
{
	CHECK(spec_name_is_valid("build-42"), "name: plain");
	CHECK(spec_name_is_valid("a.b_c-D9"), "name: every allowed character");
	CHECK(spec_name_is_valid("x"), "name: one character");
	CHECK(!spec_name_is_valid(""), "name: empty");
	CHECK(!spec_name_is_valid("."), "name: dot");
	CHECK(!spec_name_is_valid(".."), "name: dot-dot");
	CHECK(!spec_name_is_valid(".hidden"), "name: leading dot");
	CHECK(!spec_name_is_valid("a/b"), "name: slash");
	CHECK(!spec_name_is_valid("a b"), "name: space");
	CHECK(!spec_name_is_valid("a@b"), "name: '@' is for after ids only");
	CHECK(!spec_name_is_valid("caf\xc3\xa9"), "name: non-ASCII");
	CHECK(!spec_name_is_valid(NULL), "name: NULL");
	char name[130];
	memset(name, 'a', 128);
	name[128] = '\0';
	CHECK(spec_name_is_valid(name), "name: 128 characters");
	name[128] = 'a';
	name[129] = '\0';
	CHECK(!spec_name_is_valid(name), "name: 129 characters");
}

/* Parses text, renders it, and checks the rendering against `want` and that parsing the
 * rendering renders the same. */
static bool round_trip(const char *text, const char *want)
{
	struct task_spec *s = parse_ok(text), *s2 = NULL;
	json_t *j = NULL, *j2 = NULL;
	char *d = NULL, *d2 = NULL;
	bool ok = false;

	if (!s)
		return false;
	j = spec_to_json(s);
	d = j ? json_dumps(j, JSON_COMPACT) : NULL;
	if (d && spec_parse(d, strlen(d), &s2, err, sizeof(err)) == 0) {
		j2 = spec_to_json(s2);
		d2 = j2 ? json_dumps(j2, JSON_COMPACT) : NULL;
	}
	ok = d && d2 && strcmp(d, want) == 0 && strcmp(d, d2) == 0;
	if (!ok)
		printf("# want: %s\n# got:  %s\n# again: %s\n", want, d ? d : "(null)",
		       d2 ? d2 : err);
	free(d);
	free(d2);
	json_decref(j);
	json_decref(j2);
	spec_free(s);
	spec_free(s2);
	return ok;
}

static void test_canonical(void)
{
	CHECK(round_trip("{\"cmd\": \"make test\"}",
			 "{\"cmd\":\"make test\",\"node\":\"any\",\"type\":null,\"requires\":[],"
			 "\"resources\":{},\"priority\":\"P2\",\"env\":{},\"cwd\":null,"
			 "\"timeout_s\":0,\"retries\":0,\"after\":[]}"),
	      "canonical: defaults filled in, fixed order");
	CHECK(round_trip(
		      "{\"after\": [\"a\", \"b@c\"], \"retries\": 3, \"timeout_s\": 60, "
		      "\"cwd\": \"/tmp\", \"env\": {\"B\": \"2\", \"A\": \"1\"}, "
		      "\"priority\": \"P0\", \"resources\": {\"gpus\": 1, \"cpus\": 2, "
		      "\"mem_mb\": 512}, \"requires\": [\"gpu\"], \"type\": \"build\", "
		      "\"node\": \"n1\", \"cmd\": [\"ls\", \"-l\"]}",
		      "{\"cmd\":[\"ls\",\"-l\"],\"node\":\"n1\",\"type\":\"build\","
		      "\"requires\":[\"gpu\"],\"resources\":{\"cpus\":2,\"mem_mb\":512,\"gpus\":1},"
		      "\"priority\":\"P0\",\"env\":{\"B\":\"2\",\"A\":\"1\"},\"cwd\":\"/tmp\","
		      "\"timeout_s\":60,\"retries\":3,\"after\":[\"a\",\"b@c\"]}"),
	      "canonical: every field, cmd as a list, env order kept");
	CHECK(round_trip(
		      "{\"cmd\": \"x\", \"resources\": {\"mem_mb\": 100}}",
		      "{\"cmd\":\"x\",\"node\":\"any\",\"type\":null,\"requires\":[],"
		      "\"resources\":{\"mem_mb\":100},\"priority\":\"P2\",\"env\":{},\"cwd\":null,"
		      "\"timeout_s\":0,\"retries\":0,\"after\":[]}"),
	      "canonical: resources holds only what was asked");

	/* The spec does not share its env with the rendering. */
	struct task_spec *s = parse_ok("{\"cmd\": \"x\", \"env\": {\"A\": \"1\"}}");
	json_t *j = s ? spec_to_json(s) : NULL;
	if (j)
		json_object_set_new(json_object_get(j, "env"), "B", json_string("2"));
	CHECK(s && j && json_object_size(s->env) == 1, "canonical: env is a copy");
	json_decref(j);
	spec_free(s);
}

/* Prompt tasks: model with prompt or messages, options and pull; never with cmd. */
static void test_prompts(void)
{
	struct task_spec *s = parse_ok("{\"model\": \"qwen3:8b\", \"prompt\": \"hi\", "
				       "\"options\": {\"temperature\": 0.5}, \"pull\": true}");
	CHECK(s && !s->shell && !s->argv && !strcmp(s->model, "qwen3:8b") &&
		      !strcmp(s->prompt, "hi") && !s->messages && s->pull &&
		      json_real_value(json_object_get(s->options, "temperature")) == 0.5,
	      "prompt: model, prompt, options and pull");
	spec_free(s);
	s = parse_ok(
		"{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}");
	CHECK(s && !s->prompt && json_array_size(s->messages) == 1 && !s->pull && !s->options,
	      "prompt: messages for a chat");
	spec_free(s);
	CHECK(round_trip("{\"prompt\": \"p\", \"model\": \"m\", \"retries\": 1}",
			 "{\"model\":\"m\",\"prompt\":\"p\",\"options\":{},\"pull\":false,"
			 "\"node\":\"any\",\"type\":null,\"requires\":[],\"resources\":{},"
			 "\"priority\":\"P2\",\"timeout_s\":0,\"retries\":1,\"after\":[]}"),
	      "prompt: canonical, without env and cwd");
	CHECK(rejects("{\"cmd\": \"x\", \"model\": \"m\", \"prompt\": \"p\"}",
		      "a spec is a command (\"cmd\") or a prompt (\"model\" with \"prompt\" or "
		      "\"messages\"), not both"),
	      "prompt: and cmd");
	CHECK(rejects("{\"cmd\": \"x\", \"prompt\": \"p\"}",
		      "field \"prompt\" belongs to a prompt task, which needs \"model\" (and no "
		      "\"cmd\")"),
	      "prompt: without model");
	CHECK(rejects("{\"model\": \"m\"}",
		      "a prompt task needs \"prompt\" (a string) or \"messages\" (a chat) beside "
		      "\"model\""),
	      "prompt: model alone");
	CHECK(rejects("{\"model\": \"m\", \"prompt\": \"p\", \"messages\": []}",
		      "give \"prompt\" (one text) or \"messages\" (a chat), not both"),
	      "prompt: prompt and messages");
	CHECK(rejects("{\"model\": \"m\", \"messages\": {\"role\": \"user\"}}",
		      "field \"messages\" must be a non-empty list of {\"role\", \"content\"} "
		      "objects, not an object"),
	      "prompt: messages not a list");
	CHECK(rejects("{\"model\": \"m\", \"messages\": [{\"role\": \"boss\", \"content\": \"x\"}]}",
		      "field \"messages[0]\" must be an object with \"role\" (system, user, "
		      "assistant or tool) and \"content\" (a string), not an object"),
	      "prompt: a message with an unknown role");
	CHECK(rejects("{\"model\": \"a b\", \"prompt\": \"p\"}",
		      "field \"model\" must be a model name, like \"qwen3:8b\" (no spaces, at "
		      "most 512 bytes), not \"a b\""),
	      "prompt: a model name with a space");
	CHECK(rejects("{\"model\": \"m\", \"prompt\": \"p\", \"options\": [1]}",
		      "field \"options\" must be an object, like {\"temperature\": 0.2}, not a "
		      "list"),
	      "prompt: options not an object");
	CHECK(rejects("{\"model\": \"m\", \"prompt\": \"p\", \"pull\": \"yes\"}",
		      "field \"pull\" must be true or false, not \"yes\""),
	      "prompt: pull not a boolean");
	CHECK(rejects("{\"model\": \"m\", \"prompt\": \"p\", \"env\": {\"A\": \"1\"}}",
		      "field \"env\" is for commands; a prompt task runs no process"),
	      "prompt: env");
}

int main(void)
{
	test_defaults();
	test_full();
	test_syntax();
	test_fields();
	test_shown_values();
	test_artifacts();
	test_names();
	test_canonical();
	test_prompts();
	printf("1..%d\n", n_checks);
	if (n_failed)
		printf("# %d of %d checks failed\n", n_failed, n_checks);
	return n_failed ? 1 : 0;
}
