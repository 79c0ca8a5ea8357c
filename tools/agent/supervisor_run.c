/* The per-task supervisor process (supervisor_main): it prepares the task from its
 * spec.json, waits for the agent's go-ahead, forks the task into a session of its own as
 * its user, enforces its timeout and cancel, and records its result (supervisor.h). */
#include "tools/agent/supervisor.h"
#include "tools/agent/supervisor_internal.h"

#include "backend/util.h"
#include "tools/agent/artifacts.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <jansson.h>
#include <limits.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
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

#define SUPERVISOR_SPEC_MAX      (4 * 1024 * 1024)
#define SUPERVISOR_GROUP_POLL_US (100 * 1000) /* how often a dying group is checked */

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
	supervisor_write_all(s->answer_fd, msg, strlen(msg));
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
	return supervisor_write_in_place(s->dirfd, name, line, (size_t) len);
}

/* "KEY=VALUE" as a new string. */
static char *env_entry(const char *key, const char *value)
{
	return xasprintf("%s=%s", key, value);
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
static void sup_build_env(struct sup *s, const char **ret_path)
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

	s->envp = xcalloc(max, sizeof(char *));
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
	json_object_foreach (env, key, value) {
		const char *v = json_string_value(value);
		if (!v || !key[0] || strchr(key, '=') || strcmp(key, "CLUSTERFS_TASK_ID") == 0 ||
		    strcmp(key, "CLUSTERFS_NODE") == 0 || supervisor_env_is_identity(key))
			continue;
		char *e = env_entry(key, v);
		size_t slot = strcmp(key, "PATH") == 0 ? 0 : n++;
		free(s->envp[slot]);
		s->envp[slot] = e;
	}
	*ret_path = s->envp[0] + strlen("PATH=");
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
static void sup_build_candidates(struct sup *s, const char *path)
{
	const char *prog = s->argv[0];
	size_t n = 1;

	for (const char *p = path; *p; p++)
		n += *p == ':';
	s->candidates = xcalloc(n + 1, sizeof(char *));
	if (strchr(prog, '/')) {
		s->candidates[0] = xstrdup(prog);
		s->n_candidates = 1;
		return;
	}
	for (const char *p = path;; p++) {
		size_t len = strcspn(p, ":");
		s->candidates[s->n_candidates++] =
			xasprintf("%.*s/%s", (int) (len ? len : 1), len ? p : ".", prog);
		p += len;
		if (!*p)
			break;
	}
}

/* Loads spec.json and prepares what the child needs but its files, without touching the
 * task directory. Returns 0 or -errno with a sentence in errbuf. */
static int sup_prepare(struct sup *s, char *errbuf, size_t errlen)
{
	_cleanup_free_ char *path = xasprintf("%s/%s", s->dir, TASK_FILE_SPEC), *text = NULL;
	json_error_t jerr;
	const char *exec_path;
	size_t len;
	int r;

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
	s->argv = xcalloc(argc + 1, sizeof(char *));
	s->sh_argv = xcalloc(argc + 2, sizeof(char *));
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
	sup_build_env(s, &exec_path);
	sup_build_candidates(s, exec_path);

	json_t *timeout = json_object_get(s->spec, "timeout_s");
	if (json_is_number(timeout) && json_number_value(timeout) > 0)
		s->timeout_us = (uint64_t) (json_number_value(timeout) * 1e6);

	/* By default the task's own work/, which a user other than ours cannot reach in
	 * our 0700 state directory: such a user starts in its HOME. */
	const char *cwd = json_string_value(json_object_get(s->spec, "cwd"));
	s->cwd_home = !cwd && s->passwd && s->uid != geteuid();
	if (cwd)
		s->cwd = xstrdup(cwd);
	else if (s->cwd_home)
		s->cwd = xstrdup(s->home[0] ? s->home : "/");
	else
		s->cwd = xasprintf("%s/%s", s->dir, TASK_DIR_WORK);
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
		msg = xasprintf("cannot start a session for the task: %s", strerror(f->error));
		break;
	case EXEC_STAGE_INITGROUPS:
		msg = xasprintf("cannot run the task as %s: initgroups: %s", s->user,
				strerror(f->error));
		break;
	case EXEC_STAGE_SETGID:
		msg = xasprintf("cannot run the task as %s: setgid(%u): %s", s->user,
				(unsigned) s->gid, strerror(f->error));
		break;
	case EXEC_STAGE_SETUID:
		msg = xasprintf("cannot run the task as %s: setuid(%u): %s", s->user,
				(unsigned) s->uid, strerror(f->error));
		break;
	case EXEC_STAGE_REVERSIBLE:
		msg = xasprintf("cannot run the task as %s: the change of identity did not "
				"hold",
				s->user);
		break;
	case EXEC_STAGE_CHDIR:
		msg = xasprintf("cannot change to directory %s: %s", s->cwd, strerror(f->error));
		break;
	default: msg = xasprintf("cannot run %s: %s", s->argv[0], strerror(f->error));
	}
	s->not_run = s->not_run || f->stage < EXEC_STAGE_CHDIR;
	line = xasprintf("clusterfs-agent: %s\n", msg);
	supervisor_write_all(s->err_fd, line, strlen(line));
	free(line);
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
		s->error = xstrdup("the task's supervisor was told to stop");
	*ret_reason = reason;
	return status;
}

/* The task's staged inputs (STATE_DIR/staging/ID, beside STATE_DIR/tasks/ID) go into its
 * working directory, given to its user, before it starts. */
static int sup_stage_inputs(struct sup *s, char *errbuf, size_t errlen)
{
	if (!json_array_size(json_object_get(s->spec, "inputs")))
		return 0;
	_cleanup_free_ char *staging =
		xasprintf("%s/../../%s/%s", s->dir, ARTIFACTS_STAGING, s->id);
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
		s->error = xstrdup(why);
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
	json_set_alloc_funcs(xmalloc, free); /* jansson too (DESIGN §2, "Out of memory") */
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
		sup_answer(&s, "ERR %s", errbuf);
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
		supervisor_reap(child, &status);
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
