/* Tasks: submission, placement, dispatch to agents, progress, output, waiting, cancel,
 * and recovery after a crash. Durable in the store before anything else happens; every
 * dispatch carries an id that is stable across restarts and unique across control planes,
 * so that an agent runs each attempt exactly once.
 *
 * Public functions are thread-safe unless they say otherwise. Unfinished tasks live in
 * memory under tasks->lock and are written through to the store; finished ones are in the
 * store, with the tasks.finished_cached most recently used of them kept in memory too (a
 * lookup of another reads it back: one indexed row). Listings read the store by position;
 * the counts are kept as states change and read from the store's indexes at the start.
 * Network work happens on the loop thread. */
#pragma once

#include "backend/cluster.h"
#include "backend/loop.h"
#include "backend/store.h"
#include "backend/util.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define TASKS_SPEC_MAX   (1u << 20) /* a spec file larger than this is EFBIG */
#define TASKS_OUTPUT_MAX (4u << 20) /* output kept per stream by the control plane */

struct tasks;

/* Task states, as shown in tasks/ID/status. */
#define TASK_QUEUED     "queued"
#define TASK_DISPATCHED "dispatched"
#define TASK_RUNNING    "running"
#define TASK_SUCCEEDED  "succeeded"
#define TASK_FAILED     "failed"
#define TASK_TIMED_OUT  "timed_out"
#define TASK_CANCELLED  "cancelled"
#define TASK_LOST       "lost"

/* Every state, in this order (the index of tasks_count_states). */
#define TASK_N_STATES 8
extern const char *const task_state_names[TASK_N_STATES];

/* True for the states a task does not leave by itself. */
bool task_state_is_final(const char *state);

/* A copy of one task. Owns every pointer; release with task_view_clear(). */
struct task_view {
	char *id;
	char *parent; /* or NULL */
	char *state;
	char *node;       /* or NULL */
	char *reason;     /* or NULL */
	char *placement;  /* or NULL */
	json_t *spec;     /* canonical spec */
	json_t *children; /* ids of the copies of a node:"all" task (array), or NULL */
	int exit_code;    /* -1 when none */
	int attempts;
	int priority;
	uid_t uid;    /* the submitter */
	gid_t gid;    /* the submitter's group at submission */
	char *user;   /* the submitter's user name, or NULL */
	char *run_as; /* the user name sent to the node for the current attempt, or NULL */
	double submitted_at, started_at, finished_at, changed_at;
	size_t stdout_len, stderr_len;
	char *dispatch_id; /* the current attempt's id on its node, or NULL */
	json_t *remote;    /* the node's last task object for that attempt, or NULL */
};

void task_view_clear(struct task_view *v);

/* Creates the task manager. Borrows loop, cluster and store: they outlive it. */
int tasks_new(struct loop *loop, struct cluster *cluster, struct store *store, struct tasks **ret);
void tasks_free(struct tasks *t);
/* Reads the counts from the store and loads its unfinished tasks (recovery: queued stay
 * queued, dispatched and running ones are reconciled with their agents; finished ones
 * stay in the store until asked for), then starts scheduling and the retention
 * (tasks.retention) on the loop thread. */
int tasks_start(struct tasks *t);

/* Submits task `id` from spec text for the user uid (group gid) of the FUSE request.
 * Durable when it returns 0. -EEXIST when the id is taken, -EINVAL with a sentence in
 * errbuf when the spec is rejected, -EFBIG when larger than TASKS_SPEC_MAX, -EPERM when
 * the policy refuses the submitter (root without tasks.allow_root, a uid without a user
 * name), -EDQUOT when the user has tasks.queued_per_user unfinished tasks (DESIGN §8). */
int tasks_submit(struct tasks *t, const char *id, const char *text, size_t len, uid_t uid,
		 gid_t gid, char *errbuf, size_t errlen);
/* tasks_exists, tasks_owner and tasks_get find a task in memory, or else read it from the
 * store (one indexed row) into the cache of finished tasks. */
bool tasks_exists(struct tasks *t, const char *id);
/* The owner of a task's files: its submitter's uid and gid. 0 or -ENOENT. */
int tasks_owner(struct tasks *t, const char *id, uid_t *ret_uid, gid_t *ret_gid);
int tasks_get(struct tasks *t, const char *id, struct task_view *ret);

/* True when a task in `state` is in `group` (NULL: every state; "queued", "running" =
 * dispatched or running, "done" = succeeded, "failed" = failed, timed_out, cancelled or
 * lost; any other name: none). */
bool tasks_state_in_group(const char *state, const char *group);
/* Called per task of a page: its position (submission number) and id, borrowed for the
 * call. Returns true to stop. */
typedef bool (*tasks_page_fn)(void *arg, int64_t pos, const char *id);
/* One page of task ids in submission order, from the first after position `after` (0:
 * from the start), at most max: all of them (group and node NULL), those in a group, or
 * those placed on `node` (group ignored). Reads the store by index: a page costs what it
 * returns wherever it starts, and a reader that carries on from the last position it was
 * given sees every task that stayed in the group exactly once, whatever is added or
 * finishes meanwhile. Returns the number of ids given (a stop counts its own), or -errno. */
int tasks_list_page(struct tasks *t, const char *group, const char *node, int64_t after, size_t max,
		    tasks_page_fn fn, void *arg);
/* Every id tasks_list_page would give, in one new NULL-terminated array: costs the whole
 * history (for tools and tests, not for a directory read). */
char **tasks_list(struct tasks *t, const char *group, const char *node, size_t *ret_n);
/* Tasks by state (indexes of task_state_names): all of them (node NULL), or those placed
 * on `node`. Kept as states change: costs nothing per task. */
void tasks_count_states(struct tasks *t, const char *node, size_t ret_counts[TASK_N_STATES]);
/* Wall time the set of tasks last changed (for directory mtimes). */
double tasks_changed_at(struct tasks *t);
/* A generation of task `id`'s own data: it moves whenever what tasks_get shows of it
 * changes (state, reason, output sizes, owner, ...), so equal values mean equal files in
 * tasks/ID/ (fs/ keeps snapshots by it). 0 when there is no such task. */
uint64_t tasks_task_generation(struct tasks *t, const char *id);

/* Appends a task's output ("stdout" or "stderr") from byte `offset` to out: from memory
 * while it runs, from the store once it ended. Output the retention removed reads as one
 * line saying so ("[clusterfs: output removed by the retention policy ...]"). "result" is
 * a prompt task's final JSON (empty until it ended, and for commands). */
int tasks_read_output(struct tasks *t, const char *id, const char *stream, size_t offset,
		      struct buf *out);

/* tasks/ID/ctl: "cancel", "retry" or "priority P0..P3" (or 0..3). Only the submitter or
 * root may: -EPERM otherwise. -EINVAL with a sentence for a bad command, -EBUSY when the
 * task's state does not allow it. */
int tasks_control(struct tasks *t, const char *id, const char *cmd, uid_t uid, char *errbuf,
		  size_t errlen);

/* Called once when a task reaches a final state (on the loop thread), or with
 * state NULL when the wait was cancelled or the manager stops. */
typedef void (*tasks_wait_fn)(void *arg, const char *state, int exit_code);
/* A new wait id, to hand to an interrupt callback before the waiter is registered. */
uint64_t tasks_wait_new_id(struct tasks *t);
/* Registers waiter `wait` for task id. Returns 1 when the task is final already (done is
 * NOT called; the caller answers at once), 0 when registered, -ENOENT, or -EINTR when
 * tasks_wait_cancel(wait) came first. */
int tasks_wait(struct tasks *t, const char *id, uint64_t wait, tasks_wait_fn done, void *arg);
/* Withdraws a waiter: returns its arg (the caller owns it again) when it was registered,
 * and then done will not be called. NULL when done has run or runs now, or when it was
 * not registered yet (then a later tasks_wait with this id fails with -EINTR). */
void *tasks_wait_cancel(struct tasks *t, uint64_t wait);

/* A node's reliability from its task history (DESIGN §6): completed/total × 100, −10 per
 * failure in a row (at most −50); 100 with no history. *ret_completed and *ret_total may
 * be NULL. */
double tasks_node_reliability(struct tasks *t, const char *node, int *ret_completed,
			      int *ret_total);

/* Per node: tasks active (dispatched or running) there now. */
int tasks_active_on(struct tasks *t, const char *node);
/* Per node: tasks active there now, and those that ended there in the last hour (from
 * counters by the minute, kept as tasks end: no walk of the history). */
void tasks_node_counts(struct tasks *t, const char *node, int *ret_active, int *ret_succeeded_hour,
		       int *ret_failed_hour);

/* recent-tasks.json: {"total", "active": the dispatched and running tasks, "recent": the
 * newest `max` by submission, newest first (read from the store)}; each {id, state, node,
 * exit_code, parent, submitted_at, started_at, finished_at}, nothing private. Costs what
 * it shows. New reference. */
json_t *tasks_recent(struct tasks *t, size_t max);

/* The placement a spec would get now, without submitting it (sched_rank's document plus
 * "spec": the spec as it would be accepted, without "cmd", which it need not have).
 * text NULL: a default task. -EINVAL with a sentence in errbuf for a bad spec. */
int tasks_rank(struct tasks *t, const char *text, size_t len, json_t **ret, char *errbuf,
	       size_t errlen);

/* Where the tasks of some nodes go instead of an agent: a module that answers the agent's
 * task protocol itself (backend/slurm.c). owns() is called on any thread; call() on the
 * loop thread, with the arguments of an agent request, and must answer (done) after it
 * returns, never from within. */
struct tasks_target {
	bool (*owns)(void *arg, const char *node);
	int (*call)(void *arg, const char *node, const char *method, const char *path,
		    const char *body, http_done_fn done, void *done_arg);
	void *arg;
};

struct artifacts;
/* Sets the artifacts module (artifacts.h, borrowed) before tasks_start(): a task's
 * outputs are collected before it ends, and its inputs staged before it is sent. */
void tasks_set_artifacts(struct tasks *t, struct artifacts *a);

/* Sets the target (copied) before tasks_start(). */
void tasks_set_target(struct tasks *t, const struct tasks_target *target);

/* Where prompt tasks (a spec with "model", no "cmd") go: a module that asks the nodes'
 * model servers itself (backend/prompt.c). The task manager places them like any task,
 * with how each node holds the model (holds(), SCHED_MODEL_*; any thread, tasks->lock
 * held) as a rule of its own; pull() is asked, on the loop thread, for a model no node has
 * when the spec says "pull": true, and appends one sentence to why. start() and cancel()
 * run on the loop thread with tasks->lock held: the runner answers later, through
 * tasks_prompt_output() and tasks_prompt_end(), never from within. */
struct tasks_prompts {
	int (*holds)(void *arg, const char *node, const char *model);
	void (*pull)(void *arg, const char *node, const char *model, struct buf *why);
	/* attempt dispatch_id of task id on node, from its canonical spec; 0 or -errno */
	int (*start)(void *arg, const char *id, const char *dispatch_id, const char *node,
		     const json_t *spec);
	void (*cancel)(void *arg, const char *dispatch_id);
	void *arg;
};

/* Sets the prompt runner (copied) before tasks_start(). */
void tasks_set_prompts(struct tasks *t, const struct tasks_prompts *prompts);
/* Loop thread: more stdout of attempt dispatch_id of task id. False when that attempt is
 * over (cancelled, lost, retried): the runner should stop. */
bool tasks_prompt_output(struct tasks *t, const char *id, const char *dispatch_id, const char *data,
			 size_t len);
/* Loop thread: the attempt ended in state (succeeded, failed, timed_out, cancelled), why
 * NULL or a sentence, result the JSON for tasks/ID/result. A failure is retried on another
 * node that has the model when the spec allows retries. */
void tasks_prompt_end(struct tasks *t, const char *id, const char *dispatch_id, const char *state,
		      const char *why, const char *result);

/* A cluster_change_fn: a node changed, so queued work may fit now. */
void tasks_on_cluster_change(void *arg, const char *node);
