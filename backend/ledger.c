/* The checkpoint ledger: a cached copy, and an outbox of records. */
#include "backend/ledger.h"
#include "backend/models.h"
#include "backend/rest.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DELIVER_EVERY_US (1000000ull)
#define DELIVER_MAX_US   (16 * 1000000ull) /* the longest wait between two delivery attempts */

struct ledger_waiter {
	ledger_done_fn done;
	void *arg;
	struct ledger_waiter *next;
};

struct ledger {
	struct loop *loop;
	struct cluster *cluster;
	struct store *store;
	pthread_mutex_t lock;
	json_t *entries;               /* the copy: array sorted by step; protected by lock */
	json_t *pending;               /* records not delivered yet: array; protected by lock */
	double fetched_at;             /* wall time of the last successful fetch; 0 none */
	uint64_t fetched_us;           /* monotonic, same */
	uint64_t failed_us;            /* monotonic time of the last failed fetch; 0 none */
	double failed_at;              /* its wall time */
	char *last_error;              /* protected by lock */
	bool fetching;                 /* protected by lock */
	struct ledger_waiter *waiters; /* protected by lock */
	bool delivering;               /* loop thread only */
	unsigned deliver_failures;     /* failed deliveries in a row; loop thread only */
	uint64_t deliver_due_us;       /* no delivery before this; loop thread only */
	char *refused;                 /* the last record the ledger refused, why; lock */
	double changed_at;
	uint64_t counter; /* for record ids; protected by lock */
};

bool ledger_lower_is_better(const char *m)
{
	/* the agent's ledger module decides the same way (case does not matter) */
	return strcasestr(m, "loss") || strcasestr(m, "error") || strcasestr(m, "perplexity") ||
	       strcasestr(m, "ppl");
}

int ledger_new(struct loop *loop, struct cluster *cluster, struct store *store, struct ledger **ret)
{
	struct ledger *l = xcalloc(1, sizeof(*l));
	l->loop = loop;
	l->cluster = cluster;
	l->store = store;
	l->entries = json_array();
	l->pending = json_array();
	l->changed_at = clock_wall_s();
	pthread_mutex_init(&l->lock, NULL);
	*ret = l;
	return 0;
}

void ledger_free(struct ledger *l)
{
	if (!l)
		return;
	json_decref(l->entries);
	json_decref(l->pending);
	free(l->last_error);
	free(l->refused);
	while (l->waiters) {
		struct ledger_waiter *next = l->waiters->next;
		free(l->waiters);
		l->waiters = next;
	}
	pthread_mutex_destroy(&l->lock);
	free(l);
}

/* The ledger's base endpoint (".../api/ledger"): 0, or -ENOENT when no host declares one. */
static int ledger_base(struct ledger *l, struct endpoint *ret_ep, char **ret_host)
{
	struct config *cfg = cluster_get_config(l->cluster);
	int r = -ENOENT;
	for (size_t i = 0; i < cfg->n_hosts && r < 0; i++) {
		const struct cfg_host *h = &cfg->hosts[i];
		const struct cfg_service *s = config_host_service(h, "ledger");
		if (!s)
			continue;
		endpoint_init(ret_ep, cfg, h->address, s->port, &s->transport,
			      s->path && s->path[0] ? s->path : "/api/ledger",
			      "the ledger service of this host");
		if (ret_host)
			*ret_host = xstrdup(h->name);
		r = 0;
	}
	config_unref(cfg);
	return r;
}

/* The token for the ledger host (its agent token), new string or NULL. */
static char *ledger_token(struct ledger *l)
{
	struct config *cfg = cluster_get_config(l->cluster);
	char *tok = NULL;
	for (size_t i = 0; i < cfg->n_hosts && !tok; i++)
		if (config_host_service(&cfg->hosts[i], "ledger") && cfg->hosts[i].token)
			tok = xstrdup(cfg->hosts[i].token);
	config_unref(cfg);
	return tok;
}

json_int_t ledger_entry_step(json_t *e)
{
	return json_integer_value(json_object_get(e, "step"));
}

static int step_cmp(const void *a, const void *b)
{
	json_int_t x = ledger_entry_step(*(json_t *const *) a),
		   y = ledger_entry_step(*(json_t *const *) b);
	return x < y ? -1 : x > y;
}

/* A new array: the entries sorted by step, valid ones only. */
static json_t *normalize(json_t *list)
{
	size_t n = json_array_size(list), k = 0;
	json_t **v = xcalloc(n + 1, sizeof(*v));
	for (size_t i = 0; i < n; i++) {
		json_t *e = json_array_get(list, i);
		if (json_is_object(e) && json_is_integer(json_object_get(e, "step")))
			v[k++] = e;
	}
	qsort(v, k, sizeof(*v), step_cmp);
	json_t *out = json_array();
	for (size_t i = 0; i < k; i++)
		json_array_append(out, v[i]);
	free(v);
	return out;
}

/* The copy and the pending records, as one view (lock held). New reference. */
static json_t *view_locked(struct ledger *l)
{
	assert_held(&l->lock);
	json_t *all = json_array();
	json_array_extend(all, l->entries);
	size_t i;
	json_t *p;
	json_array_foreach (l->pending, i, p) {
		json_t *e = json_deep_copy(p);
		json_object_del(e, "record_id");
		json_object_set_new(e, "pending", json_true());
		json_array_append_new(all, e);
	}
	json_t *sorted = normalize(all);
	json_decref(all);
	return sorted;
}

json_t *ledger_view(struct ledger *l, size_t *ret_pending)
{
	pthread_mutex_lock(&l->lock);
	json_t *all = view_locked(l);
	if (ret_pending)
		*ret_pending = json_array_size(l->pending);
	pthread_mutex_unlock(&l->lock);
	return all;
}

/* ---- fetching ---- */

static void fetch_done(void *arg, int err, long status, const char *body, size_t len,
		       const char *why)
{
	struct ledger *l = arg;
	assert(loop_is_current(l->loop));
	json_t *doc = err ? NULL : json_loadb(body, len, 0, NULL);
	json_t *list = json_is_array(doc) ? doc : json_object_get(doc, "entries");
	pthread_mutex_lock(&l->lock);
	l->fetching = false;
	if (json_is_array(list)) {
		json_t *sorted = normalize(list);
		bool changed = !json_equal(sorted, l->entries);
		json_decref(l->entries);
		l->entries = sorted;
		l->fetched_at = clock_wall_s();
		l->fetched_us = clock_now_us();
		l->failed_us = 0;
		free(l->last_error);
		l->last_error = NULL;
		l->deliver_due_us = 0; /* the ledger answers again: deliver without waiting */
		if (changed)
			l->changed_at = l->fetched_at;
		char *text = json_dumps(sorted, JSON_COMPACT);
		store_cache_put(l->store, "ledger", text, l->fetched_at);
		free(text);
	} else {
		l->failed_us = clock_now_us();
		l->failed_at = clock_wall_s();
		free(l->last_error);
		l->last_error = xstrdup(err ? why : "the answer holds no list of entries");
	}
	char *alert = l->last_error ? xstrdup(l->last_error) : NULL;
	struct ledger_waiter *w = l->waiters;
	l->waiters = NULL;
	pthread_mutex_unlock(&l->lock);
	json_decref(doc);
	cluster_set_alert(l->cluster, "ledger", alert);
	free(alert);
	while (w) {
		struct ledger_waiter *next = w->next;
		w->done(w->arg);
		free(w);
		w = next;
	}
}

int ledger_refresh(struct ledger *l, ledger_done_fn done, void *arg)
{
	struct config *cfg = cluster_get_config(l->cluster);
	uint64_t max_age = (uint64_t) cfg->probe.max_age_ms * 1000u;
	uint64_t retry = (uint64_t) cfg->probe.interval_s * 1000000u;
	long timeout = cfg->probe.timeout_ms;
	config_unref(cfg);
	uint64_t now = clock_now_us();
	struct endpoint base;
	if (ledger_base(l, &base, NULL) < 0)
		return 1;
	pthread_mutex_lock(&l->lock);
	bool fresh = l->fetched_us && now - l->fetched_us <= max_age;
	bool recently_failed = l->failed_us && now - l->failed_us < retry;
	bool wait = !fresh && !recently_failed;
	if (wait && done) {
		struct ledger_waiter *w = xcalloc(1, sizeof(*w));
		w->done = done;
		w->arg = arg;
		w->next = l->waiters;
		l->waiters = w;
	}
	bool start = !fresh && !l->fetching;
	if (start)
		l->fetching = true;
	pthread_mutex_unlock(&l->lock);
	if (start) {
		char *token = ledger_token(l);
		struct rest_request req = {
			.method = "GET", .where = &base, .token = token, .timeout_ms = timeout};
		rest_call(l->loop, &req, fetch_done, l);
		free(token);
	}
	endpoint_clear(&base);
	return wait ? 0 : 1;
}

/* ---- delivery of records ---- */

static void deliver_next(struct ledger *l);

struct delivery {
	struct ledger *l;
	int64_t id;
};

static void deliver_done(void *arg, int err, long status, const char *body, size_t len,
			 const char *why)
{
	struct delivery *d = arg;
	struct ledger *l = d->l;
	assert(loop_is_current(l->loop));
	l->delivering = false;
	if (err == -ECANCELED) {
		free(d);
		return;
	}
	if (!err) {
		if (l->deliver_failures)
			log_info("ledger: delivering again after %u failed attempt%s",
				 l->deliver_failures, l->deliver_failures == 1 ? "" : "s");
		l->deliver_failures = 0;
		l->deliver_due_us = 0;
		store_outbox_done(l->store, d->id);
		pthread_mutex_lock(&l->lock);
		/* the copy gets it at the next fetch; until then it stays shown as pending */
		l->fetched_us = 0;
		pthread_mutex_unlock(&l->lock);
		cluster_add_event(l->cluster, "ledger", "record", "delivered (outbox entry %lld)",
				  (long long) d->id);
		free(d);
		ledger_refresh(l, NULL, NULL);
		deliver_next(l);
		return;
	}
	char clean[512];
	util_escape_controls(why, clean, sizeof(clean));
	if (status == 400 || status == 409 || status == 422) {
		/* the ledger read it and will never take it: say so (in alerts and in
		 * ledger/source), and do not block the rest. Anything else (404 from an agent
		 * without --ledger, 5xx, no answer) may pass: the record waits. */
		log_err("ledger: record (outbox entry %lld) refused: %s", (long long) d->id, clean);
		cluster_set_alert(l->cluster, "ledger record", clean);
		struct buf b;
		buf_init(&b);
		buf_printf(&b, "outbox entry %lld: %s", (long long) d->id, clean);
		pthread_mutex_lock(&l->lock);
		free(l->refused);
		l->refused = buf_steal(&b, NULL);
		pthread_mutex_unlock(&l->lock);
		store_outbox_done(l->store, d->id);
		free(d);
		deliver_next(l);
		return;
	}
	/* kept; tried again after a growing wait (one log line when it starts failing) */
	if (l->deliver_failures++ == 0)
		log_warn("ledger: delivery of outbox entry %lld failing: %s; retrying with backoff",
			 (long long) d->id, clean);
	uint64_t wait = DELIVER_EVERY_US;
	for (unsigned i = 1; i < l->deliver_failures && wait < DELIVER_MAX_US; i++)
		wait *= 2;
	l->deliver_due_us = clock_now_us() + (wait < DELIVER_MAX_US ? wait : DELIVER_MAX_US);
	free(d);
}

static void deliver_next(struct ledger *l)
{
	assert(loop_is_current(l->loop));
	if (l->delivering)
		return;
	int64_t *ids = NULL;
	char **keys = NULL, **bodies = NULL;
	size_t n = 0;
	if (store_outbox_list(l->store, "ledger", &ids, &keys, &bodies, &n) < 0)
		return;
	/* the pending view follows the outbox */
	json_t *pending = json_array();
	for (size_t i = 0; i < n; i++) {
		json_t *e = json_loads(bodies[i], 0, NULL);
		if (e)
			json_array_append_new(pending, e);
	}
	pthread_mutex_lock(&l->lock);
	if (!json_equal(pending, l->pending))
		l->changed_at = clock_wall_s();
	json_decref(l->pending);
	l->pending = pending;
	pthread_mutex_unlock(&l->lock);
	struct endpoint base, url;
	bool have_base =
		n && clock_now_us() >= l->deliver_due_us && ledger_base(l, &base, NULL) == 0;
	if (have_base) {
		endpoint_init_sub(&url, &base, "/record");
		char *token = ledger_token(l);
		struct delivery *d = xcalloc(1, sizeof(*d));
		d->l = l;
		d->id = ids[0];
		struct config *cfg = cluster_get_config(l->cluster);
		struct rest_request req = {.method = "POST",
					   .where = &url,
					   .token = token,
					   .body = bodies[0],
					   .body_len = strlen(bodies[0]),
					   .timeout_ms = cfg->probe.timeout_ms};
		config_unref(cfg);
		rest_call(l->loop, &req, deliver_done, d);
		l->delivering = true;
		free(token);
		endpoint_clear(&url);
	}
	if (have_base)
		endpoint_clear(&base);
	for (size_t i = 0; i < n; i++) {
		free(keys[i]);
		free(bodies[i]);
	}
	free(ids);
	free(keys);
	free(bodies);
}

static void deliver_tick(void *arg)
{
	struct ledger *l = arg;
	deliver_next(l);
	loop_timer_add(l->loop, clock_now_us() + DELIVER_EVERY_US, deliver_tick, l);
}

int ledger_start(struct ledger *l)
{
	char *text = NULL;
	double at = 0;
	if (store_cache_get(l->store, "ledger", &text, &at) == 0) {
		json_t *list = json_loads(text, 0, NULL);
		pthread_mutex_lock(&l->lock);
		if (json_is_array(list)) {
			json_decref(l->entries);
			l->entries = normalize(list);
			l->fetched_at = at; /* shown as cached, with its age, until a fetch */
		}
		pthread_mutex_unlock(&l->lock);
		json_decref(list);
		free(text);
	}
	loop_post(l->loop, deliver_tick, l);
	return 0;
}

/* ---- rendering ---- */

char **ledger_steps(struct ledger *l, size_t *ret_n)
{
	pthread_mutex_lock(&l->lock);
	json_t *all = view_locked(l);
	pthread_mutex_unlock(&l->lock);
	size_t n = json_array_size(all), k = 0;
	char **steps = xcalloc(n + 1, sizeof(*steps));
	json_int_t prev = -1;
	for (size_t i = 0; i < n; i++) {
		json_int_t s = ledger_entry_step(json_array_get(all, i));
		if (k && s == prev)
			continue;
		char num[32];
		snprintf(num, sizeof(num), "%lld", (long long) s);
		steps[k++] = xstrdup(num);
		prev = s;
	}
	json_decref(all);
	*ret_n = k;
	return steps;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

char **ledger_metric_names(struct ledger *l, size_t *ret_n)
{
	pthread_mutex_lock(&l->lock);
	json_t *all = view_locked(l);
	pthread_mutex_unlock(&l->lock);
	json_t *seen = json_object();
	size_t i;
	json_t *e;
	json_array_foreach (all, i, e) {
		const char *k;
		json_t *v;
		json_object_foreach (json_object_get(e, "metrics"), k, v)
			if (json_is_number(v))
				json_object_set_new(seen, k, json_true());
	}
	size_t n = json_object_size(seen), m = 0;
	char **names = xcalloc(n + 1, sizeof(*names));
	const char *k;
	json_t *v;
	json_object_foreach (seen, k, v)
		names[m++] = xstrdup(k);
	qsort(names, m, sizeof(*names), cmp_str);
	json_decref(seen);
	json_decref(all);
	*ret_n = m;
	return names;
}

char **ledger_metrics(struct ledger *l, size_t *ret_n)
{
	size_t n = 0, m = 0;
	char **raw = ledger_metric_names(l, &n);
	char **files = xcalloc(n + 1, sizeof(*files));
	struct buf left;
	buf_init(&left);
	for (size_t i = 0; i < n; i++) {
		/* names from a remote host: encoded like model names ('%' and '/'), and left
		 * out (with an alert) when even that is no file name: "", ".", "..", control
		 * bytes, too long */
		char *f = models_encode_name(raw[i]);
		if (name_is_valid(f)) {
			files[m++] = f;
		} else {
			char clean[128];
			util_escape_controls(raw[i], clean, sizeof(clean));
			buf_printf(&left, "%s\"%s\"", left.len ? ", " : "", clean);
			free(f);
		}
		free(raw[i]);
	}
	free(raw);
	qsort(files, m, sizeof(*files), cmp_str);
	struct buf why;
	buf_init(&why);
	if (left.len)
		buf_printf(&why,
			   "metric names that cannot be file names, left out of ledger/best/: %s",
			   left.data);
	cluster_set_alert(l->cluster, "ledger metrics", why.data);
	buf_free(&why);
	buf_free(&left);
	*ret_n = m;
	return files;
}

json_t *ledger_best_of(json_t *all, const char *metric)
{
	bool lower = ledger_lower_is_better(metric);
	json_t *best = NULL;
	double bv = 0;
	size_t i;
	json_t *e;
	json_array_foreach (all, i, e) {
		json_t *v = json_object_get(json_object_get(e, "metrics"), metric);
		if (!json_is_number(v))
			continue;
		double x = json_number_value(v);
		if (!best || (lower ? x < bv : x > bv)) {
			best = e;
			bv = x;
		}
	}
	return best;
}

void ledger_source_get(struct ledger *l, struct ledger_source *ret)
{
	struct endpoint base;
	*ret = (struct ledger_source){0};
	ret->declared = ledger_base(l, &base, &ret->host) == 0;
	if (ret->declared) {
		ret->url = xstrdup(base.url);
		endpoint_clear(&base);
	}
	pthread_mutex_lock(&l->lock);
	ret->live = l->fetched_us && !l->failed_us;
	ret->fetched_at = l->fetched_at;
	if (l->fetched_at > 0 && l->failed_us && l->failed_at > l->fetched_at)
		ret->age_s = l->failed_at - l->fetched_at;
	ret->error = l->last_error ? xstrdup(l->last_error) : NULL;
	ret->entries = json_array_size(l->entries);
	ret->pending_records = json_array_size(l->pending);
	ret->refused = l->refused ? xstrdup(l->refused) : NULL;
	pthread_mutex_unlock(&l->lock);
}

void ledger_source_clear(struct ledger_source *s)
{
	free(s->host);
	free(s->url);
	free(s->error);
	free(s->refused);
}

double ledger_changed_at(struct ledger *l)
{
	pthread_mutex_lock(&l->lock);
	double r = l->changed_at;
	pthread_mutex_unlock(&l->lock);
	return r;
}

/* ---- recording ---- */

static void kick_delivery(void *arg)
{
	deliver_next(arg);
}

int ledger_record(struct ledger *l, const char *text, size_t len, char *errbuf, size_t errlen)
{
	if (len > LEDGER_RECORD_MAX) {
		snprintf(errbuf, errlen, "the record is %zu bytes; the limit is %u", len,
			 LEDGER_RECORD_MAX);
		return -EFBIG;
	}
	json_error_t jerr;
	json_t *e = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!e) {
		snprintf(errbuf, errlen, "line %d, column %d: %s", jerr.line, jerr.column,
			 jerr.text);
		return -EINVAL;
	}
	int r = -EINVAL;
	json_t *step = json_object_get(e, "step"), *metrics = json_object_get(e, "metrics");
	json_t *path = json_object_get(e, "path"), *created = json_object_get(e, "created_at");
	if (!json_is_object(e)) {
		snprintf(errbuf, errlen,
			 "a record is a JSON object, like {\"step\": 1000, "
			 "\"metrics\": {\"val_loss\": 0.61}, \"path\": \"...\"}");
		goto out_free_entry;
	}
	if (!json_is_integer(step) || json_integer_value(step) < 0) {
		snprintf(errbuf, errlen, "field \"step\" must be a whole number >= 0");
		goto out_free_entry;
	}
	if (!json_is_object(metrics) || json_object_size(metrics) == 0) {
		snprintf(errbuf, errlen,
			 "field \"metrics\" must be an object of numbers, like "
			 "{\"val_loss\": 0.61}");
		goto out_free_entry;
	}
	const char *k;
	json_t *v;
	json_object_foreach (metrics, k, v) {
		if (!json_is_number(v)) {
			snprintf(errbuf, errlen, "metric \"%s\" must be a number", k);
			goto out_free_entry;
		}
	}
	if (!json_is_string(path) || !json_string_length(path)) {
		snprintf(errbuf, errlen, "field \"path\" must say where the checkpoint lives");
		goto out_free_entry;
	}
	if (created && !json_is_string(created) && !json_is_number(created)) {
		snprintf(errbuf, errlen,
			 "field \"created_at\" must be a time (a string or a number)");
		goto out_free_entry;
	}
	if (json_object_get(e, "record_id")) {
		snprintf(errbuf, errlen, "field \"record_id\" is clusterfs's own; leave it out");
		goto out_free_entry;
	}
	if (!created) {
		char ts[32];
		clock_format_utc(clock_wall_s(), ts);
		json_object_set_new(e, "created_at", json_string(ts));
	}
	/* the id the ledger uses to drop a second delivery of the same record */
	unsigned char rnd[8] = {0};
	int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		if (read(fd, rnd, sizeof(rnd)) != (ssize_t) sizeof(rnd))
			memset(rnd, 0, sizeof(rnd));
		close(fd);
	}
	pthread_mutex_lock(&l->lock);
	uint64_t counter = ++l->counter;
	pthread_mutex_unlock(&l->lock);
	char rid[96];
	snprintf(rid, sizeof(rid), "%s-%llu-%02x%02x%02x%02x%02x%02x%02x%02x",
		 store_instance_id(l->store), (unsigned long long) counter, rnd[0], rnd[1], rnd[2],
		 rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
	json_object_set_new(e, "record_id", json_string(rid));
	char *body = json_dumps(e, JSON_COMPACT | JSON_PRESERVE_ORDER);
	r = store_outbox_add(l->store, "ledger", rid, body, NULL);
	if (r < 0) {
		snprintf(errbuf, errlen, "cannot store the record: %s",
			 r == -ENOSPC ? "the state directory's disk is full" : strerror(-r));
	} else {
		pthread_mutex_lock(&l->lock);
		json_array_append(l->pending, e);
		l->changed_at = clock_wall_s();
		pthread_mutex_unlock(&l->lock);
		cluster_add_event(l->cluster, "ledger", "record", "step %lld queued for delivery",
				  (long long) json_integer_value(step));
		loop_post(l->loop, kick_delivery, l);
	}
	free(body);
out_free_entry:
	json_decref(e);
	return r;
}

double ledger_fetched_at(struct ledger *l)
{
	pthread_mutex_lock(&l->lock);
	double r = l->failed_at > l->fetched_at ? l->failed_at : l->fetched_at;
	pthread_mutex_unlock(&l->lock);
	return r;
}
