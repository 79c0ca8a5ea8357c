/* Models, fetching: a refresh of a node GETs every list of each of its model servers in
 * parallel on the loop thread (Ollama /api/tags and /api/ps, OpenAI /models), then swaps
 * the answers into the node under m->lock and raises or clears the node's alert. */
#include "backend/models_impl.h"
#include "backend/rest.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LIST_MAX_BODY (4u << 20) /* a model list larger than this is refused */

/* ---- refresh ---- */

static void run_finish(struct run *run);

static void run_free(struct run *run)
{
	models_servers_free(run->servers, run->n_servers);
	free(run->waiters);
	free(run->node);
	free(run);
}

static void waiters_append(struct waiter ***ws, size_t *n, struct waiter *w)
{
	struct waiter **a = xrealloc(*ws, (*n + 1) * sizeof(*a));
	a[(*n)++] = w;
	*ws = a;
}

/* Loop thread: one awaited refresh ended for each; the last one calls done. */
static void waiters_release(struct waiter **ws, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		struct waiter *w = ws[i];
		if (--w->pending == 0) {
			w->done(w->arg);
			free(w);
		}
	}
}

/* A sentence for a failed GET of a model list. */
static char *fetch_reason(const struct http_response *r, const struct server *sv, const char *path,
			  long timeout_ms)
{
	struct buf b;
	buf_init(&b);
	buf_printf(&b, "%s: ", sv->where);
	if (r->status) {
		char *msg = rest_error_message(r->body, r->body_len);
		buf_printf(&b, "GET %s%s answered HTTP %ld%s%s", sv->path, path, r->status,
			   msg[0] ? ": " : "", msg);
		free(msg);
	} else if (r->error == -ETIMEDOUT) {
		buf_printf(&b, "no answer within %ld ms", timeout_ms);
	} else if (r->error == -ECONNREFUSED) {
		buf_puts(&b, "connection refused (is the server running?)");
	} else {
		buf_puts(&b,
			 r->error_text && r->error_text[0] ? r->error_text : strerror(-r->error));
	}
	return buf_steal(&b, NULL);
}

static const char *fetch_path(enum fetch_kind kind)
{
	return kind == FETCH_TAGS ? "/api/tags" : kind == FETCH_PS ? "/api/ps" : "/models";
}

static void fetch_done(void *arg, const struct http_response *r)
{
	struct fetch *f = arg;
	struct run *run = f->run;
	assert(loop_is_current(run->m->loop));
	struct server *sv = &run->servers[f->idx];
	json_t *list = NULL;
	char *why = NULL;

	if (r->error == -ECANCELED) {
		run->cancelled = true;
	} else if (r->error && f->kind == FETCH_PS && r->status == 404) {
		list = json_array(); /* Ollama before 0.1.38 has no /api/ps: nothing known loaded */
	} else if (r->error) {
		why = fetch_reason(r, sv, fetch_path(f->kind), run->timeout_ms);
	} else {
		json_t *doc = json_loadb(r->body, r->body_len, 0, NULL);
		json_t *v = json_object_get(doc, f->kind == FETCH_OPENAI ? "data" : "models");
		if (json_is_array(v))
			list = json_incref(v);
		else if (json_is_object(doc) && json_is_null(v))
			list = json_array();
		json_decref(doc);
		if (!list) {
			struct buf b;
			buf_init(&b);
			buf_printf(&b, "%s: the answer to GET %s%s is not a model list", sv->where,
				   sv->path, fetch_path(f->kind));
			why = buf_steal(&b, NULL);
		}
	}
	if (list) {
		json_t **slot = f->kind == FETCH_TAGS ? &sv->tags
				: f->kind == FETCH_PS ? &sv->ps
						      : &sv->data;
		json_decref(*slot);
		*slot = list;
	}
	if (why && !sv->error)
		sv->error = why;
	else
		free(why);
	free(f);
	if (--run->pending == 0)
		run_finish(run);
}

static void fetch_not_started(void *arg)
{
	struct http_response r = {
		.error = -ENOMEM, .body = "", .error_text = "cannot start the request"};
	fetch_done(arg, &r);
}

/* Loop thread. Completion is always asynchronous, so a run is never finished inside here. */
static void fetch_start(struct models *m, struct run *run, size_t idx, enum fetch_kind kind)
{
	assert(loop_is_current(m->loop));
	struct fetch *f = xcalloc(1, sizeof(*f));
	f->run = run;
	f->idx = idx;
	f->kind = kind;
	struct endpoint url;
	endpoint_init_sub(&url, &run->servers[idx].base, fetch_path(kind));
	struct http_request req = {
		.method = "GET",
		.connect_timeout_ms = run->timeout_ms,
		.timeout_ms = run->timeout_ms,
		.max_body = LIST_MAX_BODY,
	};
	endpoint_apply(&url, &req);
	run->pending++;
	if (loop_http(m->loop, &req, fetch_done, f) < 0)
		loop_post(m->loop, fetch_not_started, f);
	endpoint_clear(&url);
}

/* Loop thread, m->lock held: starts a refresh of n unless one runs. */
static void run_start(struct models *m, struct mnode *n, const struct cfg_host *h,
		      const struct config *cfg)
{
	assert_held(&m->lock);
	if (n->run)
		return;
	struct run *run = xcalloc(1, sizeof(*run));
	run->m = m;
	run->node = xstrdup(n->name);
	run->started_us = clock_now_us();
	run->timeout_ms = cfg->probe.timeout_ms;
	run->servers = models_servers_of(cfg, h, &run->n_servers);
	if (!run->n_servers) {
		run_free(run);
		return;
	}
	n->run = run;
	run->waiters = n->later;
	run->n_waiters = n->n_later;
	n->later = NULL;
	n->n_later = 0;
	for (size_t i = 0; i < run->n_servers; i++) {
		if (run->servers[i].openai) {
			fetch_start(m, run, i, FETCH_OPENAI);
		} else {
			fetch_start(m, run, i, FETCH_TAGS);
			fetch_start(m, run, i, FETCH_PS);
		}
	}
}

void models_node_kick(struct models *m, const char *name, bool changed)
{
	struct config *cfg = cluster_get_config(m->cluster);
	const struct cfg_host *h = config_find_host(cfg, name);
	pthread_mutex_lock(&m->lock);
	struct mnode *n = h && models_host_has_server(h) ? models_node_get(m, name) : NULL;
	if (n && changed)
		n->dirty_us = clock_now_us();
	if (n && n->run)
		n->rerun = n->rerun || changed;
	else if (n)
		run_start(m, n, h, cfg);
	pthread_mutex_unlock(&m->lock);
	config_unref(cfg);
}

static void run_finish(struct run *run)
{
	struct models *m = run->m;
	assert(loop_is_current(m->loop));
	struct config *cfg = cluster_get_config(m->cluster);
	uint64_t now = clock_now_us();
	bool alert_changed = false, ok = true;
	char *alert = NULL;
	struct waiter **later = NULL;
	size_t n_later = 0;
	struct buf why;
	buf_init(&why);

	pthread_mutex_lock(&m->lock);
	struct mnode *n = models_node_find(m, run->node);
	if (n && run->cancelled) {
		n->run = NULL;
	} else if (n) {
		for (size_t i = 0; i < run->n_servers; i++) {
			struct server *sv = &run->servers[i];
			if (!sv->error)
				continue;
			/* keep showing what a failed server held last */
			ok = false;
			struct server *old = models_server_find(n->servers, n->n_servers, sv);
			if (old && !sv->tags)
				sv->tags = json_incref(old->tags);
			if (old && !sv->ps)
				sv->ps = json_incref(old->ps);
			if (old && !sv->data)
				sv->data = json_incref(old->data);
			buf_printf(&why, "%s%s", why.len ? "; " : "", sv->error);
		}
		if (!models_servers_same_data(n->servers, n->n_servers, run->servers,
					      run->n_servers))
			m->changed_at = clock_wall_s();
		models_servers_free(n->servers, n->n_servers);
		n->servers = run->servers;
		n->n_servers = run->n_servers;
		run->servers = NULL;
		run->n_servers = 0;
		n->ok = ok;
		n->data_us = run->started_us;
		n->tried_us = now;
		n->run = NULL;
		if (n->rerun) {
			const struct cfg_host *h = config_find_host(cfg, n->name);
			n->rerun = false;
			if (h && models_host_has_server(h))
				run_start(m, n, h, cfg);
		}
		if (ok ? n->alert != NULL : !n->alert || strcmp(n->alert, why.data)) {
			alert_changed = true;
			free(n->alert);
			n->alert = ok ? NULL : xstrdup(why.data);
			alert = ok ? NULL : xstrdup(why.data);
		}
	}
	if (n && !n->run) {
		later = n->later;
		n_later = n->n_later;
		n->later = NULL;
		n->n_later = 0;
	}
	pthread_mutex_unlock(&m->lock);

	if (alert_changed) {
		char key[300];
		models_alert_key(run->node, key, sizeof(key));
		if (alert)
			log_warn("models on %s: %s", run->node, alert);
		else
			log_info("models on %s: every model server answers again", run->node);
		cluster_set_alert(m->cluster, key, alert);
	}
	free(alert);
	buf_free(&why);
	config_unref(cfg);
	waiters_release(run->waiters, run->n_waiters);
	waiters_release(later, n_later);
	free(later);
	run_free(run);
}

struct refresh_req {
	struct models *m;
	char *node;          /* or NULL: every node */
	models_done_fn done; /* NULL: refresh in the background */
	void *arg;
};

static void refresh_on_loop(void *arg)
{
	struct refresh_req *rq = arg;
	struct models *m = rq->m;
	assert(loop_is_current(m->loop));
	struct config *cfg = cluster_get_config(m->cluster);
	uint64_t now = clock_now_us();
	struct waiter *w = NULL;
	if (rq->done) {
		w = xcalloc(1, sizeof(*w));
		w->done = rq->done;
		w->arg = rq->arg;
	}

	pthread_mutex_lock(&m->lock);
	size_t n_gone;
	char **gone = models_nodes_prune(m, cfg, &n_gone);
	for (size_t i = 0; i < cfg->n_hosts; i++) {
		const struct cfg_host *h = &cfg->hosts[i];
		if ((rq->node && strcmp(h->name, rq->node)) || !models_host_has_server(h))
			continue;
		struct mnode *n = models_node_get(m, h->name);
		bool failed = models_node_recently_failed(n, cfg, now);
		if (!models_node_is_fresh(n, cfg, now))
			run_start(m, n, h, cfg);
		if (!w || !n->run || failed)
			continue;
		/* a command changed the models after this refresh started: wait for the next */
		w->pending++;
		if (n->run->started_us < n->dirty_us)
			waiters_append(&n->later, &n->n_later, w);
		else
			waiters_append(&n->run->waiters, &n->run->n_waiters, w);
	}
	pthread_mutex_unlock(&m->lock);

	for (size_t i = 0; i < n_gone; i++) {
		char key[300];
		models_alert_key(gone[i], key, sizeof(key));
		cluster_set_alert(m->cluster, key, NULL);
		free(gone[i]);
	}
	free(gone);
	if (w && w->pending == 0) {
		w->done(w->arg);
		free(w);
	}
	config_unref(cfg);
	free(rq->node);
	free(rq);
}

int models_refresh(struct models *m, const char *node, models_done_fn done, void *arg)
{
	struct config *cfg = cluster_get_config(m->cluster);
	uint64_t now = clock_now_us();
	bool wait = false, kick = false;
	int r = 1;

	if (node && !config_find_host(cfg, node)) {
		r = -ENOENT;
		goto out_unref;
	}
	pthread_mutex_lock(&m->lock);
	for (size_t i = 0; i < cfg->n_hosts; i++) {
		const struct cfg_host *h = &cfg->hosts[i];
		if ((node && strcmp(h->name, node)) || !models_host_has_server(h))
			continue;
		struct mnode *n = models_node_find(m, h->name);
		if (n && models_node_is_fresh(n, cfg, now))
			continue;
		if (n && models_node_recently_failed(n, cfg, now))
			kick = kick || !n->run;
		else
			wait = true;
	}
	pthread_mutex_unlock(&m->lock);
	if (!wait && !kick)
		goto out_unref;

	struct refresh_req *rq = xcalloc(1, sizeof(*rq));
	rq->m = m;
	rq->node = node ? xstrdup(node) : NULL;
	rq->done = wait ? done : NULL;
	rq->arg = arg;
	loop_post(m->loop, refresh_on_loop, rq);
	r = wait ? 0 : 1;
out_unref:
	config_unref(cfg);
	return r;
}
