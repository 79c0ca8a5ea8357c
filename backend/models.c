/* Models: each node's Ollama and OpenAI-compatible servers, fetched on demand, and the
 * commands written to nodes/NODE/models/ctl (pull, delete, load, unload). */
#include "backend/models.h"
#include "backend/endpoint.h"
#include "backend/rest.h"

#include <errno.h>
#include <math.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define OPS_MAX         20                  /* operations kept per node for ctl */
#define LIST_MAX_BODY   (4u << 20)          /* a model list larger than this is refused */
#define PULL_MAX_BYTES  1e15                /* a pull's total beyond this is not believed */
#define PULL_TIMEOUT_MS (12L * 3600 * 1000) /* a pull downloads gigabytes */
#define LOAD_TIMEOUT_MS (10L * 60 * 1000)   /* loading a large model from disk */
#define CTL_TIMEOUT_MS  (30L * 1000)        /* delete and unload: quick for Ollama */
#define HEAD_MAX        512                 /* bytes of a pull's answer kept for error messages */

enum fetch_kind { FETCH_TAGS, FETCH_PS, FETCH_OPENAI };

/* One model server of a node and what it answered last. */
struct server {
	char *service;        /* the config's service name */
	bool openai;          /* OpenAI-compatible (read-only), else Ollama */
	struct endpoint base; /* "SCHEME://ADDR:PORT" and the path, without a trailing '/' */
	char *path;           /* the path alone ("" or "/v1"), for messages */
	char *where;          /* "SERVICE at ADDR:PORT", for messages */
	json_t *tags;         /* Ollama: /api/tags "models", or NULL when never fetched */
	json_t *ps;           /* Ollama: /api/ps "models", or NULL */
	json_t *data;         /* OpenAI: /models "data", or NULL */
	char *error;          /* why the last fetch failed, or NULL */
};

struct waiter {
	models_done_fn done;
	void *arg;
	size_t pending; /* refreshes still running; loop thread only */
};

/* One refresh of a node: a GET per list per server, in parallel. Loop thread only. */
struct run {
	struct models *m;
	char *node;
	uint64_t started_us;
	long timeout_ms;
	struct server *servers; /* the answers being gathered */
	size_t n_servers;
	size_t pending; /* requests not answered yet */
	bool cancelled; /* the loop stopped under it: the answers say nothing of the servers */
	struct waiter **waiters;
	size_t n_waiters;
};

struct fetch {
	struct run *run;
	size_t idx; /* in run->servers */
	enum fetch_kind kind;
};

enum verb { VERB_PULL, VERB_DELETE, VERB_LOAD, VERB_UNLOAD, N_VERBS };
static const char *const verb_names[N_VERBS] = {"pull", "delete", "load", "unload"};

enum op_state { OP_RUNNING, OP_DONE, OP_FAILED };
static const char *const op_state_names[] = {"running", "done", "failed"};

/* One command written to ctl, as ctl shows it. */
struct op {
	uint64_t id;
	enum verb verb;
	char *model;
	enum op_state state;
	char *detail;      /* progress or outcome, or NULL */
	double started_at; /* wall */
};

struct mnode {
	char *name;
	struct server *servers; /* what was last fetched; protected by m->lock */
	size_t n_servers;
	bool ok;               /* the last refresh got every answer; protected by m->lock */
	uint64_t data_us;      /* monotonic start of the last refresh, 0 if none; m->lock */
	uint64_t tried_us;     /* monotonic end of the last refresh, 0 if none; m->lock */
	uint64_t dirty_us;     /* a command changed the models then; m->lock */
	struct run *run;       /* the refresh in flight; protected by m->lock */
	bool rerun;            /* refresh again when `run` ends; protected by m->lock */
	struct waiter **later; /* waiting for the refresh after `run`; m->lock */
	size_t n_later;
	char *alert;             /* the alert raised for this node, or NULL; loop thread only */
	struct op *ops[OPS_MAX]; /* oldest first; protected by m->lock */
	size_t n_ops;
};

struct models {
	struct loop *loop;
	struct cluster *cluster;
	pthread_mutex_t lock;
	struct mnode **nodes; /* protected by lock */
	size_t n_nodes;
	uint64_t next_op_id; /* protected by lock */
	double changed_at;   /* protected by lock */
};

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

/* ---- names ---- */

char *models_encode_name(const char *model)
{
	struct buf b;
	buf_init(&b);
	buf_append(&b, "", 0);
	for (const char *p = model; *p; p++) {
		if (*p == '%')
			buf_puts(&b, "%25");
		else if (*p == '/')
			buf_puts(&b, "%2F");
		else
			buf_append(&b, p, 1);
	}
	return buf_steal(&b, NULL);
}

char *models_decode_name(const char *file)
{
	char *out = malloc(strlen(file) + 1), *o = out;
	if (!out)
		return NULL;
	for (const char *p = file; *p;) {
		if (*p != '%') {
			*o++ = *p++;
		} else if (!strncmp(p, "%25", 3)) {
			*o++ = '%';
			p += 3;
		} else if (!strncmp(p, "%2F", 3)) {
			*o++ = '/';
			p += 3;
		} else {
			free(out);
			return NULL;
		}
	}
	*o = '\0';
	return out;
}

/* Ollama compares names case-insensitively and reads "qwen3" as "qwen3:latest". */
static bool same_model(const char *a, const char *b)
{
	if (!a || !b)
		return false;
	if (!strcasecmp(a, b))
		return true;
	size_t la = strlen(a), lb = strlen(b);
	const char *ta = strrchr(a, '/'), *tb = strrchr(b, '/');
	bool a_tag = strchr(ta ? ta : a, ':') != NULL, b_tag = strchr(tb ? tb : b, ':') != NULL;
	if (!a_tag && b_tag && lb == la + 7)
		return !strncasecmp(a, b, la) && !strcasecmp(b + la, ":latest");
	if (a_tag && !b_tag && la == lb + 7)
		return !strncasecmp(a, b, lb) && !strcasecmp(a + lb, ":latest");
	return false;
}

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

static const char *service_kind(const struct cfg_service *s)
{
	return s->kind ? s->kind : s->name;
}

static bool service_is_ollama(const struct cfg_service *s)
{
	return !strcmp(service_kind(s), "ollama");
}

static bool service_is_openai(const struct cfg_service *s)
{
	return !strcmp(service_kind(s), "openai");
}

static bool host_has_server(const struct cfg_host *h)
{
	for (size_t i = 0; i < h->n_services; i++)
		if (service_is_ollama(&h->services[i]) || service_is_openai(&h->services[i]))
			return true;
	return false;
}

static void server_init(struct server *sv, const struct config *cfg, const struct cfg_host *h,
			const struct cfg_service *s)
{
	memset(sv, 0, sizeof(*sv));
	sv->service = strdup(s->name);
	sv->openai = service_is_openai(s);
	/* an OpenAI-compatible API lives under /v1 unless the config says otherwise */
	const char *path = s->path && s->path[0] ? s->path : sv->openai ? "/v1" : "";
	size_t plen = strlen(path);
	while (plen && path[plen - 1] == '/')
		plen--;
	bool v6 = strchr(h->address, ':') != NULL;
	struct buf b;
	buf_init(&b);
	buf_printf(&b, "%s at %s%s%s:%d", s->name, v6 ? "[" : "", h->address, v6 ? "]" : "",
		   s->port);
	sv->where = buf_steal(&b, NULL);
	buf_printf(&b, "%s%.*s", plen && path[0] != '/' ? "/" : "", (int) plen, path);
	char who[300];
	snprintf(who, sizeof(who), "service %s of this host", s->name);
	endpoint_init(&sv->base, cfg, h->address, s->port, &s->transport, b.data ? b.data : "",
		      who);
	buf_free(&b);
	buf_printf(&b, "%s%.*s", plen && path[0] != '/' ? "/" : "", (int) plen, path);
	buf_append(&b, "", 0);
	sv->path = buf_steal(&b, NULL);
}

/* The model servers of a host: Ollama ones first, each kind in config order. New array. */
static struct server *servers_of(const struct config *cfg, const struct cfg_host *h, size_t *ret_n)
{
	struct server *svs = calloc(h->n_services + 1, sizeof(*svs));
	if (!svs)
		abort();
	size_t n = 0;
	for (int pass = 0; pass < 2; pass++)
		for (size_t i = 0; i < h->n_services; i++)
			if (pass == 0 ? service_is_ollama(&h->services[i])
				      : service_is_openai(&h->services[i]))
				server_init(&svs[n++], cfg, h, &h->services[i]);
	*ret_n = n;
	return svs;
}

static void servers_free(struct server *svs, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(svs[i].service);
		endpoint_clear(&svs[i].base);
		free(svs[i].path);
		free(svs[i].where);
		json_decref(svs[i].tags);
		json_decref(svs[i].ps);
		json_decref(svs[i].data);
		free(svs[i].error);
	}
	free(svs);
}

static struct server *server_find(struct server *svs, size_t n, const struct server *like)
{
	for (size_t i = 0; i < n; i++)
		if (svs[i].openai == like->openai && !strcmp(svs[i].service, like->service))
			return &svs[i];
	return NULL;
}

static bool servers_same_data(const struct server *a, size_t na, const struct server *b, size_t nb)
{
	if (na != nb)
		return false;
	for (size_t i = 0; i < na; i++) {
		if (strcmp(a[i].service, b[i].service) || a[i].openai != b[i].openai)
			return false;
		json_t *const pa[] = {a[i].tags, a[i].ps, a[i].data};
		json_t *const pb[] = {b[i].tags, b[i].ps, b[i].data};
		for (size_t k = 0; k < 3; k++)
			if ((pa[k] == NULL) != (pb[k] == NULL) ||
			    (pa[k] && !json_equal(pa[k], pb[k])))
				return false;
	}
	return true;
}

/* ---- nodes ---- */

/* Caller holds m->lock. */
static struct mnode *node_find(struct models *m, const char *name)
{
	for (size_t i = 0; i < m->n_nodes; i++)
		if (!strcmp(m->nodes[i]->name, name))
			return m->nodes[i];
	return NULL;
}

/* Caller holds m->lock. */
static struct mnode *node_get(struct models *m, const char *name)
{
	struct mnode *n = node_find(m, name);
	if (n)
		return n;
	n = calloc(1, sizeof(*n));
	struct mnode **nodes = realloc(m->nodes, (m->n_nodes + 1) * sizeof(*nodes));
	if (!n || !nodes)
		abort();
	n->name = strdup(name);
	m->nodes = nodes;
	m->nodes[m->n_nodes++] = n;
	return n;
}

static void op_free(struct op *op)
{
	if (!op)
		return;
	free(op->model);
	free(op->detail);
	free(op);
}

static void node_free(struct mnode *n)
{
	servers_free(n->servers, n->n_servers);
	for (size_t i = 0; i < n->n_ops; i++)
		op_free(n->ops[i]);
	free(n->later);
	free(n->alert);
	free(n->name);
	free(n);
}

static bool node_is_fresh(const struct mnode *n, const struct config *cfg, uint64_t now)
{
	return n->ok && n->data_us && n->data_us >= n->dirty_us &&
	       now - n->data_us <= (uint64_t) cfg->probe.max_age_ms * 1000u;
}

/* A server of the node failed at the last refresh, not long ago: don't make readers wait,
 * unless a command changed the node since (they should see what it did). */
static bool node_recently_failed(const struct mnode *n, const struct config *cfg, uint64_t now)
{
	return !n->ok && n->tried_us && n->dirty_us <= n->data_us &&
	       now - n->tried_us < (uint64_t) cfg->probe.interval_s * 1000000u;
}

/* Caller holds m->lock, on the loop thread: forgets nodes that left the config or lost their
 * model servers. Returns the names of those that had an alert raised (new array). */
static char **nodes_prune(struct models *m, const struct config *cfg, size_t *ret_n)
{
	char **alerted = NULL;
	size_t n_alerted = 0, k = 0;
	for (size_t i = 0; i < m->n_nodes; i++) {
		struct mnode *n = m->nodes[i];
		const struct cfg_host *h = config_find_host(cfg, n->name);
		if (n->run || (h && host_has_server(h))) {
			m->nodes[k++] = n;
			continue;
		}
		if (n->alert) {
			alerted = realloc(alerted, (n_alerted + 1) * sizeof(*alerted));
			if (!alerted)
				abort();
			alerted[n_alerted++] = strdup(n->name);
		}
		node_free(n);
		m->changed_at = clock_wall_s();
	}
	m->n_nodes = k;
	*ret_n = n_alerted;
	return alerted;
}

static void alert_key(const char *node, char *key, size_t len)
{
	snprintf(key, len, "models %s", node);
}

/* ---- refresh ---- */

static void run_finish(struct run *run);

static void run_free(struct run *run)
{
	servers_free(run->servers, run->n_servers);
	free(run->waiters);
	free(run->node);
	free(run);
}

static void waiters_append(struct waiter ***ws, size_t *n, struct waiter *w)
{
	struct waiter **a = realloc(*ws, (*n + 1) * sizeof(*a));
	if (!a)
		abort();
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

static void fetch_done(const struct http_response *r, void *arg)
{
	struct fetch *f = arg;
	struct run *run = f->run;
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
	fetch_done(&r, arg);
}

/* Loop thread. Completion is always asynchronous, so a run is never finished inside here. */
static void fetch_start(struct models *m, struct run *run, size_t idx, enum fetch_kind kind)
{
	struct fetch *f = calloc(1, sizeof(*f));
	if (!f)
		abort();
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
	if (loop_http(m->loop, &req, fetch_done, f) < 0 &&
	    loop_post(m->loop, fetch_not_started, f) < 0)
		abort();
	endpoint_clear(&url);
}

/* Loop thread, m->lock held: starts a refresh of n unless one runs. */
static void run_start(struct models *m, struct mnode *n, const struct cfg_host *h,
		      const struct config *cfg)
{
	if (n->run)
		return;
	struct run *run = calloc(1, sizeof(*run));
	if (!run)
		abort();
	run->m = m;
	run->node = strdup(n->name);
	run->started_us = clock_now_us();
	run->timeout_ms = cfg->probe.timeout_ms;
	run->servers = servers_of(cfg, h, &run->n_servers);
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

/* Loop thread: refreshes a node now, or once more after the refresh in flight when `changed`
 * (a command changed its models after that refresh started). */
static void node_kick(struct models *m, const char *name, bool changed)
{
	struct config *cfg = cluster_get_config(m->cluster);
	const struct cfg_host *h = config_find_host(cfg, name);
	pthread_mutex_lock(&m->lock);
	struct mnode *n = h && host_has_server(h) ? node_get(m, name) : NULL;
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
	struct config *cfg = cluster_get_config(m->cluster);
	uint64_t now = clock_now_us();
	bool alert_changed = false, ok = true;
	char *alert = NULL;
	struct waiter **later = NULL;
	size_t n_later = 0;
	struct buf why;
	buf_init(&why);

	pthread_mutex_lock(&m->lock);
	struct mnode *n = node_find(m, run->node);
	if (n && run->cancelled) {
		n->run = NULL;
	} else if (n) {
		for (size_t i = 0; i < run->n_servers; i++) {
			struct server *sv = &run->servers[i];
			if (!sv->error)
				continue;
			/* keep showing what a failed server held last */
			ok = false;
			struct server *old = server_find(n->servers, n->n_servers, sv);
			if (old && !sv->tags)
				sv->tags = json_incref(old->tags);
			if (old && !sv->ps)
				sv->ps = json_incref(old->ps);
			if (old && !sv->data)
				sv->data = json_incref(old->data);
			buf_printf(&why, "%s%s", why.len ? "; " : "", sv->error);
		}
		if (!servers_same_data(n->servers, n->n_servers, run->servers, run->n_servers))
			m->changed_at = clock_wall_s();
		servers_free(n->servers, n->n_servers);
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
			if (h && host_has_server(h))
				run_start(m, n, h, cfg);
		}
		if (ok ? n->alert != NULL : !n->alert || strcmp(n->alert, why.data)) {
			alert_changed = true;
			free(n->alert);
			n->alert = ok ? NULL : strdup(why.data);
			alert = ok ? NULL : strdup(why.data);
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
		alert_key(run->node, key, sizeof(key));
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
	struct config *cfg = cluster_get_config(m->cluster);
	uint64_t now = clock_now_us();
	struct waiter *w = NULL;
	if (rq->done) {
		w = calloc(1, sizeof(*w));
		if (!w)
			abort();
		w->done = rq->done;
		w->arg = rq->arg;
	}

	pthread_mutex_lock(&m->lock);
	size_t n_gone;
	char **gone = nodes_prune(m, cfg, &n_gone);
	for (size_t i = 0; i < cfg->n_hosts; i++) {
		const struct cfg_host *h = &cfg->hosts[i];
		if ((rq->node && strcmp(h->name, rq->node)) || !host_has_server(h))
			continue;
		struct mnode *n = node_get(m, h->name);
		bool failed = node_recently_failed(n, cfg, now);
		if (!node_is_fresh(n, cfg, now))
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
		alert_key(gone[i], key, sizeof(key));
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
		if ((node && strcmp(h->name, node)) || !host_has_server(h))
			continue;
		struct mnode *n = node_find(m, h->name);
		if (n && node_is_fresh(n, cfg, now))
			continue;
		if (n && node_recently_failed(n, cfg, now))
			kick = kick || !n->run;
		else
			wait = true;
	}
	pthread_mutex_unlock(&m->lock);
	if (!wait && !kick)
		goto out_unref;

	struct refresh_req *rq = calloc(1, sizeof(*rq));
	if (!rq) {
		r = wait ? -ENOMEM : 1;
		goto out_unref;
	}
	rq->m = m;
	rq->node = node ? strdup(node) : NULL;
	rq->done = wait ? done : NULL;
	rq->arg = arg;
	int pr = loop_post(m->loop, refresh_on_loop, rq);
	if (pr < 0) {
		free(rq->node);
		free(rq);
		r = wait ? pr : 1;
	} else {
		r = wait ? 0 : 1;
	}
out_unref:
	config_unref(cfg);
	return r;
}

/* ---- the model view ---- */

static json_t *copy_or_null(json_t *v)
{
	return v ? json_incref(v) : json_null();
}

static const char *entry_name(json_t *e)
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
	json_object_set_new(e, "size", copy_or_null(json_object_get(t, "size")));
	json_object_set_new(e, "family", copy_or_null(json_object_get(d, "family")));
	json_object_set_new(e, "parameter_size",
			    copy_or_null(json_object_get(d, "parameter_size")));
	json_object_set_new(e, "quantization",
			    copy_or_null(json_object_get(d, "quantization_level")));
	json_object_set_new(e, "digest", copy_or_null(json_object_get(src, "digest")));
	json_object_set_new(e, "modified_at", copy_or_null(json_object_get(t, "modified_at")));
	json_object_set_new(e, "loaded", json_boolean(p != NULL));
	json_object_set_new(e, "size_vram",
			    p ? copy_or_null(json_object_get(p, "size_vram")) : json_integer(0));
	json_object_set_new(e, "expires_at",
			    p ? copy_or_null(json_object_get(p, "expires_at")) : json_null());
	return e;
}

static json_t *openai_entry(const char *id, json_t *o)
{
	json_t *e = json_object();
	json_object_set_new(e, "name", json_string(id));
	json_object_set_new(e, "server", json_string("openai"));
	json_object_set_new(e, "id", json_string(id));
	json_object_set_new(e, "owned_by", copy_or_null(json_object_get(o, "owned_by")));
	json_object_set_new(e, "created", copy_or_null(json_object_get(o, "created")));
	return e;
}

static json_t *ps_find(json_t *ps, const char *name)
{
	size_t i;
	json_t *p;
	json_array_foreach (ps, i, p) {
		if (same_model(entry_name(p), name))
			return p;
	}
	return NULL;
}

/* Caller holds m->lock: every model of the node, name -> entry (new object). A name held by
 * several servers is shown as the first server has it. */
static json_t *node_entries(const struct mnode *n)
{
	json_t *all = json_object();
	for (size_t s = 0; s < n->n_servers; s++) {
		const struct server *sv = &n->servers[s];
		size_t i;
		json_t *v;
		if (sv->openai) {
			json_array_foreach (sv->data, i, v) {
				const char *id = json_string_value(json_object_get(v, "id"));
				if (id && id[0] && !json_object_get(all, id))
					json_object_set_new(all, id, openai_entry(id, v));
			}
			continue;
		}
		json_array_foreach (sv->tags, i, v) {
			const char *name = entry_name(v);
			if (name && name[0] && !json_object_get(all, name))
				json_object_set_new(all, name,
						    ollama_entry(name, v, ps_find(sv->ps, name)));
		}
		/* loaded but no longer listed (deleted while in memory) */
		json_array_foreach (sv->ps, i, v) {
			const char *name = entry_name(v);
			if (name && name[0] && !json_object_get(all, name))
				json_object_set_new(all, name, ollama_entry(name, NULL, v));
		}
	}
	return all;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/* Encoded, valid, sorted file names of the keys of `obj`. New NULL-terminated array. */
static char **file_names(json_t *obj, size_t *ret_n)
{
	char **names = calloc(json_object_size(obj) + 1, sizeof(*names));
	if (!names)
		abort();
	size_t k = 0;
	const char *key;
	json_t *v;
	json_object_foreach (obj, key, v) {
		char *f = models_encode_name(key);
		if (name_is_valid(f))
			names[k++] = f;
		else
			free(f);
	}
	qsort(names, k, sizeof(*names), cmp_str);
	*ret_n = k;
	return names;
}

static void put_json(struct buf *out, json_t *doc)
{
	char *s = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	if (s) {
		buf_puts(out, s);
		free(s);
	}
	buf_puts(out, "\n");
}

bool models_node_has_server(struct models *m, const char *node)
{
	struct config *cfg = cluster_get_config(m->cluster);
	const struct cfg_host *h = config_find_host(cfg, node);
	bool r = h && host_has_server(h);
	config_unref(cfg);
	return r;
}

char **models_node_list(struct models *m, const char *node, size_t *ret_n)
{
	pthread_mutex_lock(&m->lock);
	struct mnode *n = node_find(m, node);
	json_t *all = n ? node_entries(n) : json_object();
	pthread_mutex_unlock(&m->lock);
	char **names = file_names(all, ret_n);
	json_decref(all);
	return names;
}

int models_node_render(struct models *m, const char *node, const char *name, struct buf *out)
{
	int r = -ENOENT;
	uint64_t now = clock_now_us();
	double wall = clock_wall_s();
	pthread_mutex_lock(&m->lock);
	struct mnode *n = node_find(m, node);
	json_t *all = n ? node_entries(n) : NULL;
	json_t *e = json_incref(json_object_get(all, name));
	if (e) {
		char ts[32];
		clock_format_utc(wall - (double) (now - n->data_us) / 1e6, ts);
		json_object_set_new(e, "checked_at", json_string(ts));
		if (!n->ok && n->alert)
			json_object_set_new(e, "error", json_string(n->alert));
	}
	pthread_mutex_unlock(&m->lock);
	if (e) {
		put_json(out, e);
		r = 0;
	}
	json_decref(e);
	json_decref(all);
	return r;
}

/* How server sv holds model: MODELS_ABSENT, _PRESENT or _LOADED. Caller holds m->lock. */
static enum models_holding server_holds(const struct server *sv, const char *model)
{
	size_t i;
	json_t *v;
	if (sv->openai) {
		json_array_foreach (sv->data, i, v)
			if (same_model(json_string_value(json_object_get(v, "id")), model))
				return MODELS_PRESENT;
		return MODELS_ABSENT;
	}
	if (ps_find(sv->ps, model))
		return MODELS_LOADED;
	return ps_find(sv->tags, model) ? MODELS_PRESENT : MODELS_ABSENT;
}

enum models_holding models_node_holds(struct models *m, const char *node, const char *model)
{
	if (!models_node_has_server(m, node))
		return MODELS_NO_SERVER;
	enum models_holding best = MODELS_ABSENT;
	pthread_mutex_lock(&m->lock);
	struct mnode *n = node_find(m, node);
	for (size_t s = 0; n && s < n->n_servers; s++) {
		enum models_holding h = server_holds(&n->servers[s], model);
		if (h > best)
			best = h;
	}
	pthread_mutex_unlock(&m->lock);
	return best;
}

int models_server_for(struct models *m, const char *node, const char *model,
		      struct endpoint *ret_base, bool *ret_openai, char **ret_where)
{
	int r = -ENOENT;
	pthread_mutex_lock(&m->lock);
	struct mnode *n = node_find(m, node);
	const struct server *pick = NULL;
	enum models_holding best = MODELS_ABSENT;
	for (size_t s = 0; n && s < n->n_servers; s++) {
		enum models_holding h = server_holds(&n->servers[s], model);
		if (h > best) {
			best = h;
			pick = &n->servers[s];
		}
	}
	if (pick) {
		endpoint_init_sub(ret_base, &pick->base, "");
		*ret_openai = pick->openai;
		*ret_where = strdup(pick->where);
		r = 0;
	}
	pthread_mutex_unlock(&m->lock);
	return r;
}

/* Every node's entries, node -> (name -> entry), for the nodes in the config. New object. */
static json_t *cluster_entries(struct models *m)
{
	struct config *cfg = cluster_get_config(m->cluster);
	json_t *nodes = json_object();
	pthread_mutex_lock(&m->lock);
	for (size_t i = 0; i < cfg->n_hosts; i++) {
		struct mnode *n = node_find(m, cfg->hosts[i].name);
		if (n && host_has_server(&cfg->hosts[i]))
			json_object_set_new(nodes, n->name, node_entries(n));
	}
	pthread_mutex_unlock(&m->lock);
	config_unref(cfg);
	return nodes;
}

char **models_list(struct models *m, size_t *ret_n)
{
	json_t *nodes = cluster_entries(m), *names = json_object();
	const char *node, *name;
	json_t *all, *e;
	json_object_foreach (nodes, node, all) {
		json_object_foreach (all, name, e) {
			json_object_set(names, name, json_true());
		}
	}
	char **files = file_names(names, ret_n);
	json_decref(names);
	json_decref(nodes);
	return files;
}

int models_render_nodes(struct models *m, const char *name, bool loaded_only, struct buf *out)
{
	json_t *nodes = cluster_entries(m);
	bool found = false;
	const char *node;
	json_t *all;
	/* keys come in config order, which is sorted by name */
	json_object_foreach (nodes, node, all) {
		json_t *e = json_object_get(all, name);
		if (!e)
			continue;
		found = true;
		if (!loaded_only || json_is_true(json_object_get(e, "loaded")))
			buf_printf(out, "%s\n", node);
	}
	json_decref(nodes);
	return found ? 0 : -ENOENT;
}

int models_render_info(struct models *m, const char *name, struct buf *out)
{
	json_t *nodes = cluster_entries(m), *doc = NULL, *per_node = json_object();
	const char *node;
	json_t *all;
	json_object_foreach (nodes, node, all) {
		json_t *e = json_object_get(all, name);
		if (!e)
			continue;
		if (!doc || (json_is_null(json_object_get(doc, "family")) &&
			     json_is_string(json_object_get(e, "family")))) {
			json_decref(doc);
			doc = json_object();
			json_object_set_new(doc, "name", json_string(name));
			static const char *const model_keys[] = {"family", "parameter_size",
								 "quantization", "owned_by"};
			for (size_t k = 0; k < 4; k++)
				if (json_object_get(e, model_keys[k]))
					json_object_set(doc, model_keys[k],
							json_object_get(e, model_keys[k]));
		}
		json_t *one = json_object();
		static const char *const keys[] = {"server",      "size",   "digest",
						   "modified_at", "loaded", "size_vram",
						   "expires_at"};
		for (size_t k = 0; k < 7; k++)
			if (json_object_get(e, keys[k]))
				json_object_set(one, keys[k], json_object_get(e, keys[k]));
		json_object_set_new(per_node, node, one);
	}
	int r = -ENOENT;
	if (doc) {
		json_object_set(doc, "nodes", per_node);
		put_json(out, doc);
		r = 0;
	}
	json_decref(doc);
	json_decref(per_node);
	json_decref(nodes);
	return r;
}

double models_changed_at(struct models *m)
{
	pthread_mutex_lock(&m->lock);
	double t = m->changed_at;
	pthread_mutex_unlock(&m->lock);
	return t;
}

/* ---- operations ---- */

/* Caller holds m->lock. Makes room by dropping the oldest finished operation. */
static void node_add_op(struct mnode *n, struct op *op)
{
	if (n->n_ops == OPS_MAX) {
		size_t drop = 0;
		for (size_t i = 0; i < n->n_ops; i++)
			if (n->ops[i]->state != OP_RUNNING) {
				drop = i;
				break;
			}
		op_free(n->ops[drop]);
		memmove(&n->ops[drop], &n->ops[drop + 1], (n->n_ops - drop - 1) * sizeof(*n->ops));
		n->n_ops--;
	}
	n->ops[n->n_ops++] = op;
}

static void op_set(struct models *m, const char *node, uint64_t id, enum op_state state,
		   const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void op_set(struct models *m, const char *node, uint64_t id, enum op_state state,
		   const char *fmt, ...)
{
	struct buf b;
	buf_init(&b);
	va_list ap;
	va_start(ap, fmt);
	buf_vprintf(&b, fmt, ap);
	va_end(ap);
	pthread_mutex_lock(&m->lock);
	struct mnode *n = node_find(m, node);
	for (size_t i = 0; n && i < n->n_ops; i++) {
		struct op *op = n->ops[i];
		if (op->id != id)
			continue;
		op->state = state;
		free(op->detail);
		op->detail = buf_steal(&b, NULL);
		m->changed_at = clock_wall_s();
		break;
	}
	pthread_mutex_unlock(&m->lock);
	buf_free(&b);
}

void models_ctl_render(struct models *m, const char *node, struct buf *out)
{
	size_t before = out->len;
	pthread_mutex_lock(&m->lock);
	struct mnode *n = node_find(m, node);
	for (size_t i = 0; n && i < n->n_ops; i++) {
		const struct op *op = n->ops[i];
		char ts[32];
		clock_format_utc(op->started_at, ts);
		buf_printf(out, "%s %s %s %s%s%s\n", ts, verb_names[op->verb], op->model,
			   op_state_names[op->state], op->detail ? ": " : "",
			   op->detail ? op->detail : "");
	}
	pthread_mutex_unlock(&m->lock);
	if (out->len == before)
		buf_puts(out, "no model operations yet; write \"pull NAME\", \"delete NAME\", "
			      "\"load NAME\" or \"unload NAME\" here\n");
}

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
			job->error = strdup(error);
			op_set(job->m, job->node, job->op_id, OP_FAILED, "%s", error);
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
			op_set(job->m, job->node, job->op_id, OP_RUNNING, "%s: %d%% (%s of %s)",
			       status, (int) (c / t * 100.0), done, all);
		} else {
			op_set(job->m, job->node, job->op_id, OP_RUNNING, "%s", status);
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

static void job_done(const struct http_response *r, void *arg)
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
		why = strdup(job->error);
	} else if (r->error) {
		err = r->error;
		why = job->verb == VERB_PULL
			      ? job_reason(job, r, job->head.data ? job->head.data : "",
					   job->head.len)
			      : job_reason(job, r, r->body, r->body_len);
	} else if (job->verb == VERB_PULL && !job->success) {
		err = -EIO;
		why = strdup("the pull stream ended without success");
	}

	if (err) {
		op_set(m, job->node, job->op_id, OP_FAILED, "%s", why);
		/* before the answer, the writer's caller logs it */
		if (job->answered)
			log_warn("models: %s %s on %s failed: %s", verb_names[job->verb],
				 job->model, job->node, why);
		if (job->verb == VERB_PULL)
			cluster_add_event(m->cluster, "model", job->model, "pull on %s failed: %s",
					  job->node, why);
	} else {
		op_set(m, job->node, job->op_id, OP_DONE, "%s", done_words[job->verb]);
		if (job->verb == VERB_PULL || job->verb == VERB_DELETE)
			cluster_add_event(m->cluster, "model", job->model, "%s on %s",
					  event_words[job->verb], job->node);
	}
	/* the node's lists are stale now; a reader after the answer sees the refresh */
	if (err != -ECANCELED)
		node_kick(m, job->node, true);
	job_answer(job, err, err ? why : "");
	free(why);
	job_free(job);
}

static void job_start(void *arg)
{
	struct job *job = arg;
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
		op_set(job->m, job->node, job->op_id, OP_FAILED, "cannot start the request");
		job_answer(job, r, "cannot start the request");
		job_free(job);
		return;
	}
	if (job->verb == VERB_PULL)
		job->timer = loop_timer_add(job->m->loop, clock_now_us() + job->connect_ms * 1000u,
					    pull_silent, job);
}

/* The Ollama server of the node for `model`: one whose lists hold it, else the first. Caller
 * holds m->lock. Returns an index into svs, or -1 when the node has no Ollama server. */
static int pick_server(struct models *m, const char *node, const struct server *svs, size_t n,
		       const char *model)
{
	int first = -1;
	struct mnode *mn = node_find(m, node);
	for (size_t i = 0; i < n; i++) {
		if (svs[i].openai)
			continue;
		if (first < 0)
			first = (int) i;
		const struct server *known =
			mn ? server_find(mn->servers, mn->n_servers, &svs[i]) : NULL;
		if (known && (ps_find(known->tags, model) || ps_find(known->ps, model)))
			return (int) i;
	}
	return first;
}

static bool model_name_ok(const char *s)
{
	if (!s[0] || strlen(s) > 512)
		return false;
	for (const unsigned char *p = (const unsigned char *) s; *p; p++)
		if (*p <= ' ' || *p == 0x7f)
			return false;
	return true;
}

int models_ctl(struct models *m, const char *node, const char *cmd, models_ctl_fn done, void *arg,
	       char *errbuf, size_t errlen)
{
	_cleanup_free_ char *copy = strdup(cmd ? cmd : "");
	_cleanup_free_ char *name = NULL;
	if (!copy)
		return -ENOMEM;
	char *save = NULL;
	const char *word = strtok_r(copy, " \t\r\n", &save);
	const char *raw = word ? strtok_r(NULL, " \t\r\n", &save) : NULL;
	const char *extra = raw ? strtok_r(NULL, " \t\r\n", &save) : NULL;
	int verb = -1;

	if (!word) {
		snprintf(errbuf, errlen,
			 "empty command; write pull NAME, delete NAME, load NAME or "
			 "unload NAME");
		return -EINVAL;
	}
	for (int i = 0; i < N_VERBS; i++)
		if (!strcmp(word, verb_names[i]))
			verb = i;
	if (verb < 0) {
		const char *s = util_closest_word(word, verb_names, N_VERBS, 2);
		snprintf(errbuf, errlen,
			 "unknown command \"%s\"%s%s%s; write pull NAME, delete NAME, load NAME or "
			 "unload NAME",
			 word, s ? "; did you mean \"" : "", s ? s : "", s ? "\"" : "");
		return -EINVAL;
	}
	if (!raw) {
		snprintf(errbuf, errlen, "%s needs a model name: %s NAME", word, word);
		return -EINVAL;
	}
	if (extra) {
		snprintf(errbuf, errlen, "one command per write: %s NAME (got \"%s\" after \"%s\")",
			 word, extra, raw);
		return -EINVAL;
	}
	/* a file name copied from models/ works too: Ollama names never hold '%' */
	name = strchr(raw, '%') ? models_decode_name(raw) : NULL;
	if (!name)
		name = strdup(raw);
	if (!model_name_ok(name)) {
		snprintf(errbuf, errlen, "\"%s\" is not a model name", raw);
		return -EINVAL;
	}

	struct config *cfg = cluster_get_config(m->cluster);
	const struct cfg_host *h = config_find_host(cfg, node);
	if (!h) {
		snprintf(errbuf, errlen, "no node named %s", node);
		config_unref(cfg);
		return -ENOENT;
	}
	size_t n_svs;
	struct server *svs = servers_of(cfg, h, &n_svs);
	pthread_mutex_lock(&m->lock);
	int idx = pick_server(m, node, svs, n_svs, name);
	pthread_mutex_unlock(&m->lock);
	if (idx < 0) {
		if (n_svs)
			snprintf(
				errbuf, errlen,
				"%s has only OpenAI-compatible model servers, which are read-only; "
				"%s needs an Ollama server",
				node, word);
		else
			snprintf(errbuf, errlen,
				 "%s has no Ollama server; declare one in the config "
				 "(\"services\": {\"ollama\": {\"port\": 11434}})",
				 node);
		servers_free(svs, n_svs);
		config_unref(cfg);
		return -EOPNOTSUPP;
	}

	struct job *job = calloc(1, sizeof(*job));
	if (!job)
		abort();
	static const char *const paths[N_VERBS] = {"/api/pull", "/api/delete", "/api/generate",
						   "/api/generate"};
	json_t *body = json_pack("{s:s}", "model", name);
	if (verb == VERB_PULL)
		json_object_set_new(body, "stream", json_true());
	if (verb == VERB_LOAD || verb == VERB_UNLOAD)
		json_object_set_new(body, "stream", json_false());
	if (verb == VERB_UNLOAD)
		json_object_set_new(body, "keep_alive", json_integer(0));
	job->body = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(body);
	endpoint_init_sub(&job->url, &svs[idx].base, paths[verb]);
	job->where = strdup(svs[idx].where);
	job->m = m;
	job->node = strdup(node);
	job->verb = verb;
	job->model = strdup(name);
	job->connect_ms = cfg->probe.timeout_ms;
	job->timeout_ms = verb == VERB_PULL   ? PULL_TIMEOUT_MS
			  : verb == VERB_LOAD ? LOAD_TIMEOUT_MS
					      : CTL_TIMEOUT_MS;
	job->done = done;
	job->arg = arg;
	models_lines_init(&job->lines);
	buf_init(&job->head);
	servers_free(svs, n_svs);
	config_unref(cfg);

	struct op *op = calloc(1, sizeof(*op));
	if (!op)
		abort();
	op->verb = verb;
	op->model = strdup(name);
	op->state = OP_RUNNING;
	op->detail = strdup(verb == VERB_LOAD ? "loading" : "waiting for the server");
	op->started_at = clock_wall_s();
	pthread_mutex_lock(&m->lock);
	op->id = job->op_id = ++m->next_op_id;
	node_add_op(node_get(m, node), op);
	m->changed_at = op->started_at;
	pthread_mutex_unlock(&m->lock);

	int r = loop_post(m->loop, job_start, job);
	if (r < 0) {
		op_set(m, node, job->op_id, OP_FAILED, "cannot start the request");
		job_free(job);
		snprintf(errbuf, errlen, "cannot start the request: %s", strerror(-r));
	}
	return r;
}

/* ---- life ---- */

int models_new(struct loop *loop, struct cluster *cluster, struct models **ret)
{
	struct models *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->loop = loop;
	m->cluster = cluster;
	m->changed_at = clock_wall_s();
	pthread_mutex_init(&m->lock, NULL);
	*ret = m;
	return 0;
}

void models_free(struct models *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->n_nodes; i++)
		node_free(m->nodes[i]);
	free(m->nodes);
	pthread_mutex_destroy(&m->lock);
	free(m);
}

uint64_t models_node_refreshed_us(struct models *m, const char *node)
{
	pthread_mutex_lock(&m->lock);
	struct mnode *n = node_find(m, node);
	uint64_t r = n ? n->data_us : 0;
	pthread_mutex_unlock(&m->lock);
	return r;
}
