/* The task API's read side and cancel: the task object of TASKS-API.md, the listing with
 * its long poll, one task, its output and its cancel. */
#include "tools/agent/tasks_internal.h"

#include "backend/util.h"
#include "tools/agent/supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

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
	assert_held(&t->lock);
	bool running = k->state == TASK_RUNNING;
	json_t *o = json_pack(
		"{s:s, s:s, s:o, s:o, s:o, s:f, s:o, s:I, s:I}", "id", k->id, "state",
		task_state_names[k->state], "pid", json_int_or_null(k->pid, k->pid > 0),
		"exit_code", json_int_or_null(k->exit_code, k->exit_code >= 0), "signal",
		json_int_or_null(k->signal, k->signal > 0), "started_at", k->started_at,
		"finished_at", json_real_or_null(k->finished_at, k->finished_at > 0), "stdout_size",
		(json_int_t) (running ? tasks_stream_size(t, k, 0) : k->size[0]), "stderr_size",
		(json_int_t) (running ? tasks_stream_size(t, k, 1) : k->size[1]));
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

int tasks_reply_locked(struct tasks *t, const struct task *k, unsigned status,
		       struct response *resp)
{
	assert_held(&t->lock);
	json_t *o = task_to_json_locked(t, k);
	return o ? response_set_json(resp, status, o) : -ENOMEM;
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
		tasks_refresh_locked(t, t->v[i]);
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

/* Takes the lock, finds the task named by req->params[0] and refreshes it, and returns it
 * with the lock held; or answers 404, unlocks and returns NULL. */
static struct task *tasks_lookup_and_lock(struct tasks *t, struct request *req,
					  struct response *resp)
{
	const char *id = req->params[0];
	pthread_mutex_lock(&t->lock);
	struct task *k = tasks_id_is_valid(id) ? tasks_find_locked(t, id) : NULL;
	if (!k) {
		pthread_mutex_unlock(&t->lock);
		response_set_error(resp, 404, "no such task: %.200s", id);
		return NULL;
	}
	tasks_refresh_locked(t, k);
	return k;
}

int tasks_handle_get(struct tasks *t, struct request *req, struct response *resp)
{
	struct task *k = tasks_lookup_and_lock(t, req, resp);
	if (!k)
		return 0;
	int r = tasks_reply_locked(t, k, 200, resp);
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

	struct task *k = tasks_lookup_and_lock(t, req, resp);
	if (!k)
		return 0;
	tasks_task_path(k, stream, path);
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
	char *data = want ? xmalloc(want) : NULL;
	size_t got = 0;
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
	struct task *k = tasks_lookup_and_lock(t, req, resp);
	int r;

	if (!k)
		return 0;
	if (k->state != TASK_RUNNING) {
		r = tasks_reply_locked(t, k, 200, resp);
		goto out_unlock;
	}
	/* Running means the supervisor is alive: our unreaped child, or verified by
	 * tasks_refresh_locked() just now. Signal only once per task. */
	tasks_task_path(k, TASK_FILE_CANCEL, marker);
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
	r = tasks_reply_locked(t, k, 202, resp);

out_unlock:
	pthread_mutex_unlock(&t->lock);
	return r;
}
