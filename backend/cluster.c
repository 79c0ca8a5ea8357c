/* The cluster model: node state, the probe protocol and health levels, events. */
#include "backend/cluster.h"
#include "backend/endpoint.h"
#include "backend/store.h"
#include "httpd/agent_api.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EVENTS_MAX     10000              /* lines kept in memory */
#define SYSTEM_MAX_AGE (300 * 1000000ull) /* system info is refetched this often */
#define TICK_US        (1000000ull)

struct waiter {
	cluster_refresh_fn done;
	void *arg;
	struct waiter *next;
};

/* One node. Fields are written on the loop thread with cluster->lock held for writing. */
struct node {
	char *name;
	const struct cfg_host *host; /* points into cluster->cfg */
	json_t *health;              /* last health document, or NULL */
	json_t *system;              /* last system document, or NULL */
	struct node_metrics metrics; /* health's numbers, parsed when health is set */
	struct node_system sys;      /* system's numbers, parsed when system is set */
	uint64_t system_us;          /* when `system` was fetched (monotonic) */
	enum node_level level;
	json_t *reasons;
	int failures;
	char *last_error;
	bool insecure;        /* the last probe failed a transport-security check */
	uint64_t last_ok_us;  /* monotonic; 0 if never */
	uint64_t last_try_us; /* when the last probe started */
	double checked_at;    /* wall */
	double attempted_at;  /* wall */
	double latency_ms;
	uint64_t latency_buckets[CLUSTER_LATENCY_BUCKETS]; /* cumulative */
	double latency_sum_s;
	uint64_t latency_count;
	double changed_at; /* wall */
	bool in_flight;    /* a health probe is under way */
	bool system_in_flight;
	bool draining;
	struct waiter *waiters; /* loop thread only */
	uint64_t pushed_us;     /* monotonic time of the last heartbeat, 0 if none */
	uint64_t added_us;      /* when it appeared in the config (monotonic) */
	bool forgotten;         /* its drop-in was removed for join.forget_after_s */
	bool last_pushed;       /* the last success was a heartbeat, not a probe */
	/* a node of an external source (a Slurm cluster): not probed here; its owner sets
	 * its level and documents with cluster_set_external() */
	char *owner;               /* the source's name, or NULL for a host of the config */
	char *ext_address;         /* shown in nodes/NODE/address */
	char *ext_role;            /* shown in nodes/NODE/role */
	enum node_level ext_level; /* the level the owner reported, before draining */
};

struct event {
	uint64_t seq;
	char *line; /* with the newline */
	size_t len;
};

/* Something to write to the store, in the order it happened: an event, or a drain. */
struct pending {
	struct store_event ev; /* ev.line set: an event (owned) */
	char *node;            /* else a drain (draining) or resume of this node (owned) */
	bool draining;
	struct pending *next;
};

struct cluster {
	struct loop *loop;
	pthread_rwlock_t lock;
	struct config *cfg;  /* protected by lock */
	struct node **nodes; /* sorted by name; protected by lock */
	size_t n_nodes;
	char *config_error; /* protected by lock */
	json_t *alerts;     /* key -> message; protected by lock */
	double changed_at;  /* protected by lock */
	double started_at;
	uint64_t started_us;
	uint64_t generation;            /* cluster_generation(); atomic */
	cluster_change_fn on_change[4]; /* set before cluster_start */
	void *on_change_arg[4];
	size_t n_on_change;
	struct loop_timer *tick; /* loop thread only */

	pthread_mutex_t events_lock;
	struct event *events; /* ring of EVENTS_MAX; protected by events_lock */
	size_t events_first;  /* index of the oldest */
	size_t n_events;
	uint64_t events_seq; /* sequence number of the newest */
	size_t events_bytes;
	double events_changed_at;
	/* writes for the store, made on the loop thread in order; protected by events_lock */
	struct store *store; /* set once by cluster_attach_store, before cluster_start */
	struct pending *pend_head, *pend_tail;
	bool flush_posted;
	json_t *drained; /* names of drained nodes (object used as a set); protected by lock */
};

const double cluster_latency_bounds_s[CLUSTER_LATENCY_BUCKETS] = {
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
};

const char *node_level_name(enum node_level level)
{
	static const char *const names[] = {
		[NODE_UNKNOWN] = "unknown",     [NODE_HEALTHY] = "healthy",
		[NODE_WARNING] = "warning",     [NODE_CRITICAL] = "critical",
		[NODE_UNHEALTHY] = "unhealthy", [NODE_STALE] = "stale",
		[NODE_OFFLINE] = "offline",     [NODE_DRAINING] = "draining",
	};
	return level <= NODE_DRAINING ? names[level] : "unknown";
}

void node_view_clear(struct node_view *v)
{
	free(v->name);
	free(v->display_name);
	free(v->address);
	free(v->role);
	free(v->tier);
	free(v->last_error);
	json_decref(v->capabilities);
	json_decref(v->health);
	json_decref(v->system);
	json_decref(v->reasons);
	memset(v, 0, sizeof(*v));
}

static struct node *node_new(const struct cfg_host *h)
{
	struct node *n = calloc(1, sizeof(*n));
	if (!n)
		abort();
	n->name = strdup(h->name);
	n->host = h;
	node_metrics_parse(NULL, &n->metrics);
	node_system_parse(NULL, &n->sys);
	n->level = NODE_UNKNOWN;
	n->reasons = json_array();
	json_array_append_new(n->reasons, json_string("not probed yet"));
	n->changed_at = clock_wall_s();
	n->added_us = clock_now_us();
	return n;
}

static void cluster_flush_store(void *arg);

static void node_free(struct node *n)
{
	free(n->owner);
	free(n->ext_address);
	free(n->ext_role);
	free(n->name);
	json_decref(n->health);
	json_decref(n->system);
	json_decref(n->reasons);
	free(n->last_error);
	free(n);
}

/* Caller holds the lock. Binary search in the sorted array. */
static struct node *cluster_find(struct cluster *c, const char *name)
{
	size_t lo = 0, hi = c->n_nodes;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int r = strcmp(c->nodes[mid]->name, name);
		if (r == 0)
			return c->nodes[mid];
		if (r < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

static void cluster_notify(struct cluster *c, const char *node)
{
	__atomic_add_fetch(&c->generation, 1, __ATOMIC_RELEASE);
	for (size_t i = 0; i < c->n_on_change; i++)
		c->on_change[i](c->on_change_arg[i], node);
}

static int node_cmp(const void *a, const void *b)
{
	return strcmp((*(struct node *const *) a)->name, (*(struct node *const *) b)->name);
}

int cluster_new(struct loop *loop, struct config *cfg, struct cluster **ret)
{
	struct cluster *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->loop = loop;
	pthread_rwlock_init(&c->lock, NULL);
	pthread_mutex_init(&c->events_lock, NULL);
	c->events = calloc(EVENTS_MAX, sizeof(*c->events));
	if (!c->events) {
		free(c);
		return -ENOMEM;
	}
	c->cfg = config_ref(cfg);
	c->alerts = json_object();
	c->drained = json_object();
	c->n_nodes = cfg->n_hosts;
	c->nodes = calloc(cfg->n_hosts ? cfg->n_hosts : 1, sizeof(*c->nodes));
	for (size_t i = 0; i < cfg->n_hosts; i++)
		c->nodes[i] = node_new(&cfg->hosts[i]);
	qsort(c->nodes, c->n_nodes, sizeof(*c->nodes), node_cmp);
	c->started_at = c->changed_at = clock_wall_s();
	c->started_us = clock_now_us();
	*ret = c;
	return 0;
}

void cluster_free(struct cluster *c)
{
	if (!c)
		return;
	cluster_flush_store(c); /* what the loop did not write yet (it has stopped) */
	for (size_t i = 0; i < c->n_nodes; i++) {
		struct waiter *w = c->nodes[i]->waiters;
		while (w) {
			struct waiter *next = w->next;
			w->done(w->arg, -ECANCELED);
			free(w);
			w = next;
		}
		node_free(c->nodes[i]);
	}
	free(c->nodes);
	config_unref(c->cfg);
	free(c->config_error);
	json_decref(c->alerts);
	for (size_t i = 0; i < c->n_events; i++)
		free(c->events[(c->events_first + i) % EVENTS_MAX].line);
	free(c->events);
	json_decref(c->drained);
	pthread_rwlock_destroy(&c->lock);
	pthread_mutex_destroy(&c->events_lock);
	free(c);
}

void cluster_add_listener(struct cluster *c, cluster_change_fn fn, void *arg)
{
	if (c->n_on_change < 4) {
		c->on_change[c->n_on_change] = fn;
		c->on_change_arg[c->n_on_change++] = arg;
	}
}

/* ---- events ---- */

/* Appends one write for the store; caller holds events_lock. Returns true when a flush
 * must be posted to the loop. */
static bool pending_push(struct cluster *c, struct pending *p)
{
	if (c->pend_tail)
		c->pend_tail->next = p;
	else
		c->pend_head = p;
	c->pend_tail = p;
	if (c->flush_posted)
		return false;
	c->flush_posted = true;
	return true;
}

static void pending_free(struct pending *p)
{
	while (p) {
		struct pending *next = p->next;
		free(p->ev.line);
		free(p->node);
		free(p);
		p = next;
	}
}

/* Writes what is pending: events in one transaction (then the oldest beyond events.keep
 * are dropped), and drains. On the loop thread, or on any thread once it has stopped. */
static void cluster_flush_store(void *arg)
{
	struct cluster *c = arg;
	pthread_mutex_lock(&c->events_lock);
	struct pending *p = c->pend_head;
	c->pend_head = c->pend_tail = NULL;
	c->flush_posted = false;
	pthread_mutex_unlock(&c->events_lock);
	if (!p || !c->store) {
		pending_free(p);
		return;
	}
	pthread_rwlock_rdlock(&c->lock);
	int64_t keep = c->cfg->events.keep;
	pthread_rwlock_unlock(&c->lock);
	struct store_event *evs = NULL;
	size_t n = 0, cap = 0;
	for (struct pending *q = p; q; q = q->next) {
		if (q->ev.line) {
			if (n == cap) {
				cap = cap ? 2 * cap : 16;
				evs = realloc(evs, cap * sizeof(*evs));
			}
			evs[n++] = q->ev;
			continue;
		}
		/* a drain: the events before it are written first, in order */
		if (n && store_events_add(c->store, evs, n, keep) < 0)
			log_warn("cannot keep %zu event%s in the store", n, n == 1 ? "" : "s");
		n = 0;
		int r = store_set_drain(c->store, q->node, q->draining, clock_wall_s());
		if (r < 0)
			log_warn("cannot keep the drain of %s in the store: %s", q->node,
				 strerror(-r));
	}
	if (n && store_events_add(c->store, evs, n, keep) < 0)
		log_warn("cannot keep %zu event%s in the store", n, n == 1 ? "" : "s");
	free(evs);
	pending_free(p);
}

/* Queues one write for the store and wakes the loop to make it. */
static void cluster_queue_store(struct cluster *c, struct pending *p)
{
	pthread_mutex_lock(&c->events_lock);
	bool post = c->store && pending_push(c, p);
	if (!c->store)
		pending_free(p);
	pthread_mutex_unlock(&c->events_lock);
	if (post && loop_post(c->loop, cluster_flush_store, c) < 0) {
		pthread_mutex_lock(&c->events_lock);
		c->flush_posted = false; /* the next write tries again; cluster_free writes */
		pthread_mutex_unlock(&c->events_lock);
	}
}

void cluster_add_event(struct cluster *c, const char *kind, const char *subject, const char *fmt,
		       ...)
{
	struct buf b;
	buf_init(&b);
	char ts[32];
	double now = clock_wall_s();
	clock_format_utc(now, ts);
	buf_printf(&b, "%s %s %s ", ts, kind, subject);
	va_list ap;
	va_start(ap, fmt);
	buf_vprintf(&b, fmt, ap);
	va_end(ap);
	/* one event, one line */
	for (size_t i = 0; i < b.len; i++)
		if (b.data[i] == '\n')
			b.data[i] = ' ';
	buf_puts(&b, "\n");
	log_info("event: %.*s", (int) b.len - 1, b.data);

	pthread_mutex_lock(&c->events_lock);
	if (c->n_events == EVENTS_MAX) {
		struct event *old = &c->events[c->events_first];
		c->events_bytes -= old->len;
		free(old->line);
		c->events_first = (c->events_first + 1) % EVENTS_MAX;
		c->n_events--;
	}
	struct event *e = &c->events[(c->events_first + c->n_events) % EVENTS_MAX];
	e->seq = ++c->events_seq;
	e->line = buf_steal(&b, &e->len);
	c->events_bytes += e->len;
	c->n_events++;
	c->events_changed_at = now;
	bool post = false;
	if (c->store) {
		struct pending *p = calloc(1, sizeof(*p));
		if (p) {
			p->ev.seq = (int64_t) e->seq;
			p->ev.at = now;
			p->ev.line = strndup(e->line, e->len);
			p->ev.len = e->len;
			post = pending_push(c, p);
		}
	}
	pthread_mutex_unlock(&c->events_lock);
	if (post && loop_post(c->loop, cluster_flush_store, c) < 0) {
		pthread_mutex_lock(&c->events_lock);
		c->flush_posted = false;
		pthread_mutex_unlock(&c->events_lock);
	}
}

int cluster_attach_store(struct cluster *c, struct store *store)
{
	pthread_rwlock_rdlock(&c->lock);
	size_t keep = (size_t) c->cfg->events.keep;
	pthread_rwlock_unlock(&c->lock);
	struct store_event *evs = NULL;
	size_t n = 0;
	int r = store_events_load(store, keep < EVENTS_MAX ? keep : EVENTS_MAX, &evs, &n);
	if (r < 0)
		return r;
	pthread_mutex_lock(&c->events_lock);
	/* the events from before the restart come first, with their own numbers */
	for (size_t i = 0; i < n && c->n_events < EVENTS_MAX; i++) {
		struct event *e = &c->events[(c->events_first + c->n_events++) % EVENTS_MAX];
		e->seq = (uint64_t) evs[i].seq;
		e->line = evs[i].line;
		e->len = evs[i].len;
		evs[i].line = NULL;
		c->events_bytes += e->len;
		c->events_changed_at = evs[i].at;
	}
	if (n)
		c->events_seq = (uint64_t) evs[n - 1].seq;
	c->store = store;
	pthread_mutex_unlock(&c->events_lock);
	store_events_free(evs, n);

	char **drained = NULL;
	size_t n_drained = 0;
	r = store_load_drains(store, &drained, &n_drained);
	if (r < 0)
		return r;
	pthread_rwlock_wrlock(&c->lock);
	for (size_t i = 0; i < n_drained; i++) {
		json_object_set_new(c->drained, drained[i], json_true());
		struct node *nd = cluster_find(c, drained[i]);
		if (nd)
			nd->draining = true;
	}
	pthread_rwlock_unlock(&c->lock);
	for (size_t i = 0; i < n_drained; i++) {
		cluster_add_event(c, "node", drained[i], "drain: kept from before the restart");
		free(drained[i]);
	}
	free(drained);
	return 0;
}

uint64_t cluster_render_events(struct cluster *c, uint64_t after, struct buf *out)
{
	pthread_mutex_lock(&c->events_lock);
	uint64_t last = after;
	for (size_t i = 0; i < c->n_events; i++) {
		struct event *e = &c->events[(c->events_first + i) % EVENTS_MAX];
		if (e->seq <= after)
			continue;
		buf_append(out, e->line, e->len);
		last = e->seq;
	}
	pthread_mutex_unlock(&c->events_lock);
	return last;
}

size_t cluster_events_size(struct cluster *c, double *ret_changed_at)
{
	pthread_mutex_lock(&c->events_lock);
	size_t n = c->events_bytes;
	if (ret_changed_at)
		*ret_changed_at = c->events_changed_at ? c->events_changed_at : c->started_at;
	pthread_mutex_unlock(&c->events_lock);
	return n;
}

/* ---- levels ---- */

/* Compares one metric with its [warning, critical] pair (a level is reached when the value
 * exceeds it, as the seeds say); appends a reason when one is reached. */
static enum node_level metric_level(const char *what, double value, const double pair[2],
				    bool percent, json_t *reasons)
{
	enum node_level level = value > pair[1]   ? NODE_CRITICAL
				: value > pair[0] ? NODE_WARNING
						  : NODE_HEALTHY;
	if (level == NODE_HEALTHY)
		return level;
	double limit = level == NODE_CRITICAL ? pair[1] : pair[0];
	const char *name = level == NODE_CRITICAL ? "critical" : "warning";
	char line[160];
	if (percent)
		snprintf(line, sizeof(line), "%s %.1f%% > %s %g%%", what, value, name, limit);
	else
		snprintf(line, sizeof(line), "%s %.2f > %s %g", what, value, name, limit);
	json_array_append_new(reasons, json_string(line));
	return level;
}

static enum node_level level_max(enum node_level a, enum node_level b)
{
	return a > b ? a : b;
}

/* A number of a document, or NaN when it is absent or another JSON type. */
static double doc_num(const json_t *x)
{
	return json_is_number(x) ? json_number_value(x) : NAN;
}

/* A JSON integer in [0, max], or -1. */
static int doc_count(const json_t *x, int max)
{
	if (!json_is_integer(x))
		return -1;
	json_int_t v = json_integer_value(x);
	return v >= 0 && v <= max ? (int) v : -1;
}

void node_metrics_parse(const json_t *h, struct node_metrics *ret)
{
	*ret = (struct node_metrics){
		.cpu_percent = doc_num(json_object_get(h, "cpu_percent")),
		.mem_percent = doc_num(json_object_get(h, "mem_percent")),
		.disk_percent = doc_num(json_object_get(h, "disk_percent")),
		.load1 = doc_num(json_array_get(json_object_get(h, "load"), 0)),
		.cores = doc_count(json_object_get(h, "cores"), AGENT_API_MAX_CORES),
		.mem_total_mb = doc_count(json_object_get(h, "mem_total_mb"), INT_MAX),
		.mem_available_mb = doc_num(json_object_get(h, "mem_available_mb")),
		.disk_total_mb = doc_num(json_object_get(h, "disk_total_mb")),
		.disk_free_mb = doc_num(json_object_get(h, "disk_free_mb")),
		.uptime_s = doc_num(json_object_get(h, "uptime_s")),
		.gpus = (int) json_array_size(json_object_get(h, "gpus")),
	};
}

void node_system_parse(const json_t *sys, struct node_system *ret)
{
	const json_t *cores = json_object_get(sys, "cores");
	*ret = (struct node_system){
		.has_cores = json_is_integer(cores),
		.cores = json_integer_value(cores),
		.ram_mb = doc_num(json_object_get(sys, "ram_mb")),
	};
}

/* Loop or listener thread, lock held for writing: replaces the node's documents (either
 * may be NULL: that one is kept) and their parsed numbers. Takes the references given. */
static void node_set_docs(struct node *n, json_t *health, json_t *system)
{
	if (health) {
		json_decref(n->health);
		n->health = health;
		node_metrics_parse(health, &n->metrics);
	}
	if (system) {
		json_decref(n->system);
		n->system = system;
		node_system_parse(system, &n->sys);
	}
}

/* The level the last health document reaches under the thresholds, with its reasons. */
static enum node_level level_from_metrics(const struct config *cfg, const struct node_metrics *m,
					  json_t *reasons)
{
	const struct cfg_thresholds *t = &cfg->thresholds;
	enum node_level level = NODE_HEALTHY;
	if (!isnan(m->cpu_percent))
		level = level_max(level,
				  metric_level("cpu", m->cpu_percent, t->cpu, true, reasons));
	if (!isnan(m->mem_percent))
		level = level_max(level,
				  metric_level("memory", m->mem_percent, t->memory, true, reasons));
	if (!isnan(m->disk_percent))
		level = level_max(level,
				  metric_level("disk", m->disk_percent, t->disk, true, reasons));
	if (!isnan(m->load1))
		level = level_max(level, metric_level("load", m->load1, t->load, false, reasons));
	return level;
}

/* Recomputes a node's level from its metrics, failures and age. Loop thread, lock held
 * for writing. Returns true when the level changed; *ret_old gets the previous one. */
static bool node_evaluate_external(struct node *n, enum node_level *ret_old)
{
	/* its owner sets its documents in cluster_set_external: their numbers follow here */
	node_metrics_parse(n->health, &n->metrics);
	node_system_parse(n->system, &n->sys);
	enum node_level level = n->ext_level;
	json_t *reasons = json_deep_copy(n->reasons);
	size_t k = json_array_size(reasons);
	const char *last = k ? json_string_value(json_array_get(reasons, k - 1)) : NULL;
	bool marked = last && !strcmp(last, "draining: takes no new work");
	if (n->draining && (level == NODE_HEALTHY || level == NODE_WARNING)) {
		level = NODE_DRAINING;
		if (!marked)
			json_array_append_new(reasons, json_string("draining: takes no new work"));
	} else if (marked)
		json_array_remove(reasons, k - 1);
	*ret_old = n->level;
	bool changed = level != n->level;
	json_decref(n->reasons);
	n->reasons = reasons;
	n->level = level;
	if (changed)
		n->changed_at = clock_wall_s();
	return changed;
}

static bool node_evaluate(struct cluster *c, struct node *n, uint64_t now, enum node_level *ret_old)
{
	if (n->owner)
		return node_evaluate_external(n, ret_old);
	const struct cfg_probe *p = &c->cfg->probe;
	json_t *reasons = json_array();
	enum node_level level = NODE_UNKNOWN;
	if (n->health)
		level = level_from_metrics(c->cfg, &n->metrics, reasons);
	if (n->failures > 0 && n->last_error) {
		char line[512];
		snprintf(line, sizeof(line), "%s (%d failed probe%s in a row)", n->last_error,
			 n->failures, n->failures == 1 ? "" : "s");
		json_array_append_new(reasons, json_string(line));
		/* a refused or rejected transport is not transient: unhealthy at once */
		if (n->failures >= p->unhealthy_after || n->insecure)
			level = NODE_UNHEALTHY;
	}
	/* a node never heard from is silent since it was added, or since the start */
	uint64_t since = n->last_ok_us                 ? n->last_ok_us
			 : n->added_us > c->started_us ? n->added_us
						       : c->started_us;
	uint64_t silent = now > since ? now - since : 0;
	if (n->failures > 0 || !n->last_ok_us) {
		char line[160];
		if (silent >= (uint64_t) p->offline_after_s * 1000000u) {
			level = NODE_OFFLINE;
			snprintf(line, sizeof(line),
				 "no successful probe for %llu s (offline after %d s)",
				 (unsigned long long) (silent / 1000000u), p->offline_after_s);
			json_array_append_new(reasons, json_string(line));
		} else if (silent >= (uint64_t) p->stale_after_s * 1000000u) {
			level = NODE_STALE;
			snprintf(line, sizeof(line),
				 "no successful probe for %llu s (stale after %d s)",
				 (unsigned long long) (silent / 1000000u), p->stale_after_s);
			json_array_append_new(reasons, json_string(line));
		}
	}
	if (n->draining && (level == NODE_HEALTHY || level == NODE_WARNING)) {
		level = NODE_DRAINING;
		json_array_append_new(reasons, json_string("draining: takes no new work"));
	}
	if (level == NODE_UNKNOWN && json_array_size(reasons) == 0)
		json_array_append_new(reasons, json_string("not probed yet"));

	bool changed = level != n->level || !json_equal(reasons, n->reasons);
	*ret_old = n->level;
	json_decref(n->reasons);
	n->reasons = reasons;
	bool level_changed = level != n->level;
	n->level = level;
	if (changed)
		n->changed_at = clock_wall_s();
	return level_changed;
}

static void node_event_level(struct cluster *c, struct node *n, enum node_level old)
{
	struct buf why;
	buf_init(&why);
	for (size_t i = 0; i < json_array_size(n->reasons); i++)
		buf_printf(&why, "%s%s", i ? "; " : "",
			   json_string_value(json_array_get(n->reasons, i)));
	cluster_add_event(c, "node", n->name, "%s -> %s%s%s", node_level_name(old),
			  node_level_name(n->level), why.len ? ": " : "", why.data ? why.data : "");
	buf_free(&why);
}

/* ---- probes ---- */

struct probe {
	struct cluster *c;
	char *name;
	bool system;
};

/* A sentence for a failed probe, as shown in health's reasons. */
static char *probe_reason(const struct http_response *r, const struct cfg_host *h, long timeout_ms)
{
	struct buf b;
	buf_init(&b);
	switch (-r->error) {
	case EACCES:
		if (h->token)
			buf_printf(&b,
				   "unauthorized: the agent rejected our token (HTTP %ld); "
				   "check that %s holds the agent's token",
				   r->status, h->token_file ? h->token_file : "the token file");
		else
			buf_printf(&b,
				   "unauthorized: no token configured (token file %s is missing)",
				   h->token_file ? h->token_file : "(none)");
		break;
	case ETIMEDOUT:
		if (strstr(r->error_text, "slower than"))
			buf_printf(&b, "agent error: %s", r->error_text);
		else
			buf_printf(&b, "unreachable: no answer within %ld ms", timeout_ms);
		break;
	case ECONNREFUSED:
		buf_printf(&b,
			   "unreachable: connection refused (is clusterfs-agent running on %s:%d?)",
			   h->address, h->agent_port);
		break;
	case EHOSTUNREACH: buf_printf(&b, "unreachable: %s", r->error_text); break;
	case ECONNRESET: buf_printf(&b, "unreachable: connection reset (%s)", r->error_text); break;
	default:
		if (r->status && (r->status < 200 || r->status > 299))
			buf_printf(&b, "agent error: HTTP %ld", r->status);
		else if (r->status)
			buf_printf(&b, "agent error: %s", r->error_text); /* too large, too deep */
		else
			buf_printf(&b, "unreachable: %s", r->error_text);
	}
	return buf_steal(&b, NULL);
}

static void node_call_waiters(struct node *n, int err)
{
	struct waiter *w = n->waiters;
	n->waiters = NULL;
	while (w) {
		struct waiter *next = w->next;
		w->done(w->arg, err);
		free(w);
		w = next;
	}
}

static void probe_done(void *arg, const struct http_response *r)
{
	struct probe *pr = arg;
	struct cluster *c = pr->c;
	uint64_t now = clock_now_us();

	pthread_rwlock_wrlock(&c->lock);
	struct node *n = cluster_find(c, pr->name);
	if (!n) {
		pthread_rwlock_unlock(&c->lock);
		goto out_free_probe;
	}
	if (pr->system) {
		n->system_in_flight = false;
		json_t *doc = r->error ? NULL : json_loadb(r->body, r->body_len, 0, NULL);
		if (json_is_object(doc)) {
			node_set_docs(n, NULL, doc);
			n->system_us = now;
			n->changed_at = clock_wall_s();
		} else {
			json_decref(doc);
		}
		pthread_rwlock_unlock(&c->lock);
		cluster_notify(c, pr->name);
		goto out_free_probe;
	}

	n->in_flight = false;
	n->attempted_at = clock_wall_s();
	json_t *doc = NULL;
	int err = r->error;
	if (!err) {
		json_error_t jerr;
		doc = json_loadb(r->body, r->body_len, 0, &jerr);
		if (!json_is_object(doc))
			err = -EBADMSG;
	}
	bool was_ok = n->failures == 0 && n->last_ok_us;
	n->insecure = err && r->insecure;
	if (!err) {
		node_set_docs(n, doc, NULL);
		doc = NULL;
		n->failures = 0;
		free(n->last_error);
		n->last_error = NULL;
		n->last_ok_us = now;
		n->last_pushed = false;
		n->checked_at = n->attempted_at;
		n->latency_ms = r->elapsed_ms;
		double s = r->elapsed_ms / 1000.0;
		for (int b = 0; b < CLUSTER_LATENCY_BUCKETS; b++)
			n->latency_buckets[b] += s <= cluster_latency_bounds_s[b];
		n->latency_sum_s += s;
		n->latency_count++;
		n->changed_at = n->attempted_at;
	} else {
		n->failures++;
		n->changed_at = n->attempted_at; /* failures, last_error and age_s moved */
		free(n->last_error);
		n->last_error =
			err == -EBADMSG && !r->error
				? strdup("agent error: the health answer is not a JSON object")
				: probe_reason(r, n->host, c->cfg->probe.timeout_ms);
	}
	json_decref(doc);
	enum node_level old;
	bool level_changed = node_evaluate(c, n, now, &old);
	char *why = (err && was_ok && n->last_error) ? strdup(n->last_error) : NULL;
	bool back = !err && !was_ok && n->attempted_at > 0 && old != NODE_UNKNOWN;
	if (level_changed)
		node_event_level(c, n, old);
	pthread_rwlock_unlock(&c->lock);

	if (why)
		cluster_add_event(c, "node", pr->name, "probe failed: %s", why);
	else if (back)
		cluster_add_event(c, "node", pr->name, "reachable again");
	free(why);
	cluster_notify(c, pr->name);

	pthread_rwlock_wrlock(&c->lock);
	n = cluster_find(c, pr->name);
	struct waiter *w = n ? n->waiters : NULL;
	if (n)
		n->waiters = NULL;
	pthread_rwlock_unlock(&c->lock);
	while (w) {
		struct waiter *next = w->next;
		w->done(w->arg, 0);
		free(w);
		w = next;
	}
out_free_probe:
	free(pr->name);
	free(pr);
}

/* Starts one GET of the node's agent (health, or system when `system`). 0 or -errno. */
static int node_get(struct cluster *c, struct node *n, bool system)
{
	const struct cfg_probe *p = &c->cfg->probe;
	struct probe *pr = calloc(1, sizeof(*pr));
	if (!pr)
		return -ENOMEM;
	pr->c = c;
	pr->name = strdup(n->name);
	pr->system = system;
	struct endpoint ep;
	endpoint_init_agent(&ep, c->cfg, n->host, system ? AGENT_API_SYSTEM : AGENT_API_HEALTH);
	struct http_request req = {
		.method = "GET",
		.token = n->host->token,
		.connect_timeout_ms = p->timeout_ms,
		.timeout_ms = p->timeout_ms,
		.max_body = AGENT_API_DOC_MAX,
	};
	endpoint_apply(&ep, &req);
	int r = loop_http(c->loop, &req, probe_done, pr);
	endpoint_clear(&ep);
	if (r < 0) {
		free(pr->name);
		free(pr);
	}
	return r;
}

/* Loop thread, lock held for writing: starts a health probe of n unless one is under way,
 * and a system probe when that information is missing or old. */
static void node_probe(struct cluster *c, struct node *n, uint64_t now)
{
	if (n->owner)
		return; /* its owner lists it, for all its nodes at once */
	if (!n->in_flight && node_get(c, n, false) == 0) {
		n->in_flight = true;
		n->last_try_us = now;
	}
	if (!n->system_in_flight && (!n->system || now - n->system_us > SYSTEM_MAX_AGE) &&
	    n->failures == 0 && node_get(c, n, true) == 0)
		n->system_in_flight = true;
}

/* A node whose heartbeats arrive on time is not probed: it says how it is. One missed
 * heartbeat is tolerated before probes resume. */
static bool node_push_is_fresh(struct cluster *c, struct node *n, uint64_t now)
{
	uint64_t period = (uint64_t) c->cfg->probe.heartbeat_s * 1000000u;
	return n->pushed_us && now - n->pushed_us <= 2 * period + TICK_US;
}

static bool node_is_fresh(struct cluster *c, struct node *n, uint64_t now)
{
	if (node_push_is_fresh(c, n, now))
		return true;
	uint64_t max_age = (uint64_t) c->cfg->probe.max_age_ms * 1000u;
	return n->last_ok_us && n->failures == 0 && now - n->last_ok_us <= max_age;
}

/* A joined node offline for join.forget_after_s is removed (SOMA's stale node removal). */
static bool node_is_forgotten(struct cluster *c, struct node *n, uint64_t now)
{
	int after = c->cfg->join.forget_after_s;
	if (!after || n->forgotten || !n->host || !n->host->dropin || n->level != NODE_OFFLINE)
		return false;
	uint64_t since = n->last_ok_us ? n->last_ok_us : n->added_us;
	return now - since >= (uint64_t) after * 1000000u;
}

/* Every second: probe the nodes that are due, and apply the time-based levels. */
static void cluster_tick(void *arg)
{
	struct cluster *c = arg;
	uint64_t now = clock_now_us();
	char **changed = NULL, **forget = NULL;
	size_t n_changed = 0, n_forget = 0;

	pthread_rwlock_wrlock(&c->lock);
	uint64_t interval = (uint64_t) c->cfg->probe.interval_s * 1000000u;
	for (size_t i = 0; i < c->n_nodes; i++) {
		struct node *n = c->nodes[i];
		if ((!n->last_try_us || now - n->last_try_us >= interval) &&
		    !node_push_is_fresh(c, n, now))
			node_probe(c, n, now);
		enum node_level old;
		double was = n->changed_at;
		bool level_changed = node_evaluate(c, n, now, &old);
		if (level_changed)
			node_event_level(c, n, old);
		/* its reasons may move without its level (an age crossing a threshold) */
		if (level_changed || n->changed_at != was) {
			changed = realloc(changed, (n_changed + 1) * sizeof(*changed));
			changed[n_changed++] = strdup(n->name);
		}
		if (node_is_forgotten(c, n, now)) {
			n->forgotten = true;
			forget = realloc(forget, (n_forget + 1) * sizeof(*forget));
			forget[n_forget++] = strdup(n->name);
		}
	}
	int forget_after_s = c->cfg->join.forget_after_s;
	pthread_rwlock_unlock(&c->lock);
	for (size_t i = 0; i < n_changed; i++) {
		cluster_notify(c, changed[i]);
		free(changed[i]);
	}
	free(changed);
	for (size_t i = 0; i < n_forget; i++) {
		char why[96];
		snprintf(why, sizeof(why), "offline for %d s (join.forget_after_s)",
			 forget_after_s);
		int r = cluster_forget_node(c, forget[i], why);
		if (r < 0 && r != -ENOENT)
			log_err("cannot forget node %s: %s", forget[i], strerror(-r));
		free(forget[i]);
	}
	free(forget);
	c->tick = loop_timer_add(c->loop, now + TICK_US, cluster_tick, c);
}

static void cluster_start_on_loop(void *arg)
{
	struct cluster *c = arg;
	cluster_add_event(c, "cluster", c->cfg->cluster, "started with %zu node%s", c->n_nodes,
			  c->n_nodes == 1 ? "" : "s");
	cluster_tick(c);
}

int cluster_start(struct cluster *c)
{
	return loop_post(c->loop, cluster_start_on_loop, c);
}

struct refresh {
	struct cluster *c;
	char *name;
	cluster_refresh_fn done;
	void *arg;
};

static void cluster_refresh_on_loop(void *arg)
{
	struct refresh *rf = arg;
	struct cluster *c = rf->c;
	uint64_t now = clock_now_us();

	pthread_rwlock_wrlock(&c->lock);
	struct node *n = cluster_find(c, rf->name);
	if (!n) {
		pthread_rwlock_unlock(&c->lock);
		rf->done(rf->arg, -ENOENT);
		goto out_free_refresh;
	}
	if (node_is_fresh(c, n, now) && !n->in_flight) {
		pthread_rwlock_unlock(&c->lock);
		rf->done(rf->arg, 0);
		goto out_free_refresh;
	}
	struct waiter *w = calloc(1, sizeof(*w));
	w->done = rf->done;
	w->arg = rf->arg;
	w->next = n->waiters;
	n->waiters = w;
	node_probe(c, n, now);
	/* One round for all: whoever reads one node's health is likely to read the rest. */
	for (size_t i = 0; i < c->n_nodes; i++)
		if (c->nodes[i] != n && !node_is_fresh(c, c->nodes[i], now))
			node_probe(c, c->nodes[i], now);
	bool started = n->in_flight;
	if (!started)
		n->waiters = w->next;
	pthread_rwlock_unlock(&c->lock);
	if (!started) {
		/* could not start a request: answer with what we have */
		free(w);
		rf->done(rf->arg, 0);
	}
out_free_refresh:
	free(rf->name);
	free(rf);
}

int cluster_refresh_node(struct cluster *c, const char *name, cluster_refresh_fn done, void *arg)
{
	struct refresh *rf = calloc(1, sizeof(*rf));
	if (!rf)
		return -ENOMEM;
	rf->c = c;
	rf->name = strdup(name);
	rf->done = done;
	rf->arg = arg;
	int r = loop_post(c->loop, cluster_refresh_on_loop, rf);
	if (r < 0) {
		free(rf->name);
		free(rf);
	}
	return r;
}

/* ---- config ---- */

void cluster_set_config(struct cluster *c, struct config *cfg)
{
	struct node **nodes = calloc(cfg->n_hosts + c->n_nodes + 1, sizeof(*nodes));
	size_t n_new = cfg->n_hosts;
	struct node **gone = calloc(c->n_nodes ? c->n_nodes : 1, sizeof(*gone));
	size_t n_gone = 0;
	struct buf added, removed;
	buf_init(&added);
	buf_init(&removed);

	pthread_rwlock_wrlock(&c->lock);
	bool *kept = calloc(c->n_nodes ? c->n_nodes : 1, sizeof(*kept));
	for (size_t i = 0; i < cfg->n_hosts; i++) {
		const struct cfg_host *h = &cfg->hosts[i];
		struct node *old = cluster_find(c, h->name);
		if (old && old->host && strcmp(old->host->address, h->address) == 0 &&
		    old->host->agent_port == h->agent_port) {
			old->host = h;
			nodes[i] = old;
			for (size_t j = 0; j < c->n_nodes; j++)
				if (c->nodes[j] == old)
					kept[j] = true;
		} else {
			nodes[i] = node_new(h);
			nodes[i]->draining =
				old ? old->draining : json_object_get(c->drained, h->name) != NULL;
			if (!old)
				buf_printf(&added, "%s%s", added.len ? ", " : "", h->name);
		}
	}
	for (size_t j = 0; j < c->n_nodes; j++) {
		struct node *o = c->nodes[j];
		if (o->owner && cfg->slurm && !strcmp(o->owner, cfg->slurm->name) &&
		    !config_find_host(cfg, o->name)) {
			nodes[n_new++] = o; /* its source stays: so does it */
			continue;
		}
		if (kept[j])
			continue;
		gone[n_gone++] = c->nodes[j];
		if (!config_find_host(cfg, c->nodes[j]->name))
			buf_printf(&removed, "%s%s", removed.len ? ", " : "", c->nodes[j]->name);
	}
	free(kept);
	qsort(nodes, n_new, sizeof(*nodes), node_cmp);
	free(c->nodes);
	c->nodes = nodes;
	c->n_nodes = n_new;
	struct config *old_cfg = c->cfg;
	c->cfg = config_ref(cfg);
	c->changed_at = clock_wall_s();
	free(c->config_error);
	c->config_error = NULL;
	pthread_rwlock_unlock(&c->lock);

	cluster_add_event(c, "config", cfg->path ? cfg->path : "(built-in)",
			  "loaded: %zu node%s%s%s%s%s", cfg->n_hosts, cfg->n_hosts == 1 ? "" : "s",
			  added.len ? "; added " : "", added.len ? added.data : "",
			  removed.len ? "; removed " : "", removed.len ? removed.data : "");
	/* Probes in flight for vanished nodes find no node and are dropped. */
	for (size_t i = 0; i < n_gone; i++) {
		node_call_waiters(gone[i], config_find_host(cfg, gone[i]->name) ? 0 : -ENOENT);
		node_free(gone[i]);
	}
	free(gone);
	config_unref(old_cfg);
	buf_free(&added);
	buf_free(&removed);
	cluster_notify(c, NULL);

	/* New nodes are probed now, not at the next interval. */
	uint64_t now = clock_now_us();
	pthread_rwlock_wrlock(&c->lock);
	for (size_t i = 0; i < c->n_nodes; i++)
		if (!c->nodes[i]->last_try_us)
			node_probe(c, c->nodes[i], now);
	pthread_rwlock_unlock(&c->lock);
}

void cluster_set_config_error(struct cluster *c, const char *msg)
{
	pthread_rwlock_wrlock(&c->lock);
	free(c->config_error);
	c->config_error = msg ? strdup(msg) : NULL;
	c->changed_at = clock_wall_s();
	pthread_rwlock_unlock(&c->lock);
	if (msg)
		cluster_add_event(c, "config", "error", "rejected, the last good config stays: %s",
				  msg);
	cluster_notify(c, NULL);
}

struct config *cluster_get_config(struct cluster *c)
{
	pthread_rwlock_rdlock(&c->lock);
	struct config *cfg = config_ref(c->cfg);
	pthread_rwlock_unlock(&c->lock);
	return cfg;
}

char *cluster_get_config_error(struct cluster *c)
{
	pthread_rwlock_rdlock(&c->lock);
	char *s = c->config_error ? strdup(c->config_error) : NULL;
	pthread_rwlock_unlock(&c->lock);
	return s;
}

double cluster_changed_at(struct cluster *c)
{
	pthread_rwlock_rdlock(&c->lock);
	double t = c->changed_at;
	pthread_rwlock_unlock(&c->lock);
	return t;
}

double cluster_started_at(struct cluster *c)
{
	return c->started_at;
}

/* ---- views ---- */

char **cluster_list_nodes(struct cluster *c, size_t *ret_n)
{
	pthread_rwlock_rdlock(&c->lock);
	char **names = calloc(c->n_nodes + 1, sizeof(*names));
	for (size_t i = 0; i < c->n_nodes; i++)
		names[i] = strdup(c->nodes[i]->name);
	if (ret_n)
		*ret_n = c->n_nodes;
	pthread_rwlock_unlock(&c->lock);
	return names;
}

bool cluster_has_node(struct cluster *c, const char *name)
{
	pthread_rwlock_rdlock(&c->lock);
	bool r = cluster_find(c, name) != NULL;
	pthread_rwlock_unlock(&c->lock);
	return r;
}

double cluster_node_changed_at(struct cluster *c, const char *name)
{
	pthread_rwlock_rdlock(&c->lock);
	struct node *n = cluster_find(c, name);
	double r = n ? n->changed_at : 0;
	pthread_rwlock_unlock(&c->lock);
	return r;
}

uint64_t cluster_generation(struct cluster *c)
{
	return __atomic_load_n(&c->generation, __ATOMIC_ACQUIRE);
}

bool cluster_node_is_fresh(struct cluster *c, const char *name)
{
	pthread_rwlock_rdlock(&c->lock);
	struct node *n = cluster_find(c, name);
	bool r = n && node_is_fresh(c, n, clock_now_us());
	pthread_rwlock_unlock(&c->lock);
	return r;
}

int cluster_get_level(struct cluster *c, const char *name, enum node_level *ret)
{
	pthread_rwlock_rdlock(&c->lock);
	struct node *n = cluster_find(c, name);
	if (n)
		*ret = n->level;
	pthread_rwlock_unlock(&c->lock);
	return n ? 0 : -ENOENT;
}

static char *tier_of(const struct cfg_host *h, const struct node_system *sys)
{
	if (h && h->tier)
		return strdup(h->tier);
	if (!sys->has_cores || isnan(sys->ram_mb))
		return strdup("unknown");
	json_int_t nc = sys->cores;
	double gb = sys->ram_mb / 1024.0;
	/* DESIGN §6: powerhouse >= 12 cores and 24 GB; standard >= 4 and 8 GB; else light.
	 * RAM as the kernel reports it runs a little under the label: allow 5%. */
	if (nc >= 12 && gb >= 24 * 0.95)
		return strdup("powerhouse");
	if (nc >= 4 && gb >= 8 * 0.95)
		return strdup("standard");
	return strdup("light");
}

int cluster_get_node(struct cluster *c, const char *name, struct node_view *ret)
{
	pthread_rwlock_rdlock(&c->lock);
	struct node *n = cluster_find(c, name);
	if (!n) {
		pthread_rwlock_unlock(&c->lock);
		return -ENOENT;
	}
	const struct cfg_host *h = n->host;
	struct node_view v = {0};
	v.name = strdup(n->name);
	v.display_name = h && h->display_name ? strdup(h->display_name) : NULL;
	v.address = strdup(h ? h->address : n->ext_address ? n->ext_address : "");
	v.port = h ? h->agent_port : 0;
	v.role = strdup(h && h->role ? h->role : n->ext_role ? n->ext_role : "");
	v.tier = tier_of(h, &n->sys);
	v.capabilities = json_array();
	for (size_t i = 0; h && i < h->n_capabilities; i++)
		json_array_append_new(v.capabilities, json_string(h->capabilities[i]));
	json_t *caps = json_object_get(n->system, "capabilities");
	for (size_t i = 0; !h && i < json_array_size(caps); i++)
		json_array_append(v.capabilities, json_array_get(caps, i));
	v.health = json_incref(n->health);
	v.system = json_incref(n->system);
	v.metrics = n->metrics;
	v.sys = n->sys;
	v.reasons = json_incref(n->reasons); /* replaced whole at each change, never edited */
	v.level = n->level;
	v.reachable = n->last_ok_us && n->failures == 0;
	v.draining = n->draining;
	v.probing = n->in_flight;
	v.failures = n->failures;
	v.last_error = n->last_error ? strdup(n->last_error) : NULL;
	v.checked_at = n->checked_at;
	v.attempted_at = n->attempted_at;
	v.age_s = n->last_ok_us ? (double) (clock_now_us() - n->last_ok_us) / 1e6 : -1;
	v.latency_ms = n->latency_ms;
	memcpy(v.latency_buckets, n->latency_buckets, sizeof(v.latency_buckets));
	v.latency_sum_s = n->latency_sum_s;
	v.latency_count = n->latency_count;
	v.changed_at = n->changed_at;
	/* a node of an external source (Slurm) has no host entry: its source pulls it */
	v.via = h && h->reverse ? "reverse" : n->last_pushed ? "push" : "pull";
	v.joined = h && h->dropin != NULL;
	pthread_rwlock_unlock(&c->lock);
	*ret = v;
	return 0;
}

/* A heartbeat counts as a successful probe that took no time. Applied on the caller's
 * thread (the join listener's) under the write lock, as a probe's answer is on the loop
 * thread: a hop to the loop would cost a wake-up per heartbeat. */
int cluster_heartbeat(struct cluster *c, const char *name, json_t *health, json_t *system)
{
	uint64_t now = clock_now_us();
	double at = clock_wall_s();

	pthread_rwlock_wrlock(&c->lock);
	struct node *n = cluster_find(c, name);
	if (!n) {
		pthread_rwlock_unlock(&c->lock);
		return -ENOENT;
	}
	bool was_ok = n->failures == 0 && n->last_ok_us;
	node_set_docs(n, json_incref(health), json_incref(system));
	if (system)
		n->system_us = now;
	n->failures = 0;
	n->insecure = false;
	free(n->last_error);
	n->last_error = NULL;
	n->last_ok_us = now;
	n->pushed_us = now;
	n->last_pushed = true;
	n->checked_at = n->attempted_at = at;
	n->latency_ms = 0;
	n->changed_at = at;
	enum node_level old;
	bool level_changed = node_evaluate(c, n, now, &old);
	bool back = !was_ok && old != NODE_UNKNOWN;
	if (level_changed)
		node_event_level(c, n, old);
	pthread_rwlock_unlock(&c->lock);
	if (back)
		cluster_add_event(c, "node", name, "heard from again (heartbeat)");
	cluster_notify(c, name);
	return 0;
}

int cluster_forget_node(struct cluster *c, const char *name, const char *why)
{
	pthread_rwlock_rdlock(&c->lock);
	struct node *n = cluster_find(c, name);
	int r = n ? config_remove_dropin(n->host) : -ENOENT;
	pthread_rwlock_unlock(&c->lock);
	if (r == 0)
		cluster_add_event(c, "node", name, "removed: %s", why);
	return r;
}

int cluster_set_draining(struct cluster *c, const char *name, bool draining)
{
	pthread_rwlock_wrlock(&c->lock);
	struct node *n = cluster_find(c, name);
	if (!n) {
		pthread_rwlock_unlock(&c->lock);
		return -ENOENT;
	}
	bool changed = n->draining != draining;
	n->draining = draining;
	if (draining)
		json_object_set_new(c->drained, name, json_true());
	else
		json_object_del(c->drained, name);
	enum node_level old = n->level;
	bool level_changed = node_evaluate(c, n, clock_now_us(), &old);
	if (level_changed)
		node_event_level(c, n, old);
	pthread_rwlock_unlock(&c->lock);
	if (changed) {
		cluster_add_event(c, "node", name, "%s",
				  draining ? "drain: takes no new work"
					   : "resume: takes work again");
		struct pending *p = calloc(1, sizeof(*p));
		if (p) {
			p->node = strdup(name);
			p->draining = draining;
			cluster_queue_store(c, p);
		}
	}
	cluster_notify(c, name);
	return 0;
}

static void ignore_refresh(void *arg, int err)
{
}

int cluster_probe_now(struct cluster *c, const char *name)
{
	if (!cluster_has_node(c, name))
		return -ENOENT;
	return cluster_refresh_node(c, name, ignore_refresh, NULL);
}

void cluster_set_alert(struct cluster *c, const char *key, const char *msg)
{
	pthread_rwlock_wrlock(&c->lock);
	const char *old = json_string_value(json_object_get(c->alerts, key));
	bool changed = msg ? !old || strcmp(old, msg) : old != NULL;
	if (msg)
		json_object_set_new(c->alerts, key, json_string(msg));
	else
		json_object_del(c->alerts, key);
	pthread_rwlock_unlock(&c->lock);
	if (!changed)
		return;
	if (msg)
		cluster_add_event(c, "alert", key, "%s", msg);
	else
		cluster_add_event(c, "alert", key, "cleared");
}

void cluster_render_alerts(struct cluster *c, struct buf *out)
{
	pthread_rwlock_rdlock(&c->lock);
	const char *key;
	json_t *v;
	json_object_foreach (c->alerts, key, v)
		buf_printf(out, "%s: %s\n", key, json_string_value(v));
	pthread_rwlock_unlock(&c->lock);
}

/* Lock held (write): takes what the external source says of node o. Returns whether what
 * the node's files show changed (its documents, reachability, error, reasons, address or
 * role; every failed round counts). */
static bool external_apply_locked(struct node *o, const struct cluster_external *e, uint64_t now)
{
	json_t *reasons = e->reasons ? json_deep_copy(e->reasons) : json_array();
	/* what the node's files show: its documents, and its reachability (a success
	 * moves checked_at), failures, error, reasons, address and role */
	bool data = !json_equal(o->health, e->health) || !json_equal(o->system, e->system) ||
		    e->reachable || !e->error != !o->last_error ||
		    (e->error && strcmp(e->error, o->last_error)) ||
		    !json_equal(o->reasons, reasons) || !o->ext_address ||
		    strcmp(o->ext_address, e->address ? e->address : "") || !o->ext_role ||
		    strcmp(o->ext_role, e->role ? e->role : "");
	free(o->ext_address);
	o->ext_address = strdup(e->address ? e->address : "");
	free(o->ext_role);
	o->ext_role = strdup(e->role ? e->role : "");
	if (e->health && e->health != o->health) {
		json_decref(o->health);
		o->health = json_incref(e->health);
	}
	if (e->system && e->system != o->system) {
		json_decref(o->system);
		o->system = json_incref(e->system);
	}
	json_decref(o->reasons);
	o->reasons = reasons;
	o->ext_level = e->level;
	o->attempted_at = clock_wall_s();
	if (e->reachable) {
		o->last_ok_us = now;
		o->checked_at = o->attempted_at;
		o->latency_ms = e->latency_ms;
		o->failures = 0;
	} else {
		o->failures++;
		data = true;
	}
	free(o->last_error);
	o->last_error = e->error ? strdup(e->error) : NULL;
	return data;
}

void cluster_set_external(struct cluster *c, const char *owner, const struct cluster_external *v,
			  size_t n)
{
	struct node **gone = NULL;
	size_t n_gone = 0;
	char **changed = NULL;
	size_t n_changed = 0;
	bool set_changed = false;
	uint64_t now = clock_now_us();

	pthread_rwlock_wrlock(&c->lock);
	if (!c->cfg->slurm || strcmp(c->cfg->slurm->name, owner)) {
		/* the source left the config while its answer was on its way */
		pthread_rwlock_unlock(&c->lock);
		return;
	}
	/* the owner's nodes that are not in v leave */
	size_t keep = 0;
	for (size_t i = 0; i < c->n_nodes; i++) {
		struct node *o = c->nodes[i];
		bool listed = false;
		for (size_t j = 0; j < n && o->owner && !listed; j++)
			listed = !strcmp(v[j].name, o->name);
		if (o->owner && !strcmp(o->owner, owner) && !listed) {
			gone = realloc(gone, (n_gone + 1) * sizeof(*gone));
			gone[n_gone++] = o;
			set_changed = true;
		} else
			c->nodes[keep++] = o;
	}
	c->n_nodes = keep;
	for (size_t j = 0; j < n; j++) {
		const struct cluster_external *e = &v[j];
		struct node *o = cluster_find(c, e->name);
		if (o && !o->owner)
			continue; /* a host of the config has the name: it wins */
		if (!o) {
			o = calloc(1, sizeof(*o));
			if (!o)
				abort();
			o->name = strdup(e->name);
			o->owner = strdup(owner);
			o->reasons = json_array();
			o->level = NODE_UNKNOWN;
			c->nodes = realloc(c->nodes, (c->n_nodes + 1) * sizeof(*c->nodes));
			c->nodes[c->n_nodes++] = o;
			qsort(c->nodes, c->n_nodes, sizeof(*c->nodes), node_cmp);
			set_changed = true;
		}
		bool data = external_apply_locked(o, e, now);
		enum node_level old;
		bool lv = node_evaluate_external(o, &old);
		if (lv)
			node_event_level(c, o, old);
		if (lv || data) {
			o->changed_at = clock_wall_s();
			changed = realloc(changed, (n_changed + 1) * sizeof(*changed));
			changed[n_changed++] = strdup(o->name);
		}
	}
	if (set_changed)
		c->changed_at = clock_wall_s();
	pthread_rwlock_unlock(&c->lock);
	for (size_t i = 0; i < n_gone; i++) {
		node_call_waiters(gone[i], -ENOENT);
		node_free(gone[i]);
	}
	free(gone);
	for (size_t i = 0; i < n_changed; i++) {
		cluster_notify(c, changed[i]);
		free(changed[i]);
	}
	free(changed);
	if (set_changed)
		cluster_notify(c, NULL);
}

bool cluster_node_is_external(struct cluster *c, const char *name, char **ret_owner)
{
	pthread_rwlock_rdlock(&c->lock);
	struct node *n = cluster_find(c, name);
	bool ext = n && n->owner;
	if (ext && ret_owner)
		*ret_owner = strdup(n->owner);
	pthread_rwlock_unlock(&c->lock);
	return ext;
}
