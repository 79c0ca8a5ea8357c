/* Tasks: the agent client (loop thread): dispatch, output fetches, the long poll, cancels. */
#include "backend/tasks_internal.h"
#include "backend/endpoint.h"

#include <errno.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void apply_remote_locked(struct tasks *t, struct task *k, json_t *o, struct waiter **wake);
static void poll_send(struct tasks *t, const char *node);
static int fetch_output_locked(struct tasks *t, struct task *k, int s);
static void poll_done(void *arg, const struct http_response *r);

struct call *tasks_call_new(struct tasks *t, const char *id, int stream)
{
	struct call *c = xcalloc(1, sizeof(*c));
	c->t = t;
	c->id = xstrdup(id);
	c->stream = stream;
	c->started_us = clock_now_us();
	return c;
}

void tasks_call_free(struct call *c)
{
	free(c->id);
	free(c);
}

/* An agent endpoint on a node (its URL and transport), or -ENOENT when the node is gone. */
static int agent_endpoint(struct tasks *t, const char *node, const char *path,
			  struct endpoint *ret_ep, char **ret_token)
{
	struct config *cfg = cluster_get_config(t->cluster);
	const struct cfg_host *h = config_find_host(cfg, node);
	if (h) {
		endpoint_init_agent(ret_ep, cfg, h, path);
		*ret_token = h->token ? xstrdup(h->token) : NULL;
	}
	config_unref(cfg);
	return h ? 0 : -ENOENT;
}

static int agent_call(struct tasks *t, const char *node, const char *method, const char *path,
		      const char *body, http_done_fn done, struct call *c)
{
	if (tasks_target_owns(t, node))
		return t->target.call(t->target.arg, node, method, path, body, done, c);
	char *token = NULL;
	struct endpoint ep;
	if (agent_endpoint(t, node, path, &ep, &token) < 0)
		return -ENOENT;
	struct http_request req = {
		.method = method,
		.token = token,
		.body = body,
		.body_len = body ? strlen(body) : 0,
		.connect_timeout_ms = AGENT_TIMEOUT_MS,
		.timeout_ms = AGENT_TIMEOUT_MS,
		.max_body = FETCH_MAX + 4096,
	};
	endpoint_apply(&ep, &req);
	int r = loop_http(t->loop, &req, done, c);
	endpoint_clear(&ep);
	if (token) {
		explicit_bzero(token, strlen(token));
		free(token);
	}
	return r;
}

static void dispatch_done(void *arg, const struct http_response *r)
{
	struct call *c = arg;
	struct tasks *t = c->t;
	struct waiter *wake = NULL;
	char *poll_node = NULL;
	pthread_mutex_lock(&t->lock);
	struct task *k = tasks_find_locked(t, c->id);
	if (k) {
		k->dispatching = false;
		if (!r->error && k->dispatch_failures) {
			log_info("dispatch of %s to %s went through after %u failed attempt%s",
				 k->row.id, k->row.node, k->dispatch_failures,
				 k->dispatch_failures == 1 ? "" : "s");
			k->dispatch_failures = 0;
			tasks_set_str(&k->row.reason, NULL);
		}
		if (!r->error) {
			/* 201: started; 200: the agent knew this dispatch id already, and its
			 * answer says how that run is doing (it may have ended long ago) */
			k->acked = true;
			if (k->row.node)
				poll_node = xstrdup(k->row.node);
			json_t *o = json_loadb(r->body, r->body_len, 0, NULL);
			if (json_is_object(o) && json_is_string(json_object_get(o, "state")))
				apply_remote_locked(t, k, o, &wake);
			else if (k->state == TASK_S_DISPATCHED) {
				k->row.started_at = clock_wall_s();
				tasks_set_state_locked(t, k, TASK_S_RUNNING, NULL, &wake);
			}
			json_decref(o);
		} else if (r->status == 400 || r->status == 413) {
			json_t *doc = json_loadb(r->body, r->body_len, 0, NULL);
			const char *e = json_string_value(json_object_get(doc, "error"));
			char why[512];
			snprintf(why, sizeof(why), "the agent on %s refused it: %s", k->row.node,
				 e ? e : r->error_text);
			json_decref(doc);
			tasks_set_state_locked(t, k, TASK_S_FAILED, why, &wake);
		} else if (r->error != -ECANCELED) {
			/* Unknown whether it arrived: the node's poll finds out and re-sends
			 * the same dispatch id, which the agent runs at most once, after a
			 * growing wait. One log line when it starts failing, one when it
			 * recovers. */
			char why[512];
			util_escape_controls(r->error_text, why, sizeof(why));
			if (k->dispatch_failures++ == 0)
				log_warn("dispatch of %s to %s failing: %s; retrying with backoff",
					 k->row.id, k->row.node, why);
			tasks_retry_policy(RETRY_DISPATCH, k, _TASK_STATE_INVALID,
					   k->dispatch_failures, &k->dispatch_due_us);
			char reason[640];
			snprintf(reason, sizeof(reason),
				 "the agent on %s did not take it (%s); attempt %u, retrying",
				 k->row.node, why, k->dispatch_failures);
			tasks_set_str(&k->row.reason, reason);
		}
	}
	pthread_mutex_unlock(&t->lock);
	tasks_call_waiters(wake);
	tasks_call_free(c);
	/* the node's long poll learns of the end at once (poll_send is defined below) */
	if (poll_node)
		poll_send(t, poll_node);
	free(poll_node);
}

/* The user name a task runs as on its node under the run_as policy in force there: the
 * submitter's (a task stored before names were kept: the name its uid has now), or NULL
 * for the agent's own user. Returns a new string. */
char *tasks_run_as_user_locked(struct tasks *t, const struct task *k)
{
	assert_held(&t->lock);
	struct config *cfg = cluster_get_config(t->cluster);
	const struct cfg_host *h = k->row.node ? config_find_host(cfg, k->row.node) : NULL;
	enum cfg_run_as mode = config_host_run_as(cfg, h);
	config_unref(cfg);
	if (mode == CFG_RUN_AS_AGENT)
		return NULL;
	if (k->row.user)
		return xstrdup(k->row.user);
	struct passwd pw, *res = NULL;
	char scratch[4096];
	getpwuid_r(k->row.uid, &pw, scratch, sizeof(scratch), &res);
	/* no name at all: a name no node has, so the node refuses it (never root) */
	return xstrdup(res ? res->pw_name : "(unknown)");
}

/* Sends the task to its node. Lock held; loop thread. */
void tasks_dispatch_locked(struct tasks *t, struct task *k)
{
	assert(loop_is_current(t->loop));
	assert_held(&t->lock);
	if (k->dispatching || (k->dispatch_due_us && clock_now_us() < k->dispatch_due_us) ||
	    !tasks_inputs_ready_locked(t, k))
		return;
	json_t *body = json_object();
	json_object_set_new(body, "id", json_string(k->row.dispatch_id));
	if (k->spec->shell)
		json_object_set_new(body, "cmd", json_string(k->spec->shell));
	else {
		json_t *argv = json_array();
		for (size_t i = 0; i < k->spec->argc; i++)
			json_array_append_new(argv, json_string(k->spec->argv[i]));
		json_object_set_new(body, "cmd", argv);
	}
	if (k->spec->env)
		json_object_set(body, "env", k->spec->env);
	if (k->spec->cwd)
		json_object_set_new(body, "cwd", json_string(k->spec->cwd));
	if (k->spec->timeout_s)
		json_object_set_new(body, "timeout_s", json_integer(k->spec->timeout_s));
	char *user = tasks_run_as_user_locked(t, k);
	if (user)
		json_object_set_new(body, "user", json_string(user));
	free(user);
	if (k->spec->n_outputs && !tasks_target_owns(t, k->row.node)) {
		struct config *acfg = cluster_get_config(t->cluster);
		json_t *outs = json_array();
		for (size_t o = 0; o < k->spec->n_outputs; o++)
			json_array_append_new(outs, json_string(k->spec->outputs[o]));
		json_object_update_new(
			body, json_pack("{so sI sI}", "outputs", outs, "outputs_max_files",
					(json_int_t) acfg->artifacts.max_files, "outputs_max_bytes",
					(json_int_t) acfg->artifacts.max_bytes));
		config_unref(acfg);
	}
	if (k->staged && json_array_size(k->staged))
		json_object_set(body, "inputs", k->staged);
	if (tasks_target_owns(t, k->row.node))
		/* what a scheduler of its own needs; agents are not sent fields they refuse */
		json_object_update_new(body, json_pack("{si si si si}", "cpus", k->spec->cpus,
						       "mem_mb", k->spec->mem_mb, "gpus",
						       k->spec->gpus, "priority", k->row.priority));
	if (tasks_target_owns(t, k->row.node) && k->spec->n_after) {
		/* the dependencies still running there: the target holds this one for them */
		json_t *after = json_array();
		for (size_t d = 0; d < k->spec->n_after; d++) {
			struct task *dep = tasks_find_locked(t, k->spec->after[d]);
			if (dep && !state_final(dep->state) && dep->row.dispatch_id)
				json_array_append_new(after, json_string(dep->row.dispatch_id));
		}
		json_object_set_new(body, "after_dispatch", after);
	}
	char *text = json_dumps(body, JSON_COMPACT);
	json_decref(body);
	struct call *c = tasks_call_new(t, k->row.id, 0);
	if (agent_call(t, k->row.node, "POST", "/api/node/tasks", text, dispatch_done, c) == 0)
		k->dispatching = true;
	else
		tasks_call_free(c);
	free(text);
}

/* A fetch of stream s failed: retried after a growing wait, FETCH_TRIES times, then the
 * stream ends with what came and the task's reason says why. */
static void fetch_failed_locked(struct tasks *t, struct task *k, int s, const char *why)
{
	assert_held(&t->lock);
	k->fetch_failures[s]++;
	if (tasks_retry_policy(RETRY_FETCH, k, _TASK_STATE_INVALID, k->fetch_failures[s],
			       &k->fetch_due_us[s]))
		return;
	char clean[256];
	util_escape_controls(why, clean, sizeof(clean));
	struct buf note;
	buf_init(&note);
	buf_printf(&note, "%s incomplete: %zu of %zu bytes fetched; the agent answered %s %u times",
		   stream_names[s], k->out[s].len, k->remote_size[s], clean, k->fetch_failures[s]);
	log_warn("task %s: %s", k->row.id, note.data);
	struct buf mark;
	buf_init(&mark);
	buf_printf(&mark, "\n[clusterfs: %s]\n", note.data);
	buf_append(&k->out[s], mark.data, mark.len);
	buf_free(&mark);
	k->out_full[s] = true;
	free(k->output_note);
	k->output_note = buf_steal(&note, NULL);
}

static void fetch_done(void *arg, const struct http_response *r)
{
	struct call *c = arg;
	struct tasks *t = c->t;
	struct waiter *wake = NULL;
	pthread_mutex_lock(&t->lock);
	struct task *k = tasks_find_locked(t, c->id);
	if (k)
		k->fetching[c->stream] = false;
	if (k && !k->out_stored) { /* output that comes after the end is not kept */
		int s = c->stream;
		bool more = k->out[s].len < k->remote_size[s];
		if (r->error != -ECANCELED && (r->error || (more && !r->body_len)))
			fetch_failed_locked(t, k, s, r->error ? r->error_text : "an empty answer");
		else if (!r->error && r->body_len)
			k->fetch_failures[s] = 0;
		if (!r->error && r->body_len) {
			size_t room = TASKS_OUTPUT_MAX - k->out[s].len;
			size_t n = r->body_len < room ? r->body_len : room;
			buf_append(&k->out[s], r->body, n);
			if (n < r->body_len && !k->out_full[s]) {
				k->out_full[s] = true;
				static const char cut[] =
					"\n[clusterfs: output cut at the limit]\n";
				buf_append(&k->out[s], cut, sizeof(cut) - 1);
			}
			k->changed_at = clock_wall_s();
		}
		if (!r->error && k->out[s].len < k->remote_size[s] && !k->out_full[s] &&
		    r->body_len)
			fetch_output_locked(t, k, s);
		if (r->error != -ECANCELED)
			tasks_finalize_if_ready_locked(t, k, &wake);
	}
	pthread_mutex_unlock(&t->lock);
	tasks_call_waiters(wake);
	tasks_call_free(c);
}

/* Starts a fetch of the next piece of stream s. 0 when one is under way; -EAGAIN while
 * a failed one waits for its retry; -ECANCELED when stopping; -ENOENT when there is
 * nothing to fetch or nowhere to fetch it from. */
static int fetch_output_locked(struct tasks *t, struct task *k, int s)
{
	assert_held(&t->lock);
	if (k->fetching[s])
		return 0;
	if (k->out_full[s] || !k->row.node || !k->row.dispatch_id)
		return -ENOENT;
	if (k->fetch_due_us[s] && clock_now_us() < k->fetch_due_us[s])
		return -EAGAIN;
	char path[512];
	snprintf(path, sizeof(path), "/api/node/tasks/%s/%s?offset=%zu&limit=%u",
		 k->row.dispatch_id, stream_names[s], k->out[s].len, FETCH_MAX);
	struct call *c = tasks_call_new(t, k->row.id, s);
	int r = agent_call(t, k->row.node, "GET", path, NULL, fetch_done, c);
	if (r == 0)
		k->fetching[s] = true;
	else
		tasks_call_free(c);
	return r;
}

/* Once the agent reported a final state and all output is here: the task ends. */
void tasks_finalize_if_ready_locked(struct tasks *t, struct task *k, struct waiter **wake)
{
	assert_held(&t->lock);
	if (!k->remote_ended || state_final(k->state))
		return;
	for (int s = 0; s < N_STREAMS; s++) {
		if (k->fetching[s])
			return;
		if (k->out[s].len < k->remote_size[s] && !k->out_full[s]) {
			int r = fetch_output_locked(t, k, s);
			if (k->fetching[s] || r == -EAGAIN || r == -ECANCELED)
				return; /* the tick tries again once the wait is over */
		}
	}
	if (!tasks_outputs_ready_locked(t, k))
		return; /* its record is being fetched: the end comes with it */
	k->row.exit_code = k->remote_exit;
	store_add_attempt(t->store, k->row.id, k->row.attempts, k->row.node, k->row.dispatch_id,
			  task_state_names[k->remote_state], k->remote_exit, k->row.started_at,
			  clock_wall_s());
	enum task_state state = k->remote_state;
	char *why = k->remote_error;
	k->remote_ended = false;
	k->remote_error = NULL;
	if (state == TASK_S_SUCCEEDED)
		tasks_set_state_locked(t, k, TASK_S_SUCCEEDED, k->output_note, wake);
	else
		tasks_requeue_or_fail_locked(t, k, state, why ? why : k->output_note, wake);
	free(why);
}

/* Applies one task object from an agent to our task. Lock held. */
static void apply_remote_locked(struct tasks *t, struct task *k, json_t *o, struct waiter **wake)
{
	assert_held(&t->lock);
	const char *state = json_string_value(json_object_get(o, "state"));
	const char *id = json_string_value(json_object_get(o, "id"));
	/* an answer about another attempt, or about a task that has ended here */
	if (!state || !id || !k->row.dispatch_id || strcmp(id, k->row.dispatch_id) ||
	    state_final(k->state) || k->state == TASK_S_QUEUED)
		return;
	json_decref(k->remote_doc);
	k->remote_doc = json_incref(o);
	for (int s = 0; s < N_STREAMS; s++) {
		json_t *sz = json_object_get(o, s ? "stderr_size" : "stdout_size");
		/* a size from the network: only what a size can be */
		if (json_is_integer(sz) && json_integer_value(sz) >= 0 &&
		    (uint64_t) json_integer_value(sz) <= SIZE_MAX / 2)
			k->remote_size[s] = (size_t) json_integer_value(sz);
		if (k->out[s].len < k->remote_size[s])
			fetch_output_locked(t, k, s);
	}
	if (k->state == TASK_S_DISPATCHED) {
		k->row.started_at = clock_wall_s();
		tasks_set_state_locked(t, k, TASK_S_RUNNING, NULL, wake);
	}
	if (strcmp(state, "running") && !k->remote_ended) {
		json_t *ec = json_object_get(o, "exit_code");
		const char *err = json_string_value(json_object_get(o, "error"));
		tasks_set_str(&k->remote_error, err);
		/* the end as the agent names it; a name this side does not know is a failure */
		enum task_state rs = task_state_from_string(state);
		k->remote_state = state_final(rs) ? rs : TASK_S_FAILED;
		k->remote_ended = true;
		k->remote_exit = json_is_integer(ec) && json_integer_value(ec) >= 0 &&
						 json_integer_value(ec) <= 65535
					 ? (int) json_integer_value(ec)
					 : -1;
		tasks_finalize_if_ready_locked(t, k, wake);
	}
}

/* The active tasks (on `node`, or all when NULL), as a NULL-terminated array that stays
 * valid while its entries change lists. Lock held. */
static struct task **active_snapshot_locked(struct tasks *t, const char *node)
{
	assert_held(&t->lock);
	size_t n = 0, cap = 16;
	struct task **v = xcalloc(cap, sizeof(*v));
	for (struct task *k = t->active; k; k = k->lnext) {
		if (node && (!k->row.node || strcmp(k->row.node, node)))
			continue;
		if (n + 1 == cap) {
			cap *= 2;
			v = xrealloc(v, cap * sizeof(*v));
		}
		v[n++] = k;
	}
	v[n] = NULL;
	return v;
}

static struct node_poll *poll_for(struct tasks *t, const char *node)
{
	for (struct node_poll *p = t->polls; p; p = p->next)
		if (!strcmp(p->node, node))
			return p;
	struct node_poll *p = xcalloc(1, sizeof(*p));
	p->node = xstrdup(node);
	p->next = t->polls;
	t->polls = p;
	return p;
}

#define POLL_WAIT_S 0.25 /* a long poll's wait: output sizes are fresh at this pace */

/* Asks a node's agent what became of our work there, unless a poll is in flight. An agent
 * that keeps change numbers holds the request until a task starts or ends (or for
 * POLL_WAIT_S), so an end is noticed at once; older agents answer what changed since
 * their clock's time of the last poll. Loop thread. */
static void poll_send(struct tasks *t, const char *node)
{
	assert(loop_is_current(t->loop));
	struct node_poll *p = poll_for(t, node);
	if (p->in_flight)
		return;
	char path[128] = "/api/node/tasks";
	if (p->index)
		snprintf(path, sizeof(path), "/api/node/tasks?index=%llu&wait=%.2f",
			 (unsigned long long) p->index, POLL_WAIT_S);
	else if (p->agent_time > 0)
		/* a margin for tasks that finished while that answer was on its way */
		snprintf(path, sizeof(path), "/api/node/tasks?since=%.3f", p->agent_time - 30.0);
	struct call *c = tasks_call_new(t, node, 0);
	if (agent_call(t, node, "GET", path, NULL, poll_done, c) == 0)
		p->in_flight = true;
	else
		tasks_call_free(c);
}

static void poll_done(void *arg, const struct http_response *r)
{
	struct call *c = arg;
	struct tasks *t = c->t;
	struct node_poll *p = poll_for(t, c->id);
	p->in_flight = false;
	if (r->error) {
		tasks_call_free(c);
		return;
	}
	json_t *doc = json_loadb(r->body, r->body_len, 0, NULL);
	json_t *list = json_object_get(doc, "tasks");
	if (json_is_number(json_object_get(doc, "time")))
		p->agent_time = json_number_value(json_object_get(doc, "time"));
	/* an answer by change number lists what changed and what runs, not everything */
	bool partial = p->index != 0;
	json_t *idx = json_object_get(doc, "index");
	p->index = json_is_integer(idx) && json_integer_value(idx) > 0
			   ? (uint64_t) json_integer_value(idx)
			   : 0;
	struct waiter *wake = NULL;
	pthread_mutex_lock(&t->lock);
	struct task **work = active_snapshot_locked(t, c->id);
	for (size_t i = 0; work[i]; i++) {
		struct task *k = work[i];
		if (!state_active(k->state) || !k->row.dispatch_id || k->spec->model)
			continue; /* a prompt is the runner's, not the agent's */
		json_t *found = NULL, *o;
		size_t j;
		json_array_foreach (list, j, o) {
			const char *id = json_string_value(json_object_get(o, "id"));
			if (id && !strcmp(id, k->row.dispatch_id)) {
				found = o;
				break;
			}
		}
		if (found) {
			k->acked = true;
			apply_remote_locked(t, k, found, &wake);
		} else if (!k->dispatching && (!partial || !k->acked)) {
			/* the agent never got it (or lost it before writing it down): send the
			 * same dispatch id again */
			if (json_is_array(list))
				tasks_dispatch_locked(t, k);
		}
	}
	bool busy = false;
	for (struct task *k = t->active; k && !busy; k = k->lnext)
		busy = k->row.node && !strcmp(k->row.node, c->id);
	pthread_mutex_unlock(&t->lock);
	free(work);
	/* work there goes on: the next long poll at once */
	if (busy && p->index)
		poll_send(t, c->id);
	json_decref(doc);
	tasks_call_waiters(wake);
	tasks_call_free(c);
}

static void cancel_done(void *arg, const struct http_response *r)
{
	struct call *c = arg;
	struct tasks *t = c->t;
	pthread_mutex_lock(&t->lock);
	struct task *k = tasks_find_locked(t, c->id);
	if (k && r->error && r->status != 404 &&
	    tasks_retry_policy(RETRY_CANCEL, k, _TASK_STATE_INVALID, 1, NULL))
		k->cancel_sent = false; /* try again at the next tick */
	pthread_mutex_unlock(&t->lock);
	tasks_call_free(c);
}

/* Every TICK: poll the nodes that have work, send pending cancels, notice lost nodes,
 * and place what waits. */
void tasks_tick(void *arg)
{
	struct tasks *t = arg;
	assert(loop_is_current(t->loop));
	struct waiter *wake = NULL;
	char **nodes = NULL;
	size_t n_nodes = 0;
	pthread_mutex_lock(&t->lock);
	struct task **work = active_snapshot_locked(t, NULL);
	for (size_t i = 0; work[i]; i++) {
		struct task *k = work[i];
		if (!state_active(k->state) || !k->row.node)
			continue;
		enum node_level level;
		if (cluster_get_level(t->cluster, k->row.node, &level) < 0) {
			if (tasks_target_owns(t, k->row.node))
				continue; /* its source has not listed it since the start yet */
			tasks_requeue_or_fail_locked(t, k, TASK_S_LOST, "its node left the cluster",
						     &wake);
			continue;
		}
		if (level == NODE_OFFLINE) {
			if (k->spec->model && k->row.dispatch_id)
				t->prompts.cancel(t->prompts.arg, k->row.dispatch_id);
			tasks_requeue_or_fail_locked(t, k, TASK_S_LOST, "its node went offline",
						     &wake);
			continue;
		}
		if (k->spec->model) {
			/* the runner streams it: nothing to poll, a cancel goes to the runner */
			if (k->cancel_requested && !k->cancel_sent && k->row.dispatch_id) {
				t->prompts.cancel(t->prompts.arg, k->row.dispatch_id);
				k->cancel_sent = true;
			}
			continue;
		}
		if (k->remote_ended)
			tasks_finalize_if_ready_locked(t, k,
						       &wake); /* output fetches waiting to retry */
		if (k->cancel_requested && !k->cancel_sent && k->row.dispatch_id) {
			char path[512];
			snprintf(path, sizeof(path), "/api/node/tasks/%s/cancel",
				 k->row.dispatch_id);
			struct call *c = tasks_call_new(t, k->row.id, 0);
			if (agent_call(t, k->row.node, "POST", path, "{}", cancel_done, c) == 0)
				k->cancel_sent = true;
			else
				tasks_call_free(c);
		}
		bool seen = false;
		for (size_t j = 0; j < n_nodes; j++)
			seen |= !strcmp(nodes[j], k->row.node);
		if (!seen) {
			nodes = xrealloc(nodes, (n_nodes + 1) * sizeof(*nodes));
			nodes[n_nodes++] = xstrdup(k->row.node);
		}
	}
	tasks_schedule_locked(t, &wake);
	tasks_cache_trim_locked(t);
	pthread_mutex_unlock(&t->lock);
	free(work);
	tasks_call_waiters(wake);

	for (size_t j = 0; j < n_nodes; j++) {
		poll_send(t, nodes[j]);
		free(nodes[j]);
	}
	free(nodes);
	t->tick = loop_timer_add(t->loop, clock_now_us() + TICK_US, tasks_tick, t);
}
