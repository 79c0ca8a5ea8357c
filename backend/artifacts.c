/* Artifacts on the control plane: task records, kept copies, collection, the tree's view
 * (see artifacts.h; staging is in artifacts_stage.c). */
#include "backend/artifacts_internal.h"

#include "backend/digest.h"
#include "backend/endpoint.h"
#include "backend/spec.h"
#include "httpd/agent_api.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define RECORD_FILE     "record.json"
#define RECORD_MAX      (4 * 1024 * 1024)
#define RECORDS_KEPT    4096 /* records held in memory; more are read from disk */
#define LIST_TIMEOUT_MS 10000L
#define MIN_RATE_BPMS   1000ull /* bytes per ms a transfer is given time for */
#define BASE_TIMEOUT_MS 60000ull

/* ---- records ---- */

static char *task_dir(const struct artifacts *a, const char *task)
{
	return xasprintf("%s/%s", a->dir, task);
}

char *artifacts_kept_path(const struct artifacts *a, const char *task, const char *name)
{
	return xasprintf("%s/%s/files/%s", a->dir, task, name);
}

/* A task id is a name in our directory: never "." or "..", never a '/'. */
static bool task_is_valid(const char *task)
{
	return task && task[0] && task[0] != '.' && !strchr(task, '/') && strlen(task) < 256;
}

/* The record of task, or NULL: a new reference. */
json_t *artifacts_record_get(struct artifacts *a, const char *task)
{
	if (!task_is_valid(task))
		return NULL;
	pthread_mutex_lock(&a->lock);
	json_t *r = json_incref(json_object_get(a->records, task));
	pthread_mutex_unlock(&a->lock);
	if (r)
		return r;
	char *dir = task_dir(a, task), *path = xasprintf("%s/%s", dir, RECORD_FILE), *text = NULL;
	size_t len;
	if (file_read_all(path, RECORD_MAX, &text, &len) == 0)
		r = json_loadb(text, len, 0, NULL);
	free(text);
	free(path);
	free(dir);
	if (!json_is_object(r)) {
		json_decref(r);
		return NULL;
	}
	pthread_mutex_lock(&a->lock);
	if (json_object_size(a->records) >= RECORDS_KEPT)
		json_object_clear(a->records);
	json_object_set(a->records, task, r);
	pthread_mutex_unlock(&a->lock);
	return r;
}

static int mkdir_p(char *path, size_t from)
{
	for (char *p = path + from;; p++) {
		if (*p && *p != '/')
			continue;
		char c = *p;
		*p = '\0';
		int r = mkdir(path, 0700);
		*p = c;
		if (r < 0 && errno != EEXIST)
			return -errno;
		if (!c)
			return 0;
	}
}

/* Writes the record to disk (atomically) and into the cache. Steals `r`. */
static int record_put(struct artifacts *a, const char *task, json_t *r)
{
	char *dir = task_dir(a, task);
	char *path = xasprintf("%s/%s", dir, RECORD_FILE);
	char *tmp = xasprintf("%s/%s.tmp", dir, RECORD_FILE);
	int ret = mkdir_p(dir, strlen(a->dir));
	if (ret == 0 && json_dump_file(r, tmp, JSON_COMPACT) < 0)
		ret = -EIO;
	if (ret == 0 && rename(tmp, path) < 0)
		ret = -errno;
	if (ret < 0)
		unlink(tmp);
	free(tmp);
	free(path);
	free(dir);
	pthread_mutex_lock(&a->lock);
	if (json_object_size(a->records) >= RECORDS_KEPT)
		json_object_clear(a->records);
	json_object_set_new(a->records, task, r);
	pthread_mutex_unlock(&a->lock);
	return ret;
}

/* The entry of file `name` in record r (borrowed), or NULL. */
static json_t *record_file(const json_t *r, const char *name)
{
	size_t i;
	json_t *f;
	json_array_foreach (json_object_get(r, "files"), i, f)
		if (!strcmp(json_string_value(json_object_get(f, "name")), name))
			return f;
	return NULL;
}

/* An agent's file list, checked: only entries that are what an entry can be. */
static json_t *files_checked(const json_t *list)
{
	json_t *out = json_array();
	size_t i;
	json_t *f;
	json_array_foreach (json_object_get(list, "files"), i, f) {
		const char *name = json_string_value(json_object_get(f, "name"));
		const char *sha = json_string_value(json_object_get(f, "sha256"));
		json_t *size = json_object_get(f, "size");
		if (!name || !spec_path_is_relative(name) || !sha ||
		    strlen(sha) != DIGEST_HEX_LEN ||
		    strspn(sha, "0123456789abcdef") != DIGEST_HEX_LEN || !json_is_integer(size) ||
		    json_integer_value(size) < 0)
			continue;
		json_array_append_new(out, json_pack("{s:s, s:I, s:s}", "name", name, "size",
						     json_integer_value(size), "sha256", sha));
	}
	return out;
}

/* ---- requests to agents ---- */

/* Starts a request to the agent of `node`: 0, or -ENOENT when it is not in the config. */
int artifacts_agent_request(struct artifacts *a, const char *node, const char *method,
			    const char *path, const char *body, int body_fd, uint64_t fd_size,
			    long timeout_ms, void (*on_chunk)(const char *, size_t, void *),
			    http_done_fn done, void *arg)
{
	struct config *cfg = cluster_get_config(a->cluster);
	const struct cfg_host *h = config_find_host(cfg, node);
	if (!h) {
		config_unref(cfg);
		if (body_fd > 0)
			close(body_fd);
		return -ENOENT;
	}
	struct endpoint ep;
	endpoint_init_agent(&ep, cfg, h, path);
	struct http_request req = {
		.method = method,
		.token = h->token,
		.body = body,
		.body_len = body ? strlen(body) : 0,
		.connect_timeout_ms = 5000,
		.timeout_ms = timeout_ms,
		.on_chunk = on_chunk,
		.body_fd = body_fd,
		.body_fd_size = fd_size,
	};
	endpoint_apply(&ep, &req);
	int r = loop_http(a->loop, &req, done, arg);
	endpoint_clear(&ep);
	config_unref(cfg);
	return r;
}

long artifacts_transfer_timeout_ms(uint64_t size)
{
	uint64_t ms = BASE_TIMEOUT_MS + size / MIN_RATE_BPMS;
	return ms > LONG_MAX ? LONG_MAX : (long) ms;
}

/* Percent-encodes a relative path for a URL, keeping its '/'. */
void artifacts_url_path_append(struct buf *b, const char *s)
{
	for (const unsigned char *p = (const unsigned char *) s; *p; p++) {
		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		    (*p >= '0' && *p <= '9') || strchr("-._~/@", *p))
			buf_append(b, p, 1);
		else
			buf_printf(b, "%%%02X", *p);
	}
}

/* ---- fetching a file into the kept copies ---- */

struct fetch_waiter {
	artifacts_open_fn done; /* NULL: a collection's (done_fn below) */
	void (*collected)(void *arg, int err);
	void *arg;
	struct fetch_waiter *next;
};

struct fetch {
	struct artifacts *a;
	char *task, *name, *sha;
	uint64_t size, got;
	int fd;
	bool failed_write;
	struct digest d;
	char *path, *part;
	struct fetch_waiter *waiters;
	struct fetch *next;
};

static void fetch_chunk(const char *data, size_t len, void *arg)
{
	struct fetch *f = arg;
	if (f->failed_write || f->got + len > f->size) {
		f->failed_write = true;
		return;
	}
	digest_update(&f->d, data, len);
	for (size_t off = 0; off < len;) {
		ssize_t w = write(f->fd, data + off, len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0) {
			f->failed_write = true;
			return;
		}
		off += (size_t) w;
	}
	f->got += len;
}

static void fetch_finish(struct fetch *f, int err)
{
	struct artifacts *a = f->a;
	for (struct fetch **p = &a->fetches; *p; p = &(*p)->next)
		if (*p == f) {
			*p = f->next;
			break;
		}
	if (f->fd >= 0)
		close(f->fd);
	digest_clear(&f->d);
	if (err)
		unlink(f->part);
	struct fetch_waiter *w = f->waiters;
	while (w) {
		struct fetch_waiter *next = w->next;
		if (w->done) {
			int fd = err ? err : open(f->path, O_RDONLY | O_CLOEXEC);
			w->done(w->arg, fd < 0 && !err ? -errno : fd);
		} else
			w->collected(w->arg, err);
		free(w);
		w = next;
	}
	free(f->task);
	free(f->name);
	free(f->sha);
	free(f->path);
	free(f->part);
	free(f);
}

static void fetch_done(void *arg, const struct http_response *r)
{
	struct fetch *f = arg;
	int err = r->error;
	char hex[DIGEST_HEX_LEN + 1];
	digest_final_hex(&f->d, hex);
	if (!err && (f->failed_write || f->got != f->size))
		err = -EIO;
	if (!err && strcmp(hex, f->sha)) {
		log_warn("output %s of %s: its digest is %s, not %s as its node recorded; not kept",
			 f->name, f->task, hex, f->sha);
		err = -EBADMSG;
	}
	if (!err && (fsync(f->fd) < 0 || rename(f->part, f->path) < 0))
		err = -errno;
	if (err && err != -ECANCELED)
		log_warn("cannot keep output %s of %s: %s", f->name, f->task,
			 r->error ? r->error_text : strerror(-err));
	fetch_finish(f, err);
}

/* Loop thread: fetches output `name` (entry `e`) of record `rec` into the kept copies,
 * joining a fetch of the same file in flight, and adds `w` (owned) to those told. */
static void fetch_start(struct artifacts *a, const char *task, const json_t *rec, const json_t *e,
			struct fetch_waiter *w)
{
	assert(loop_is_current(a->loop));
	const char *name = json_string_value(json_object_get(e, "name"));
	for (struct fetch *f = a->fetches; f; f = f->next)
		if (!strcmp(f->task, task) && !strcmp(f->name, name)) {
			w->next = f->waiters;
			f->waiters = w;
			return;
		}
	struct fetch *f = xcalloc(1, sizeof(*f));
	f->a = a;
	f->task = xstrdup(task);
	f->name = xstrdup(name);
	f->sha = xstrdup(json_string_value(json_object_get(e, "sha256")));
	f->size = (uint64_t) json_integer_value(json_object_get(e, "size"));
	f->path = artifacts_kept_path(a, task, name);
	f->part = xasprintf("%s.part", f->path);
	f->waiters = w;
	f->next = a->fetches;
	a->fetches = f;
	digest_init(&f->d);
	f->fd = -1;
	int r = mkdir_p(f->part, strlen(a->dir));
	/* the last component is the file's: mkdir_p made it a directory */
	if (r == 0)
		rmdir(f->part);
	if (r == 0) {
		f->fd = open(f->part, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		r = f->fd < 0 ? -errno : 0;
	}
	if (r == 0) {
		struct buf path;
		buf_init(&path);
		buf_printf(&path, AGENT_API_TASKS "/%s/files/",
			   json_string_value(json_object_get(rec, "dispatch_id")));
		artifacts_url_path_append(&path, name);
		r = artifacts_agent_request(
			a, json_string_value(json_object_get(rec, "node")), "GET", path.data, NULL,
			0, 0, artifacts_transfer_timeout_ms(f->size), fetch_chunk, fetch_done, f);
		buf_free(&path);
		if (r == -ENOENT)
			r = -EHOSTDOWN; /* its node is not in the cluster any more */
	}
	if (r < 0)
		fetch_finish(f, r);
}

/* ---- collection at a task's end ---- */

struct collect {
	struct artifacts *a;
	char *task, *node, *did;
	json_t *record;
	size_t next; /* the next file to consider keeping */
	artifacts_done_fn done;
	void *arg;
};

static void collect_free(struct collect *c)
{
	free(c->task);
	free(c->node);
	free(c->did);
	json_decref(c->record);
	free(c);
}

static void collect_next(struct collect *c);

static void collect_kept(void *arg, int err)
{
	collect_next(arg);
}

/* Keeps the next file small enough, or finishes. */
static void collect_next(struct collect *c)
{
	struct config *cfg = cluster_get_config(c->a->cluster);
	uint64_t max = (uint64_t) cfg->artifacts.cache_max_bytes;
	config_unref(cfg);
	json_t *files = json_object_get(c->record, "files");
	while (c->next < json_array_size(files)) {
		json_t *e = json_array_get(files, c->next++);
		if ((uint64_t) json_integer_value(json_object_get(e, "size")) > max)
			continue;
		struct fetch_waiter *w = xcalloc(1, sizeof(*w));
		w->collected = collect_kept;
		w->arg = c;
		fetch_start(c->a, c->task, c->record, e, w);
		return;
	}
	c->done(c->arg, 0, NULL);
	collect_free(c);
}

static void collect_listed(void *arg, const struct http_response *r)
{
	struct collect *c = arg;
	json_t *doc = r->error ? NULL : json_loadb(r->body, r->body_len, 0, NULL);
	if (!json_is_object(doc)) {
		char why[512];
		snprintf(why, sizeof(why), "the file list of %s could not be fetched from %s: %s",
			 c->task, c->node, r->error ? r->error_text : "not a JSON object");
		json_decref(doc);
		c->done(c->arg, r->error ? r->error : -EBADMSG, why);
		collect_free(c);
		return;
	}
	c->record = json_pack("{s:s, s:s, s:s, s:f, s:o}", "task", c->task, "node", c->node,
			      "dispatch_id", c->did, "collected_at", clock_wall_s(), "files",
			      files_checked(doc));
	const char *err = json_string_value(json_object_get(doc, "error"));
	if (err)
		json_object_set_new(c->record, "error", json_string(err));
	json_decref(doc);
	record_put(c->a, c->task, json_incref(c->record));
	collect_next(c);
}

int artifacts_collect(struct artifacts *a, const char *task, const char *node,
		      const char *dispatch_id, artifacts_done_fn done, void *arg)
{
	assert(loop_is_current(a->loop));
	if (!task_is_valid(task))
		return -EINVAL;
	struct collect *c = xcalloc(1, sizeof(*c));
	c->a = a;
	c->task = xstrdup(task);
	c->node = xstrdup(node);
	c->did = xstrdup(dispatch_id);
	c->done = done;
	c->arg = arg;
	struct buf path;
	buf_init(&path);
	buf_printf(&path, AGENT_API_TASKS "/%s/files", dispatch_id);
	int r = artifacts_agent_request(a, node, "GET", path.data, NULL, 0, 0, LIST_TIMEOUT_MS,
					NULL, collect_listed, c);
	buf_free(&path);
	if (r < 0)
		collect_free(c);
	return r;
}

/* ---- the tree's view ---- */

int artifacts_lookup(struct artifacts *a, const char *task, const char *name, uint64_t *ret_size,
		     double *ret_mtime)
{
	json_t *rec = artifacts_record_get(a, task);
	if (!rec)
		return name[0] ? -ENOENT : 0; /* an empty files/ until the task ended */
	*ret_mtime = json_number_value(json_object_get(rec, "collected_at"));
	int r = -ENOENT;
	size_t n = strlen(name), i;
	json_t *f;
	json_array_foreach (json_object_get(rec, "files"), i, f) {
		const char *fn = json_string_value(json_object_get(f, "name"));
		if (!strcmp(fn, name)) {
			*ret_size = (uint64_t) json_integer_value(json_object_get(f, "size"));
			r = 1;
			break;
		}
		if (!n || (!strncmp(fn, name, n) && fn[n] == '/'))
			r = 0;
	}
	if (!name[0])
		r = 0;
	json_decref(rec);
	return r;
}

static int cmp_str(const void *x, const void *y)
{
	return strcmp(*(char *const *) x, *(char *const *) y);
}

char **artifacts_list(struct artifacts *a, const char *task, const char *name, size_t *ret_n)
{
	json_t *rec = artifacts_record_get(a, task);
	json_t *seen = json_object();
	size_t n = strlen(name), i;
	json_t *f;
	json_array_foreach (json_object_get(rec, "files"), i, f) {
		const char *fn = json_string_value(json_object_get(f, "name"));
		if (n && (strncmp(fn, name, n) || fn[n] != '/'))
			continue;
		const char *rest = fn + (n ? n + 1 : 0);
		const char *slash = strchr(rest, '/');
		char *seg = slash ? xstrndup(rest, (size_t) (slash - rest)) : xstrdup(rest);
		json_object_set_new(seen, seg, json_true());
		free(seg);
	}
	char **names = xcalloc(json_object_size(seen) + 1, sizeof(*names));
	size_t k = 0;
	const char *key;
	json_t *v;
	json_object_foreach (seen, key, v)
		names[k++] = xstrdup(key);
	qsort(names, k, sizeof(*names), cmp_str);
	*ret_n = k;
	json_decref(seen);
	json_decref(rec);
	return names;
}

struct open_job {
	struct artifacts *a;
	char *task;
	json_t *rec;
	json_t *entry;
	artifacts_open_fn done;
	void *arg;
};

static void open_on_loop(void *arg)
{
	struct open_job *j = arg;
	struct fetch_waiter *w = xcalloc(1, sizeof(*w));
	w->done = j->done;
	w->arg = j->arg;
	fetch_start(j->a, j->task, j->rec, j->entry, w);
	json_decref(j->rec);
	free(j->task);
	free(j);
}

int artifacts_open(struct artifacts *a, const char *task, const char *name, artifacts_open_fn done,
		   void *arg)
{
	json_t *rec = artifacts_record_get(a, task);
	json_t *e = rec ? record_file(rec, name) : NULL;
	if (!e) {
		json_decref(rec);
		return -ENOENT;
	}
	char *path = artifacts_kept_path(a, task, name);
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	free(path);
	if (fd >= 0) {
		json_decref(rec);
		return fd;
	}
	struct open_job *j = xcalloc(1, sizeof(*j));
	j->a = a;
	j->task = xstrdup(task);
	j->rec = rec;
	j->entry = e;
	j->done = done;
	j->arg = arg;
	loop_post(a->loop, open_on_loop, j);
	return -EINPROGRESS;
}

/* ---- life ---- */

int artifacts_new(struct loop *loop, struct cluster *cluster, const char *state_dir,
		  struct artifacts **ret)
{
	struct artifacts *a = xcalloc(1, sizeof(*a));
	a->loop = loop;
	a->cluster = cluster;
	a->dir = xasprintf("%s/artifacts", state_dir);
	if (mkdir(a->dir, 0700) < 0 && errno != EEXIST) {
		int r = -errno;
		free(a->dir);
		free(a);
		return r;
	}
	pthread_mutex_init(&a->lock, NULL);
	a->records = json_object();
	*ret = a;
	return 0;
}

void artifacts_free(struct artifacts *a)
{
	if (!a)
		return;
	while (a->fetches)
		fetch_finish(a->fetches, -ECANCELED);
	json_decref(a->records);
	pthread_mutex_destroy(&a->lock);
	free(a->dir);
	free(a);
}
