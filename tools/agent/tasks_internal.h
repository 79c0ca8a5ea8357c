/* The agent's task registry: the private header of tools/agent/tasks*.c, never included
 * elsewhere. It holds the registry's structures and the functions the files share.
 *
 * Threads and locks:
 * - tasks->lock guards the list of tasks and every field of every task but its id; a
 *   function named *_locked is called with it held (and checks so).
 * - tasks->create_lock serialises creation, so that an id is started once; it is taken
 *   before tasks->lock, never while holding it, and is not held while a request only
 *   reads.
 * - Tasks are never removed while the registry is open: a pointer found under the lock
 *   stays valid after it is dropped (its id is immutable).
 *
 * The files:
 * - tasks.c: the registry (its files, the states, the scan at open, reaping);
 * - tasks_check.c: the checks of a POST body (tasks_check_request);
 * - tasks_create.c: creating a task: its identity, its spec.json, its supervisor;
 * - tasks_api.c: the task object and the other handlers (list, get, output, cancel). */
#pragma once

#include "tools/agent/supervisor.h"
#include "tools/agent/tasks.h"

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define TASKS_SUBDIR      "tasks"
#define TASKS_FILE_MAX    (4 * 1024 * 1024) /* spec.json and result.json at most */
#define TASKS_TIMEOUT_MAX 1e9               /* seconds; ~31 years */
#define TASKS_USER_MAX    64                /* bytes in a user name */

enum task_state {
	TASK_RUNNING,
	TASK_SUCCEEDED,
	TASK_FAILED,
	TASK_TIMED_OUT,
	TASK_CANCELLED,
	TASK_LOST,
};

/* The names of the states, as TASKS-API.md and result.json spell them. */
extern const char *const task_state_names[];

/* One task. Tasks are never removed while the registry is open, so a pointer found under
 * the lock stays valid; every field but `id` is protected by tasks->lock. */
struct task {
	char id[TASKS_ID_MAX + 1]; /* immutable */
	enum task_state state;
	pid_t pid;                /* the task's first process; 0: unknown */
	pid_t pgid;               /* its process group; 0: unknown */
	int exit_code;            /* -1: none yet */
	int signal;               /* 0: not ended by a signal */
	double started_at;        /* unix seconds */
	double finished_at;       /* unix seconds; 0: not finished, or unknown (lost) */
	char *error;              /* a sentence, or NULL; owned */
	struct supervisor_id sup; /* from the "supervisor" file; sup.pid 0: none */
	pid_t child;              /* a supervisor this agent forked and has not reaped; 0: none */
	bool sup_gone;            /* the supervisor is known to have exited */
	int64_t size[2];          /* stdout and stderr sizes, recorded once the task is final */
	char *user;               /* who it runs (or was to run) as; owned, immutable */
	uint64_t changed;         /* the registry's change number when it started or ended */
	long long uid;            /* that user's uid; -1: unknown (no such user); immutable */
};

struct tasks {
	pthread_mutex_t create_lock;   /* serialises creation, so an id is started once */
	pthread_mutex_t lock;          /* protects v, n, cap and every task */
	char *dir;                     /* STATE_DIR/tasks, absolute; immutable */
	int dirfd;                     /* open on dir; immutable */
	char *exe;                     /* the supervisor program; immutable */
	char boot_id[BOOT_ID_LEN + 1]; /* immutable */
	struct task **v;               /* in order of start */
	size_t n, cap;
	struct spares *spares; /* NULL: none */
	char *node;            /* the agent's --name, for error sentences; immutable */
	char *own_user; /* the name of the agent's euid (its number if it has none); immutable */
	uid_t own_uid;  /* the agent's euid; immutable */
	uint64_t index; /* change number: starts at the wall clock in µs, so that it grows
			 * across restarts too; protected by lock */
	void (*notify)(void *arg); /* protected by lock */
	void *notify_arg;
	long long outputs_max_files, outputs_max_bytes; /* immutable once serving */
};

/* [A-Za-z0-9._@:-]{1,200}, and not "." or "..", which are not directories of their own. */
bool tasks_id_is_valid(const char *id);
/* "ID/NAME", relative to tasks->dirfd. */
void tasks_task_path(const struct task *k, const char *name, char out[PATH_MAX]);
/* The size of k's stdout (s 0) or stderr (s 1) as it is on disk now. */
int64_t tasks_stream_size(struct tasks *t, const struct task *k, int s);

/* A new task with a valid id (tasks_id_is_valid()), running until tasks_refresh_locked()
 * learns otherwise. */
struct task *tasks_task_new(const char *id, double started_at);
void tasks_task_free(struct task *k);
/* Reads who runs the task: its pid files and its supervisor's identity. Missing files
 * leave the fields unknown. */
void tasks_load_pids(struct tasks *t, struct task *k);
/* Loads task `id` from its directory, whose spec.json exists. 0, or -EINVAL (with a
 * reason in errbuf) when spec.json cannot be read. */
int tasks_load_task(struct tasks *t, const char *id, struct task **ret_task, char *errbuf,
		    size_t errlen);
/* Removes the directory of a task that never started, so that its id stays free. */
void tasks_remove_dir(struct tasks *t, const char *id);

/* Takes the outcome from result.json. 0 when the task is final now (a result that cannot
 * be read makes it lost), -ENOENT when there is no result yet. */
int tasks_load_result_locked(struct tasks *t, struct task *k);
/* Brings a running task up to date: finished once result.json exists, lost once its
 * supervisor is gone without one. */
void tasks_refresh_locked(struct tasks *t, struct task *k);
/* Reaps k's supervisor if it is our child and has exited. */
void tasks_reap_locked(struct tasks *t, struct task *k);
/* The number of running tasks, each refreshed first. */
size_t tasks_count_running_locked(struct tasks *t);
struct task *tasks_find_locked(struct tasks *t, const char *id);
/* Adds k to the registry, which takes it over. */
void tasks_insert_locked(struct tasks *t, struct task *k);

/* Answers with the task object of TASKS-API.md and `status`: 0 or -errno. */
int tasks_reply_locked(struct tasks *t, const struct task *k, unsigned status,
		       struct response *resp);
