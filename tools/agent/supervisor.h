/* The per-task supervisor: a small process that runs one task, enforces its timeout,
 * honours a cancel request and records the outcome in the task's directory, so that
 * results survive the agent being restarted or killed.
 *
 * The supervisor is a program of its own, clusterfs-agent-supervise, installed next to
 * clusterfs-agent: the agent spawns it in a new session as "clusterfs-agent-supervise
 * TASK_DIR AGENT_PID", and it forks the task into a session of its own. It must be
 * exec'd (the agent is multi-threaded, and a forked child that does not exec may only use
 * async-signal-safe calls, which a process that lives as long as its task cannot keep
 * to), and it is a small binary of its own rather than the agent itself because that
 * exec is on the path of every task start: it maps libc and jansson, not the agent's
 * HTTP and TLS libraries.
 *
 * Starting a task, with fd 3 (answer) and fd 4 (go-ahead) as pipes between the two:
 *   agent                                   supervisor
 *   makes the directory (or renames a spare
 *   into place, see spares.h), writes
 *   spec.json, spawns the supervisor
 *   writes "supervisor", creates stdout,    reads spec.json, prepares the task's
 *   stderr and work/, fsyncs spec.json and  environment, then waits
 *   the directories
 *   sends "GO" (or closes fd 4: no task)    checks that its agent is alive, opens the
 *                                           files, forks the task, writes pid and pgid,
 *                                           answers "OK"
 *   answers 201
 * so that the supervisor starts up while the agent waits for the disk, nothing runs
 * before the task's id is durable, and the supervisor adds nothing to the directory
 * while the agent fsyncs it.
 *
 * The task directory, STATE_DIR/tasks/ID (mode 0700), is the contract between the two:
 *   spec.json         the request; written by the agent, durable before the task runs;
 *                     with "started_at", "user" and "uid" (who the task runs as) and,
 *                     when the request named the user, "passwd": {"uid", "gid", "home",
 *                     "shell"} as resolved at dispatch. With "passwd" the supervisor,
 *                     which stays root, has the child take that identity before its
 *                     exec (initgroups, setgid, setuid, checked irreversible; umask
 *                     022), gives it HOME, USER, LOGNAME and SHELL, and starts it in
 *                     HOME unless it is the supervisor's own user
 *   supervisor        "PID STARTTIME BOOT_ID\n": who supervises, robust to pid reuse;
 *                     written by the agent
 *   pid, pgid         the task's process and process group, one decimal number each
 *   stdout, stderr    the task's output, opened O_APPEND; created by the agent
 *   work/             the default working directory; created by the agent (and present,
 *                     empty, in a spare used for a task with a cwd of its own)
 *   cancel-requested  created by the agent to ask for a cancel
 *   result.json       {"state", "exit_code", "signal", "finished_at"[, "error"]},
 *                     written atomically by the supervisor when the task has ended
 *                     (exit_code null: the child could not become the task's user), or
 *                     by the agent for a task that could not run at all (then with no
 *                     supervisor, pid or pgid) */
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

/* A supervisor that was spawned and has not been told yet whether to run its task. */
struct supervisor_launch {
	pid_t pid;
	int answer_fd; /* where it answers "OK" or "ERR ..." */
	int go_fd;     /* where it waits for the go-ahead */
};

/* Agent side, in two steps, so that the agent can make the task's spec.json durable
 * while the supervisor starts up. supervisor_spawn() starts `exe` (the
 * SUPERVISOR_PROGRAM) as the supervisor of the task in `task_dir`, open as `dirfd`,
 * whose spec.json must be complete, though not necessarily durable yet; then, while the
 * supervisor starts, it writes the "supervisor" file (with `boot_id`, the current one)
 * and creates stdout, stderr and, with `work`, work/. The supervisor prepares the task
 * and waits; it runs nothing before supervisor_confirm(). 0, or -errno with a sentence
 * in errbuf (errlen bytes) when no supervisor could be started, or the files could not be
 * made (the supervisor was then told to exit, and reaped). */
int supervisor_spawn(const char *exe, const char *task_dir, int dirfd, const char *boot_id,
		     bool work, struct supervisor_launch *ret_launch, char *errbuf, size_t errlen);
/* Tells the supervisor of `l` to run its task (`go`) or to exit without running anything,
 * and waits until it reports that the task was forked (its pid files exist) or that it
 * could not be; at most 10 s. Consumes `l`. Returns:
 *   0           the task was started; *ret_pid is the supervisor, a child of the caller
 *               that the caller must reap;
 *   -ETIMEDOUT  no answer in time: the supervisor still runs, *ret_pid is set (never
 *               without `go`: such a supervisor is killed and reaped);
 *   -ECHILD     the supervisor died without an answer (it was reaped); the task may or
 *               may not have been forked (not without `go`);
 *   -EIO        the supervisor refused and was reaped: nothing ran; errbuf says why
 *               (always without `go`, unless -ECHILD).
 * errbuf (errlen bytes) gets a sentence on every failure. */
int supervisor_confirm(struct supervisor_launch *l, bool go, pid_t *ret_pid, char *errbuf,
		       size_t errlen);

/* Supervisor side: the whole life of a supervisor, the main() of SUPERVISOR_PROGRAM,
 * `argv` being "EXE TASK_DIR AGENT_PID" with the answer pipe on fd 3 and the go-ahead
 * pipe on fd 4. Returns the exit status. */
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

/* Whether the environment variable `key` says who a task is (HOME, USER, LOGNAME, SHELL):
 * those come from the task's user, never from its spec's "env", which the agent refuses
 * and the supervisor ignores. */
bool supervisor_env_is_identity(const char *key);

/* Writes `name` in the directory open as `dirfd` atomically: a temporary file, renamed
 * over it. With `durable`, the data and the rename are fsynced before returning. 0 or
 * -errno. Borrows everything. */
int supervisor_write_file(int dirfd, const char *name, const void *data, size_t len, bool durable);
