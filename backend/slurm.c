/* A Slurm cluster through slurmrestd: its nodes in the cluster model, tasks as batch jobs. */
#include "backend/slurm.h"
#include "backend/endpoint.h"
#include "backend/util.h"
#include "httpd/agent_api.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define REST_TIMEOUT_MS 5000L
#define POLL_HOLD_US    (250 * 1000ull) /* a task poll is answered this late, like an agent's */

struct slurm {
	struct loop *loop;
	struct cluster *cluster;
	/* the rest is loop thread only */
	char *api;        /* "v0.0.38": configured or discovered; NULL until known */
	bool discovering; /* the OpenAPI document is being fetched */
	char *token;      /* the JWT, or NULL; never logged */
	struct stat token_st;
	char *token_error;   /* why there is no usable token, or NULL */
	double token_exp;    /* the JWT's "exp" (wall clock), 0 when unknown */
	bool listing;        /* a node listing is in flight */
	uint64_t next_round; /* monotonic: when the next listing is due */
	int failures;        /* listings failed in a row */
	json_t *last_nodes;  /* the last answered listing's "nodes", or NULL */
	json_t *jobs;        /* job name (dispatch id) -> job_id, as learned */
	bool jobs_listed;    /* a full job listing has been seen since the start */
	struct loop_timer *tick;
	char *owner; /* the name of the slurm section the state above belongs to */
};

/* ---- helpers ---- */

static struct cfg_slurm *cfg_slurm_of(struct config *cfg)
{
	return cfg ? cfg->slurm : NULL;
}

static double jwt_expiry(const char *jwt);

/* Reads the JWT when its file changed (or first). Loop thread. */
static void token_refresh(struct slurm *s, const struct cfg_slurm *sl)
{
	struct stat st;
	if (stat(sl->token_file, &st) == 0 && s->token &&
	    st.st_mtim.tv_sec == s->token_st.st_mtim.tv_sec &&
	    st.st_mtim.tv_nsec == s->token_st.st_mtim.tv_nsec && st.st_ino == s->token_st.st_ino &&
	    st.st_size == s->token_st.st_size)
		return;
	char *tok = NULL, msg[512];
	int r = token_read_file(sl->token_file, &tok, msg, sizeof(msg));
	if (s->token) {
		explicit_bzero(s->token, strlen(s->token));
		free(s->token);
	}
	s->token = NULL;
	free(s->token_error);
	s->token_error = NULL;
	if (r < 0) {
		s->token_error = strdup(msg);
		memset(&s->token_st, 0, sizeof(s->token_st));
		return;
	}
	s->token = tok;
	s->token_st = st;
	s->token_exp = jwt_expiry(tok);
}

/* The "exp" claim of a JWT (seconds since the epoch), or 0 when it has none or cannot be
 * read. The signature is slurmctld's to check; this only tells an expired token apart. */
static double jwt_expiry(const char *jwt)
{
	const char *p = strchr(jwt, '.');
	const char *end = p ? strchr(p + 1, '.') : NULL;
	if (!end)
		return 0;
	size_t n = (size_t) (end - p - 1);
	char *b64 = malloc(n + 4);
	if (!b64)
		return 0;
	for (size_t i = 0; i < n; i++)
		b64[i] = p[1 + i] == '-' ? '+' : p[1 + i] == '_' ? '/' : p[1 + i];
	while (n % 4)
		b64[n++] = '=';
	b64[n] = '\0';
	unsigned char out[4096];
	long len = util_base64_decode(b64, out, sizeof(out));
	free(b64);
	if (len <= 0)
		return 0;
	json_t *claims = json_loadb((const char *) out, (size_t) len, 0, NULL);
	json_t *exp = json_object_get(claims, "exp");
	double v = json_is_number(exp) ? json_number_value(exp) : 0;
	json_decref(claims);
	return v;
}

/* Starts a request to slurmrestd: GET/POST/DELETE of `path` with the JWT. */
static int rest_call(struct slurm *s, const struct config *cfg, const char *method,
		     const char *path, const char *body, http_done_fn done, void *arg)
{
	const struct cfg_slurm *sl = cfg->slurm;
	struct endpoint ep;
	endpoint_init(&ep, cfg, sl->address, sl->port, &sl->transport, path, "slurm");
	struct buf user, tok;
	buf_init(&user);
	buf_init(&tok);
	buf_printf(&user, "X-SLURM-USER-NAME: %s", sl->user);
	buf_printf(&tok, "X-SLURM-USER-TOKEN: %s", s->token ? s->token : "");
	const char *headers[] = {user.data, tok.data, NULL};
	struct http_request req = {
		.method = method,
		.headers = headers,
		.body = body,
		.body_len = body ? strlen(body) : 0,
		.connect_timeout_ms = REST_TIMEOUT_MS,
		.timeout_ms = REST_TIMEOUT_MS,
		.max_body = 64u << 20,
	};
	endpoint_apply(&ep, &req);
	int r = loop_http(s->loop, &req, done, arg);
	endpoint_clear(&ep);
	buf_free(&user);
	explicit_bzero(tok.data, tok.len);
	buf_free(&tok);
	return r;
}

/* slurmrestd's sentence in an answer's "errors", or the transport's. */
static void describe_error(const struct http_response *r, struct buf *out)
{
	json_t *doc = json_loadb(r->body, r->body_len, 0, NULL);
	json_t *errs = json_object_get(doc, "errors");
	const char *e = NULL;
	if (json_array_size(errs))
		e = json_string_value(json_object_get(json_array_get(errs, 0), "error"));
	if (e && *e)
		buf_printf(out, "%s", e);
	else if (r->status)
		buf_printf(out, "HTTP %ld%s%.*s", r->status, r->body_len ? ": " : "",
			   (int) (r->body_len > 200 ? 200 : r->body_len), r->body);
	else
		buf_printf(out, "%s", r->error_text && *r->error_text ? r->error_text : "failed");
	json_decref(doc);
}

/* True for an answer that says the JWT was not accepted: 401 or 403 from slurmrestd, or the
 * 500 "Unspecified error" (errno -1) with which slurmrestd 22.05 passes on slurmctld's
 * rejection of a token it could not verify (wrong key, expired). */
static bool is_auth_failure(const struct http_response *r)
{
	if (r->status == 401 || r->status == 403)
		return true;
	if (r->status != 500)
		return false;
	json_t *doc = json_loadb(r->body, r->body_len, 0, NULL);
	json_t *e = json_array_get(json_object_get(doc, "errors"), 0);
	bool unspecified = json_integer_value(json_object_get(e, "errno")) == -1;
	json_decref(doc);
	return unspecified;
}

/* The API path prefix: "/slurm/v0.0.38". */
static void api_path(struct slurm *s, const char *rest, struct buf *out)
{
	buf_printf(out, "/slurm/%s%s", s->api, rest);
}

/* ---- nodes ---- */

struct round {
	struct slurm *s;
	uint64_t started_us;
};

/* Whether the node document's array `key` holds the string `want` (case-blind if asked). */
static bool array_has(json_t *node, const char *key, const char *want, bool nocase)
{
	json_t *arr = json_object_get(node, key), *x;
	size_t i;
	json_array_foreach (arr, i, x) {
		const char *v = json_string_value(x);
		if (v && !(nocase ? strcasecmp(v, want) : strcmp(v, want)))
			return true;
	}
	return false;
}

static bool has_flag(json_t *node, const char *flag)
{
	return array_has(node, "state_flags", flag, true);
}

/* GPUs from a GRES string such as "gpu:2", "gpu:a100:4(S:0)" or "gpu:1,tmpdisk:100": per
 * gpu item its last number before any "(", else 1. */
static int gres_gpus(const char *gres)
{
	int n = 0;
	while (gres && *gres) {
		size_t len = strcspn(gres, ",");
		if (len >= 3 && !strncmp(gres, "gpu", 3) && (len == 3 || gres[3] == ':')) {
			size_t end = strcspn(gres, ",(");
			int count = 1;
			const char *colon = NULL;
			for (const char *p = gres; p < gres + end; p++)
				if (*p == ':')
					colon = p;
			if (colon && colon[1] >= '0' && colon[1] <= '9')
				count = atoi(colon + 1);
			n += count;
		}
		gres += len;
		if (*gres == ',')
			gres++;
	}
	return n;
}

/* A Slurm node's level and the sentence saying why (DESIGN §6 levels from Slurm's state:
 * idle/mixed/allocated healthy or warning by load, drain → draining, down → offline, not
 * responding → unhealthy). */
static enum node_level node_level_of(json_t *node, const struct config *cfg, struct buf *why)
{
	const char *state = json_string_value(json_object_get(node, "state"));
	const char *reason = json_string_value(json_object_get(node, "reason"));
	double load = json_number_value(json_object_get(node, "cpu_load")) / 100.0;
	enum node_level level = NODE_UNKNOWN;
	if (!state)
		state = "unknown";
	buf_printf(why, "Slurm state %s", state);
	json_t *flags = json_object_get(node, "state_flags"), *f;
	size_t i;
	json_array_foreach (flags, i, f)
		buf_printf(why, "+%s", json_string_value(f));
	if (!strcasecmp(state, "down"))
		level = NODE_OFFLINE;
	else if (has_flag(node, "NOT_RESPONDING"))
		level = NODE_UNHEALTHY;
	else if (has_flag(node, "DRAIN") || has_flag(node, "DRAINING") ||
		 has_flag(node, "DRAINED") || !strcasecmp(state, "drain") ||
		 !strcasecmp(state, "draining"))
		level = NODE_DRAINING;
	else if (!strcasecmp(state, "idle") || !strcasecmp(state, "mixed") ||
		 !strcasecmp(state, "allocated") || !strcasecmp(state, "completing")) {
		level = NODE_HEALTHY;
		if (load >= cfg->thresholds.load[1])
			level = NODE_CRITICAL;
		else if (load >= cfg->thresholds.load[0])
			level = NODE_WARNING;
		if (level != NODE_HEALTHY)
			buf_printf(why, "; load %.2f", load);
	} else if (!strcasecmp(state, "future") || !strcasecmp(state, "unknown"))
		level = NODE_UNKNOWN;
	else
		level = NODE_UNHEALTHY;
	if (reason && *reason)
		buf_printf(why, "; reason: %s", reason);
	return level;
}

static bool in_partition(json_t *node, const char *partition)
{
	return array_has(node, "partitions", partition, false);
}

/* Publishes the last listing (fresh or not) to the cluster model. `error` says why this
 * round failed, or is NULL. */
/* What a partition's nodes add up to, for the cluster's own entry. */
struct partition_totals {
	int max_cpus, max_mem, max_gpus; /* of one node */
	int cpus, alloc, up;             /* of the nodes that take work */
	json_t *node_states;             /* state name -> count */
};

/* The entry of one Slurm node (named *ret_name, a new string) from its slurmrestd
 * document; counts it into t. */
static void node_external(const struct config *cfg, json_t *node, const char *name,
			  const char *error, double latency_ms, char **ret_name,
			  struct cluster_external *ret, struct partition_totals *t)
{
	const struct cfg_slurm *sl = cfg->slurm;
	struct buf why, full;
	buf_init(&why);
	buf_init(&full);
	enum node_level level = node_level_of(node, cfg, &why);
	buf_printf(&full, "%s%s", sl->prefix, name);
	*ret_name = buf_steal(&full, NULL);
	int nc = (int) json_integer_value(json_object_get(node, "cpus"));
	int ac = (int) json_integer_value(json_object_get(node, "alloc_cpus"));
	int mem = (int) json_integer_value(json_object_get(node, "real_memory"));
	int amem = (int) json_integer_value(json_object_get(node, "alloc_memory"));
	int fmem = (int) json_integer_value(json_object_get(node, "free_memory"));
	const char *gres = json_string_value(json_object_get(node, "gres"));
	int gpus = gres_gpus(gres);
	json_t *gpu_list = json_array();
	for (int g = 0; g < gpus; g++)
		json_array_append_new(gpu_list, json_pack("{si}", "index", g));
	json_t *detail =
		json_pack("{ss so si si sf ss ss ss}", "state",
			  json_string_value(json_object_get(node, "state")) ?: "", "state_flags",
			  json_deep_copy(json_object_get(node, "state_flags")), "alloc_cpus", ac,
			  "idle_cpus", (int) json_integer_value(json_object_get(node, "idle_cpus")),
			  "load", json_number_value(json_object_get(node, "cpu_load")) / 100.0,
			  "gres", gres ? gres : "", "gres_used",
			  json_string_value(json_object_get(node, "gres_used")) ?: "", "reason",
			  json_string_value(json_object_get(node, "reason")) ?: "");
	json_t *health = json_pack("{si sf sf si si so so}", "cores", nc, "cpu_percent",
				   nc ? 100.0 * ac / nc : 0.0, "mem_percent",
				   mem ? 100.0 * amem / mem : 0.0, "mem_total_mb", mem,
				   "mem_available_mb", fmem, "gpus", gpu_list, "slurm", detail);
	json_t *caps = json_array();
	if (gpus)
		json_array_append_new(caps, json_string("gpu"));
	json_t *system =
		json_pack("{ss ss ss si si si ss so so ss}", "hostname",
			  json_string_value(json_object_get(node, "hostname")) ?: name, "os",
			  json_string_value(json_object_get(node, "operating_system")) ?: "",
			  "arch", json_string_value(json_object_get(node, "architecture")) ?: "",
			  "cores", nc, "ram_mb", mem, "gpus", gpus, "slurmd_version",
			  json_string_value(json_object_get(node, "slurmd_version")) ?: "",
			  "partitions", json_deep_copy(json_object_get(node, "partitions")),
			  "capabilities", caps, "slurm_node", name);
	json_t *reasons = json_array();
	json_array_append_new(reasons, json_string(why.data));
	if (error) {
		char line[600];
		snprintf(line, sizeof(line), "last state: slurmrestd did not answer (%s)", error);
		json_array_append_new(reasons, json_string(line));
	}
	*ret = (struct cluster_external){
		.name = *ret_name,
		.address = json_string_value(json_object_get(node, "address")),
		.role = sl->name,
		.level = level,
		.health = health,
		.system = system,
		.reasons = reasons,
		.reachable = !error,
		.latency_ms = latency_ms,
		.error = error,
	};
	const char *st = json_string_value(json_object_get(node, "state"));
	json_object_set_new(t->node_states, st ? st : "unknown",
			    json_integer(json_integer_value(json_object_get(t->node_states,
									    st ? st : "unknown")) +
					 1));
	if (level == NODE_HEALTHY || level == NODE_WARNING) {
		t->up++;
		t->cpus += nc;
		t->alloc += ac;
	}
	if (nc > t->max_cpus)
		t->max_cpus = nc;
	if (mem > t->max_mem)
		t->max_mem = mem;
	if (gpus > t->max_gpus)
		t->max_gpus = gpus;
	buf_free(&why);
}

/* The entry of the Slurm cluster itself (k nodes in the partition, totals t, whose node
 * states it takes): what a task placed on it can get from one node. */
static void cluster_external_of(struct slurm *s, const struct config *cfg, const char *error,
				double latency_ms, size_t k, struct partition_totals *t,
				struct cluster_external *ret)
{
	const struct cfg_slurm *sl = cfg->slurm;
	json_t *gpu_list = json_array();
	for (int g = 0; g < t->max_gpus; g++)
		json_array_append_new(gpu_list, json_pack("{si}", "index", g));
	json_t *health = json_pack("{si si sf sf so s{ss si si si si so}}", "cores", t->max_cpus,
				   "mem_total_mb", t->max_mem, "cpu_percent",
				   t->cpus ? 100.0 * t->alloc / t->cpus : 0.0, "mem_percent", 0.0,
				   "gpus", gpu_list, "slurm", "partition", sl->partition, "nodes",
				   (int) k, "nodes_up", t->up, "cpus_up", t->cpus, "cpus_allocated",
				   t->alloc, "node_states", t->node_states);
	json_t *system = json_pack("{ss ss si si si ss}", "hostname", sl->address, "os", "Slurm",
				   "cores", t->max_cpus, "ram_mb", t->max_mem, "gpus", t->max_gpus,
				   "api", s->api ? s->api : "");
	json_t *reasons = json_array();
	enum node_level level = NODE_HEALTHY;
	if (error) {
		char line[600];
		snprintf(line, sizeof(line), "slurmrestd did not answer: %s (%d time%s in a row)",
			 error, s->failures, s->failures == 1 ? "" : "s");
		json_array_append_new(reasons, json_string(line));
		level = s->failures >= cfg->probe.unhealthy_after ? NODE_UNHEALTHY : NODE_WARNING;
		if (!s->last_nodes)
			level = NODE_UNHEALTHY;
	} else if (!t->up) {
		json_array_append_new(reasons, json_string("no node of the partition takes work"));
		level = NODE_CRITICAL;
	} else {
		char line[200];
		snprintf(line, sizeof(line), "partition %s: %d of %zu nodes take work",
			 sl->partition, t->up, k);
		json_array_append_new(reasons, json_string(line));
	}
	*ret = (struct cluster_external){
		.name = sl->name,
		.address = sl->address,
		.role = "slurm",
		.level = level,
		.health = health,
		.system = system,
		.reasons = reasons,
		.reachable = !error,
		.latency_ms = latency_ms,
		.error = error,
	};
}

static void publish_nodes(struct slurm *s, const struct config *cfg, const char *error,
			  double latency_ms)
{
	const struct cfg_slurm *sl = cfg->slurm;
	size_t n = json_array_size(s->last_nodes);
	struct cluster_external *v = calloc(n + 1, sizeof(*v));
	char **names = calloc(n + 1, sizeof(*names));
	size_t k = 0;
	struct partition_totals t = {.node_states = json_object()};
	json_t *node;
	size_t i;
	json_array_foreach (s->last_nodes, i, node) {
		const char *name = json_string_value(json_object_get(node, "name"));
		if (!name || !in_partition(node, sl->partition))
			continue;
		node_external(cfg, node, name, error, latency_ms, &names[k], &v[k], &t);
		k++;
	}
	cluster_external_of(s, cfg, error, latency_ms, k, &t, &v[k]);
	cluster_set_external(s->cluster, sl->name, v, k + 1);
	for (size_t j = 0; j <= k; j++) {
		json_decref(v[j].health);
		json_decref(v[j].system);
		json_decref(v[j].reasons);
		free(names[j]);
	}
	free(names);
	free(v);
}

static void round_fail(struct slurm *s, struct config *cfg, const char *why, bool auth)
{
	s->failures++;
	char alert[800];
	if (auth)
		snprintf(alert, sizeof(alert),
			 "slurmrestd at %s:%d refused the JWT in %s for user %s: %s; renew it "
			 "(scontrol token username=%s) and write it to that file",
			 cfg->slurm->address, cfg->slurm->port, cfg->slurm->token_file,
			 cfg->slurm->user, why, cfg->slurm->user);
	else
		snprintf(alert, sizeof(alert), "slurmrestd at %s:%d: %s", cfg->slurm->address,
			 cfg->slurm->port, why);
	if (auth || s->failures >= cfg->probe.unhealthy_after)
		cluster_set_alert(s->cluster, "slurm", alert);
	publish_nodes(s, cfg, why, 0);
}

static void nodes_done(void *arg, const struct http_response *r)
{
	struct round *rd = arg;
	struct slurm *s = rd->s;
	struct config *cfg = cluster_get_config(s->cluster);
	s->listing = false;
	if (!cfg->slurm || strcmp(cfg->slurm->name, s->owner ? s->owner : "")) {
		config_unref(cfg);
		free(rd);
		return;
	}
	json_t *doc = r->error ? NULL : json_loadb(r->body, r->body_len, 0, NULL);
	json_t *nodes = json_object_get(doc, "nodes");
	if (r->error || !json_is_array(nodes)) {
		struct buf why;
		buf_init(&why);
		describe_error(r, &why);
		round_fail(s, cfg, why.data, is_auth_failure(r));
		buf_free(&why);
	} else {
		s->failures = 0;
		json_decref(s->last_nodes);
		s->last_nodes = json_incref(nodes);
		cluster_set_alert(s->cluster, "slurm", NULL);
		publish_nodes(s, cfg, NULL, (double) (clock_now_us() - rd->started_us) / 1000.0);
	}
	json_decref(doc);
	config_unref(cfg);
	free(rd);
}

static void openapi_done(void *arg, const struct http_response *r)
{
	struct slurm *s = arg;
	s->discovering = false;
	json_t *doc = r->error ? NULL : json_loadb(r->body, r->body_len, 0, NULL);
	json_t *paths = json_object_get(doc, "paths");
	const char *key;
	json_t *v;
	int best = -1;
	json_object_foreach (paths, key, v) {
		int minor = -1;
		if (sscanf(key, "/slurm/v0.0.%d/", &minor) == 1 && minor > best)
			best = minor;
	}
	json_decref(doc);
	struct config *cfg = cluster_get_config(s->cluster);
	if (!cfg->slurm) {
		config_unref(cfg);
		return;
	}
	if (best < 0) {
		struct buf why;
		buf_init(&why);
		if (r->error)
			describe_error(r, &why);
		else
			buf_printf(&why, "its OpenAPI document lists no /slurm/v0.0.N/ paths");
		round_fail(s, cfg, why.data, is_auth_failure(r));
		buf_free(&why);
	} else {
		char api[32];
		snprintf(api, sizeof(api), "v0.0.%d", best);
		free(s->api);
		s->api = strdup(api);
		cluster_add_event(s->cluster, "slurm", cfg->slurm->name,
				  "slurmrestd speaks %s (from its OpenAPI document)", api);
		s->next_round = 0;
	}
	config_unref(cfg);
}

/* Resets the state when the section appeared, vanished or was renamed. */
static void follow_config(struct slurm *s, const struct cfg_slurm *sl)
{
	if (sl && s->owner && !strcmp(sl->name, s->owner)) {
		if (sl->api && (!s->api || strcmp(sl->api, s->api))) {
			free(s->api);
			s->api = strdup(sl->api);
		}
		return;
	}
	free(s->owner);
	s->owner = sl ? strdup(sl->name) : NULL;
	free(s->api);
	s->api = sl && sl->api ? strdup(sl->api) : NULL;
	json_decref(s->last_nodes);
	s->last_nodes = NULL;
	json_object_clear(s->jobs);
	s->jobs_listed = false;
	s->failures = 0;
	s->next_round = 0;
}

static void slurm_tick(void *arg)
{
	struct slurm *s = arg;
	uint64_t now = clock_now_us();
	struct config *cfg = cluster_get_config(s->cluster);
	const struct cfg_slurm *sl = cfg_slurm_of(cfg);
	follow_config(s, sl);
	if (sl && now >= s->next_round && !s->listing && !s->discovering) {
		token_refresh(s, sl);
		s->next_round = now + (uint64_t) sl->interval_s * 1000000u;
		if (!s->token_error && s->token_exp > 0 && s->token_exp <= clock_wall_s()) {
			char when[64], msg[800];
			time_t t = (time_t) s->token_exp;
			struct tm tm;
			strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
			snprintf(msg, sizeof(msg),
				 "the JWT in %s expired at %s; renew it (scontrol token "
				 "username=%s lifespan=SECONDS) and write it to that file",
				 sl->token_file, when, sl->user);
			s->token_error = strdup(msg);
		}
		if (s->token_error) {
			cluster_set_alert(s->cluster, "slurm", s->token_error);
			s->failures++;
			publish_nodes(s, cfg, s->token_error, 0);
		} else if (!s->api) {
			if (rest_call(s, cfg, "GET", "/openapi/v3", NULL, openapi_done, s) == 0)
				s->discovering = true;
		} else {
			struct round *rd = calloc(1, sizeof(*rd));
			rd->s = s;
			rd->started_us = now;
			struct buf path;
			buf_init(&path);
			api_path(s, "/nodes", &path);
			if (rest_call(s, cfg, "GET", path.data, NULL, nodes_done, rd) == 0)
				s->listing = true;
			else
				free(rd);
			buf_free(&path);
		}
	}
	config_unref(cfg);
	s->tick = loop_timer_add(s->loop, now + 200 * 1000u, slurm_tick, s);
}

int slurm_new(struct loop *loop, struct cluster *cluster, struct slurm **ret)
{
	struct slurm *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->loop = loop;
	s->cluster = cluster;
	s->jobs = json_object();
	*ret = s;
	return 0;
}

static void slurm_start_on_loop(void *arg)
{
	slurm_tick(arg);
}

int slurm_start(struct slurm *s)
{
	return loop_post(s->loop, slurm_start_on_loop, s);
}

void slurm_free(struct slurm *s)
{
	if (!s)
		return;
	if (s->token) {
		explicit_bzero(s->token, strlen(s->token));
		free(s->token);
	}
	free(s->token_error);
	free(s->api);
	free(s->owner);
	json_decref(s->last_nodes);
	json_decref(s->jobs);
	free(s);
}

/* ---- tasks: the agent's protocol, answered from slurmrestd ---- */

bool slurm_owns_node(void *arg, const char *node)
{
	struct slurm *s = arg;
	struct config *cfg = cluster_get_config(s->cluster);
	bool owns = cfg->slurm && !strcmp(cfg->slurm->name, node);
	config_unref(cfg);
	return owns;
}

enum call_kind { CALL_SUBMIT, CALL_POLL, CALL_OUTPUT, CALL_CANCEL };

/* One call of the agent protocol in progress. */
struct tcall {
	struct slurm *s;
	enum call_kind kind;
	http_done_fn done;
	void *arg;
	json_t *body; /* the dispatch (CALL_SUBMIT) */
	char *id;     /* the dispatch id (CALL_SUBMIT, CALL_OUTPUT, CALL_CANCEL) */
	int stream;   /* 0 stdout, 1 stderr */
	size_t offset, limit;
	uint64_t started_us;
	struct buf answer;
	long status;
	int error;
	char *error_text;
};

static void tcall_free(struct tcall *c)
{
	json_decref(c->body);
	free(c->id);
	buf_free(&c->answer);
	free(c->error_text);
	free(c);
}

/* Hands the answer to the caller and frees the call. */
static void tcall_finish(struct tcall *c)
{
	struct http_response resp = {
		.error = c->error,
		.status = c->status,
		.body = c->answer.data ? c->answer.data : "",
		.body_len = c->answer.len,
		.elapsed_ms = (double) (clock_now_us() - c->started_us) / 1000.0,
		.error_text = c->error_text ? c->error_text : "",
	};
	c->done(c->arg, &resp);
	tcall_free(c);
}

static void tcall_finish_on_timer(void *arg)
{
	tcall_finish(arg);
}

/* Answers later on the loop thread (callers hold their locks while they call). */
static void tcall_answer(struct tcall *c, uint64_t delay_us)
{
	loop_timer_add(c->s->loop, clock_now_us() + delay_us, tcall_finish_on_timer, c);
}

static void tcall_set_error(struct tcall *c, const struct http_response *r)
{
	struct buf why;
	buf_init(&why);
	describe_error(r, &why);
	c->error = r->error ? r->error : -EPROTO;
	c->status = r->status;
	free(c->error_text);
	c->error_text = buf_steal(&why, NULL);
}

static void output_path(const struct cfg_slurm *sl, const char *id, int stream, struct buf *out)
{
	buf_printf(out, "%s/%s.%s", sl->output_dir, id, stream ? "err" : "out");
}

static long long file_size(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 ? (long long) st.st_size : 0;
}

/* A Slurm job as the agent's task object: id, state, exit_code, sizes, error. */
static json_t *job_as_task(const struct cfg_slurm *sl, json_t *job)
{
	const char *name = json_string_value(json_object_get(job, "name"));
	const char *st = json_string_value(json_object_get(job, "job_state"));
	const char *reason = json_string_value(json_object_get(job, "state_reason"));
	int raw = (int) json_integer_value(json_object_get(job, "exit_code"));
	const char *state = "running";
	char error[300] = "";
	int exit_code = -1;
	if (!st)
		st = "UNKNOWN";
	/* exit_code is a wait status: the code in the high byte, a signal in the low */
	int code = (raw & 0x7f) ? 128 + (raw & 0x7f) : (raw >> 8) & 0xff;
	if (!strcmp(st, "COMPLETED")) {
		state = "succeeded";
		exit_code = code;
	} else if (!strcmp(st, "FAILED")) {
		state = "failed";
		exit_code = code;
	} else if (!strcmp(st, "TIMEOUT")) {
		state = "timed_out";
		snprintf(error, sizeof(error), "Slurm ended it at its time limit");
	} else if (!strcmp(st, "CANCELLED") && reason &&
		   !strcmp(reason, "DependencyNeverSatisfied")) {
		state = "failed";
		snprintf(error, sizeof(error),
			 "a task in \"after\" did not succeed (Slurm: DependencyNeverSatisfied)");
	} else if (!strcmp(st, "CANCELLED")) {
		state = "cancelled";
	} else if (!strcmp(st, "NODE_FAIL") || !strcmp(st, "BOOT_FAIL") ||
		   !strcmp(st, "OUT_OF_MEMORY") || !strcmp(st, "DEADLINE") ||
		   !strcmp(st, "PREEMPTED")) {
		state = "failed";
		exit_code = code;
		snprintf(error, sizeof(error), "Slurm job state %s%s%s", st,
			 reason && strcmp(reason, "None") ? ": " : "",
			 reason && strcmp(reason, "None") ? reason : "");
	}
	struct buf p;
	buf_init(&p);
	output_path(sl, name, 0, &p);
	long long out = file_size(p.data);
	p.len = 0;
	output_path(sl, name, 1, &p);
	long long err = file_size(p.data);
	buf_free(&p);
	json_t *o = json_pack("{ss ss sI sI sI sI ss ss}", "id", name, "state", state,
			      "stdout_size", (json_int_t) out, "stderr_size", (json_int_t) err,
			      "slurm_job_id", json_integer_value(json_object_get(job, "job_id")),
			      "exit_code", (json_int_t) exit_code, "slurm_state", st, "slurm_node",
			      json_string_value(json_object_get(job, "nodes")) ?: "");
	if (error[0])
		json_object_set_new(o, "error", json_string(error));
	json_object_set_new(o, "slurm_reason", json_string(reason ? reason : ""));
	static const char *const times[] = {"submit_time", "start_time", "end_time"};
	json_t *tv = json_object();
	for (size_t i = 0; i < 3; i++) {
		json_int_t v = json_integer_value(json_object_get(job, times[i]));
		json_object_set_new(tv, times[i], v > 0 ? json_integer(v) : json_null());
	}
	json_object_set_new(o, "slurm_times", tv);
	return o;
}

/* Our jobs in a job listing, by name; learns their job ids. New reference. */
static json_t *jobs_index(struct slurm *s, json_t *doc)
{
	json_t *by_name = json_object(), *job;
	size_t i;
	json_array_foreach (json_object_get(doc, "jobs"), i, job) {
		const char *name = json_string_value(json_object_get(job, "name"));
		if (!name || !strchr(name, '.'))
			continue; /* not a dispatch id: not ours */
		json_t *old = json_object_get(by_name, name);
		/* the newest job of a name wins (a requeue keeps the id anyway) */
		if (old && json_integer_value(json_object_get(old, "job_id")) >
				   json_integer_value(json_object_get(job, "job_id")))
			continue;
		json_object_set(by_name, name, job);
		json_object_set_new(
			s->jobs, name,
			json_integer(json_integer_value(json_object_get(job, "job_id"))));
	}
	return by_name;
}

static void shell_quote(struct buf *b, const char *w)
{
	buf_puts(b, "'");
	for (const char *p = w; *p; p++) {
		if (*p == '\'')
			buf_puts(b, "'\\''");
		else
			buf_append(b, p, 1);
	}
	buf_puts(b, "'");
}

static void submit_done(void *arg, const struct http_response *r);

/* POSTs the job for dispatch c (known not to exist in Slurm). */
/* Output of this dispatch id exists, but slurmctld knows no job of that name: it ran, and
 * Slurm purged it (MinJobAge) while no control plane watched. Then the call is answered
 * (lost, not submitted again) and true returned. */
static bool submit_answer_purged(struct tcall *c, const struct cfg_slurm *sl)
{
	struct buf path;
	buf_init(&path);
	output_path(sl, c->id, 0, &path);
	long long out = file_size(path.data);
	bool ran = access(path.data, F_OK) == 0;
	path.len = 0;
	output_path(sl, c->id, 1, &path);
	long long err = file_size(path.data);
	ran = ran || access(path.data, F_OK) == 0;
	path.len = 0;
	if (ran) {
		json_t *o = json_pack(
			"{ss ss sI sI si ss}", "id", c->id, "state", "lost", "stdout_size",
			(json_int_t) out, "stderr_size", (json_int_t) err, "exit_code", -1, "error",
			"its Slurm job ended and was purged by slurmctld (MinJobAge) before clusterfs "
			"saw its end; its output is kept, and it is not submitted again");
		char *text = json_dumps(o, JSON_COMPACT);
		json_decref(o);
		buf_puts(&c->answer, text);
		free(text);
		c->status = 200;
		buf_free(&path);
		tcall_answer(c, 0);
		return true;
	}
	buf_free(&path);
	return false;
}

/* The job's script: the command as a shell line, or exec of its quoted words. */
static void submit_script(json_t *cmd, struct buf *script)
{
	buf_puts(script, "#!/bin/sh\n");
	if (json_is_string(cmd)) {
		buf_puts(script, json_string_value(cmd));
		buf_puts(script, "\n");
	} else {
		buf_puts(script, "exec");
		json_t *w;
		size_t i;
		json_array_foreach (cmd, i, w) {
			buf_puts(script, " ");
			shell_quote(script, json_string_value(w) ?: "");
		}
		buf_puts(script, "\n");
	}
}

/* The job's limits and order from the task: time limit, cpus, memory, gpus, priority as
 * nice, and its dependencies on jobs this cluster runs (afterok). */
static void submit_limits(struct tcall *c, json_t *d, json_t *job)
{
	json_int_t timeout = json_integer_value(json_object_get(d, "timeout_s"));
	if (timeout > 0)
		/* Slurm's limit is in minutes: the next whole minute */
		json_object_set_new(job, "time_limit", json_integer((timeout + 59) / 60));
	json_int_t cpus = json_integer_value(json_object_get(d, "cpus"));
	json_int_t mem = json_integer_value(json_object_get(d, "mem_mb"));
	json_int_t gpus = json_integer_value(json_object_get(d, "gpus"));
	if (cpus > 0)
		json_object_set_new(job, "cpus_per_task", json_integer(cpus));
	if (mem > 0)
		json_object_set_new(job, "memory_per_node", json_integer(mem));
	if (gpus > 0) {
		char g[32];
		snprintf(g, sizeof(g), "gpu:%lld", (long long) gpus);
		json_object_set_new(job, "gres", json_string(g));
	}
	/* P0..P3 as nice 0, 100, 200, 300: lower goes first among our jobs */
	json_t *prio = json_object_get(d, "priority");
	if (json_is_integer(prio) && json_integer_value(prio) > 0)
		json_object_set_new(job, "nice", json_integer(100 * json_integer_value(prio)));
	/* dependencies that run in Slurm too: Slurm holds the job until they succeeded, and
	 * cancels it when one did not (kill_on_invalid_dependency) */
	json_t *after = json_object_get(d, "after_dispatch"), *a;
	size_t ai;
	struct buf dep;
	buf_init(&dep);
	json_array_foreach (after, ai, a) {
		json_t *jid = json_object_get(c->s->jobs, json_string_value(a) ?: "");
		if (jid)
			buf_printf(&dep, "%s%lld",
				   dep.len ? ":" : "afterok:", (long long) json_integer_value(jid));
	}
	if (dep.len) {
		json_object_set_new(job, "dependency", json_string(dep.data));
		json_object_set_new(job, "kill_on_invalid_dependency", json_true());
	}
	buf_free(&dep);
}

static void submit_send(struct tcall *c, struct config *cfg)
{
	const struct cfg_slurm *sl = cfg->slurm;
	json_t *d = c->body;
	struct buf script, path;
	buf_init(&script);
	buf_init(&path);
	if (submit_answer_purged(c, sl)) {
		buf_free(&path);
		buf_free(&script);
		return;
	}
	submit_script(json_object_get(d, "cmd"), &script);
	json_t *env = json_pack("{ss ss}", "PATH", "/usr/local/bin:/usr/bin:/bin", "CLUSTERFS_TASK",
				c->id);
	json_object_update(env, json_object_get(d, "env"));
	json_t *job = json_pack("{ss ss so ss}", "name", c->id, "partition", sl->partition,
				"environment", env, "current_working_directory",
				json_string_value(json_object_get(d, "cwd")) ?: sl->output_dir);
	output_path(sl, c->id, 0, &path);
	json_object_set_new(job, "standard_output", json_string(path.data));
	path.len = 0;
	output_path(sl, c->id, 1, &path);
	json_object_set_new(job, "standard_error", json_string(path.data));
	submit_limits(c, d, job);
	json_t *sub = json_pack("{ss so}", "script", script.data, "job", job);
	char *text = json_dumps(sub, JSON_COMPACT);
	json_decref(sub);
	buf_free(&script);
	buf_free(&path);
	struct buf p;
	buf_init(&p);
	api_path(c->s, "/job/submit", &p);
	int r = rest_call(c->s, cfg, "POST", p.data, text, submit_done, c);
	buf_free(&p);
	free(text);
	if (r < 0) {
		c->error = r;
		c->error_text = strdup("cannot start a request to slurmrestd");
		tcall_answer(c, 0);
	}
}

static void submit_done(void *arg, const struct http_response *r)
{
	struct tcall *c = arg;
	json_t *doc = r->error ? NULL : json_loadb(r->body, r->body_len, 0, NULL);
	json_t *jid = json_object_get(doc, "job_id");
	if (r->error || !json_is_integer(jid)) {
		tcall_set_error(c, r);
		/* slurmctld's refusal of the job itself: the agent's 400, so the task fails */
		if (!r->error || r->status == 500)
			c->status = 400;
		buf_printf(&c->answer, "{\"error\":");
		char *msg = json_dumps(json_string(c->error_text), JSON_ENCODE_ANY);
		buf_puts(&c->answer, msg ? msg : "\"\"");
		buf_puts(&c->answer, "}");
		free(msg);
	} else {
		json_object_set_new(c->s->jobs, c->id, json_integer(json_integer_value(jid)));
		c->status = 201;
		buf_printf(&c->answer,
			   "{\"id\":\"%s\",\"state\":\"running\",\"slurm_job_id\":%lld}", c->id,
			   (long long) json_integer_value(jid));
	}
	json_decref(doc);
	tcall_finish(c);
}

static void cancel_done(void *arg, const struct http_response *r);

static void list_done(void *arg, const struct http_response *r)
{
	struct tcall *c = arg;
	struct slurm *s = c->s;
	struct config *cfg = cluster_get_config(s->cluster);
	json_t *doc = r->error ? NULL : json_loadb(r->body, r->body_len, 0, NULL);
	if (!cfg->slurm || r->error || !json_is_array(json_object_get(doc, "jobs"))) {
		if (r->error)
			tcall_set_error(c, r);
		else {
			c->error = -EPROTO;
			c->error_text =
				strdup("slurmrestd's job list is not what v0.0.38 documents");
		}
		json_decref(doc);
		config_unref(cfg);
		tcall_finish(c);
		return;
	}
	json_t *by_name = jobs_index(s, doc);
	s->jobs_listed = true;
	if (c->kind == CALL_SUBMIT) {
		json_t *job = json_object_get(by_name, c->id);
		if (job) {
			/* submitted before (a crash between submission and its answer): the
			 * job it made, not a second one */
			json_t *o = job_as_task(cfg->slurm, job);
			char *text = json_dumps(o, JSON_COMPACT);
			buf_puts(&c->answer, text);
			free(text);
			json_decref(o);
			c->status = 200;
			tcall_finish(c);
		} else
			submit_send(c, cfg);
	} else if (c->kind == CALL_CANCEL) {
		json_t *jid = json_object_get(s->jobs, c->id);
		if (!jid) {
			c->status = 404;
			c->error = -ENOENT;
			c->error_text = strdup("no such job");
			tcall_finish(c);
		} else {
			char rest[64];
			snprintf(rest, sizeof(rest), "/job/%lld",
				 (long long) json_integer_value(jid));
			struct buf p;
			buf_init(&p);
			api_path(s, rest, &p);
			int rr = rest_call(s, cfg, "DELETE", p.data, NULL, cancel_done, c);
			buf_free(&p);
			if (rr < 0) {
				c->error = rr;
				tcall_finish(c);
			}
		}
	} else if (c->kind == CALL_POLL) {
		json_t *tasks = json_array();
		const char *name;
		json_t *job;
		json_object_foreach (by_name, name, job)
			json_array_append_new(tasks, job_as_task(cfg->slurm, job));
		json_t *o =
			json_pack("{so sf si}", "tasks", tasks, "time", clock_wall_s(), "index", 1);
		char *text = json_dumps(o, JSON_COMPACT);
		buf_puts(&c->answer, text);
		free(text);
		json_decref(o);
		c->status = 200;
		tcall_finish(c);
	} else {
		c->status = 200;
		buf_puts(&c->answer, "{}");
		tcall_finish(c);
	}
	json_decref(by_name);
	json_decref(doc);
	config_unref(cfg);
}

static void cancel_done(void *arg, const struct http_response *r)
{
	struct tcall *c = arg;
	if (r->error)
		tcall_set_error(c, r);
	else {
		c->status = 200;
		buf_puts(&c->answer, "{}");
	}
	tcall_finish(c);
}

static void list_send(struct tcall *c)
{
	struct config *cfg = cluster_get_config(c->s->cluster);
	struct buf p;
	buf_init(&p);
	api_path(c->s, "/jobs", &p);
	int r = cfg->slurm ? rest_call(c->s, cfg, "GET", p.data, NULL, list_done, c) : -ENOENT;
	buf_free(&p);
	config_unref(cfg);
	if (r < 0) {
		c->error = r;
		c->error_text = strdup("cannot start a request to slurmrestd");
		tcall_finish(c);
	}
}

static void list_send_on_timer(void *arg)
{
	list_send(arg);
}

static void cancel_send(struct tcall *c)
{
	struct config *cfg = cluster_get_config(c->s->cluster);
	json_t *jid = json_object_get(c->s->jobs, c->id);
	if (!jid || !cfg->slurm) {
		config_unref(cfg);
		list_send(c); /* learn its job id first */
		return;
	}
	char rest[64];
	snprintf(rest, sizeof(rest), "/job/%lld", (long long) json_integer_value(jid));
	struct buf p;
	buf_init(&p);
	api_path(c->s, rest, &p);
	int r = rest_call(c->s, cfg, "DELETE", p.data, NULL, cancel_done, c);
	buf_free(&p);
	config_unref(cfg);
	if (r < 0) {
		c->error = r;
		tcall_answer(c, 0);
	}
}

/* Reads output from output_dir: the shared filesystem the jobs write to. */
static void output_read(struct tcall *c)
{
	struct config *cfg = cluster_get_config(c->s->cluster);
	struct buf p;
	buf_init(&p);
	if (cfg->slurm)
		output_path(cfg->slurm, c->id, c->stream, &p);
	config_unref(cfg);
	int fd = p.data ? open(p.data, O_RDONLY | O_CLOEXEC) : -1;
	buf_free(&p);
	c->status = 200;
	if (fd < 0)
		return; /* not written yet: nothing so far */
	size_t want = c->limit ? c->limit : (1u << 20);
	char *data = malloc(want);
	ssize_t n = data ? pread(fd, data, want, (off_t) c->offset) : -1;
	if (n > 0)
		buf_append(&c->answer, data, (size_t) n);
	free(data);
	close(fd);
}

int slurm_task_call(void *arg, const char *node, const char *method, const char *path,
		    const char *body, http_done_fn done, void *done_arg)
{
	struct slurm *s = arg;
	if (!s->api) {
		/* nothing to say yet: as an agent that does not answer */
		return -EAGAIN;
	}
	struct tcall *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->s = s;
	c->done = done;
	c->arg = done_arg;
	c->started_us = clock_now_us();
	buf_init(&c->answer);
	static const char prefix[] = AGENT_API_TASKS;
	const char *rest = path + strlen(prefix);
	if (strncmp(path, prefix, strlen(prefix))) {
		free(c);
		return -EINVAL;
	}
	if (!strcmp(method, "POST") && !*rest) {
		c->kind = CALL_SUBMIT;
		c->body = json_loads(body ? body : "", 0, NULL);
		const char *id = json_string_value(json_object_get(c->body, "id"));
		if (!id) {
			tcall_free(c);
			return -EINVAL;
		}
		c->id = strdup(id);
		/* a job of that name may exist from before a crash: look once per start */
		if (!s->jobs_listed || json_object_get(s->jobs, c->id))
			list_send(c);
		else {
			struct config *cfg = cluster_get_config(s->cluster);
			if (cfg->slurm)
				submit_send(c, cfg);
			else {
				c->error = -ENOENT;
				tcall_answer(c, 0);
			}
			config_unref(cfg);
		}
		return 0;
	}
	if (!strcmp(method, "GET") && (!*rest || *rest == '?')) {
		c->kind = CALL_POLL;
		/* a long poll: held a moment, as the agent holds it until something changes */
		if (strstr(rest, "index="))
			loop_timer_add(s->loop, clock_now_us() + POLL_HOLD_US, list_send_on_timer,
				       c);
		else
			list_send(c);
		return 0;
	}
	if (*rest != '/') {
		free(c);
		return -EINVAL;
	}
	rest++;
	size_t idlen = strcspn(rest, "/?");
	c->id = strndup(rest, idlen);
	const char *tail = rest + idlen;
	if (!strcmp(method, "POST") && !strcmp(tail, "/cancel")) {
		c->kind = CALL_CANCEL;
		cancel_send(c);
		return 0;
	}
	if (!strcmp(method, "GET") &&
	    (!strncmp(tail, "/stdout", 7) || !strncmp(tail, "/stderr", 7))) {
		c->kind = CALL_OUTPUT;
		c->stream = !strncmp(tail, "/stderr", 7);
		const char *q = strstr(tail, "offset=");
		if (q)
			c->offset = strtoull(q + 7, NULL, 10);
		q = strstr(tail, "limit=");
		if (q)
			c->limit = strtoull(q + 6, NULL, 10);
		output_read(c);
		tcall_answer(c, 0);
		return 0;
	}
	tcall_free(c);
	return -EINVAL;
}
