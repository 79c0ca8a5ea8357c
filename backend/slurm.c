/* A Slurm cluster through slurmrestd: the JWT, the requests, and the node listing that puts
 * its nodes in the cluster model. The task protocol's translation is in slurm_jobs.c. */
#include "backend/slurm_internal.h"
#include "backend/endpoint.h"
#include "httpd/agent_api.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- helpers ---- */

static struct cfg_slurm *cfg_slurm_of(struct config *cfg)
{
	return cfg ? cfg->slurm : NULL;
}

static double jwt_expiry(const char *jwt);

/* Reads the JWT when its file changed (or first). Loop thread. */
static void token_refresh(struct slurm *s, const struct cfg_slurm *sl)
{
	assert(loop_is_current(s->loop));
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
		s->token_error = xstrdup(msg);
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
	char *b64 = xmalloc(n + 4);
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
int slurm_rest_call(struct slurm *s, const struct config *cfg, const char *method, const char *path,
		    const char *body, http_done_fn done, void *arg)
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
void slurm_describe_error(const struct http_response *r, struct buf *out)
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
void slurm_api_path(struct slurm *s, const char *rest, struct buf *out)
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
	struct cluster_external *v = xcalloc(n + 1, sizeof(*v));
	char **names = xcalloc(n + 1, sizeof(*names));
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
	assert(loop_is_current(s->loop));
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
		slurm_describe_error(r, &why);
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
	assert(loop_is_current(s->loop));
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
			slurm_describe_error(r, &why);
		else
			buf_printf(&why, "its OpenAPI document lists no /slurm/v0.0.N/ paths");
		round_fail(s, cfg, why.data, is_auth_failure(r));
		buf_free(&why);
	} else {
		char api[32];
		snprintf(api, sizeof(api), "v0.0.%d", best);
		free(s->api);
		s->api = xstrdup(api);
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
			s->api = xstrdup(sl->api);
		}
		return;
	}
	free(s->owner);
	s->owner = sl ? xstrdup(sl->name) : NULL;
	free(s->api);
	s->api = sl && sl->api ? xstrdup(sl->api) : NULL;
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
	assert(loop_is_current(s->loop));
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
			s->token_error = xstrdup(msg);
		}
		if (s->token_error) {
			cluster_set_alert(s->cluster, "slurm", s->token_error);
			s->failures++;
			publish_nodes(s, cfg, s->token_error, 0);
		} else if (!s->api) {
			if (slurm_rest_call(s, cfg, "GET", "/openapi/v3", NULL, openapi_done, s) ==
			    0)
				s->discovering = true;
		} else {
			struct round *rd = xcalloc(1, sizeof(*rd));
			rd->s = s;
			rd->started_us = now;
			struct buf path;
			buf_init(&path);
			slurm_api_path(s, "/nodes", &path);
			if (slurm_rest_call(s, cfg, "GET", path.data, NULL, nodes_done, rd) == 0)
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
	struct slurm *s = xcalloc(1, sizeof(*s));
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
	loop_post(s->loop, slurm_start_on_loop, s);
	return 0;
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
