/* Tasks: the table of tasks in memory, their counts, and the state machine (DESIGN §2, "The
 * tasks module"). */
#include "backend/tasks_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void update_parent_locked(struct tasks *t, struct task *child, struct waiter **wake);

const char *const stream_names[N_STREAMS] = {"stdout", "stderr"};

const char *const task_state_names[TASK_N_STATES] = {
	[TASK_S_QUEUED] = TASK_QUEUED,       [TASK_S_DISPATCHED] = TASK_DISPATCHED,
	[TASK_S_RUNNING] = TASK_RUNNING,     [TASK_S_SUCCEEDED] = TASK_SUCCEEDED,
	[TASK_S_FAILED] = TASK_FAILED,       [TASK_S_TIMED_OUT] = TASK_TIMED_OUT,
	[TASK_S_CANCELLED] = TASK_CANCELLED, [TASK_S_LOST] = TASK_LOST,
};

void tasks_minute_counts_add(struct minute_counts *m, double at, bool ok)
{
	int64_t minute = (int64_t) (at / 60);
	int i = (int) (minute % 60);
	if (m->minute[i] != minute) {
		m->minute[i] = minute;
		m->succeeded[i] = m->failed[i] = 0;
	}
	if (ok)
		m->succeeded[i]++;
	else
		m->failed[i]++;
}

void tasks_minute_counts_hour(const struct minute_counts *m, double now, int *ret_ok,
			      int *ret_failed)
{
	int64_t minute = (int64_t) (now / 60);
	*ret_ok = *ret_failed = 0;
	for (int i = 0; i < 60; i++) {
		if (m->minute[i] > minute - 60 && m->minute[i] <= minute) {
			*ret_ok += m->succeeded[i];
			*ret_failed += m->failed[i];
		}
	}
}

const char *const task_group_names[_TASK_GROUP_MAX] = {
	[TASK_G_QUEUED] = "queued",
	[TASK_G_RUNNING] = "running",
	[TASK_G_DONE] = "done",
	[TASK_G_FAILED] = "failed",
};

enum task_state task_state_from_string(const char *s)
{
	for (int i = 0; s && i < _TASK_STATE_MAX; i++)
		if (!strcmp(s, task_state_names[i]))
			return (enum task_state) i;
	return _TASK_STATE_INVALID;
}

enum task_group task_group_from_string(const char *s)
{
	for (int i = 0; s && i < _TASK_GROUP_MAX; i++)
		if (!strcmp(s, task_group_names[i]))
			return (enum task_group) i;
	return _TASK_GROUP_INVALID;
}

bool task_state_is_final(const char *s)
{
	return state_final(task_state_from_string(s));
}

void task_view_clear(struct task_view *v)
{
	char *strings[] = {v->id,        v->parent, v->state,  v->node,       v->reason,
			   v->placement, v->user,   v->run_as, v->dispatch_id};
	for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++)
		free(strings[i]);
	json_decref(v->remote);
	json_decref(v->spec);
	json_decref(v->children);
	memset(v, 0, sizeof(*v));
}

/* ---- the table ---- */

static size_t hash_str(const char *s)
{
	size_t h = 5381;
	for (; *s; s++)
		h = h * 33 + (unsigned char) *s;
	return h;
}

struct task *tasks_find_locked(struct tasks *t, const char *id)
{
	assert_held(&t->lock);
	for (struct task *k = t->hash[hash_str(id) % t->n_hash]; k; k = k->hnext)
		if (strcmp(k->row.id, id) == 0)
			return k;
	return NULL;
}

struct node_load *tasks_node_load_locked(struct tasks *t, const char *node, bool create)
{
	assert_held(&t->lock);
	size_t b = hash_str(node) % NODE_BUCKETS;
	for (struct node_load *n = t->node_loads[b]; n; n = n->next)
		if (!strcmp(n->node, node))
			return n;
	if (!create)
		return NULL;
	struct node_load *n = xcalloc(1, sizeof(*n));
	n->node = xstrdup(node);
	n->next = t->node_loads[b];
	t->node_loads[b] = n;
	return n;
}

static void list_unlink(struct task *k)
{
	if (!k->list)
		return;
	if (k->lprev)
		k->lprev->lnext = k->lnext;
	else
		*k->list = k->lnext;
	if (k->lnext)
		k->lnext->lprev = k->lprev;
	k->list = NULL;
	k->lprev = k->lnext = NULL;
}

static void list_push(struct task **list, struct task *k)
{
	k->list = list;
	k->lprev = NULL;
	k->lnext = *list;
	if (*list)
		(*list)->lprev = k;
	*list = k;
}

/* Puts a task on the work list its state says and books its node's active count.
 * Called after every change of state or node. Lock held. */
void tasks_track_locked(struct tasks *t, struct task *k)
{
	assert_held(&t->lock);
	enum task_state s = k->state;
	struct task **want = s == TASK_S_QUEUED ? &t->queued : state_active(s) ? &t->active : NULL;
	if (k->list != want) {
		list_unlink(k);
		if (want)
			list_push(want, k);
	}
	bool counts = want == &t->active && k->row.node && !k->n_children;
	if (k->active_node && (!counts || strcmp(k->active_node, k->row.node))) {
		tasks_node_load_locked(t, k->active_node, true)->active--;
		free(k->active_node);
		k->active_node = NULL;
	}
	if (counts && !k->active_node) {
		tasks_node_load_locked(t, k->row.node, true)->active++;
		k->active_node = xstrdup(k->row.node);
	} /* the counts by state, overall and per node */
	int si = (int) s;
	bool same_node = (!k->counted_node && !k->row.node) ||
			 (k->counted_node && k->row.node && !strcmp(k->counted_node, k->row.node));
	if (k->counted == si + 1 && same_node)
		return;
	if (k->counted) {
		t->state_counts[k->counted - 1]--;
		if (k->counted_node)
			tasks_node_load_locked(t, k->counted_node, true)->states[k->counted - 1]--;
		free(k->counted_node);
		k->counted_node = NULL;
	}
	t->state_counts[si]++;
	if (k->row.node) {
		tasks_node_load_locked(t, k->row.node, true)->states[si]++;
		k->counted_node = xstrdup(k->row.node);
	}
	k->counted = si + 1;
}

void tasks_count_states(struct tasks *t, const char *node, size_t ret_counts[TASK_N_STATES])
{
	pthread_mutex_lock(&t->lock);
	const struct node_load *n = node ? tasks_node_load_locked(t, node, false) : NULL;
	for (int i = 0; i < TASK_N_STATES; i++)
		ret_counts[i] = node ? (n ? n->states[i] : 0) : t->state_counts[i];
	pthread_mutex_unlock(&t->lock);
}

/* A task ended on its node: the node's history, as reliability reads it. Lock held. */
static void book_end_locked(struct tasks *t, const struct task *k)
{
	assert_held(&t->lock);
	if (k->row.node && !k->n_children && k->row.finished_at > 0)
		tasks_minute_counts_add(&tasks_node_load_locked(t, k->row.node, true)->ended,
					k->row.finished_at, k->state == TASK_S_SUCCEEDED);
	if (!k->row.node || k->n_children || k->state == TASK_S_CANCELLED)
		return;
	struct node_load *n = tasks_node_load_locked(t, k->row.node, true);
	n->total++;
	if (k->state == TASK_S_SUCCEEDED) {
		n->completed++;
		n->consecutive = 0;
	} else {
		n->consecutive++;
	}
}

struct user_load *tasks_user_load_locked(struct tasks *t, uid_t uid)
{
	assert_held(&t->lock);
	for (struct user_load *u = t->users; u; u = u->next)
		if (u->uid == uid)
			return u;
	struct user_load *u = xcalloc(1, sizeof(*u));
	u->uid = uid;
	u->next = t->users;
	t->users = u;
	return u;
}

/* Copies of a node:"all" task count with their parent, not on their own. */
static bool counts_for_user(const struct task *k)
{
	return !k->row.parent;
}

static void lru_unlink_locked(struct tasks *t, struct task *k)
{
	assert_held(&t->lock);
	if (!k->on_lru)
		return;
	if (k->cprev)
		k->cprev->cnext = k->cnext;
	else
		t->lru_head = k->cnext;
	if (k->cnext)
		k->cnext->cprev = k->cprev;
	else
		t->lru_tail = k->cprev;
	k->cprev = k->cnext = NULL;
	k->on_lru = false;
	t->n_lru--;
}

/* Keeps a finished task on the cache's list, most recently used first; takes an
 * unfinished one off it (unfinished tasks stay in memory). Lock held. */
static void lru_touch_locked(struct tasks *t, struct task *k)
{
	assert_held(&t->lock);
	lru_unlink_locked(t, k);
	if (!state_final(k->state))
		return;
	k->cnext = t->lru_head;
	if (t->lru_head)
		t->lru_head->cprev = k;
	t->lru_head = k;
	if (!t->lru_tail)
		t->lru_tail = k;
	k->on_lru = true;
	t->n_lru++;
}

/* Puts a task in memory. `stored`: read back from the store, where the counts by state
 * and the history include it already. Lock held. */
void tasks_add_locked(struct tasks *t, struct task *k, bool stored)
{
	assert_held(&t->lock);
	if (stored) {
		k->counted = (int) k->state + 1;
		k->counted_node = k->row.node ? xstrdup(k->row.node) : NULL;
	}
	if (counts_for_user(k) && !state_final(k->state))
		tasks_user_load_locked(t, k->row.uid)->unfinished++;
	if (++t->n_mem > t->n_hash) {
		size_t nh = t->n_hash * 2;
		struct task **h = xcalloc(nh, sizeof(*h));
		for (size_t i = 0; i < t->n_hash; i++) {
			struct task *x = t->hash[i];
			while (x) {
				struct task *next = x->hnext;
				size_t b = hash_str(x->row.id) % nh;
				x->hnext = h[b];
				h[b] = x;
				x = next;
			}
		}
		free(t->hash);
		t->hash = h;
		t->n_hash = nh;
	}
	size_t b = hash_str(k->row.id) % t->n_hash;
	k->hnext = t->hash[b];
	t->hash[b] = k;
	if (!stored)
		t->changed_at = clock_wall_s();
	tasks_track_locked(t, k);
	if (!stored && state_final(k->state))
		book_end_locked(t, k);
	lru_touch_locked(t, k);
}

/* Drops a task from memory (not from the store, nor from the counts). Lock held. */
void tasks_forget_locked(struct tasks *t, struct task *k)
{
	assert_held(&t->lock);
	for (struct task **pp = &t->hash[hash_str(k->row.id) % t->n_hash]; *pp;
	     pp = &(*pp)->hnext) {
		if (*pp == k) {
			*pp = k->hnext;
			break;
		}
	}
	t->n_mem--;
	lru_unlink_locked(t, k);
	list_unlink(k);
	tasks_task_free(k);
}

/* Drops the least recently used finished tasks beyond tasks.finished_cached. Called only
 * where no task pointer is held. Lock held. */
void tasks_cache_trim_locked(struct tasks *t)
{
	assert_held(&t->lock);
	struct config *cfg = cluster_get_config(t->cluster);
	size_t max = (size_t) cfg->tasks.finished_cached;
	config_unref(cfg);
	while (t->n_lru > max && t->lru_tail)
		tasks_forget_locked(t, t->lru_tail);
}

/* Task `id` in memory, else read back from the store into the cache of finished ones.
 * NULL when there is none. Lock held. */
struct task *tasks_lookup_locked(struct tasks *t, const char *id)
{
	assert_held(&t->lock);
	struct task *k = tasks_find_locked(t, id);
	if (!k && !json_object_get(t->reserved, id)) {
		struct store_task row;
		if (store_load_task(t->store, id, &row) < 0)
			return NULL;
		/* every unfinished task is in memory already: a row that says otherwise is
		 * being committed, or rejected at the start */
		if (!task_state_is_final(row.state)) {
			store_task_clear(&row);
			return NULL;
		}
		k = tasks_task_from_row_locked(t, &row);
		if (k)
			tasks_add_locked(t, k, true);
		return k;
	}
	if (k && k->on_lru)
		lru_touch_locked(t, k);
	return k;
}

void tasks_task_free(struct task *k)
{
	if (k) {
		free(k->output_note);
		json_decref(k->remote_doc);
		free(k->result);
		free(k->avoid_node);
		json_decref(k->staged);
	}
	store_task_clear(&k->row);
	spec_free(k->spec);
	json_decref(k->spec_json);
	for (size_t i = 0; i < k->n_children; i++)
		free(k->children[i]);
	free(k->children);
	for (int s = 0; s < N_STREAMS; s++)
		buf_free(&k->out[s]);
	free(k->remote_error);
	free(k->active_node);
	free(k->counted_node);
	struct waiter *w = k->waiters;
	while (w) {
		struct waiter *next = w->next;
		w->done(w->arg, NULL, -1);
		free(w);
		w = next;
	}
	free(k);
}

int tasks_new(struct loop *loop, struct cluster *cluster, struct store *store, struct tasks **ret)
{
	struct tasks *t = xcalloc(1, sizeof(*t));
	t->loop = loop;
	t->cluster = cluster;
	t->store = store;
	t->n_hash = 256;
	t->hash = xcalloc(t->n_hash, sizeof(*t->hash));
	t->next_wait = 1;
	t->reserved = json_object();
	pthread_mutex_init(&t->commit_lock, NULL);
	pthread_cond_init(&t->commit_cond, NULL);
	t->changed_at = clock_wall_s();
	pthread_mutex_init(&t->lock, NULL);
	*ret = t;
	return 0;
}

void tasks_free(struct tasks *t)
{
	if (!t)
		return;
	for (size_t b = 0; b < t->n_hash; b++) {
		while (t->hash[b]) {
			struct task *next = t->hash[b]->hnext;
			tasks_task_free(t->hash[b]);
			t->hash[b] = next;
		}
	}
	free(t->hash);
	json_decref(t->reserved);
	pthread_mutex_destroy(&t->commit_lock);
	pthread_cond_destroy(&t->commit_cond);
	struct node_poll *p = t->polls;
	while (p) {
		struct node_poll *next = p->next;
		free(p->node);
		free(p);
		p = next;
	}
	while (t->users) {
		struct user_load *next = t->users->next;
		free(t->users);
		t->users = next;
	}
	for (size_t b = 0; b < NODE_BUCKETS; b++) {
		while (t->node_loads[b]) {
			struct node_load *next = t->node_loads[b]->next;
			free(t->node_loads[b]->node);
			free(t->node_loads[b]);
			t->node_loads[b] = next;
		}
	}
	pthread_mutex_destroy(&t->lock);
	free(t);
}

/* ---- the state machine (lock held) ---- */

void tasks_set_str(char **dst, const char *src)
{
	if (*dst == src)
		return;
	char *n = src ? xstrdup(src) : NULL;
	free(*dst);
	*dst = n;
}

void tasks_persist_locked(struct tasks *t, struct task *k)
{
	assert_held(&t->lock);
	int r = store_update_task(t->store, &k->row);
	if (r < 0)
		log_err("store: cannot update task %s: %s", k->row.id, strerror(-r));
	k->changed_at = clock_wall_s();
	t->changed_at = k->changed_at;
}

static void wake_waiters_locked(struct tasks *t, struct task *k, struct waiter **ret_list)
{
	assert_held(&t->lock);
	struct waiter *w = k->waiters;
	k->waiters = NULL;
	while (w) {
		struct waiter *next = w->next;
		w->state = xstrdup(k->row.state);
		w->exit_code = k->row.exit_code;
		w->next = *ret_list;
		*ret_list = w;
		w = next;
	}
}

/* Calls woken waiters, outside the lock. */
void tasks_call_waiters(struct waiter *w)
{
	while (w) {
		struct waiter *next = w->next;
		w->done(w->arg, w->state, w->exit_code);
		free(w->state);
		free(w);
		w = next;
	}
}

/* Asks the loop thread to schedule soon, once however often it is asked. Lock held. */
static void post_schedule_locked(struct tasks *t)
{
	assert_held(&t->lock);
	if (t->started && !t->schedule_posted && t->queued) {
		t->schedule_posted = true;
		loop_post(t->loop, tasks_schedule_on_loop, t);
	}
}

/* A task ended: its output goes to the store and leaves memory (a failed write keeps it
 * here), and the retention learns when there is work for it. Lock held. */
static void output_to_store_locked(struct tasks *t, struct task *k)
{
	assert_held(&t->lock);
	if (k->out_stored)
		return;
	for (int s = 0; s < N_STREAMS; s++) {
		int r = store_put_output(t->store, k->row.id, stream_names[s], k->out[s].data,
					 k->out[s].len);
		if (r < 0) {
			log_err("store: cannot keep the %s of task %s: %s", stream_names[s],
				k->row.id, strerror(-r));
			return;
		}
	}
	for (int s = 0; s < N_STREAMS; s++) {
		k->stored_len[s] = k->out[s].len;
		t->output_total += (int64_t) k->out[s].len;
		buf_free(&k->out[s]);
	}
	k->out_stored = true;
	struct config *cfg = cluster_get_config(t->cluster);
	const struct cfg_retention *p = &cfg->tasks.retention;
	if (p->output_mb > 0 && (double) t->output_total > p->output_mb * 1048576.0)
		tasks_prune_arm_locked(t, clock_wall_s());
	else if (p->output_days > 0)
		tasks_prune_arm_locked(t, k->row.finished_at + p->output_days * 86400.0);
	config_unref(cfg);
}

void tasks_set_state_locked(struct tasks *t, struct task *k, enum task_state state,
			    const char *reason, struct waiter **wake)
{
	assert_held(&t->lock);
	bool same = k->state == state;
	bool was_final = state_final(k->state);
	if (counts_for_user(k) && was_final != state_final(state))
		tasks_user_load_locked(t, k->row.uid)->unfinished += was_final ? 1 : -1;
	tasks_set_str(&k->row.state, task_state_names[state]);
	k->state = state;
	if (reason)
		tasks_set_str(&k->row.reason, reason);
	bool was_active = k->list == &t->active;
	tasks_track_locked(t, k);
	/* a slot freed or a task waits: place work now, not at the next tick */
	if ((was_active && k->list != &t->active) || k->list == &t->queued)
		post_schedule_locked(t);
	if (state_final(state)) {
		if (k->row.finished_at <= 0)
			k->row.finished_at = clock_wall_s();
		wake_waiters_locked(t, k, wake);
		if (!was_final)
			book_end_locked(t, k);
	}
	/* the output before the state that says it is complete */
	if (state_final(state))
		output_to_store_locked(t, k);
	tasks_persist_locked(t, k);
	lru_touch_locked(t, k);
	if (!same) {
		if (state_final(state) && k->row.exit_code >= 0)
			cluster_add_event(t->cluster, "task", k->row.id, "%s (exit %d)%s%s%s",
					  task_state_names[state], k->row.exit_code,
					  k->row.node ? " on " : "", k->row.node ? k->row.node : "",
					  "");
		else
			cluster_add_event(t->cluster, "task", k->row.id, "%s%s%s%s%s",
					  task_state_names[state],
					  k->row.node && state != TASK_S_QUEUED ? " on " : "",
					  k->row.node && state != TASK_S_QUEUED ? k->row.node : "",
					  reason ? ": " : "", reason ? reason : "");
	}
	if (k->row.parent)
		update_parent_locked(t, k, wake);
}

/* A node:"all" task is the sum of its copies: running while any runs, succeeded when all
 * succeeded, failed when all ended and one did not succeed. Lock held. */
static void update_parent_locked(struct tasks *t, struct task *child, struct waiter **wake)
{
	assert_held(&t->lock);
	struct task *p = tasks_find_locked(t, child->row.parent);
	if (!p || state_final(p->state))
		return;
	size_t done = 0, ok = 0, running = 0;
	int worst = 0;
	for (size_t i = 0; i < p->n_children; i++) {
		struct task *c = tasks_lookup_locked(t, p->children[i]);
		if (!c)
			continue;
		if (state_final(c->state)) {
			done++;
			if (c->state == TASK_S_SUCCEEDED)
				ok++;
			else if (c->row.exit_code > worst)
				worst = c->row.exit_code;
		} else if (state_active(c->state)) {
			running++;
		}
	}
	if (done == p->n_children) {
		p->row.exit_code = ok == done ? 0 : (worst > 0 ? worst : 1);
		char why[128];
		snprintf(why, sizeof(why), "%zu of %zu copies succeeded", ok, done);
		tasks_set_state_locked(t, p, ok == done ? TASK_S_SUCCEEDED : TASK_S_FAILED, why,
				       wake);
	} else if (running && p->state != TASK_S_RUNNING) {
		if (p->row.started_at <= 0)
			p->row.started_at = clock_wall_s();
		tasks_set_state_locked(t, p, TASK_S_RUNNING, NULL, wake);
	}
}

/* ---- wiring ---- */

bool tasks_target_owns(struct tasks *t, const char *node)
{
	return t->target.owns && node && t->target.owns(t->target.arg, node);
}

void tasks_set_target(struct tasks *t, const struct tasks_target *target)
{
	t->target = *target;
}

void tasks_on_cluster_change(void *arg, const char *node)
{
	struct tasks *t = arg;
	/* a change can only place queued work: a heartbeat of an idle cluster costs no
	 * scheduling round */
	pthread_mutex_lock(&t->lock);
	post_schedule_locked(t);
	pthread_mutex_unlock(&t->lock);
}
