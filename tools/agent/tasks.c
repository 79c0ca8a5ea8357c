/* The agent's task registry and task API. */
#include "tools/agent/tasks.h"
#include "tools/agent/artifacts.h"

#include "backend/util.h"
#include "tools/agent/spares.h"
#include "tools/agent/supervisor.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

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

static const char *const task_state_names[] = {
	[TASK_RUNNING] = "running",     [TASK_SUCCEEDED] = "succeeded", [TASK_FAILED] = "failed",
	[TASK_TIMED_OUT] = "timed_out", [TASK_CANCELLED] = "cancelled", [TASK_LOST] = "lost",
};

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

/* Who a task is to run as, resolved when it is dispatched. */
struct task_identity {
	char user[TASKS_USER_MAX + 1];
	long long uid;   /* -1: no such user */
	bool passwd;     /* the request named the user: the task gets its passwd entry */
	gid_t gid;       /* with passwd */
	char *home;      /* with passwd; owned */
	char *shell;     /* with passwd; owned */
	char error[256]; /* non-empty: the task cannot run at all, and this says why */
};

static const char *const stream_names[] = {TASK_FILE_STDOUT, TASK_FILE_STDERR};

/* ---- ids and files ---- */

/* [A-Za-z0-9._@:-]{1,200}, and not "." or "..", which are not directories of their own. */
static bool task_id_is_valid(const char *id)
{
	size_t len = strlen(id);

	if (len == 0 || len > TASKS_ID_MAX || strcmp(id, ".") == 0 || strcmp(id, "..") == 0)
		return false;
	for (const char *p = id; *p; p++) {
		char c = *p;
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      strchr("._@:-", c)))
			return false;
	}
	return true;
}

/* [A-Za-z0-9._-]{1,64}, not starting with '-': a user name that no option parser or
 * path can mistake for something else. */
static bool task_user_is_valid(const char *name)
{
	size_t len = strlen(name);

	if (len == 0 || len > TASKS_USER_MAX || name[0] == '-')
		return false;
	for (const char *p = name; *p; p++) {
		char c = *p;
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      strchr("._-", c)))
			return false;
	}
	return true;
}

/* "ID/NAME", relative to tasks->dirfd. */
static void task_path(const struct task *k, const char *name, char out[PATH_MAX])
{
	snprintf(out, PATH_MAX, "%s/%s", k->id, name);
}

/* Reads a small file of the task into a new string. 0 or -errno. */
static int task_read_file(struct tasks *t, const char *id, const char *name, char **ret_data,
			  size_t *ret_len)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/%s/%s", t->dir, id, name);
	return file_read_all(path, TASKS_FILE_MAX, ret_data, ret_len);
}

/* A number file of the task ("pid", "pgid"); 0 when missing or malformed. */
static pid_t task_read_pid(struct tasks *t, const char *id, const char *name)
{
	_cleanup_free_ char *text = NULL;
	char *end;

	if (task_read_file(t, id, name, &text, NULL) < 0)
		return 0;
	long v = strtol(text, &end, 10);
	return end != text && v > 0 && v <= INT_MAX ? (pid_t) v : 0;
}

static int64_t task_stream_size(struct tasks *t, const struct task *k, int s)
{
	char path[PATH_MAX];
	struct stat st;

	task_path(k, stream_names[s], path);
	return fstatat(t->dirfd, path, &st, AT_SYMLINK_NOFOLLOW) == 0 ? (int64_t) st.st_size : 0;
}

/* ---- states ---- */

/* A task started or ended: long polls learn it. Lock held. */
static void task_changed_locked(struct tasks *t, struct task *k)
{
	k->changed = ++t->index;
	if (t->notify)
		t->notify(t->notify_arg);
}

static void task_set_final_locked(struct tasks *t, struct task *k, enum task_state state)
{
	k->state = state;
	for (int s = 0; s < 2; s++)
		k->size[s] = task_stream_size(t, k, s);
	task_changed_locked(t, k);
}

static void task_set_lost_locked(struct tasks *t, struct task *k, const char *why)
{
	free(k->error);
	k->error = strdup(why);
	k->finished_at = 0;
	task_set_final_locked(t, k, TASK_LOST);
	log_warn("task %s is lost: %s", k->id, why);
}

/* Takes the outcome from result.json. 0 when the task is final now (a result that cannot
 * be read makes it lost), -ENOENT when there is no result yet. */
static int task_load_result_locked(struct tasks *t, struct task *k)
{
	_cleanup_free_ char *text = NULL;
	size_t len;
	int r = task_read_file(t, k->id, TASK_FILE_RESULT, &text, &len);

	if (r == -ENOENT)
		return r;
	json_t *doc = r == 0 ? json_loadb(text, len, 0, NULL) : NULL;
	const char *state = json_string_value(json_object_get(doc, "state"));
	json_t *exit_code = json_object_get(doc, "exit_code");
	json_t *sig = json_object_get(doc, "signal");
	json_t *finished = json_object_get(doc, "finished_at");
	const char *error = json_string_value(json_object_get(doc, "error"));
	enum task_state st = TASK_RUNNING;

	for (size_t i = TASK_SUCCEEDED; state && i < TASK_LOST; i++)
		if (strcmp(state, task_state_names[i]) == 0)
			st = (enum task_state) i;
	/* exit_code null: a task that could not run at all (its user). */
	if (st == TASK_RUNNING || !(json_is_integer(exit_code) || json_is_null(exit_code)) ||
	    !json_is_number(finished)) {
		char why[128];
		snprintf(why, sizeof(why), "its %s cannot be read%s%s", TASK_FILE_RESULT,
			 r < 0 ? ": " : "", r < 0 ? strerror(-r) : "");
		json_decref(doc);
		task_set_lost_locked(t, k, why);
		return 0;
	}
	k->exit_code = json_is_integer(exit_code) ? (int) json_integer_value(exit_code) : -1;
	k->signal = json_is_integer(sig) ? (int) json_integer_value(sig) : 0;
	k->finished_at = json_number_value(finished);
	free(k->error);
	k->error = error ? strdup(error) : NULL;
	json_decref(doc);
	task_set_final_locked(t, k, st);
	return 0;
}

/* Brings a running task up to date: finished once result.json exists, lost once its
 * supervisor is gone without one. */
static void task_refresh_locked(struct tasks *t, struct task *k)
{
	if (k->state != TASK_RUNNING || task_load_result_locked(t, k) == 0)
		return;
	if (k->child)
		return; /* our child: tasks_reap() will tell when it exits */
	if (!k->sup_gone && supervisor_is_alive(&k->sup, t->boot_id))
		return;
	k->sup_gone = true;
	/* It may have written the result just before it exited. */
	if (task_load_result_locked(t, k) == 0)
		return;
	task_set_lost_locked(t, k,
			     k->sup.pid ? "its supervisor ended without recording a result"
					: "it has neither a supervisor nor a result");
}

static size_t tasks_count_running_locked(struct tasks *t)
{
	size_t n = 0;
	for (size_t i = 0; i < t->n; i++) {
		task_refresh_locked(t, t->v[i]);
		n += t->v[i]->state == TASK_RUNNING;
	}
	return n;
}

static struct task *tasks_find_locked(struct tasks *t, const char *id)
{
	for (size_t i = 0; i < t->n; i++)
		if (strcmp(t->v[i]->id, id) == 0)
			return t->v[i];
	return NULL;
}

static void task_free(struct task *k)
{
	if (!k)
		return;
	free(k->error);
	free(k->user);
	free(k);
}

/* Adds k to the registry, which takes it over. */
static int tasks_insert_locked(struct tasks *t, struct task *k)
{
	if (t->n == t->cap) {
		size_t cap = t->cap ? 2 * t->cap : 64;
		struct task **v = realloc(t->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		t->v = v;
		t->cap = cap;
	}
	t->v[t->n++] = k;
	task_changed_locked(t, k);
	return 0;
}

/* A new task, running until task_refresh_locked() learns otherwise, or NULL. */
static struct task *task_new(const char *id, double started_at)
{
	size_t len = strlen(id);
	struct task *k = len <= TASKS_ID_MAX ? calloc(1, sizeof(*k)) : NULL;
	if (!k)
		return NULL;
	memcpy(k->id, id, len + 1);
	k->state = TASK_RUNNING;
	k->exit_code = -1;
	k->uid = -1;
	k->started_at = started_at;
	return k;
}

/* Reads who runs the task: its pid files and its supervisor's identity. Missing files
 * leave the fields unknown. */
static void task_load_pids(struct tasks *t, struct task *k)
{
	k->pid = task_read_pid(t, k->id, TASK_FILE_PID);
	k->pgid = task_read_pid(t, k->id, TASK_FILE_PGID);
	int dfd = openat(t->dirfd, k->id, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (dfd < 0 || supervisor_read_id(dfd, &k->sup) < 0)
		memset(&k->sup, 0, sizeof(k->sup));
	if (dfd >= 0)
		close(dfd);
}

/* Loads task `id` from its directory, whose spec.json exists. 0, -ENOMEM, or -EINVAL
 * (with a reason in errbuf) when spec.json cannot be read. */
static int task_load(struct tasks *t, const char *id, struct task **ret_task, char *errbuf,
		     size_t errlen)
{
	_cleanup_free_ char *text = NULL;
	size_t len;
	int r;

	r = task_read_file(t, id, TASK_FILE_SPEC, &text, &len);
	if (r < 0) {
		snprintf(errbuf, errlen, "cannot read %s: %s", TASK_FILE_SPEC, strerror(-r));
		return r == -ENOMEM ? r : -EINVAL;
	}
	json_t *spec = json_loadb(text, len, 0, NULL);
	const char *spec_id = json_string_value(json_object_get(spec, "id"));
	json_t *started = json_object_get(spec, "started_at");
	if (!spec_id || strcmp(spec_id, id) != 0 || !json_is_number(started)) {
		snprintf(errbuf, errlen, "%s is not a task spec of this id", TASK_FILE_SPEC);
		json_decref(spec);
		return -EINVAL;
	}
	struct task *k = task_new(id, json_number_value(started));
	/* A spec from before tasks had users ran as the agent's user. */
	const char *user = json_string_value(json_object_get(spec, "user"));
	json_t *uid = json_object_get(spec, "uid");
	if (k) {
		k->user = strdup(user ? user : t->own_user);
		k->uid = json_is_integer(uid) ? (long long) json_integer_value(uid)
			 : user               ? -1
					      : (long long) t->own_uid;
	}
	json_decref(spec);
	if (!k || !k->user) {
		task_free(k);
		return -ENOMEM;
	}
	task_load_pids(t, k);
	*ret_task = k;
	return 0;
}

static int task_cmp_started(const void *a, const void *b)
{
	const struct task *x = *(struct task *const *) a, *y = *(struct task *const *) b;
	if (x->started_at != y->started_at)
		return x->started_at < y->started_at ? -1 : 1;
	return strcmp(x->id, y->id);
}

static void task_remove_dir(struct tasks *t, const char *id);

#define NEVER_STARTED_WAIT_US (2 * 1000 * 1000) /* for a supervisor still starting up */

/* Whether k, just loaded, never ran: an agent died between writing its spec.json and the
 * go-ahead, so its supervisor exits (or exited) without forking the task, which leaves
 * no pid file and no result. A supervisor still alive is given a moment: without its
 * agent it exits; if it forked the task after all, the pid file appears. */
static bool task_never_started(struct tasks *t, struct task *k)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/%s", k->id, TASK_FILE_RESULT);
	uint64_t until = clock_now_us() + NEVER_STARTED_WAIT_US;
	for (;;) {
		if (k->pid || faccessat(t->dirfd, path, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
			return false;
		if (!k->sup.pid || !supervisor_is_alive(&k->sup, t->boot_id))
			break;
		if (clock_now_us() >= until)
			return false; /* a supervisor that lives on: adopted as running */
		usleep(10000);
		k->pid = task_read_pid(t, k->id, TASK_FILE_PID);
	}
	k->pid = task_read_pid(t, k->id, TASK_FILE_PID);
	return !k->pid && faccessat(t->dirfd, path, F_OK, AT_SYMLINK_NOFOLLOW) < 0;
}

/* Re-adopts every task in the directory: finished, still running under a supervisor that
 * outlived an earlier agent, or lost. A task that never started is forgotten (its
 * directory removed), so that the control plane, not finding it, sends it again under
 * the same id. Before any thread can see the registry. */
static int tasks_scan(struct tasks *t)
{
	int fd = dup(t->dirfd);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;
	size_t running = 0;
	int r = 0;

	if (!d) {
		r = -errno;
		if (fd >= 0)
			close(fd);
		return r;
	}
	while ((de = readdir(d))) {
		char errbuf[256];
		struct task *k;

		if (!task_id_is_valid(de->d_name))
			continue;
		char spec[PATH_MAX];
		snprintf(spec, sizeof(spec), "%s/%s", de->d_name, TASK_FILE_SPEC);
		if (faccessat(t->dirfd, spec, F_OK, AT_SYMLINK_NOFOLLOW) < 0)
			continue; /* never answered 201: the agent died while writing it */
		r = task_load(t, de->d_name, &k, errbuf, sizeof(errbuf));
		if (r == -EINVAL) {
			log_warn("ignoring task directory %s/%s: %s", t->dir, de->d_name, errbuf);
			r = 0;
			continue;
		}
		if (r < 0)
			break;
		if (task_never_started(t, k)) {
			log_info("task %s never started (its agent stopped before the go-ahead): "
				 "forgotten, so that it can be sent again",
				 k->id);
			task_remove_dir(t, k->id);
			task_free(k);
			continue;
		}
		task_refresh_locked(t, k);
		running += k->state == TASK_RUNNING;
		if ((r = tasks_insert_locked(t, k)) < 0) {
			task_free(k);
			break;
		}
	}
	closedir(d);
	if (r < 0)
		return r;
	if (t->n > 1)
		qsort(t->v, t->n, sizeof(t->v[0]), task_cmp_started);
	if (t->n)
		log_info("found %zu tasks in %s, %zu of them still running", t->n, t->dir, running);
	return 0;
}

/* The name of the user the agent runs as; its uid in decimal if it has no passwd entry.
 * Returns a new string or NULL. */
static char *own_user_name(uid_t uid)
{
	char buf[16384], *name;
	struct passwd pw, *found = NULL;

	if (getpwuid_r(uid, &pw, buf, sizeof(buf), &found) == 0 && found && pw.pw_name &&
	    pw.pw_name[0])
		return strdup(pw.pw_name);
	return asprintf(&name, "%u", (unsigned) uid) < 0 ? NULL : name;
}

int tasks_open(const char *state_dir, const char *exe, const char *node, struct tasks **ret_tasks)
{
	struct tasks *t = calloc(1, sizeof(*t));
	if (t) {
		t->outputs_max_files = ARTIFACTS_MAX_FILES;
		t->outputs_max_bytes = (long long) ARTIFACTS_MAX_BYTES;
	}
	int r;

	if (!t)
		return -ENOMEM;
	t->dirfd = -1;
	pthread_mutex_init(&t->create_lock, NULL);
	pthread_mutex_init(&t->lock, NULL);
	if (asprintf(&t->dir, "%s/%s", state_dir, TASKS_SUBDIR) < 0) {
		t->dir = NULL;
		r = -ENOMEM;
		goto err_close;
	}
	t->own_uid = geteuid();
	t->index = (uint64_t) (clock_wall_s() * 1e6);
	t->exe = strdup(exe);
	t->node = strdup(node);
	t->own_user = own_user_name(t->own_uid);
	if (!t->exe || !t->node || !t->own_user) {
		r = -ENOMEM;
		goto err_close;
	}
	if (mkdir(t->dir, 0700) < 0 && errno != EEXIST) {
		r = -errno;
		goto err_close;
	}
	t->dirfd = open(t->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (t->dirfd < 0) {
		r = -errno;
		goto err_close;
	}
	if ((r = supervisor_read_boot_id(t->boot_id)) < 0 || (r = tasks_scan(t)) < 0)
		goto err_close;
	r = spares_open(t->dir, t->dirfd, &t->spares);
	if (r < 0)
		log_warn("cannot keep spare task directories in %s/%s: %s; tasks start more "
			 "slowly",
			 t->dir, SPARES_SUBDIR, strerror(-r));
	*ret_tasks = t;
	return 0;

err_close:
	tasks_close(t);
	return r;
}

void tasks_close(struct tasks *t)
{
	if (!t)
		return;
	spares_close(t->spares);
	for (size_t i = 0; i < t->n; i++)
		task_free(t->v[i]);
	free(t->v);
	if (t->dirfd >= 0)
		close(t->dirfd);
	free(t->dir);
	free(t->exe);
	free(t->node);
	free(t->own_user);
	pthread_mutex_destroy(&t->lock);
	pthread_mutex_destroy(&t->create_lock);
	free(t);
}

/* Reaps k's supervisor if it is our child and has exited. */
static void task_reap_locked(struct tasks *t, struct task *k)
{
	int status;

	if (!k->child)
		return;
	pid_t w = waitpid(k->child, &status, WNOHANG);
	if (w == 0 || (w < 0 && errno != ECHILD))
		return;
	k->child = 0;
	k->sup_gone = true;
	task_refresh_locked(t, k);
}

void tasks_reap(struct tasks *t)
{
	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < t->n; i++)
		task_reap_locked(t, t->v[i]);
	pthread_mutex_unlock(&t->lock);
}

size_t tasks_count_running(struct tasks *t)
{
	pthread_mutex_lock(&t->lock);
	size_t n = tasks_count_running_locked(t);
	pthread_mutex_unlock(&t->lock);
	return n;
}

/* ---- the API ---- */

static json_t *json_real_or_null(double v, bool present)
{
	return present ? json_real(v) : json_null();
}

static json_t *json_int_or_null(long v, bool present)
{
	return present ? json_integer(v) : json_null();
}

/* The task object of TASKS-API.md, or NULL when out of memory. */
static json_t *task_to_json_locked(struct tasks *t, const struct task *k)
{
	bool running = k->state == TASK_RUNNING;
	json_t *o = json_pack(
		"{s:s, s:s, s:o, s:o, s:o, s:f, s:o, s:I, s:I}", "id", k->id, "state",
		task_state_names[k->state], "pid", json_int_or_null(k->pid, k->pid > 0),
		"exit_code", json_int_or_null(k->exit_code, k->exit_code >= 0), "signal",
		json_int_or_null(k->signal, k->signal > 0), "started_at", k->started_at,
		"finished_at", json_real_or_null(k->finished_at, k->finished_at > 0), "stdout_size",
		(json_int_t) (running ? task_stream_size(t, k, 0) : k->size[0]), "stderr_size",
		(json_int_t) (running ? task_stream_size(t, k, 1) : k->size[1]));
	if (o &&
	    (json_object_set_new(o, "user", json_string(k->user)) < 0 ||
	     json_object_set_new(o, "uid", json_int_or_null((long) k->uid, k->uid >= 0)) < 0)) {
		json_decref(o);
		return NULL;
	}
	if (o && k->error && json_object_set_new(o, "error", json_string(k->error)) < 0) {
		json_decref(o);
		return NULL;
	}
	return o;
}

static int task_reply_locked(struct tasks *t, const struct task *k, unsigned status,
			     struct response *resp)
{
	json_t *o = task_to_json_locked(t, k);
	return o ? response_set_json(resp, status, o) : -ENOMEM;
}

/* Checks a POST body against TASKS-API.md. 0, or -EINVAL with a sentence in msg. */
/* The fields a task request may hold, and a misspelt one named. */
static int check_fields(json_t *doc, char *msg, size_t msglen)
{
	static const char *const fields[] = {"id",
					     "cmd",
					     "env",
					     "cwd",
					     "timeout_s",
					     "user",
					     "outputs",
					     "outputs_max_files",
					     "outputs_max_bytes",
					     "inputs"};
	const size_t n_fields = sizeof(fields) / sizeof(fields[0]);
	const char *key;
	json_t *v;
	json_object_foreach (doc, key, v) {
		bool known = false;
		for (size_t i = 0; i < n_fields; i++)
			known = known || strcmp(key, fields[i]) == 0;
		if (!known) {
			const char *near = util_closest_word(key, fields, n_fields, 2);
			snprintf(msg, msglen,
				 "unknown field \"%.64s\"%s%s%s; the fields are id, "
				 "cmd, env, cwd, timeout_s, user, outputs, outputs_max_files, "
				 "outputs_max_bytes and inputs",
				 key, near ? " (did you mean \"" : "", near ? near : "",
				 near ? "\"?)" : "");
			return -EINVAL;
		}
	}
	return 0;
}

/* "cmd": a shell command string or a non-empty argv list, without NUL bytes. */
static int check_cmd(json_t *v, char *msg, size_t msglen)
{
	if (json_is_string(v)) {
		if (json_string_length(v) == 0 ||
		    json_string_length(v) != strlen(json_string_value(v))) {
			snprintf(msg, msglen, "\"cmd\" must not be empty or contain NUL bytes");
			return -EINVAL;
		}
	} else if (json_is_array(v) && json_array_size(v) > 0) {
		size_t i;
		json_t *arg;
		json_array_foreach (v, i, arg) {
			if (!json_is_string(arg) ||
			    json_string_length(arg) != strlen(json_string_value(arg)) ||
			    (i == 0 && json_string_length(arg) == 0)) {
				snprintf(msg, msglen,
					 "\"cmd\" must be a string or a non-empty list "
					 "of strings without NUL bytes, the first not empty");
				return -EINVAL;
			}
		}
	} else {
		snprintf(msg, msglen,
			 "\"cmd\" is required: a shell command string or a "
			 "non-empty list of strings (argv)");
		return -EINVAL;
	}
	return 0;
}

/* "env": names without "=" to strings without NUL bytes, none of the identity's. */
static int check_env(json_t *v, char *msg, size_t msglen)
{
	const char *key;
	if (v && !json_is_null(v)) {
		json_t *value;
		if (!json_is_object(v)) {
			snprintf(msg, msglen, "\"env\" must be an object of strings");
			return -EINVAL;
		}
		json_object_foreach (v, key, value) {
			if (!key[0] || strchr(key, '=') || !json_is_string(value) ||
			    json_string_length(value) != strlen(json_string_value(value))) {
				snprintf(msg, msglen,
					 "\"env\" must map names without \"=\" to "
					 "strings without NUL bytes; \"%.64s\" does not",
					 key);
				return -EINVAL;
			}
			if (supervisor_env_is_identity(key)) {
				snprintf(msg, msglen,
					 "env may not set %s (the task's identity comes from its "
					 "user)",
					 key);
				return -EINVAL;
			}
		}
	}
	return 0;
}

int tasks_check_request(json_t *doc, char *msg, size_t msglen)
{
	json_t *v;

	if (!json_is_object(doc)) {
		snprintf(msg, msglen, "the request must be a JSON object");
		return -EINVAL;
	}
	if (check_fields(doc, msg, msglen) < 0)
		return -EINVAL;

	v = json_object_get(doc, "id");
	if (!json_is_string(v) || json_string_length(v) != strlen(json_string_value(v)) ||
	    !task_id_is_valid(json_string_value(v))) {
		snprintf(msg, msglen,
			 "\"id\" must be a string of 1 to %d characters from "
			 "A-Z a-z 0-9 . _ @ : -, other than \".\" and \"..\"",
			 TASKS_ID_MAX);
		return -EINVAL;
	}

	if (check_cmd(json_object_get(doc, "cmd"), msg, msglen) < 0 ||
	    check_env(json_object_get(doc, "env"), msg, msglen) < 0)
		return -EINVAL;

	v = json_object_get(doc, "user");
	if (v && !json_is_null(v) &&
	    (!json_is_string(v) || json_string_length(v) != strlen(json_string_value(v)) ||
	     !task_user_is_valid(json_string_value(v)))) {
		snprintf(msg, msglen,
			 "\"user\" must be a user name of 1 to %d characters from A-Z a-z 0-9 "
			 ". _ -, not starting with \"-\"",
			 TASKS_USER_MAX);
		return -EINVAL;
	}

	v = json_object_get(doc, "cwd");
	if (v && !json_is_null(v) &&
	    (!json_is_string(v) || json_string_value(v)[0] != '/' ||
	     json_string_length(v) != strlen(json_string_value(v)))) {
		snprintf(msg, msglen, "\"cwd\" must be an absolute path");
		return -EINVAL;
	}

	v = json_object_get(doc, "timeout_s");
	if (v && !json_is_null(v) &&
	    (!json_is_number(v) || json_number_value(v) < 0 ||
	     json_number_value(v) > TASKS_TIMEOUT_MAX)) {
		snprintf(msg, msglen,
			 "\"timeout_s\" must be a number of seconds from 0 (none) "
			 "to %.0f",
			 TASKS_TIMEOUT_MAX);
		return -EINVAL;
	}
	return artifacts_check_request(doc, msg, msglen);
}

void tasks_set_output_limits(struct tasks *t, long long max_files, long long max_bytes)
{
	t->outputs_max_files = max_files;
	t->outputs_max_bytes = max_bytes;
}

/* The agent's caps go into the spec the supervisor reads; a lower one asked for stays. */
static void task_cap_outputs(const struct tasks *t, json_t *doc)
{
	static const char *const fields[] = {"outputs_max_files", "outputs_max_bytes"};
	if (!json_object_get(doc, "outputs"))
		return;
	for (int i = 0; i < 2; i++) {
		long long cap = i ? t->outputs_max_bytes : t->outputs_max_files;
		json_t *v = json_object_get(doc, fields[i]);
		if (!v || json_integer_value(v) > cap)
			json_object_set_new(doc, fields[i], json_integer(cap));
	}
}

/* Every input the request names was staged (staging.h): the sentence of one that was
 * not, or "". */
static void task_check_staged(const struct tasks *t, json_t *doc, const char *id, char *msg,
			      size_t msglen)
{
	size_t i;
	json_t *o;
	msg[0] = '\0';
	json_array_foreach (json_object_get(doc, "inputs"), i, o) {
		_cleanup_free_ char *rel = NULL;
		struct stat st;
		if (asprintf(&rel, "../%s/%s/%s", ARTIFACTS_STAGING, id, json_string_value(o)) < 0)
			continue;
		if (fstatat(t->dirfd, rel, &st, 0) < 0 || !S_ISREG(st.st_mode)) {
			snprintf(msg, msglen, "input %.200s was not staged on %s",
				 json_string_value(o), t->node);
			return;
		}
	}
}

/* Makes the task directory, from a spare if one is ready, and writes spec.json into it,
 * without waiting for the disk: task_sync_spec() does, while the supervisor starts.
 * Returns the directory's descriptor and sets *ret_fd to spec.json's, or returns -errno
 * (-EEXIST when the directory exists).
 *
 * spec.json is written in place, not renamed over a temporary file: a crash can leave it
 * empty or torn, but only for a task that never ran and was never answered 201 (the
 * supervisor runs nothing before task_sync_spec() has returned), and a later agent
 * ignores a spec.json it cannot read, as it does a directory without one; a new POST of
 * the id finds no task and replaces such a leftover (task_start()). */
static int task_write_spec(struct tasks *t, const char *id, json_t *spec, int *ret_fd)
{
	_cleanup_free_ char *text = json_dumps(spec, JSON_COMPACT | JSON_REAL_PRECISION(17));
	int dfd, fd, r;

	if (!text)
		return -ENOMEM;
	/* A spare holds an empty spec.json; otherwise it is made here. */
	int excl = O_EXCL;
	r = spares_take(t->spares, id);
	if (r == -EEXIST)
		return r;
	if (r == 0)
		excl = 0;
	else if (mkdirat(t->dirfd, id, 0700) < 0)
		return -errno;
	dfd = openat(t->dirfd, id, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (dfd < 0)
		return -errno;
	fd = openat(dfd, TASK_FILE_SPEC, O_WRONLY | O_CREAT | excl | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		r = -errno;
		close(dfd);
		return r;
	}
	size_t len = strlen(text);
	for (const char *p = text; len > 0;) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = -errno;
			close(fd);
			close(dfd);
			return r;
		}
		p += n;
		len -= (size_t) n;
	}
	*ret_fd = fd;
	return dfd;
}

/* Makes what task_write_spec() wrote durable: the data of spec.json, its entry in the
 * task directory and the task directory's entry in STATE_DIR/tasks, which are all a
 * later agent needs to know the id. 0 or -errno. */
static int task_sync_spec(struct tasks *t, int dfd, int spec_fd)
{
	if (fsync(spec_fd) < 0 || fsync(dfd) < 0 || fsync(t->dirfd) < 0)
		return -errno;
	return 0;
}

/* Removes the directory of a task that never started, so that its id stays free. */
static void task_remove_dir(struct tasks *t, const char *id)
{
	int dfd = openat(t->dirfd, id, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
	struct dirent *de;

	if (!d) {
		if (dfd >= 0)
			close(dfd);
		return;
	}
	/* spec.json first, so that a failure below leaves nothing a later agent adopts. */
	unlinkat(dfd, TASK_FILE_SPEC, 0);
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0 &&
		    unlinkat(dfd, de->d_name, 0) < 0 && errno == EISDIR)
			unlinkat(dfd, de->d_name, AT_REMOVEDIR);
	closedir(d);
	if (unlinkat(t->dirfd, id, AT_REMOVEDIR) < 0)
		log_warn("cannot remove %s/%s: %s", t->dir, id, strerror(errno));
}

/* Whether the directory of `id`, a task the registry does not know, is what a crash left
 * of a task that never started: a directory that a later agent would ignore too, without
 * a spec.json of this id that it can read (see task_write_spec()). */
static bool task_is_leftover(struct tasks *t, const char *id)
{
	char errbuf[256];
	struct task *k = NULL;
	int r = task_load(t, id, &k, errbuf, sizeof(errbuf));

	task_free(k);
	return r == -EINVAL;
}

/* Adds who the task runs as to its spec: "user" and "uid" (null for no such user) always,
 * and the passwd entry the supervisor gives it when the request named the user. 0 or
 * -ENOMEM. */
static int task_spec_add_identity(json_t *doc, const struct task_identity *ident)
{
	json_t *pw = NULL;

	if (ident->passwd) {
		pw = json_pack("{s:I, s:I, s:s, s:s}", "uid", (json_int_t) ident->uid, "gid",
			       (json_int_t) ident->gid, "home", ident->home, "shell", ident->shell);
		if (!pw || json_object_set_new(doc, "passwd", pw) < 0)
			return -ENOMEM;
	}
	if (json_object_set_new(doc, "user", json_string(ident->user)) < 0 ||
	    json_object_set_new(doc, "uid",
				ident->uid >= 0 ? json_integer((json_int_t) ident->uid)
						: json_null()) < 0)
		return -ENOMEM;
	return 0;
}

/* Allocates task `id` and writes its spec.json (not durable yet): the request `doc`,
 * without its null fields, with its start time and identity. Returns the task's
 * directory open, *ret_task and *ret_spec_fd set; or -errno with resp set (status 0
 * when out of memory), and nothing left on disk. create_lock held, not lock. */
static int task_begin(struct tasks *t, const char *id, json_t *doc,
		      const struct task_identity *ident, struct task **ret_task, int *ret_spec_fd,
		      struct response *resp)
{
	double now = clock_wall_s();
	int spec_fd = -1, r;

	/* Allocated first: once spec.json exists the task must make it into the registry,
	 * or a second POST would start it again. */
	struct task *k = task_new(id, now);
	if (!k)
		return -ENOMEM;
	k->user = strdup(ident->user);
	k->uid = ident->uid;
	/* The optional fields that are null are as good as absent. */
	for (const char *const *f = (const char *const[]){"env", "cwd", "timeout_s", NULL}; *f; f++)
		if (json_is_null(json_object_get(doc, *f)))
			json_object_del(doc, *f);
	if (!k->user || json_object_set_new(doc, "started_at", json_real(now)) < 0 ||
	    json_object_set_new(doc, "node", json_string(t->node)) < 0 ||
	    task_spec_add_identity(doc, ident) < 0) {
		task_free(k);
		return -ENOMEM;
	}
	r = task_write_spec(t, id, doc, &spec_fd);
	if (r == -EEXIST && task_is_leftover(t, id)) {
		log_warn("replacing %s/%s, the leftover of a task that never started", t->dir, id);
		task_remove_dir(t, id);
		r = task_write_spec(t, id, doc, &spec_fd);
	}
	if (r < 0) {
		log_err("cannot write %s/%s/%s: %s", t->dir, id, TASK_FILE_SPEC, strerror(-r));
		response_set_error(resp, 500, "cannot record task %s: %s", id, strerror(-r));
		if (r != -EEXIST)
			task_remove_dir(t, id);
		task_free(k);
		return r;
	}
	*ret_task = k;
	*ret_spec_fd = spec_fd;
	return r;
}

/* Records a task that cannot run at all, `why` being the reason (its user): a spec.json
 * and a result.json of state failed without an exit code, both durable, and no
 * supervisor, so that the id is known from now on, also to a restarted agent. Returns
 * the new task, or NULL with resp set (status 0 when out of memory). create_lock held,
 * not lock. */
static struct task *task_record_unrunnable(struct tasks *t, const char *id, json_t *doc,
					   const struct task_identity *ident, const char *why,
					   struct response *resp)
{
	struct task *k;
	int spec_fd, r;

	int dfd = task_begin(t, id, doc, ident, &k, &spec_fd, resp);
	if (dfd < 0)
		return NULL;
	json_t *result = json_pack("{s:s, s:n, s:n, s:f, s:s}", "state", "failed", "exit_code",
				   "signal", "finished_at", clock_wall_s(), "error", why);
	_cleanup_free_ char *text =
		result ? json_dumps(result, JSON_COMPACT | JSON_REAL_PRECISION(17)) : NULL;
	json_decref(result);
	r = text ? supervisor_write_file(dfd, TASK_FILE_RESULT, text, strlen(text), true) : -ENOMEM;
	if (r == 0)
		r = task_sync_spec(t, dfd, spec_fd);
	close(spec_fd);
	close(dfd);
	if (r < 0) {
		log_err("cannot record task %s: %s", id, strerror(-r));
		response_set_error(resp, 500, "cannot record task %s: %s", id, strerror(-r));
		task_remove_dir(t, id);
		task_free(k);
		return NULL;
	}
	task_load_result_locked(t, k); /* not yet in the registry: no lock needed */
	log_info("task %s failed without running: %s", id, why);
	return k;
}

/* Writes the spec and starts the supervisor; create_lock held, not lock. Returns the new
 * task, or NULL with resp set (status 0 when out of memory). */
static struct task *task_start(struct tasks *t, const char *id, json_t *doc,
			       const struct task_identity *ident, struct response *resp)
{
	char dir[PATH_MAX], errbuf[512];
	struct supervisor_launch launch;
	int dfd, spec_fd = -1, r;
	struct task *k;
	pid_t sup = 0;

	dfd = task_begin(t, id, doc, ident, &k, &spec_fd, resp);
	if (dfd < 0)
		return NULL;

	/* A task of another user starts in its HOME, so it needs no work/. */
	bool foreign = ident->passwd && ident->uid != (long long) t->own_uid;
	snprintf(dir, sizeof(dir), "%s/%s", t->dir, id);
	r = supervisor_spawn(t->exe, dir, dfd, t->boot_id, !json_object_get(doc, "cwd") && !foreign,
			     &launch, errbuf, sizeof(errbuf));
	bool nothing_ran = r < 0;
	if (r == 0) {
		/* While the supervisor starts up: it runs nothing before the go-ahead, and the
		 * 201 comes after its answer. */
		int sync_r = task_sync_spec(t, dfd, spec_fd);
		r = supervisor_confirm(&launch, sync_r == 0, &sup, errbuf, sizeof(errbuf));
		if (sync_r < 0)
			snprintf(errbuf, sizeof(errbuf), "cannot write %s to disk: %s",
				 TASK_FILE_SPEC, strerror(-sync_r));
		nothing_ran = sync_r < 0 || (r < 0 && r != -ETIMEDOUT && r != -ECHILD);
	}
	close(spec_fd);
	close(dfd);
	if (nothing_ran) {
		/* Nothing ran: forget the id altogether. */
		log_err("cannot start task %s: %s", id, errbuf);
		response_set_error(resp, 500, "cannot start task %s: %s", id, errbuf);
		task_remove_dir(t, id);
		task_free(k);
		return NULL;
	}
	/* From here on the id is taken: its state comes from the files. */
	if (r < 0)
		log_err("task %s: %s", id, errbuf);
	task_load_pids(t, k);
	if (k->sup.pid == 0)
		k->sup.pid = sup;
	if (r == -ECHILD)
		k->sup_gone = true; /* already reaped */
	else
		k->child = sup;
	return k;
}

/* Looks user `name` up with getpwnam_r(). 0 with *ret_pw filled (its strings in *ret_buf,
 * a new buffer), -ENOENT when there is no such user, another -errno when the database
 * could not be read. */
static int user_lookup(const char *name, struct passwd *ret_pw, char **ret_buf)
{
	long max = sysconf(_SC_GETPW_R_SIZE_MAX);
	size_t size = max > 0 ? (size_t) max : 16384;
	struct passwd *found;

	for (;;) {
		char *buf = malloc(size);
		if (!buf)
			return -ENOMEM;
		int r = getpwnam_r(name, ret_pw, buf, size, &found);
		if (r == ERANGE && size < 1024 * 1024) {
			free(buf);
			size *= 2;
			continue;
		}
		if (found) {
			*ret_buf = buf;
			return 0;
		}
		free(buf);
		/* getpwnam_r(3): these, or 0, mean that the name is not there. */
		if (r == 0 || r == ENOENT || r == ESRCH || r == EBADF || r == EPERM)
			return -ENOENT;
		return -r;
	}
}

static void task_identity_done(struct task_identity *ident)
{
	free(ident->home);
	free(ident->shell);
}

/* Works out who a task is to run as, at its dispatch: the agent's own user without a
 * "user" in the request, else that user from the passwd database. A user this agent
 * cannot run as (none of that name here, or not the agent's own when the agent is not
 * root) leaves the sentence in ret->error. 0, or -errno when the database failed. */
static int task_resolve_identity(struct tasks *t, json_t *doc, struct task_identity *ret)
{
	const char *name = json_string_value(json_object_get(doc, "user"));
	_cleanup_free_ char *buf = NULL;
	struct passwd pw;

	*ret = (struct task_identity){.uid = (long long) t->own_uid};
	if (!name) {
		snprintf(ret->user, sizeof(ret->user), "%s", t->own_user);
		return 0;
	}
	snprintf(ret->user, sizeof(ret->user), "%s", name);
	int r = user_lookup(name, &pw, &buf);
	if (r == -ENOENT) {
		ret->uid = -1;
		snprintf(ret->error, sizeof(ret->error), "user %s does not exist on %s", name,
			 t->node);
		return 0;
	}
	if (r < 0)
		return r;
	ret->uid = (long long) pw.pw_uid;
	if (t->own_uid != 0 && strcmp(name, t->own_user) != 0) {
		snprintf(ret->error, sizeof(ret->error),
			 "this agent runs as %s and cannot run tasks as %s", t->own_user, name);
		return 0;
	}
	ret->passwd = true;
	ret->gid = pw.pw_gid;
	ret->home = strdup(pw.pw_dir ? pw.pw_dir : "");
	ret->shell = strdup(pw.pw_shell && pw.pw_shell[0] ? pw.pw_shell : "/bin/sh");
	return ret->home && ret->shell ? 0 : -ENOMEM;
}

int tasks_handle_create(struct tasks *t, struct request *req, struct response *resp)
{
	struct task_identity ident = {0};
	json_error_t jerr;
	char msg[512];
	json_t *doc = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
	int r = 0;

	if (!doc) {
		response_set_error(resp, 400, "invalid JSON: %s", jerr.text);
		return 0;
	}
	if (tasks_check_request(doc, msg, sizeof(msg)) < 0) {
		response_set_error(resp, 400, "%s", msg);
		json_decref(doc);
		return 0;
	}
	char id[TASKS_ID_MAX + 1];
	snprintf(id, sizeof(id), "%s", json_string_value(json_object_get(doc, "id")));
	task_cap_outputs(t, doc);

	pthread_mutex_lock(&t->create_lock);
	pthread_mutex_lock(&t->lock);
	struct task *k = tasks_find_locked(t, id);
	if (k) {
		task_refresh_locked(t, k);
		r = task_reply_locked(t, k, 200, resp);
		pthread_mutex_unlock(&t->lock);
		goto out_unlock_create;
	}
	size_t running = tasks_count_running_locked(t);
	pthread_mutex_unlock(&t->lock);
	task_check_staged(t, doc, id, msg, sizeof(msg));
	if (msg[0]) {
		response_set_error(resp, 400, "%s", msg);
		goto out_unlock_create;
	}

	/* Now, not earlier: the task runs as the user the database says at its dispatch. */
	r = task_resolve_identity(t, doc, &ident);
	if (r < 0) {
		response_set_error(resp, 500, "cannot look up user %s: %s", ident.user,
				   strerror(-r));
		r = r == -ENOMEM ? r : 0;
		goto out_unlock_create;
	}
	if (ident.error[0]) {
		/* Accepted, and known from now on, but nothing runs. */
		k = task_record_unrunnable(t, id, doc, &ident, ident.error, resp);
	} else if (running >= TASKS_MAX_RUNNING) {
		response_set_error(resp, 503, "too many running tasks: the limit is %d",
				   TASKS_MAX_RUNNING);
		goto out_unlock_create;
	} else {
		spares_pause(t->spares);
		k = task_start(t, id, doc, &ident, resp);
		spares_resume(t->spares);
	}
	if (!k) {
		if (!resp->status)
			r = -ENOMEM;
		goto out_unlock_create;
	}
	pthread_mutex_lock(&t->lock);
	r = tasks_insert_locked(t, k);
	if (r < 0) {
		/* Keep the child reaped and the id known on disk; a restart adopts it. */
		pthread_mutex_unlock(&t->lock);
		task_free(k);
		goto out_unlock_create;
	}
	if (k->state == TASK_RUNNING)
		log_info("task %s started as %s: pid %d, supervisor %d", id, k->user, (int) k->pid,
			 (int) k->sup.pid);
	/* It may have exited before it was in the registry, unseen by tasks_reap(). */
	task_reap_locked(t, k);
	task_refresh_locked(t, k);
	r = task_reply_locked(t, k, 201, resp);
	pthread_mutex_unlock(&t->lock);

out_unlock_create:
	pthread_mutex_unlock(&t->create_lock);
	task_identity_done(&ident);
	json_decref(doc);
	return r;
}

void tasks_set_notify(struct tasks *t, void (*fn)(void *arg), void *arg)
{
	pthread_mutex_lock(&t->lock);
	t->notify = fn;
	t->notify_arg = arg;
	pthread_mutex_unlock(&t->lock);
}

#define TASKS_WAIT_MAX_S 60.0

int tasks_handle_list(struct tasks *t, struct request *req, struct response *resp)
{
	/* ?since=T (this agent's clock, unix seconds): only tasks still running or finished
	 * at or after T, so that a control plane polling for its work does not fetch the
	 * whole history each time */
	double since = 0;
	const char *q = request_get_query(req, "since");
	if (q) {
		char *end;
		since = strtod(q, &end);
		if (*end || end == q || since < 0) {
			response_set_error(resp, 400, "since must be a unix time in seconds");
			return 0;
		}
	}
	/* ?index=N&wait=S: what changed after change N (and what runs), waiting up to S
	 * seconds for a change when nothing did (Consul's blocking queries) */
	const char *qi = request_get_query(req, "index"), *qw = request_get_query(req, "wait");
	uint64_t index = 0;
	double wait = 0;
	if (qi) {
		char *end;
		errno = 0;
		index = strtoull(qi, &end, 10);
		if (*end || end == qi || errno || qi[0] == '-') {
			response_set_error(resp, 400,
					   "index must be a change number from an answer");
			return 0;
		}
	}
	if (qw) {
		char *end;
		wait = strtod(qw, &end);
		if (*end || end == qw || !(wait >= 0 && wait <= TASKS_WAIT_MAX_S)) {
			response_set_error(resp, 400, "wait must be seconds from 0 to %g",
					   TASKS_WAIT_MAX_S);
			return 0;
		}
	}
	json_t *list = json_array();
	bool ok = list != NULL;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	double now = (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;

	pthread_mutex_lock(&t->lock);
	if (index > t->index)
		index = 0; /* a number from before a restart (or a clock step): everything */
	for (size_t i = 0; i < t->n; i++)
		task_refresh_locked(t, t->v[i]);
	if (qi && wait > 0 && !req->expired) {
		bool changed = false;
		for (size_t i = t->n; i-- > 0 && !changed;)
			changed = t->v[i]->changed > index;
		if (!changed) {
			pthread_mutex_unlock(&t->lock);
			json_decref(list);
			resp->defer_until_us = clock_now_us() + (uint64_t) (wait * 1e6);
			return 0;
		}
	}
	for (size_t i = 0; ok && i < t->n; i++) {
		struct task *k = t->v[i];
		if (since > 0 && k->finished_at > 0 && k->finished_at < since)
			continue;
		if (qi && k->changed <= index && k->state != TASK_RUNNING)
			continue;
		json_t *o = task_to_json_locked(t, k);
		ok = o && json_array_append_new(list, o) == 0;
	}
	uint64_t now_index = t->index;
	pthread_mutex_unlock(&t->lock);
	if (!ok) {
		json_decref(list);
		return -ENOMEM;
	}
	return response_set_json(resp, 200,
				 json_pack("{s:o,s:f,s:I}", "tasks", list, "time", now, "index",
					   (json_int_t) now_index));
}

/* Finds the task named by req->params[0] and refreshes it, with the lock held; or answers
 * 404, unlocks and returns NULL. */
static struct task *tasks_lookup_locked(struct tasks *t, struct request *req, struct response *resp)
{
	const char *id = req->params[0];
	pthread_mutex_lock(&t->lock);
	struct task *k = task_id_is_valid(id) ? tasks_find_locked(t, id) : NULL;
	if (!k) {
		pthread_mutex_unlock(&t->lock);
		response_set_error(resp, 404, "no such task: %.200s", id);
		return NULL;
	}
	task_refresh_locked(t, k);
	return k;
}

int tasks_handle_get(struct tasks *t, struct request *req, struct response *resp)
{
	struct task *k = tasks_lookup_locked(t, req, resp);
	if (!k)
		return 0;
	int r = task_reply_locked(t, k, 200, resp);
	pthread_mutex_unlock(&t->lock);
	return r;
}

/* A query parameter that must be a decimal integer >= 0; `def` when absent. */
static int query_get_u64(struct request *req, const char *name, uint64_t def, uint64_t *ret_value)
{
	const char *s = request_get_query(req, name);
	char *end;

	if (!s) {
		*ret_value = def;
		return 0;
	}
	if (s[0] < '0' || s[0] > '9')
		return -EINVAL;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (*end || errno || v > INT64_MAX)
		return -EINVAL;
	*ret_value = v;
	return 0;
}

int tasks_handle_output(struct tasks *t, const char *stream, struct request *req,
			struct response *resp)
{
	uint64_t offset, limit;
	char path[PATH_MAX], total_text[32];
	struct stat st = {0};
	int fd;

	if (query_get_u64(req, "offset", 0, &offset) < 0 ||
	    query_get_u64(req, "limit", TASKS_OUTPUT_MAX, &limit) < 0) {
		response_set_error(resp, 400, "offset and limit must be integers >= 0");
		return 0;
	}
	if (limit > TASKS_OUTPUT_MAX)
		limit = TASKS_OUTPUT_MAX;

	struct task *k = tasks_lookup_locked(t, req, resp);
	if (!k)
		return 0;
	task_path(k, stream, path);
	pthread_mutex_unlock(&t->lock);

	/* The files only ever grow, so they are read without the lock. */
	fd = openat(t->dirfd, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0 && errno != ENOENT) {
		response_set_error(resp, 500, "cannot open the %s of task %s: %s", stream, k->id,
				   strerror(errno));
		return 0;
	}
	if (fd >= 0 && fstat(fd, &st) < 0)
		st.st_size = 0;
	uint64_t total = (uint64_t) st.st_size;
	size_t want =
		offset < total ? (size_t) (total - offset < limit ? total - offset : limit) : 0;
	char *data = want ? malloc(want) : NULL;
	size_t got = 0;
	if (want && !data) {
		close(fd);
		return -ENOMEM;
	}
	while (got < want) {
		ssize_t n = pread(fd, data + got, want - got, (off_t) (offset + got));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t) n;
	}
	if (fd >= 0)
		close(fd);

	buf_free(&resp->body);
	if (got)
		buf_append(&resp->body, data, got);
	free(data);
	snprintf(total_text, sizeof(total_text), "%" PRIu64, total);
	resp->content_type = "application/octet-stream";
	resp->status = 200;
	return response_add_header(resp, "X-Total-Size", total_text);
}

int tasks_handle_cancel(struct tasks *t, struct request *req, struct response *resp)
{
	char marker[PATH_MAX];
	struct task *k = tasks_lookup_locked(t, req, resp);
	int r;

	if (!k)
		return 0;
	if (k->state != TASK_RUNNING) {
		r = task_reply_locked(t, k, 200, resp);
		goto out_unlock;
	}
	/* Running means the supervisor is alive: our unreaped child, or verified by
	 * task_refresh_locked() just now. Signal only once per task. */
	task_path(k, TASK_FILE_CANCEL, marker);
	if (faccessat(t->dirfd, marker, F_OK, AT_SYMLINK_NOFOLLOW) < 0) {
		int dfd = openat(t->dirfd, k->id, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
		r = dfd >= 0 ? supervisor_cancel(dfd, k->pgid, k->child ? k->child : k->sup.pid)
			     : -errno;
		if (dfd >= 0)
			close(dfd);
		if (r < 0) {
			response_set_error(resp, 500, "cannot cancel task %s: %s", k->id,
					   strerror(-r));
			r = 0;
			goto out_unlock;
		}
		log_info("task %s: cancel requested", k->id);
	}
	r = task_reply_locked(t, k, 202, resp);

out_unlock:
	pthread_mutex_unlock(&t->lock);
	return r;
}
