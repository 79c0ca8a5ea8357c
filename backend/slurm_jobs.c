/* Slurm, tasks: the agent's task protocol answered in-process for the Slurm cluster's node,
 * each call translated to slurmrestd (a dispatch is a batch job named by its dispatch id,
 * a poll lists the jobs, output is read from output_dir, a cancel deletes the job). */
#include "backend/slurm_internal.h"
#include "httpd/agent_api.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define POLL_HOLD_US (250 * 1000ull) /* a task poll is answered this late, like an agent's */

/* ---- tasks: the agent's protocol, answered from slurmrestd ---- */

bool slurm_owns_node(void *arg, const char *node)
{
	struct slurm *s = arg;
	struct config *cfg = cluster_get_config(s->cluster);
	bool owns = cfg->slurm && !strcmp(cfg->slurm->name, node);
	config_unref(cfg);
	return owns;
}

enum call_kind { CALL_SUBMIT, CALL_POLL, CALL_OUTPUT, CALL_CANCEL };

/* One call of the agent protocol in progress. */
struct tcall {
	struct slurm *s;
	enum call_kind kind;
	http_done_fn done;
	void *arg;
	json_t *body; /* the dispatch (CALL_SUBMIT) */
	char *id;     /* the dispatch id (CALL_SUBMIT, CALL_OUTPUT, CALL_CANCEL) */
	int stream;   /* 0 stdout, 1 stderr */
	size_t offset, limit;
	uint64_t started_us;
	struct buf answer;
	long status;
	int error;
	char *error_text;
};

static void tcall_free(struct tcall *c)
{
	json_decref(c->body);
	free(c->id);
	buf_free(&c->answer);
	free(c->error_text);
	free(c);
}

/* Hands the answer to the caller and frees the call. */
static void tcall_finish(struct tcall *c)
{
	assert(loop_is_current(c->s->loop));
	struct http_response resp = {
		.error = c->error,
		.status = c->status,
		.body = c->answer.data ? c->answer.data : "",
		.body_len = c->answer.len,
		.elapsed_ms = (double) (clock_now_us() - c->started_us) / 1000.0,
		.error_text = c->error_text ? c->error_text : "",
	};
	c->done(c->arg, &resp);
	tcall_free(c);
}

static void tcall_finish_on_timer(void *arg)
{
	tcall_finish(arg);
}

/* Answers later on the loop thread (callers hold their locks while they call). */
static void tcall_answer(struct tcall *c, uint64_t delay_us)
{
	loop_timer_add(c->s->loop, clock_now_us() + delay_us, tcall_finish_on_timer, c);
}

/* Sets the answer to 200 with the document o, as an agent would send it. Steals o. */
static void tcall_set_doc(struct tcall *c, json_t *o)
{
	char *text = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	buf_puts(&c->answer, text ? text : "");
	free(text);
	c->status = 200;
}

static void tcall_set_error(struct tcall *c, const struct http_response *r)
{
	struct buf why;
	buf_init(&why);
	slurm_describe_error(r, &why);
	c->error = r->error ? r->error : -EPROTO;
	c->status = r->status;
	free(c->error_text);
	c->error_text = buf_steal(&why, NULL);
}

static void output_path(const struct cfg_slurm *sl, const char *id, int stream, struct buf *out)
{
	buf_printf(out, "%s/%s.%s", sl->output_dir, id, stream ? "err" : "out");
}

static long long file_size(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 ? (long long) st.st_size : 0;
}

/* A Slurm job as the agent's task object: id, state, exit_code, sizes, error. */
static json_t *job_as_task(const struct cfg_slurm *sl, json_t *job)
{
	const char *name = json_string_value(json_object_get(job, "name"));
	const char *st = json_string_value(json_object_get(job, "job_state"));
	const char *reason = json_string_value(json_object_get(job, "state_reason"));
	int raw = (int) json_integer_value(json_object_get(job, "exit_code"));
	const char *state = "running";
	char error[300] = "";
	int exit_code = -1;
	if (!st)
		st = "UNKNOWN";
	/* exit_code is a wait status: the code in the high byte, a signal in the low */
	int code = (raw & 0x7f) ? 128 + (raw & 0x7f) : (raw >> 8) & 0xff;
	if (!strcmp(st, "COMPLETED")) {
		state = "succeeded";
		exit_code = code;
	} else if (!strcmp(st, "FAILED")) {
		state = "failed";
		exit_code = code;
	} else if (!strcmp(st, "TIMEOUT")) {
		state = "timed_out";
		snprintf(error, sizeof(error), "Slurm ended it at its time limit");
	} else if (!strcmp(st, "CANCELLED") && reason &&
		   !strcmp(reason, "DependencyNeverSatisfied")) {
		state = "failed";
		snprintf(error, sizeof(error),
			 "a task in \"after\" did not succeed (Slurm: DependencyNeverSatisfied)");
	} else if (!strcmp(st, "CANCELLED")) {
		state = "cancelled";
	} else if (!strcmp(st, "NODE_FAIL") || !strcmp(st, "BOOT_FAIL") ||
		   !strcmp(st, "OUT_OF_MEMORY") || !strcmp(st, "DEADLINE") ||
		   !strcmp(st, "PREEMPTED")) {
		state = "failed";
		exit_code = code;
		snprintf(error, sizeof(error), "Slurm job state %s%s%s", st,
			 reason && strcmp(reason, "None") ? ": " : "",
			 reason && strcmp(reason, "None") ? reason : "");
	}
	struct buf p;
	buf_init(&p);
	output_path(sl, name, 0, &p);
	long long out = file_size(p.data);
	p.len = 0;
	output_path(sl, name, 1, &p);
	long long err = file_size(p.data);
	buf_free(&p);
	json_t *o = json_pack("{ss ss sI sI sI sI ss ss}", "id", name, "state", state,
			      "stdout_size", (json_int_t) out, "stderr_size", (json_int_t) err,
			      "slurm_job_id", json_integer_value(json_object_get(job, "job_id")),
			      "exit_code", (json_int_t) exit_code, "slurm_state", st, "slurm_node",
			      json_string_value(json_object_get(job, "nodes")) ?: "");
	if (error[0])
		json_object_set_new(o, "error", json_string(error));
	json_object_set_new(o, "slurm_reason", json_string(reason ? reason : ""));
	static const char *const times[] = {"submit_time", "start_time", "end_time"};
	json_t *tv = json_object();
	for (size_t i = 0; i < 3; i++) {
		json_int_t v = json_integer_value(json_object_get(job, times[i]));
		json_object_set_new(tv, times[i], v > 0 ? json_integer(v) : json_null());
	}
	json_object_set_new(o, "slurm_times", tv);
	return o;
}

/* Our jobs in a job listing, by name; learns their job ids. New reference. */
static json_t *jobs_index(struct slurm *s, json_t *doc)
{
	json_t *by_name = json_object(), *job;
	size_t i;
	json_array_foreach (json_object_get(doc, "jobs"), i, job) {
		const char *name = json_string_value(json_object_get(job, "name"));
		if (!name || !strchr(name, '.'))
			continue; /* not a dispatch id: not ours */
		json_t *old = json_object_get(by_name, name);
		/* the newest job of a name wins (a requeue keeps the id anyway) */
		if (old && json_integer_value(json_object_get(old, "job_id")) >
				   json_integer_value(json_object_get(job, "job_id")))
			continue;
		json_object_set(by_name, name, job);
		json_object_set_new(
			s->jobs, name,
			json_integer(json_integer_value(json_object_get(job, "job_id"))));
	}
	return by_name;
}

static void shell_quote(struct buf *b, const char *w)
{
	buf_puts(b, "'");
	for (const char *p = w; *p; p++) {
		if (*p == '\'')
			buf_puts(b, "'\\''");
		else
			buf_append(b, p, 1);
	}
	buf_puts(b, "'");
}

static void submit_done(void *arg, const struct http_response *r);

/* POSTs the job for dispatch c (known not to exist in Slurm). */
/* Output of this dispatch id exists, but slurmctld knows no job of that name: it ran, and
 * Slurm purged it (MinJobAge) while no control plane watched. Then the call is answered
 * (lost, not submitted again) and true returned. */
static bool submit_answer_purged(struct tcall *c, const struct cfg_slurm *sl)
{
	struct buf path;
	buf_init(&path);
	output_path(sl, c->id, 0, &path);
	long long out = file_size(path.data);
	bool ran = access(path.data, F_OK) == 0;
	path.len = 0;
	output_path(sl, c->id, 1, &path);
	long long err = file_size(path.data);
	ran = ran || access(path.data, F_OK) == 0;
	path.len = 0;
	if (ran) {
		json_t *o = json_pack(
			"{ss ss sI sI si ss}", "id", c->id, "state", "lost", "stdout_size",
			(json_int_t) out, "stderr_size", (json_int_t) err, "exit_code", -1, "error",
			"its Slurm job ended and was purged by slurmctld (MinJobAge) before clusterfs "
			"saw its end; its output is kept, and it is not submitted again");
		tcall_set_doc(c, o);
		buf_free(&path);
		tcall_answer(c, 0);
		return true;
	}
	buf_free(&path);
	return false;
}

/* The job's script: the command as a shell line, or exec of its quoted words. */
static void submit_script(json_t *cmd, struct buf *script)
{
	buf_puts(script, "#!/bin/sh\n");
	if (json_is_string(cmd)) {
		buf_puts(script, json_string_value(cmd));
		buf_puts(script, "\n");
	} else {
		buf_puts(script, "exec");
		json_t *w;
		size_t i;
		json_array_foreach (cmd, i, w) {
			buf_puts(script, " ");
			shell_quote(script, json_string_value(w) ?: "");
		}
		buf_puts(script, "\n");
	}
}

/* The job's limits and order from the task: time limit, cpus, memory, gpus, priority as
 * nice, and its dependencies on jobs this cluster runs (afterok). */
static void submit_limits(struct tcall *c, json_t *d, json_t *job)
{
	json_int_t timeout = json_integer_value(json_object_get(d, "timeout_s"));
	if (timeout > 0)
		/* Slurm's limit is in minutes: the next whole minute */
		json_object_set_new(job, "time_limit", json_integer((timeout + 59) / 60));
	json_int_t cpus = json_integer_value(json_object_get(d, "cpus"));
	json_int_t mem = json_integer_value(json_object_get(d, "mem_mb"));
	json_int_t gpus = json_integer_value(json_object_get(d, "gpus"));
	if (cpus > 0)
		json_object_set_new(job, "cpus_per_task", json_integer(cpus));
	if (mem > 0)
		json_object_set_new(job, "memory_per_node", json_integer(mem));
	if (gpus > 0) {
		char g[32];
		snprintf(g, sizeof(g), "gpu:%lld", (long long) gpus);
		json_object_set_new(job, "gres", json_string(g));
	}
	/* P0..P3 as nice 0, 100, 200, 300: lower goes first among our jobs */
	json_t *prio = json_object_get(d, "priority");
	if (json_is_integer(prio) && json_integer_value(prio) > 0)
		json_object_set_new(job, "nice", json_integer(100 * json_integer_value(prio)));
	/* dependencies that run in Slurm too: Slurm holds the job until they succeeded, and
	 * cancels it when one did not (kill_on_invalid_dependency) */
	json_t *after = json_object_get(d, "after_dispatch"), *a;
	size_t ai;
	struct buf dep;
	buf_init(&dep);
	json_array_foreach (after, ai, a) {
		json_t *jid = json_object_get(c->s->jobs, json_string_value(a) ?: "");
		if (jid)
			buf_printf(&dep, "%s%lld",
				   dep.len ? ":" : "afterok:", (long long) json_integer_value(jid));
	}
	if (dep.len) {
		json_object_set_new(job, "dependency", json_string(dep.data));
		json_object_set_new(job, "kill_on_invalid_dependency", json_true());
	}
	buf_free(&dep);
}

static void submit_send(struct tcall *c, struct config *cfg)
{
	const struct cfg_slurm *sl = cfg->slurm;
	json_t *d = c->body;
	struct buf script, path;
	buf_init(&script);
	buf_init(&path);
	if (submit_answer_purged(c, sl)) {
		buf_free(&path);
		buf_free(&script);
		return;
	}
	submit_script(json_object_get(d, "cmd"), &script);
	json_t *env = json_pack("{ss ss}", "PATH", "/usr/local/bin:/usr/bin:/bin", "CLUSTERFS_TASK",
				c->id);
	json_object_update(env, json_object_get(d, "env"));
	json_t *job = json_pack("{ss ss so ss}", "name", c->id, "partition", sl->partition,
				"environment", env, "current_working_directory",
				json_string_value(json_object_get(d, "cwd")) ?: sl->output_dir);
	output_path(sl, c->id, 0, &path);
	json_object_set_new(job, "standard_output", json_string(path.data));
	path.len = 0;
	output_path(sl, c->id, 1, &path);
	json_object_set_new(job, "standard_error", json_string(path.data));
	submit_limits(c, d, job);
	json_t *sub = json_pack("{ss so}", "script", script.data, "job", job);
	char *text = json_dumps(sub, JSON_COMPACT);
	json_decref(sub);
	buf_free(&script);
	buf_free(&path);
	struct buf p;
	buf_init(&p);
	slurm_api_path(c->s, "/job/submit", &p);
	int r = slurm_rest_call(c->s, cfg, "POST", p.data, text, submit_done, c);
	buf_free(&p);
	free(text);
	if (r < 0) {
		c->error = r;
		c->error_text = xstrdup("cannot start a request to slurmrestd");
		tcall_answer(c, 0);
	}
}

static void submit_done(void *arg, const struct http_response *r)
{
	struct tcall *c = arg;
	assert(loop_is_current(c->s->loop));
	json_t *doc = r->error ? NULL : json_loadb(r->body, r->body_len, 0, NULL);
	json_t *jid = json_object_get(doc, "job_id");
	if (r->error || !json_is_integer(jid)) {
		tcall_set_error(c, r);
		/* slurmctld's refusal of the job itself: the agent's 400, so the task fails */
		if (!r->error || r->status == 500)
			c->status = 400;
		buf_printf(&c->answer, "{\"error\":");
		char *msg = json_dumps(json_string(c->error_text), JSON_ENCODE_ANY);
		buf_puts(&c->answer, msg ? msg : "\"\"");
		buf_puts(&c->answer, "}");
		free(msg);
	} else {
		json_object_set_new(c->s->jobs, c->id, json_integer(json_integer_value(jid)));
		c->status = 201;
		buf_printf(&c->answer,
			   "{\"id\":\"%s\",\"state\":\"running\",\"slurm_job_id\":%lld}", c->id,
			   (long long) json_integer_value(jid));
	}
	json_decref(doc);
	tcall_finish(c);
}

static void cancel_done(void *arg, const struct http_response *r);

static void list_done(void *arg, const struct http_response *r)
{
	struct tcall *c = arg;
	struct slurm *s = c->s;
	assert(loop_is_current(s->loop));
	struct config *cfg = cluster_get_config(s->cluster);
	json_t *doc = r->error ? NULL : json_loadb(r->body, r->body_len, 0, NULL);
	if (!cfg->slurm || r->error || !json_is_array(json_object_get(doc, "jobs"))) {
		if (r->error)
			tcall_set_error(c, r);
		else {
			c->error = -EPROTO;
			c->error_text =
				xstrdup("slurmrestd's job list is not what v0.0.38 documents");
		}
		json_decref(doc);
		config_unref(cfg);
		tcall_finish(c);
		return;
	}
	json_t *by_name = jobs_index(s, doc);
	s->jobs_listed = true;
	if (c->kind == CALL_SUBMIT) {
		json_t *job = json_object_get(by_name, c->id);
		if (job) {
			/* submitted before (a crash between submission and its answer): the
			 * job it made, not a second one */
			tcall_set_doc(c, job_as_task(cfg->slurm, job));
			tcall_finish(c);
		} else
			submit_send(c, cfg);
	} else if (c->kind == CALL_CANCEL) {
		json_t *jid = json_object_get(s->jobs, c->id);
		if (!jid) {
			c->status = 404;
			c->error = -ENOENT;
			c->error_text = xstrdup("no such job");
			tcall_finish(c);
		} else {
			char rest[64];
			snprintf(rest, sizeof(rest), "/job/%lld",
				 (long long) json_integer_value(jid));
			struct buf p;
			buf_init(&p);
			slurm_api_path(s, rest, &p);
			int rr = slurm_rest_call(s, cfg, "DELETE", p.data, NULL, cancel_done, c);
			buf_free(&p);
			if (rr < 0) {
				c->error = rr;
				tcall_finish(c);
			}
		}
	} else if (c->kind == CALL_POLL) {
		json_t *tasks = json_array();
		const char *name;
		json_t *job;
		json_object_foreach (by_name, name, job)
			json_array_append_new(tasks, job_as_task(cfg->slurm, job));
		tcall_set_doc(c, json_pack("{so sf si}", "tasks", tasks, "time", clock_wall_s(),
					   "index", 1));
		tcall_finish(c);
	} else {
		c->status = 200;
		buf_puts(&c->answer, "{}");
		tcall_finish(c);
	}
	json_decref(by_name);
	json_decref(doc);
	config_unref(cfg);
}

static void cancel_done(void *arg, const struct http_response *r)
{
	struct tcall *c = arg;
	assert(loop_is_current(c->s->loop));
	if (r->error)
		tcall_set_error(c, r);
	else {
		c->status = 200;
		buf_puts(&c->answer, "{}");
	}
	tcall_finish(c);
}

static void list_send(struct tcall *c)
{
	assert(loop_is_current(c->s->loop));
	struct config *cfg = cluster_get_config(c->s->cluster);
	struct buf p;
	buf_init(&p);
	slurm_api_path(c->s, "/jobs", &p);
	int r = cfg->slurm ? slurm_rest_call(c->s, cfg, "GET", p.data, NULL, list_done, c)
			   : -ENOENT;
	buf_free(&p);
	config_unref(cfg);
	if (r < 0) {
		c->error = r;
		c->error_text = xstrdup("cannot start a request to slurmrestd");
		tcall_finish(c);
	}
}

static void list_send_on_timer(void *arg)
{
	list_send(arg);
}

static void cancel_send(struct tcall *c)
{
	assert(loop_is_current(c->s->loop));
	struct config *cfg = cluster_get_config(c->s->cluster);
	json_t *jid = json_object_get(c->s->jobs, c->id);
	if (!jid || !cfg->slurm) {
		config_unref(cfg);
		list_send(c); /* learn its job id first */
		return;
	}
	char rest[64];
	snprintf(rest, sizeof(rest), "/job/%lld", (long long) json_integer_value(jid));
	struct buf p;
	buf_init(&p);
	slurm_api_path(c->s, rest, &p);
	int r = slurm_rest_call(c->s, cfg, "DELETE", p.data, NULL, cancel_done, c);
	buf_free(&p);
	config_unref(cfg);
	if (r < 0) {
		c->error = r;
		tcall_answer(c, 0);
	}
}

/* Reads output from output_dir: the shared filesystem the jobs write to. */
static void output_read(struct tcall *c)
{
	struct config *cfg = cluster_get_config(c->s->cluster);
	struct buf p;
	buf_init(&p);
	if (cfg->slurm)
		output_path(cfg->slurm, c->id, c->stream, &p);
	config_unref(cfg);
	int fd = p.data ? open(p.data, O_RDONLY | O_CLOEXEC) : -1;
	buf_free(&p);
	c->status = 200;
	if (fd < 0)
		return; /* not written yet: nothing so far */
	size_t want = c->limit ? c->limit : (1u << 20);
	char *data = xmalloc(want);
	ssize_t n = pread(fd, data, want, (off_t) c->offset);
	if (n > 0)
		buf_append(&c->answer, data, (size_t) n);
	free(data);
	close(fd);
}

int slurm_task_call(void *arg, const char *node, const char *method, const char *path,
		    const char *body, http_done_fn done, void *done_arg)
{
	struct slurm *s = arg;
	assert(loop_is_current(s->loop));
	if (!s->api) {
		/* nothing to say yet: as an agent that does not answer */
		return -EAGAIN;
	}
	struct tcall *c = xcalloc(1, sizeof(*c));
	c->s = s;
	c->done = done;
	c->arg = done_arg;
	c->started_us = clock_now_us();
	buf_init(&c->answer);
	static const char prefix[] = AGENT_API_TASKS;
	const char *rest = path + strlen(prefix);
	if (strncmp(path, prefix, strlen(prefix))) {
		free(c);
		return -EINVAL;
	}
	if (!strcmp(method, "POST") && !*rest) {
		c->kind = CALL_SUBMIT;
		c->body = json_loads(body ? body : "", 0, NULL);
		const char *id = json_string_value(json_object_get(c->body, "id"));
		if (!id) {
			tcall_free(c);
			return -EINVAL;
		}
		c->id = xstrdup(id);
		/* a job of that name may exist from before a crash: look once per start */
		if (!s->jobs_listed || json_object_get(s->jobs, c->id))
			list_send(c);
		else {
			struct config *cfg = cluster_get_config(s->cluster);
			if (cfg->slurm)
				submit_send(c, cfg);
			else {
				c->error = -ENOENT;
				tcall_answer(c, 0);
			}
			config_unref(cfg);
		}
		return 0;
	}
	if (!strcmp(method, "GET") && (!*rest || *rest == '?')) {
		c->kind = CALL_POLL;
		/* a long poll: held a moment, as the agent holds it until something changes */
		if (strstr(rest, "index="))
			loop_timer_add(s->loop, clock_now_us() + POLL_HOLD_US, list_send_on_timer,
				       c);
		else
			list_send(c);
		return 0;
	}
	if (*rest != '/') {
		free(c);
		return -EINVAL;
	}
	rest++;
	size_t idlen = strcspn(rest, "/?");
	c->id = xstrndup(rest, idlen);
	const char *tail = rest + idlen;
	if (!strcmp(method, "POST") && !strcmp(tail, "/cancel")) {
		c->kind = CALL_CANCEL;
		cancel_send(c);
		return 0;
	}
	if (!strcmp(method, "GET") &&
	    (!strncmp(tail, "/stdout", 7) || !strncmp(tail, "/stderr", 7))) {
		c->kind = CALL_OUTPUT;
		c->stream = !strncmp(tail, "/stderr", 7);
		const char *q = strstr(tail, "offset=");
		if (q)
			c->offset = strtoull(q + 7, NULL, 10);
		q = strstr(tail, "limit=");
		if (q)
			c->limit = strtoull(q + 6, NULL, 10);
		output_read(c);
		tcall_answer(c, 0);
		return 0;
	}
	tcall_free(c);
	return -EINVAL;
}
