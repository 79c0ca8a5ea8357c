/* Unit tests for backend/models: model names as file names, NDJSON line splitting across
 * chunk boundaries, and the checks ctl commands and refreshes make before any network work.
 * Prints TAP ("ok N - name"); exits non-zero when any check failed. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cluster.h"
#include "backend/loop.h"
#include "backend/models.h"
#include "fs/render.h"
#include "fs/render_models.h"
#include "config/config.h"

#include "tests/unit/check.h"

static bool str_is(const char *s, const char *want)
{
	return s && !strcmp(s, want);
}

static void test_names(void)
{
	static const char *const models[] = {
		"qwen3:8b", "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
		"100%",     "%2F",
		"a/%/b",    "%25",
		"",         "plain",
		"//",
	};
	static const char *const files[] = {
		"qwen3:8b",
		"hf.co%2Fbartowski%2FLlama-3.2-1B-Instruct-GGUF:Q4_K_M",
		"100%25",
		"%252F",
		"a%2F%25%2Fb",
		"%2525",
		"",
		"plain",
		"%2F%2F",
	};
	bool enc_ok = true, dec_ok = true;
	for (size_t i = 0; i < sizeof(models) / sizeof(*models); i++) {
		char *f = models_encode_name(models[i]);
		char *back = f ? models_decode_name(f) : NULL;
		enc_ok = enc_ok && str_is(f, files[i]) && !strchr(f, '/');
		dec_ok = dec_ok && str_is(back, models[i]);
		free(f);
		free(back);
	}
	CHECK(enc_ok, "names: '/' becomes %2F, '%' becomes %25, the rest stays");
	CHECK(dec_ok, "names: decode(encode(name)) is the name");

	char *s = models_encode_name("qwen3:8b");
	CHECK(str_is(s, "qwen3:8b"), "names: an Ollama name is its own file name");
	free(s);

	/* every escape the encoder does not produce is refused, so decoding is one-to-one */
	static const char *const bad[] = {"%", "a%", "%2", "%2f", "%41", "%%", "x%2Fy%", "%2G"};
	bool all_null = true;
	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
		char *d = models_decode_name(bad[i]);
		if (d) {
			printf("#   decode(\"%s\") = \"%s\"\n", bad[i], d);
			all_null = false;
		}
		free(d);
	}
	CHECK(all_null, "names: bad escapes decode to NULL");

	s = models_decode_name("%252F");
	CHECK(str_is(s, "%2F"), "names: %252F decodes once, to %2F");
	free(s);
	s = models_decode_name("%252");
	CHECK(str_is(s, "%2"), "names: %252 is the file name of \"%2\"");
	free(s);
}

struct lines_seen {
	struct buf all; /* each line followed by '|' */
	int n;
};

static void on_line(const char *line, size_t len, void *arg)
{
	struct lines_seen *seen = arg;
	buf_append(&seen->all, line, len);
	buf_puts(&seen->all, "|");
	seen->n++;
}

/* Feeds `text` in chunks of `step` bytes (0: all at once) and returns what was seen. */
static char *split(const char *text, size_t step, int *ret_n)
{
	struct models_lines l;
	struct lines_seen seen = {.n = 0};
	buf_init(&seen.all);
	buf_append(&seen.all, "", 0);
	models_lines_init(&l);
	size_t len = strlen(text);
	if (!step)
		step = len ? len : 1;
	for (size_t off = 0; off < len; off += step)
		models_lines_feed(&l, text + off, len - off < step ? len - off : step, on_line,
				  &seen);
	models_lines_finish(&l, on_line, &seen);
	*ret_n = seen.n;
	return buf_steal(&seen.all, NULL);
}

static void test_lines(void)
{
	const char *stream =
		"{\"status\":\"pulling manifest\"}\n"
		"{\"status\":\"pulling 6a0746a1ec1a\",\"total\":100,\"completed\":42}\n"
		"{\"status\":\"success\"}\n";
	const char *want = "{\"status\":\"pulling manifest\"}|"
			   "{\"status\":\"pulling 6a0746a1ec1a\",\"total\":100,\"completed\":42}|"
			   "{\"status\":\"success\"}|";
	bool every_step = true;
	for (size_t step = 0; step <= strlen(stream); step++) {
		int n;
		char *got = split(stream, step, &n);
		if (!str_is(got, want) || n != 3) {
			printf("#   step %zu: %s\n", step, got);
			every_step = false;
		}
		free(got);
	}
	CHECK(every_step, "lines: the same three lines for every chunk size, byte by byte too");

	int n;
	char *got = split("a\r\nb\n\n\r\nc", 0, &n);
	CHECK(str_is(got, "a|b|c|") && n == 3,
	      "lines: CRLF stripped, empty lines skipped, a last line without newline kept");
	free(got);

	got = split("", 0, &n);
	CHECK(str_is(got, "") && n == 0, "lines: nothing in, nothing out");
	free(got);

	got = split("\n\n", 1, &n);
	CHECK(n == 0, "lines: newlines alone make no lines");
	free(got);

	/* a line longer than the limit is dropped whole; the next line is intact */
	struct buf big;
	buf_init(&big);
	for (size_t i = 0; i < MODELS_LINE_MAX + 10; i++)
		buf_append(&big, "x", 1);
	buf_puts(&big, "\n{\"status\":\"after\"}\n");
	bool dropped = true;
	for (size_t step = 1000; step <= big.len; step += 7777) {
		got = split(big.data, step, &n);
		dropped = dropped && str_is(got, "{\"status\":\"after\"}|") && n == 1;
		free(got);
	}
	got = split(big.data, 0, &n);
	dropped = dropped && str_is(got, "{\"status\":\"after\"}|") && n == 1;
	free(got);
	CHECK(dropped, "lines: an overlong line is dropped, the next one is kept");

	/* an overlong last line without a newline is dropped at finish too */
	big.len = MODELS_LINE_MAX + 10;
	big.data[big.len] = '\0';
	got = split(big.data, 4096, &n);
	CHECK(n == 0, "lines: an overlong unfinished line is dropped at finish");
	free(got);
	buf_free(&big);
}

struct ctl_case {
	const char *node, *cmd;
	int err;
	const char *why; /* a substring of the sentence */
};

static void never_called(void *arg, int err, const char *why)
{
	*(int *) arg += 1;
}

static void never_done(void *arg)
{
	*(int *) arg += 1;
}

static void test_commands(void)
{
	const char *text =
		"{\"hosts\": {"
		" \"spark1\": {\"host\": \"10.0.0.1\", \"services\": {\"ollama\": {\"port\": 11434}}},"
		" \"trainer\": {\"host\": \"10.0.0.10\", \"services\": {\"vllm\": {\"port\": 8000,"
		"   \"path\": \"/v1\", \"type\": \"openai\"}}},"
		" \"mini\": {\"host\": \"10.0.0.20\"}}}";
	char err[512];
	struct config *cfg = NULL;
	struct loop *loop = NULL;
	struct cluster *cluster = NULL;
	struct models *m = NULL;
	if (config_load_string(text, "t.json", NULL, &cfg, err, sizeof(err)) != 0 ||
	    loop_new(&loop) < 0 || cluster_new(loop, cfg, &cluster) < 0 ||
	    models_new(loop, cluster, &m) < 0) {
		printf("# setup failed: %s\n", err);
		exit(2);
	}

	CHECK(models_node_has_server(m, "spark1"), "servers: a service named ollama counts");
	CHECK(models_node_has_server(m, "trainer"), "servers: a service of type openai counts");
	CHECK(!models_node_has_server(m, "mini"), "servers: a node without one has none");
	CHECK(!models_node_has_server(m, "nope"), "servers: an unknown node has none");

	static const struct ctl_case cases[] = {
		{"spark1", "", -EINVAL, "empty command"},
		{"spark1", "\n", -EINVAL, "empty command"},
		{"spark1", "pul qwen3:8b", -EINVAL, "did you mean \"pull\""},
		{"spark1", "unlaod qwen3:8b", -EINVAL, "did you mean \"unload\""},
		{"spark1", "fetch qwen3:8b", -EINVAL, "unknown command \"fetch\""},
		{"spark1", "pull", -EINVAL, "needs a model name"},
		{"spark1", "delete\n", -EINVAL, "needs a model name"},
		{"spark1", "pull a b", -EINVAL, "one command per write"},
		{"nope", "pull qwen3:8b", -ENOENT, "no node named nope"},
		{"trainer", "pull qwen3:8b", -EOPNOTSUPP, "read-only"},
		{"mini", "load qwen3:8b", -EOPNOTSUPP, "has no Ollama server"},
	};
	int calls = 0;
	for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
		const struct ctl_case *c = &cases[i];
		err[0] = '\0';
		int r = models_ctl(m, c->node, c->cmd, never_called, &calls, err, sizeof(err));
		char name[200];
		snprintf(name, sizeof(name), "ctl: %s \"%.*s\" fails with %s", c->node,
			 (int) strcspn(c->cmd, "\n"), c->cmd, strerror(-c->err));
		CHECK(r == c->err && strstr(err, c->why), name);
		if (r != c->err || !strstr(err, c->why))
			printf("#   got %d \"%s\"\n", r, err);
	}
	CHECK(calls == 0, "ctl: done is never called when the command is refused");

	struct buf out;
	buf_init(&out);
	struct models_op_view *ops;
	size_t n_ops = models_ops(m, "spark1", &ops);
	render_models_ops(ops, n_ops, &out);
	models_ops_free(ops, n_ops);
	CHECK(out.data && strstr(out.data, "pull NAME") && out.data[out.len - 1] == '\n',
	      "ctl: with no operation, a usage line");
	buf_free(&out);

	CHECK(models_refresh(m, "nope", never_done, &calls) == -ENOENT,
	      "refresh: an unknown node is ENOENT");
	CHECK(models_refresh(m, "mini", never_done, &calls) == 1,
	      "refresh: a node without a model server is fresh at once");
	CHECK(calls == 0, "refresh: done not called when answered at once");

	size_t n = 99;
	char **names = models_node_list(m, "spark1", &n);
	CHECK(names && n == 0 && names[0] == NULL, "lists: nothing known yet is an empty list");
	free(names);
	names = models_list(m, &n);
	CHECK(names && n == 0 && names[0] == NULL, "lists: cluster-wide too");
	free(names);
	buf_init(&out);
	struct tree_ctx ctx = {.cluster = cluster, .models = m};
	struct tree_entry e = {.node = "spark1", .file = "qwen3:8b"};
	CHECK(render_node_model(&ctx, &e, &out, NULL, NULL) == -ENOENT &&
		      render_model_info(&ctx, &e, &out, NULL, NULL) == -ENOENT &&
		      render_model_nodes(&ctx, &e, &out, NULL, NULL) == -ENOENT && out.len == 0,
	      "render: an unknown model is ENOENT");
	buf_free(&out);

	models_free(m);
	cluster_free(cluster);
	loop_free(loop);
	config_unref(cfg);
}

int main(void)
{
	test_names();
	test_lines();
	test_commands();
	printf("1..%d\n", n_checks);
	return n_failed ? 1 : 0;
}
