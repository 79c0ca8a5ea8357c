/* Tasks: the private header of backend/tasks*.c, included elsewhere only by
 * tests/unit/test-tasks.c (which checks the state machine from inside). It holds the
 * table's structures and the functions the files share.
 *
 * Threads and locks (DESIGN §2, "The tasks module"):
 * - tasks->lock guards the table, every struct task, the work lists, the counts and the
 *   users; a function named *_locked is called with it held.
 * - tasks->commit_lock guards only the group commit's queue (tasks_commit.c); it is never
 *   held together with tasks->lock.
 * - The lock order is tasks -> cluster: cluster_* functions (which take the cluster's
 *   lock) are called with tasks->lock held, never the other way round; the cluster calls
 *   back (tasks_on_cluster_change) without its lock held.
 * - Waiters are woken outside the lock: *_locked functions collect them in a list that
 *   the caller hands to tasks_call_waiters() after unlocking.
 * - The agent client, scheduling, retention and the tick run on the loop thread (the one
 *   that owns curl); fields marked "loop thread only" are touched there alone. */
#pragma once

#include "backend/sched.h"
#include "backend/spec.h"
#include "backend/tasks.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TICK_US          (250 * 1000ull) /* progress polling and scheduling */
#define FETCH_MAX        (1u << 20)      /* output bytes asked per request */
#define AGENT_TIMEOUT_MS 5000L
#define N_STREAMS        2
#define TOMBSTONES       64
#define PRUNE_BATCH      256    /* finished tasks one retention run handles */
#define PRUNE_SAFETY_S   3600.0 /* the longest time between two retention runs */
#define FETCH_TRIES      6      /* failed output fetches before a stream gives up */
#define STAGE_TRIES      5 /* stagings a node did not answer, in a row, before the task fails */
#define RETRY_FIRST_US   (250 * 1000ull)   /* first wait after a failed fetch or dispatch */
#define RETRY_MAX_US     (30 * 1000000ull) /* the longest wait between two attempts */

/* A task's state inside the module (systemd's _MAX/_INVALID pattern). The strings, in
 * this order in task_state_names[] (the TASK_* names of tasks.h), are for the store and
 * the JSON edges only. */
enum task_state {
	TASK_S_QUEUED,
	TASK_S_DISPATCHED,
	TASK_S_RUNNING,
	TASK_S_SUCCEEDED,
	TASK_S_FAILED,
	TASK_S_TIMED_OUT,
	TASK_S_CANCELLED,
	TASK_S_LOST,
	_TASK_STATE_MAX,
	_TASK_STATE_INVALID = -1,
};
_Static_assert(_TASK_STATE_MAX == TASK_N_STATES, "one name per state in task_state_names[]");

/* The directories of tasks/ that list tasks by state, named in task_group_names[]. */
enum task_group {
	TASK_G_QUEUED,
	TASK_G_RUNNING,
	TASK_G_DONE,
	TASK_G_FAILED,
	_TASK_GROUP_MAX,
	_TASK_GROUP_INVALID = -1,
};
extern const char *const task_group_names[_TASK_GROUP_MAX];

/* The state or group a string names, or _INVALID when it names none. */
enum task_state task_state_from_string(const char *s);
enum task_group task_group_from_string(const char *s);

static inline bool state_final(enum task_state s)
{
	return s >= TASK_S_SUCCEEDED && s < _TASK_STATE_MAX;
}

static inline bool state_active(enum task_state s)
{
	return s == TASK_S_DISPATCHED || s == TASK_S_RUNNING;
}

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
	enum task_state state; /* row.state (the store's string) as the code reads it */
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
	bool remote_ended;            /* the agent reported the end: finalised after output */
	enum task_state remote_state; /* the final state it reported */
	char *remote_error;           /* the agent's sentence for why it ended, or NULL */
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

struct call {
	struct tasks *t;
	char *id; /* task id, or node name for polls */
	int stream;
	uint64_t started_us;
};

/* Node descriptions for the scheduler, from the cluster's views. The arrays in *ret_views
 * own the strings the sched_nodes borrow. Caller holds tasks->lock (for the counts). */
struct sched_input {
	struct node_view *views;
	struct sched_node *nodes;
	const char ***caps;
	size_t n;
};

extern const char *const stream_names[N_STREAMS];

/* ---- tasks.c: the table, the counts and the state machine ---- */

void tasks_minute_counts_add(struct minute_counts *m, double at, bool ok);
void tasks_minute_counts_hour(const struct minute_counts *m, double now, int *ret_ok,
			      int *ret_failed);
struct task *tasks_find_locked(struct tasks *t, const char *id);
struct node_load *tasks_node_load_locked(struct tasks *t, const char *node, bool create);
void tasks_track_locked(struct tasks *t, struct task *k);
struct user_load *tasks_user_load_locked(struct tasks *t, uid_t uid);
void tasks_add_locked(struct tasks *t, struct task *k, bool stored);
void tasks_forget_locked(struct tasks *t, struct task *k);
void tasks_cache_trim_locked(struct tasks *t);
struct task *tasks_lookup_locked(struct tasks *t, const char *id);
void tasks_task_free(struct task *k);
void tasks_set_str(char **dst, const char *src);
void tasks_persist_locked(struct tasks *t, struct task *k);
void tasks_call_waiters(struct waiter *w);
void tasks_set_state_locked(struct tasks *t, struct task *k, enum task_state state,
			    const char *reason, struct waiter **wake);
bool tasks_target_owns(struct tasks *t, const char *node);

/* ---- tasks_agent.c: the agent client ---- */

struct call *tasks_call_new(struct tasks *t, const char *id, int stream);
void tasks_call_free(struct call *c);
char *tasks_run_as_user_locked(struct tasks *t, const struct task *k);
void tasks_dispatch_locked(struct tasks *t, struct task *k);
void tasks_finalize_if_ready_locked(struct tasks *t, struct task *k, struct waiter **wake);
void tasks_tick(void *arg);

/* ---- tasks_control.c: retries ---- */

/* What may be tried again (tasks_retry_policy). */
enum retry_what {
	RETRY_ATTEMPT,  /* an attempt ended unsuccessfully: the task runs again ("retries") */
	RETRY_DISPATCH, /* a dispatch the agent did not take: sent again, however often */
	RETRY_FETCH,    /* an output fetch failed: FETCH_TRIES in a row, then the stream ends */
	RETRY_STAGE,    /* a node did not answer a staging: STAGE_TRIES in a row */
	RETRY_CANCEL,   /* a cancel the agent did not take: sent again at the next tick */
};

/* Decides every retry of the module: whether `what` of task k is tried again after
 * `failures` failures in a row (RETRY_ATTEMPT: k's attempts so far, and `ended` the state
 * the last one ended in; _TASK_STATE_INVALID for the others). When the retry waits,
 * *ret_due_us (if not NULL) is set to the loop clock's time before which it is not made. */
bool tasks_retry_policy(enum retry_what what, const struct task *k, enum task_state ended,
			unsigned failures, uint64_t *ret_due_us);
void tasks_requeue_or_fail_locked(struct tasks *t, struct task *k, enum task_state state,
				  const char *why, struct waiter **wake);

/* ---- tasks_sched.c: scheduling ---- */

int tasks_active_on_locked(struct tasks *t, const char *node);
void tasks_sched_input_build_locked(struct tasks *t, struct sched_input *in);
void tasks_sched_input_free(struct sched_input *in);
void tasks_sched_request_of(const struct task_spec *s, struct sched_request *req);
void tasks_prompt_holdings_locked(struct tasks *t, const struct task_spec *s, const char *avoid,
				  struct sched_input *in);
void tasks_schedule_locked(struct tasks *t, struct waiter **wake);
void tasks_schedule_on_loop(void *arg);
void tasks_post_schedule(struct tasks *t);

/* ---- tasks_store.c: the store ---- */

struct task *tasks_task_from_row_locked(struct tasks *t, struct store_task *row);
void tasks_prune_arm_locked(struct tasks *t, double due);

/* ---- tasks_artifacts.c: inputs and outputs ---- */

bool tasks_outputs_ready_locked(struct tasks *t, struct task *k);
bool tasks_inputs_ready_locked(struct tasks *t, struct task *k);
