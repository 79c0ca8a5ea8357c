/* The cluster model, events: the in-memory ring of event lines, and the writes for the
 * store (events and drains) made in order on the loop thread. */
#include "backend/cluster_internal.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
void cluster_flush_store(void *arg)
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
				evs = xrealloc(evs, cap * sizeof(*evs));
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
void cluster_queue_store(struct cluster *c, struct pending *p)
{
	pthread_mutex_lock(&c->events_lock);
	bool post = c->store && pending_push(c, p);
	if (!c->store)
		pending_free(p);
	pthread_mutex_unlock(&c->events_lock);
	if (post)
		loop_post(c->loop, cluster_flush_store, c);
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
		struct pending *p = xcalloc(1, sizeof(*p));
		p->ev.seq = (int64_t) e->seq;
		p->ev.at = now;
		p->ev.line = xstrndup(e->line, e->len);
		p->ev.len = e->len;
		post = pending_push(c, p);
	}
	pthread_mutex_unlock(&c->events_lock);
	if (post)
		loop_post(c->loop, cluster_flush_store, c);
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
