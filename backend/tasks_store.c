/* Tasks: reading back from the store at the start and on demand, and retention. */
#include "backend/tasks_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void prune_run(void *arg);

/* A state as the store's counts give it: one this version does not know is counted as
 * queued. */
static enum task_state stored_state(const char *s)
{
	enum task_state st = task_state_from_string(s);
	return st == _TASK_STATE_INVALID ? TASK_S_QUEUED : st;
}

/* A task from its stored row (stolen): NULL when its spec or state does not parse. Finished
 * tasks leave their output in the store; unfinished ones carry it on. Lock held. */
struct task *tasks_task_from_row_locked(struct tasks *t, struct store_task *row)
{
	assert_held(&t->lock);
	struct task_spec *spec = NULL;
	char err[256];
	if (spec_parse(row->spec, strlen(row->spec), &spec, err, sizeof(err)) < 0) {
		log_err("store: task %s has a spec this version rejects (%s); skipped", row->id,
			err);
		store_task_clear(row);
		return NULL;
	}
	enum task_state state = task_state_from_string(row->state);
	if (state == _TASK_STATE_INVALID) {
		log_err("store: task %s has a state this version does not know (%s); skipped",
			row->id, row->state);
		spec_free(spec);
		store_task_clear(row);
		return NULL;
	}
	struct task *k = xcalloc(1, sizeof(*k));
	k->row = *row;
	memset(row, 0, sizeof(*row));
	k->state = state;
	k->spec = spec;
	k->spec_json = spec_to_json(spec);
	k->changed_at = k->row.finished_at > 0 ? k->row.finished_at : k->row.submitted_at;
	bool final = state_final(k->state);
	for (int s = 0; s < N_STREAMS; s++) {
		buf_init(&k->out[s]);
		if (final) {
			store_output_size(t->store, k->row.id, stream_names[s], &k->stored_len[s]);
			continue;
		}
		char *data = NULL;
		size_t len = 0;
		if (store_get_output(t->store, k->row.id, stream_names[s], &data, &len) == 0 && len)
			buf_append(&k->out[s], data, len);
		free(data);
	}
	k->out_stored = final;
	char *result = NULL;
	size_t result_len = 0;
	if (spec->model && final &&
	    store_get_output(t->store, k->row.id, "result", &result, &result_len) == 0 &&
	    result_len)
		k->result = xstrndup(result, result_len);
	free(result);
	if (!k->row.parent && spec->node && !strcmp(spec->node, "all"))
		store_list_children(t->store, k->row.id, &k->children, &k->n_children);
	return k;
}

/* ---- retention of finished tasks (loop thread) ---- */

/* Arms the retention's timer for its due time (loop thread). */
static void prune_arm_on_loop(void *arg)
{
	struct tasks *t = arg;
	assert(loop_is_current(t->loop));
	pthread_mutex_lock(&t->lock);
	double due = t->prune_armed_at;
	pthread_mutex_unlock(&t->lock);
	if (t->prune_timer)
		loop_timer_cancel(t->loop, t->prune_timer);
	double wait = due - clock_wall_s();
	/* a backlog goes in batches with room for other work between them */
	wait = wait < 0.01 ? 0.01 : wait > PRUNE_SAFETY_S ? PRUNE_SAFETY_S : wait;
	t->prune_timer =
		loop_timer_add(t->loop, clock_now_us() + (uint64_t) (wait * 1e6), prune_run, t);
}

/* Asks for a retention run at wall time `due`, unless one comes before. Lock held. */
void tasks_prune_arm_locked(struct tasks *t, double due)
{
	assert_held(&t->lock);
	if (!t->started || (t->prune_armed_at > 0 && t->prune_armed_at <= due))
		return;
	t->prune_armed_at = due;
	loop_post(t->loop, prune_arm_on_loop, t);
}

/* What a run removed: counts of removed records go down; the cached copy goes. */
static void pruned_one(void *arg, const char *id, const char *node, const char *state, bool record)
{
	struct tasks *t = arg;
	pthread_mutex_lock(&t->lock);
	struct task *k = tasks_find_locked(t, id);
	bool live = k && !state_final(k->state); /* retried meanwhile: counted */
	if (k && !live)
		tasks_forget_locked(t, k);
	if (record && state && !live) {
		enum task_state si = stored_state(state);
		t->state_counts[si]--;
		struct node_load *n = node ? tasks_node_load_locked(t, node, false) : NULL;
		if (n) {
			n->states[si]--;
			if (si != TASK_S_CANCELLED) {
				n->total--;
				n->completed -= si == TASK_S_SUCCEEDED;
			}
		}
		t->changed_at = clock_wall_s();
	}
	pthread_mutex_unlock(&t->lock);
}

/* One bounded run of tasks.retention; the next is armed for when there is work again
 * (a task's end arms one too), at most PRUNE_SAFETY_S away. */
static void prune_run(void *arg)
{
	struct tasks *t = arg;
	assert(loop_is_current(t->loop));
	t->prune_timer = NULL;
	struct config *cfg = cluster_get_config(t->cluster);
	const struct cfg_retention *c = &cfg->tasks.retention;
	struct store_retention p = {.output_s = c->output_days * 86400.0,
				    .output_bytes = (int64_t) (c->output_mb * 1048576.0),
				    .records_s = c->records_days * 86400.0};
	config_unref(cfg);
	pthread_mutex_lock(&t->lock);
	t->prune_armed_at = 0;
	pthread_mutex_unlock(&t->lock);
	double now = clock_wall_s(), next = 0;
	int n = store_prune(t->store, &p, now, PRUNE_BATCH, pruned_one, t, &next);
	if (n < 0)
		log_err("store: the retention of finished tasks failed: %s", strerror(-n));
	pthread_mutex_lock(&t->lock);
	t->output_total = store_output_total(t->store);
	if (next <= 0 || next > now + PRUNE_SAFETY_S)
		next = now + PRUNE_SAFETY_S;
	if (t->prune_armed_at <= 0 || t->prune_armed_at > next)
		t->prune_armed_at = next;
	pthread_mutex_unlock(&t->lock);
	prune_arm_on_loop(t);
}

static void tasks_start_on_loop(void *arg)
{
	struct tasks *t = arg;
	/* the backend thread writes states that the agents confirm after a crash anyway;
	 * submissions, on FUSE threads, keep an fsync per commit */
	store_set_durable(t->store, false);
	tasks_tick(t);
	prune_run(t);
}

/* The counts of the tasks in the store, by state and node (tasks_start). Lock held. */
static void count_one(void *arg, const char *node, const char *state, int64_t n)
{
	struct tasks *t = arg;
	enum task_state si = stored_state(state);
	t->state_counts[si] += (size_t) n;
	if (!node)
		return;
	struct node_load *nl = tasks_node_load_locked(t, node, true);
	nl->states[si] += (size_t) n;
	if (state_final(si) && si != TASK_S_CANCELLED) {
		nl->total += (int) n;
		if (si == TASK_S_SUCCEEDED)
			nl->completed += (int) n;
	}
}

static void ended_one(void *arg, const char *node, const char *state, double at)
{
	struct tasks *t = arg;
	enum task_state st = task_state_from_string(state);
	if (state_final(st))
		tasks_minute_counts_add(&tasks_node_load_locked(t, node, true)->ended, at,
					st == TASK_S_SUCCEEDED);
}

int tasks_start(struct tasks *t)
{
	/* the counts and the history come from the store's indexes; only the unfinished
	 * tasks are read (finished ones are read when asked for) */
	pthread_mutex_lock(&t->lock);
	int r = store_count_tasks(t->store, count_one, t);
	if (r == 0)
		r = store_count_ended_since(t->store, clock_wall_s() - 3600, ended_one, t);
	for (size_t b = 0; r == 0 && b < NODE_BUCKETS; b++)
		for (struct node_load *n = t->node_loads[b]; n; n = n->next)
			n->consecutive = store_node_failures_since_success(t->store, n->node);
	t->output_total = store_output_total(t->store);
	pthread_mutex_unlock(&t->lock);
	struct store_task *rows = NULL;
	size_t n = 0;
	if (r == 0)
		r = store_load_unfinished(t->store, &rows, &n);
	if (r < 0)
		return r;
	size_t recovered = 0, total = 0;
	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < n; i++) {
		struct task *k = tasks_task_from_row_locked(t, &rows[i]);
		if (!k)
			continue;
		tasks_add_locked(t, k, true); /* counted as the store has it */
		if (k->spec->model && state_active(k->state)) {
			/* DESIGN §3: a prompt has no side effects, and its stream died with us */
			tasks_set_str(&k->row.state, task_state_names[TASK_S_QUEUED]);
			k->state = TASK_S_QUEUED;
			tasks_set_str(&k->row.node, NULL);
			tasks_set_str(&k->row.dispatch_id, NULL);
			tasks_set_str(&k->row.reason,
				      "clusterfs restarted while it ran: asked again");
			buf_free(&k->out[0]);
			tasks_persist_locked(t, k);
			tasks_track_locked(t, k);
		}
		if (state_active(k->state))
			recovered++;
	}
	for (int i = 0; i < TASK_N_STATES; i++)
		total += t->state_counts[i];
	t->started = true;
	pthread_mutex_unlock(&t->lock);
	store_tasks_free(rows, n);
	if (total)
		cluster_add_event(
			t->cluster, "tasks", "store",
			"%zu task%s stored, %zu unfinished; reconciling %zu dispatched or "
			"running",
			total, total == 1 ? "" : "s", n, recovered);
	loop_post(t->loop, tasks_start_on_loop, t);
	return 0;
}
