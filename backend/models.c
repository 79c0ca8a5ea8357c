/* Models: the model view (each node's Ollama and OpenAI-compatible servers, from the config,
 * and what they hold), the encoding of model names as file names, and the commands written
 * to nodes/NODE/models/ctl (pull, delete, load, unload) with the operations ctl shows.
 * Fetching lives in backend/models_refresh.c, the servers' APIs in backend/ollama.c and
 * backend/openai.c; the state they share is declared in backend/models_impl.h. */
#include "backend/models.h"
#include "backend/models_impl.h"
#include "backend/ctl.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const char *const models_verb_names[N_VERBS] = {"pull", "delete", "load", "unload"};
const char *const models_op_state_names[] = {"running", "done", "failed"};

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
	char *out = xmalloc(strlen(file) + 1), *o = out;
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
bool models_same_name(const char *a, const char *b)
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

bool models_host_has_server(const struct cfg_host *h)
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
	sv->service = xstrdup(s->name);
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
struct server *models_servers_of(const struct config *cfg, const struct cfg_host *h, size_t *ret_n)
{
	struct server *svs = xcalloc(h->n_services + 1, sizeof(*svs));
	size_t n = 0;
	for (int pass = 0; pass < 2; pass++)
		for (size_t i = 0; i < h->n_services; i++)
			if (pass == 0 ? service_is_ollama(&h->services[i])
				      : service_is_openai(&h->services[i]))
				server_init(&svs[n++], cfg, h, &h->services[i]);
	*ret_n = n;
	return svs;
}

void models_servers_free(struct server *svs, size_t n)
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

struct server *models_server_find(struct server *svs, size_t n, const struct server *like)
{
	for (size_t i = 0; i < n; i++)
		if (svs[i].openai == like->openai && !strcmp(svs[i].service, like->service))
			return &svs[i];
	return NULL;
}

bool models_servers_same_data(const struct server *a, size_t na, const struct server *b, size_t nb)
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
struct mnode *models_node_find(struct models *m, const char *name)
{
	for (size_t i = 0; i < m->n_nodes; i++)
		if (!strcmp(m->nodes[i]->name, name))
			return m->nodes[i];
	return NULL;
}

/* Caller holds m->lock. */
struct mnode *models_node_get(struct models *m, const char *name)
{
	struct mnode *n = models_node_find(m, name);
	if (n)
		return n;
	n = xcalloc(1, sizeof(*n));
	struct mnode **nodes = xrealloc(m->nodes, (m->n_nodes + 1) * sizeof(*nodes));
	n->name = xstrdup(name);
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
	models_servers_free(n->servers, n->n_servers);
	for (size_t i = 0; i < n->n_ops; i++)
		op_free(n->ops[i]);
	free(n->later);
	free(n->alert);
	free(n->name);
	free(n);
}

bool models_node_is_fresh(const struct mnode *n, const struct config *cfg, uint64_t now)
{
	return n->ok && n->data_us && n->data_us >= n->dirty_us &&
	       now - n->data_us <= (uint64_t) cfg->probe.max_age_ms * 1000u;
}

/* A server of the node failed at the last refresh, not long ago: don't make readers wait,
 * unless a command changed the node since (they should see what it did). */
bool models_node_recently_failed(const struct mnode *n, const struct config *cfg, uint64_t now)
{
	return !n->ok && n->tried_us && n->dirty_us <= n->data_us &&
	       now - n->tried_us < (uint64_t) cfg->probe.interval_s * 1000000u;
}

/* Caller holds m->lock, on the loop thread: forgets nodes that left the config or lost their
 * model servers. Returns the names of those that had an alert raised (new array). */
char **models_nodes_prune(struct models *m, const struct config *cfg, size_t *ret_n)
{
	assert(loop_is_current(m->loop));
	char **alerted = NULL;
	size_t n_alerted = 0, k = 0;
	for (size_t i = 0; i < m->n_nodes; i++) {
		struct mnode *n = m->nodes[i];
		const struct cfg_host *h = config_find_host(cfg, n->name);
		if (n->run || (h && models_host_has_server(h))) {
			m->nodes[k++] = n;
			continue;
		}
		if (n->alert) {
			alerted = xrealloc(alerted, (n_alerted + 1) * sizeof(*alerted));
			alerted[n_alerted++] = xstrdup(n->name);
		}
		node_free(n);
		m->changed_at = clock_wall_s();
	}
	m->n_nodes = k;
	*ret_n = n_alerted;
	return alerted;
}

void models_alert_key(const char *node, char *key, size_t len)
{
	snprintf(key, len, "models %s", node);
}

/* ---- the model view ---- */

json_t *models_json_copy(json_t *v)
{
	return v ? json_incref(v) : json_null();
}

/* Caller holds m->lock: every model of the node, name -> entry (new object). A name held by
 * several servers is shown as the first server has it. */
static json_t *node_entries(const struct mnode *n)
{
	json_t *all = json_object();
	for (size_t s = 0; s < n->n_servers; s++) {
		if (n->servers[s].openai)
			openai_add_entries(&n->servers[s], all);
		else
			ollama_add_entries(&n->servers[s], all);
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
	char **names = xcalloc(json_object_size(obj) + 1, sizeof(*names));
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

bool models_node_has_server(struct models *m, const char *node)
{
	struct config *cfg = cluster_get_config(m->cluster);
	const struct cfg_host *h = config_find_host(cfg, node);
	bool r = h && models_host_has_server(h);
	config_unref(cfg);
	return r;
}

char **models_node_list(struct models *m, const char *node, size_t *ret_n)
{
	pthread_mutex_lock(&m->lock);
	struct mnode *n = models_node_find(m, node);
	json_t *all = n ? node_entries(n) : json_object();
	pthread_mutex_unlock(&m->lock);
	char **names = file_names(all, ret_n);
	json_decref(all);
	return names;
}

json_t *models_node_entry(struct models *m, const char *node, const char *name)
{
	uint64_t now = clock_now_us();
	double wall = clock_wall_s();
	pthread_mutex_lock(&m->lock);
	struct mnode *n = models_node_find(m, node);
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
	json_decref(all);
	return e;
}

/* How server sv holds model: MODELS_ABSENT, _PRESENT or _LOADED. Caller holds m->lock. */
static enum models_holding server_holds(const struct server *sv, const char *model)
{
	return sv->openai ? openai_holds(sv, model) : ollama_holds(sv, model);
}

enum models_holding models_node_holds(struct models *m, const char *node, const char *model)
{
	if (!models_node_has_server(m, node))
		return MODELS_NO_SERVER;
	enum models_holding best = MODELS_ABSENT;
	pthread_mutex_lock(&m->lock);
	struct mnode *n = models_node_find(m, node);
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
	struct mnode *n = models_node_find(m, node);
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
		*ret_where = xstrdup(pick->where);
		r = 0;
	}
	pthread_mutex_unlock(&m->lock);
	return r;
}

json_t *models_cluster_view(struct models *m)
{
	struct config *cfg = cluster_get_config(m->cluster);
	json_t *nodes = json_object();
	pthread_mutex_lock(&m->lock);
	for (size_t i = 0; i < cfg->n_hosts; i++) {
		struct mnode *n = models_node_find(m, cfg->hosts[i].name);
		if (n && models_host_has_server(&cfg->hosts[i]))
			json_object_set_new(nodes, n->name, node_entries(n));
	}
	pthread_mutex_unlock(&m->lock);
	config_unref(cfg);
	return nodes;
}

char **models_list(struct models *m, size_t *ret_n)
{
	json_t *nodes = models_cluster_view(m), *names = json_object();
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

void models_op_set(struct models *m, const char *node, uint64_t id, enum op_state state,
		   const char *fmt, ...)
{
	struct buf b;
	buf_init(&b);
	va_list ap;
	va_start(ap, fmt);
	buf_vprintf(&b, fmt, ap);
	va_end(ap);
	pthread_mutex_lock(&m->lock);
	struct mnode *n = models_node_find(m, node);
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

size_t models_ops(struct models *m, const char *node, struct models_op_view **ret)
{
	*ret = NULL;
	pthread_mutex_lock(&m->lock);
	struct mnode *n = models_node_find(m, node);
	size_t k = n ? n->n_ops : 0;
	struct models_op_view *v = k ? xcalloc(k, sizeof(*v)) : NULL;
	for (size_t i = 0; i < k; i++) {
		const struct op *op = n->ops[i];
		v[i].started_at = op->started_at;
		v[i].verb = models_verb_names[op->verb];
		v[i].model = xstrdup(op->model);
		v[i].state = models_op_state_names[op->state];
		v[i].detail = op->detail ? xstrdup(op->detail) : NULL;
	}
	pthread_mutex_unlock(&m->lock);
	*ret = v;
	return k;
}

void models_ops_free(struct models_op_view *ops, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(ops[i].model);
		free(ops[i].detail);
	}
	free(ops);
}

/* ---- ctl ---- */

static bool model_name_ok(const char *s)
{
	if (!s[0] || strlen(s) > 512)
		return false;
	for (const unsigned char *p = (const unsigned char *) s; *p; p++)
		if (*p <= ' ' || *p == 0x7f)
			return false;
	return true;
}

static const struct ctl_word ctl_words[N_VERBS] = {
	{"pull", "NAME", "a model name"},
	{"delete", "NAME", "a model name"},
	{"load", "NAME", "a model name"},
	{"unload", "NAME", "a model name"},
};

/* The verb and the model name (new string) of a ctl command. Returns 0 or -errno with the
 * sentence in errbuf. */
static int ctl_parse_command(const char *cmd, enum verb *ret_verb, char **ret_name, char *errbuf,
			     size_t errlen)
{
	struct ctl_command c;
	int r = ctl_parse(cmd, ctl_words, N_VERBS, &c, errbuf, errlen);
	if (r < 0)
		return r;
	const char *raw = c.arg;
	/* a file name copied from models/ works too: Ollama names never hold '%' */
	char *name = strchr(raw, '%') ? models_decode_name(raw) : NULL;
	if (!name)
		name = xstrdup(raw);
	if (!model_name_ok(name)) {
		snprintf(errbuf, errlen, "\"%s\" is not a model name", raw);
		free(name);
		ctl_command_clear(&c);
		return -EINVAL;
	}
	*ret_verb = c.word;
	*ret_name = name;
	ctl_command_clear(&c);
	return 0;
}

/* The job for the command, on the Ollama server of node that suits the model. Returns 0 or
 * -errno with the sentence in errbuf. */
static int ctl_make_job(struct models *m, const char *node, enum verb verb, const char *name,
			models_ctl_fn done, void *arg, struct job **ret_job, char *errbuf,
			size_t errlen)
{
	struct config *cfg = cluster_get_config(m->cluster);
	const struct cfg_host *h = config_find_host(cfg, node);
	if (!h) {
		snprintf(errbuf, errlen, "no node named %s", node);
		config_unref(cfg);
		return -ENOENT;
	}
	size_t n_svs;
	struct server *svs = models_servers_of(cfg, h, &n_svs);
	pthread_mutex_lock(&m->lock);
	int idx = ollama_pick_server(m, node, svs, n_svs, name);
	pthread_mutex_unlock(&m->lock);
	int r = 0;
	if (idx >= 0) {
		*ret_job = ollama_job_new(m, node, verb, name, &svs[idx], cfg->probe.timeout_ms,
					  done, arg);
	} else if (n_svs) {
		snprintf(errbuf, errlen,
			 "%s has only OpenAI-compatible model servers, which are read-only; "
			 "%s needs an Ollama server",
			 node, models_verb_names[verb]);
		r = -EOPNOTSUPP;
	} else {
		snprintf(errbuf, errlen,
			 "%s has no Ollama server; declare one in the config "
			 "(\"services\": {\"ollama\": {\"port\": 11434}})",
			 node);
		r = -EOPNOTSUPP;
	}
	models_servers_free(svs, n_svs);
	config_unref(cfg);
	return r;
}

/* Records the command as a running operation of node, as ctl shows it. Returns its id. */
static uint64_t ctl_add_op(struct models *m, const char *node, enum verb verb, const char *name)
{
	struct op *op = xcalloc(1, sizeof(*op));
	op->verb = verb;
	op->model = xstrdup(name);
	op->state = OP_RUNNING;
	op->detail = xstrdup(verb == VERB_LOAD ? "loading" : "waiting for the server");
	op->started_at = clock_wall_s();
	pthread_mutex_lock(&m->lock);
	uint64_t id = op->id = ++m->next_op_id;
	node_add_op(models_node_get(m, node), op);
	m->changed_at = op->started_at;
	pthread_mutex_unlock(&m->lock);
	return id;
}

int models_ctl(struct models *m, const char *node, const char *cmd, models_ctl_fn done, void *arg,
	       char *errbuf, size_t errlen)
{
	_cleanup_free_ char *name = NULL;
	enum verb verb;
	struct job *job;
	int r = ctl_parse_command(cmd, &verb, &name, errbuf, errlen);
	if (r < 0)
		return r;
	r = ctl_make_job(m, node, verb, name, done, arg, &job, errbuf, errlen);
	if (r < 0)
		return r;
	ollama_job_post(job, ctl_add_op(m, node, verb, name));
	return 0;
}

/* ---- life ---- */

int models_new(struct loop *loop, struct cluster *cluster, struct models **ret)
{
	struct models *m = xcalloc(1, sizeof(*m));
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
	struct mnode *n = models_node_find(m, node);
	uint64_t r = n ? n->data_us : 0;
	pthread_mutex_unlock(&m->lock);
	return r;
}
