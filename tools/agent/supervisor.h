/* The per-task supervisor: a small process that runs one task, enforces its timeout,
 * honours a cancel request and records the outcome in the task's directory, so that
 * results survive the agent being restarted or killed.
 *
 * The supervisor is a program of its own, clusterfs-agent-supervise, installed next to
 * clusterfs-agent: the agent starts it in a new session with "clusterfs-agent-supervise
 * TASK_DIR AGENT_PID", and it forks the task into its own process group. It must exec
 * something (the agent is multi-threaded, and a forked child that does not exec may only
 * use async-signal-safe calls, which a process that lives as long as its task cannot keep
 * to), and it is a separate small binary rather than the agent itself because its exec
 * is on the path of every task start: it maps libc and jansson, not the agent's HTTP
 * and TLS libraries.
 *
 * The task directory, STATE_DIR/tasks/ID (mode 0700), is the contract between the two:
 *   spec.json         the request; written (and fsynced) by the agent before the fork
 *   supervisor        "PID STARTTIME BOOT_ID\n": who supervises, robust to pid reuse
 *   pid, pgid         the task's process and process group, one decimal number each
 *   stdout, stderr    the task's output, opened O_APPEND
 *   work/             the default working directory
 *   cancel-requested  created by the agent to ask for a cancel
 *   result.json       {"state", "exit_code", "signal", "finished_at"[, "error"]},
 *                     written atomically by the supervisor when the task has ended */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define TASK_FILE_SPEC       "spec.json"
#define TASK_FILE_SUPERVISOR "supervisor"
#define TASK_FILE_PID        "pid"
#define TASK_FILE_PGID       "pgid"
#define TASK_FILE_STDOUT     "stdout"
#define TASK_FILE_STDERR     "stderr"
#define TASK_FILE_CANCEL     "cancel-requested"
#define TASK_FILE_RESULT     "result.json"
#define TASK_DIR_WORK        "work"

/* The supervisor program, which the agent finds in the directory of its own binary. */
#define SUPERVISOR_PROGRAM "clusterfs-agent-supervise"
/* After a timeout or a cancel, SIGTERM goes to the task's process group, and SIGKILL
 * this much later if any of it is still alive. */
#define SUPERVISOR_KILL_GRACE_US (5 * 1000 * 1000)
/* The base environment of every task, before its own "env" is added. */
#define SUPERVISOR_DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#define BOOT_ID_LEN 36

/* Who a supervisor is: a pid alone could have been recycled by another process. */
struct supervisor_id {
	pid_t pid;
	uint64_t start_time;           /* field 22 of /proc/PID/stat, ticks after boot */
	char boot_id[BOOT_ID_LEN + 1]; /* /proc/sys/kernel/random/boot_id */
};

/* Agent side. Spawns `exe` (the SUPERVISOR_PROGRAM) as the supervisor of the task in
 * `task_dir` (whose spec.json must exist), and waits until it reports that the task was
 * forked (its pid files exist) or that it could not be; at most 10 s. Returns:
 *   0           the task was started; *ret_pid is the supervisor, a child of the caller
 *               that the caller must reap;
 *   -ETIMEDOUT  no answer in time: the supervisor still runs, *ret_pid is set;
 *   -ECHILD     the supervisor died without an answer (it was reaped); the task may or
 *               may not have been forked;
 *   -EIO        the supervisor could not be started, or refused and was reaped:
 *               nothing ran; errbuf says why;
 *   other -errno when no supervisor could be started (pipe).
 * errbuf (errlen bytes) gets a sentence on every failure. */
int supervisor_start(const char *exe, const char *task_dir, pid_t *ret_pid, char *errbuf,
		     size_t errlen);

/* Supervisor side: the whole life of a supervisor, the main() of SUPERVISOR_PROGRAM,
 * `argv` being "EXE TASK_DIR AGENT_PID" with the answer pipe on fd 3. Returns the exit
 * status. */
int supervisor_main(int argc, char **argv);

/* Reads the current boot id. 0 or -errno. */
int supervisor_read_boot_id(char ret_boot_id[BOOT_ID_LEN + 1]);
/* Reads the "supervisor" file of the task directory open as `dirfd`. 0, -ENOENT, or
 * -EINVAL when malformed. */
int supervisor_read_id(int dirfd, struct supervisor_id *ret_id);
/* Whether the process `id` describes still exists on this boot and is not a zombie.
 * `boot_id` is the current one. */
bool supervisor_is_alive(const struct supervisor_id *id, const char *boot_id);

/* Asks the supervisor of a running task to cancel it: creates the cancel marker in the
 * task directory open as `dirfd`, sends SIGTERM to the task's process group `pgid` (when
 * known, > 0) and SIGUSR1 to the supervisor `sup_pid` (when known to be alive, > 0) so
 * that it starts the SIGKILL grace period. 0 or -errno (the marker could not be made). */
int supervisor_cancel(int dirfd, pid_t pgid, pid_t sup_pid);

/* Writes `name` in the directory open as `dirfd` atomically: a temporary file, renamed
 * over it. With `durable`, the data and the rename are fsynced before returning. 0 or
 * -errno. Borrows everything. */
int supervisor_write_file(int dirfd, const char *name, const void *data, size_t len, bool durable);
