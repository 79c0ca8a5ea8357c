/* Tasks: outputs collected and inputs staged through backend/artifacts.h. */
#include "backend/tasks_internal.h"
#include "backend/artifacts.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tasks_set_artifacts(struct tasks *t, struct artifacts *a)
{
	t->artifacts = a;
}

static void collect_done(void *arg, int err, const char *why)
{
	struct call *c = arg;
	struct tasks *t = c->t;
	struct waiter *wake = NULL;
	pthread_mutex_lock(&t->lock);
	struct task *k = tasks_find_locked(t, c->id);
	if (k && k->collecting) {
		k->collecting = false;
		k->collected = true;
		if (err && !k->output_note)
			k->output_note = xstrdup(why);
		tasks_finalize_if_ready_locked(t, k, &wake);
	}
	pthread_mutex_unlock(&t->lock);
	tasks_call_waiters(wake);
	tasks_call_free(c);
}

/* True when a task that ended has its outputs' record here (or has none to have); else
 * starts fetching it. Lock held; loop thread. */
bool tasks_outputs_ready_locked(struct tasks *t, struct task *k)
{
	assert(loop_is_current(t->loop));
	assert_held(&t->lock);
	if (!k->spec->n_outputs || !t->artifacts || k->collected || !k->row.dispatch_id ||
	    tasks_target_owns(t, k->row.node))
		return true;
	if (!k->collecting) {
		struct call *c = tasks_call_new(t, k->row.id, 0);
		k->collecting = true;
		if (artifacts_collect(t->artifacts, k->row.id, k->row.node, k->row.dispatch_id,
				      collect_done, c) < 0) {
			tasks_call_free(c);
			k->collecting = false;
			k->collected = true;
			tasks_set_str(&k->output_note,
				      "its outputs could not be fetched: its node is gone");
			return true;
		}
	}
	return false;
}

struct stage_call {
	struct tasks *t;
	char *id, *dispatch_id;
	json_t *staged; /* set by artifacts_stage */
};

static void stage_done(void *arg, int err, const char *why)
{
	struct stage_call *sc = arg;
	struct tasks *t = sc->t;
	struct waiter *wake = NULL;
	pthread_mutex_lock(&t->lock);
	struct task *k = tasks_find_locked(t, sc->id);
	/* still this attempt, still waiting to be sent */
	if (k && k->staging && k->row.dispatch_id && !strcmp(k->row.dispatch_id, sc->dispatch_id) &&
	    k->state == TASK_S_DISPATCHED) {
		k->staging = false;
		uint64_t due = 0;
		if (err == -EAGAIN && tasks_retry_policy(RETRY_STAGE, k, _TASK_STATE_INVALID,
							 k->dispatch_failures + 1, &due)) {
			/* the node did not answer: the node's poll sends it again after a wait */
			k->dispatch_failures++;
			k->dispatch_due_us = due;
			char reason[900];
			snprintf(reason, sizeof(reason), "%s; attempt %u, retrying", why,
				 k->dispatch_failures);
			tasks_set_str(&k->row.reason, reason);
		} else if (err) {
			tasks_set_state_locked(t, k, TASK_S_FAILED, why, &wake);
		} else {
			k->staged = sc->staged ? sc->staged : json_array();
			sc->staged = NULL;
			tasks_set_str(&k->row.reason, NULL);
			tasks_dispatch_locked(t, k);
		}
	} else if (k) {
		k->staging = false;
	}
	pthread_mutex_unlock(&t->lock);
	tasks_call_waiters(wake);
	json_decref(sc->staged);
	free(sc->id);
	free(sc->dispatch_id);
	free(sc);
}

/* True when the task's inputs are staged on its node for this attempt (or it has none);
 * else starts staging them. Lock held; loop thread. */
bool tasks_inputs_ready_locked(struct tasks *t, struct task *k)
{
	assert(loop_is_current(t->loop));
	assert_held(&t->lock);
	if (!k->spec->inputs || !t->artifacts || k->staged || tasks_target_owns(t, k->row.node))
		return true;
	if (k->staging)
		return false;
	/* who each source means: the copies of a node "all" task, or the task itself */
	json_t *producers = json_object();
	const char *name;
	json_t *src;
	json_object_foreach (k->spec->inputs, name, src) {
		const char *sv = json_string_value(src);
		const char *slash = strchr(sv, '/');
		if (sv[0] == '/' || !slash)
			continue;
		char *prod = xstrndup(sv, (size_t) (slash - sv));
		size_t n = strlen(prod);
		bool all = n > 2 && !strcmp(prod + n - 2, "@*");
		if (all)
			prod[n - 2] = '\0';
		struct task *p = tasks_find_locked(t, prod);
		json_t *ids = json_array();
		for (size_t i = 0; p && all && i < p->n_children; i++)
			json_array_append_new(ids, json_string(p->children[i]));
		if (p && !json_array_size(ids))
			json_array_append_new(ids, json_string(prod));
		json_object_set_new(producers, prod, ids);
		free(prod);
	}
	struct stage_call *sc = xcalloc(1, sizeof(*sc));
	sc->t = t;
	sc->id = xstrdup(k->row.id);
	sc->dispatch_id = xstrdup(k->row.dispatch_id);
	k->staging = true;
	tasks_set_str(&k->row.reason, "staging its inputs");
	if (artifacts_stage(t->artifacts, k->spec->inputs, producers, k->row.node,
			    k->row.dispatch_id, &sc->staged, stage_done, sc) < 0) {
		k->staging = false;
		free(sc->id);
		free(sc->dispatch_id);
		free(sc);
	}
	json_decref(producers);
	return false;
}
