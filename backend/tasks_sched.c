/* Tasks: scheduling (loop thread): the scheduler's input, the queue, placement. */
#include "backend/tasks_internal.h"

#include <errno.h>
#include <pthread.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tasks_active_on_locked(struct tasks *t, const char *node)
{
	assert_held(&t->lock);
	struct node_load *n = tasks_node_load_locked(t, node, false);
	return n ? n->active : 0;
}

void tasks_sched_input_build_locked(struct tasks *t, struct sched_input *in)
{
	assert_held(&t->lock);
	size_t n = 0;
	char **names = cluster_list_nodes(t->cluster, &n);
	in->views = xcalloc(n + 1, sizeof(*in->views));
	in->nodes = xcalloc(n + 1, sizeof(*in->nodes));
	in->caps = xcalloc(n + 1, sizeof(*in->caps));
	struct config *cfg = cluster_get_config(t->cluster);
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		struct node_view *v = &in->views[k];
		/* a Slurm cluster's own nodes are Slurm's to place on, not ours */
		if ((cluster_node_is_external(t->cluster, names[i], NULL) &&
		     !tasks_target_owns(t, names[i])) ||
		    cluster_get_node(t->cluster, names[i], v) < 0) {
			free(names[i]);
			continue;
		}
		struct sched_node *sn = &in->nodes[k];
		sn->name = v->name;
		sn->role = v->role;
		sn->tier = v->tier;
		size_t nc = json_array_size(v->capabilities);
		in->caps[k] = xcalloc(nc + 1, sizeof(char *));
		for (size_t c = 0; c < nc; c++)
			in->caps[k][c] = json_string_value(json_array_get(v->capabilities, c));
		sn->capabilities = in->caps[k];
		sn->n_capabilities = nc;
		sn->level = v->level;
		sn->draining = v->draining;
		/* an absent number is 0: idle, and no capacity (which fits nothing) */
		const struct node_metrics *m = &v->metrics;
		sn->cpu = isnan(m->cpu_percent) ? 0 : m->cpu_percent / 100.0;
		sn->mem = isnan(m->mem_percent) ? 0 : m->mem_percent / 100.0;
		sn->cores = m->cores < 0 ? 0 : m->cores;
		sn->ram_mb = m->mem_total_mb < 0 ? 0 : m->mem_total_mb;
		sn->gpus = m->gpus;
		const struct cfg_host *host = config_find_host(cfg, v->name);
		sn->queue_depth = host ? host->queue_depth : config_queue_depth(cfg, v->name);
		if (tasks_target_owns(t, v->name)) {
			sn->slots = sn->queue_depth; /* Slurm queues what it cannot run yet */
			sn->by_name_only = true;
		}
		k++;
		free(names[i]);
	}
	free(names);
	config_unref(cfg);
	in->n = k;

	/* load and history of every node, kept as states change */
	for (size_t i = 0; i < k; i++) {
		struct sched_node *sn = &in->nodes[i];
		struct node_load *nl = tasks_node_load_locked(t, sn->name, false);
		if (nl) {
			sn->active = nl->active;
			sn->total = nl->total;
			sn->completed = nl->completed;
			sn->consecutive_failures = nl->consecutive;
		}
	}
}

void tasks_sched_input_free(struct sched_input *in)
{
	for (size_t i = 0; i < in->n; i++) {
		node_view_clear(&in->views[i]);
		free(in->caps[i]);
	}
	free(in->views);
	free(in->nodes);
	free(in->caps);
}

void tasks_sched_request_of(const struct task_spec *s, struct sched_request *req)
{
	memset(req, 0, sizeof(*req));
	req->node = s->node ? s->node : "any";
	req->type = s->type;
	req->requires = (const char *const *) s->requires;
	req->n_requires = s->n_requires;
	req->cpus = s->cpus;
	req->mem_mb = s->mem_mb;
	req->gpus = s->gpus;
	req->priority = s->priority;
	req->model = s->model;
}

/* How each node holds a prompt task's model (none for a command); the node where its last
 * attempt failed is passed over while another has the model. Lock held. */
void tasks_prompt_holdings_locked(struct tasks *t, const struct task_spec *s, const char *avoid,
				  struct sched_input *in)
{
	assert_held(&t->lock);
	bool elsewhere = false;
	for (size_t i = 0; i < in->n; i++) {
		struct sched_node *n = &in->nodes[i];
		n->model = s->model && t->prompts.holds
				   ? t->prompts.holds(t->prompts.arg, n->name, s->model)
				   : SCHED_MODEL_ABSENT;
		elsewhere |= n->model >= SCHED_MODEL_PRESENT && avoid && strcmp(n->name, avoid);
	}
	for (size_t i = 0; elsewhere && i < in->n; i++)
		if (!strcmp(in->nodes[i].name, avoid) && in->nodes[i].model >= SCHED_MODEL_PRESENT)
			in->nodes[i].model = SCHED_MODEL_FAILED;
}

static int queued_cmp(const void *a, const void *b)
{
	const struct task *x = *(struct task *const *) a, *y = *(struct task *const *) b;
	if (x->row.priority != y->row.priority)
		return x->row.priority - y->row.priority;
	return x->row.seq < y->row.seq ? -1 : x->row.seq > y->row.seq;
}

/* True when task k goes to a target and every dependency that has not ended runs there
 * under an attempt the target has confirmed: then the target holds k until they succeeded
 * (Slurm's dependency=afterok), and k is dispatched now. Lock held. */
static bool deps_held_by_target_locked(struct tasks *t, const struct task *k)
{
	assert_held(&t->lock);
	const char *node = k->spec->node;
	if (!node || !tasks_target_owns(t, node))
		return false;
	for (size_t d = 0; d < k->spec->n_after; d++) {
		struct task *dep = tasks_lookup_locked(t, k->spec->after[d]);
		if (!dep)
			return false;
		if (state_final(dep->state))
			continue;
		if (!state_active(dep->state) || !dep->acked || !dep->row.node ||
		    strcmp(dep->row.node, node) || !dep->row.dispatch_id)
			return false;
	}
	return true;
}

/* A prompt task's model is on no node and the spec says "pull": the node placement would
 * pick if it had the model pulls it (once; the runner keeps track), and `why` says so. */
static void prompt_pull_locked(struct tasks *t, const struct config *cfg,
			       const struct sched_request *req, struct sched_input *in,
			       struct buf *why)
{
	assert_held(&t->lock);
	for (size_t i = 0; i < in->n; i++)
		if (in->nodes[i].model != SCHED_MODEL_ABSENT &&
		    in->nodes[i].model != SCHED_MODEL_NOSERVE)
			return; /* some node has it: wait for that one */
	for (size_t i = 0; i < in->n; i++)
		if (in->nodes[i].model == SCHED_MODEL_ABSENT)
			in->nodes[i].model = SCHED_MODEL_PRESENT;
	size_t idx;
	struct buf dummy;
	buf_init(&dummy);
	if (sched_place(cfg, req, in->nodes, in->n, &idx, &dummy) == 0 && t->prompts.pull) {
		buf_free(why);
		buf_init(why);
		t->prompts.pull(t->prompts.arg, in->nodes[idx].name, req->model, why);
	}
	buf_free(&dummy);
	for (size_t i = 0; i < in->n; i++)
		if (in->nodes[i].model == SCHED_MODEL_PRESENT)
			in->nodes[i].model = SCHED_MODEL_ABSENT;
}

/* Hands a placed prompt task to the runner: running once it took it. Lock held. */
static void prompt_start_locked(struct tasks *t, struct task *k, struct waiter **wake)
{
	assert_held(&t->lock);
	int r = t->prompts.start ? t->prompts.start(t->prompts.arg, k->row.id, k->row.dispatch_id,
						    k->row.node, k->spec_json)
				 : -EOPNOTSUPP;
	if (r == -ECANCELED)
		return; /* stopping: it stays dispatched, and the next start asks again */
	if (r < 0) {
		char why[300];
		snprintf(why, sizeof(why), "cannot ask the model server on %s: %s", k->row.node,
			 strerror(-r));
		tasks_requeue_or_fail_locked(t, k, TASK_S_FAILED, why, wake);
		return;
	}
	k->acked = true;
	k->row.started_at = clock_wall_s();
	tasks_set_state_locked(t, k, TASK_S_RUNNING, NULL, wake);
}

/* The queued tasks to place, in priority order, or NULL when there are none. Lock held. */
static struct task **queue_sorted_locked(struct tasks *t, size_t *ret_n)
{
	assert_held(&t->lock);
	struct task **q = NULL;
	size_t nq = 0, cap = 0;
	for (struct task *k = t->queued; k; k = k->lnext) {
		if (k->n_children)
			continue; /* a node:"all" task is the sum of its copies */
		if (nq == cap) {
			cap = cap ? 2 * cap : 64;
			q = xrealloc(q, cap * sizeof(*q));
		}
		q[nq++] = k;
	}
	if (!nq) {
		free(q);
		return NULL;
	}
	qsort(q, nq, sizeof(*q), queued_cmp);
	*ret_n = nq;
	return q;
}

/* True when task k may be placed now as far as its "after" goes; it fails when one did
 * not succeed, and its reason says it waits otherwise. Lock held. */
static bool deps_ready_locked(struct tasks *t, struct task *k, struct waiter **wake)
{
	assert_held(&t->lock);
	bool wait_deps = false;
	const char *failed_dep = NULL;
	for (size_t d = 0; d < k->spec->n_after; d++) {
		struct task *dep = tasks_lookup_locked(t, k->spec->after[d]);
		if (!dep || !state_final(dep->state)) {
			wait_deps = true;
		} else if (dep->state != TASK_S_SUCCEEDED) {
			failed_dep = k->spec->after[d];
			break;
		}
	}
	if (failed_dep) {
		char why[300];
		snprintf(why, sizeof(why), "dependency %s did not succeed", failed_dep);
		tasks_set_state_locked(t, k, TASK_S_FAILED, why, wake);
		return false;
	}
	/* why a task waits is shown, not stored: it is worked out again after a restart */
	if (wait_deps && !deps_held_by_target_locked(t, k)) {
		if (!k->row.reason || strncmp(k->row.reason, "waiting for", 11)) {
			tasks_set_str(&k->row.reason,
				      "waiting for the tasks in \"after\" to succeed");
			k->changed_at = clock_wall_s();
		}
		return false;
	}
	return true;
}

/* The key of a request in a pass's no-fit reasons: like requests place alike. */
static void no_fit_key(const struct sched_request *req, const struct task *k, struct buf *key)
{
	buf_printf(key, "%s|%s|%d|%d|%d|%d|%s|%s", req->node, req->type ? req->type : "", req->cpus,
		   req->mem_mb, req->gpus, req->priority, req->model ? req->model : "",
		   k->avoid_node ? k->avoid_node : "");
	for (size_t c = 0; c < req->n_requires; c++)
		buf_printf(key, "|%s", req->requires[c]);
}

/* Task k is placed on node idx: attempt N of this task on this node, under an id no other
 * attempt or control plane uses, then sent there. Lock held. */
static void attempt_start_locked(struct tasks *t, struct task *k, struct sched_input *in,
				 size_t idx, const char *placement, struct waiter **wake)
{
	assert_held(&t->lock);
	k->row.attempts++;
	tasks_set_str(&k->row.node, in->nodes[idx].name);
	tasks_set_str(&k->row.placement, placement);
	tasks_set_str(&k->row.reason, NULL);
	struct buf did;
	buf_init(&did);
	buf_printf(&did, "%s.%s.%d", store_instance_id(t->store), k->row.id, k->row.attempts);
	tasks_set_str(&k->row.dispatch_id, did.data);
	k->acked = false;
	buf_free(&did);
	tasks_set_state_locked(t, k, TASK_S_DISPATCHED, NULL, wake);
	in->nodes[idx].active++;
	if (k->spec->model)
		prompt_start_locked(t, k, wake);
	else
		tasks_dispatch_locked(t, k);
}

/* Places one queued task, or says why it waits. `no_fit` holds the requests that found
 * no node in this pass, with the reason: a queue of like tasks costs one placement, not
 * one per task. Lock held. */
static void place_one_locked(struct tasks *t, const struct config *cfg, struct sched_input *in,
			     json_t *no_fit, struct task *k, struct waiter **wake)
{
	assert_held(&t->lock);
	struct sched_request req;
	tasks_sched_request_of(k->spec, &req);
	struct buf key;
	buf_init(&key);
	no_fit_key(&req, k, &key);
	const char *known = json_string_value(json_object_get(no_fit, key.data));
	size_t idx = 0;
	struct buf why;
	buf_init(&why);
	if (!known && req.model)
		tasks_prompt_holdings_locked(t, k->spec, k->avoid_node, in);
	int r = known ? -EAGAIN : sched_place(cfg, &req, in->nodes, in->n, &idx, &why);
	if (r < 0 && !known && req.model && k->spec->pull)
		prompt_pull_locked(t, cfg, &req, in, &why);
	if (r < 0) {
		const char *w = known ? known : why.data ? why.data : "no eligible node";
		if (!k->row.reason || strcmp(k->row.reason, w)) {
			tasks_set_str(&k->row.reason, w);
			k->changed_at = clock_wall_s();
		}
		if (!known)
			json_object_set_new(no_fit, key.data, json_string(w));
		buf_free(&key);
		buf_free(&why);
		return;
	}
	buf_free(&key);
	attempt_start_locked(t, k, in, idx, why.data, wake);
	buf_free(&why);
}

/* Places what can be placed, in priority order. Lock held. */
void tasks_schedule_locked(struct tasks *t, struct waiter **wake)
{
	assert(loop_is_current(t->loop));
	assert_held(&t->lock);
	size_t nq = 0;
	struct task **q = queue_sorted_locked(t, &nq);
	if (!q)
		return;
	struct sched_input in;
	tasks_sched_input_build_locked(t, &in);
	struct config *cfg = cluster_get_config(t->cluster);
	json_t *no_fit = json_object();
	for (size_t i = 0; i < nq; i++)
		if (deps_ready_locked(t, q[i], wake))
			place_one_locked(t, cfg, &in, no_fit, q[i], wake);
	json_decref(no_fit);
	config_unref(cfg);
	tasks_sched_input_free(&in);
	free(q);
}

void tasks_schedule_on_loop(void *arg)
{
	struct tasks *t = arg;
	assert(loop_is_current(t->loop));
	struct waiter *wake = NULL;
	pthread_mutex_lock(&t->lock);
	t->schedule_posted = false;
	tasks_schedule_locked(t, &wake);
	tasks_cache_trim_locked(t);
	pthread_mutex_unlock(&t->lock);
	tasks_call_waiters(wake);
}

void tasks_post_schedule(struct tasks *t)
{
	pthread_mutex_lock(&t->lock);
	bool post = t->started && !t->schedule_posted;
	if (post)
		t->schedule_posted = true;
	pthread_mutex_unlock(&t->lock);
	if (post)
		loop_post(t->loop, tasks_schedule_on_loop, t);
}
