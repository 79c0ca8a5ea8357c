/* Unit tests for config/: loading, validation with positioned errors, the built-in default,
 * rendering without secrets, reference counting, the locator and the directory watcher.
 * Prints TAP ("ok N - name"); exits non-zero when any check failed. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/util.h"
#include "config/config.h"
#include "config/locate.h"
#include "config/watch.h"

#include "tests/unit/check.h"

static char tmpdir[] = "/tmp/test-config.XXXXXX";
static char fixtures[PATH_MAX];
static char err[1024];

static char *tmp_path(const char *name)
{
	struct buf b;
	buf_init(&b);
	buf_printf(&b, "%s/%s", tmpdir, name);
	return buf_steal(&b, NULL);
}

static void write_file(const char *path, const char *text, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	size_t len = strlen(text);
	if (fd < 0 || write(fd, text, len) != (ssize_t) len || fchmod(fd, mode) < 0) {
		perror(path);
		exit(2);
	}
	close(fd);
}

static void write_tmp(const char *name, const char *text, mode_t mode)
{
	char *p = tmp_path(name);
	write_file(p, text, mode);
	free(p);
}

/* The fixture directory tests/config: beside this source file, found from the working
 * directory (meson test runs in the build root) or from the executable's location. */
static bool try_fixtures(struct buf *cand)
{
	struct buf probe;
	bool ok;
	buf_init(&probe);
	buf_printf(&probe, "%s/seed-architecture-plan.json", cand->data);
	ok = access(probe.data, R_OK) == 0 && cand->len < sizeof(fixtures);
	if (ok)
		memcpy(fixtures, cand->data, cand->len + 1);
	buf_free(&probe);
	buf_free(cand);
	return ok;
}

static void find_fixtures(void)
{
	const char *env = getenv("CLUSTERFS_TEST_CONFIG_DIR"), *slash = strrchr(__FILE__, '/');
	int src_len = slash ? (int) (slash - __FILE__) : 0;
	char exe[PATH_MAX];
	struct buf cand;

	buf_init(&cand);
	if (env) {
		buf_puts(&cand, env);
		if (try_fixtures(&cand))
			return;
	}
	buf_printf(&cand, "%.*s%s../config", src_len, __FILE__, slash ? "/" : "");
	if (try_fixtures(&cand))
		return;
	ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (len > 0 && __FILE__[0] != '/') {
		exe[len] = '\0';
		/* the executable is BUILD/tests/unit/test-config; __FILE__ is relative to BUILD */
		for (int i = 0; i < 3 && strrchr(exe, '/'); i++)
			*strrchr(exe, '/') = '\0';
		buf_printf(&cand, "%s/%.*s%s../config", exe, src_len, __FILE__, slash ? "/" : "");
		if (try_fixtures(&cand))
			return;
	}
	fprintf(stderr, "cannot find tests/config (set CLUSTERFS_TEST_CONFIG_DIR)\n");
	exit(2);
}

static char *fixture_path(const char *name)
{
	struct buf b;
	buf_init(&b);
	buf_printf(&b, "%s/%s", fixtures, name);
	return buf_steal(&b, NULL);
}

static char *fixture_text(const char *name)
{
	char *path = fixture_path(name), *text = NULL;
	size_t len;
	if (file_read_all(path, 1 << 20, &text, &len) < 0) {
		fprintf(stderr, "cannot read %s\n", path);
		exit(2);
	}
	free(path);
	return text;
}

/* Loads a fixture's text with token files resolving in the temporary directory. */
static int load_fixture(const char *name, struct config **ret)
{
	char *text = fixture_text(name);
	int r;
	err[0] = '\0';
	r = config_load_string(text, name, tmpdir, ret, err, sizeof(err));
	free(text);
	return r;
}

static int load_text(const char *text, struct config **ret)
{
	err[0] = '\0';
	return config_load_string(text, "t.json", tmpdir, ret, err, sizeof(err));
}

static bool starts_with(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

static void test_seed(void)
{
	struct config *c = NULL;
	const struct cfg_host *h;
	const struct cfg_service *s;
	int r;

	setenv("CLUSTERFS_TOKEN_FILE", "/nonexistent/clusterfs-token", 1);
	r = load_fixture("seed-architecture-plan.json", &c);
	if (r < 0)
		printf("# %s\n", err);
	CHECK(r == 0, "seed: the Distributed Architecture Plan config loads as it is");
	if (r < 0)
		return;
	CHECK(c->n_hosts == 2, "seed: two hosts");
	CHECK(strcmp(c->hosts[0].name, "3090") == 0 && strcmp(c->hosts[1].name, "4090") == 0,
	      "seed: hosts sorted by name");
	h = config_find_host(c, "4090");
	CHECK(h && strcmp(h->display_name, "Training Server") == 0 &&
		      strcmp(h->role, "trainer") == 0 && strcmp(h->address, "192.168.x.x") == 0,
	      "seed: host 4090 has its name, role and address");
	s = config_host_service(h, "ledger");
	CHECK(s && s->port == 8767 && strcmp(s->path, "/api/ledger") == 0 && s->kind == NULL,
	      "seed: ledger service on 4090 at port 8767, path /api/ledger");
	CHECK(h && h->n_services == 4 && config_host_service(h, "branch")->port == 8768,
	      "seed: all four services of 4090");
	CHECK(h && h->agent_port == CONFIG_DEFAULT_AGENT_PORT, "seed: default agent port");
	CHECK(h && h->token == NULL, "seed: no token file at the default place is no error");
	CHECK(strcmp(json_string_value(json_object_get(c->doc, "default_inference")), "3090") == 0,
	      "seed: seed keys kept in doc");
	CHECK(config_find_host(c, "5090") == NULL, "seed: unknown host not found");
	config_unref(c);

	/* With a token at the default place, every host gets it. */
	char *tok = tmp_path("default.token");
	write_tmp("default.token", "seed-token\n", 0600);
	setenv("CLUSTERFS_TOKEN_FILE", tok, 1);
	r = load_fixture("seed-architecture-plan.json", &c);
	CHECK(r == 0 && c->hosts[0].token && strcmp(c->hosts[0].token, "seed-token") == 0 &&
		      strcmp(c->hosts[1].token_file, tok) == 0,
	      "seed: default token file read when present");
	if (r == 0)
		config_unref(c);

	/* ... but an unsafe one is refused even there. */
	chmod(tok, 0644);
	r = load_fixture("seed-architecture-plan.json", &c);
	CHECK(r == -EPERM && strstr(err, tok), "seed: unsafe default token file refused");
	setenv("CLUSTERFS_TOKEN_FILE", "/nonexistent/clusterfs-token", 1);
	free(tok);
}

static void test_design_example(void)
{
	struct config *c = NULL;
	const struct cfg_host *h;
	int r;

	write_tmp("token", "design-secret\n", 0600);
	r = load_fixture("design-example.json", &c);
	if (r < 0)
		printf("# %s\n", err);
	CHECK(r == 0, "design: DESIGN section 5 example loads");
	if (r < 0)
		return;
	h = config_find_host(c, "spark1");
	CHECK(strcmp(c->cluster, "homelab") == 0, "design: cluster name");
	CHECK(h && h->n_capabilities == 1 && strcmp(h->capabilities[0], "gpu") == 0,
	      "design: capabilities");
	CHECK(h && h->agent_port == 8768 && config_host_service(h, "ollama")->port == 11434,
	      "design: agent and ollama ports");
	CHECK(h && h->token && strcmp(h->token, "design-secret") == 0,
	      "design: token read from auth.token_file relative to the config");
	CHECK(c->probe.interval_s == 30 && c->probe.max_age_ms == 1000,
	      "design: probe given and defaulted");
	CHECK(c->thresholds.load[0] == 4.0 && c->thresholds.load[1] == 8.0, "design: thresholds");
	CHECK(json_object_get(c->routing, "deep_reasoning") &&
		      json_object_get(c->services, "training"),
	      "design: routing and services kept");
	config_unref(c);
}

static void test_example_file(void)
{
	char *text, *dst, *tok;
	struct config *c = NULL;
	int r;

	/* The shipped example, loaded through config_load_file from a copy beside a token. */
	text = fixture_text("../../config/hosts.example.json");
	dst = tmp_path("hosts.json");
	tok = tmp_path("agent.token");
	write_file(dst, text, 0644);
	write_file(tok, "example-token", 0600);
	r = config_load_file(dst, &c, err, sizeof(err));
	if (r < 0)
		printf("# %s\n", err);
	CHECK(r == 0, "example: config/hosts.example.json loads");
	if (r == 0) {
		const struct cfg_host *cloud = config_find_host(c, "cloud1");
		const struct cfg_service *vllm =
			config_host_service(config_find_host(c, "trainer"), "vllm");
		CHECK(c->n_hosts == 4 && strcmp(c->path, dst) == 0, "example: four hosts, path");
		CHECK(cloud && strcmp(cloud->tier, "light") == 0 && cloud->agent_port == 8768,
		      "example: tier and port");
		CHECK(vllm && vllm->kind && strcmp(vllm->kind, "openai") == 0,
		      "example: service type");
		CHECK(strcmp(c->hosts[0].token_file, tok) == 0, "example: token path absolute");
		config_unref(c);
	}
	unlink(dst);
	unlink(tok);
	free(text);
	free(dst);
	free(tok);
}

static void test_syntax_error(void)
{
	struct config *c = NULL;
	char *path = fixture_path("syntax-error.json"), expect[PATH_MAX + 32];
	int r = config_load_file(path, &c, err, sizeof(err));

	printf("# %s\n", err);
	snprintf(expect, sizeof(expect), "%s:3:30: ", path);
	CHECK(r == -EINVAL && starts_with(err, expect),
	      "syntax error reported at FILE:3:30 (the stray '}')");
	CHECK(strchr(err, '\n') == NULL, "syntax error: one line");
	free(path);

	r = load_fixture("duplicate-key.json", &c);
	printf("# %s\n", err);
	CHECK(r == -EINVAL && starts_with(err, "duplicate-key.json:3:") && strstr(err, "duplicate"),
	      "duplicate key is an error with its position");

	r = load_text("{\"hosts\": {}} x", &c);
	CHECK(r == -EINVAL && starts_with(err, "t.json:1:"), "trailing garbage is an error");
	r = load_text("", &c);
	CHECK(r == -EINVAL && starts_with(err, "t.json"), "empty text is an error");
	r = load_text("[1, 2]", &c);
	printf("# %s\n", err);
	CHECK(r == -EINVAL && starts_with(err, "t.json:1:1: "), "top level must be an object");
	r = load_text("\n\n  {}", &c);
	printf("# %s\n", err);
	CHECK(r == -EINVAL && starts_with(err, "t.json:3:3: ") && strstr(err, "\"hosts\""),
	      "missing hosts is an error at the top-level object");
}

static void test_unknown_key(void)
{
	struct config *c = NULL;
	int r = load_fixture("unknown-key.json", &c);

	printf("# %s\n", err);
	CHECK(r == -EINVAL && strcmp(err, "unknown-key.json:3:3: unknown key \"theshold\" in the "
					  "top level; did you mean \"thresholds\"?") == 0,
	      "unknown key located with did-you-mean");

	r = load_text("{\"hosts\": {\"a\": {\"host\": \"h\",\n \"servics\": {}}}}", &c);
	printf("# %s\n", err);
	CHECK(r == -EINVAL && starts_with(err, "t.json:2:2: ") && strstr(err, "hosts.a") &&
		      strstr(err, "did you mean \"services\"?"),
	      "unknown host key suggests services");

	r = load_text("{\"hosts\": {}, \"zzzzzz\": 1}", &c);
	printf("# %s\n", err);
	CHECK(r == -EINVAL && strstr(err, "known keys: cluster") && !strstr(err, "did you mean"),
	      "far-off unknown key lists the known keys");

	r = load_text("{\"hosts\": {\"a\": {\"host\": \"h\", \"token\": \"s3cret\"}}}", &c);
	printf("# %s\n", err);
	CHECK(r == -EINVAL && strstr(err, "token_file") && !strstr(err, "s3cret"),
	      "inline token refused without echoing it");
}

static void test_bad_values(void)
{
	struct config *c = NULL;
	int r = load_fixture("bad-port.json", &c);

	printf("# %s\n", err);
	CHECK(r == -EINVAL && strcmp(err, "bad-port.json:6:27: hosts.spark1.services.agent.port "
					  "must be an integer from 1 to 65535, not 70000") == 0,
	      "bad port located at its line:column");

	r = load_fixture("routing-unknown-host.json", &c);
	printf("# %s\n", err);
	CHECK(r == -EINVAL && starts_with(err, "routing-unknown-host.json:3:54: ") &&
		      strstr(err, "\"spark9\"") && strstr(err, "did you mean \"spark1\"?"),
	      "routing to an unknown host is an error at the name");

	static const struct {
		const char *text, *prefix, *what;
	} cases[] = {
		{"{\"hosts\": {\"a\": {}}}", "t.json:1:17: ", "host without \"host\""},
		{"{\"hosts\": {\"a b\": {\"host\": \"h\"}}}",
		 "t.json:1:12: ", "host name with a space"},
		{"{\"hosts\": {\"..\": {\"host\": \"h\"}}}", "t.json:1:12: ", "host name .."},
		{"{\"hosts\": {\"a\": {\"host\": \"h/x\"}}}",
		 "t.json:1:26: ", "address with a slash"},
		{"{\"hosts\": {\"a\": {\"host\": 5}}}", "t.json:1:26: ", "address not a string"},
		{"{\"hosts\": {\"a\": {\"host\": \"h\", \"port\": 0}}}", "t.json:1:39: ", "port 0"},
		{"{\"hosts\": {\"a\": {\"host\": \"h\", \"tier\": \"huge\"}}}",
		 "t.json:1:39: ", "unknown tier"},
		{"{\"hosts\": {\"a\": {\"host\": \"h\", \"port\": 1, \"services\": {\"agent\": "
		 "{\"port\": 2}}}}}",
		 "t.json:1:39: ", "port and services.agent.port disagree"},
		{"{\"hosts\": {\"a\": {\"host\": \"h\", \"services\": {\"x\": {}}}}}",
		 "t.json:1:49: ", "service without port"},
		{"{\"hosts\": {\"a\": {\"host\": \"h\", \"services\": {\"x\": {\"port\": 1, \"path\": "
		 "\"api\"}}}}}",
		 "t.json:1:69: ", "service path without a slash"},
		{"{\"hosts\": {\"a\": {\"host\": \"h\", \"capabilities\": \"gpu\"}}}",
		 "t.json:1:47: ", "capabilities not a list"},
		{"{\"hosts\": {\"a\": {\"host\": \"h\", \"queue_depth\": -1}}}",
		 "t.json:1:46: ", "negative queue depth"},
		{"{\"hosts\": {}, \"probe\": {\"timeout_ms\": 0}}", "t.json:1:39: ", "timeout 0"},
		{"{\"hosts\": {}, \"probe\": {\"interval_s\": 1e9}}",
		 "t.json:1:39: ", "interval not an integer"},
		{"{\"hosts\": {}, \"probe\": {\"stale_after_s\": 300, \"offline_after_s\": 200}}",
		 "t.json:1:66: ", "offline before stale"},
		{"{\"hosts\": {}, \"thresholds\": {\"cpu\": [96, 95]}}",
		 "t.json:1:37: ", "warning above critical"},
		{"{\"hosts\": {}, \"thresholds\": {\"disk\": [80, 101]}}",
		 "t.json:1:43: ", "percentage above 100"},
		{"{\"hosts\": {}, \"thresholds\": {\"load\": [-1, 8]}}",
		 "t.json:1:39: ", "negative load"},
		{"{\"hosts\": {}, \"thresholds\": {\"memory\": [1]}}",
		 "t.json:1:40: ", "threshold not a pair"},
		{"{\"hosts\": {}, \"routing\": {\"x\": {\"tiers\": [\"giant\"]}}}",
		 "t.json:1:43: ", "routing to an unknown tier"},
		{"{\"hosts\": {}, \"routing\": {\"x\": {\"roles\": [3]}}}",
		 "t.json:1:43: ", "routing role not a string"},
		{"{\"hosts\": {\"a\": {\"host\": \"h\"}}, \"services\": {\"s\": {\"host\": \"b\", "
		 "\"port\": 1}}}",
		 "t.json:1:60: ", "service on an unknown host"},
		{"{\"hosts\": {\"a\": {\"host\": \"h\"}}, \"services\": {\"s\": {\"host\": \"a\"}}}",
		 "t.json:1:51: ", "service without port"},
		{"{\"hosts\": {\"a\": {\"host\": \"h\"}}, \"services\": {\"s\": {\"host\": \"a\", "
		 "\"port\": 1, \"files\": {\"f\": {\"get\": \"/a\", \"post\": \"/b\"}}}}}",
		 "t.json:1:105: ", "file with both get and post"},
		{"{\"hosts\": {\"a\": {\"host\": \"h\"}}, \"services\": {\"s\": {\"host\": \"a\", "
		 "\"port\": 1, \"files\": {\"f\": {}}}}}",
		 "t.json:1:91: ", "file with neither get nor post"},
		{"{\"hosts\": {\"a\": {\"host\": \"h\"}}, \"services\": {\"s\": {\"host\": \"a\", "
		 "\"port\": 1, \"files\": {\"f\": {\"get\": \"a\"}}}}}",
		 "t.json:1:99: ", "file path without a slash"},
		{"{\"hosts\": {\"a\": {\"host\": \"h\"}}, \"services\": {\"s\": {\"host\": \"a\", "
		 "\"port\": 1, \"files\": {\"a/b\": {\"get\": \"/a\"}}}}}",
		 "t.json:1:86: ", "file name with a slash"},
		{"{\"hosts\": {\"a\": {\"host\": \"h\"}}, \"local_host\": \"b\"}",
		 "t.json:1:47: ", "local_host names an unknown host"},
		{"{\"cluster\": \"\", \"hosts\": {}}", "t.json:1:13: ", "empty cluster name"},
		{"{\"auth\": {\"token_file\": 1}, \"hosts\": {}}",
		 "t.json:1:25: ", "token_file not a string"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char name[128];
		r = load_text(cases[i].text, &c);
		printf("# %s\n", err);
		snprintf(name, sizeof(name), "rejected at its position: %s", cases[i].what);
		CHECK(r == -EINVAL && starts_with(err, cases[i].prefix) && !strchr(err, '\n'),
		      name);
		if (r == 0)
			config_unref(c);
	}
}

static void test_defaults(void)
{
	struct config *c = NULL;
	const struct cfg_host *h;
	int r = load_fixture("minimal.json", &c);

	CHECK(r == 0, "minimal config loads");
	if (r < 0)
		return;
	h = config_find_host(c, "solo");
	CHECK(strcmp(c->cluster, "clusterfs") == 0, "defaults: cluster name");
	CHECK(c->probe.interval_s == 30 && c->probe.timeout_ms == 2000 &&
		      c->probe.stale_after_s == 120 && c->probe.offline_after_s == 600 &&
		      c->probe.unhealthy_after == 3 && c->probe.max_age_ms == 1000,
	      "defaults: probe");
	CHECK(c->thresholds.cpu[0] == 80 && c->thresholds.cpu[1] == 95 &&
		      c->thresholds.memory[0] == 85 && c->thresholds.memory[1] == 95 &&
		      c->thresholds.disk[0] == 80 && c->thresholds.disk[1] == 90 &&
		      c->thresholds.load[0] == 4.0 && c->thresholds.load[1] == 8.0,
	      "defaults: thresholds");
	CHECK(h && h->agent_port == 8768 && h->queue_depth == 10 && strcmp(h->role, "") == 0 &&
		      h->tier == NULL && h->n_capabilities == 0 && h->n_services == 0 &&
		      h->display_name == NULL,
	      "defaults: host");
	CHECK(json_is_object(c->routing) && json_object_size(c->routing) == 0 &&
		      json_is_object(c->services) && json_object_size(c->services) == 0,
	      "defaults: empty routing and services");
	CHECK(c->path == NULL && strcmp(c->token_file, "/nonexistent/clusterfs-token") == 0,
	      "defaults: no path for a string, default token path");
	config_unref(c);

	r = load_text("{\"hosts\": {\"a\": {\"host\": \"h\", \"port\": 9000}}}", &c);
	CHECK(r == 0 && c->hosts[0].agent_port == 9000, "host \"port\" sets the agent port");
	if (r == 0)
		config_unref(c);
	r = load_text("{\"hosts\": {}}", &c);
	CHECK(r == 0 && c->n_hosts == 0 && config_find_host(c, "x") == NULL,
	      "an empty host list is allowed");
	if (r == 0)
		config_unref(c);
	r = load_text("\xef\xbb\xbf{\"hosts\": {}}", &c);
	CHECK(r == 0, "a UTF-8 byte order mark is skipped");
	if (r == 0)
		config_unref(c);
}

static void test_tokens(void)
{
	struct config *c = NULL;
	char *tok = tmp_path("token"), *own = tmp_path("own.token");
	int r;

	write_tmp("token", "design-secret", 0644);
	r = load_fixture("design-example.json", &c);
	printf("# %s\n", err);
	CHECK(r == -EPERM && starts_with(err, "design-example.json:3:26: ") && strstr(err, tok),
	      "token file with mode 0644 rejected, with position and path");

	unlink(tok);
	r = load_fixture("design-example.json", &c);
	printf("# %s\n", err);
	CHECK(r == -ENOENT && starts_with(err, "design-example.json:3:26: ") && strstr(err, tok),
	      "missing named token file is an error mentioning the path");

	write_tmp("token", "", 0600);
	r = load_fixture("design-example.json", &c);
	CHECK(r == -ENODATA && strstr(err, tok), "empty token file rejected");

	write_tmp("own.token", "host-secret\n", 0600);
	r = load_text("{\"hosts\": {\"a\": {\"host\": \"h\", \"token_file\": \"own.token\"},\n"
		      "\"b\": {\"host\": \"h\"}}}",
		      &c);
	CHECK(r == 0 && strcmp(c->hosts[0].token, "host-secret") == 0 &&
		      strcmp(c->hosts[0].token_file, own) == 0 && c->hosts[1].token == NULL,
	      "per-host token_file overrides the global one");
	if (r == 0)
		config_unref(c);

	r = load_text("{\"hosts\": {\"a\": {\"host\": \"h\",\n \"token_file\": \"nope\"}}}", &c);
	printf("# %s\n", err);
	CHECK(r == -ENOENT && starts_with(err, "t.json:2:16: ") && strstr(err, "/nope"),
	      "missing per-host token file located");
	free(tok);
	free(own);
}

static void test_slurm(void)
{
	struct config *c = NULL;
	char *jwt = tmp_path("slurm.jwt");
	const char *head = "{\"hosts\": {\"a\": {\"host\": \"h\"}},\n\"slurm\": {";
	char text[1024];
	int r;

	write_tmp("slurm.jwt", "header.payload.signature\n", 0600);
	snprintf(text, sizeof(text),
		 "%s\"rest\": \"http://127.0.0.1:6820\", \"token_file\": \"slurm.jwt\", "
		 "\"user\": \"alice\", \"partition\": \"gpu\", \"output_dir\": \"out\"}}",
		 head);
	r = load_text(text, &c);
	printf("# %s\n", err);
	CHECK(r == 0 && c->slurm && !strcmp(c->slurm->name, "slurm") &&
		      !strcmp(c->slurm->prefix, "slurm-") &&
		      !strcmp(c->slurm->address, "127.0.0.1") && c->slurm->port == 6820 &&
		      !strcmp(c->slurm->token_file, jwt) && !c->slurm->api &&
		      !c->slurm->transport.tls && c->slurm->queue_depth == 64 &&
		      config_queue_depth(c, "slurm") == 64 && config_queue_depth(c, "a") == 10,
	      "a slurm section loads with its defaults");
	if (r == 0) {
		char *shown = config_render(c);
		CHECK(shown && strstr(shown, "slurm.jwt") && !strstr(shown, "header.payload"),
		      "the rendered config names the JWT's file, never the JWT");
		free(shown);
		config_unref(c);
	}

	snprintf(text, sizeof(text),
		 "%s\"rest\": \"https://slurm.example:6821\", \"token_file\": \"slurm.jwt\",\n"
		 "\"user\": \"alice\", \"partition\": \"gpu\", \"output_dir\": \"/o\", "
		 "\"api\": \"v0.0.38\", \"name\": \"hpc\", \"prefix\": \"\"}}",
		 head);
	r = load_text(text, &c);
	CHECK(r == 0 && c->slurm->transport.tls && c->slurm->port == 6821 &&
		      !strcmp(c->slurm->api, "v0.0.38") && !strcmp(c->slurm->prefix, ""),
	      "https, a port, an API version, a name and an empty prefix");
	if (r == 0)
		config_unref(c);

	snprintf(text, sizeof(text),
		 "%s\"rest\": \"http://127.0.0.1:6820\", \"token_file\": \"slurm.jwt\",\n"
		 "\"usr\": \"alice\", \"partition\": \"gpu\", \"output_dir\": \"out\"}}",
		 head);
	r = load_text(text, &c);
	printf("# %s\n", err);
	CHECK(r == -EINVAL && starts_with(err, "t.json:3:1: ") &&
		      strstr(err, "did you mean \"user\"?"),
	      "a misspelt slurm key is located, with a did-you-mean");

	snprintf(text, sizeof(text),
		 "%s\"rest\": \"127.0.0.1:6820\", \"token_file\": \"slurm.jwt\"}}", head);
	r = load_text(text, &c);
	printf("# %s\n", err);
	CHECK(r == -EINVAL && starts_with(err, "t.json:2:19: ") && strstr(err, "http://HOST:PORT"),
	      "a rest address without a scheme is located");

	snprintf(text, sizeof(text),
		 "%s\"rest\": \"http://h:1\", \"token_file\": \"slurm.jwt\", \"user\": \"u\", "
		 "\"partition\": \"p\", \"output_dir\": \"o\", \"api\": \"38\"}}",
		 head);
	r = load_text(text, &c);
	printf("# %s\n", err);
	CHECK(r == -EINVAL && strstr(err, "slurm.api") && strstr(err, "v0.0.38"),
	      "an API version not of the form v0.0.N");

	write_tmp("slurm.jwt", "header.payload.signature\n", 0644);
	snprintf(text, sizeof(text),
		 "%s\"rest\": \"http://h:1\", \"token_file\": \"slurm.jwt\", \"user\": \"u\", "
		 "\"partition\": \"p\", \"output_dir\": \"o\"}}",
		 head);
	r = load_text(text, &c);
	printf("# %s\n", err);
	CHECK(r == -EPERM && starts_with(err, "t.json:2:47: ") && strstr(err, jwt) &&
		      !strstr(err, "header.payload"),
	      "a JWT file others can read is refused, located, without its content");

	snprintf(text, sizeof(text),
		 "%s\"rest\": \"http://h:1\", \"token_file\": \"slurm.jwt\", \"user\": \"u\"}}",
		 head);
	write_tmp("slurm.jwt", "x\n", 0600);
	r = load_text(text, &c);
	printf("# %s\n", err);
	CHECK(r == -EINVAL && strstr(err, "needs \"partition\""), "a missing partition is named");

	snprintf(text, sizeof(text),
		 "%s\"name\": \"a\", \"rest\": \"http://h:1\", \"token_file\": \"slurm.jwt\", "
		 "\"user\": \"u\", \"partition\": \"p\", \"output_dir\": \"o\"}}",
		 head);
	r = load_text(text, &c);
	printf("# %s\n", err);
	CHECK(r == -EINVAL && strstr(err, "also a host"), "a name taken by a host is refused");

	snprintf(text, sizeof(text),
		 "%s\"rest\": \"http://h:1\", \"token_file\": \"slurm.jwt\", \"user\": \"u\", "
		 "\"partition\": \"p\", \"output_dir\": \"o\"},\n\"routing\": {\"hpc\": "
		 "{\"hosts\": [\"slurm\", \"a\"]}}}",
		 head);
	r = load_text(text, &c);
	printf("# %s\n", err);
	CHECK(r == 0, "a routing policy may name the Slurm cluster");
	if (r == 0)
		config_unref(c);
	free(jwt);
}

static void test_render(void)
{
	static const char secret[] = "S3cr3t-V4lue-never-shown";
	struct config *c = NULL;
	char *text;
	json_t *doc;
	int r;

	write_tmp("token", secret, 0600);
	r = load_fixture("design-example.json", &c);
	CHECK(r == 0, "render: config with a token loads");
	if (r < 0)
		return;
	CHECK(strcmp(c->hosts[0].token, secret) == 0, "render: token was read");
	text = config_render(c);
	CHECK(text && !strstr(text, secret), "render: the token value is absent");
	CHECK(text && strstr(text, "\"token\": \"(redacted)\""), "render: token shown redacted");
	doc = text ? json_loads(text, 0, NULL) : NULL;
	CHECK(doc != NULL && text[strlen(text) - 1] == '\n', "render: valid JSON, ends in newline");
	json_t *h = json_object_get(json_object_get(doc, "hosts"), "spark1");
	CHECK(json_integer_value(json_object_get(h, "agent_port")) == 8768 &&
		      json_array_size(json_object_get(h, "capabilities")) == 1 &&
		      json_object_get(json_object_get(h, "services"), "ollama"),
	      "render: effective host");
	CHECK(strstr(json_string_value(json_object_get(h, "token_file")), "/token") != NULL,
	      "render: token file shown by path");
	CHECK(json_integer_value(json_object_get(json_object_get(doc, "probe"), "max_age_ms")) ==
		      1000,
	      "render: defaults filled in");
	CHECK(json_object_get(json_object_get(doc, "services"), "training") != NULL,
	      "render: services");
	json_decref(doc);
	free(text);
	config_unref(c);

	setenv("CLUSTERFS_TOKEN_FILE", "/nonexistent/clusterfs-token", 1);
	r = load_fixture("seed-architecture-plan.json", &c);
	text = r == 0 ? config_render(c) : NULL;
	CHECK(text && strstr(text, "\"token\": null") && strstr(text, "\"local_host\": \"4090\""),
	      "render: no token shows null; seed keys kept");
	free(text);
	if (r == 0)
		config_unref(c);
}

static void test_tls(void)
{
	static const char fp[] = "sha256:kNLI7nCQGzzpvVFG0aMjWtREkRISq8fnt72YaEzyXc4=";
	struct config *c = NULL;
	char *ca = tmp_path("ca.pem"), *text;
	int r;

	write_tmp("ca.pem", "not checked here\n", 0644);
	r = load_text("{\"tls\": {\"ca_file\": \"ca.pem\"},\n"
		      "\"hosts\": {\"a\": {\"host\": \"10.0.0.1\", \"tls\": {\"fingerprint\": "
		      "\"sha256:kNLI7nCQGzzpvVFG0aMjWtREkRISq8fnt72YaEzyXc4=\"}},\n"
		      "\"b\": {\"host\": \"10.0.0.2\", \"tls\": true, \"services\": {\"ollama\": "
		      "{\"port\": 11434, \"insecure_http\": true}}},\n"
		      "\"c\": {\"host\": \"10.0.0.3\"}},\n"
		      "\"services\": {\"s\": {\"host\": \"a\", \"port\": 80, \"tls\": "
		      "{\"ca_file\": \"ca.pem\"}}}}",
		      &c);
	printf("# %s\n", r ? err : "");
	CHECK(r == 0, "tls: hosts and services with tls and insecure_http load");
	if (r < 0)
		goto out;
	CHECK(c->tls_ca_file && strcmp(c->tls_ca_file, ca) == 0, "tls: top-level ca_file resolved");
	CHECK(c->hosts[0].transport.tls && strcmp(c->hosts[0].transport.fingerprint, fp) == 0 &&
		      !c->hosts[0].transport.ca_file,
	      "tls: a pinned host");
	CHECK(c->hosts[1].transport.tls && !c->hosts[1].transport.fingerprint &&
		      !c->hosts[1].services[0].transport.tls &&
		      c->hosts[1].services[0].transport.insecure_http,
	      "tls: \"tls\": true; a service inherits nothing from its host");
	CHECK(!c->hosts[2].transport.tls && !c->hosts[2].transport.insecure_http,
	      "tls: a plain host still loads (it is refused per request)");
	const struct cfg_transport *st = config_service_transport(c, "s");
	CHECK(st && st->tls && st->ca_file && strcmp(st->ca_file, ca) == 0,
	      "tls: a top-level service's own ca_file");
	text = config_render(c);
	CHECK(text && strstr(text, fp) && strstr(text, "\"insecure_http\": true"),
	      "tls: the rendering shows fingerprints and insecure_http");
	free(text);
	config_unref(c);

	r = load_text("{\"hosts\": {\"a\": {\"host\": \"h\",\n"
		      "  \"tls\": {\"fingerprint\": \"sha256:abc\"}}}}",
		      &c);
	printf("# %s\n", err);
	CHECK(r == -EINVAL && starts_with(err, "t.json:2:26: ") && strstr(err, "44-character"),
	      "tls: a bad fingerprint is located");
	r = load_text("{\"hosts\": {\"a\": {\"host\": \"h\", \"tls\": {\"fingerprnt\": \"x\"}}}}",
		      &c);
	CHECK(r == -EINVAL && strstr(err, "did you mean \"fingerprint\""),
	      "tls: unknown key with a suggestion");
	r = load_text("{\"hosts\": {\"a\": {\"host\": \"h\", \"insecure_htp\": true}}}", &c);
	CHECK(r == -EINVAL && strstr(err, "did you mean \"insecure_http\""),
	      "tls: insecure_http is a known host key");
	r = load_text(
		"{\"hosts\": {\"a\": {\"host\": \"h\", \"tls\": {\"ca_file\": \"nope.pem\"}}}}",
		&c);
	CHECK(r == -EINVAL && strstr(err, "nope.pem") && strstr(err, "cannot be read"),
	      "tls: a missing ca_file is an error");
	CHECK(config_fingerprint_is_valid(fp) && !config_fingerprint_is_valid("sha256:") &&
		      !config_fingerprint_is_valid(
			      "sha1:kNLI7nCQGzzpvVFG0aMjWtREkRISq8fnt72YaEzyXc4=") &&
		      !config_fingerprint_is_valid(
			      "sha256:kNLI7nCQGzzpvVFG0aMjWtREkRISq8fnt72YaEzyX!4="),
	      "tls: fingerprint syntax");
out:
	free(ca);
}

static void test_default_config(void)
{
	struct config *c = NULL;
	char *tok = tmp_path("default.token");
	int r;

	setenv("CLUSTERFS_TOKEN_FILE", "/nonexistent/clusterfs-token", 1);
	r = config_default(&c, err, sizeof(err));
	CHECK(r == 0, "default: works without a token file");
	if (r == 0) {
		const struct cfg_host *h = &c->hosts[0];
		char hn[256] = "";
		gethostname(hn, sizeof(hn) - 1);
		CHECK(c->n_hosts == 1 && strcmp(h->address, "127.0.0.1") == 0 &&
			      h->agent_port == 8768 && h->token == NULL,
		      "default: one host at 127.0.0.1:8768 without a token");
		CHECK(name_is_valid(h->name) && (!hn[0] || strchr(hn, '/') ||
						 strncmp(h->name, hn, strlen(h->name)) == 0),
		      "default: host named after the hostname");
		CHECK(c->path == NULL && json_is_object(c->doc) && json_is_object(c->routing),
		      "default: no file, empty documents");
		char *text = config_render(c);
		CHECK(text && strstr(text, "\"file\": null"), "default: renders");
		free(text);
		config_unref(c);
	}

	write_tmp("default.token", "dflt", 0600);
	setenv("CLUSTERFS_TOKEN_FILE", tok, 1);
	r = config_default(&c, err, sizeof(err));
	CHECK(r == 0 && strcmp(c->hosts[0].token, "dflt") == 0, "default: token read");
	if (r == 0)
		config_unref(c);

	chmod(tok, 0640);
	r = config_default(&c, err, sizeof(err));
	CHECK(r == -EPERM && strstr(err, tok), "default: unsafe token file is an error");

	unsetenv("CLUSTERFS_TOKEN_FILE");
	setenv("XDG_CONFIG_HOME", "/xdg", 1);
	char *p = config_default_token_path();
	CHECK(p && strcmp(p, "/xdg/clusterfs/token") == 0, "token path: XDG_CONFIG_HOME");
	free(p);
	unsetenv("XDG_CONFIG_HOME");
	setenv("HOME", "/home/u", 1);
	p = config_default_token_path();
	CHECK(p && strcmp(p, "/home/u/.config/clusterfs/token") == 0, "token path: HOME");
	free(p);
	setenv("CLUSTERFS_TOKEN_FILE", "/nonexistent/clusterfs-token", 1);
	free(tok);
}

static void *ref_worker(void *arg)
{
	struct config *c = arg;
	for (int i = 0; i < 100000; i++)
		config_unref(config_ref(c));
	return NULL;
}

static void test_refcount(void)
{
	struct config *c = NULL;
	pthread_t t[4];
	int r = load_fixture("minimal.json", &c);

	CHECK(r == 0 && c->refcount == 1, "refcount: starts at one");
	if (r < 0)
		return;
	CHECK(config_ref(c) == c && c->refcount == 2, "refcount: ref returns the config");
	config_unref(c);
	CHECK(c->refcount == 1, "refcount: unref");
	for (int i = 0; i < 4; i++)
		pthread_create(&t[i], NULL, ref_worker, c);
	for (int i = 0; i < 4; i++)
		pthread_join(t[i], NULL);
	CHECK(c->refcount == 1, "refcount: balanced across threads");
	config_unref(c); /* frees: valgrind would see a leak otherwise */
	CHECK(config_ref(NULL) == NULL, "refcount: NULL is allowed");
	config_unref(NULL);
}

static void test_file_errors(void)
{
	struct config *c = NULL;
	char *big = tmp_path("big.json"), *missing = tmp_path("missing.json");
	char *text = malloc(CONFIG_MAX_FILE_SIZE + 2);
	int r;

	r = config_load_file(missing, &c, err, sizeof(err));
	CHECK(r == -ENOENT && starts_with(err, missing), "missing config file");

	memset(text, ' ', CONFIG_MAX_FILE_SIZE + 1);
	text[0] = '{';
	text[CONFIG_MAX_FILE_SIZE] = '}';
	text[CONFIG_MAX_FILE_SIZE + 1] = '\0';
	write_file(big, text, 0644);
	r = config_load_file(big, &c, err, sizeof(err));
	CHECK(r == -EFBIG && strstr(err, "larger"), "config file over the size limit");
	r = config_load_string(text, "big", NULL, &c, err, sizeof(err));
	CHECK(r == -EFBIG, "config string over the size limit");
	unlink(big);
	free(text);
	free(big);
	free(missing);
}

static void test_locate(void)
{
	static const char text[] = "{\"a\\u0062\": {\"\xc3\xa9\": [1, 2,\n  {\"k\": true}]},\n"
				   " \"n\": {\"x\": \"}{\\\"\", \"y\": [[], {}], \"z\": null}}";
	size_t len = strlen(text);
	int line = 0, col = 0, r;

	struct locate_step p1[] = {{"ab", 0}, {"\xc3\xa9", 0}, {NULL, 2}, {"k", 0}};
	r = locate_json(text, len, p1, 4, LOCATE_VALUE, &line, &col);
	CHECK(r == 0 && line == 2 && col == 9, "locate: escaped key, UTF-8 key, index");
	r = locate_json(text, len, p1, 4, LOCATE_KEY, &line, &col);
	CHECK(r == 0 && line == 2 && col == 4, "locate: a key's own position");
	struct locate_step p2[] = {{"ab", 0}, {"\xc3\xa9", 0}};
	r = locate_json(text, len, p2, 2, LOCATE_KEY, &line, &col);
	CHECK(r == 0 && line == 1 && col == 14, "locate: columns count characters");
	r = locate_json(text, len, p2, 2, LOCATE_VALUE, &line, &col);
	CHECK(r == 0 && line == 1 && col == 19, "locate: after a multi-byte character");
	struct locate_step p3[] = {{"n", 0}, {"z", 0}};
	r = locate_json(text, len, p3, 2, LOCATE_VALUE, &line, &col);
	CHECK(r == 0 && line == 3 && col == 41, "locate: skips strings with braces, nested values");
	struct locate_step p4[] = {{"n", 0}, {"q", 0}};
	CHECK(locate_json(text, len, p4, 2, LOCATE_VALUE, &line, &col) == -ENOENT,
	      "locate: absent key");
	struct locate_step p5[] = {{"ab", 0}, {"\xc3\xa9", 0}, {NULL, 7}};
	CHECK(locate_json(text, len, p5, 3, LOCATE_VALUE, &line, &col) == -ENOENT,
	      "locate: index out of range");
	CHECK(locate_json("{\"a\": ", 6, p3, 2, LOCATE_VALUE, &line, &col) < 0 &&
		      locate_json("{\"a", 3, p3, 1, LOCATE_VALUE, &line, &col) < 0 &&
		      locate_json("", 0, p3, 0, LOCATE_VALUE, &line, &col) < 0,
	      "locate: truncated text is safe");
	r = locate_json(text, len, NULL, 0, LOCATE_VALUE, &line, &col);
	CHECK(r == 0 && line == 1 && col == 1, "locate: the root");
}

/* Waits up to `ms` for the watch fd, then reads it. */
static bool watch_saw(struct config_watch *w, int ms)
{
	struct pollfd pfd = {.fd = config_watch_fd(w), .events = POLLIN};
	poll(&pfd, 1, ms);
	return config_watch_read(w);
}

static void test_watch(void)
{
	struct config_watch *w = NULL;
	char *cfg = tmp_path("hosts.json"), *tmp = tmp_path(".hosts.json.tmp");
	char *other = tmp_path("other.json");
	int r;

	write_file(cfg, "{}", 0644);
	r = config_watch_new(cfg, &w);
	CHECK(r == 0 && w && config_watch_fd(w) >= 0, "watch: created");
	if (r < 0)
		return;
	CHECK(fcntl(config_watch_fd(w), F_GETFD) & FD_CLOEXEC, "watch: fd is close-on-exec");
	CHECK(fcntl(config_watch_fd(w), F_GETFL) & O_NONBLOCK, "watch: fd is non-blocking");
	CHECK(!config_watch_read(w), "watch: nothing pending at start, and no blocking");

	write_file(cfg, "{\"hosts\": {}}", 0644);
	CHECK(watch_saw(w, 1000), "watch: write in place seen");
	CHECK(!config_watch_read(w), "watch: events drained");

	write_file(tmp, "{\"hosts\": {}}", 0644);
	CHECK(rename(tmp, cfg) == 0 && watch_saw(w, 1000), "watch: temp file renamed over seen");

	write_file(other, "{}", 0644);
	unlink(other);
	CHECK(!watch_saw(w, 100), "watch: unrelated file ignored");

	unlink(cfg);
	CHECK(watch_saw(w, 1000), "watch: deletion seen");
	config_watch_free(w);

	CHECK(config_watch_new("/nonexistent-dir/hosts.json", &w) == -ENOENT,
	      "watch: missing directory is an error");
	CHECK(config_watch_new("/tmp/", &w) == -EINVAL, "watch: a path without a file name");
	free(cfg);
	free(tmp);
	free(other);
}

/* hosts.d drop-ins: loaded with the file, shadowed by hosts.json with a warning, errors
 * located in the drop-in itself, and the watch sees them. */
static void test_dropins(void)
{
	char *dir = tmp_path("dropin-cfg"), *cfg, *dd, *f;
	struct config *c = NULL;
	struct config_watch *w = NULL;
	struct buf b;
	int r;

	mkdir(dir, 0700);
	buf_init(&b);
	buf_printf(&b, "%s/hosts.json", dir);
	cfg = buf_steal(&b, NULL);
	buf_printf(&b, "%s/hosts.d", dir);
	dd = buf_steal(&b, NULL);
	write_file(cfg, "{\"hosts\": {\"typed\": {\"host\": \"10.0.0.1\"}}}", 0644);

	r = config_load_file(cfg, &c, err, sizeof(err));
	CHECK(r == 0 && c->n_hosts == 1 && c->n_warnings == 0, "dropins: none without hosts.d");
	config_unref(c);

	r = config_watch_new(cfg, &w);
	CHECK(r == 0, "dropins: watch");
	mkdir(dd, 0755);
	CHECK(w && watch_saw(w, 1000), "dropins: hosts.d appearing is seen");
	buf_printf(&b, "%s/joined.json", dd);
	f = buf_steal(&b, NULL);
	write_file(f, "{\"host\": \"10.0.0.2\", \"port\": 9000, \"role\": \"worker\"}", 0644);
	CHECK(w && watch_saw(w, 1000), "dropins: a drop-in written is seen");
	r = config_load_file(cfg, &c, err, sizeof(err));
	const struct cfg_host *h = r == 0 ? config_find_host(c, "joined") : NULL;
	CHECK(h && h->agent_port == 9000 && h->dropin && strcmp(h->dropin, f) == 0 &&
		      config_find_host(c, "typed") && !config_find_host(c, "typed")->dropin,
	      "dropins: loaded beside the typed hosts, sorted, with their file");
	CHECK(h && config_remove_dropin(h) == 0 && access(f, F_OK) < 0,
	      "dropins: config_remove_dropin deletes the file");
	CHECK(config_remove_dropin(config_find_host(c, "typed")) == -EPERM,
	      "dropins: a typed host is not removed");
	config_unref(c);
	free(f);

	buf_printf(&b, "%s/typed.json", dd);
	f = buf_steal(&b, NULL);
	write_file(f, "{\"host\": \"10.0.0.3\"}", 0644);
	r = config_load_file(cfg, &c, err, sizeof(err));
	CHECK(r == 0 && c->n_hosts == 1 && c->n_warnings == 1 &&
		      strstr(c->warnings[0], "hosts.json has a host named \"typed\"") &&
		      strcmp(config_find_host(c, "typed")->address, "10.0.0.1") == 0,
	      "dropins: hosts.json wins, with a warning");
	config_unref(c);
	unlink(f);
	free(f);

	buf_printf(&b, "%s/bad.json", dd);
	f = buf_steal(&b, NULL);
	write_file(f, "{\n  \"host\": \"10.0.0.4\",\n  \"port\": \"x\"\n}\n", 0644);
	c = NULL;
	r = config_load_file(cfg, &c, err, sizeof(err));
	buf_printf(&b, "%s:3:", f);
	CHECK(r == -EINVAL && !c && starts_with(err, b.data), "dropins: error at file:line");
	buf_free(&b);
	write_file(f, "{\"host\": ", 0644);
	r = config_load_file(cfg, &c, err, sizeof(err));
	CHECK(r == -EINVAL && starts_with(err, f), "dropins: syntax error names the drop-in");
	unlink(f);
	free(f);

	buf_printf(&b, "%s/.in-the-making.json", dd);
	f = buf_steal(&b, NULL);
	write_file(f, "not json", 0644);
	r = config_load_file(cfg, &c, err, sizeof(err));
	CHECK(r == 0 && c->n_hosts == 1, "dropins: dot files are ignored");
	config_unref(c);
	unlink(f);
	free(f);

	config_watch_free(w);
	rmdir(dd);
	unlink(cfg);
	rmdir(dir);
	free(dd);
	free(cfg);
	free(dir);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

int main(void)
{
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 2;
	}
	find_fixtures();
	setenv("CLUSTERFS_TOKEN_FILE", "/nonexistent/clusterfs-token", 1);

	test_seed();
	test_design_example();
	test_example_file();
	test_syntax_error();
	test_unknown_key();
	test_bad_values();
	test_defaults();
	test_tokens();
	test_render();
	test_slurm();
	test_tls();
	test_default_config();
	test_refcount();
	test_file_errors();
	test_locate();
	test_watch();
	test_dropins();

	nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	printf("1..%d\n", n_checks);
	if (n_failed)
		printf("# %d of %d checks failed\n", n_failed, n_checks);
	return n_failed ? 1 : 0;
}
