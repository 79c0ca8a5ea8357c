/* Unit tests for backend/tasks: the state machine (queued -> dispatched -> running -> an
 * end), what it refuses, retries (a spec's "retries" and tasks_retry_policy), and "after"
 * dependencies. The module runs in-process over a real store in a temporary directory
 * and a real cluster model. No loop thread runs and no agent answers: this program is the
 * loop thread (loop_is_current() holds while none runs), calls the tick itself, and a
 * dispatch target (struct tasks_target, the seam backend/slurm.c uses) takes the agent
 * requests, which the checks answer by hand as an agent would. Nothing waits on a clock.
 * Prints TAP ("ok N - name"); exits non-zero when any check failed. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/cluster.h"
#include "backend/loop.h"
#include "backend/store.h"
#include "backend/tasks.h"
#include "backend/tasks_internal.h"
#include "backend/util.h"
#include "config/config.h"

#include "tests/unit/check.h"

/* ---- the agent's side: requests kept until a check answers them ---- */

struct rpc {
	char *method, *path, *body;
	http_done_fn done;
	void *arg;
	struct rpc *next;
};

static struct rpc *rpcs;

static bool target_owns(void *arg, const char *node)
{
	(void) arg;
	return !strcmp(node, "n1");
}

static int target_call(void *arg, const char *node, const char *method, const char *path,
		       const char *body, http_done_fn done, void *done_arg)
{
	(void) arg;
	(void) node;
	struct rpc *r = xcalloc(1, sizeof(*r)), **pp = &rpcs;
	r->method = xstrdup(method);
	r->path = xstrdup(path);
	r->body = body ? xstrdup(body) : NULL;
	r->done = done;
	r->arg = done_arg;
	while (*pp)
		pp = &(*pp)->next;
	*pp = r;
	return 0;
}

/* Takes the oldest request `method` whose path starts with `path`, or NULL. */
static struct rpc *rpc_take(const char *method, const char *path)
{
	for (struct rpc **pp = &rpcs; *pp; pp = &(*pp)->next) {
		struct rpc *r = *pp;
		if (!strcmp(r->method, method) && !strncmp(r->path, path, strlen(path))) {
			*pp = r->next;
			return r;
		}
	}
	return NULL;
}

static size_t rpc_count(const char *method, const char *path)
{
	size_t n = 0;
	for (struct rpc *r = rpcs; r; r = r->next)
		n += !strcmp(r->method, method) && !strncmp(r->path, path, strlen(path));
	return n;
}

/* Answers a request as an agent would (status 0: no answer came) and frees it. */
static void rpc_answer(struct rpc *r, long status, const char *body)
{
	if (!r)
		return; /* the check that wanted it fails */
	bool ok = status >= 200 && status < 300;
	struct http_response resp = {
		.error = ok       ? 0
			 : status ? http_error_to_errno(0, status)
				  : -ECONNREFUSED,
		.status = status,
		.body = body ? body : "",
		.body_len = body ? strlen(body) : 0,
		.error_text = ok ? "" : "refused",
	};
	r->done(r->arg, &resp);
	free(r->method);
	free(r->path);
	free(r->body);
	free(r);
}

/* Answers every request left with "no answer", as a stopping loop does. */
static void rpc_drain(void)
{
	while (rpcs) {
		struct rpc *r = rpcs;
		rpcs = r->next;
		struct http_response resp = {.error = -ECANCELED, .body = "", .error_text = "x"};
		r->done(r->arg, &resp);
		free(r->method);
		free(r->path);
		free(r->body);
		free(r);
	}
}

/* ---- the control plane ---- */

struct plane {
	char dir[64];
	struct config *cfg;
	struct loop *loop;
	struct cluster *cluster;
	struct store *store;
	struct tasks *tasks;
};

static void plane_up(struct plane *p)
{
	/* n1 goes to the target, which takes only tasks that name it: type "job" does */
	static const char text[] = "{\"hosts\": {\"n1\": {\"host\": \"127.0.0.1\"}},"
				   " \"routing\": {\"job\": {\"hosts\": [\"n1\"]}},"
				   " \"tasks\": {\"allow_root\": true}}";
	char err[512] = "";
	snprintf(p->dir, sizeof(p->dir), "/tmp/test-tasks.XXXXXX");
	struct tasks_target target = {.owns = target_owns, .call = target_call};
	if (!mkdtemp(p->dir) ||
	    config_load_string(text, "t.json", NULL, &p->cfg, err, sizeof(err)) != 0 ||
	    loop_new(&p->loop) < 0 || cluster_new(p->loop, p->cfg, &p->cluster) < 0 ||
	    store_open(p->dir, &p->store, err, sizeof(err)) < 0 ||
	    tasks_new(p->loop, p->cluster, p->store, &p->tasks) < 0) {
		printf("# setup failed: %s\n", err);
		exit(2);
	}
	tasks_set_target(p->tasks, &target);
	if (tasks_start(p->tasks) < 0) {
		printf("# tasks_start failed\n");
		exit(2);
	}
	/* n1 is healthy: a heartbeat counts as a successful probe */
	json_t *health = json_pack("{sf sf sf s[fff] si si sf}", "cpu_percent", 5.0, "mem_percent",
				   10.0, "disk_percent", 10.0, "load", 0.1, 0.1, 0.1, "cores", 8,
				   "mem_total_mb", 16000, "mem_available_mb", 14000.0);
	json_t *system = json_pack("{si si}", "cores", 8, "ram_mb", 16000);
	if (cluster_heartbeat(p->cluster, "n1", health, system) < 0) {
		printf("# heartbeat refused\n");
		exit(2);
	}
	json_decref(health);
	json_decref(system);
}

static void plane_down(struct plane *p)
{
	rpc_drain();
	tasks_free(p->tasks);
	cluster_free(p->cluster);
	loop_free(p->loop);
	store_close(p->store);
	config_unref(p->cfg);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", p->dir);
	if (system(cmd) != 0)
		printf("# cannot remove %s\n", p->dir);
}

static int submit(struct plane *p, const char *id, const char *spec)
{
	char err[512] = "";
	int r = tasks_submit(p->tasks, id, spec, strlen(spec), getuid(), getgid(), err,
			     sizeof(err));
	if (r < 0)
		printf("# submit %s: %s\n", id, err);
	return r;
}

/* The task's state, reason, attempts and dispatch id, into static buffers. */
static char got_state[32], got_reason[512], got_dispatch[256];
static int got_attempts, got_exit;

static bool view(struct plane *p, const char *id)
{
	struct task_view v;
	got_state[0] = got_reason[0] = got_dispatch[0] = '\0';
	if (tasks_get(p->tasks, id, &v) < 0) {
		printf("# %s: no such task\n", id);
		return false;
	}
	snprintf(got_state, sizeof(got_state), "%s", v.state);
	snprintf(got_reason, sizeof(got_reason), "%s", v.reason ? v.reason : "");
	snprintf(got_dispatch, sizeof(got_dispatch), "%s", v.dispatch_id ? v.dispatch_id : "");
	got_attempts = v.attempts;
	got_exit = v.exit_code;
	task_view_clear(&v);
	return true;
}

static bool state_is(struct plane *p, const char *id, const char *want)
{
	if (!view(p, id))
		return false;
	if (!strcmp(got_state, want))
		return true;
	printf("# %s: want %s, got %s (%s)\n", id, want, got_state, got_reason);
	return false;
}

/* The agent's task object for the current attempt of `id`, in its poll answer. */
static void poll_answer(struct plane *p, const char *id, const char *state, int exit_code)
{
	struct rpc *r = rpc_take("GET", "/api/node/tasks");
	while (r && strchr(r->path + strlen("/api/node/tasks"), '/')) {
		/* an output fetch: nothing to give */
		rpc_answer(r, 200, "");
		r = rpc_take("GET", "/api/node/tasks");
	}
	if (!r) {
		tasks_tick(p->tasks); /* polls the nodes with work */
		r = rpc_take("GET", "/api/node/tasks");
	}
	if (!r) {
		printf("# no poll of n1 to answer\n");
		return;
	}
	view(p, id); /* for its dispatch id */
	char body[768];
	snprintf(body, sizeof(body),
		 "{\"time\": 1, \"tasks\": [{\"id\": \"%s\", \"state\": \"%s\", \"exit_code\": %d,"
		 " \"stdout_size\": 0, \"stderr_size\": 0}]}",
		 got_dispatch, state, exit_code);
	rpc_answer(r, 200, body);
}

/* Dispatched, taken by the agent (201), running. */
static bool run_to_running(struct plane *p, const char *id)
{
	tasks_tick(p->tasks);
	if (!state_is(p, id, TASK_DISPATCHED))
		return false;
	struct rpc *r = rpc_take("POST", "/api/node/tasks");
	if (!r)
		return false;
	json_t *body = json_loads(r->body, 0, NULL);
	bool same_id = !strcmp(json_string_value(json_object_get(body, "id")), got_dispatch);
	json_decref(body);
	char answer[300];
	snprintf(answer, sizeof(answer), "{\"id\": \"%s\", \"state\": \"running\"}", got_dispatch);
	rpc_answer(r, 201, answer);
	return same_id && state_is(p, id, TASK_RUNNING);
}

/* ---- waiting ---- */

struct woken {
	int calls;
	char state[32];
	int exit_code;
};

static void on_end(void *arg, const char *state, int exit_code)
{
	struct woken *w = arg;
	w->calls++;
	snprintf(w->state, sizeof(w->state), "%s", state ? state : "(none)");
	w->exit_code = exit_code;
}

/* ---- the checks ---- */

static void test_success(void)
{
	struct plane p;
	plane_up(&p);
	CHECK(submit(&p, "a", "{\"type\": \"job\", \"cmd\": \"echo hi\"}") == 0,
	      "submit: accepted");
	CHECK(state_is(&p, "a", TASK_QUEUED) && got_attempts == 0 && !got_dispatch[0],
	      "submit: queued, no attempt yet");
	struct woken w = {0};
	CHECK(tasks_wait(p.tasks, "a", tasks_wait_new_id(p.tasks), on_end, &w) == 0,
	      "wait: registered on an unfinished task");

	tasks_tick(p.tasks);
	CHECK(state_is(&p, "a", TASK_DISPATCHED) && got_attempts == 1,
	      "tick: placed and dispatched, attempt 1");
	char want_suffix[16];
	snprintf(want_suffix, sizeof(want_suffix), ".a.1");
	size_t dl = strlen(got_dispatch);
	CHECK(dl > 4 && !strcmp(got_dispatch + dl - 4, want_suffix),
	      "tick: the dispatch id names the task and the attempt");
	CHECK(rpc_count("POST", "/api/node/tasks") == 1, "tick: one dispatch sent to the node");
	tasks_tick(p.tasks);
	CHECK(rpc_count("POST", "/api/node/tasks") == 1,
	      "tick: a dispatch in flight is not sent twice");

	struct rpc *r = rpc_take("POST", "/api/node/tasks");
	char answer[300];
	snprintf(answer, sizeof(answer), "{\"id\": \"%s\", \"state\": \"running\"}", got_dispatch);
	rpc_answer(r, 201, answer);
	CHECK(state_is(&p, "a", TASK_RUNNING), "dispatch taken: running");
	CHECK(w.calls == 0, "wait: not woken while it runs");

	/* the agent reports the end with output to fetch */
	char did[256];
	snprintf(did, sizeof(did), "%s", got_dispatch);
	r = rpc_take("GET", "/api/node/tasks");
	if (!r) {
		tasks_tick(p.tasks);
		r = rpc_take("GET", "/api/node/tasks");
	}
	CHECK(r != NULL, "running: the node is polled");
	char body[512];
	snprintf(body, sizeof(body),
		 "{\"time\": 1, \"tasks\": [{\"id\": \"%s\", \"state\": \"succeeded\","
		 " \"exit_code\": 0, \"stdout_size\": 3, \"stderr_size\": 0}]}",
		 did);
	if (r)
		rpc_answer(r, 200, body);
	CHECK(state_is(&p, "a", TASK_RUNNING),
	      "ended there: still running until its output is here");
	char path[320];
	snprintf(path, sizeof(path), "/api/node/tasks/%s/stdout?offset=0", did);
	r = rpc_take("GET", path);
	CHECK(r != NULL, "ended there: its stdout is fetched");
	if (r)
		rpc_answer(r, 200, "hi\n");
	CHECK(state_is(&p, "a", TASK_SUCCEEDED) && got_exit == 0, "output here: succeeded, exit 0");
	CHECK(w.calls == 1 && !strcmp(w.state, TASK_SUCCEEDED) && w.exit_code == 0,
	      "wait: woken once with the final state");
	struct buf out;
	buf_init(&out);
	CHECK(tasks_read_output(p.tasks, "a", "stdout", 0, &out) == 0 && out.len == 3 &&
		      !memcmp(out.data, "hi\n", 3),
	      "output: what the agent gave, from the store once it ended");
	buf_free(&out);
	CHECK(tasks_wait(p.tasks, "a", tasks_wait_new_id(p.tasks), on_end, &w) == 1,
	      "wait: a final task answers at once");

	/* refused: what would leave a final state */
	r = rpc_take("GET", "/api/node/tasks");
	if (!r) {
		tasks_tick(p.tasks);
		r = rpc_take("GET", "/api/node/tasks");
	}
	if (r) {
		snprintf(body, sizeof(body),
			 "{\"time\": 2, \"tasks\": [{\"id\": \"%s\", \"state\": \"running\"}]}",
			 did);
		rpc_answer(r, 200, body);
	}
	CHECK(state_is(&p, "a", TASK_SUCCEEDED), "refused: a late answer does not undo the end");
	char err[256] = "";
	CHECK(tasks_control(p.tasks, "a", "cancel", getuid(), err, sizeof(err)) == -EBUSY &&
		      strstr(err, "has ended"),
	      "refused: cancel of a finished task is EBUSY");
	CHECK(tasks_control(p.tasks, "a", "retry", getuid(), err, sizeof(err)) == -EBUSY,
	      "refused: retry of a succeeded task is EBUSY");
	size_t counts[TASK_N_STATES];
	tasks_count_states(p.tasks, NULL, counts);
	CHECK(counts[TASK_S_SUCCEEDED] == 1 && counts[TASK_S_RUNNING] == 0 &&
		      counts[TASK_S_QUEUED] == 0,
	      "counts: one succeeded, none left running or queued");
	plane_down(&p);
}

static void test_refusals(void)
{
	struct plane p;
	plane_up(&p);
	char err[256] = "";
	CHECK(submit(&p, "r", "{\"type\": \"job\", \"cmd\": \"sleep 9\"}") == 0,
	      "refusals: submitted");
	CHECK(tasks_control(p.tasks, "r", "retry", getuid(), err, sizeof(err)) == -EBUSY &&
		      strstr(err, "is queued"),
	      "refused: retry of a queued task is EBUSY");
	CHECK(run_to_running(&p, "r"), "refusals: running");
	CHECK(tasks_control(p.tasks, "r", "retry", getuid(), err, sizeof(err)) == -EBUSY,
	      "refused: retry of a running task is EBUSY");
	CHECK(tasks_control(p.tasks, "r", "retry", getuid() + 1, err, sizeof(err)) == -EPERM,
	      "refused: another user may not control it");

	/* an answer about another attempt changes nothing (the agent's list has this one
	 * running: a full list without it would mean the agent lost it, and it is sent again) */
	char body[600];
	snprintf(body, sizeof(body),
		 "{\"time\": 1, \"tasks\": [{\"id\": \"other.r.9\", \"state\": \"failed\","
		 " \"exit_code\": 3}, {\"id\": \"%s\", \"state\": \"running\"}]}",
		 got_dispatch);
	struct rpc *r = rpc_take("GET", "/api/node/tasks");
	if (!r) {
		tasks_tick(p.tasks);
		r = rpc_take("GET", "/api/node/tasks");
	}
	CHECK(r != NULL, "refusals: the node is polled");
	rpc_answer(r, 200, body);
	CHECK(state_is(&p, "r", TASK_RUNNING) && rpc_count("POST", "/api/node/tasks") == 0,
	      "refused: an answer about another attempt");

	/* cancel: requested here, sent to the node, final when the node says so */
	CHECK(tasks_control(p.tasks, "r", "cancel", getuid(), err, sizeof(err)) == 0,
	      "cancel: accepted for a running task");
	CHECK(state_is(&p, "r", TASK_RUNNING), "cancel: still running until the node confirms");
	tasks_tick(p.tasks);
	char path[320];
	snprintf(path, sizeof(path), "/api/node/tasks/%s/cancel", got_dispatch);
	r = rpc_take("POST", path);
	CHECK(r != NULL, "cancel: sent to the node at the tick");
	if (r)
		rpc_answer(r, 200, "{}");
	poll_answer(&p, "r", TASK_CANCELLED, -1);
	CHECK(state_is(&p, "r", TASK_CANCELLED) && got_attempts == 1,
	      "cancel: cancelled once the node says so, not retried");

	/* a queued task is cancelled at once */
	CHECK(submit(&p, "q", "{\"type\": \"job\", \"cmd\": \"true\", \"requires\": [\"gpu\"]}") ==
		      0,
	      "cancel: a task that cannot be placed is submitted");
	tasks_tick(p.tasks);
	CHECK(state_is(&p, "q", TASK_QUEUED), "cancel: it waits, queued");
	CHECK(tasks_control(p.tasks, "q", "cancel", getuid(), err, sizeof(err)) == 0 &&
		      state_is(&p, "q", TASK_CANCELLED) && got_attempts == 0,
	      "cancel: a queued task ends at once, never dispatched");
	CHECK(tasks_control(p.tasks, "q", "retry", getuid(), err, sizeof(err)) == 0 &&
		      state_is(&p, "q", TASK_QUEUED) && !strcmp(got_reason, "retried by hand"),
	      "retry: a cancelled task is queued again by hand");

	/* an agent that refuses the spec: failed, with its sentence */
	CHECK(submit(&p, "b", "{\"type\": \"job\", \"cmd\": \"true\", \"retries\": 3}") == 0,
	      "refused: submitted");
	tasks_tick(p.tasks);
	r = rpc_take("POST", "/api/node/tasks");
	CHECK(r != NULL, "refused: dispatched");
	if (r)
		rpc_answer(r, 400, "{\"error\": \"cwd does not exist\"}");
	CHECK(state_is(&p, "b", TASK_FAILED) && strstr(got_reason, "cwd does not exist"),
	      "refused by the agent (400): failed with its reason");
	plane_down(&p);
}

static void test_retries(void)
{
	struct plane p;
	plane_up(&p);
	CHECK(submit(&p, "f", "{\"type\": \"job\", \"cmd\": \"false\", \"retries\": 1}") == 0,
	      "retries: submitted");
	CHECK(run_to_running(&p, "f"), "retries: attempt 1 runs");
	char first[256];
	snprintf(first, sizeof(first), "%s", got_dispatch);
	poll_answer(&p, "f", TASK_FAILED, 1);
	CHECK(state_is(&p, "f", TASK_QUEUED) && got_attempts == 1 &&
		      !strncmp(got_reason, "retry 1 of 1 after failed", 25),
	      "retries: a failed attempt is queued again (retry 1 of 1)");
	CHECK(run_to_running(&p, "f") && got_attempts == 2 && strcmp(got_dispatch, first),
	      "retries: attempt 2 runs under a new dispatch id");
	poll_answer(&p, "f", TASK_FAILED, 1);
	CHECK(state_is(&p, "f", TASK_FAILED) && got_attempts == 2 && got_exit == 1,
	      "retries: the last attempt's failure is final");

	plane_down(&p);

	/* a fresh node: two failures in a row made n1 too unreliable for new work */
	plane_up(&p);
	CHECK(submit(&p, "z", "{\"type\": \"job\", \"cmd\": \"false\"}") == 0 &&
		      run_to_running(&p, "z"),
	      "retries: a task without retries runs");
	poll_answer(&p, "z", TASK_TIMED_OUT, -1);
	CHECK(state_is(&p, "z", TASK_TIMED_OUT) && got_attempts == 1,
	      "retries: none asked, none made (timed out stays)");
	plane_down(&p);
}

static void test_retry_policy(void)
{
	struct task_spec *spec = NULL;
	char err[256];
	const char *text = "{\"cmd\": \"true\", \"retries\": 2}";
	if (spec_parse(text, strlen(text), &spec, err, sizeof(err)) < 0) {
		printf("# spec: %s\n", err);
		exit(2);
	}
	struct task k = {.spec = spec};
	k.row.attempts = 1;
	CHECK(tasks_retry_policy(RETRY_ATTEMPT, &k, TASK_S_FAILED, 1, NULL),
	      "policy: attempt 1 of retries 2 failed: again");
	k.row.attempts = 2;
	CHECK(tasks_retry_policy(RETRY_ATTEMPT, &k, TASK_S_LOST, 2, NULL),
	      "policy: attempt 2 lost: again");
	k.row.attempts = 3;
	CHECK(!tasks_retry_policy(RETRY_ATTEMPT, &k, TASK_S_TIMED_OUT, 3, NULL),
	      "policy: attempt 3 of retries 2: no more");
	k.row.attempts = 1;
	CHECK(!tasks_retry_policy(RETRY_ATTEMPT, &k, TASK_S_CANCELLED, 1, NULL),
	      "policy: a cancelled attempt is never retried");
	k.cancel_requested = true;
	CHECK(!tasks_retry_policy(RETRY_ATTEMPT, &k, TASK_S_FAILED, 1, NULL),
	      "policy: nor one whose cancel was asked");
	k.cancel_requested = false;
	char parent[] = "all-1";
	k.row.parent = parent;
	CHECK(!tasks_retry_policy(RETRY_ATTEMPT, &k, TASK_S_FAILED, 1, NULL),
	      "policy: a copy of a node:\"all\" task is not retried on its own");
	k.row.parent = NULL;

	uint64_t before = clock_now_us(), due1 = 0, due5 = 0, due_many = 0;
	CHECK(tasks_retry_policy(RETRY_DISPATCH, &k, _TASK_STATE_INVALID, 1, &due1) &&
		      tasks_retry_policy(RETRY_DISPATCH, &k, _TASK_STATE_INVALID, 5, &due5) &&
		      tasks_retry_policy(RETRY_DISPATCH, &k, _TASK_STATE_INVALID, 1000, &due_many),
	      "policy: a dispatch is sent again however often it failed");
	uint64_t after = clock_now_us();
	CHECK(due1 >= before + RETRY_FIRST_US && due1 <= after + RETRY_FIRST_US,
	      "policy: the first wait is RETRY_FIRST_US");
	CHECK(due5 >= before + 16 * RETRY_FIRST_US && due5 <= after + 16 * RETRY_FIRST_US,
	      "policy: the wait doubles per failure in a row");
	CHECK(due_many >= before + RETRY_MAX_US && due_many <= after + RETRY_MAX_US,
	      "policy: the wait stops growing at RETRY_MAX_US");
	CHECK(tasks_retry_policy(RETRY_FETCH, &k, _TASK_STATE_INVALID, FETCH_TRIES - 1, NULL) &&
		      !tasks_retry_policy(RETRY_FETCH, &k, _TASK_STATE_INVALID, FETCH_TRIES, NULL),
	      "policy: a fetch gives up after FETCH_TRIES failures");
	CHECK(tasks_retry_policy(RETRY_STAGE, &k, _TASK_STATE_INVALID, STAGE_TRIES, NULL) &&
		      !tasks_retry_policy(RETRY_STAGE, &k, _TASK_STATE_INVALID, STAGE_TRIES + 1,
					  NULL),
	      "policy: a staging gives up after STAGE_TRIES");
	CHECK(tasks_retry_policy(RETRY_CANCEL, &k, _TASK_STATE_INVALID, 1, NULL),
	      "policy: a cancel is sent again");
	spec_free(spec);
}

static void test_states(void)
{
	bool names = true;
	for (int s = 0; s < _TASK_STATE_MAX; s++)
		names &= task_state_from_string(task_state_names[s]) == (enum task_state) s;
	CHECK(names, "states: each name gives its state back");
	CHECK(task_state_from_string("done") == _TASK_STATE_INVALID &&
		      task_state_from_string("") == _TASK_STATE_INVALID,
	      "states: other names are invalid");
	CHECK(!task_state_is_final(TASK_QUEUED) && !task_state_is_final(TASK_DISPATCHED) &&
		      !task_state_is_final(TASK_RUNNING) && task_state_is_final(TASK_SUCCEEDED) &&
		      task_state_is_final(TASK_FAILED) && task_state_is_final(TASK_TIMED_OUT) &&
		      task_state_is_final(TASK_CANCELLED) && task_state_is_final(TASK_LOST),
	      "states: the final ones are the four ends and lost");
	CHECK(tasks_state_in_group(TASK_DISPATCHED, "running") &&
		      tasks_state_in_group(TASK_RUNNING, "running") &&
		      tasks_state_in_group(TASK_SUCCEEDED, "done") &&
		      tasks_state_in_group(TASK_LOST, "failed") &&
		      tasks_state_in_group(TASK_CANCELLED, "failed") &&
		      !tasks_state_in_group(TASK_QUEUED, "running") &&
		      !tasks_state_in_group(TASK_SUCCEEDED, "failed") &&
		      !tasks_state_in_group(TASK_RUNNING, "nonsense"),
	      "states: the groups of tasks/");
}

static void test_after(void)
{
	struct plane p;
	plane_up(&p);
	CHECK(submit(&p, "parent", "{\"type\": \"job\", \"cmd\": \"make\"}") == 0 &&
		      submit(&p, "child",
			     "{\"type\": \"job\", \"cmd\": \"test\", \"after\": [\"parent\"]}") ==
			      0,
	      "after: parent and child submitted");
	CHECK(submit(&p, "orphan", "{\"type\": \"job\", \"cmd\": \"x\", \"after\": [\"nobody\"]}") <
		      0,
	      "after: a dependency that does not exist is refused at submission");
	CHECK(run_to_running(&p, "parent"), "after: the parent runs");
	CHECK(state_is(&p, "child", TASK_QUEUED) && strstr(got_reason, "waiting for") &&
		      got_attempts == 0,
	      "after: the child waits, queued, and says why");
	CHECK(rpc_count("POST", "/api/node/tasks") == 0, "after: the child is not dispatched");
	poll_answer(&p, "parent", TASK_SUCCEEDED, 0);
	CHECK(state_is(&p, "parent", TASK_SUCCEEDED), "after: the parent succeeds");
	CHECK(run_to_running(&p, "child"), "after: then the child is dispatched and runs");

	/* a parent that fails fails its children, which never run */
	CHECK(submit(&p, "p2", "{\"type\": \"job\", \"cmd\": \"make\"}") == 0 &&
		      submit(&p, "c2",
			     "{\"type\": \"job\", \"cmd\": \"test\", \"after\": [\"p2\"]}") == 0,
	      "after: a second pair submitted");
	CHECK(run_to_running(&p, "p2"), "after: the second parent runs");
	poll_answer(&p, "p2", TASK_FAILED, 2);
	CHECK(state_is(&p, "p2", TASK_FAILED), "after: the second parent fails");
	tasks_tick(p.tasks);
	CHECK(state_is(&p, "c2", TASK_FAILED) &&
		      strstr(got_reason, "dependency p2 did not succeed") && got_attempts == 0,
	      "after: its child fails without running, and says which dependency");
	plane_down(&p);
}

int main(void)
{
	log_set_level(LOG_ERR);
	test_states();
	test_retry_policy();
	test_success();
	test_refusals();
	test_retries();
	test_after();
	return check_done();
}
