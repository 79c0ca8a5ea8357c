/* The cluster model, probes: the GETs of the agents' health and system documents, the
 * 1 s tick that starts them and applies the time-based levels, and refreshes. */
#include "backend/cluster_internal.h"
#include "backend/endpoint.h"
#include "httpd/agent_api.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const double cluster_latency_bounds_s[CLUSTER_LATENCY_BUCKETS] = {
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
};

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

/* No lock held: calls the waiters w (detached from their node, which is named `name`)
 * with err, and with the node's fresh view when err is 0 (-ENOENT when it is gone by
 * now): the waiter has what it waited for without asking the model again. */
static void waiters_call(struct cluster *c, const char *name, struct waiter *w, int err)
{
	assert(loop_is_current(c->loop));
	if (!w)
		return;
	struct node_view v;
	if (!err)
		err = cluster_get_node(c, name, &v);
	while (w) {
		struct waiter *next = w->next;
		w->done(w->arg, err, err ? NULL : &v);
		free(w);
		w = next;
	}
	if (!err)
		node_view_clear(&v);
}

void cluster_node_call_waiters(struct cluster *c, struct node *n, int err)
{
	struct waiter *w = n->waiters;
	n->waiters = NULL;
	waiters_call(c, n->name, w, err);
}

static void probe_done(void *arg, const struct http_response *r)
{
	struct probe *pr = arg;
	struct cluster *c = pr->c;
	assert(loop_is_current(c->loop));
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
			cluster_node_set_docs(n, NULL, doc);
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
		cluster_node_set_docs(n, doc, NULL);
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
				? xstrdup("agent error: the health answer is not a JSON object")
				: probe_reason(r, n->host, c->cfg->probe.timeout_ms);
	}
	json_decref(doc);
	enum node_level old;
	bool level_changed = cluster_node_evaluate(c, n, now, &old);
	char *why = (err && was_ok && n->last_error) ? xstrdup(n->last_error) : NULL;
	bool back = !err && !was_ok && n->attempted_at > 0 && old != NODE_UNKNOWN;
	if (level_changed)
		cluster_node_event_level(c, n, old);
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
	waiters_call(c, pr->name, w, 0);
out_free_probe:
	free(pr->name);
	free(pr);
}

/* Starts one GET of the node's agent (health, or system when `system`). 0 or -errno. */
static int node_get(struct cluster *c, struct node *n, bool system)
{
	assert(loop_is_current(c->loop));
	const struct cfg_probe *p = &c->cfg->probe;
	struct probe *pr = xcalloc(1, sizeof(*pr));
	pr->c = c;
	pr->name = xstrdup(n->name);
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
void cluster_node_probe(struct cluster *c, struct node *n, uint64_t now)
{
	assert(loop_is_current(c->loop));
	assert(cluster_wrlock_held(c));
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
	assert(loop_is_current(c->loop));
	uint64_t now = clock_now_us();
	char **changed = NULL, **forget = NULL;
	size_t n_changed = 0, n_forget = 0;

	pthread_rwlock_wrlock(&c->lock);
	uint64_t interval = (uint64_t) c->cfg->probe.interval_s * 1000000u;
	for (size_t i = 0; i < c->n_nodes; i++) {
		struct node *n = c->nodes[i];
		if ((!n->last_try_us || now - n->last_try_us >= interval) &&
		    !node_push_is_fresh(c, n, now))
			cluster_node_probe(c, n, now);
		enum node_level old;
		double was = n->changed_at;
		bool level_changed = cluster_node_evaluate(c, n, now, &old);
		if (level_changed)
			cluster_node_event_level(c, n, old);
		/* its reasons may move without its level (an age crossing a threshold) */
		if (level_changed || n->changed_at != was) {
			changed = xrealloc(changed, (n_changed + 1) * sizeof(*changed));
			changed[n_changed++] = xstrdup(n->name);
		}
		if (node_is_forgotten(c, n, now)) {
			n->forgotten = true;
			forget = xrealloc(forget, (n_forget + 1) * sizeof(*forget));
			forget[n_forget++] = xstrdup(n->name);
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
	assert(loop_is_current(c->loop));
	cluster_add_event(c, "cluster", c->cfg->cluster, "started with %zu node%s", c->n_nodes,
			  c->n_nodes == 1 ? "" : "s");
	cluster_tick(c);
}

int cluster_start(struct cluster *c)
{
	loop_post(c->loop, cluster_start_on_loop, c);
	return 0;
}

struct refresh {
	struct cluster *c;
	char *name;
	cluster_refresh_fn done;
	void *arg;
};

/* Loop thread: joins the node's probe in flight or starts one (and one round for every
 * node that is not fresh); answers at once when the node is gone, fresh with no probe
 * under way by now, or no request could start. */
static void cluster_refresh_on_loop(void *arg)
{
	struct refresh *rf = arg;
	struct cluster *c = rf->c;
	assert(loop_is_current(c->loop));
	uint64_t now = clock_now_us();
	struct waiter *w = xcalloc(1, sizeof(*w));
	w->done = rf->done;
	w->arg = rf->arg;

	pthread_rwlock_wrlock(&c->lock);
	struct node *n = cluster_find(c, rf->name);
	bool found = n != NULL, started = false;
	if (n && !(node_is_fresh(c, n, now) && !n->in_flight)) {
		w->next = n->waiters;
		n->waiters = w;
		cluster_node_probe(c, n, now);
		/* One round for all: whoever reads one node's health is likely to read the
		 * rest. */
		for (size_t i = 0; i < c->n_nodes; i++)
			if (c->nodes[i] != n && !node_is_fresh(c, c->nodes[i], now))
				cluster_node_probe(c, c->nodes[i], now);
		started = n->in_flight;
		if (!started)
			n->waiters = w->next;
	}
	pthread_rwlock_unlock(&c->lock);
	if (!started) {
		/* could not start a request: answer with what we have */
		w->next = NULL;
		waiters_call(c, rf->name, w, found ? 0 : -ENOENT);
	}
	free(rf->name);
	free(rf);
}

int cluster_refresh_node(struct cluster *c, const char *name, cluster_refresh_fn done, void *arg)
{
	pthread_rwlock_rdlock(&c->lock);
	struct node *n = cluster_find(c, name);
	int r = !n ? -ENOENT : node_is_fresh(c, n, clock_now_us()) ? 1 : 0;
	pthread_rwlock_unlock(&c->lock);
	if (r != 0)
		return r;
	struct refresh *rf = xcalloc(1, sizeof(*rf));
	rf->c = c;
	rf->name = xstrdup(name);
	rf->done = done;
	rf->arg = arg;
	loop_post(c->loop, cluster_refresh_on_loop, rf);
	return 0;
}

bool cluster_node_is_fresh(struct cluster *c, const char *name)
{
	pthread_rwlock_rdlock(&c->lock);
	struct node *n = cluster_find(c, name);
	bool r = n && node_is_fresh(c, n, clock_now_us());
	pthread_rwlock_unlock(&c->lock);
	return r;
}
static void ignore_refresh(void *arg, int err, const struct node_view *v)
{
}

int cluster_probe_now(struct cluster *c, const char *name)
{
	int r = cluster_refresh_node(c, name, ignore_refresh, NULL);
	return r < 0 ? r : 0;
}
