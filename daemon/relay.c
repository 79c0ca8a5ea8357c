/* The reverse channel: requests for nodes behind NAT, queued for their long poll. */
#include "daemon/relay.h"
#include "backend/util.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define RELAY_TIMEOUT_US (120 * 1000000ull) /* a relayed request waits at most this long */
#define RELAY_MAX_WAIT_S 60                 /* the longest work poll */
#define RELAY_BATCH      64                 /* requests handed down per work answer */
/* A node with no poll open and none seen this long is not connected: its requests fail at
 * once, as for a dead host, instead of holding a connection each. */
#define RELAY_GONE_US (5 * 1000000ull)

enum item_state { ITEM_QUEUED, ITEM_SENT, ITEM_DONE };

/* One relayed request, owned by the request that waits for it (its handler state); the
 * node's lists point at it until it is answered or its request ends. */
struct item {
	uint64_t id;
	struct rnode *node;
	char *method, *path, *content_type;
	struct buf body;
	enum item_state state;
	long status;
	struct buf result;
	char *result_type, *total_size, *retry_after;
	void *waiter; /* the waiting request's handle */
	uint64_t deadline_us;
	struct item *next, *prev; /* in node->queue or node->sent */
};

struct rnode {
	char *name;
	struct item *queue, *queue_tail; /* waiting to be handed down, oldest first */
	struct item *sent;               /* handed down, waiting for the answer */
	void *poller;                    /* the work poll parked for this node, or NULL */
	uint64_t seen_us;                /* when a work poll of it last ran (monotonic) */
	struct rnode *next;
};

struct relay {
	pthread_mutex_t lock;
	struct server *srv;
	uint64_t next_id;    /* protected by lock */
	struct rnode *nodes; /* protected by lock; few: one per reverse node */
};

struct poll_state {
	struct relay *r;
	char *name;
	void *handle;
	uint64_t deadline_us;
};

struct relay *relay_new(void)
{
	struct relay *r = xcalloc(1, sizeof(*r));
	pthread_mutex_init(&r->lock, NULL);
	r->next_id = 1;
	return r;
}

void relay_free(struct relay *r)
{
	if (!r)
		return;
	while (r->nodes) {
		struct rnode *n = r->nodes;
		r->nodes = n->next;
		free(n->name);
		free(n);
	}
	pthread_mutex_destroy(&r->lock);
	free(r);
}

void relay_set_server(struct relay *r, struct server *srv)
{
	r->srv = srv;
}

/* Lock held. */
static struct rnode *relay_node(struct relay *r, const char *name, bool create)
{
	for (struct rnode *n = r->nodes; n; n = n->next)
		if (strcmp(n->name, name) == 0)
			return n;
	if (!create)
		return NULL;
	struct rnode *n = xcalloc(1, sizeof(*n));
	n->name = xstrdup(name);
	n->next = r->nodes;
	r->nodes = n;
	return n;
}

/* Lock held: takes the item off whichever list holds it. */
static void item_unlink(struct item *it)
{
	struct rnode *n = it->node;
	if (it->state == ITEM_DONE)
		return;
	struct item **head = it->state == ITEM_QUEUED ? &n->queue : &n->sent;
	if (it->prev)
		it->prev->next = it->next;
	else
		*head = it->next;
	if (it->next)
		it->next->prev = it->prev;
	else if (it->state == ITEM_QUEUED)
		n->queue_tail = it->prev;
	it->next = it->prev = NULL;
}

static void item_free(struct item *it)
{
	free(it->method);
	free(it->path);
	free(it->content_type);
	buf_free(&it->body);
	buf_free(&it->result);
	free(it->result_type);
	free(it->total_size);
	free(it->retry_after);
	free(it);
}

struct item_ref {
	struct relay *r;
	struct item *it;
};

/* The waiting request ended: nothing is sent for it any more. */
static void item_ref_free(void *arg)
{
	struct item_ref *ref = arg;
	pthread_mutex_lock(&ref->r->lock);
	item_unlink(ref->it);
	pthread_mutex_unlock(&ref->r->lock);
	item_free(ref->it);
	free(ref);
}

/* A content type the response may carry (the server wants a static string). */
static const char *static_type(const char *t)
{
	static const char *const known[] = {"application/json", "application/octet-stream",
					    "text/plain", "text/plain; charset=utf-8", NULL};
	for (size_t i = 0; t && known[i]; i++)
		if (strcasecmp(t, known[i]) == 0)
			return known[i];
	return NULL;
}

int relay_handle_request(struct relay *r, struct request *req, struct response *resp)
{
	struct item_ref *ref = req->state;
	if (!ref) {
		struct item *it = xcalloc(1, sizeof(*it));
		struct buf path;
		buf_init(&path);
		buf_printf(&path, "/%s", req->params[1]);
		size_t before = path.len;
		buf_puts(&path, "?");
		request_get_query_string(req, &path);
		if (path.len == before + 1) {
			path.len = before;
			path.data[before] = '\0';
		}
		it->method = xstrdup(req->method);
		it->path = buf_steal(&path, NULL);
		const char *ct = request_get_header(req, "Content-Type");
		it->content_type = ct ? xstrdup(ct) : NULL;
		buf_init(&it->body);
		buf_init(&it->result);
		buf_append(&it->body, req->body, req->body_len);
		it->waiter = req->handle;
		it->deadline_us = clock_now_us() + RELAY_TIMEOUT_US;
		ref = xcalloc(1, sizeof(*ref));
		ref->r = r;
		ref->it = it;
		req->state = ref;
		req->state_free = item_ref_free;

		pthread_mutex_lock(&r->lock);
		struct rnode *n = relay_node(r, req->params[0], true);
		if (!n->poller && clock_now_us() - n->seen_us > RELAY_GONE_US) {
			pthread_mutex_unlock(&r->lock);
			req->state = NULL;
			req->state_free = NULL;
			item_free(it);
			free(ref);
			response_set_error(resp, 503,
					   "node %s is not connected: its agent keeps no reverse "
					   "channel open",
					   req->params[0]);
			return 0;
		}
		it->id = r->next_id++;
		it->node = n;
		it->state = ITEM_QUEUED;
		it->prev = n->queue_tail;
		if (n->queue_tail)
			n->queue_tail->next = it;
		else
			n->queue = it;
		n->queue_tail = it;
		/* under the lock: the poll cannot end (and its handle go) meanwhile */
		if (n->poller)
			server_wake_request(r->srv, n->poller);
		pthread_mutex_unlock(&r->lock);
		resp->defer_until_us = it->deadline_us;
		return 0;
	}

	struct item *it = ref->it;
	pthread_mutex_lock(&r->lock);
	bool done = it->state == ITEM_DONE;
	pthread_mutex_unlock(&r->lock);
	if (done) {
		/* the DONE item is off every list: only this request touches it now */
		buf_free(&resp->body);
		buf_append(&resp->body, it->result.data ? it->result.data : "", it->result.len);
		if (!resp->body.data)
			buf_puts(&resp->body, "");
		resp->content_type = static_type(it->result_type);
		if (it->result_type && !resp->content_type)
			response_add_header(resp, "X-Relayed-Content-Type", it->result_type);
		if (it->total_size)
			response_add_header(resp, "X-Total-Size", it->total_size);
		if (it->retry_after)
			response_add_header(resp, "Retry-After", it->retry_after);
		resp->status = (unsigned) it->status;
		return 0;
	}
	if (req->expired) {
		response_set_error(resp, 504,
				   "node %s did not answer over its reverse channel (is its agent "
				   "connected?)",
				   req->params[0]);
		return 0;
	}
	resp->defer_until_us = it->deadline_us;
	return 0;
}

static void poll_state_free(void *arg)
{
	struct poll_state *ps = arg;
	pthread_mutex_lock(&ps->r->lock);
	struct rnode *n = relay_node(ps->r, ps->name, false);
	if (n && n->poller == ps->handle)
		n->poller = NULL;
	pthread_mutex_unlock(&ps->r->lock);
	free(ps->name);
	free(ps);
}

/* Lock held: the queued requests of n (at most RELAY_BATCH) as the work answer's array,
 * moved to the sent list. */
static json_t *relay_take(struct rnode *n)
{
	json_t *work = json_array();
	for (int k = 0; k < RELAY_BATCH && n->queue; k++) {
		struct item *it = n->queue;
		item_unlink(it);
		it->state = ITEM_SENT;
		it->next = n->sent;
		if (n->sent)
			n->sent->prev = it;
		n->sent = it;
		json_t *o = json_pack("{sI ss ss}", "id", (json_int_t) it->id, "method", it->method,
				      "path", it->path);
		if (it->body.len) {
			char *b64 = util_base64_encode(it->body.data, it->body.len);
			json_object_set_new(o, "body", json_string(b64));
			free(b64);
		}
		if (it->content_type)
			json_object_set_new(o, "content_type", json_string(it->content_type));
		json_array_append_new(work, o);
	}
	return work;
}

int relay_handle_work(struct relay *r, struct request *req, struct response *resp)
{
	struct poll_state *ps = req->state;
	const char *name = req->params[0];
	if (!ps) {
		const char *w = request_get_query(req, "wait");
		long wait = w ? strtol(w, NULL, 10) : 0;
		wait = wait < 0 ? 0 : wait > RELAY_MAX_WAIT_S ? RELAY_MAX_WAIT_S : wait;
		ps = xcalloc(1, sizeof(*ps));
		ps->r = r;
		ps->name = xstrdup(name);
		ps->handle = req->handle;
		ps->deadline_us = clock_now_us() + (uint64_t) wait * 1000000u;
		req->state = ps;
		req->state_free = poll_state_free;
	}
	pthread_mutex_lock(&r->lock);
	struct rnode *n = relay_node(r, name, true);
	n->seen_us = clock_now_us();
	json_t *work = NULL;
	if (n->queue) {
		work = relay_take(n);
	} else if (!req->expired && clock_now_us() < ps->deadline_us) {
		n->poller = req->handle;
		pthread_mutex_unlock(&r->lock);
		resp->defer_until_us = ps->deadline_us;
		return 0;
	}
	if (n->poller == req->handle)
		n->poller = NULL;
	pthread_mutex_unlock(&r->lock);
	return response_set_json(resp, 200, json_pack("{so}", "work", work ? work : json_array()));
}

int relay_handle_result(struct relay *r, struct request *req, struct response *resp)
{
	const char *id_s = request_get_query(req, "id");
	const char *st_s = request_get_header(req, "X-Relay-Status");
	uint64_t id = id_s ? strtoull(id_s, NULL, 10) : 0;
	long status = st_s ? strtol(st_s, NULL, 10) : 0;
	if (!id || status < 100 || status > 599) {
		response_set_error(resp, 400, "a result needs ?id=N and X-Relay-Status: CODE");
		return 0;
	}
	pthread_mutex_lock(&r->lock);
	struct rnode *n = relay_node(r, req->params[0], false);
	struct item *it = n ? n->sent : NULL;
	while (it && it->id != id)
		it = it->next;
	if (it) {
		item_unlink(it);
		it->state = ITEM_DONE;
		it->status = status;
		buf_append(&it->result, req->body, req->body_len);
		const char *ct = request_get_header(req, "Content-Type");
		const char *ts = request_get_header(req, "X-Total-Size");
		const char *ra = request_get_header(req, "Retry-After");
		it->result_type = ct ? xstrdup(ct) : NULL;
		it->total_size = ts ? xstrdup(ts) : NULL;
		it->retry_after = ra ? xstrdup(ra) : NULL;
		server_wake_request(r->srv, it->waiter);
	}
	pthread_mutex_unlock(&r->lock);
	if (!it) {
		/* its request gave up (timed out, or the daemon restarted): the backend
		 * asks again if it still cares */
		response_set_error(resp, 410, "no request %llu is waiting",
				   (unsigned long long) id);
		return 0;
	}
	return response_set_json(resp, 200, json_pack("{sb}", "ok", 1));
}

bool relay_is_connected(struct relay *r, const char *name)
{
	pthread_mutex_lock(&r->lock);
	struct rnode *n = relay_node(r, name, false);
	bool c = n && n->poller;
	pthread_mutex_unlock(&r->lock);
	return c;
}
