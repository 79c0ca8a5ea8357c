/* Models, the Ollama client: the entries of /api/tags and /api/ps, the NDJSON stream of a
 * pull, and the commands (POST /api/pull, DELETE /api/delete, load and unload through
 * POST /api/generate) as jobs on the loop thread. A job owns its request and is freed when
 * its answer came; its writer is answered once (job_answer). */
#include "backend/models_impl.h"
#include "backend/rest.h"

#include <errno.h>
#include <math.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define PULL_MAX_BYTES  1e15                /* a pull's total beyond this is not believed */
#define PULL_TIMEOUT_MS (12L * 3600 * 1000) /* a pull downloads gigabytes */
#define LOAD_TIMEOUT_MS (10L * 60 * 1000)   /* loading a large model from disk */
#define CTL_TIMEOUT_MS  (30L * 1000)        /* delete and unload: quick for Ollama */
#define HEAD_MAX        512                 /* bytes of a pull's answer kept for error messages */

/* A command on its way through the loop thread. Loop thread only. */
struct job {
	struct models *m;
	char *node;
	uint64_t op_id;
	enum verb verb;
	char *model;
	struct endpoint url;
	char *body;
	char *where;
	long connect_ms, timeout_ms;
	models_ctl_fn done;
	void *arg;
	bool answered;             /* done() was called */
	struct loop_timer *timer;  /* pull: answers the writer when the server stays silent */
	struct models_lines lines; /* pull: the NDJSON progress stream */
	struct buf head;           /* pull: the first bytes of the answer */
	bool heard;                /* pull: a status line came */
	bool success;              /* pull: {"status": "success"} came */
	char *error;               /* pull: the stream's {"error": ...}, or NULL */
};

/* ---- lines ---- */

void models_lines_init(struct models_lines *l)
{
	buf_init(&l->partial);
	l->skipping = false;
}

static void lines_emit(struct models_lines *l, models_line_fn fn, void *arg)
{
	size_t n = l->partial.len;
	if (n && l->partial.data[n - 1] == '\r')
		n--;
	if (n)
		fn(l->partial.data, n, arg);
	l->partial.len = 0;
	if (l->partial.data)
		l->partial.data[0] = '\0';
}

void models_lines_feed(struct models_lines *l, const char *data, size_t len, models_line_fn fn,
		       void *arg)
{
	while (len) {
		const char *nl = memchr(data, '\n', len);
		size_t take = nl ? (size_t) (nl - data) : len;
		if (!l->skipping) {
			if (l->partial.len + take > MODELS_LINE_MAX) {
				l->skipping = true;
				l->partial.len = 0;
			} else {
				buf_append(&l->partial, data, take);
			}
		}
		if (!nl)
			return;
		if (l->skipping)
			l->partial.len = 0;
		else
			lines_emit(l, fn, arg);
		l->skipping = false;
		data = nl + 1;
		len -= take + 1;
	}
}

void models_lines_finish(struct models_lines *l, models_line_fn fn, void *arg)
{
	if (!l->skipping && l->partial.len)
		lines_emit(l, fn, arg);
	buf_free(&l->partial);
	l->skipping = false;
}

/* ---- servers ---- */

/* ---- lists ---- */

static const char *ollama_entry_name(json_t *e)
{
	const char *s = json_string_value(json_object_get(e, "name"));
	return s && s[0] ? s : json_string_value(json_object_get(e, "model"));
}

static json_t *ollama_entry(const char *name, json_t *t, json_t *p)
{
	json_t *src = t ? t : p;
	json_t *d = json_object_get(src, "details");
	json_t *e = json_object();
	json_object_set_new(e, "name", json_string(name));
	json_object_set_new(e, "server", json_string("ollama"));
	json_object_set_new(e, "size", models_json_copy(json_object_get(t, "size")));
	json_object_set_new(e, "family", models_json_copy(json_object_get(d, "family")));
	json_object_set_new(e, "parameter_size",
			    models_json_copy(json_object_get(d, "parameter_size")));
	json_object_set_new(e, "quantization",
			    models_json_copy(json_object_get(d, "quantization_level")));
	json_object_set_new(e, "digest", models_json_copy(json_object_get(src, "digest")));
	json_object_set_new(e, "modified_at", models_json_copy(json_object_get(t, "modified_at")));
	json_object_set_new(e, "loaded", json_boolean(p != NULL));
	json_object_set_new(e, "size_vram",
			    p ? models_json_copy(json_object_get(p, "size_vram"))
			      : json_integer(0));
	json_object_set_new(e, "expires_at",
			    p ? models_json_copy(json_object_get(p, "expires_at")) : json_null());
	return e;
}

static json_t *ollama_list_find(json_t *ps, const char *name)
{
	size_t i;
	json_t *p;
	json_array_foreach (ps, i, p) {
		if (models_same_name(ollama_entry_name(p), name))
			return p;
	}
	return NULL;
}

void ollama_add_entries(const struct server *sv, json_t *all)
{
	size_t i;
	json_t *v;
	json_array_foreach (sv->tags, i, v) {
		const char *name = ollama_entry_name(v);
		if (name && name[0] && !json_object_get(all, name))
			json_object_set_new(all, name,
					    ollama_entry(name, v, ollama_list_find(sv->ps, name)));
	}
	/* loaded but no longer listed (deleted while in memory) */
	json_array_foreach (sv->ps, i, v) {
		const char *name = ollama_entry_name(v);
		if (name && name[0] && !json_object_get(all, name))
			json_object_set_new(all, name, ollama_entry(name, NULL, v));
	}
}

enum models_holding ollama_holds(const struct server *sv, const char *model)
{
	if (ollama_list_find(sv->ps, model))
		return MODELS_LOADED;
	return ollama_list_find(sv->tags, model) ? MODELS_PRESENT : MODELS_ABSENT;
}

/* The Ollama server of the node for `model`: one whose lists hold it, else the first. Caller
 * holds m->lock. Returns an index into svs, or -1 when the node has no Ollama server. */
int ollama_pick_server(struct models *m, const char *node, const struct server *svs, size_t n,
		       const char *model)
{
	int first = -1;
	struct mnode *mn = models_node_find(m, node);
	for (size_t i = 0; i < n; i++) {
		if (svs[i].openai)
			continue;
		if (first < 0)
			first = (int) i;
		const struct server *known =
			mn ? models_server_find(mn->servers, mn->n_servers, &svs[i]) : NULL;
		if (known &&
		    (ollama_list_find(known->tags, model) || ollama_list_find(known->ps, model)))
			return (int) i;
	}
	return first;
}

/* ---- commands ---- */

static void human_size(double bytes, char out[24])
{
	static const char *const units[] = {"B", "KB", "MB", "GB", "TB", "PB"};
	size_t u = 0;
	while (bytes >= 1000 && u < 5) {
		bytes /= 1000;
		u++;
	}
	if (u == 0)
		snprintf(out, 24, "%.0f B", bytes);
	else
		snprintf(out, 24, "%.1f %s", bytes, units[u]);
}

/* The errno of an error Ollama reported inside a pull's stream. */
static int stream_errno(const char *msg)
{
	if (strstr(msg, "does not exist") || strstr(msg, "not found"))
		return -ENOENT;
	if (strstr(msg, "invalid"))
		return -EINVAL;
	return -EIO;
}

static void job_free(struct job *job)
{
	free(job->node);
	free(job->model);
	endpoint_clear(&job->url);
	free(job->body);
	free(job->where);
	free(job->error);
	buf_free(&job->head);
	buf_free(&job->lines.partial);
	free(job);
}

/* Answers the writer of the command, once. */
static void job_answer(struct job *job, int err, const char *why)
{
	if (job->answered)
		return;
	job->answered = true;
	if (job->timer) {
		loop_timer_cancel(job->m->loop, job->timer);
		job->timer = NULL;
	}
	job->done(job->arg, err, why);
}

static void pull_line(const char *line, size_t len, void *arg)
{
	struct job *job = arg;
	json_t *doc = json_loadb(line, len, 0, NULL);
	const char *error = json_string_value(json_object_get(doc, "error"));
	const char *status = json_string_value(json_object_get(doc, "status"));
	if (error) {
		if (!job->error) {
			job->error = xstrdup(error);
			models_op_set(job->m, job->node, job->op_id, OP_FAILED, "%s", error);
		}
		job_answer(job, stream_errno(error), error);
	} else if (status && !job->error) {
		json_t *total = json_object_get(doc, "total");
		double t = json_number_value(total);
		double c = json_number_value(json_object_get(doc, "completed"));
		job->heard = true;
		/* numbers from the network: a percentage only of sizes a download can have */
		if (isfinite(t) && isfinite(c) && t >= 1 && t <= PULL_MAX_BYTES && c >= 0 &&
		    c <= t) {
			char done[24], all[24];
			human_size(c, done);
			human_size(t, all);
			models_op_set(job->m, job->node, job->op_id, OP_RUNNING,
				      "%s: %d%% (%s of %s)", status, (int) (c / t * 100.0), done,
				      all);
		} else {
			models_op_set(job->m, job->node, job->op_id, OP_RUNNING, "%s", status);
		}
		if (!strcmp(status, "success"))
			job->success = true;
		/* the download started (or there was nothing to download): accepted */
		if (job->success || total)
			job_answer(job, 0, "");
	}
	json_decref(doc);
}

static void pull_chunk(const char *data, size_t len, void *arg)
{
	struct job *job = arg;
	if (job->head.len < HEAD_MAX)
		buf_append(&job->head, data,
			   len < HEAD_MAX - job->head.len ? len : HEAD_MAX - job->head.len);
	models_lines_feed(&job->lines, data, len, pull_line, job);
}

/* The pull's deadline for a first word: the writer is answered, the pull goes on. */
static void pull_silent(void *arg)
{
	struct job *job = arg;
	job->timer = NULL;
	if (job->heard) {
		job_answer(job, 0, "");
		return;
	}
	char why[400];
	snprintf(why, sizeof(why),
		 "no answer from %s within %ld ms; the pull goes on and ctl shows how it ends",
		 job->where, job->connect_ms);
	job_answer(job, -ETIMEDOUT, why);
}

static char *job_reason(const struct job *job, const struct http_response *r, const char *body,
			size_t len)
{
	struct buf b;
	buf_init(&b);
	if (r->status) {
		char *msg = rest_error_message(body, len);
		if (msg[0])
			buf_puts(&b, msg);
		else
			buf_printf(&b, "%s answered HTTP %ld", job->where, r->status);
		free(msg);
	} else if (r->error == -ECANCELED) {
		buf_puts(&b, "cancelled: clusterfs is stopping");
	} else {
		buf_printf(&b, "%s: %s", job->where,
			   r->error_text && r->error_text[0] ? r->error_text : strerror(-r->error));
	}
	return buf_steal(&b, NULL);
}

static void job_done(void *arg, const struct http_response *r)
{
	struct job *job = arg;
	struct models *m = job->m;
	int err = 0;
	char *why = NULL;
	static const char *const done_words[N_VERBS] = {"success", "deleted", "loaded", "unloaded"};
	static const char *const event_words[N_VERBS] = {"pulled", "deleted", "loaded", "unloaded"};

	if (job->verb == VERB_PULL)
		models_lines_finish(&job->lines, pull_line, job);
	if (job->error) {
		err = stream_errno(job->error);
		why = xstrdup(job->error);
	} else if (r->error) {
		err = r->error;
		why = job->verb == VERB_PULL
			      ? job_reason(job, r, job->head.data ? job->head.data : "",
					   job->head.len)
			      : job_reason(job, r, r->body, r->body_len);
	} else if (job->verb == VERB_PULL && !job->success) {
		err = -EIO;
		why = xstrdup("the pull stream ended without success");
	}

	if (err) {
		models_op_set(m, job->node, job->op_id, OP_FAILED, "%s", why);
		/* before the answer, the writer's caller logs it */
		if (job->answered)
			log_warn("models: %s %s on %s failed: %s", models_verb_names[job->verb],
				 job->model, job->node, why);
		if (job->verb == VERB_PULL)
			cluster_add_event(m->cluster, "model", job->model, "pull on %s failed: %s",
					  job->node, why);
	} else {
		models_op_set(m, job->node, job->op_id, OP_DONE, "%s", done_words[job->verb]);
		if (job->verb == VERB_PULL || job->verb == VERB_DELETE)
			cluster_add_event(m->cluster, "model", job->model, "%s on %s",
					  event_words[job->verb], job->node);
	}
	/* the node's lists are stale now; a reader after the answer sees the refresh */
	if (err != -ECANCELED)
		models_node_kick(m, job->node, true);
	job_answer(job, err, err ? why : "");
	free(why);
	job_free(job);
}

static void job_start(void *arg)
{
	struct job *job = arg;
	assert(loop_is_current(job->m->loop));
	struct http_request req = {
		.method = job->verb == VERB_DELETE ? "DELETE" : "POST",
		.body = job->body,
		.body_len = strlen(job->body),
		.connect_timeout_ms = job->connect_ms,
		.timeout_ms = job->timeout_ms,
		.max_body = 1u << 20,
		.on_chunk = job->verb == VERB_PULL ? pull_chunk : NULL,
	};
	endpoint_apply(&job->url, &req);
	int r = loop_http(job->m->loop, &req, job_done, job);
	if (r < 0) {
		models_op_set(job->m, job->node, job->op_id, OP_FAILED, "cannot start the request");
		job_answer(job, r, "cannot start the request");
		job_free(job);
		return;
	}
	if (job->verb == VERB_PULL)
		job->timer = loop_timer_add(job->m->loop, clock_now_us() + job->connect_ms * 1000u,
					    pull_silent, job);
}

struct job *ollama_job_new(struct models *m, const char *node, enum verb verb, const char *model,
			   const struct server *sv, long connect_ms, models_ctl_fn done, void *arg)
{
	struct job *job = xcalloc(1, sizeof(*job));
	static const char *const paths[N_VERBS] = {"/api/pull", "/api/delete", "/api/generate",
						   "/api/generate"};
	json_t *body = json_pack("{s:s}", "model", model);
	if (verb == VERB_PULL)
		json_object_set_new(body, "stream", json_true());
	if (verb == VERB_LOAD || verb == VERB_UNLOAD)
		json_object_set_new(body, "stream", json_false());
	if (verb == VERB_UNLOAD)
		json_object_set_new(body, "keep_alive", json_integer(0));
	job->body = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(body);
	endpoint_init_sub(&job->url, &sv->base, paths[verb]);
	job->where = xstrdup(sv->where);
	job->m = m;
	job->node = xstrdup(node);
	job->verb = verb;
	job->model = xstrdup(model);
	job->connect_ms = connect_ms;
	job->timeout_ms = verb == VERB_PULL   ? PULL_TIMEOUT_MS
			  : verb == VERB_LOAD ? LOAD_TIMEOUT_MS
					      : CTL_TIMEOUT_MS;
	job->done = done;
	job->arg = arg;
	models_lines_init(&job->lines);
	buf_init(&job->head);
	return job;
}

void ollama_job_post(struct job *job, uint64_t op_id)
{
	job->op_id = op_id;
	loop_post(job->m->loop, job_start, job);
}
