/* The agent's side of the per-task supervisor: starting one and confirming its start,
 * reading who supervises a task, cancelling; and the small file helpers both sides use. */
#include "tools/agent/supervisor.h"
#include "tools/agent/supervisor_internal.h"

#include "backend/util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define SUPERVISOR_START_TIMEOUT (10 * 1000) /* ms the agent waits for the answer */

/* ---- small file helpers, shared with the agent ---- */

int supervisor_write_all(int fd, const void *data, size_t len)
{
	const char *p = data;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t) n;
	}
	return 0;
}

int supervisor_write_file(int dirfd, const char *name, const void *data, size_t len, bool durable)
{
	char tmp[NAME_MAX + 1];
	int fd, r;

	if ((size_t) snprintf(tmp, sizeof(tmp), "%s.tmp", name) >= sizeof(tmp))
		return -ENAMETOOLONG;
	fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return -errno;
	r = supervisor_write_all(fd, data, len);
	if (r == 0 && durable && fsync(fd) < 0)
		r = -errno;
	if (close(fd) < 0 && r == 0)
		r = -errno;
	if (r == 0 && renameat(dirfd, tmp, dirfd, name) < 0)
		r = -errno;
	if (r < 0) {
		unlinkat(dirfd, tmp, 0);
		return r;
	}
	if (durable && fsync(dirfd) < 0)
		return -errno;
	return 0;
}

int supervisor_write_in_place(int dirfd, const char *name, const void *data, size_t len)
{
	int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return -errno;
	int r = supervisor_write_all(fd, data, len);
	if (close(fd) < 0 && r == 0)
		r = -errno;
	return r;
}

/* Reads a small file into buf (NUL-terminated, at most size - 1 bytes). Returns the
 * length or -errno. */
static ssize_t read_small(int dirfd, const char *name, char *buf, size_t size)
{
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	size_t len = 0;

	if (fd < 0)
		return -errno;
	while (len < size - 1) {
		ssize_t n = read(fd, buf + len, size - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int r = -errno;
			close(fd);
			return r;
		}
		if (n == 0)
			break;
		len += (size_t) n;
	}
	close(fd);
	buf[len] = '\0';
	return (ssize_t) len;
}

int supervisor_read_boot_id(char ret_boot_id[BOOT_ID_LEN + 1])
{
	char buf[64];
	ssize_t n = read_small(AT_FDCWD, "/proc/sys/kernel/random/boot_id", buf, sizeof(buf));
	if (n < 0)
		return (int) n;
	if (n < BOOT_ID_LEN)
		return -EINVAL;
	memcpy(ret_boot_id, buf, BOOT_ID_LEN);
	ret_boot_id[BOOT_ID_LEN] = '\0';
	return 0;
}

/* State letter and start time (field 22) of a process from /proc/PID/stat. 0 or -errno. */
static int proc_read_stat(pid_t pid, char *ret_state, uint64_t *ret_start_time)
{
	char path[64], buf[4096];
	unsigned long long start;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
	n = read_small(AT_FDCWD, path, buf, sizeof(buf));
	if (n < 0)
		return (int) n;
	/* The command name (field 2) may hold spaces and parentheses: skip past its end. */
	char *p = strrchr(buf, ')');
	if (!p || p[1] != ' ')
		return -EINVAL;
	p += 2;
	char state = *p;
	for (int field = 3; field < 22; field++) {
		p = strchr(p, ' ');
		if (!p)
			return -EINVAL;
		p++;
	}
	if (sscanf(p, "%llu", &start) != 1)
		return -EINVAL;
	*ret_state = state;
	*ret_start_time = start;
	return 0;
}

int supervisor_read_id(int dirfd, struct supervisor_id *ret_id)
{
	char buf[128], boot[BOOT_ID_LEN + 2];
	struct supervisor_id id = {0};
	unsigned long long start;
	int pid;

	ssize_t n = read_small(dirfd, TASK_FILE_SUPERVISOR, buf, sizeof(buf));
	if (n < 0)
		return (int) n;
	if (sscanf(buf, "%d %llu %37s", &pid, &start, boot) != 3 || pid <= 0 ||
	    strlen(boot) != BOOT_ID_LEN)
		return -EINVAL;
	id.pid = pid;
	id.start_time = start;
	memcpy(id.boot_id, boot, sizeof(id.boot_id));
	*ret_id = id;
	return 0;
}

bool supervisor_is_alive(const struct supervisor_id *id, const char *boot_id)
{
	uint64_t start;
	char state;

	if (id->pid <= 0 || strcmp(id->boot_id, boot_id) != 0)
		return false;
	/* EPERM: the pid now belongs to another user, so not to our supervisor. */
	if (kill(id->pid, 0) < 0)
		return false;
	if (proc_read_stat(id->pid, &state, &start) < 0)
		return false;
	return start == id->start_time && state != 'Z' && state != 'X';
}

int supervisor_cancel(int dirfd, pid_t pgid, pid_t sup_pid)
{
	int fd = openat(dirfd, TASK_FILE_CANCEL, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return -errno;
	close(fd);
	/* The marker first: the supervisor looks for it when the task dies of this signal. */
	if (pgid > 0)
		kill(-pgid, SIGTERM);
	if (sup_pid > 0)
		kill(sup_pid, SIGUSR1);
	return 0;
}

/* ---- starting a supervisor ---- */

void supervisor_sigset(sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGCHLD);
	sigaddset(set, SIGUSR1);
	sigaddset(set, SIGTERM);
	sigaddset(set, SIGINT);
	sigaddset(set, SIGHUP);
}

/* Spawns the supervisor with posix_spawn(), which clones without copying the agent's
 * address space (a fork() would, and this is on the path of every task start) and
 * reports a failed exec itself. The supervisor gets its own session, /dev/null as stdin,
 * stdout and stderr, `answer_w` as fd 3, `go_r` as fd 4 and nothing else. 0 or -errno. */
static int spawn_supervisor(const char *exe, char **argv, int answer_w, int go_r, pid_t *ret_pid)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t mask;
	int answer, go, r;

	/* Out of the way of 0..4, whatever numbers they had, so that the dup2s below cannot
	 * clobber one another. */
	answer = fcntl(answer_w, F_DUPFD_CLOEXEC, 10);
	go = fcntl(go_r, F_DUPFD_CLOEXEC, 10);
	if (answer < 0 || go < 0) {
		r = errno;
		goto out_close;
	}
	supervisor_sigset(&mask);
	r = posix_spawn_file_actions_init(&fa);
	if (r)
		goto out_close;
	r = posix_spawnattr_init(&attr);
	if (r)
		goto out_destroy_actions;
	/* The signals stay blocked until the supervisor's signalfd takes them. Everything of
	 * ours is O_CLOEXEC already; closefrom also catches descriptors a library may have
	 * opened without it (the listening socket must never leak). */
	if ((r = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDWR, 0)) ||
	    (r = posix_spawn_file_actions_adddup2(&fa, 0, 1)) ||
	    (r = posix_spawn_file_actions_adddup2(&fa, 0, 2)) ||
	    (r = posix_spawn_file_actions_adddup2(&fa, answer, SUPERVISOR_ANSWER_FD)) ||
	    (r = posix_spawn_file_actions_adddup2(&fa, go, SUPERVISOR_GO_FD)) ||
	    (r = posix_spawn_file_actions_addclosefrom_np(&fa, SUPERVISOR_GO_FD + 1)) ||
	    (r = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK)) ||
	    (r = posix_spawnattr_setsigmask(&attr, &mask)))
		goto out_destroy_attr;
	r = posix_spawn(ret_pid, exe, &fa, &attr, argv, environ);

out_destroy_attr:
	posix_spawnattr_destroy(&attr);
out_destroy_actions:
	posix_spawn_file_actions_destroy(&fa);
out_close:
	if (answer >= 0)
		close(answer);
	if (go >= 0)
		close(go);
	return -r;
}

void supervisor_reap(pid_t pid, int *ret_status)
{
	int status = 0;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	*ret_status = status;
}

/* Reads the supervisor's one-line answer until newline, EOF or the deadline. Returns the
 * length read, or -ETIMEDOUT. */
static int answer_read(int fd, char *buf, size_t size)
{
	uint64_t deadline = clock_now_us() + (uint64_t) SUPERVISOR_START_TIMEOUT * 1000;
	size_t len = 0;

	while (len < size - 1 && !memchr(buf, '\n', len)) {
		uint64_t now = clock_now_us();
		if (now >= deadline)
			return -ETIMEDOUT;
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		int n = poll(&pfd, 1, (int) ((deadline - now + 999) / 1000));
		if (n < 0 && errno != EINTR)
			return -errno;
		if (n <= 0)
			continue;
		ssize_t got = read(fd, buf + len, size - 1 - len);
		if (got < 0 && errno != EINTR && errno != EAGAIN)
			return -errno;
		if (got == 0)
			break;
		if (got > 0)
			len += (size_t) got;
	}
	buf[len] = '\0';
	return (int) len;
}

/* Writes who supervises the task in `dirfd`: the process `pid`, our child. In place: a
 * reader can only find it torn if the agent died while writing it, before the go-ahead,
 * so that the supervisor runs nothing. */
static int write_id(int dirfd, pid_t pid, const char *boot_id)
{
	char line[128];
	uint64_t start;
	char state;
	int r;

	if ((r = proc_read_stat(pid, &state, &start)) < 0)
		return r;
	int len = snprintf(line, sizeof(line), "%d %" PRIu64 " %s\n", (int) pid, start, boot_id);
	return supervisor_write_in_place(dirfd, TASK_FILE_SUPERVISOR, line, (size_t) len);
}

/* Creates the files the supervisor opens after the go-ahead: the task's output and, when
 * it runs there, its working directory. */
static int make_task_files(int dirfd, bool work, const char **ret_failed)
{
	static const char *const outputs[] = {TASK_FILE_STDOUT, TASK_FILE_STDERR};

	if (work && mkdirat(dirfd, TASK_DIR_WORK, 0700) < 0 && errno != EEXIST) {
		*ret_failed = TASK_DIR_WORK;
		return -errno;
	}
	for (size_t i = 0; i < 2; i++) {
		int fd = openat(dirfd, outputs[i],
				O_WRONLY | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW, 0600);
		if (fd < 0) {
			*ret_failed = outputs[i];
			return -errno;
		}
		close(fd);
	}
	return 0;
}

int supervisor_spawn(const char *exe, const char *task_dir, int dirfd, const char *boot_id,
		     bool work, struct supervisor_launch *ret_launch, char *errbuf, size_t errlen)
{
	char agent_pid[24];
	char *argv[] = {(char *) exe, (char *) task_dir, agent_pid, NULL};
	const char *failed = TASK_FILE_SUPERVISOR;
	int answer[2], go[2], r;
	pid_t pid, ignored;

	snprintf(agent_pid, sizeof(agent_pid), "%d", (int) getpid());
	if (pipe2(answer, O_CLOEXEC) < 0) {
		r = -errno;
		snprintf(errbuf, errlen, "cannot create a pipe: %s", strerror(-r));
		return r;
	}
	if (pipe2(go, O_CLOEXEC) < 0) {
		r = -errno;
		snprintf(errbuf, errlen, "cannot create a pipe: %s", strerror(-r));
		close(answer[0]);
		close(answer[1]);
		return r;
	}
	r = spawn_supervisor(exe, argv, answer[1], go[0], &pid);
	close(answer[1]);
	close(go[0]);
	if (r < 0) {
		snprintf(errbuf, errlen, "cannot start the supervisor %s: %s", exe, strerror(-r));
		close(answer[0]);
		close(go[1]);
		return r;
	}
	*ret_launch =
		(struct supervisor_launch){.pid = pid, .answer_fd = answer[0], .go_fd = go[1]};

	/* While it starts up. It touches the directory only after the go-ahead, so that it
	 * never adds to what the agent's fsync of the directory has to write. */
	if ((r = write_id(dirfd, pid, boot_id)) < 0 ||
	    (r = make_task_files(dirfd, work, &failed)) < 0) {
		supervisor_confirm(ret_launch, false, &ignored, errbuf, errlen);
		snprintf(errbuf, errlen, "cannot create %s/%s: %s", task_dir, failed, strerror(-r));
		return r;
	}
	return 0;
}

int supervisor_confirm(struct supervisor_launch *l, bool go, pid_t *ret_pid, char *errbuf,
		       size_t errlen)
{
	char answer[SUPERVISOR_ANSWER_MAX];
	pid_t pid = l->pid;
	int status, r;

	/* Without the go-ahead, the supervisor reads EOF, answers ERR and exits. A supervisor
	 * that has already exited makes the write fail with EPIPE (SIGPIPE is ignored): its
	 * answer says why. */
	if (go)
		(void) !write(l->go_fd, SUPERVISOR_GO, strlen(SUPERVISOR_GO));
	close(l->go_fd);
	r = answer_read(l->answer_fd, answer, sizeof(answer));
	close(l->answer_fd);
	*l = (struct supervisor_launch){.answer_fd = -1, .go_fd = -1};
	if (r == -ETIMEDOUT && !go) {
		/* Stuck before it could read EOF; it never ran the task, so this is safe. */
		kill(pid, SIGKILL);
	} else if (r == -ETIMEDOUT) {
		snprintf(errbuf, errlen, "the supervisor did not answer within %d s",
			 SUPERVISOR_START_TIMEOUT / 1000);
		*ret_pid = pid;
		return -ETIMEDOUT;
	}
	if (r >= 0 && strncmp(answer, "OK\n", 3) == 0) {
		*ret_pid = pid;
		return 0;
	}

	/* Every other answer means the supervisor is exiting. */
	supervisor_reap(pid, &status);
	answer[strcspn(answer, "\n")] = '\0';
	if (r > 0 && strncmp(answer, "ERR ", 4) == 0) {
		snprintf(errbuf, errlen, "%s", answer + 4);
		return -EIO;
	}
	if (WIFSIGNALED(status))
		snprintf(errbuf, errlen,
			 "the supervisor was killed by signal %d before it "
			 "answered",
			 WTERMSIG(status));
	else
		snprintf(errbuf, errlen,
			 "the supervisor exited with status %d before it "
			 "answered",
			 WEXITSTATUS(status));
	return -ECHILD;
}
