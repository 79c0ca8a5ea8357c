/* Tasks: submission, placement, dispatch to agents, progress, output, waiting, cancel,
 * and recovery after a crash. Durable in the store before anything else happens; every
 * dispatch carries an id that is stable across restarts and unique across control planes,
 * so that an agent runs each attempt exactly once.
 *
 * Public functions are thread-safe unless they say otherwise. The state lives in memory
 * under tasks->lock and is written through to the store; network work happens on the
 * loop thread. */
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
/* Loads the stored tasks (recovery: queued stay queued, dispatched and running ones are
 * reconciled with their agents) and starts scheduling on the loop thread. */
int tasks_start(struct tasks *t);

/* Submits task `id` from spec text for the user uid (group gid) of the FUSE request.
 * Durable when it returns 0. -EEXIST when the id is taken, -EINVAL with a sentence in
 * errbuf when the spec is rejected, -EFBIG when larger than TASKS_SPEC_MAX, -EPERM when
 * the policy refuses the submitter (root without tasks.allow_root, a uid without a user
 * name), -EDQUOT when the user has tasks.queued_per_user unfinished tasks (DESIGN §8). */
int tasks_submit(struct tasks *t, const char *id, const char *text, size_t len, uid_t uid,
		 gid_t gid, char *errbuf, size_t errlen);
bool tasks_exists(struct tasks *t, const char *id);
/* The owner of a task's files: its submitter's uid and gid. 0 or -ENOENT. */
int tasks_owner(struct tasks *t, const char *id, uid_t *ret_uid, gid_t *ret_gid);
int tasks_get(struct tasks *t, const char *id, struct task_view *ret);

/* Task ids, in submission order: all of them (group NULL), or those in a group
 * ("queued", "running" = dispatched or running, "done" = succeeded, "failed" = failed,
 * timed_out, cancelled or lost), or those placed on `node`. New NULL-terminated array. */
char **tasks_list(struct tasks *t, const char *group, const char *node, size_t *ret_n);
/* Tasks by state (indexes of task_state_names): all of them (node NULL), or those placed
 * on `node`. Kept as states change: costs nothing per task. */
void tasks_count_states(struct tasks *t, const char *node, size_t ret_counts[TASK_N_STATES]);
/* Wall time the set of tasks last changed (for directory mtimes). */
double tasks_changed_at(struct tasks *t);

/* Appends a task's output ("stdout" or "stderr") from byte `offset` to out. */
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
 * newest `max` by submission, newest first}; each {id, state, node, exit_code, parent,
 * submitted_at, started_at, finished_at}, nothing private. Costs what it shows. New
 * reference. */
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

/* A cluster_change_fn: a node changed, so queued work may fit now. */
void tasks_on_cluster_change(void *arg, const char *node);
