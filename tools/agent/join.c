/* The agent's side of joining: registration, heartbeats and leaving, over HTTPS. */
#include "tools/agent/join.h"
#include "backend/util.h"
#include "httpd/dnssd.h"
#include "httpd/tls.h"

#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define JOIN_TIMEOUT_MS     10000       /* one request, connection included */
#define JOIN_BACKOFF_MIN_MS 500         /* first retry of an unreachable control plane */
#define JOIN_BACKOFF_MAX_MS 30000       /* retries never wait longer */
#define JOIN_MAX_ANSWER     (64 * 1024) /* the control plane's answers are small */
#define JOIN_MAX_WORK                                                                              \
	(16 * 1024 * 1024)     /* a batch of relayed requests, bodies in
						* base64 (an input is up to 1 MiB) */
#define JOIN_SYSTEM_EVERY 20   /* heartbeats between two system documents */
#define JOIN_BROWSE_MS    5000 /* --join auto: one browse of the LAN */

struct agent_join {
	const struct join_options *opts; /* &own */
	struct join_options own;         /* the caller's, with what --join auto found */
	char found_url[128];             /* --join auto: "https://ADDR:PORT" found */
	char found_fp[128];              /* and the key it pins */
	const struct api_context *api;
	char *join_token; /* secret */
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond; /* signalled by agent_join_stop() */
	bool stopping;       /* protected by lock; also read unlocked by transfers, to abort */
	bool failed;         /* written by the thread before it ends; read after the join */
	pthread_t reverse_thread;
	bool reverse_started;
	int workers; /* relayed requests running; protected by lock */
	/* Connections and TLS sessions shared by every transfer (the relayed requests run on
	 * threads of their own): a relayed request reuses a connection to our own API and to
	 * the control plane instead of two TLS handshakes. */
	CURLSH *share;
	pthread_mutex_t share_locks[CURL_LOCK_DATA_LAST];
};

#define JOIN_WORK_WAIT_S   30  /* the reverse channel's long poll */
#define JOIN_MAX_WORKERS   64  /* relayed requests run at once; more wait their turn */
#define JOIN_RELAY_TIMEOUT 130 /* s: a relayed blocking poll may wait this long */

struct answer {
	long status;
	struct buf body;
	char error[CURL_ERROR_SIZE];
	char content_type[128], total_size[32], retry_after[32]; /* headers, "" when absent */
	size_t max;                                              /* the body's bound */
};

/* One request: what join_http() sends. */
struct outgoing {
	const char *method;
	const char *url;
	const char *bearer;
	const char *content_type; /* or NULL */
	const char *body;         /* or NULL */
	size_t body_len;
	const char *const *extra_headers; /* NULL-terminated, or NULL */
	long timeout_ms;
	const char *ca_file, *fingerprint; /* how the peer is verified */
	const volatile bool *abort;        /* aborts the transfer when it becomes true */
	CURLSH *share;                     /* or NULL */
	size_t max_answer;                 /* 0: JOIN_MAX_ANSWER */
};

static size_t answer_write(char *data, size_t size, size_t n, void *arg)
{
	struct answer *a = arg;
	if (a->body.len + size * n > a->max)
		return 0;
	buf_append(&a->body, data, size * n);
	return size * n;
}

static size_t answer_header(char *data, size_t size, size_t n, void *arg)
{
	struct answer *a = arg;
	size_t len = size * n;
	static const struct {
		const char *name;
		size_t off, cap;
	} keep[] = {
		{"content-type:", offsetof(struct answer, content_type), 128},
		{"x-total-size:", offsetof(struct answer, total_size), 32},
		{"retry-after:", offsetof(struct answer, retry_after), 32},
	};
	for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++) {
		size_t kl = strlen(keep[i].name);
		if (len <= kl || strncasecmp(data, keep[i].name, kl) != 0)
			continue;
		const char *v = data + kl;
		size_t vl = len - kl;
		while (vl && (*v == ' ' || *v == '\t'))
			v++, vl--;
		while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
			vl--;
		char *out = (char *) a + keep[i].off;
		snprintf(out, keep[i].cap, "%.*s", (int) vl, v);
	}
	return len;
}

static int abort_check(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
	const volatile bool *abort = arg;
	return abort && *abort ? 1 : 0;
}

/* Performs one request. a->status is 0 when no HTTP answer came (a->error says why). */
static void join_http(const struct outgoing *o, struct answer *a)
{
	char auth[1024], ctype[160], pin[128];
	memset(a, 0, sizeof(*a));
	buf_init(&a->body);
	a->max = o->max_answer ? o->max_answer : JOIN_MAX_ANSWER;
	snprintf(auth, sizeof(auth), "Authorization: Bearer %s", o->bearer);
	struct curl_slist *h = curl_slist_append(NULL, auth);
	if (o->content_type) {
		snprintf(ctype, sizeof(ctype), "Content-Type: %s", o->content_type);
		h = curl_slist_append(h, ctype);
	}
	h = curl_slist_append(h, "Expect:");
	for (size_t i = 0; o->extra_headers && o->extra_headers[i]; i++)
		h = curl_slist_append(h, o->extra_headers[i]);

	CURL *e = curl_easy_init();
	curl_easy_setopt(e, CURLOPT_URL, o->url);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https,http");
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, o->method);
	if (o->body) {
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, o->body);
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) o->body_len);
	} else if (strcmp(o->method, "GET") != 0) {
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
	}
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, o->timeout_ms);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long) JOIN_TIMEOUT_MS);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, answer_write);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, a);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, answer_header);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, a);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, a->error);
	curl_easy_setopt(e, CURLOPT_SSLVERSION, (long) CURL_SSLVERSION_TLSv1_2);
	if (o->abort) {
		curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, abort_check);
		curl_easy_setopt(e, CURLOPT_XFERINFODATA, (void *) o->abort);
		curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
	}
	if (o->share)
		curl_easy_setopt(e, CURLOPT_SHARE, o->share);
	curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
	if (o->ca_file)
		curl_easy_setopt(e, CURLOPT_CAINFO, o->ca_file);
	if (o->fingerprint) {
		snprintf(pin, sizeof(pin), "sha256//%s", o->fingerprint + strlen("sha256:"));
		curl_easy_setopt(e, CURLOPT_PINNEDPUBLICKEY, pin);
		if (!o->ca_file) {
			/* a self-signed certificate has no CA: the pin alone verifies it */
			curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
			curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
		}
	}
	CURLcode code = curl_easy_perform(e);
	if (code == CURLE_OK)
		curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &a->status);
	else if (!a->error[0])
		snprintf(a->error, sizeof(a->error), "%s", curl_easy_strerror(code));
	curl_slist_free_all(h);
	curl_easy_cleanup(e);
	explicit_bzero(auth, sizeof(auth));
}

/* POSTs `doc` (borrowed) as JSON to URL + path with the join token, on a connection of
 * `share` (or NULL: a connection of its own). */
static void join_post(const struct join_options *o, const char *join_token, const char *path,
		      const json_t *doc, CURLSH *share, struct answer *a)
{
	char *body = json_dumps(doc, JSON_COMPACT);
	char url[1024];
	snprintf(url, sizeof(url), "%s%s", o->url, path);
	struct outgoing out = {
		.method = "POST",
		.url = url,
		.bearer = join_token,
		.content_type = "application/json",
		.body = body ? body : "{}",
		.body_len = body ? strlen(body) : 2,
		.timeout_ms = JOIN_TIMEOUT_MS,
		.ca_file = o->ca_file,
		.fingerprint = o->fingerprint,
		.share = share,
	};
	join_http(&out, a);
	if (body) {
		explicit_bzero(body, strlen(body)); /* it may hold the agent's token */
		free(body);
	}
}

/* The control plane's {"error": ...}, or the body, for a log line. Borrowed from `a`. */
static const char *answer_reason(struct answer *a, char *out, size_t outlen)
{
	json_t *doc = json_loadb(a->body.data ? a->body.data : "", a->body.len, 0, NULL);
	const char *e = json_string_value(json_object_get(doc, "error"));
	snprintf(out, outlen, "%s", e ? e : a->error[0] ? a->error : "(no reason given)");
	json_decref(doc);
	return out;
}

/* Sleeps ms, or less when stopping. True when stopping. */
static bool join_sleep(struct agent_join *j, long ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&j->lock);
	while (!j->stopping && pthread_cond_timedwait(&j->cond, &j->lock, &ts) != ETIMEDOUT)
		;
	bool stop = j->stopping;
	pthread_mutex_unlock(&j->lock);
	return stop;
}

static json_t *join_registration(const struct agent_join *j)
{
	const struct join_options *o = j->opts;
	json_t *doc =
		json_pack("{ss si ss ss sb}", "name", j->api->name, "port", o->port, "token",
			  o->agent_token, "version", CLUSTERFS_VERSION, "reverse", o->reverse);
	if (o->agent_fingerprint)
		json_object_set_new(doc, "fingerprint", json_string(o->agent_fingerprint));
	if (o->advertise)
		json_object_set_new(doc, "host", json_string(o->advertise));
	if (o->role)
		json_object_set_new(doc, "role", json_string(o->role));
	if (o->capabilities) {
		json_t *caps = json_array();
		char *copy = xstrdup(o->capabilities), *save = NULL;
		for (char *c = strtok_r(copy, ",", &save); c; c = strtok_r(NULL, ",", &save))
			json_array_append_new(caps, json_string(c));
		free(copy);
		json_object_set_new(doc, "capabilities", caps);
	}
	return doc;
}

/* Registers until it succeeds (true, *ret_heartbeat_s set), is refused or stops (false). */
static bool join_register(struct agent_join *j, int *ret_heartbeat_s)
{
	json_t *doc = join_registration(j);
	long backoff = JOIN_BACKOFF_MIN_MS;
	bool ok = false;
	char why[512];
	for (;;) {
		struct answer a;
		join_post(j->opts, j->join_token, "/api/join", doc, j->share, &a);
		if (a.status == 200 || a.status == 201) {
			json_t *ans =
				json_loadb(a.body.data ? a.body.data : "", a.body.len, 0, NULL);
			json_int_t hb = json_integer_value(json_object_get(ans, "heartbeat_s"));
			*ret_heartbeat_s = hb > 0 && hb <= 86400 ? (int) hb : 45;
			json_decref(ans);
			log_info("joined %s as %s%s; heartbeat every %d s", j->opts->url,
				 j->api->name, a.status == 200 ? " (again: entry updated)" : "",
				 *ret_heartbeat_s);
			buf_free(&a.body);
			ok = true;
			break;
		}
		if (a.status >= 400 && a.status < 500 && a.status != 408 && a.status != 429) {
			log_err("the control plane %s refused to let %s join (HTTP %ld): %s",
				j->opts->url, j->api->name, a.status,
				answer_reason(&a, why, sizeof(why)));
			buf_free(&a.body);
			j->failed = true;
			break;
		}
		log_warn("cannot join %s yet (%s); retrying in %ld ms", j->opts->url,
			 a.status ? "HTTP error" : a.error, backoff);
		buf_free(&a.body);
		if (join_sleep(j, backoff))
			break;
		backoff = backoff * 2 > JOIN_BACKOFF_MAX_MS ? JOIN_BACKOFF_MAX_MS : backoff * 2;
	}
	json_decref(doc);
	return ok;
}

/* One relayed request: run against our own API, answered with a POST. */
struct relayed {
	struct agent_join *j;
	json_int_t id;
	char *method, *path, *content_type;
	unsigned char *body;
	size_t body_len;
};

static void relayed_run(struct relayed *w)
{
	struct agent_join *j = w->j;
	const struct join_options *o = j->opts;
	char url[4096];
	snprintf(url, sizeof(url), "%s%s", o->local_url, w->path);
	struct outgoing local = {
		.method = w->method,
		.url = url,
		.bearer = o->agent_token,
		.content_type = w->content_type,
		.body = (const char *) w->body,
		.body_len = w->body_len,
		.timeout_ms = JOIN_RELAY_TIMEOUT * 1000L,
		.fingerprint = o->agent_fingerprint,
		.abort = &j->stopping,
		.share = j->share,
		/* what the listener takes back: an output's bytes may be that large */
		.max_answer = SERVER_MAX_BODY,
	};
	struct answer a;
	join_http(&local, &a);

	char status[48], total[64], retry[64];
	snprintf(status, sizeof(status), "X-Relay-Status: %ld", a.status ? a.status : 502);
	snprintf(total, sizeof(total), "X-Total-Size: %s", a.total_size);
	snprintf(retry, sizeof(retry), "Retry-After: %s", a.retry_after);
	const char *extra[4] = {status, NULL, NULL, NULL};
	size_t ne = 1;
	if (a.total_size[0])
		extra[ne++] = total;
	if (a.retry_after[0])
		extra[ne++] = retry;
	if (!a.status) {
		buf_free(&a.body);
		buf_printf(&a.body,
			   "{\"error\": \"the agent could not run the relayed request\"}\n");
		snprintf(a.content_type, sizeof(a.content_type), "application/json");
	}
	char rurl[1024];
	snprintf(rurl, sizeof(rurl), "%s/api/join/result/%s?id=%lld", o->url, j->api->name,
		 (long long) w->id);
	struct outgoing back = {
		.method = "POST",
		.url = rurl,
		.bearer = o->agent_token,
		.content_type = a.content_type[0] ? a.content_type : "application/octet-stream",
		.body = a.body.data ? a.body.data : "",
		.body_len = a.body.len,
		.extra_headers = extra,
		.timeout_ms = JOIN_TIMEOUT_MS,
		.ca_file = o->ca_file,
		.fingerprint = o->fingerprint,
		.abort = &j->stopping,
		.share = j->share,
	};
	struct answer r;
	join_http(&back, &r);
	if (r.status != 200 && r.status != 410)
		log_warn("cannot answer relayed request %lld: %s", (long long) w->id,
			 r.status ? "HTTP error" : r.error);
	buf_free(&r.body);
	buf_free(&a.body);
}

static void relayed_free(struct relayed *w)
{
	free(w->method);
	free(w->path);
	free(w->content_type);
	free(w->body);
	free(w);
}

static void *relayed_main(void *arg)
{
	struct relayed *w = arg;
	struct agent_join *j = w->j;
	relayed_run(w);
	relayed_free(w);
	pthread_mutex_lock(&j->lock);
	j->workers--;
	pthread_cond_broadcast(&j->cond);
	pthread_mutex_unlock(&j->lock);
	return NULL;
}

/* Starts one relayed request on a thread of its own, waiting while JOIN_MAX_WORKERS run
 * (a blocking task poll holds one for its whole wait). */
static void relayed_start(struct agent_join *j, json_t *item)
{
	struct relayed *w = xcalloc(1, sizeof(*w));
	const char *method = json_string_value(json_object_get(item, "method"));
	const char *path = json_string_value(json_object_get(item, "path"));
	const char *body = json_string_value(json_object_get(item, "body"));
	const char *ct = json_string_value(json_object_get(item, "content_type"));
	w->j = j;
	w->id = json_integer_value(json_object_get(item, "id"));
	if (!method || !path || path[0] != '/' || !w->id) {
		free(w);
		return;
	}
	w->method = xstrdup(method);
	w->path = xstrdup(path);
	w->content_type = ct ? xstrdup(ct) : NULL;
	if (body) {
		size_t cap = strlen(body) / 4 * 3 + 3;
		w->body = xcalloc(1, cap);
		long n = util_base64_decode(body, w->body, cap);
		w->body_len = n > 0 ? (size_t) n : 0;
	}
	pthread_mutex_lock(&j->lock);
	while (j->workers >= JOIN_MAX_WORKERS && !j->stopping)
		pthread_cond_wait(&j->cond, &j->lock);
	j->workers++;
	pthread_mutex_unlock(&j->lock);
	pthread_t t;
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	if (pthread_create(&t, &attr, relayed_main, w) != 0)
		relayed_main(w); /* no thread to spare: run it here */
	pthread_attr_destroy(&attr);
}

/* The reverse channel: one long poll at a time, re-established with backoff. */
static void *reverse_main(void *arg)
{
	struct agent_join *j = arg;
	const struct join_options *o = j->opts;
	char url[1024];
	snprintf(url, sizeof(url), "%s/api/join/work/%s?wait=%d", o->url, j->api->name,
		 JOIN_WORK_WAIT_S);
	long backoff = JOIN_BACKOFF_MIN_MS;
	bool up = false;
	while (!j->stopping) {
		struct outgoing poll = {
			.method = "GET",
			.url = url,
			.bearer = o->agent_token,
			.timeout_ms = (JOIN_WORK_WAIT_S + 15) * 1000L,
			.ca_file = o->ca_file,
			.fingerprint = o->fingerprint,
			.abort = &j->stopping,
			.share = j->share,
			.max_answer = JOIN_MAX_WORK,
		};
		struct answer a;
		join_http(&poll, &a);
		json_t *doc = a.status == 200 ? json_loadb(a.body.data ? a.body.data : "",
							   a.body.len, 0, NULL)
					      : NULL;
		json_t *work = json_object_get(doc, "work");
		if (!json_is_array(work)) {
			if (j->stopping) {
				json_decref(doc);
				buf_free(&a.body);
				break;
			}
			/* 401 until the control plane has loaded our drop-in: retry too */
			log_warn("reverse channel to %s down (%s); retrying in %ld ms", o->url,
				 a.status ? "HTTP error" : a.error, backoff);
			up = false;
			json_decref(doc);
			buf_free(&a.body);
			if (join_sleep(j, backoff))
				break;
			backoff = backoff * 2 > JOIN_BACKOFF_MAX_MS ? JOIN_BACKOFF_MAX_MS
								    : backoff * 2;
			continue;
		}
		if (!up)
			log_info("reverse channel to %s up", o->url);
		up = true;
		backoff = JOIN_BACKOFF_MIN_MS;
		size_t i;
		json_t *item;
		json_array_foreach (work, i, item)
			relayed_start(j, item);
		json_decref(doc);
		buf_free(&a.body);
	}
	return NULL;
}

static void share_lock(CURL *e, curl_lock_data data, curl_lock_access access, void *arg)
{
	struct agent_join *j = arg;
	pthread_mutex_lock(&j->share_locks[data]);
}

static void share_unlock(CURL *e, curl_lock_data data, void *arg)
{
	struct agent_join *j = arg;
	pthread_mutex_unlock(&j->share_locks[data]);
}

/* --join auto: what a browse is looking for, and what it found. */
struct discover {
	const char *join_token; /* a vouch made with it proves a fingerprint... */
	const char *pin;        /* ...unless --join-fingerprint pins one: then only that one */
	char url[128], fp[128];
};

/* Whether a _clusterfs-join._tcp announcement is our control plane. Anyone on the LAN can
 * announce: its fingerprint counts only when --join-fingerprint names it or the
 * announcement vouches for it with our join token (tls_vouch); the TLS connection then pins
 * it, so the join token is never sent to another key. */
static bool join_accept(void *arg, const struct dnssd_service *s)
{
	struct discover *d = arg;
	const char *fp = dnssd_service_txt(s, "fp");
	const char *mac = dnssd_service_txt(s, "mac");
	const char *cluster = dnssd_service_txt(s, "cluster");
	if (!fp || strncmp(fp, "sha256:", 7) != 0 || strlen(fp) >= sizeof(d->fp)) {
		log_warn("--join auto: \"%s\" at %s:%d announces no key fingerprint: ignored",
			 s->name, s->address, s->port);
		return false;
	}
	if (d->pin ? strcmp(fp, d->pin) != 0 : !tls_vouch_check(d->join_token, fp, mac)) {
		log_warn("--join auto: \"%s\" at %s:%d is %s: ignored", s->name, s->address,
			 s->port,
			 d->pin ? "another key than --join-fingerprint"
				: "not vouched for with our join token (another cluster, or an "
				  "impostor)");
		return false;
	}
	snprintf(d->url, sizeof(d->url), "https://%s:%d", s->address, s->port);
	snprintf(d->fp, sizeof(d->fp), "%s", fp);
	log_info("--join auto: found the control plane of %s at %s:%d (\"%s\" on %s, key %s)",
		 cluster ? cluster : "(unnamed)", s->address, s->port, s->name, s->host, fp);
	return true;
}

/* Browses until a control plane is found (true: j->own points at it), the agent stops or
 * avahi is missing from this build (false). */
static bool join_discover(struct agent_join *j)
{
	long backoff = JOIN_BACKOFF_MIN_MS;
	char err[512];
	for (;;) {
		struct discover d = {.join_token = j->join_token, .pin = j->own.fingerprint};
		int r = dnssd_browse(DNSSD_JOIN_TYPE, JOIN_BROWSE_MS,
				     (const volatile bool *) &j->stopping, join_accept, &d, err,
				     sizeof(err));
		if (r == 0) {
			memcpy(j->found_url, d.url, sizeof(d.url));
			memcpy(j->found_fp, d.fp, sizeof(d.fp));
			j->own.url = j->found_url;
			j->own.fingerprint = j->found_fp;
			return true;
		}
		if (j->stopping)
			return false;
		if (r == -ENOTSUP) {
			log_err("--join auto: %s", err);
			j->failed = true;
			return false;
		}
		log_warn("--join auto: %s; browsing again in %ld ms", err, backoff);
		if (join_sleep(j, backoff))
			return false;
		backoff = backoff * 2 > JOIN_BACKOFF_MAX_MS ? JOIN_BACKOFF_MAX_MS : backoff * 2;
	}
}

static void *join_main(void *arg)
{
	struct agent_join *j = arg;
	int period_s = 45;
	if (strcmp(j->own.url, "auto") == 0 && !join_discover(j)) {
		if (j->failed)
			kill(getpid(), SIGTERM);
		return NULL;
	}
	if (!join_register(j, &period_s)) {
		if (j->failed)
			kill(getpid(), SIGTERM); /* the agent's main thread ends, and says why */
		return NULL;
	}
	if (j->opts->reverse && pthread_create(&j->reverse_thread, NULL, reverse_main, j) == 0)
		j->reverse_started = true;
	char err[256], why[512];
	unsigned beat = 0;
	long wait_ms = 0; /* the first heartbeat goes at once: the node shows up healthy */
	while (!join_sleep(j, wait_ms)) {
		json_t *health = NULL, *system = NULL;
		wait_ms = (long) period_s * 1000;
		if (api_health_doc(j->api, &health, err, sizeof(err)) < 0) {
			log_warn("heartbeat skipped: %s", err);
			continue;
		}
		if (beat % JOIN_SYSTEM_EVERY == 0 &&
		    api_system_doc(j->api, &system, err, sizeof(err)) < 0)
			system = NULL;
		json_t *doc = json_pack("{ss ss so}", "name", j->api->name, "token",
					j->opts->agent_token, "health", health);
		if (system)
			json_object_set_new(doc, "system", system);
		struct answer a;
		join_post(j->opts, j->join_token, "/api/join/heartbeat", doc, j->share, &a);
		json_decref(doc);
		if (a.status == 200) {
			beat++;
			json_t *ans =
				json_loadb(a.body.data ? a.body.data : "", a.body.len, 0, NULL);
			json_int_t hb = json_integer_value(json_object_get(ans, "heartbeat_s"));
			if (hb > 0 && hb <= 86400 && hb != period_s) {
				log_info("heartbeat every %lld s from now on", (long long) hb);
				period_s = (int) hb;
				wait_ms = (long) period_s * 1000;
			}
			json_decref(ans);
		} else if (a.status == 404) {
			/* registered a moment ago: the control plane loads the file first */
			wait_ms = 250;
		} else if (a.status == 403) {
			log_warn("the control plane no longer knows %s (%s): its entry was "
				 "removed; heartbeats stop (run --join again to rejoin)",
				 j->api->name, answer_reason(&a, why, sizeof(why)));
			buf_free(&a.body);
			break;
		} else {
			log_warn("heartbeat to %s failed: %s", j->opts->url,
				 a.status ? answer_reason(&a, why, sizeof(why)) : a.error);
			wait_ms = JOIN_BACKOFF_MIN_MS * 4 < wait_ms ? JOIN_BACKOFF_MIN_MS * 4
								    : wait_ms;
		}
		buf_free(&a.body);
	}
	return NULL;
}

static int join_read_token(const struct join_options *o, char **ret, char *errbuf, size_t errlen)
{
	if (!o->token_file) {
		snprintf(errbuf, errlen, "--join needs --join-token-file FILE (the join token)");
		return -EINVAL;
	}
	if (strncmp(o->url, "https://", 8) != 0 && strcmp(o->url, "auto") != 0) {
		snprintf(errbuf, errlen,
			 "--join %s: the join URL must be https://HOST:PORT (or auto)", o->url);
		return -EINVAL;
	}
	if (o->fingerprint && strncmp(o->fingerprint, "sha256:", 7) != 0) {
		snprintf(errbuf, errlen, "--join-fingerprint must be \"sha256:BASE64\"");
		return -EINVAL;
	}
	return token_read_file(o->token_file, ret, errbuf, errlen);
}

int agent_join_start(const struct join_options *opts, const struct api_context *api,
		     struct agent_join **ret, char *errbuf, size_t errlen)
{
	struct agent_join *j = xcalloc(1, sizeof(*j));
	int r = join_read_token(opts, &j->join_token, errbuf, errlen);
	if (r < 0) {
		free(j);
		return r;
	}
	j->own = *opts;
	j->opts = &j->own;
	j->api = api;
	pthread_mutex_init(&j->lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&j->cond, &ca);
	pthread_condattr_destroy(&ca);
	curl_global_init_mem(CURL_GLOBAL_ALL, xmalloc, free, xrealloc, xstrdup, xcalloc);
	for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
		pthread_mutex_init(&j->share_locks[i], NULL);
	j->share = curl_share_init();
	if (j->share) {
		curl_share_setopt(j->share, CURLSHOPT_LOCKFUNC, share_lock);
		curl_share_setopt(j->share, CURLSHOPT_UNLOCKFUNC, share_unlock);
		curl_share_setopt(j->share, CURLSHOPT_USERDATA, j);
		curl_share_setopt(j->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
		curl_share_setopt(j->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
		curl_share_setopt(j->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
	}
	r = -pthread_create(&j->thread, NULL, join_main, j);
	if (r < 0) {
		snprintf(errbuf, errlen, "cannot start the join thread: %s", strerror(-r));
		if (j->share)
			curl_share_cleanup(j->share);
		explicit_bzero(j->join_token, strlen(j->join_token));
		free(j->join_token);
		free(j);
		return r;
	}
	*ret = j;
	return 0;
}

bool agent_join_stop(struct agent_join *j)
{
	if (!j)
		return false;
	pthread_mutex_lock(&j->lock);
	j->stopping = true;
	pthread_cond_broadcast(&j->cond);
	pthread_mutex_unlock(&j->lock);
	pthread_join(j->thread, NULL);
	if (j->reverse_started)
		pthread_join(j->reverse_thread, NULL);
	/* relayed requests see `stopping` and end their transfers */
	pthread_mutex_lock(&j->lock);
	while (j->workers > 0)
		pthread_cond_wait(&j->cond, &j->lock);
	pthread_mutex_unlock(&j->lock);
	pthread_cond_destroy(&j->cond);
	pthread_mutex_destroy(&j->lock);
	if (j->share)
		curl_share_cleanup(j->share);
	for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
		pthread_mutex_destroy(&j->share_locks[i]);
	explicit_bzero(j->join_token, strlen(j->join_token));
	free(j->join_token);
	bool failed = j->failed;
	free(j);
	return failed;
}

int agent_join_leave(const struct join_options *opts, const char *name)
{
	char err[512], why[512];
	char *join_token = NULL;
	int r = join_read_token(opts, &join_token, err, sizeof(err));
	if (r < 0) {
		log_err("%s", err);
		return r;
	}
	curl_global_init_mem(CURL_GLOBAL_ALL, xmalloc, free, xrealloc, xstrdup, xcalloc);
	struct join_options own = *opts;
	struct discover d = {.join_token = join_token, .pin = opts->fingerprint};
	if (strcmp(opts->url, "auto") == 0) {
		r = dnssd_browse(DNSSD_JOIN_TYPE, 2 * JOIN_BROWSE_MS, NULL, join_accept, &d, err,
				 sizeof(err));
		if (r < 0) {
			log_err("--leave --join auto: %s", err);
			explicit_bzero(join_token, strlen(join_token));
			free(join_token);
			return r;
		}
		own.url = d.url;
		own.fingerprint = d.fp;
		opts = &own;
	}
	json_t *doc = json_pack("{ss ss}", "name", name, "token", opts->agent_token);
	struct answer a;
	join_post(opts, join_token, "/api/join/leave", doc, NULL, &a);
	json_decref(doc);
	explicit_bzero(join_token, strlen(join_token));
	free(join_token);
	r = 0;
	if (a.status == 200) {
		log_info("%s left %s: the control plane removed its entry", name, opts->url);
	} else {
		log_err("cannot leave %s: %s", opts->url,
			a.status ? answer_reason(&a, why, sizeof(why)) : a.error);
		r = a.status ? -EPERM : -EHOSTUNREACH;
	}
	buf_free(&a.body);
	return r;
}
