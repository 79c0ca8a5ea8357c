/* The per-task supervisor process, and the agent's side of starting and signalling it. */
#include "tools/agent/supervisor.h"

#include "backend/util.h"
#include "tools/agent/artifacts.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define SUPERVISOR_ANSWER_FD     3 /* the supervisor's answer to the agent: "OK" or "ERR ..." */
#define SUPERVISOR_GO_FD         4 /* the agent's go-ahead to the supervisor: "GO" */
#define SUPERVISOR_GO            "GO\n"
#define SUPERVISOR_START_TIMEOUT (10 * 1000) /* ms the agent waits for the answer */
#define SUPERVISOR_SPEC_MAX      (4 * 1024 * 1024)
#define SUPERVISOR_GROUP_POLL_US (100 * 1000) /* how often a dying group is checked */
#define SUPERVISOR_ANSWER_MAX    512

/* Why the task's first process could not exec, sent over a close-on-exec pipe; the
 * first record it sends, EXEC_STAGE_SESSION with error 0, says that its session (and so
 * its process group) exists. */
struct exec_failure {
	int stage; /* EXEC_STAGE_* */
	int error; /* errno; 0 for the session's record when setsid() worked */
};

enum {
	EXEC_STAGE_SESSION = 1, /* setsid() */
	EXEC_STAGE_INITGROUPS,  /* the identity change: nothing of the task ran */
	EXEC_STAGE_SETGID,
	EXEC_STAGE_SETUID,
	EXEC_STAGE_REVERSIBLE, /* setuid(0) still worked after the change */
	EXEC_STAGE_CHDIR,
	EXEC_STAGE_EXEC,
};

/* Why the supervisor stopped the task itself, if it did. */
enum stop_reason { STOP_NONE, STOP_TIMEOUT, STOP_CANCEL, STOP_TERMINATED };

/* The supervisor's state; it is single-threaded. */
struct sup {
	const char *dir; /* the task directory, borrowed from argv */
	int dirfd;
	int answer_fd; /* until the agent got its answer, then -1 */
	int go_fd;     /* until the agent gave its go-ahead, then -1 */
	int sig_fd;    /* signalfd of the blocked set */
	json_t *spec;
	const char *id;    /* borrowed from spec */
	char **argv;       /* the task's argv; strings borrowed from spec */
	char **sh_argv;    /* "/bin/sh" FILE ARGV[1..], for programs that are not binaries */
	char **envp;       /* owned strings */
	char **candidates; /* paths execve() tries in turn, owned */
	size_t n_candidates;
	char *cwd;           /* owned */
	bool work;           /* cwd is the task's own work/ */
	bool cwd_home;       /* cwd is the user's HOME by default: "/" when it does not exist */
	const char *user;    /* the user the task runs as (spec "user"), borrowed; NULL: ours */
	bool passwd;         /* the spec carries the user's passwd entry: its environment */
	bool switch_user;    /* the child takes the user's identity (we are root) */
	uid_t uid;           /* with passwd */
	gid_t gid;           /* with passwd */
	const char *home;    /* with passwd, borrowed from spec */
	const char *shell;   /* with passwd, borrowed from spec; never empty */
	bool not_run;        /* the child failed before the task's own code could run */
	bool outputs_failed; /* its outputs were refused: a task that exited 0 failed */
	uint64_t timeout_us; /* 0: none */
	int null_fd, out_fd, err_fd;
	char *error; /* the sentence result.json carries, if any; owned */
};

/* ---- small file helpers, shared with the agent ---- */

static int write_all(int fd, const void *data, size_t len)
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
	r = write_all(fd, data, len);
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

/* Writes the small file `name` in place, with no temporary file: for the files whose
 * readers cope with finding one empty or torn (see where it is used). 0 or -errno. */
static int write_in_place(int dirfd, const char *name, const void *data, size_t len)
{
	int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return -errno;
	int r = write_all(fd, data, len);
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

/* ---- agent side: starting a supervisor ---- */

/* The signals the supervisor handles through its signalfd; blocked from before its exec
 * on, so that an early SIGUSR1 cannot kill it. */
static void supervisor_sigset(sigset_t *set)
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

static void reap(pid_t pid, int *ret_status)
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
	return write_in_place(dirfd, TASK_FILE_SUPERVISOR, line, (size_t) len);
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
	reap(pid, &status);
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

/* ---- supervisor side ---- */

/* Sends the one-line answer to the agent, once. */
static void sup_answer(struct sup *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sup_answer(struct sup *s, const char *fmt, ...)
{
	char msg[SUPERVISOR_ANSWER_MAX];
	va_list ap;

	if (s->answer_fd < 0)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg) - 1, fmt, ap);
	va_end(ap);
	for (char *p = msg; *p; p++)
		if (*p == '\n')
			*p = ' ';
	strcat(msg, "\n");
	write_all(s->answer_fd, msg, strlen(msg));
	close(s->answer_fd);
	s->answer_fd = -1;
}

static void strv_free(char **v)
{
	for (size_t i = 0; v && v[i]; i++)
		free(v[i]);
	free(v);
}

static void sup_free(struct sup *s)
{
	free(s->argv);
	free(s->sh_argv);
	strv_free(s->envp);
	strv_free(s->candidates);
	free(s->cwd);
	free(s->error);
	json_decref(s->spec);
	if (s->dirfd >= 0)
		close(s->dirfd);
	if (s->go_fd >= 0)
		close(s->go_fd);
	if (s->sig_fd >= 0)
		close(s->sig_fd);
	if (s->null_fd >= 0)
		close(s->null_fd);
	if (s->out_fd >= 0)
		close(s->out_fd);
	if (s->err_fd >= 0)
		close(s->err_fd);
}

/* Gives every signal that sigaction() refuses to touch (glibc's internal ones, 32 and 33
 * on Linux, below SIGRTMIN) its default disposition back: glibc's posix_spawn(), which
 * started us, leaves them ignored, and an ignored signal would stay ignored in the task
 * across its exec. An all-zero kernel sigaction is SIG_DFL without flags on every
 * architecture. */
static void sup_reset_internal_signals(void)
{
	unsigned long dfl[16] = {0};

	for (int sig = 1; sig < SIGRTMIN; sig++) {
		if (sig == SIGKILL || sig == SIGSTOP ||
		    sigaction(sig, NULL, &(struct sigaction){0}) == 0)
			continue;
		syscall(SYS_rt_sigaction, sig, dfl, NULL, (size_t) (NSIG - 1) / 8);
	}
}

/* Waits for the agent's go-ahead, which it sends once the task's spec.json is durable; it
 * closes the pipe instead when the task must not run, and so does its death. */
static bool sup_wait_go(struct sup *s)
{
	const size_t want = strlen(SUPERVISOR_GO);
	char buf[8];
	size_t len = 0;

	while (len < want) {
		ssize_t n = read(s->go_fd, buf + len, want - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t) n;
	}
	close(s->go_fd);
	s->go_fd = -1;
	return len == want && memcmp(buf, SUPERVISOR_GO, want) == 0;
}

/* In place: the agent reads them once we have answered, and an agent started later that
 * finds one empty or torn takes the number as unknown, as it does a missing file. */
static int sup_write_number(struct sup *s, const char *name, long value)
{
	char line[32];
	int len = snprintf(line, sizeof(line), "%ld\n", value);
	return write_in_place(s->dirfd, name, line, (size_t) len);
}

/* "KEY=VALUE" as a new string. */
static char *env_entry(const char *key, const char *value)
{
	char *e;
	return asprintf(&e, "%s=%s", key, value) < 0 ? NULL : e;
}

bool supervisor_env_is_identity(const char *key)
{
	return strcmp(key, "HOME") == 0 || strcmp(key, "USER") == 0 ||
	       strcmp(key, "LOGNAME") == 0 || strcmp(key, "SHELL") == 0;
}

/* The minimal environment plus the spec's "env": PATH, HOME, CLUSTERFS_TASK_ID,
 * CLUSTERFS_NODE (the agent's name, from the spec's "node"), CLUSTERFS_KNOWLEDGE (the
 * node's replica of knowledge/, knowledge.h), and
 * USER, LOGNAME and SHELL too for a task with a passwd entry, whose HOME is the entry's.
 * The spec may override PATH, but neither CLUSTERFS_TASK_ID nor the identity. Sets
 * *ret_path to the PATH in effect (borrowed from envp). */
static int sup_build_env(struct sup *s, const char **ret_path)
{
	json_t *env = json_object_get(s->spec, "env");
	const struct passwd *pw = s->passwd ? NULL : getpwuid(geteuid());
	const char *home = s->passwd                           ? s->home
			   : pw && pw->pw_dir && pw->pw_dir[0] ? pw->pw_dir
							       : getenv("HOME");
	const char *node = json_string_value(json_object_get(s->spec, "node"));
	const char *knowledge = getenv("CLUSTERFS_KNOWLEDGE"); /* the agent's replica */
	size_t n = 0, max = 8 + json_object_size(env) + 1;
	const char *key;
	json_t *value;

	s->envp = calloc(max, sizeof(char *));
	if (!s->envp)
		return -ENOMEM;
	s->envp[n++] = env_entry("PATH", SUPERVISOR_DEFAULT_PATH);
	s->envp[n++] = env_entry("HOME", home ? home : "/");
	s->envp[n++] = env_entry("CLUSTERFS_TASK_ID", s->id);
	if (node)
		s->envp[n++] = env_entry("CLUSTERFS_NODE", node);
	if (knowledge)
		s->envp[n++] = env_entry("CLUSTERFS_KNOWLEDGE", knowledge);
	if (s->passwd) {
		s->envp[n++] = env_entry("USER", s->user);
		s->envp[n++] = env_entry("LOGNAME", s->user);
		s->envp[n++] = env_entry("SHELL", s->shell);
	}
	for (size_t i = 0; i < n; i++)
		if (!s->envp[i])
			return -ENOMEM;
	json_object_foreach (env, key, value) {
		const char *v = json_string_value(value);
		if (!v || !key[0] || strchr(key, '=') || strcmp(key, "CLUSTERFS_TASK_ID") == 0 ||
		    strcmp(key, "CLUSTERFS_NODE") == 0 || supervisor_env_is_identity(key))
			continue;
		char *e = env_entry(key, v);
		if (!e)
			return -ENOMEM;
		size_t slot = strcmp(key, "PATH") == 0 ? 0 : n++;
		free(s->envp[slot]);
		s->envp[slot] = e;
	}
	*ret_path = s->envp[0] + strlen("PATH=");
	return 0;
}

/* Reads who the task runs as from the spec: "user" and, when the task takes its identity
 * from a passwd entry (the request named a user), "passwd": {"uid", "gid", "home",
 * "shell"}, which the agent resolved when the task was dispatched. 0 or -EINVAL. */
static int sup_load_identity(struct sup *s)
{
	json_t *pw = json_object_get(s->spec, "passwd");
	s->user = json_string_value(json_object_get(s->spec, "user"));
	if (!pw)
		return 0;
	json_t *uid = json_object_get(pw, "uid"), *gid = json_object_get(pw, "gid");
	s->home = json_string_value(json_object_get(pw, "home"));
	s->shell = json_string_value(json_object_get(pw, "shell"));
	/* (uid_t) -1 passes: the kernel refuses it in the child, which says so. */
	if (!s->user || !json_is_integer(uid) || !json_is_integer(gid) || !s->home ||
	    json_integer_value(uid) < 0 || json_integer_value(uid) > (json_int_t) UINT32_MAX ||
	    json_integer_value(gid) < 0 || json_integer_value(gid) > (json_int_t) UINT32_MAX)
		return -EINVAL;
	if (!s->shell || !s->shell[0])
		s->shell = "/bin/sh";
	s->passwd = true;
	s->uid = (uid_t) json_integer_value(uid);
	s->gid = (gid_t) json_integer_value(gid);
	/* Root changes identity; anyone else runs only its own tasks (the agent sees to it). */
	s->switch_user = geteuid() == 0;
	return 0;
}

/* The paths to try, in the order execvp() would: the program itself when it names a
 * path, else each PATH entry (an empty one is the working directory). Built before the
 * fork so that the child only calls execve(). */
static int sup_build_candidates(struct sup *s, const char *path)
{
	const char *prog = s->argv[0];
	size_t n = 1;

	for (const char *p = path; *p; p++)
		n += *p == ':';
	s->candidates = calloc(n + 1, sizeof(char *));
	if (!s->candidates)
		return -ENOMEM;
	if (strchr(prog, '/')) {
		s->candidates[0] = strdup(prog);
		s->n_candidates = 1;
		return s->candidates[0] ? 0 : -ENOMEM;
	}
	for (const char *p = path;; p++) {
		size_t len = strcspn(p, ":");
		char *c;
		if (asprintf(&c, "%.*s/%s", (int) (len ? len : 1), len ? p : ".", prog) < 0)
			return -ENOMEM;
		s->candidates[s->n_candidates++] = c;
		p += len;
		if (!*p)
			break;
	}
	return 0;
}

/* Loads spec.json and prepares what the child needs but its files, without touching the
 * task directory. Returns 0 or -errno with a sentence in errbuf. */
static int sup_prepare(struct sup *s, char *errbuf, size_t errlen)
{
	_cleanup_free_ char *path = NULL, *text = NULL;
	json_error_t jerr;
	const char *exec_path;
	size_t len;
	int r;

	if (asprintf(&path, "%s/%s", s->dir, TASK_FILE_SPEC) < 0)
		return -ENOMEM;
	r = file_read_all(path, SUPERVISOR_SPEC_MAX, &text, &len);
	if (r < 0) {
		snprintf(errbuf, errlen, "cannot read %s: %s", path, strerror(-r));
		return r;
	}
	s->spec = json_loadb(text, len, 0, &jerr);
	json_t *cmd = json_object_get(s->spec, "cmd");
	s->id = json_string_value(json_object_get(s->spec, "id"));
	if (!s->id || !(json_is_string(cmd) || (json_is_array(cmd) && json_array_size(cmd)))) {
		snprintf(errbuf, errlen, "%s is not a valid task spec", path);
		return -EINVAL;
	}

	size_t argc = json_is_string(cmd) ? 3 : json_array_size(cmd);
	s->argv = calloc(argc + 1, sizeof(char *));
	s->sh_argv = calloc(argc + 2, sizeof(char *));
	if (!s->argv || !s->sh_argv)
		return -ENOMEM;
	if (json_is_string(cmd)) {
		s->argv[0] = (char *) "/bin/sh";
		s->argv[1] = (char *) "-c";
		s->argv[2] = (char *) json_string_value(cmd);
	} else {
		for (size_t i = 0; i < argc; i++) {
			s->argv[i] = (char *) json_string_value(json_array_get(cmd, i));
			if (!s->argv[i] || !s->argv[0][0]) {
				snprintf(errbuf, errlen, "%s is not a valid task spec", path);
				return -EINVAL;
			}
		}
	}
	s->sh_argv[0] = (char *) "/bin/sh";
	for (size_t i = 1; i < argc; i++)
		s->sh_argv[i + 1] = s->argv[i];

	if (sup_load_identity(s) < 0) {
		snprintf(errbuf, errlen, "%s has an invalid \"passwd\" entry", path);
		return -EINVAL;
	}
	if ((r = sup_build_env(s, &exec_path)) < 0 ||
	    (r = sup_build_candidates(s, exec_path)) < 0) {
		snprintf(errbuf, errlen, "out of memory");
		return r;
	}

	json_t *timeout = json_object_get(s->spec, "timeout_s");
	if (json_is_number(timeout) && json_number_value(timeout) > 0)
		s->timeout_us = (uint64_t) (json_number_value(timeout) * 1e6);

	/* By default the task's own work/, which a user other than ours cannot reach in
	 * our 0700 state directory: such a user starts in its HOME. */
	const char *cwd = json_string_value(json_object_get(s->spec, "cwd"));
	s->cwd_home = !cwd && s->passwd && s->uid != geteuid();
	if (cwd)
		s->cwd = strdup(cwd);
	else if (s->cwd_home)
		s->cwd = strdup(s->home[0] ? s->home : "/");
	else if (asprintf(&s->cwd, "%s/%s", s->dir, TASK_DIR_WORK) < 0)
		s->cwd = NULL;
	if (!s->cwd)
		return -ENOMEM;
	s->work = !cwd && !s->cwd_home;
	return 0;
}

/* Opens the task's output files and makes sure of its working directory, which the agent
 * created; after the go-ahead. Returns 0 or -errno with a sentence in errbuf. */
static int sup_open_files(struct sup *s, char *errbuf, size_t errlen)
{
	int r;

	if (s->work && mkdirat(s->dirfd, TASK_DIR_WORK, 0700) < 0 && errno != EEXIST) {
		r = -errno;
		snprintf(errbuf, errlen, "cannot create %s/%s: %s", s->dir, TASK_DIR_WORK,
			 strerror(-r));
		return r;
	}
	const int flags = O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW;
	s->out_fd = openat(s->dirfd, TASK_FILE_STDOUT, flags, 0600);
	s->err_fd = openat(s->dirfd, TASK_FILE_STDERR, flags, 0600);
	s->null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (s->out_fd < 0 || s->err_fd < 0 || s->null_fd < 0) {
		r = -errno;
		snprintf(errbuf, errlen, "cannot open the task's output files in %s: %s", s->dir,
			 strerror(-r));
		return r;
	}
	return 0;
}

/* Writes an exec_failure to the pipe and exits 127. Async-signal-safe. */
static void __attribute__((noreturn)) child_fail(int fd, int stage, int err)
{
	struct exec_failure f = {.stage = stage, .error = err};
	(void) !write(fd, &f, sizeof(f));
	_exit(127);
}

/* Takes the task's user's identity, for good: its groups, its group, its uid, in that
 * order (each needs the privilege the next gives up), then checks that root cannot be
 * had back. Returns or fails the child. */
static void child_become_user(const struct sup *s, int fail_fd)
{
	if (initgroups(s->user, s->gid) < 0)
		child_fail(fail_fd, EXEC_STAGE_INITGROUPS, errno);
	if (setgid(s->gid) < 0)
		child_fail(fail_fd, EXEC_STAGE_SETGID, errno);
	if (setuid(s->uid) < 0)
		child_fail(fail_fd, EXEC_STAGE_SETUID, errno);
	if (getuid() != s->uid || geteuid() != s->uid || getgid() != s->gid || getegid() != s->gid)
		child_fail(fail_fd, EXEC_STAGE_REVERSIBLE, EPERM);
	if (s->uid != 0 && (setuid(0) == 0 || seteuid(0) == 0))
		child_fail(fail_fd, EXEC_STAGE_REVERSIBLE, EPERM);
}

/* The task's first process, between fork and exec. The supervisor is single-threaded, so
 * the child may call what it likes; it keeps to async-signal-safe calls but for
 * initgroups(), which reads the group database, as it must for the user's groups. The
 * supervisor's descriptors 0..2 are open (on /dev/null), so its others are all > 2 and
 * the dup2s below cannot clobber one another. */
static void __attribute__((noreturn)) sup_child(struct sup *s, int fail_fd)
{
	struct sigaction dfl = {.sa_handler = SIG_DFL};
	struct exec_failure session = {.stage = EXEC_STAGE_SESSION};
	sigset_t none;
	bool denied = false;

	/* A session of its own, and so a process group too (pgid = pid), apart from the
	 * supervisor's: the supervisor waits for this word before it records the pgid. */
	if (setsid() < 0)
		child_fail(fail_fd, EXEC_STAGE_SESSION, errno);
	(void) !write(fail_fd, &session, sizeof(session));
	/* Ignored signals survive exec: give the task every default back. */
	for (int sig = 1; sig < NSIG; sig++)
		sigaction(sig, &dfl, NULL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);

	if (dup2(s->null_fd, 0) < 0 || dup2(s->out_fd, 1) < 0 || dup2(s->err_fd, 2) < 0)
		child_fail(fail_fd, EXEC_STAGE_EXEC, errno);
	/* Close-on-exec for everything else, which keeps fail_fd usable until the exec. */
	close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);

	if (s->switch_user)
		child_become_user(s, fail_fd);
	if (s->passwd)
		umask(022);
	/* As the user: it cannot go where it may not. A HOME that does not exist is "/". */
	if (chdir(s->cwd) < 0 &&
	    !(s->cwd_home && (errno == ENOENT || errno == ENOTDIR) && chdir("/") == 0))
		child_fail(fail_fd, EXEC_STAGE_CHDIR, errno);
	for (size_t i = 0; i < s->n_candidates; i++) {
		execve(s->candidates[i], s->argv, s->envp);
		switch (errno) {
		case ENOEXEC:
			/* Not a binary: a script without "#!", run by the shell as execvp does. */
			s->sh_argv[1] = s->candidates[i];
			execve(s->sh_argv[0], s->sh_argv, s->envp);
			child_fail(fail_fd, EXEC_STAGE_EXEC, errno);
		case EACCES: denied = true; break;
		case ENOENT:
		case ENOTDIR:
		case ESTALE:
		case ENODEV:
		case ETIMEDOUT: break;
		default: child_fail(fail_fd, EXEC_STAGE_EXEC, errno);
		}
	}
	child_fail(fail_fd, EXEC_STAGE_EXEC, denied ? EACCES : ENOENT);
}

/* Turns the child's exec failure into the error sentence and a line in its stderr. */
static void sup_note_exec_failure(struct sup *s, const struct exec_failure *f)
{
	char *msg = NULL, *line = NULL;

	switch (f->stage) {
	case EXEC_STAGE_SESSION:
		(void) !asprintf(&msg, "cannot start a session for the task: %s",
				 strerror(f->error));
		break;
	case EXEC_STAGE_INITGROUPS:
		(void) !asprintf(&msg, "cannot run the task as %s: initgroups: %s", s->user,
				 strerror(f->error));
		break;
	case EXEC_STAGE_SETGID:
		(void) !asprintf(&msg, "cannot run the task as %s: setgid(%u): %s", s->user,
				 (unsigned) s->gid, strerror(f->error));
		break;
	case EXEC_STAGE_SETUID:
		(void) !asprintf(&msg, "cannot run the task as %s: setuid(%u): %s", s->user,
				 (unsigned) s->uid, strerror(f->error));
		break;
	case EXEC_STAGE_REVERSIBLE:
		(void) !asprintf(&msg,
				 "cannot run the task as %s: the change of identity did not "
				 "hold",
				 s->user);
		break;
	case EXEC_STAGE_CHDIR:
		(void) !asprintf(&msg, "cannot change to directory %s: %s", s->cwd,
				 strerror(f->error));
		break;
	default: (void) !asprintf(&msg, "cannot run %s: %s", s->argv[0], strerror(f->error));
	}
	s->not_run = s->not_run || f->stage < EXEC_STAGE_CHDIR;
	if (!msg)
		return;
	if (asprintf(&line, "clusterfs-agent: %s\n", msg) >= 0) {
		write_all(s->err_fd, line, strlen(line));
		free(line);
	}
	free(s->error);
	s->error = msg;
}

/* Waits for the child's first record: its session exists, so that the pgid we record
 * names a process group that can be signalled. A child that failed instead (or died)
 * has its reason noted. */
static void sup_wait_session(struct sup *s, int fail_fd)
{
	struct exec_failure f;
	ssize_t n;

	while ((n = read(fail_fd, &f, sizeof(f))) < 0 && errno == EINTR)
		;
	if (n == (ssize_t) sizeof(f) && !(f.stage == EXEC_STAGE_SESSION && f.error == 0))
		sup_note_exec_failure(s, &f);
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

/* Runs the task to its end: returns its wait status and why we stopped it, if we did. */
static int sup_run(struct sup *s, pid_t child, int fail_fd, enum stop_reason *ret_reason)
{
	const uint64_t never = UINT64_MAX;
	uint64_t start = clock_now_us();
	uint64_t timeout_at = s->timeout_us ? start + s->timeout_us : never;
	uint64_t kill_at = never;
	enum stop_reason reason = STOP_NONE;
	bool leader_done = false, killed = false;
	int status = 0;

	for (;;) {
		/* The marker before the reap: a cancel that raced with a normal exit counts
		 * only if the agent asked before the task ended. */
		if (reason == STOP_NONE && !leader_done &&
		    faccessat(s->dirfd, TASK_FILE_CANCEL, F_OK, 0) == 0) {
			reason = STOP_CANCEL; /* the agent sent SIGTERM itself */
			kill_at = clock_now_us() + SUPERVISOR_KILL_GRACE_US;
		}
		/* We are a subreaper: orphans of the task are ours to reap too. */
		for (;;) {
			int st;
			pid_t w = waitpid(-1, &st, WNOHANG);
			if (w <= 0)
				break;
			if (w == child) {
				leader_done = true;
				status = st;
			}
		}

		uint64_t now = clock_now_us();
		if (reason == STOP_NONE && !leader_done && now >= timeout_at) {
			reason = STOP_TIMEOUT;
			kill(-child, SIGTERM);
			kill_at = now + SUPERVISOR_KILL_GRACE_US;
		}
		if (now >= kill_at) {
			kill(-child, SIGKILL);
			killed = true;
			kill_at = never;
		}
		if (leader_done) {
			if (reason == STOP_NONE || killed)
				break;
			/* Stopped by us: wait for the rest of the group too, up to the grace. */
			if (kill(-child, 0) < 0 && errno == ESRCH)
				break;
		}

		uint64_t next = min_u64(reason == STOP_NONE ? timeout_at : never, kill_at);
		if (leader_done)
			next = min_u64(next, now + SUPERVISOR_GROUP_POLL_US);
		int wait_ms =
			next == never ? -1 : (int) min_u64((next - now + 999) / 1000, INT_MAX);
		struct pollfd pfd[2] = {{.fd = s->sig_fd, .events = POLLIN},
					{.fd = fail_fd, .events = POLLIN}};
		if (poll(pfd, fail_fd >= 0 ? 2 : 1, wait_ms) < 0) {
			if (errno != EINTR) /* ENOMEM: try again shortly */
				nanosleep(&(struct timespec){0, 100 * 1000 * 1000}, NULL);
			continue;
		}
		if (pfd[0].revents & POLLIN) {
			struct signalfd_siginfo si;
			while (read(s->sig_fd, &si, sizeof(si)) == (ssize_t) sizeof(si)) {
				if ((si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) &&
				    reason == STOP_NONE && !leader_done) {
					reason = STOP_TERMINATED;
					kill(-child, SIGTERM);
					kill_at = clock_now_us() + SUPERVISOR_KILL_GRACE_US;
				}
				/* SIGCHLD and SIGUSR1 only wake us; SIGHUP is ignored. */
			}
		}
		if (fail_fd >= 0 && pfd[1].revents) {
			struct exec_failure f;
			if (read(fail_fd, &f, sizeof(f)) == (ssize_t) sizeof(f))
				sup_note_exec_failure(s, &f);
			close(fail_fd); /* EOF: the exec succeeded */
			fail_fd = -1;
		}
	}
	/* A failed exec wrote its reason before exiting; it is in the pipe by now. */
	if (fail_fd >= 0) {
		struct exec_failure f;
		if (read(fail_fd, &f, sizeof(f)) == (ssize_t) sizeof(f))
			sup_note_exec_failure(s, &f);
		close(fail_fd);
	}
	if (reason == STOP_TERMINATED && !s->error)
		s->error = strdup("the task's supervisor was told to stop");
	*ret_reason = reason;
	return status;
}

/* The task's staged inputs (STATE_DIR/staging/ID, beside STATE_DIR/tasks/ID) go into its
 * working directory, given to its user, before it starts. */
static int sup_stage_inputs(struct sup *s, char *errbuf, size_t errlen)
{
	if (!json_array_size(json_object_get(s->spec, "inputs")))
		return 0;
	_cleanup_free_ char *staging = NULL;
	if (asprintf(&staging, "%s/../../%s/%s", s->dir, ARTIFACTS_STAGING, s->id) < 0)
		return -ENOMEM;
	bool give = s->passwd && s->uid != geteuid();
	return artifacts_stage_into(staging, s->cwd, s->spec, give ? s->uid : (uid_t) -1, s->gid,
				    errbuf, errlen);
}

/* After the task: its outputs into files/ (artifacts.h). A refusal fails the task with the
 * reason, also in its stderr. */
static void sup_collect_outputs(struct sup *s)
{
	char why[512];
	if (!json_object_get(s->spec, "outputs") || s->not_run)
		return;
	bool owned = s->passwd && s->uid != geteuid();
	if (artifacts_collect(s->dirfd, s->cwd, s->spec, owned ? s->uid : (uid_t) -1, why,
			      sizeof(why)) == 0)
		return;
	s->outputs_failed = true;
	if (!s->error)
		s->error = strdup(why);
	dprintf(s->err_fd, "clusterfs: %s\n", why);
}

static int sup_write_result(struct sup *s, int status, enum stop_reason reason)
{
	static const char *const stopped[] = {
		[STOP_TIMEOUT] = "timed_out",
		[STOP_CANCEL] = "cancelled",
	};
	int exit_code, sig = 0;
	const char *state;

	if (WIFSIGNALED(status)) {
		sig = WTERMSIG(status);
		exit_code = 128 + sig;
	} else {
		exit_code = WEXITSTATUS(status);
	}
	if (reason == STOP_TIMEOUT || reason == STOP_CANCEL)
		state = stopped[reason];
	else
		state = exit_code == 0 && !s->outputs_failed ? "succeeded" : "failed";

	/* A child that could not become the task's user ran nothing of it: no exit code. */
	if (s->not_run && reason == STOP_NONE)
		state = "failed";
	json_t *doc = json_pack("{s:s, s:o, s:o, s:f}", "state", state, "exit_code",
				s->not_run ? json_null() : json_integer(exit_code), "signal",
				sig && !s->not_run ? json_integer(sig) : json_null(), "finished_at",
				clock_wall_s());
	if (doc && s->error)
		json_object_set_new(doc, "error", json_string(s->error));
	char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(17)) : NULL;
	json_decref(doc);
	if (!text)
		return -ENOMEM;
	int r = supervisor_write_file(s->dirfd, TASK_FILE_RESULT, text, strlen(text), true);
	free(text);
	return r;
}

int supervisor_main(int argc, char **argv)
{
	struct sup s = {.dirfd = -1,
			.answer_fd = -1,
			.go_fd = -1,
			.sig_fd = -1,
			.null_fd = -1,
			.out_fd = -1,
			.err_fd = -1};
	char errbuf[SUPERVISOR_ANSWER_MAX - 8] = "";
	enum stop_reason reason;
	int fail[2], status, r;
	sigset_t mask;
	pid_t child;

	/* First of all, before an agent could signal us: the signals come by signalfd. */
	supervisor_sigset(&mask);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);
	sup_reset_internal_signals();
	if (argc != 3 || fcntl(SUPERVISOR_ANSWER_FD, F_SETFD, FD_CLOEXEC) < 0 ||
	    fcntl(SUPERVISOR_GO_FD, F_SETFD, FD_CLOEXEC) < 0) {
		fprintf(stderr, "%s: this program is internal to clusterfs-agent, which runs it\n",
			SUPERVISOR_PROGRAM);
		return 2;
	}
	s.dir = argv[1];
	s.answer_fd = SUPERVISOR_ANSWER_FD;
	s.go_fd = SUPERVISOR_GO_FD;
	pid_t agent = (pid_t) atoi(argv[2]);

	s.sig_fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	s.dirfd = open(s.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s.sig_fd < 0 || s.dirfd < 0) {
		sup_answer(&s, "ERR cannot open %s: %s", s.dir, strerror(errno));
		goto err_free;
	}
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	if ((r = sup_prepare(&s, errbuf, sizeof(errbuf))) < 0) {
		sup_answer(&s, "ERR %s", r == -ENOMEM && !errbuf[0] ? "out of memory" : errbuf);
		goto err_free;
	}
	/* Meanwhile the agent has created our "supervisor" file and the task's files, and
	 * made its id durable. */
	if (!sup_wait_go(&s)) {
		sup_answer(&s, "ERR the agent did not let the task start");
		goto err_free;
	}
	/* Run the task only if our agent still lives: the go-ahead may have waited in the
	 * pipe since before it died, without answering 201, and an agent started since may
	 * already have judged the task. */
	if (getppid() != agent) {
		sup_answer(&s, "ERR the agent exited before the task was started");
		goto err_free;
	}
	if ((r = sup_open_files(&s, errbuf, sizeof(errbuf))) < 0 ||
	    (r = sup_stage_inputs(&s, errbuf, sizeof(errbuf))) < 0) {
		sup_answer(&s, "ERR %s", errbuf);
		goto err_free;
	}

	if (pipe2(fail, O_CLOEXEC) < 0) {
		sup_answer(&s, "ERR cannot create a pipe: %s", strerror(errno));
		goto err_free;
	}
	child = fork();
	if (child < 0) {
		sup_answer(&s, "ERR cannot fork the task: %s", strerror(errno));
		close(fail[0]);
		close(fail[1]);
		goto err_free;
	}
	if (child == 0)
		sup_child(&s, fail[1]);
	close(fail[1]);
	sup_wait_session(&s, fail[0]);

	if ((r = sup_write_number(&s, TASK_FILE_PID, child)) < 0 ||
	    (r = sup_write_number(&s, TASK_FILE_PGID, child)) < 0) {
		kill(-child, SIGKILL);
		reap(child, &status);
		sup_answer(&s, "ERR cannot record the task's pid in %s: %s", s.dir, strerror(-r));
		close(fail[0]);
		goto err_free;
	}
	sup_answer(&s, "OK");

	status = sup_run(&s, child, fail[0], &reason);
	sup_collect_outputs(&s);
	r = sup_write_result(&s, status, reason);
	sup_free(&s);
	return r < 0 ? 1 : 0;

err_free:
	sup_free(&s);
	return 1;
}
