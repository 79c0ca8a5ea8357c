/* Creating a task (POST /api/node/tasks): who it runs as, its spec.json, made durable
 * while its supervisor starts, and the registry entry. */
#include "tools/agent/tasks_internal.h"
#include "tools/agent/artifacts.h"

#include "backend/util.h"
#include "tools/agent/spares.h"
#include "tools/agent/supervisor.h"

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
#include <unistd.h>

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
		_cleanup_free_ char *rel =
			xasprintf("../%s/%s/%s", ARTIFACTS_STAGING, id, json_string_value(o));
		struct stat st;
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

/* Whether the directory of `id`, a task the registry does not know, is what a crash left
 * of a task that never started: a directory that a later agent would ignore too, without
 * a spec.json of this id that it can read (see task_write_spec()). */
static bool task_is_leftover(struct tasks *t, const char *id)
{
	char errbuf[256];
	struct task *k = NULL;
	int r = tasks_load_task(t, id, &k, errbuf, sizeof(errbuf));

	tasks_task_free(k);
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
	struct task *k = tasks_task_new(id, now);
	k->user = xstrdup(ident->user);
	k->uid = ident->uid;
	/* The optional fields that are null are as good as absent. */
	for (const char *const *f = (const char *const[]){"env", "cwd", "timeout_s", NULL}; *f; f++)
		if (json_is_null(json_object_get(doc, *f)))
			json_object_del(doc, *f);
	if (json_object_set_new(doc, "started_at", json_real(now)) < 0 ||
	    json_object_set_new(doc, "node", json_string(t->node)) < 0 ||
	    task_spec_add_identity(doc, ident) < 0) {
		tasks_task_free(k);
		return -ENOMEM;
	}
	r = task_write_spec(t, id, doc, &spec_fd);
	if (r == -EEXIST && task_is_leftover(t, id)) {
		log_warn("replacing %s/%s, the leftover of a task that never started", t->dir, id);
		tasks_remove_dir(t, id);
		r = task_write_spec(t, id, doc, &spec_fd);
	}
	if (r < 0) {
		log_err("cannot write %s/%s/%s: %s", t->dir, id, TASK_FILE_SPEC, strerror(-r));
		response_set_error(resp, 500, "cannot record task %s: %s", id, strerror(-r));
		if (r != -EEXIST)
			tasks_remove_dir(t, id);
		tasks_task_free(k);
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
		tasks_remove_dir(t, id);
		tasks_task_free(k);
		return NULL;
	}
	pthread_mutex_lock(&t->lock);
	tasks_load_result_locked(t, k);
	pthread_mutex_unlock(&t->lock);
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
		tasks_remove_dir(t, id);
		tasks_task_free(k);
		return NULL;
	}
	/* From here on the id is taken: its state comes from the files. */
	if (r < 0)
		log_err("task %s: %s", id, errbuf);
	tasks_load_pids(t, k);
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
		char *buf = xmalloc(size);
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
	ret->home = xstrdup(pw.pw_dir ? pw.pw_dir : "");
	ret->shell = xstrdup(pw.pw_shell && pw.pw_shell[0] ? pw.pw_shell : "/bin/sh");
	return 0;
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
		tasks_refresh_locked(t, k);
		r = tasks_reply_locked(t, k, 200, resp);
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
	tasks_insert_locked(t, k);
	if (k->state == TASK_RUNNING)
		log_info("task %s started as %s: pid %d, supervisor %d", id, k->user, (int) k->pid,
			 (int) k->sup.pid);
	/* It may have exited before it was in the registry, unseen by tasks_reap(). */
	tasks_reap_locked(t, k);
	tasks_refresh_locked(t, k);
	r = tasks_reply_locked(t, k, 201, resp);
	pthread_mutex_unlock(&t->lock);

out_unlock_create:
	pthread_mutex_unlock(&t->create_lock);
	task_identity_done(&ident);
	json_decref(doc);
	return r;
}
