/* Unit tests for fs/tree.c's table: every path of the README's tree matches the row it
 * should, names that are not in the tree match nothing, no row is shadowed by an earlier
 * one, patterns are filled in from entries, and the matcher the table and the agent's routes
 * share (util_path_match) takes what it should. The matcher looks at a path's shape only,
 * so no backend is needed. Prints TAP; exits non-zero when a check failed. */
#include <stdlib.h>
#include <string.h>

#include "backend/util.h"
#include "fs/tree.h"

#include "tests/unit/check.h"

static const struct {
	const char *path;
	enum tree_kind kind;
} tree_paths[] = {
	/* the README's "The tree", in its order */
	{"/", TREE_ROOT},
	{"/README", TREE_README},
	{"/config", TREE_CONFIG},
	{"/stats", TREE_STATS},
	{"/placement", TREE_PLACEMENT},
	{"/dashboard.html", TREE_DASHBOARD},
	{"/recent-tasks.json", TREE_RECENT_TASKS},
	{"/alerts", TREE_ALERTS},
	{"/events", TREE_EVENTS},
	{"/metrics", TREE_METRICS},
	{"/topology.json", TREE_TOPOLOGY_JSON},
	{"/topology.dot", TREE_TOPOLOGY_DOT},
	{"/health", TREE_HEALTH},
	{"/nodes", TREE_NODES},
	{"/nodes/spark1", TREE_NODE},
	{"/nodes/spark1/status", TREE_NODE_STATUS},
	{"/nodes/spark1/health", TREE_NODE_HEALTH},
	{"/nodes/spark1/info", TREE_NODE_INFO},
	{"/nodes/spark1/address", TREE_NODE_ADDRESS},
	{"/nodes/spark1/role", TREE_NODE_ROLE},
	{"/nodes/spark1/tier", TREE_NODE_TIER},
	{"/nodes/spark1/capabilities", TREE_NODE_CAPABILITIES},
	{"/nodes/spark1/reliability", TREE_NODE_RELIABILITY},
	{"/nodes/spark1/tasks", TREE_NODE_TASKS},
	{"/nodes/spark1/tasks/build-1", TREE_NODE_TASK_LINK},
	{"/nodes/spark1/ctl", TREE_NODE_CTL},
	{"/nodes/spark1/models", TREE_NODE_MODELS},
	{"/nodes/spark1/models/llama3%3A8b", TREE_NODE_MODEL},
	{"/nodes/spark1/models/ctl", TREE_NODE_MODELS_CTL},
	{"/tasks", TREE_TASKS},
	{"/tasks/new", TREE_TASKS_NEW},
	{"/tasks/new/test.json", TREE_DRAFT},
	{"/tasks/new/test.error", TREE_DRAFT},
	{"/tasks/build-1", TREE_TASK},
	{"/tasks/build-1/spec", TREE_TASK_SPEC},
	{"/tasks/build-1/status", TREE_TASK_STATUS},
	{"/tasks/build-1/node", TREE_TASK_NODE},
	{"/tasks/build-1/exit_code", TREE_TASK_EXIT_CODE},
	{"/tasks/build-1/info", TREE_TASK_INFO},
	{"/tasks/build-1/stdout", TREE_TASK_STDOUT},
	{"/tasks/build-1/stderr", TREE_TASK_STDERR},
	{"/tasks/build-1/result", TREE_TASK_RESULT},
	{"/tasks/build-1/files", TREE_TASK_FILES},
	{"/knowledge", TREE_KNOWLEDGE},
	{"/knowledge/.versions", TREE_KNOWLEDGE_VERSIONS},
	{"/tasks/build-1/wait", TREE_TASK_WAIT},
	{"/tasks/build-1/ctl", TREE_TASK_CTL},
	{"/tasks/queued", TREE_TASKS_GROUP},
	{"/tasks/running", TREE_TASKS_GROUP},
	{"/tasks/done", TREE_TASKS_GROUP},
	{"/tasks/failed", TREE_TASKS_GROUP},
	{"/tasks/done/build-1", TREE_TASK_LINK},
	{"/models", TREE_MODELS},
	{"/models/llama3%3A8b", TREE_MODEL},
	{"/models/llama3%3A8b/nodes", TREE_MODEL_NODES},
	{"/models/llama3%3A8b/loaded", TREE_MODEL_LOADED},
	{"/models/llama3%3A8b/info", TREE_MODEL_INFO},
	{"/ledger", TREE_LEDGER},
	{"/ledger/entries", TREE_LEDGER_ENTRIES},
	{"/ledger/entries/1000", TREE_LEDGER_ENTRY},
	{"/ledger/best", TREE_LEDGER_BEST},
	{"/ledger/best/val_loss", TREE_LEDGER_BEST_FILE},
	{"/ledger/summary", TREE_LEDGER_SUMMARY},
	{"/ledger/record", TREE_LEDGER_RECORD},
	{"/ledger/source", TREE_LEDGER_SOURCE},
	{"/services", TREE_SERVICES},
	{"/services/inference", TREE_SERVICE},
	{"/services/inference/generate", TREE_SERVICE_FILE},
	{"/backup", TREE_BACKUP},
	{"/backup/state.db", TREE_BACKUP_STATE},
};

/* Not in the tree, whatever the backends hold. */
static const char *const not_paths[] = {
	"",
	"nodes",
	"//",
	"/nodes/",
	"/nodes//status",
	"/Stats",
	"/stats/",
	"/README/x",
	"/stats/x",
	"/bogus",
	"/nodes/spark1/bogus",
	"/nodes/spark1/status/x",
	"/nodes/spark1/tasks/build-1/spec",
	"/nodes/spark1/models/a/b",
	"/nodes/spark1/ctl/x",
	"/tasks/new/a/b",
	"/tasks/build-1/bogus",
	"/tasks/build-1/spec/x",
	"/tasks/done/build-1/spec",
	"/models/m/bogus",
	"/models/m/nodes/x",
	"/ledger/bogus",
	"/ledger/entries/1/x",
	"/ledger/record/x",
	"/services/a/b/c",
	"/backup/other.db",
	"/backup/state.db/x",
	"/a/b/c/d/e/f",
};

static void test_paths(void)
{
	for (size_t i = 0; i < sizeof(tree_paths) / sizeof(tree_paths[0]); i++) {
		const struct tree_row *row = tree_match(tree_paths[i].path, NULL, NULL);
		char name[128];
		snprintf(name, sizeof(name), "%s matches its row", tree_paths[i].path);
		CHECK(row && row->kind == tree_paths[i].kind, name);
	}
	for (size_t i = 0; i < sizeof(not_paths) / sizeof(not_paths[0]); i++) {
		char name[128];
		snprintf(name, sizeof(name), "\"%s\" matches nothing", not_paths[i]);
		CHECK(!tree_match(not_paths[i], NULL, NULL), name);
	}
}

static void test_captures(void)
{
	struct path_capture caps[TREE_MAX_PARAMS];
	size_t n = 9;
	const char *p = "/tasks/done/build-1";
	const struct tree_row *row = tree_match(p, caps, &n);
	CHECK(row && n == 2 && caps[0].len == 4 && !strncmp(p + caps[0].off, "done", 4) &&
		      caps[1].len == 7 && !strncmp(p + caps[1].off, "build-1", 7),
	      "a group's link captures the group and the task");
	p = "/nodes/spark1/models/ctl";
	row = tree_match(p, caps, &n);
	CHECK(row && row->kind == TREE_NODE_MODELS_CTL && n == 1 &&
		      !strncmp(p + caps[0].off, "spark1", caps[0].len),
	      "a literal row before a parameter's wins");
	row = tree_match("/", caps, &n);
	CHECK(row && row->kind == TREE_ROOT && n == 0, "the root captures nothing");
	p = "/tasks/t1/files/w/n2/model.npy";
	row = tree_match(p, caps, &n);
	CHECK(row && row->kind == TREE_TASK_FILES && n == 2 &&
		      !strcmp(p + caps[1].off, "w/n2/model.npy") && caps[1].len == 14,
	      "a rest parameter takes the rest of the path");
	CHECK(!tree_match("/tasks/t1/files/", caps, &n) &&
		      !tree_match("/tasks/t1/filesx/a", caps, &n),
	      "a rest parameter takes at least one segment, after its literal");
}

/* True when two patterns differ only in the name of their last, "{name*}", segment: rows
 * of one shape that tree_classify tells apart by what exists (an output's directory or
 * file). */
static bool same_rest_shape(const char *a, const char *b)
{
	const char *sa = strrchr(a, '/'), *sb = strrchr(b, '/');
	return sa - a == sb - b && !strncmp(a, b, (size_t) (sa - a)) && sa[1] == '{' &&
	       sb[1] == '{' && strstr(sa, "*}") && strstr(sb, "*}");
}

/* Each row's own pattern, its parameters filled with a name they accept, matches that row:
 * no row is shadowed by one before it (but by one of the same shape, see above). */
static void test_no_shadowed_rows(void)
{
	struct tree_entry e = {.node = "n1", .task = "t1", .name = "done", .file = "f1"};
	for (size_t i = 0; i < tree_n_rows; i++) {
		char *path = tree_format(tree_rows[i].pattern, &e);
		char name[160];
		snprintf(name, sizeof(name), "%s is reached by its paths", tree_rows[i].pattern);
		const struct tree_row *m = path ? tree_match(path, NULL, NULL) : NULL;
		CHECK(m && (m == &tree_rows[i] ||
			    same_rest_shape(m->pattern, tree_rows[i].pattern)),
		      name);
		free(path);
	}
}

/* What each row's type needs: a renderer for a file, no renderer for a directory, a
 * target for a link; a path-less parameter never appears in an invalidated file. */
static void test_rows_complete(void)
{
	bool ok = true;
	for (size_t i = 0; i < tree_n_rows; i++) {
		const struct tree_row *r = &tree_rows[i];
		if (r->type == TREE_FILE && !r->render && r->cache != TREE_CACHE_NONE)
			ok = false;
		if (r->type == TREE_DIR && r->render)
			ok = false;
		if ((r->type == TREE_LINK) != (r->target != NULL))
			ok = false;
		if ((r->inval & TREE_INVAL_CLUSTER) && strchr(r->pattern, '{'))
			ok = false;
		if ((r->inval & TREE_INVAL_NODE) && strncmp(r->pattern, "/nodes/{node}/", 14))
			ok = false;
		if (!ok) {
			printf("# row %s\n", r->pattern);
			break;
		}
	}
	CHECK(ok, "every row has what its type needs");
}

static void test_format(void)
{
	struct tree_entry e = {.node = "spark1", .task = "t1"};
	char *s = tree_format("/nodes/{node}/status", &e);
	CHECK(s && !strcmp(s, "/nodes/spark1/status"), "a pattern filled in");
	free(s);
	s = tree_format("../../../tasks/{task}", &e);
	CHECK(s && !strcmp(s, "../../../tasks/t1"), "a link target filled in");
	free(s);
	CHECK(!tree_format("/services/{service}", &e), "a parameter the entry lacks: NULL");
}

/* The matcher itself (backend/util.c), as the agent's routes use it: no accept check. */
static bool path_is(const char *pattern, const char *path, size_t want_n)
{
	struct path_capture caps[4];
	size_t n = 99;
	return util_path_match(pattern, path, NULL, NULL, caps, 4, &n) && n == want_n;
}

/* accept for the test below: refuses the run "no". */
static bool accept_not_no(void *arg, const char *param, size_t param_len, const char *s, size_t len)
{
	(*(int *) arg)++;
	return !(len == 2 && !memcmp(s, "no", 2));
}

static void test_path_match(void)
{
	struct path_capture caps[4];
	size_t n = 99;
	const char *p = "/api/tasks/t1/files/out/a.txt";
	CHECK(util_path_match("/api/tasks/{id}/files/{*}", p, NULL, NULL, caps, 4, &n) && n == 2 &&
		      caps[0].len == 2 && !strncmp(p + caps[0].off, "t1", 2) &&
		      !strcmp(p + caps[1].off, "out/a.txt") && caps[1].len == 9,
	      "path_match: a {param} takes a segment, a {*} tail the rest");
	CHECK(path_is("/api/node/health", "/api/node/health", 0) && path_is("/", "/", 0),
	      "path_match: literal patterns match themselves");
	CHECK(path_is("/a/{x}/{y}", "/a/1/2", 2) && path_is("/k/{doc*}", "/k/d", 1),
	      "path_match: named parameters and a one-segment tail");
	CHECK(!path_is("/api/node/health", "/api/node/healthz", 0) &&
		      !path_is("/api/node/health", "/api/node", 0) &&
		      !path_is("/api/node", "/api/node/health", 0) &&
		      !path_is("/api/node/health", "api/node/health", 0) && !path_is("/", "", 0) &&
		      !path_is("/a", "/", 0),
	      "path_match: a longer, shorter or relative path matches no literal pattern");
	CHECK(!path_is("/a/{x}", "/a/", 1) && !path_is("/a/{x}/b", "/a//b", 1) &&
		      !path_is("/a/{x*}", "/a/", 1) && !path_is("/a/{x*}", "/a", 1) &&
		      !path_is("/a/{x*}", "/a//b", 1) && !path_is("/a/{x}", "/a/b/c", 1),
	      "path_match: a parameter takes one non-empty segment, a tail at least one");
	CHECK(path_is("/a/{x*}/b", "/a/1/b", 1) && !path_is("/a/{x*}/b", "/a/1/2/b", 1),
	      "path_match: a tail not last in its pattern takes one segment");
	CHECK(!util_path_match("/{a}/{b}/{c}", "/1/2/3", NULL, NULL, caps, 2, &n),
	      "path_match: more parameters than room for captures matches nothing");
	int asked = 0;
	CHECK(util_path_match("/n/{node}/{f}", "/n/yes/f", accept_not_no, &asked, caps, 4, &n) &&
		      asked == 2 &&
		      !util_path_match("/n/{node}/{f}", "/n/no/f", accept_not_no, &asked, caps, 4,
				       &n) &&
		      asked == 3,
	      "path_match: accept is asked of each parameter and may refuse one");
}

int main(void)
{
	test_path_match();
	test_paths();
	test_captures();
	test_no_shadowed_rows();
	test_rows_complete();
	test_format();
	return check_done();
}
