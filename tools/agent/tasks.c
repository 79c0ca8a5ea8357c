/* The agent's task registry: every task it knows, its files in STATE_DIR/tasks/ID, its
 * states, the scan that re-adopts tasks at open, and reaping (tasks_internal.h). */
#include "tools/agent/tasks_internal.h"
#include "tools/agent/artifacts.h"

#include "backend/util.h"
#include "tools/agent/spares.h"
#include "tools/agent/supervisor.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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

const char *const task_state_names[] = {
	[TASK_RUNNING] = "running",     [TASK_SUCCEEDED] = "succeeded", [TASK_FAILED] = "failed",
	[TASK_TIMED_OUT] = "timed_out", [TASK_CANCELLED] = "cancelled", [TASK_LOST] = "lost",
};

static const char *const stream_names[] = {TASK_FILE_STDOUT, TASK_FILE_STDERR};

/* ---- ids and files ---- */

bool tasks_id_is_valid(const char *id)
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

void tasks_task_path(const struct task *k, const char *name, char out[PATH_MAX])
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

int64_t tasks_stream_size(struct tasks *t, const struct task *k, int s)
{
	char path[PATH_MAX];
	struct stat st;

	tasks_task_path(k, stream_names[s], path);
	return fstatat(t->dirfd, path, &st, AT_SYMLINK_NOFOLLOW) == 0 ? (int64_t) st.st_size : 0;
}

/* ---- states ---- */

/* A task started or ended: long polls learn it. Lock held. */
static void task_changed_locked(struct tasks *t, struct task *k)
{
	assert_held(&t->lock);
	k->changed = ++t->index;
	if (t->notify)
		t->notify(t->notify_arg);
}

static void task_set_final_locked(struct tasks *t, struct task *k, enum task_state state)
{
	assert_held(&t->lock);
	k->state = state;
	for (int s = 0; s < 2; s++)
		k->size[s] = tasks_stream_size(t, k, s);
	task_changed_locked(t, k);
}

static void task_set_lost_locked(struct tasks *t, struct task *k, const char *why)
{
	assert_held(&t->lock);
	free(k->error);
	k->error = xstrdup(why);
	k->finished_at = 0;
	task_set_final_locked(t, k, TASK_LOST);
	log_warn("task %s is lost: %s", k->id, why);
}

int tasks_load_result_locked(struct tasks *t, struct task *k)
{
	assert_held(&t->lock);
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
	k->error = error ? xstrdup(error) : NULL;
	json_decref(doc);
	task_set_final_locked(t, k, st);
	return 0;
}

void tasks_refresh_locked(struct tasks *t, struct task *k)
{
	assert_held(&t->lock);
	if (k->state != TASK_RUNNING || tasks_load_result_locked(t, k) == 0)
		return;
	if (k->child)
		return; /* our child: tasks_reap() will tell when it exits */
	if (!k->sup_gone && supervisor_is_alive(&k->sup, t->boot_id))
		return;
	k->sup_gone = true;
	/* It may have written the result just before it exited. */
	if (tasks_load_result_locked(t, k) == 0)
		return;
	task_set_lost_locked(t, k,
			     k->sup.pid ? "its supervisor ended without recording a result"
					: "it has neither a supervisor nor a result");
}

size_t tasks_count_running_locked(struct tasks *t)
{
	assert_held(&t->lock);
	size_t n = 0;
	for (size_t i = 0; i < t->n; i++) {
		tasks_refresh_locked(t, t->v[i]);
		n += t->v[i]->state == TASK_RUNNING;
	}
	return n;
}

struct task *tasks_find_locked(struct tasks *t, const char *id)
{
	assert_held(&t->lock);
	for (size_t i = 0; i < t->n; i++)
		if (strcmp(t->v[i]->id, id) == 0)
			return t->v[i];
	return NULL;
}

void tasks_task_free(struct task *k)
{
	if (!k)
		return;
	free(k->error);
	free(k->user);
	free(k);
}

void tasks_insert_locked(struct tasks *t, struct task *k)
{
	assert_held(&t->lock);
	if (t->n == t->cap) {
		t->cap = t->cap ? 2 * t->cap : 64;
		t->v = xrealloc(t->v, t->cap * sizeof(*t->v));
	}
	t->v[t->n++] = k;
	task_changed_locked(t, k);
}

struct task *tasks_task_new(const char *id, double started_at)
{
	size_t len = strlen(id);
	assert(len <= TASKS_ID_MAX);
	struct task *k = xcalloc(1, sizeof(*k));
	memcpy(k->id, id, len + 1);
	k->state = TASK_RUNNING;
	k->exit_code = -1;
	k->uid = -1;
	k->started_at = started_at;
	return k;
}

void tasks_load_pids(struct tasks *t, struct task *k)
{
	k->pid = task_read_pid(t, k->id, TASK_FILE_PID);
	k->pgid = task_read_pid(t, k->id, TASK_FILE_PGID);
	int dfd = openat(t->dirfd, k->id, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (dfd < 0 || supervisor_read_id(dfd, &k->sup) < 0)
		memset(&k->sup, 0, sizeof(k->sup));
	if (dfd >= 0)
		close(dfd);
}

int tasks_load_task(struct tasks *t, const char *id, struct task **ret_task, char *errbuf,
		    size_t errlen)
{
	_cleanup_free_ char *text = NULL;
	size_t len;
	int r;

	r = task_read_file(t, id, TASK_FILE_SPEC, &text, &len);
	if (r < 0) {
		snprintf(errbuf, errlen, "cannot read %s: %s", TASK_FILE_SPEC, strerror(-r));
		return -EINVAL;
	}
	json_t *spec = json_loadb(text, len, 0, NULL);
	const char *spec_id = json_string_value(json_object_get(spec, "id"));
	json_t *started = json_object_get(spec, "started_at");
	if (!spec_id || strcmp(spec_id, id) != 0 || !json_is_number(started)) {
		snprintf(errbuf, errlen, "%s is not a task spec of this id", TASK_FILE_SPEC);
		json_decref(spec);
		return -EINVAL;
	}
	struct task *k = tasks_task_new(id, json_number_value(started));
	/* A spec from before tasks had users ran as the agent's user. */
	const char *user = json_string_value(json_object_get(spec, "user"));
	json_t *uid = json_object_get(spec, "uid");
	k->user = xstrdup(user ? user : t->own_user);
	k->uid = json_is_integer(uid) ? (long long) json_integer_value(uid)
		 : user               ? -1
				      : (long long) t->own_uid;
	json_decref(spec);
	tasks_load_pids(t, k);
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
 * the same id. Before any thread can see the registry, with its lock held all the same
 * (the *_locked functions check it). */
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

		if (!tasks_id_is_valid(de->d_name))
			continue;
		char spec[PATH_MAX];
		snprintf(spec, sizeof(spec), "%s/%s", de->d_name, TASK_FILE_SPEC);
		if (faccessat(t->dirfd, spec, F_OK, AT_SYMLINK_NOFOLLOW) < 0)
			continue; /* never answered 201: the agent died while writing it */
		if (tasks_load_task(t, de->d_name, &k, errbuf, sizeof(errbuf)) < 0) {
			log_warn("ignoring task directory %s/%s: %s", t->dir, de->d_name, errbuf);
			continue;
		}
		if (task_never_started(t, k)) {
			log_info("task %s never started (its agent stopped before the go-ahead): "
				 "forgotten, so that it can be sent again",
				 k->id);
			tasks_remove_dir(t, k->id);
			tasks_task_free(k);
			continue;
		}
		tasks_refresh_locked(t, k);
		running += k->state == TASK_RUNNING;
		tasks_insert_locked(t, k);
	}
	closedir(d);
	if (t->n > 1)
		qsort(t->v, t->n, sizeof(t->v[0]), task_cmp_started);
	if (t->n)
		log_info("found %zu tasks in %s, %zu of them still running", t->n, t->dir, running);
	return 0;
}

/* The name of the user the agent runs as; its uid in decimal if it has no passwd entry.
 * Returns a new string. */
static char *own_user_name(uid_t uid)
{
	char buf[16384];
	struct passwd pw, *found = NULL;

	if (getpwuid_r(uid, &pw, buf, sizeof(buf), &found) == 0 && found && pw.pw_name &&
	    pw.pw_name[0])
		return xstrdup(pw.pw_name);
	return xasprintf("%u", (unsigned) uid);
}

int tasks_open(const char *state_dir, const char *exe, const char *node, struct tasks **ret_tasks)
{
	struct tasks *t = xcalloc(1, sizeof(*t));
	t->outputs_max_files = ARTIFACTS_MAX_FILES;
	t->outputs_max_bytes = (long long) ARTIFACTS_MAX_BYTES;
	int r;

	t->dirfd = -1;
	pthread_mutex_init(&t->create_lock, NULL);
	pthread_mutex_init(&t->lock, NULL);
	t->dir = xasprintf("%s/%s", state_dir, TASKS_SUBDIR);
	t->own_uid = geteuid();
	t->index = (uint64_t) (clock_wall_s() * 1e6);
	t->exe = xstrdup(exe);
	t->node = xstrdup(node);
	t->own_user = own_user_name(t->own_uid);
	if (mkdir(t->dir, 0700) < 0 && errno != EEXIST) {
		r = -errno;
		goto err_close;
	}
	t->dirfd = open(t->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (t->dirfd < 0) {
		r = -errno;
		goto err_close;
	}
	if ((r = supervisor_read_boot_id(t->boot_id)) < 0)
		goto err_close;
	pthread_mutex_lock(&t->lock);
	r = tasks_scan(t);
	pthread_mutex_unlock(&t->lock);
	if (r < 0)
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
		tasks_task_free(t->v[i]);
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

void tasks_reap_locked(struct tasks *t, struct task *k)
{
	assert_held(&t->lock);
	int status;

	if (!k->child)
		return;
	pid_t w = waitpid(k->child, &status, WNOHANG);
	if (w == 0 || (w < 0 && errno != ECHILD))
		return;
	k->child = 0;
	k->sup_gone = true;
	tasks_refresh_locked(t, k);
}

void tasks_reap(struct tasks *t)
{
	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < t->n; i++)
		tasks_reap_locked(t, t->v[i]);
	pthread_mutex_unlock(&t->lock);
}

size_t tasks_count_running(struct tasks *t)
{
	pthread_mutex_lock(&t->lock);
	size_t n = tasks_count_running_locked(t);
	pthread_mutex_unlock(&t->lock);
	return n;
}

void tasks_remove_dir(struct tasks *t, const char *id)
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

void tasks_set_notify(struct tasks *t, void (*fn)(void *arg), void *arg)
{
	pthread_mutex_lock(&t->lock);
	t->notify = fn;
	t->notify_arg = arg;
	pthread_mutex_unlock(&t->lock);
}
