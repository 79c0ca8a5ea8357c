/* The cluster model: the nodes and their lifecycle, the listeners, the config, views,
 * heartbeats, drains and alerts. Events are in cluster_events.c, levels in
 * cluster_level.c, probes in cluster_probe.c, external nodes in cluster_external.c. */
#include "backend/cluster_internal.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void node_view_clear(struct node_view *v)
{
	char *strings[] = {v->name, v->display_name, v->address, v->role, v->tier, v->last_error};
	json_t *docs[] = {v->capabilities, v->health, v->system, v->reasons};
	for (size_t i = 0; i < sizeof(strings) / sizeof(*strings); i++)
		free(strings[i]);
	for (size_t i = 0; i < sizeof(docs) / sizeof(*docs); i++)
		json_decref(docs[i]);
	memset(v, 0, sizeof(*v));
}

static struct node *node_new(const struct cfg_host *h)
{
	struct node *n = xcalloc(1, sizeof(*n));
	n->name = xstrdup(h->name);
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

void cluster_node_free(struct node *n)
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
struct node *cluster_find(struct cluster *c, const char *name)
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

void cluster_notify(struct cluster *c, const char *node)
{
	__atomic_add_fetch(&c->generation, 1, __ATOMIC_RELEASE);
	for (size_t i = 0; i < c->n_on_change; i++)
		c->on_change[i](c->on_change_arg[i], node);
}

int cluster_node_cmp(const void *a, const void *b)
{
	return strcmp((*(struct node *const *) a)->name, (*(struct node *const *) b)->name);
}

int cluster_new(struct loop *loop, struct config *cfg, struct cluster **ret)
{
	struct cluster *c = xcalloc(1, sizeof(*c));
	c->loop = loop;
	pthread_rwlock_init(&c->lock, NULL);
	pthread_mutex_init(&c->events_lock, NULL);
	c->events = xcalloc(EVENTS_MAX, sizeof(*c->events));
	c->cfg = config_ref(cfg);
	c->alerts = json_object();
	c->drained = json_object();
	c->n_nodes = cfg->n_hosts;
	c->nodes = xcalloc(cfg->n_hosts ? cfg->n_hosts : 1, sizeof(*c->nodes));
	for (size_t i = 0; i < cfg->n_hosts; i++)
		c->nodes[i] = node_new(&cfg->hosts[i]);
	qsort(c->nodes, c->n_nodes, sizeof(*c->nodes), cluster_node_cmp);
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
			w->done(w->arg, -ECANCELED, NULL);
			free(w);
			w = next;
		}
		cluster_node_free(c->nodes[i]);
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

/* ---- config ---- */

void cluster_set_config(struct cluster *c, struct config *cfg)
{
	assert(loop_is_current(c->loop));
	struct node **nodes = xcalloc(cfg->n_hosts + c->n_nodes + 1, sizeof(*nodes));
	size_t n_new = cfg->n_hosts;
	struct node **gone = xcalloc(c->n_nodes ? c->n_nodes : 1, sizeof(*gone));
	size_t n_gone = 0;
	struct buf added, removed;
	buf_init(&added);
	buf_init(&removed);

	pthread_rwlock_wrlock(&c->lock);
	bool *kept = xcalloc(c->n_nodes ? c->n_nodes : 1, sizeof(*kept));
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
	qsort(nodes, n_new, sizeof(*nodes), cluster_node_cmp);
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
		cluster_node_call_waiters(c, gone[i],
					  config_find_host(cfg, gone[i]->name) ? 0 : -ENOENT);
		cluster_node_free(gone[i]);
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
			cluster_node_probe(c, c->nodes[i], now);
	pthread_rwlock_unlock(&c->lock);
}

void cluster_set_config_error(struct cluster *c, const char *msg)
{
	assert(loop_is_current(c->loop));
	pthread_rwlock_wrlock(&c->lock);
	free(c->config_error);
	c->config_error = msg ? xstrdup(msg) : NULL;
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
	char *s = c->config_error ? xstrdup(c->config_error) : NULL;
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
	char **names = xcalloc(c->n_nodes + 1, sizeof(*names));
	for (size_t i = 0; i < c->n_nodes; i++)
		names[i] = xstrdup(c->nodes[i]->name);
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
		return xstrdup(h->tier);
	if (!sys->has_cores || isnan(sys->ram_mb))
		return xstrdup("unknown");
	json_int_t nc = sys->cores;
	double gb = sys->ram_mb / 1024.0;
	/* DESIGN §6: powerhouse >= 12 cores and 24 GB; standard >= 4 and 8 GB; else light.
	 * RAM as the kernel reports it runs a little under the label: allow 5%. */
	if (nc >= 12 && gb >= 24 * 0.95)
		return xstrdup("powerhouse");
	if (nc >= 4 && gb >= 8 * 0.95)
		return xstrdup("standard");
	return xstrdup("light");
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
	v.name = xstrdup(n->name);
	v.display_name = h && h->display_name ? xstrdup(h->display_name) : NULL;
	v.address = xstrdup(h ? h->address : n->ext_address ? n->ext_address : "");
	v.port = h ? h->agent_port : 0;
	v.role = xstrdup(h && h->role ? h->role : n->ext_role ? n->ext_role : "");
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
	v.last_error = n->last_error ? xstrdup(n->last_error) : NULL;
	v.checked_at = n->checked_at;
	v.attempted_at = n->attempted_at;
	v.age_s = n->last_ok_us ? (double) (clock_now_us() - n->last_ok_us) / 1e6 : -1;
	v.latency_ms = n->latency_ms;
	memcpy(v.latency_buckets, n->latency_buckets, sizeof(v.latency_buckets));
	v.latency_sum_s = n->latency_sum_s;
	v.latency_count = n->latency_count;
	v.changed_at = n->changed_at;
	v.generation = cluster_generation(c);
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
	cluster_node_set_docs(n, json_incref(health), json_incref(system));
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
	bool level_changed = cluster_node_evaluate(c, n, now, &old);
	bool back = !was_ok && old != NODE_UNKNOWN;
	if (level_changed)
		cluster_node_event_level(c, n, old);
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
	bool level_changed = cluster_node_evaluate(c, n, clock_now_us(), &old);
	if (level_changed)
		cluster_node_event_level(c, n, old);
	pthread_rwlock_unlock(&c->lock);
	if (changed) {
		cluster_add_event(c, "node", name, "%s",
				  draining ? "drain: takes no new work"
					   : "resume: takes work again");
		struct pending *p = xcalloc(1, sizeof(*p));
		p->node = xstrdup(name);
		p->draining = draining;
		cluster_queue_store(c, p);
	}
	cluster_notify(c, name);
	return 0;
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
