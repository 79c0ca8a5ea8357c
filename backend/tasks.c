/* Tasks: submission, placement, dispatch, progress, output, waiting, cancel, recovery. */
#include "backend/tasks.h"
#include "backend/artifacts.h"
#include "backend/endpoint.h"
#include "backend/sched.h"
#include "backend/spec.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TICK_US          (250 * 1000ull) /* progress polling and scheduling */
#define FETCH_MAX        (1u << 20)      /* output bytes asked per request */
#define AGENT_TIMEOUT_MS 5000L
#define N_STREAMS        2
#define TOMBSTONES       64
#define PRUNE_BATCH      256               /* finished tasks one retention run handles */
#define PRUNE_SAFETY_S   3600.0            /* the longest time between two retention runs */
#define FETCH_TRIES      6                 /* failed output fetches before a stream gives up */
#define RETRY_FIRST_US   (250 * 1000ull)   /* first wait after a failed fetch or dispatch */
#define RETRY_MAX_US     (30 * 1000000ull) /* the longest wait between two attempts */

static const char *const stream_names[N_STREAMS] = {"stdout", "stderr"};

struct waiter {
	uint64_t id;
	tasks_wait_fn done;
	void *arg;
	char *state; /* the final state, once woken */
	int exit_code;
	struct waiter *next;
};

/* One task. Fields are protected by tasks->lock. */
struct task {
	struct store_task row;
	struct task_spec *spec;
	json_t *spec_json;
	char **children; /* ids of the copies of a node:"all" task */
	size_t n_children;
	struct buf out[N_STREAMS]; /* output kept by the control plane */
	bool out_full[N_STREAMS];
	bool fetching[N_STREAMS];           /* a fetch is in flight (loop thread) */
	size_t remote_size[N_STREAMS];      /* the agent's last reported size */
	unsigned fetch_failures[N_STREAMS]; /* failed fetches in a row */
	uint64_t fetch_due_us[N_STREAMS];   /* no fetch before this (backoff) */
	char *output_note;                  /* why some output is missing, once given up */
	unsigned dispatch_failures;         /* failed dispatches in a row */
	uint64_t dispatch_due_us;           /* no dispatch before this (backoff) */
	bool dispatching;                   /* a POST is in flight */
	bool acked;                         /* the agent has confirmed this attempt */
	bool cancel_requested;
	bool cancel_sent;
	char *remote_state; /* the agent's final state, once seen; finalised after output */
	char *remote_error; /* the agent's sentence for why it ended, or NULL */
	int remote_exit;
	double changed_at;
	struct waiter *waiters;
	struct task *hnext; /* hash chain */
	/* the work lists: queued tasks, and dispatched or running ones, so that scheduling
	 * and polling cost what is in flight, never the whole history */
	struct task **list;         /* the list it is on (&t->queued, &t->active), or NULL */
	struct task *lprev, *lnext; /* on that list */
	char *active_node;          /* the node whose active count includes this task */
	int counted;                /* 1 + the state index its counts hold; 0: none */
	char *counted_node;         /* the node whose state counts include it, or NULL */
	json_t *remote_doc;         /* the node's last task object (its id says which attempt) */
	/* a finished task is a cache entry: its output is in the store, and it is dropped
	 * from memory when the cache is full (it is read from the store again when asked) */
	bool out_stored;              /* out[] went to the store: read it there */
	size_t stored_len[N_STREAMS]; /* the stored lengths */
	bool on_lru;                  /* on tasks->lru: finished */
	struct task *cprev, *cnext;   /* on that list, most recently used first */
	char *result;                 /* a prompt task's final JSON, or NULL */
	char *avoid_node;             /* a prompt task's node of its last failed attempt, or NULL */
	bool collecting, collected;   /* outputs: the record is being fetched, or was (attempt) */
	bool staging;                 /* inputs: being staged for the current attempt */
	json_t *staged;               /* inputs: the names staged for it, or NULL */
};

/* Counts by minute for the last hour: a ring of 60, so that "how many in the last hour"
 * costs 60 additions, never a walk of the history. */
struct minute_counts {
	int64_t minute[60]; /* the minute (wall time / 60) slot i counts, or 0 */
	int succeeded[60];
	int failed[60]; /* failed, timed out, cancelled or lost */
};

static void minute_counts_add(struct minute_counts *m, double at, bool ok)
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

static void minute_counts_hour(const struct minute_counts *m, double now, int *ret_ok,
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

/* One node's task counts, kept as states change: its load now and the history that
 * reliability comes from (DESIGN §6). */
struct node_load {
	char *node;
	int active;                   /* dispatched or running there */
	int completed;                /* succeeded there */
	int total;                    /* ended there, cancellations not counted */
	int consecutive;              /* failures since the last success */
	size_t states[TASK_N_STATES]; /* tasks placed there, by state */
	struct minute_counts ended;   /* tasks that ended there, by the minute they ended */
	struct node_load *next;
};

#define NODE_BUCKETS 1024

/* Unfinished tasks of one submitter, for tasks.queued_per_user. Few users: a list. */
struct user_load {
	uid_t uid;
	int unfinished;
	struct user_load *next;
};

struct node_poll {
	char *node;
	bool in_flight;
	double agent_time; /* the agent's clock at the last answered poll; 0 none */
	uint64_t index;    /* the agent's change number at that poll; 0: it has none */
	struct node_poll *next;
};

struct tasks {
	struct loop *loop;
	struct cluster *cluster;
	struct store *store;
	pthread_mutex_t lock;
	/* in memory: every unfinished task, and a bounded cache of finished ones; the store
	 * holds them all (listings and counts never walk memory) */
	struct task **hash; /* protected by lock */
	size_t n_hash;
	size_t n_mem;                     /* tasks in the hash; protected by lock */
	struct task *lru_head, *lru_tail; /* the finished ones; protected by lock */
	size_t n_lru;                     /* protected by lock */
	int64_t output_total;             /* bytes of output in the store; protected by lock */
	double prune_armed_at;            /* wall time a retention run is due, 0: none; lock */
	struct loop_timer *prune_timer;   /* loop thread only */
	uint64_t next_wait;               /* protected by lock */
	json_t *reserved;                 /* ids tasks_submit is committing; protected by lock */
	pthread_mutex_t commit_lock;      /* guards commits and committing */
	pthread_cond_t commit_cond;
	struct commit *commits;          /* submissions waiting for the next group commit */
	bool committing;                 /* a leader is committing */
	uint64_t tombstones[TOMBSTONES]; /* waits cancelled before they were registered */
	size_t next_tombstone;
	double changed_at;       /* protected by lock */
	bool schedule_posted;    /* protected by lock */
	struct user_load *users; /* protected by lock */
	struct task *queued;     /* work lists (see struct task); protected by lock */
	struct task *active;
	struct node_load *node_loads[NODE_BUCKETS]; /* protected by lock */
	size_t state_counts[TASK_N_STATES];         /* protected by lock */
	struct node_poll *polls;                    /* loop thread only */
	struct loop_timer *tick;                    /* loop thread only */
	bool started;
	struct tasks_target target;   /* set before the start */
	struct tasks_prompts prompts; /* set before the start */
	struct artifacts *artifacts;  /* set before the start, or NULL */
};

static bool outputs_ready_locked(struct tasks *t, struct task *k);
static bool inputs_ready_locked(struct tasks *t, struct task *k);

const char *const task_state_names[TASK_N_STATES] = {
	TASK_QUEUED, TASK_DISPATCHED, TASK_RUNNING,   TASK_SUCCEEDED,
	TASK_FAILED, TASK_TIMED_OUT,  TASK_CANCELLED, TASK_LOST,
};

static int state_index(const char *s)
{
	for (int i = 0; i < TASK_N_STATES; i++)
		if (!strcmp(s, task_state_names[i]))
			return i;
	return 0;
}
static bool target_owns(struct tasks *t, const char *node);

bool task_state_is_final(const char *s)
{
	return !strcmp(s, TASK_SUCCEEDED) || !strcmp(s, TASK_FAILED) ||
	       !strcmp(s, TASK_TIMED_OUT) || !strcmp(s, TASK_CANCELLED) || !strcmp(s, TASK_LOST);
}

static bool state_is_active(const char *s)
{
	return !strcmp(s, TASK_DISPATCHED) || !strcmp(s, TASK_RUNNING);
}

void task_view_clear(struct task_view *v)
{
	free(v->id);
	free(v->parent);
	free(v->state);
	free(v->node);
	free(v->reason);
	free(v->placement);
	free(v->user);
	free(v->run_as);
	free(v->dispatch_id);
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

static struct task *find_locked(struct tasks *t, const char *id)
{
	for (struct task *k = t->hash[hash_str(id) % t->n_hash]; k; k = k->hnext)
		if (strcmp(k->row.id, id) == 0)
			return k;
	return NULL;
}

static struct node_load *node_load_locked(struct tasks *t, const char *node, bool create)
{
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
static void track_locked(struct tasks *t, struct task *k)
{
	const char *s = k->row.state;
	struct task **want = !strcmp(s, TASK_QUEUED) ? &t->queued
			     : (!strcmp(s, TASK_DISPATCHED) || !strcmp(s, TASK_RUNNING))
				     ? &t->active
				     : NULL;
	if (k->list != want) {
		list_unlink(k);
		if (want)
			list_push(want, k);
	}
	bool counts = want == &t->active && k->row.node && !k->n_children;
	if (k->active_node && (!counts || strcmp(k->active_node, k->row.node))) {
		node_load_locked(t, k->active_node, true)->active--;
		free(k->active_node);
		k->active_node = NULL;
	}
	if (counts && !k->active_node) {
		node_load_locked(t, k->row.node, true)->active++;
		k->active_node = xstrdup(k->row.node);
	} /* the counts by state, overall and per node */
	int si = state_index(s);
	bool same_node = (!k->counted_node && !k->row.node) ||
			 (k->counted_node && k->row.node && !strcmp(k->counted_node, k->row.node));
	if (k->counted == si + 1 && same_node)
		return;
	if (k->counted) {
		t->state_counts[k->counted - 1]--;
		if (k->counted_node)
			node_load_locked(t, k->counted_node, true)->states[k->counted - 1]--;
		free(k->counted_node);
		k->counted_node = NULL;
	}
	t->state_counts[si]++;
	if (k->row.node) {
		node_load_locked(t, k->row.node, true)->states[si]++;
		k->counted_node = xstrdup(k->row.node);
	}
	k->counted = si + 1;
}

void tasks_count_states(struct tasks *t, const char *node, size_t ret_counts[TASK_N_STATES])
{
	pthread_mutex_lock(&t->lock);
	const struct node_load *n = node ? node_load_locked(t, node, false) : NULL;
	for (int i = 0; i < TASK_N_STATES; i++)
		ret_counts[i] = node ? (n ? n->states[i] : 0) : t->state_counts[i];
	pthread_mutex_unlock(&t->lock);
}

/* A task ended on its node: the node's history, as reliability reads it. Lock held. */
static void book_end_locked(struct tasks *t, const struct task *k)
{
	if (k->row.node && !k->n_children && k->row.finished_at > 0)
		minute_counts_add(&node_load_locked(t, k->row.node, true)->ended,
				  k->row.finished_at, !strcmp(k->row.state, TASK_SUCCEEDED));
	if (!k->row.node || k->n_children || !strcmp(k->row.state, TASK_CANCELLED))
		return;
	struct node_load *n = node_load_locked(t, k->row.node, true);
	n->total++;
	if (!strcmp(k->row.state, TASK_SUCCEEDED)) {
		n->completed++;
		n->consecutive = 0;
	} else {
		n->consecutive++;
	}
}

static struct user_load *user_load_locked(struct tasks *t, uid_t uid)
{
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
	lru_unlink_locked(t, k);
	if (!task_state_is_final(k->row.state))
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
static void add_locked(struct tasks *t, struct task *k, bool stored)
{
	if (stored) {
		k->counted = state_index(k->row.state) + 1;
		k->counted_node = k->row.node ? xstrdup(k->row.node) : NULL;
	}
	if (counts_for_user(k) && !task_state_is_final(k->row.state))
		user_load_locked(t, k->row.uid)->unfinished++;
	if (++t->n_mem > t->n_hash) {
		size_t nh = t->n_hash * 2;
		struct task **h = calloc(nh, sizeof(*h));
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
	track_locked(t, k);
	if (!stored && task_state_is_final(k->row.state))
		book_end_locked(t, k);
	lru_touch_locked(t, k);
}

static void task_free(struct task *k);

/* Drops a task from memory (not from the store, nor from the counts). Lock held. */
static void forget_locked(struct tasks *t, struct task *k)
{
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
	task_free(k);
}

/* Drops the least recently used finished tasks beyond tasks.finished_cached. Called only
 * where no task pointer is held. Lock held. */
static void cache_trim_locked(struct tasks *t)
{
	struct config *cfg = cluster_get_config(t->cluster);
	size_t max = (size_t) cfg->tasks.finished_cached;
	config_unref(cfg);
	while (t->n_lru > max && t->lru_tail)
		forget_locked(t, t->lru_tail);
}

/* A task from its stored row (stolen): NULL when its spec does not parse. Finished
 * tasks leave their output in the store; unfinished ones carry it on. Lock held. */
static struct task *task_from_row_locked(struct tasks *t, struct store_task *row)
{
	struct task_spec *spec = NULL;
	char err[256];
	if (spec_parse(row->spec, strlen(row->spec), &spec, err, sizeof(err)) < 0) {
		log_err("store: task %s has a spec this version rejects (%s); skipped", row->id,
			err);
		store_task_clear(row);
		return NULL;
	}
	struct task *k = xcalloc(1, sizeof(*k));
	k->row = *row;
	memset(row, 0, sizeof(*row));
	k->spec = spec;
	k->spec_json = spec_to_json(spec);
	k->changed_at = k->row.finished_at > 0 ? k->row.finished_at : k->row.submitted_at;
	bool final = task_state_is_final(k->row.state);
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

/* Task `id` in memory, else read back from the store into the cache of finished ones.
 * NULL when there is none. Lock held. */
static struct task *lookup_locked(struct tasks *t, const char *id)
{
	struct task *k = find_locked(t, id);
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
		k = task_from_row_locked(t, &row);
		if (k)
			add_locked(t, k, true);
		return k;
	}
	if (k && k->on_lru)
		lru_touch_locked(t, k);
	return k;
}

static void task_free(struct task *k)
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
	free(k->remote_state);
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
	struct tasks *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->loop = loop;
	t->cluster = cluster;
	t->store = store;
	t->n_hash = 256;
	t->hash = calloc(t->n_hash, sizeof(*t->hash));
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
			task_free(t->hash[b]);
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

/* ---- persistence helpers (lock held) ---- */

static void set_str(char **dst, const char *src)
{
	if (*dst == src)
		return;
	char *n = src ? strdup(src) : NULL;
	free(*dst);
	*dst = n;
}

static void persist_locked(struct tasks *t, struct task *k)
{
	int r = store_update_task(t->store, &k->row);
	if (r < 0)
		log_err("store: cannot update task %s: %s", k->row.id, strerror(-r));
	k->changed_at = clock_wall_s();
	t->changed_at = k->changed_at;
}

static void wake_waiters_locked(struct task *k, struct waiter **ret_list)
{
	struct waiter *w = k->waiters;
	k->waiters = NULL;
	while (w) {
		struct waiter *next = w->next;
		w->state = strdup(k->row.state);
		w->exit_code = k->row.exit_code;
		w->next = *ret_list;
		*ret_list = w;
		w = next;
	}
}

/* Calls woken waiters, outside the lock. */
static void call_waiters(struct waiter *w)
{
	while (w) {
		struct waiter *next = w->next;
		w->done(w->arg, w->state, w->exit_code);
		free(w->state);
		free(w);
		w = next;
	}
}

static void update_parent_locked(struct tasks *t, struct task *child, struct waiter **wake);

/* Moves a task to a state, persists it and records the event. Lock held. */
static void schedule_on_loop(void *arg);

/* Asks the loop thread to schedule soon, once however often it is asked. Lock held. */
static void post_schedule_locked(struct tasks *t)
{
	if (t->started && !t->schedule_posted && t->queued) {
		t->schedule_posted = true;
		loop_post(t->loop, schedule_on_loop, t);
	}
}

static void prune_arm_locked(struct tasks *t, double due);

/* A task ended: its output goes to the store and leaves memory (a failed write keeps it
 * here), and the retention learns when there is work for it. Lock held. */
static void output_to_store_locked(struct tasks *t, struct task *k)
{
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
		prune_arm_locked(t, clock_wall_s());
	else if (p->output_days > 0)
		prune_arm_locked(t, k->row.finished_at + p->output_days * 86400.0);
	config_unref(cfg);
}

static void set_state_locked(struct tasks *t, struct task *k, const char *state, const char *reason,
			     struct waiter **wake)
{
	bool same = strcmp(k->row.state, state) == 0;
	bool was_final = task_state_is_final(k->row.state);
	if (counts_for_user(k) && was_final != task_state_is_final(state))
		user_load_locked(t, k->row.uid)->unfinished += was_final ? 1 : -1;
	set_str(&k->row.state, state);
	if (reason)
		set_str(&k->row.reason, reason);
	bool was_active = k->list == &t->active;
	track_locked(t, k);
	/* a slot freed or a task waits: place work now, not at the next tick */
	if ((was_active && k->list != &t->active) || k->list == &t->queued)
		post_schedule_locked(t);
	if (task_state_is_final(state)) {
		if (k->row.finished_at <= 0)
			k->row.finished_at = clock_wall_s();
		wake_waiters_locked(k, wake);
		if (!was_final)
			book_end_locked(t, k);
	}
	/* the output before the state that says it is complete */
	if (task_state_is_final(state))
		output_to_store_locked(t, k);
	persist_locked(t, k);
	lru_touch_locked(t, k);
	if (!same) {
		if (task_state_is_final(state) && k->row.exit_code >= 0)
			cluster_add_event(t->cluster, "task", k->row.id, "%s (exit %d)%s%s%s",
					  state, k->row.exit_code, k->row.node ? " on " : "",
					  k->row.node ? k->row.node : "", "");
		else
			cluster_add_event(t->cluster, "task", k->row.id, "%s%s%s%s%s", state,
					  k->row.node && strcmp(state, TASK_QUEUED) ? " on " : "",
					  k->row.node && strcmp(state, TASK_QUEUED) ? k->row.node
										    : "",
					  reason ? ": " : "", reason ? reason : "");
	}
	if (k->row.parent)
		update_parent_locked(t, k, wake);
}

/* A node:"all" task is the sum of its copies: running while any runs, succeeded when all
 * succeeded, failed when all ended and one did not succeed. Lock held. */
static void update_parent_locked(struct tasks *t, struct task *child, struct waiter **wake)
{
	struct task *p = find_locked(t, child->row.parent);
	if (!p || task_state_is_final(p->row.state))
		return;
	size_t done = 0, ok = 0, running = 0;
	int worst = 0;
	for (size_t i = 0; i < p->n_children; i++) {
		struct task *c = lookup_locked(t, p->children[i]);
		if (!c)
			continue;
		if (task_state_is_final(c->row.state)) {
			done++;
			if (!strcmp(c->row.state, TASK_SUCCEEDED))
				ok++;
			else if (c->row.exit_code > worst)
				worst = c->row.exit_code;
		} else if (state_is_active(c->row.state)) {
			running++;
		}
	}
	if (done == p->n_children) {
		p->row.exit_code = ok == done ? 0 : (worst > 0 ? worst : 1);
		char why[128];
		snprintf(why, sizeof(why), "%zu of %zu copies succeeded", ok, done);
		set_state_locked(t, p, ok == done ? TASK_SUCCEEDED : TASK_FAILED, why, wake);
	} else if (running && strcmp(p->row.state, TASK_RUNNING)) {
		if (p->row.started_at <= 0)
			p->row.started_at = clock_wall_s();
		set_state_locked(t, p, TASK_RUNNING, NULL, wake);
	}
}

/* ---- submission ---- */

/* Who submits: the FUSE request's uid and gid, and the name the uid has here. */
struct submitter {
	uid_t uid;
	gid_t gid;
	const char *user; /* or NULL when the uid has no name on this machine */
};

static struct task *task_from_spec(const char *id, struct task_spec *spec,
				   const struct submitter *who, const char *parent)
{
	struct task *k = calloc(1, sizeof(*k));
	k->spec = spec;
	k->spec_json = spec_to_json(spec);
	k->row.id = strdup(id);
	k->row.parent = parent ? strdup(parent) : NULL;
	k->row.spec = json_dumps(k->spec_json, JSON_COMPACT | JSON_PRESERVE_ORDER);
	k->row.state = strdup(TASK_QUEUED);
	k->row.exit_code = -1;
	k->row.priority = spec->priority;
	k->row.uid = who->uid;
	k->row.gid = who->gid;
	k->row.user = who->user ? strdup(who->user) : NULL;
	k->row.submitted_at = clock_wall_s();
	k->changed_at = k->row.submitted_at;
	for (int s = 0; s < N_STREAMS; s++)
		buf_init(&k->out[s]);
	return k;
}

/* Node descriptions for the scheduler, from the cluster's views. The arrays in *ret_views
 * own the strings the sched_nodes borrow. Caller holds tasks->lock (for the counts). */
struct sched_input {
	struct node_view *views;
	struct sched_node *nodes;
	const char ***caps;
	size_t n;
};

static int active_on_locked(struct tasks *t, const char *node)
{
	struct node_load *n = node_load_locked(t, node, false);
	return n ? n->active : 0;
}

static void sched_input_build_locked(struct tasks *t, struct sched_input *in)
{
	size_t n = 0;
	char **names = cluster_list_nodes(t->cluster, &n);
	in->views = calloc(n + 1, sizeof(*in->views));
	in->nodes = calloc(n + 1, sizeof(*in->nodes));
	in->caps = calloc(n + 1, sizeof(*in->caps));
	struct config *cfg = cluster_get_config(t->cluster);
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		struct node_view *v = &in->views[k];
		/* a Slurm cluster's own nodes are Slurm's to place on, not ours */
		if ((cluster_node_is_external(t->cluster, names[i], NULL) &&
		     !target_owns(t, names[i])) ||
		    cluster_get_node(t->cluster, names[i], v) < 0) {
			free(names[i]);
			continue;
		}
		struct sched_node *sn = &in->nodes[k];
		sn->name = v->name;
		sn->role = v->role;
		sn->tier = v->tier;
		size_t nc = json_array_size(v->capabilities);
		in->caps[k] = calloc(nc + 1, sizeof(char *));
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
		if (target_owns(t, v->name)) {
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
		struct node_load *nl = node_load_locked(t, sn->name, false);
		if (nl) {
			sn->active = nl->active;
			sn->total = nl->total;
			sn->completed = nl->completed;
			sn->consecutive_failures = nl->consecutive;
		}
	}
}

static void sched_input_free(struct sched_input *in)
{
	for (size_t i = 0; i < in->n; i++) {
		node_view_clear(&in->views[i]);
		free(in->caps[i]);
	}
	free(in->views);
	free(in->nodes);
	free(in->caps);
}

static void sched_request_of(const struct task_spec *s, struct sched_request *req)
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
static void prompt_holdings_locked(struct tasks *t, const struct task_spec *s, const char *avoid,
				   struct sched_input *in)
{
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

static void post_schedule(struct tasks *t);

/* One submission waiting for its commit. */
struct commit {
	struct store_task *rows;
	size_t n;
	int result;
	bool done;
	struct commit *next;
};

/* Commits rows durably. Submissions that arrive while a commit runs are committed
 * together in the next one: one fsync for many close() calls. The first waiter becomes
 * the leader and commits for everyone queued; the rest sleep until theirs is done. */
static int group_commit(struct tasks *t, struct store_task *rows, size_t n)
{
	struct commit me = {.rows = rows, .n = n};
	pthread_mutex_lock(&t->commit_lock);
	struct commit **tail = &t->commits;
	while (*tail)
		tail = &(*tail)->next;
	*tail = &me;
	while (!me.done && t->committing)
		pthread_cond_wait(&t->commit_cond, &t->commit_lock);
	if (me.done) {
		pthread_mutex_unlock(&t->commit_lock);
		return me.result;
	}
	t->committing = true;
	while (t->commits) {
		struct commit *batch = t->commits;
		t->commits = NULL;
		pthread_mutex_unlock(&t->commit_lock);
		size_t total = 0;
		for (struct commit *c = batch; c; c = c->next)
			total += c->n;
		struct store_task *all = calloc(total, sizeof(*all));
		size_t k = 0;
		for (struct commit *c = batch; c; c = c->next)
			for (size_t i = 0; i < c->n; i++)
				all[k++] = c->rows[i];
		int r = store_insert_tasks(t->store, all, total);
		k = 0;
		for (struct commit *c = batch; c; c = c->next) {
			if (r == 0) {
				for (size_t i = 0; i < c->n; i++)
					c->rows[i].seq = all[k++].seq;
				c->result = 0;
			} else {
				/* one bad apple: commit each on its own, so only it fails */
				c->result = batch->next
						    ? store_insert_tasks(t->store, c->rows, c->n)
						    : r;
			}
		}
		free(all);
		pthread_mutex_lock(&t->commit_lock);
		for (struct commit *c = batch, *next; c; c = next) {
			next = c->next;
			c->done = true;
		}
		pthread_cond_broadcast(&t->commit_cond);
	}
	t->committing = false;
	pthread_cond_broadcast(&t->commit_cond);
	pthread_mutex_unlock(&t->commit_lock);
	return me.result;
}

/* The variables that say who a process is: a task's come from the user it runs as. */
static const char *const identity_vars[] = {"USER", "LOGNAME", "HOME", "SHELL", NULL};

/* The policy checks of tasks.* that need no lock: who may submit, and a spec's env. */
static int check_submitter(const struct config *cfg, const struct submitter *who,
			   const struct task_spec *spec, char *errbuf, size_t errlen)
{
	if (who->uid == 0 && !cfg->tasks.allow_root) {
		snprintf(errbuf, errlen,
			 "root may not submit tasks to this cluster (they would run as root on "
			 "the nodes); submit as a user, or set \"tasks\": {\"allow_root\": "
			 "true} in the config");
		return -EPERM;
	}
	if (!who->user && cfg->tasks.run_as == CFG_RUN_AS_SUBMITTER) {
		snprintf(errbuf, errlen,
			 "uid %u has no user name on this machine, and tasks run as their "
			 "submitter's user on the nodes",
			 (unsigned) who->uid);
		return -EPERM;
	}
	for (size_t i = 0; spec->env && identity_vars[i]; i++) {
		if (json_object_get(spec->env, identity_vars[i])) {
			snprintf(errbuf, errlen,
				 "field \"env\" may not set %s: a task's identity comes from the "
				 "user it runs as",
				 identity_vars[i]);
			return -EINVAL;
		}
	}
	return 0;
}

int tasks_submit(struct tasks *t, const char *id, const char *text, size_t len, uid_t uid,
		 gid_t gid, char *errbuf, size_t errlen)
{
	if (len > TASKS_SPEC_MAX) {
		snprintf(errbuf, errlen, "the spec is %zu bytes; the limit is %u", len,
			 TASKS_SPEC_MAX);
		return -EFBIG;
	}
	if (!spec_name_is_valid(id)) {
		snprintf(errbuf, errlen,
			 "\"%s\" is not a valid task name: use letters, digits, '.', '_' and '-'",
			 id);
		return -EINVAL;
	}
	static const char *const reserved[] = {"new", "queued", "running", "done", "failed"};
	for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++) {
		if (!strcmp(id, reserved[i])) {
			snprintf(errbuf, errlen,
				 "\"%s\" is reserved (a directory of tasks/); pick "
				 "another name",
				 id);
			return -EINVAL;
		}
	}
	struct task_spec *spec = NULL;
	int r = spec_parse(text, len, &spec, errbuf, errlen);
	if (r < 0)
		return r;
	/* names, not numbers, travel to the nodes: uids differ between machines */
	struct passwd pw, *pwres = NULL;
	char pwbuf[4096];
	getpwuid_r(uid, &pw, pwbuf, sizeof(pwbuf), &pwres);
	struct submitter who = {.uid = uid, .gid = gid, .user = pwres ? pwres->pw_name : NULL};
	struct config *cfg = cluster_get_config(t->cluster);
	r = check_submitter(cfg, &who, spec, errbuf, errlen);
	int queued_max = cfg->tasks.queued_per_user;
	config_unref(cfg);
	if (r < 0) {
		spec_free(spec);
		return r;
	}

	pthread_mutex_lock(&t->lock);
	int unfinished = user_load_locked(t, uid)->unfinished;
	if (unfinished >= queued_max) {
		pthread_mutex_unlock(&t->lock);
		spec_free(spec);
		snprintf(errbuf, errlen,
			 "%s has %d unfinished tasks, the most one user may have "
			 "(tasks.queued_per_user); wait for some to end",
			 who.user ? who.user : "this user", unfinished);
		return -EDQUOT;
	}
	if (json_object_get(t->reserved, id) || lookup_locked(t, id)) {
		cache_trim_locked(t);
		pthread_mutex_unlock(&t->lock);
		spec_free(spec);
		snprintf(errbuf, errlen, "task %s exists already", id);
		return -EEXIST;
	}
	for (size_t i = 0; i < spec->n_after; i++) {
		if (!lookup_locked(t, spec->after[i])) {
			cache_trim_locked(t);
			pthread_mutex_unlock(&t->lock);
			snprintf(errbuf, errlen, "field \"after\" names %s, which is not a task",
				 spec->after[i]);
			spec_free(spec);
			return -EINVAL;
		}
	}
	bool all = spec->node && !strcmp(spec->node, "all");
	if (spec->node && !all && strcmp(spec->node, "any") &&
	    !cluster_has_node(t->cluster, spec->node) && !target_owns(t, spec->node)) {
		pthread_mutex_unlock(&t->lock);
		snprintf(errbuf, errlen,
			 "field \"node\" names %s, which is not a node of this cluster",
			 spec->node);
		spec_free(spec);
		return -EINVAL;
	}

	struct task *parent = task_from_spec(id, spec, &who, NULL);
	struct task **batch = NULL;
	size_t n_batch = 1;
	if (all) {
		struct sched_input in;
		sched_input_build_locked(t, &in);
		struct sched_request req;
		sched_request_of(spec, &req);
		prompt_holdings_locked(t, spec, NULL, &in);
		req.node = "any";
		size_t *idx = calloc(in.n + 1, sizeof(*idx));
		struct buf why;
		buf_init(&why);
		struct config *pcfg = cluster_get_config(t->cluster);
		size_t n = sched_place_all(pcfg, &req, in.nodes, in.n, idx, &why);
		config_unref(pcfg);
		if (n == 0) {
			snprintf(errbuf, errlen, "node \"all\": %s",
				 why.data ? why.data : "no node");
			buf_free(&why);
			free(idx);
			sched_input_free(&in);
			pthread_mutex_unlock(&t->lock);
			task_free(parent);
			return -EINVAL;
		}
		batch = calloc(n + 1, sizeof(*batch));
		batch[0] = parent;
		parent->children = calloc(n, sizeof(char *));
		for (size_t i = 0; i < n; i++) {
			const char *node = in.nodes[idx[i]].name;
			struct buf cid;
			buf_init(&cid);
			buf_printf(&cid, "%s@%s", id, node);
			struct task_spec *cs = NULL;
			char e2[256];
			/* the copy's spec: the same, placed on one node */
			json_t *cj = json_deep_copy(parent->spec_json);
			json_object_set_new(cj, "node", json_string(node));
			char *ctext = json_dumps(cj, JSON_COMPACT);
			json_decref(cj);
			if (spec_parse(ctext, strlen(ctext), &cs, e2, sizeof(e2)) < 0)
				abort(); /* a canonical spec always parses */
			free(ctext);
			struct task *c = task_from_spec(cid.data, cs, &who, id);
			parent->children[parent->n_children++] = strdup(cid.data);
			batch[n_batch++] = c;
			buf_free(&cid);
		}
		set_str(&parent->row.placement, why.data);
		buf_free(&why);
		free(idx);
		sched_input_free(&in);
	} else {
		batch = calloc(1, sizeof(*batch));
		batch[0] = parent;
	}

	/* The commit (an fsync) happens without the lock, so that other submissions and the
	 * backend thread go on meanwhile; the id is held so no one else takes it. */
	json_object_set_new(t->reserved, id, json_true());
	pthread_mutex_unlock(&t->lock);
	struct store_task *rows = calloc(n_batch, sizeof(*rows));
	for (size_t i = 0; i < n_batch; i++)
		rows[i] = batch[i]->row;
	r = group_commit(t, rows, n_batch);
	pthread_mutex_lock(&t->lock);
	json_object_del(t->reserved, id);
	if (r < 0) {
		pthread_mutex_unlock(&t->lock);
		free(rows);
		for (size_t i = 0; i < n_batch; i++)
			task_free(batch[i]);
		free(batch);
		snprintf(errbuf, errlen, "cannot store the task: %s",
			 r == -ENOSPC ? "the state directory's disk is full" : strerror(-r));
		return r == -EEXIST ? -EEXIST : r;
	}
	for (size_t i = 0; i < n_batch; i++) {
		batch[i]->row.seq = rows[i].seq;
		add_locked(t, batch[i], false);
	}
	free(rows);
	free(batch);
	cache_trim_locked(t);
	pthread_mutex_unlock(&t->lock);
	cluster_add_event(t->cluster, "task", id, "submitted by %s (uid %u)%s",
			  who.user ? who.user : "?", (unsigned) uid,
			  all ? " for every eligible node" : "");
	post_schedule(t);
	return 0;
}

int tasks_owner(struct tasks *t, const char *id, uid_t *ret_uid, gid_t *ret_gid)
{
	pthread_mutex_lock(&t->lock);
	struct task *k = lookup_locked(t, id);
	if (k) {
		*ret_uid = k->row.uid;
		*ret_gid = k->row.gid;
	}
	cache_trim_locked(t);
	pthread_mutex_unlock(&t->lock);
	return k ? 0 : -ENOENT;
}

bool tasks_exists(struct tasks *t, const char *id)
{
	pthread_mutex_lock(&t->lock);
	bool r = lookup_locked(t, id) != NULL;
	cache_trim_locked(t);
	pthread_mutex_unlock(&t->lock);
	return r;
}

static char *run_as_user_locked(struct tasks *t, const struct task *k);

int tasks_get(struct tasks *t, const char *id, struct task_view *ret)
{
	pthread_mutex_lock(&t->lock);
	struct task *k = lookup_locked(t, id);
	if (!k) {
		pthread_mutex_unlock(&t->lock);
		return -ENOENT;
	}
	struct task_view v = {0};
	v.id = strdup(k->row.id);
	v.parent = k->row.parent ? strdup(k->row.parent) : NULL;
	v.state = strdup(k->row.state);
	v.node = k->row.node ? strdup(k->row.node) : NULL;
	v.reason = k->row.reason ? strdup(k->row.reason) : NULL;
	v.placement = k->row.placement ? strdup(k->row.placement) : NULL;
	v.spec = json_deep_copy(k->spec_json);
	if (k->n_children) {
		v.children = json_array();
		for (size_t i = 0; i < k->n_children; i++)
			json_array_append_new(v.children, json_string(k->children[i]));
	}
	v.exit_code = k->row.exit_code;
	v.attempts = k->row.attempts;
	v.priority = k->row.priority;
	v.uid = k->row.uid;
	v.gid = k->row.gid;
	v.user = k->row.user ? strdup(k->row.user) : NULL;
	v.run_as = k->row.node && !k->n_children ? run_as_user_locked(t, k) : NULL;
	v.submitted_at = k->row.submitted_at;
	v.started_at = k->row.started_at;
	v.finished_at = k->row.finished_at;
	v.changed_at = k->changed_at;
	v.stdout_len = k->out_stored ? k->stored_len[0] : k->out[0].len;
	v.stderr_len = k->out_stored ? k->stored_len[1] : k->out[1].len;
	v.dispatch_id = k->row.dispatch_id ? strdup(k->row.dispatch_id) : NULL;
	const char *rid = json_string_value(json_object_get(k->remote_doc, "id"));
	if (rid && k->row.dispatch_id && !strcmp(rid, k->row.dispatch_id))
		v.remote = json_deep_copy(k->remote_doc);
	cache_trim_locked(t);
	pthread_mutex_unlock(&t->lock);
	*ret = v;
	return 0;
}

/* A group's number in the store (see store_list_page); -1 for all; -2 for none. */
static int group_number(const char *group)
{
	static const char *const groups[] = {"queued", "running", "done", "failed"};
	if (!group)
		return -1;
	for (int i = 0; i < 4; i++)
		if (!strcmp(group, groups[i]))
			return i;
	return -2;
}

bool tasks_state_in_group(const char *state, const char *group)
{
	int g = group_number(group);
	if (g == -1)
		return true;
	if (g == 0)
		return !strcmp(state, TASK_QUEUED);
	if (g == 1)
		return state_is_active(state);
	if (g == 2)
		return !strcmp(state, TASK_SUCCEEDED);
	if (g == 3)
		return task_state_is_final(state) && strcmp(state, TASK_SUCCEEDED);
	return false;
}

int tasks_list_page(struct tasks *t, const char *group, const char *node, int64_t after, size_t max,
		    tasks_page_fn fn, void *arg)
{
	int g = group_number(group);
	if (g == -2)
		return 0;
	/* the store has every task as it is now: states are written through under the lock */
	return store_list_page(t->store, node ? -1 : g, node, after, max, fn, arg);
}

struct id_array {
	char **ids;
	size_t n, cap;
	int64_t last;
};

static bool id_array_add(void *arg, int64_t seq, const char *id)
{
	struct id_array *a = arg;
	if (a->n + 1 >= a->cap) {
		a->cap = a->cap ? 2 * a->cap : 256;
		a->ids = xrealloc(a->ids, a->cap * sizeof(*a->ids));
	}
	a->ids[a->n++] = xstrdup(id);
	a->last = seq;
	return false;
}

char **tasks_list(struct tasks *t, const char *group, const char *node, size_t *ret_n)
{
	struct id_array a = {0};
	a.ids = xcalloc(1, sizeof(*a.ids));
	a.cap = 1;
	for (;;) {
		int r = tasks_list_page(t, group, node, a.last, 4096, id_array_add, &a);
		if (r < 4096)
			break;
	}
	a.ids[a.n] = NULL;
	if (ret_n)
		*ret_n = a.n;
	return a.ids;
}

double tasks_changed_at(struct tasks *t)
{
	pthread_mutex_lock(&t->lock);
	double r = t->changed_at;
	pthread_mutex_unlock(&t->lock);
	return r;
}

double tasks_node_reliability(struct tasks *t, const char *node, int *ret_completed, int *ret_total)
{
	struct sched_node sn = {.name = node};
	pthread_mutex_lock(&t->lock);
	struct node_load *nl = node_load_locked(t, node, false);
	if (nl) {
		sn.completed = nl->completed;
		sn.total = nl->total;
		sn.consecutive_failures = nl->consecutive;
	}
	pthread_mutex_unlock(&t->lock);
	if (ret_completed)
		*ret_completed = sn.completed;
	if (ret_total)
		*ret_total = sn.total;
	return sched_reliability(&sn);
}

/* One task as recent-tasks.json shows it: only what status, node and exit_code show to
 * everyone (the spec is its submitter's). */
static json_t *recent_entry(const struct store_task *k)
{
	json_t *o = json_object();
	json_object_set_new(o, "id", json_string(k->id));
	json_object_set_new(o, "state", json_string(k->state));
	json_object_set_new(o, "node", k->node ? json_string(k->node) : json_null());
	json_object_set_new(o, "exit_code",
			    k->exit_code >= 0 ? json_integer(k->exit_code) : json_null());
	json_object_set_new(o, "parent", k->parent ? json_string(k->parent) : json_null());
	json_object_set_new(o, "submitted_at", json_real(k->submitted_at));
	json_object_set_new(o, "started_at",
			    k->started_at > 0 ? json_real(k->started_at) : json_null());
	json_object_set_new(o, "finished_at",
			    k->finished_at > 0 ? json_real(k->finished_at) : json_null());
	return o;
}

json_t *tasks_recent(struct tasks *t, size_t max)
{
	json_t *doc = json_object(), *active = json_array(), *recent = json_array();
	/* what is in flight (its own list), then the newest by submission: both bounded */
	size_t total = 0;
	pthread_mutex_lock(&t->lock);
	size_t n_active = 0;
	for (struct task *k = t->active; k && n_active < max; k = k->lnext, n_active++)
		json_array_append_new(active, recent_entry(&k->row));
	for (int i = 0; i < TASK_N_STATES; i++)
		total += t->state_counts[i];
	pthread_mutex_unlock(&t->lock);
	struct store_task *rows = NULL;
	size_t n = 0;
	if (store_load_recent(t->store, max, &rows, &n) == 0) {
		for (size_t i = 0; i < n; i++)
			json_array_append_new(recent, recent_entry(&rows[i]));
		store_tasks_free(rows, n);
	}
	json_object_set_new(doc, "total", json_integer((json_int_t) total));
	json_object_set_new(doc, "active", active);
	json_object_set_new(doc, "recent", recent);
	return doc;
}

void tasks_node_counts(struct tasks *t, const char *node, int *ret_active, int *ret_succeeded_hour,
		       int *ret_failed_hour)
{
	double now = clock_wall_s();
	*ret_active = *ret_succeeded_hour = *ret_failed_hour = 0;
	pthread_mutex_lock(&t->lock);
	struct node_load *nl = node_load_locked(t, node, false);
	if (nl) {
		*ret_active = nl->active;
		minute_counts_hour(&nl->ended, now, ret_succeeded_hour, ret_failed_hour);
	}
	pthread_mutex_unlock(&t->lock);
}

int tasks_rank(struct tasks *t, const char *text, size_t len, json_t **ret, char *errbuf,
	       size_t errlen)
{
	json_error_t jerr;
	json_t *doc = text ? json_loadb(text, len, 0, &jerr) : json_object();
	if (!doc) {
		snprintf(errbuf, errlen, "line %d, column %d: %s", jerr.line, jerr.column,
			 jerr.text);
		return -EINVAL;
	}
	if (!json_is_object(doc)) {
		json_decref(doc);
		snprintf(errbuf, errlen, "a spec is a JSON object, e.g. {\"type\": \"build\"}");
		return -EINVAL;
	}
	/* a spec to place needs no command: it is not run */
	bool asked_text = json_object_get(doc, "prompt") || json_object_get(doc, "messages");
	if (!json_object_get(doc, "cmd") && !json_object_get(doc, "model"))
		json_object_set_new(doc, "cmd", json_string("true"));
	else if (json_object_get(doc, "model") && !asked_text)
		json_object_set_new(doc, "prompt", json_string("?")); /* nor a prompt */
	char *canon = json_dumps(doc, JSON_COMPACT);
	json_decref(doc);
	struct task_spec *spec = NULL;
	int r = spec_parse(canon, strlen(canon), &spec, errbuf, errlen);
	free(canon);
	if (r < 0)
		return r;
	struct sched_input in;
	pthread_mutex_lock(&t->lock);
	sched_input_build_locked(t, &in);
	prompt_holdings_locked(t, spec, NULL, &in);
	pthread_mutex_unlock(&t->lock);
	struct sched_request req;
	sched_request_of(spec, &req);
	struct config *cfg = cluster_get_config(t->cluster);
	json_t *rank = sched_rank(cfg, &req, in.nodes, in.n);
	config_unref(cfg);
	json_t *asked = spec_to_json(spec);
	json_object_del(asked, "cmd");
	if (!asked_text)
		json_object_del(asked, "prompt");
	json_object_set_new(rank, "spec", asked);
	sched_input_free(&in);
	spec_free(spec);
	*ret = rank;
	return 0;
}

int tasks_active_on(struct tasks *t, const char *node)
{
	pthread_mutex_lock(&t->lock);
	int n = active_on_locked(t, node);
	pthread_mutex_unlock(&t->lock);
	return n;
}

int tasks_read_output(struct tasks *t, const char *id, const char *stream, size_t offset,
		      struct buf *out)
{
	int s = !strcmp(stream, "stderr");
	pthread_mutex_lock(&t->lock);
	struct task *k = lookup_locked(t, id);
	if (!k) {
		pthread_mutex_unlock(&t->lock);
		return -ENOENT;
	}
	if (!strcmp(stream, "result")) {
		/* in memory whenever the task is: task_from_row_locked reads it back */
		size_t n = k->result ? strlen(k->result) : 0;
		if (offset < n)
			buf_append(out, k->result + offset, n - offset);
		cache_trim_locked(t);
		pthread_mutex_unlock(&t->lock);
		return 0;
	}
	bool stored = k->out_stored;
	if (!stored && offset < k->out[s].len)
		buf_append(out, k->out[s].data + offset, k->out[s].len - offset);
	cache_trim_locked(t);
	pthread_mutex_unlock(&t->lock);
	if (!stored)
		return 0;
	/* a finished task's output does not change: read without the lock */
	char *data = NULL;
	size_t len = 0;
	int r = store_get_output(t->store, id, stream_names[s], &data, &len);
	if (r == 0 && offset < len)
		buf_append(out, data + offset, len - offset);
	free(data);
	return r;
}

/* ---- waiting ---- */

uint64_t tasks_wait_new_id(struct tasks *t)
{
	pthread_mutex_lock(&t->lock);
	uint64_t id = t->next_wait++;
	pthread_mutex_unlock(&t->lock);
	return id;
}

static bool tombstone_take_locked(struct tasks *t, uint64_t wait)
{
	for (size_t i = 0; i < TOMBSTONES; i++) {
		if (t->tombstones[i] == wait) {
			t->tombstones[i] = 0;
			return true;
		}
	}
	return false;
}

int tasks_wait(struct tasks *t, const char *id, uint64_t wait, tasks_wait_fn done, void *arg)
{
	pthread_mutex_lock(&t->lock);
	if (tombstone_take_locked(t, wait)) {
		pthread_mutex_unlock(&t->lock);
		return -EINTR;
	}
	struct task *k = lookup_locked(t, id);
	if (!k) {
		pthread_mutex_unlock(&t->lock);
		return -ENOENT;
	}
	if (task_state_is_final(k->row.state)) {
		cache_trim_locked(t);
		pthread_mutex_unlock(&t->lock);
		return 1;
	}
	struct waiter *w = calloc(1, sizeof(*w));
	w->id = wait;
	w->done = done;
	w->arg = arg;
	w->next = k->waiters;
	k->waiters = w;
	pthread_mutex_unlock(&t->lock);
	return 0;
}

void *tasks_wait_cancel(struct tasks *t, uint64_t wait)
{
	pthread_mutex_lock(&t->lock);
	/* waiters wait for unfinished tasks: those on the work lists */
	struct task *lists[2] = {t->queued, t->active};
	for (int l = 0; l < 2; l++)
		for (struct task *k = lists[l]; k; k = k->lnext) {
			for (struct waiter **pp = &k->waiters; *pp; pp = &(*pp)->next) {
				if ((*pp)->id == wait) {
					struct waiter *w = *pp;
					*pp = w->next;
					void *arg = w->arg;
					free(w);
					pthread_mutex_unlock(&t->lock);
					return arg;
				}
			}
		}
	/* not registered (yet): leave a mark so that a late registration fails */
	t->tombstones[t->next_tombstone++ % TOMBSTONES] = wait;
	pthread_mutex_unlock(&t->lock);
	return NULL;
}

/* ---- talking to agents (loop thread) ---- */

struct call {
	struct tasks *t;
	char *id; /* task id, or node name for polls */
	int stream;
	uint64_t started_us;
};

static struct call *call_new(struct tasks *t, const char *id, int stream)
{
	struct call *c = calloc(1, sizeof(*c));
	c->t = t;
	c->id = strdup(id);
	c->stream = stream;
	c->started_us = clock_now_us();
	return c;
}

static void call_free(struct call *c)
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
		*ret_token = h->token ? strdup(h->token) : NULL;
	}
	config_unref(cfg);
	return h ? 0 : -ENOENT;
}

static bool target_owns(struct tasks *t, const char *node)
{
	return t->target.owns && node && t->target.owns(t->target.arg, node);
}

static int agent_call(struct tasks *t, const char *node, const char *method, const char *path,
		      const char *body, http_done_fn done, struct call *c)
{
	if (target_owns(t, node))
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

static void apply_remote_locked(struct tasks *t, struct task *k, json_t *o, struct waiter **wake);

/* Exponential backoff: the wait before attempt n + 1 after n failures in a row. */
static uint64_t retry_delay_us(unsigned failures)
{
	uint64_t d = RETRY_FIRST_US;
	for (unsigned i = 1; i < failures && d < RETRY_MAX_US; i++)
		d *= 2;
	return d < RETRY_MAX_US ? d : RETRY_MAX_US;
}

static void poll_send(struct tasks *t, const char *node);

static void dispatch_done(const struct http_response *r, void *arg)
{
	struct call *c = arg;
	struct tasks *t = c->t;
	struct waiter *wake = NULL;
	char *poll_node = NULL;
	pthread_mutex_lock(&t->lock);
	struct task *k = find_locked(t, c->id);
	if (k) {
		k->dispatching = false;
		if (!r->error && k->dispatch_failures) {
			log_info("dispatch of %s to %s went through after %u failed attempt%s",
				 k->row.id, k->row.node, k->dispatch_failures,
				 k->dispatch_failures == 1 ? "" : "s");
			k->dispatch_failures = 0;
			set_str(&k->row.reason, NULL);
		}
		if (!r->error) {
			/* 201: started; 200: the agent knew this dispatch id already, and its
			 * answer says how that run is doing (it may have ended long ago) */
			k->acked = true;
			if (k->row.node)
				poll_node = strdup(k->row.node);
			json_t *o = json_loadb(r->body, r->body_len, 0, NULL);
			if (json_is_object(o) && json_is_string(json_object_get(o, "state")))
				apply_remote_locked(t, k, o, &wake);
			else if (!strcmp(k->row.state, TASK_DISPATCHED)) {
				k->row.started_at = clock_wall_s();
				set_state_locked(t, k, TASK_RUNNING, NULL, &wake);
			}
			json_decref(o);
		} else if (r->status == 400 || r->status == 413) {
			json_t *doc = json_loadb(r->body, r->body_len, 0, NULL);
			const char *e = json_string_value(json_object_get(doc, "error"));
			char why[512];
			snprintf(why, sizeof(why), "the agent on %s refused it: %s", k->row.node,
				 e ? e : r->error_text);
			json_decref(doc);
			set_state_locked(t, k, TASK_FAILED, why, &wake);
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
			k->dispatch_due_us = clock_now_us() + retry_delay_us(k->dispatch_failures);
			char reason[640];
			snprintf(reason, sizeof(reason),
				 "the agent on %s did not take it (%s); attempt %u, retrying",
				 k->row.node, why, k->dispatch_failures);
			set_str(&k->row.reason, reason);
		}
	}
	pthread_mutex_unlock(&t->lock);
	call_waiters(wake);
	call_free(c);
	/* the node's long poll learns of the end at once (poll_send is defined below) */
	if (poll_node)
		poll_send(t, poll_node);
	free(poll_node);
}

/* The user name a task runs as on its node under the run_as policy in force there: the
 * submitter's (a task stored before names were kept: the name its uid has now), or NULL
 * for the agent's own user. Returns a new string. */
static char *run_as_user_locked(struct tasks *t, const struct task *k)
{
	struct config *cfg = cluster_get_config(t->cluster);
	const struct cfg_host *h = k->row.node ? config_find_host(cfg, k->row.node) : NULL;
	enum cfg_run_as mode = config_host_run_as(cfg, h);
	config_unref(cfg);
	if (mode == CFG_RUN_AS_AGENT)
		return NULL;
	if (k->row.user)
		return strdup(k->row.user);
	struct passwd pw, *res = NULL;
	char scratch[4096];
	getpwuid_r(k->row.uid, &pw, scratch, sizeof(scratch), &res);
	/* no name at all: a name no node has, so the node refuses it (never root) */
	return strdup(res ? res->pw_name : "(unknown)");
}

/* Sends the task to its node. Lock held; loop thread. */
static void dispatch_locked(struct tasks *t, struct task *k)
{
	if (k->dispatching || (k->dispatch_due_us && clock_now_us() < k->dispatch_due_us) ||
	    !inputs_ready_locked(t, k))
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
	char *user = run_as_user_locked(t, k);
	if (user)
		json_object_set_new(body, "user", json_string(user));
	free(user);
	if (k->spec->n_outputs && !target_owns(t, k->row.node)) {
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
	if (target_owns(t, k->row.node))
		/* what a scheduler of its own needs; agents are not sent fields they refuse */
		json_object_update_new(body, json_pack("{si si si si}", "cpus", k->spec->cpus,
						       "mem_mb", k->spec->mem_mb, "gpus",
						       k->spec->gpus, "priority", k->row.priority));
	if (target_owns(t, k->row.node) && k->spec->n_after) {
		/* the dependencies still running there: the target holds this one for them */
		json_t *after = json_array();
		for (size_t d = 0; d < k->spec->n_after; d++) {
			struct task *dep = find_locked(t, k->spec->after[d]);
			if (dep && !task_state_is_final(dep->row.state) && dep->row.dispatch_id)
				json_array_append_new(after, json_string(dep->row.dispatch_id));
		}
		json_object_set_new(body, "after_dispatch", after);
	}
	char *text = json_dumps(body, JSON_COMPACT);
	json_decref(body);
	struct call *c = call_new(t, k->row.id, 0);
	if (agent_call(t, k->row.node, "POST", "/api/node/tasks", text, dispatch_done, c) == 0)
		k->dispatching = true;
	else
		call_free(c);
	free(text);
}

static int fetch_output_locked(struct tasks *t, struct task *k, int s);
static void finalize_if_ready_locked(struct tasks *t, struct task *k, struct waiter **wake);

/* A fetch of stream s failed: retried after a growing wait, FETCH_TRIES times, then the
 * stream ends with what came and the task's reason says why. */
static void fetch_failed_locked(struct task *k, int s, const char *why)
{
	k->fetch_failures[s]++;
	k->fetch_due_us[s] = clock_now_us() + retry_delay_us(k->fetch_failures[s]);
	if (k->fetch_failures[s] < FETCH_TRIES)
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

static void fetch_done(const struct http_response *r, void *arg)
{
	struct call *c = arg;
	struct tasks *t = c->t;
	struct waiter *wake = NULL;
	pthread_mutex_lock(&t->lock);
	struct task *k = find_locked(t, c->id);
	if (k)
		k->fetching[c->stream] = false;
	if (k && !k->out_stored) { /* output that comes after the end is not kept */
		int s = c->stream;
		bool more = k->out[s].len < k->remote_size[s];
		if (r->error != -ECANCELED && (r->error || (more && !r->body_len)))
			fetch_failed_locked(k, s, r->error ? r->error_text : "an empty answer");
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
			finalize_if_ready_locked(t, k, &wake);
	}
	pthread_mutex_unlock(&t->lock);
	call_waiters(wake);
	call_free(c);
}

/* Starts a fetch of the next piece of stream s. 0 when one is under way; -EAGAIN while
 * a failed one waits for its retry; -ECANCELED when stopping; -ENOENT when there is
 * nothing to fetch or nowhere to fetch it from. */
static int fetch_output_locked(struct tasks *t, struct task *k, int s)
{
	if (k->fetching[s])
		return 0;
	if (k->out_full[s] || !k->row.node || !k->row.dispatch_id)
		return -ENOENT;
	if (k->fetch_due_us[s] && clock_now_us() < k->fetch_due_us[s])
		return -EAGAIN;
	char path[512];
	snprintf(path, sizeof(path), "/api/node/tasks/%s/%s?offset=%zu&limit=%u",
		 k->row.dispatch_id, stream_names[s], k->out[s].len, FETCH_MAX);
	struct call *c = call_new(t, k->row.id, s);
	int r = agent_call(t, k->row.node, "GET", path, NULL, fetch_done, c);
	if (r == 0)
		k->fetching[s] = true;
	else
		call_free(c);
	return r;
}

/* Forgets the retry state of the previous attempt. */
static void attempt_reset_locked(struct task *k)
{
	free(k->result);
	k->result = NULL;
	for (int s = 0; s < N_STREAMS; s++) {
		k->fetch_failures[s] = 0;
		k->fetch_due_us[s] = 0;
	}
	free(k->output_note);
	k->output_note = NULL;
	k->dispatch_failures = 0;
	k->dispatch_due_us = 0;
	k->collected = k->staging = false;
	json_decref(k->staged);
	k->staged = NULL;
}

static void requeue_or_fail_locked(struct tasks *t, struct task *k, const char *state,
				   const char *why, struct waiter **wake)
{
	if (strcmp(state, TASK_CANCELLED) && !k->cancel_requested &&
	    k->row.attempts <= k->spec->retries && !k->row.parent) {
		char reason[512];
		snprintf(reason, sizeof(reason), "retry %d of %d after %s%s%s", k->row.attempts,
			 k->spec->retries, state, why ? ": " : "", why ? why : "");
		store_add_attempt(t->store, k->row.id, k->row.attempts, k->row.node,
				  k->row.dispatch_id, state, k->row.exit_code, k->row.started_at,
				  clock_wall_s());
		if (k->spec->model)
			set_str(&k->avoid_node, k->row.node); /* retried on another node */
		set_str(&k->row.node, NULL);
		set_str(&k->row.dispatch_id, NULL);
		k->row.exit_code = -1;
		for (int s = 0; s < N_STREAMS; s++) {
			buf_free(&k->out[s]);
			k->remote_size[s] = 0;
			k->out_full[s] = false;
		}
		attempt_reset_locked(k);
		set_state_locked(t, k, TASK_QUEUED, reason, wake);
		return;
	}
	set_state_locked(t, k, state, why, wake);
}

/* Once the agent reported a final state and all output is here: the task ends. */
static void finalize_if_ready_locked(struct tasks *t, struct task *k, struct waiter **wake)
{
	if (!k->remote_state || task_state_is_final(k->row.state))
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
	if (!outputs_ready_locked(t, k))
		return; /* its record is being fetched: the end comes with it */
	k->row.exit_code = k->remote_exit;
	store_add_attempt(t->store, k->row.id, k->row.attempts, k->row.node, k->row.dispatch_id,
			  k->remote_state, k->remote_exit, k->row.started_at, clock_wall_s());
	char *state = k->remote_state;
	char *why = k->remote_error;
	k->remote_state = k->remote_error = NULL;
	if (!strcmp(state, TASK_SUCCEEDED))
		set_state_locked(t, k, TASK_SUCCEEDED, k->output_note, wake);
	else
		requeue_or_fail_locked(t, k, state, why ? why : k->output_note, wake);
	free(state);
	free(why);
}

/* Applies one task object from an agent to our task. Lock held. */
static void apply_remote_locked(struct tasks *t, struct task *k, json_t *o, struct waiter **wake)
{
	const char *state = json_string_value(json_object_get(o, "state"));
	const char *id = json_string_value(json_object_get(o, "id"));
	/* an answer about another attempt, or about a task that has ended here */
	if (!state || !id || !k->row.dispatch_id || strcmp(id, k->row.dispatch_id) ||
	    task_state_is_final(k->row.state) || !strcmp(k->row.state, TASK_QUEUED))
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
	if (!strcmp(k->row.state, TASK_DISPATCHED)) {
		k->row.started_at = clock_wall_s();
		set_state_locked(t, k, TASK_RUNNING, NULL, wake);
	}
	if (strcmp(state, "running") && !k->remote_state) {
		json_t *ec = json_object_get(o, "exit_code");
		const char *err = json_string_value(json_object_get(o, "error"));
		set_str(&k->remote_error, err);
		k->remote_state = strdup(state);
		k->remote_exit = json_is_integer(ec) && json_integer_value(ec) >= 0 &&
						 json_integer_value(ec) <= 65535
					 ? (int) json_integer_value(ec)
					 : -1;
		finalize_if_ready_locked(t, k, wake);
	}
}

/* The active tasks (on `node`, or all when NULL), as a NULL-terminated array that stays
 * valid while its entries change lists. Lock held. */
static struct task **active_snapshot_locked(struct tasks *t, const char *node)
{
	size_t n = 0, cap = 16;
	struct task **v = xcalloc(cap, sizeof(*v));
	for (struct task *k = t->active; k; k = k->lnext) {
		if (node && (!k->row.node || strcmp(k->row.node, node)))
			continue;
		if (n + 1 == cap) {
			cap *= 2;
			v = realloc(v, cap * sizeof(*v));
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
	struct node_poll *p = calloc(1, sizeof(*p));
	p->node = strdup(node);
	p->next = t->polls;
	t->polls = p;
	return p;
}

#define POLL_WAIT_S 0.25 /* a long poll's wait: output sizes are fresh at this pace */

static void poll_done(const struct http_response *r, void *arg);

/* Asks a node's agent what became of our work there, unless a poll is in flight. An agent
 * that keeps change numbers holds the request until a task starts or ends (or for
 * POLL_WAIT_S), so an end is noticed at once; older agents answer what changed since
 * their clock's time of the last poll. Loop thread. */
static void poll_send(struct tasks *t, const char *node)
{
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
	struct call *c = call_new(t, node, 0);
	if (agent_call(t, node, "GET", path, NULL, poll_done, c) == 0)
		p->in_flight = true;
	else
		call_free(c);
}

static void poll_done(const struct http_response *r, void *arg)
{
	struct call *c = arg;
	struct tasks *t = c->t;
	struct node_poll *p = poll_for(t, c->id);
	p->in_flight = false;
	if (r->error) {
		call_free(c);
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
		if (!state_is_active(k->row.state) || !k->row.dispatch_id || k->spec->model)
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
				dispatch_locked(t, k);
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
	call_waiters(wake);
	call_free(c);
}

static void cancel_done(const struct http_response *r, void *arg)
{
	struct call *c = arg;
	struct tasks *t = c->t;
	pthread_mutex_lock(&t->lock);
	struct task *k = find_locked(t, c->id);
	if (k && r->error && r->status != 404)
		k->cancel_sent = false; /* try again at the next tick */
	pthread_mutex_unlock(&t->lock);
	call_free(c);
}

/* ---- scheduling (loop thread) ---- */

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
	const char *node = k->spec->node;
	if (!node || !target_owns(t, node))
		return false;
	for (size_t d = 0; d < k->spec->n_after; d++) {
		struct task *dep = lookup_locked(t, k->spec->after[d]);
		if (!dep)
			return false;
		if (task_state_is_final(dep->row.state))
			continue;
		if (!state_is_active(dep->row.state) || !dep->acked || !dep->row.node ||
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
	int r = t->prompts.start ? t->prompts.start(t->prompts.arg, k->row.id, k->row.dispatch_id,
						    k->row.node, k->spec_json)
				 : -EOPNOTSUPP;
	if (r == -ECANCELED)
		return; /* stopping: it stays dispatched, and the next start asks again */
	if (r < 0) {
		char why[300];
		snprintf(why, sizeof(why), "cannot ask the model server on %s: %s", k->row.node,
			 strerror(-r));
		requeue_or_fail_locked(t, k, TASK_FAILED, why, wake);
		return;
	}
	k->acked = true;
	k->row.started_at = clock_wall_s();
	set_state_locked(t, k, TASK_RUNNING, NULL, wake);
}

/* Places what can be placed, in priority order. Lock held. */
static void schedule_locked(struct tasks *t, struct waiter **wake)
{
	struct task **q = NULL;
	size_t nq = 0, cap = 0;
	for (struct task *k = t->queued; k; k = k->lnext) {
		if (k->n_children)
			continue; /* a node:"all" task is the sum of its copies */
		if (nq == cap) {
			cap = cap ? 2 * cap : 64;
			q = realloc(q, cap * sizeof(*q));
		}
		q[nq++] = k;
	}
	if (!nq) {
		free(q);
		return;
	}
	qsort(q, nq, sizeof(*q), queued_cmp);
	struct sched_input in;
	sched_input_build_locked(t, &in);
	struct config *cfg = cluster_get_config(t->cluster);
	/* requests that found no node in this pass, with the reason: a queue of like tasks
	 * costs one placement, not one per task */
	json_t *no_fit = json_object();
	for (size_t i = 0; i < nq; i++) {
		struct task *k = q[i];
		/* dependencies first */
		bool wait_deps = false;
		const char *failed_dep = NULL;
		for (size_t d = 0; d < k->spec->n_after; d++) {
			struct task *dep = lookup_locked(t, k->spec->after[d]);
			if (!dep || !task_state_is_final(dep->row.state)) {
				wait_deps = true;
			} else if (strcmp(dep->row.state, TASK_SUCCEEDED)) {
				failed_dep = k->spec->after[d];
				break;
			}
		}
		if (failed_dep) {
			char why[300];
			snprintf(why, sizeof(why), "dependency %s did not succeed", failed_dep);
			set_state_locked(t, k, TASK_FAILED, why, wake);
			continue;
		}
		/* why a task waits is shown, not stored: it is worked out again after a
		 * restart */
		if (wait_deps && !deps_held_by_target_locked(t, k)) {
			if (!k->row.reason || strncmp(k->row.reason, "waiting for", 11)) {
				set_str(&k->row.reason,
					"waiting for the tasks in \"after\" to succeed");
				k->changed_at = clock_wall_s();
			}
			continue;
		}
		struct sched_request req;
		sched_request_of(k->spec, &req);
		struct buf key;
		buf_init(&key);
		buf_printf(&key, "%s|%s|%d|%d|%d|%d|%s|%s", req.node, req.type ? req.type : "",
			   req.cpus, req.mem_mb, req.gpus, req.priority, req.model ? req.model : "",
			   k->avoid_node ? k->avoid_node : "");
		for (size_t c = 0; c < req.n_requires; c++)
			buf_printf(&key, "|%s", req.requires[c]);
		const char *known = json_string_value(json_object_get(no_fit, key.data));
		size_t idx = 0;
		struct buf why;
		buf_init(&why);
		if (!known && req.model)
			prompt_holdings_locked(t, k->spec, k->avoid_node, &in);
		int r = known ? -EAGAIN : sched_place(cfg, &req, in.nodes, in.n, &idx, &why);
		if (r < 0 && !known && req.model && k->spec->pull)
			prompt_pull_locked(t, cfg, &req, &in, &why);
		if (r < 0) {
			const char *w = known ? known : why.data ? why.data : "no eligible node";
			if (!k->row.reason || strcmp(k->row.reason, w)) {
				set_str(&k->row.reason, w);
				k->changed_at = clock_wall_s();
			}
			if (!known)
				json_object_set_new(no_fit, key.data, json_string(w));
			buf_free(&key);
			buf_free(&why);
			continue;
		}
		buf_free(&key);
		/* committed: attempt N of this task on this node, under an id no other attempt
		 * or control plane uses */
		k->row.attempts++;
		set_str(&k->row.node, in.nodes[idx].name);
		set_str(&k->row.placement, why.data);
		set_str(&k->row.reason, NULL);
		struct buf did;
		buf_init(&did);
		buf_printf(&did, "%s.%s.%d", store_instance_id(t->store), k->row.id,
			   k->row.attempts);
		set_str(&k->row.dispatch_id, did.data);
		k->acked = false;
		buf_free(&did);
		buf_free(&why);
		set_state_locked(t, k, TASK_DISPATCHED, NULL, wake);
		in.nodes[idx].active++;
		if (k->spec->model)
			prompt_start_locked(t, k, wake);
		else
			dispatch_locked(t, k);
	}
	json_decref(no_fit);
	config_unref(cfg);
	sched_input_free(&in);
	free(q);
}

static void schedule_on_loop(void *arg)
{
	struct tasks *t = arg;
	struct waiter *wake = NULL;
	pthread_mutex_lock(&t->lock);
	t->schedule_posted = false;
	schedule_locked(t, &wake);
	cache_trim_locked(t);
	pthread_mutex_unlock(&t->lock);
	call_waiters(wake);
}

static void post_schedule(struct tasks *t)
{
	pthread_mutex_lock(&t->lock);
	bool post = t->started && !t->schedule_posted;
	if (post)
		t->schedule_posted = true;
	pthread_mutex_unlock(&t->lock);
	if (post)
		loop_post(t->loop, schedule_on_loop, t);
}

/* Every TICK: poll the nodes that have work, send pending cancels, notice lost nodes,
 * and place what waits. */
static void tasks_tick(void *arg)
{
	struct tasks *t = arg;
	struct waiter *wake = NULL;
	char **nodes = NULL;
	size_t n_nodes = 0;
	pthread_mutex_lock(&t->lock);
	struct task **work = active_snapshot_locked(t, NULL);
	for (size_t i = 0; work[i]; i++) {
		struct task *k = work[i];
		if (!state_is_active(k->row.state) || !k->row.node)
			continue;
		enum node_level level;
		if (cluster_get_level(t->cluster, k->row.node, &level) < 0) {
			if (target_owns(t, k->row.node))
				continue; /* its source has not listed it since the start yet */
			requeue_or_fail_locked(t, k, TASK_LOST, "its node left the cluster", &wake);
			continue;
		}
		if (level == NODE_OFFLINE) {
			if (k->spec->model && k->row.dispatch_id)
				t->prompts.cancel(t->prompts.arg, k->row.dispatch_id);
			requeue_or_fail_locked(t, k, TASK_LOST, "its node went offline", &wake);
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
		if (k->remote_state)
			finalize_if_ready_locked(t, k, &wake); /* output fetches waiting to retry */
		if (k->cancel_requested && !k->cancel_sent && k->row.dispatch_id) {
			char path[512];
			snprintf(path, sizeof(path), "/api/node/tasks/%s/cancel",
				 k->row.dispatch_id);
			struct call *c = call_new(t, k->row.id, 0);
			if (agent_call(t, k->row.node, "POST", path, "{}", cancel_done, c) == 0)
				k->cancel_sent = true;
			else
				call_free(c);
		}
		bool seen = false;
		for (size_t j = 0; j < n_nodes; j++)
			seen |= !strcmp(nodes[j], k->row.node);
		if (!seen) {
			nodes = realloc(nodes, (n_nodes + 1) * sizeof(*nodes));
			nodes[n_nodes++] = strdup(k->row.node);
		}
	}
	schedule_locked(t, &wake);
	cache_trim_locked(t);
	pthread_mutex_unlock(&t->lock);
	free(work);
	call_waiters(wake);

	for (size_t j = 0; j < n_nodes; j++) {
		poll_send(t, nodes[j]);
		free(nodes[j]);
	}
	free(nodes);
	t->tick = loop_timer_add(t->loop, clock_now_us() + TICK_US, tasks_tick, t);
}

/* ---- retention of finished tasks (loop thread) ---- */

static void prune_run(void *arg);

/* Arms the retention's timer for its due time (loop thread). */
static void prune_arm_on_loop(void *arg)
{
	struct tasks *t = arg;
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
static void prune_arm_locked(struct tasks *t, double due)
{
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
	struct task *k = find_locked(t, id);
	bool live = k && !task_state_is_final(k->row.state); /* retried meanwhile: counted */
	if (k && !live)
		forget_locked(t, k);
	if (record && state && !live) {
		int si = state_index(state);
		t->state_counts[si]--;
		struct node_load *n = node ? node_load_locked(t, node, false) : NULL;
		if (n) {
			n->states[si]--;
			if (strcmp(state, TASK_CANCELLED)) {
				n->total--;
				n->completed -= !strcmp(state, TASK_SUCCEEDED);
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
	int si = state_index(state);
	t->state_counts[si] += (size_t) n;
	if (!node)
		return;
	struct node_load *nl = node_load_locked(t, node, true);
	nl->states[si] += (size_t) n;
	if (task_state_is_final(state) && strcmp(state, TASK_CANCELLED)) {
		nl->total += (int) n;
		if (!strcmp(state, TASK_SUCCEEDED))
			nl->completed += (int) n;
	}
}

static void ended_one(void *arg, const char *node, const char *state, double at)
{
	struct tasks *t = arg;
	if (task_state_is_final(state))
		minute_counts_add(&node_load_locked(t, node, true)->ended, at,
				  !strcmp(state, TASK_SUCCEEDED));
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
		struct task *k = task_from_row_locked(t, &rows[i]);
		if (!k)
			continue;
		add_locked(t, k, true); /* counted as the store has it */
		if (k->spec->model && state_is_active(k->row.state)) {
			/* DESIGN §3: a prompt has no side effects, and its stream died with us */
			set_str(&k->row.state, TASK_QUEUED);
			set_str(&k->row.node, NULL);
			set_str(&k->row.dispatch_id, NULL);
			set_str(&k->row.reason, "clusterfs restarted while it ran: asked again");
			buf_free(&k->out[0]);
			persist_locked(t, k);
			track_locked(t, k);
		}
		if (state_is_active(k->row.state))
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
	return loop_post(t->loop, tasks_start_on_loop, t);
}

/* ---- control ---- */

int tasks_control(struct tasks *t, const char *id, const char *cmd, uid_t uid, char *errbuf,
		  size_t errlen)
{
	char word[32] = "", arg[32] = "";
	if (sscanf(cmd, " %31s %31s", word, arg) < 1) {
		snprintf(errbuf, errlen, "write one of: cancel, retry, priority P0..P3");
		return -EINVAL;
	}
	struct waiter *wake = NULL;
	int r = 0;
	pthread_mutex_lock(&t->lock);
	struct task *k = lookup_locked(t, id);
	if (!k) {
		r = -ENOENT;
		goto out_unlock;
	}
	if (uid != 0 && uid != k->row.uid) {
		snprintf(errbuf, errlen, "only uid %u (who submitted %s) or root may do that",
			 (unsigned) k->row.uid, id);
		r = -EPERM;
		goto out_unlock;
	}
	if (!strcmp(word, "cancel")) {
		if (task_state_is_final(k->row.state)) {
			snprintf(errbuf, errlen, "task %s has ended (%s)", id, k->row.state);
			r = -EBUSY;
			goto out_unlock;
		}
		for (size_t i = 0; i < k->n_children; i++) {
			struct task *c = find_locked(t, k->children[i]);
			if (c && !task_state_is_final(c->row.state)) {
				c->cancel_requested = true;
				if (!strcmp(c->row.state, TASK_QUEUED))
					set_state_locked(t, c, TASK_CANCELLED,
							 "cancelled before it ran", &wake);
			}
		}
		k->cancel_requested = true;
		if (!strcmp(k->row.state, TASK_QUEUED) && !k->n_children)
			set_state_locked(t, k, TASK_CANCELLED, "cancelled before it ran", &wake);
		else if (!k->n_children)
			cluster_add_event(t->cluster, "task", id, "cancel requested by uid %u",
					  (unsigned) uid);
	} else if (!strcmp(word, "retry")) {
		if (!task_state_is_final(k->row.state) || !strcmp(k->row.state, TASK_SUCCEEDED) ||
		    k->n_children) {
			snprintf(errbuf, errlen,
				 "only a failed, timed out, cancelled or lost task can be "
				 "retried; %s is %s",
				 id, k->row.state);
			r = -EBUSY;
			goto out_unlock;
		}
		k->cancel_requested = k->cancel_sent = false;
		set_str(&k->row.node, NULL);
		set_str(&k->row.dispatch_id, NULL);
		k->row.exit_code = -1;
		k->row.finished_at = 0;
		for (int s = 0; s < N_STREAMS; s++) {
			buf_free(&k->out[s]);
			k->remote_size[s] = 0;
			k->out_full[s] = false;
			k->stored_len[s] = 0;
		}
		k->out_stored = false; /* the next attempt's output replaces the stored one */
		attempt_reset_locked(k);
		set_state_locked(t, k, TASK_QUEUED, "retried by hand", &wake);
	} else if (!strcmp(word, "priority")) {
		int p = -1;
		if ((arg[0] == 'P' || arg[0] == 'p') && arg[1] >= '0' && arg[1] <= '3' && !arg[2])
			p = arg[1] - '0';
		else if (arg[0] >= '0' && arg[0] <= '3' && !arg[1])
			p = arg[0] - '0';
		if (p < 0) {
			snprintf(errbuf, errlen, "priority takes P0, P1, P2 or P3, not \"%s\"",
				 arg);
			r = -EINVAL;
			goto out_unlock;
		}
		k->row.priority = p;
		persist_locked(t, k);
		cluster_add_event(t->cluster, "task", id, "priority P%d", p);
	} else {
		const char *const words[] = {"cancel", "retry", "priority"};
		const char *s = util_closest_word(word, words, 3, 2);
		snprintf(errbuf, errlen,
			 "unknown command \"%s\"%s%s%s; write cancel, retry or "
			 "priority P0..P3",
			 word, s ? "; did you mean \"" : "", s ? s : "", s ? "\"" : "");
		r = -EINVAL;
	}
out_unlock:
	cache_trim_locked(t);
	pthread_mutex_unlock(&t->lock);
	call_waiters(wake);
	if (r == 0)
		post_schedule(t);
	return r;
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

void tasks_set_prompts(struct tasks *t, const struct tasks_prompts *prompts)
{
	t->prompts = *prompts;
}

/* The prompt task whose current attempt is dispatch_id, if it still runs. Lock held. */
static struct task *prompt_attempt_locked(struct tasks *t, const char *id, const char *dispatch_id)
{
	struct task *k = find_locked(t, id);
	if (!k || !k->spec->model || !k->row.dispatch_id ||
	    strcmp(k->row.dispatch_id, dispatch_id) || !state_is_active(k->row.state))
		return NULL;
	return k;
}

bool tasks_prompt_output(struct tasks *t, const char *id, const char *dispatch_id, const char *data,
			 size_t len)
{
	pthread_mutex_lock(&t->lock);
	struct task *k = prompt_attempt_locked(t, id, dispatch_id);
	if (k && !k->out_full[0]) {
		size_t room = TASKS_OUTPUT_MAX - k->out[0].len;
		buf_append(&k->out[0], data, len < room ? len : room);
		if (len > room) {
			static const char cut[] = "\n[clusterfs: output cut at the limit]\n";
			buf_append(&k->out[0], cut, sizeof(cut) - 1);
			k->out_full[0] = true;
		}
		k->changed_at = clock_wall_s();
	}
	bool wanted = k && !k->cancel_requested;
	pthread_mutex_unlock(&t->lock);
	return wanted;
}

void tasks_prompt_end(struct tasks *t, const char *id, const char *dispatch_id, const char *state,
		      const char *why, const char *result)
{
	struct waiter *wake = NULL;
	pthread_mutex_lock(&t->lock);
	struct task *k = prompt_attempt_locked(t, id, dispatch_id);
	if (k) {
		set_str(&k->result, result);
		store_put_output(t->store, id, "result", result, result ? strlen(result) : 0);
		k->row.exit_code = !strcmp(state, TASK_SUCCEEDED) ? 0
				   : !strcmp(state, TASK_FAILED)  ? 1
								  : -1;
		store_add_attempt(t->store, id, k->row.attempts, k->row.node, dispatch_id, state,
				  k->row.exit_code, k->row.started_at, clock_wall_s());
		if (!strcmp(state, TASK_SUCCEEDED))
			set_state_locked(t, k, TASK_SUCCEEDED, NULL, &wake);
		else
			requeue_or_fail_locked(t, k, state, why, &wake);
	}
	pthread_mutex_unlock(&t->lock);
	call_waiters(wake);
}

/* ---- artifacts (backend/artifacts.h) ---- */

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
	struct task *k = find_locked(t, c->id);
	if (k && k->collecting) {
		k->collecting = false;
		k->collected = true;
		if (err && !k->output_note)
			k->output_note = strdup(why);
		finalize_if_ready_locked(t, k, &wake);
	}
	pthread_mutex_unlock(&t->lock);
	call_waiters(wake);
	call_free(c);
}

/* True when a task that ended has its outputs' record here (or has none to have); else
 * starts fetching it. Lock held; loop thread. */
static bool outputs_ready_locked(struct tasks *t, struct task *k)
{
	if (!k->spec->n_outputs || !t->artifacts || k->collected || !k->row.dispatch_id ||
	    target_owns(t, k->row.node))
		return true;
	if (!k->collecting) {
		struct call *c = call_new(t, k->row.id, 0);
		k->collecting = true;
		if (artifacts_collect(t->artifacts, k->row.id, k->row.node, k->row.dispatch_id,
				      collect_done, c) < 0) {
			call_free(c);
			k->collecting = false;
			k->collected = true;
			set_str(&k->output_note,
				"its outputs could not be fetched: its node is gone");
			return true;
		}
	}
	return false;
}

#define STAGE_TRIES 5 /* stagings a node did not answer, in a row, before the task fails */

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
	struct task *k = find_locked(t, sc->id);
	/* still this attempt, still waiting to be sent */
	if (k && k->staging && k->row.dispatch_id && !strcmp(k->row.dispatch_id, sc->dispatch_id) &&
	    !strcmp(k->row.state, TASK_DISPATCHED)) {
		k->staging = false;
		if (err == -EAGAIN && k->dispatch_failures < STAGE_TRIES) {
			/* the node did not answer: the node's poll sends it again after a wait */
			k->dispatch_due_us =
				clock_now_us() + retry_delay_us(++k->dispatch_failures);
			char reason[900];
			snprintf(reason, sizeof(reason), "%s; attempt %u, retrying", why,
				 k->dispatch_failures);
			set_str(&k->row.reason, reason);
		} else if (err) {
			set_state_locked(t, k, TASK_FAILED, why, &wake);
		} else {
			k->staged = sc->staged ? sc->staged : json_array();
			sc->staged = NULL;
			set_str(&k->row.reason, NULL);
			dispatch_locked(t, k);
		}
	} else if (k) {
		k->staging = false;
	}
	pthread_mutex_unlock(&t->lock);
	call_waiters(wake);
	json_decref(sc->staged);
	free(sc->id);
	free(sc->dispatch_id);
	free(sc);
}

/* True when the task's inputs are staged on its node for this attempt (or it has none);
 * else starts staging them. Lock held; loop thread. */
static bool inputs_ready_locked(struct tasks *t, struct task *k)
{
	if (!k->spec->inputs || !t->artifacts || k->staged || target_owns(t, k->row.node))
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
		char *prod = strndup(sv, (size_t) (slash - sv));
		size_t n = strlen(prod);
		bool all = n > 2 && !strcmp(prod + n - 2, "@*");
		if (all)
			prod[n - 2] = '\0';
		struct task *p = find_locked(t, prod);
		json_t *ids = json_array();
		for (size_t i = 0; p && all && i < p->n_children; i++)
			json_array_append_new(ids, json_string(p->children[i]));
		if (p && !json_array_size(ids))
			json_array_append_new(ids, json_string(prod));
		json_object_set_new(producers, prod, ids);
		free(prod);
	}
	struct stage_call *sc = calloc(1, sizeof(*sc));
	sc->t = t;
	sc->id = strdup(k->row.id);
	sc->dispatch_id = strdup(k->row.dispatch_id);
	k->staging = true;
	set_str(&k->row.reason, "staging its inputs");
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
