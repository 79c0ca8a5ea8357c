/* Config: the top-level sections other than "hosts" and "slurm": cluster, auth, tls,
 * probe, thresholds, tasks, artifacts, join, events, and the ones that name hosts
 * (routing, services, the seed's references), which are read after the hosts. */
#include "config/config_internal.h"

#include <errno.h>
#include <grp.h>
#include <string.h>

#include "backend/util.h"

int config_parse_cluster(struct loader *ld, const json_t *doc)
{
	const char *name = "clusterfs";
	int r = config_parse_string(ld, doc, "cluster", true, &name);
	if (r < 0)
		return r;
	if (!name_is_valid(name)) {
		config_ld_push(ld, "cluster");
		r = config_ld_fail(
			ld, LOCATE_VALUE,
			"cluster name %s must be printable, without '/', and not \".\" or \"..\"",
			config_ld_quote(ld, 0, name));
		config_ld_pop(ld);
		return r;
	}
	ld->c->cluster = xstrdup(name);
	return 0;
}

int config_parse_auth(struct loader *ld, const json_t *doc)
{
	static const char *const keys[] = {"token_file", NULL};
	json_t *auth = json_object_get(doc, "auth");
	const char *file = NULL;
	int r = 0;

	if (auth) {
		config_ld_push(ld, "auth");
		r = config_expect_object(ld, auth);
		if (r == 0)
			r = config_reject_inline_token(ld, auth);
		if (r == 0)
			r = config_check_keys(ld, auth, keys);
		if (r == 0)
			r = config_parse_string(ld, auth, "token_file", true, &file);
		config_ld_pop(ld);
		if (r < 0)
			return r;
	}
	ld->c->token_file = file ? config_path_join(ld->dir, file) : config_default_token_path();
	return 0;
}

/* The top level's "tls": {"ca_file": "PATH"}, what "tls": true verifies against. */
int config_parse_tls(struct loader *ld, const json_t *doc)
{
	static const char *const keys[] = {"ca_file", NULL};
	json_t *tls;
	const char *ca = NULL;
	int r = config_open_object(ld, doc, "tls", keys, &tls);

	if (r <= 0)
		return r;
	r = config_parse_string(ld, tls, "ca_file", true, &ca);
	if (r == 0 && ca) {
		ld->c->tls_ca_file = config_path_join(ld->dir, ca);
		config_ld_push(ld, "ca_file");
		r = config_check_ca_file(ld, ld->c->tls_ca_file);
		config_ld_pop(ld);
	}
	config_ld_pop(ld);
	return r;
}

int config_parse_probe(struct loader *ld, const json_t *doc)
{
	static const char *const keys[] = {
		"interval_s",      "timeout_ms", "stale_after_s", "offline_after_s",
		"unhealthy_after", "max_age_ms", "heartbeat_s",   NULL};
	struct cfg_probe *p = &ld->c->probe;
	json_t *probe;
	int r = config_open_object(ld, doc, "probe", keys, &probe);

	if (r <= 0)
		return r;
	r = config_parse_int(ld, probe, "interval_s", 1, 86400, &p->interval_s);
	if (r == 0)
		r = config_parse_int(ld, probe, "timeout_ms", 1, 300000, &p->timeout_ms);
	if (r == 0)
		r = config_parse_int(ld, probe, "stale_after_s", 1, 30 * 86400, &p->stale_after_s);
	if (r == 0)
		r = config_parse_int(ld, probe, "offline_after_s", 1, 30 * 86400,
				     &p->offline_after_s);
	if (r == 0)
		r = config_parse_int(ld, probe, "unhealthy_after", 1, 1000, &p->unhealthy_after);
	if (r == 0)
		r = config_parse_int(ld, probe, "max_age_ms", 0, 3600000, &p->max_age_ms);
	if (r == 0)
		r = config_parse_int(ld, probe, "heartbeat_s", 1, 86400, &p->heartbeat_s);
	if (r == 0 && p->offline_after_s < p->stale_after_s) {
		config_ld_push(ld, json_object_get(probe, "offline_after_s") ? "offline_after_s"
									     : "stale_after_s");
		r = config_ld_fail(
			ld, LOCATE_VALUE,
			"probe.offline_after_s (%d) must be at least probe.stale_after_s (%d)",
			p->offline_after_s, p->stale_after_s);
		config_ld_pop(ld);
	}
	config_ld_pop(ld);
	return r;
}

/* One [warning, critical] pair; `max` bounds percentages (0 for no upper bound). */
static int parse_pair(struct loader *ld, const json_t *obj, const char *key, double max,
		      double out[2])
{
	json_t *v = json_object_get(obj, key);
	double pair[2];
	int r = 0;

	if (!v)
		return 0;
	config_ld_push(ld, key);
	if (!json_is_array(v) || json_array_size(v) != 2) {
		r = config_ld_fail(ld, LOCATE_VALUE,
				   "%s must be [warning, critical], e.g. [%g, %g], not %s",
				   config_ld_where(ld), out[0], out[1], config_ld_value(ld, v));
		goto out_pop;
	}
	for (size_t i = 0; i < 2; i++) {
		json_t *e = json_array_get(v, i);
		config_ld_push_index(ld, i);
		if (!json_is_number(e) || json_number_value(e) < 0 ||
		    (max > 0 && json_number_value(e) > max)) {
			if (max > 0)
				r = config_ld_fail(ld, LOCATE_VALUE,
						   "%s must be a number from 0 to %g, not %s",
						   config_ld_where(ld), max,
						   config_ld_value(ld, e));
			else
				r = config_ld_fail(ld, LOCATE_VALUE,
						   "%s must be a number of at least 0, not %s",
						   config_ld_where(ld), config_ld_value(ld, e));
		}
		config_ld_pop(ld);
		if (r < 0)
			goto out_pop;
		pair[i] = json_number_value(e);
	}
	if (pair[0] > pair[1]) {
		r = config_ld_fail(ld, LOCATE_VALUE,
				   "%s has its warning level %g above its critical level %g",
				   config_ld_where(ld), pair[0], pair[1]);
		goto out_pop;
	}
	out[0] = pair[0];
	out[1] = pair[1];
out_pop:
	config_ld_pop(ld);
	return r;
}

int config_parse_thresholds(struct loader *ld, const json_t *doc)
{
	static const char *const keys[] = {"cpu", "memory", "disk", "load", NULL};
	struct cfg_thresholds *t = &ld->c->thresholds;
	json_t *th;
	int r = config_open_object(ld, doc, "thresholds", keys, &th);

	if (r <= 0)
		return r;
	r = parse_pair(ld, th, "cpu", 100, t->cpu);
	if (r == 0)
		r = parse_pair(ld, th, "memory", 100, t->memory);
	if (r == 0)
		r = parse_pair(ld, th, "disk", 100, t->disk);
	if (r == 0)
		r = parse_pair(ld, th, "load", 0, t->load);
	config_ld_pop(ld);
	return r;
}

/* tasks.retention: how long finished tasks' output and records are kept (0: for ever). */
static int parse_retention(struct loader *ld, const json_t *tasks)
{
	static const char *const keys[] = {"output_days", "output_mb", "records_days", NULL};
	struct cfg_retention *p = &ld->c->tasks.retention;
	json_t *v;
	int r = config_open_object(ld, tasks, "retention", keys, &v);

	if (r <= 0)
		return r;
	r = config_parse_number(ld, v, "output_days", 0, 36500, &p->output_days);
	if (r == 0)
		r = config_parse_number(ld, v, "output_mb", 0, 1 << 30, &p->output_mb);
	if (r == 0)
		r = config_parse_number(ld, v, "records_days", 0, 36500, &p->records_days);
	if (r == 0 && p->records_days > 0 && p->output_days > p->records_days) {
		config_ld_push(ld, "output_days");
		r = config_ld_fail(
			ld, LOCATE_VALUE,
			"%s is %g, longer than records_days (%g): output goes with its task's "
			"record, so keep it at most as long",
			config_ld_where(ld), p->output_days, p->records_days);
		config_ld_pop(ld);
	}
	config_ld_pop(ld);
	return r;
}

int config_parse_tasks(struct loader *ld, const json_t *doc)
{
	static const char *const keys[] = {"run_as",
					   "allow_root",
					   "group",
					   "drafts_per_user",
					   "draft_bytes_per_user",
					   "queued_per_user",
					   "finished_cached",
					   "retention",
					   NULL};
	struct cfg_tasks *t = &ld->c->tasks;
	json_t *tasks;
	const char *group = NULL;
	int bytes_mb = (int) (t->draft_bytes_per_user >> 20);
	int r = config_open_object(ld, doc, "tasks", keys, &tasks);

	if (r <= 0)
		return r;
	r = config_parse_run_as(ld, tasks, &t->run_as);
	if (r == 0)
		r = config_parse_bool(ld, tasks, "allow_root", &t->allow_root);
	if (r == 0)
		r = config_parse_int(ld, tasks, "drafts_per_user", 1, 100000, &t->drafts_per_user);
	if (r == 0)
		r = config_parse_int(ld, tasks, "draft_bytes_per_user", 1, 1024, &bytes_mb);
	if (r == 0)
		r = config_parse_int(ld, tasks, "queued_per_user", 1, 10000000,
				     &t->queued_per_user);
	if (r == 0)
		r = config_parse_int(ld, tasks, "finished_cached", 0, 10000000,
				     &t->finished_cached);
	if (r == 0)
		r = parse_retention(ld, tasks);
	if (r == 0)
		r = config_parse_string(ld, tasks, "group", true, &group);
	if (r == 0 && group) {
		struct group gr, *res = NULL;
		char scratch[4096];
		config_ld_push(ld, "group");
		if (getgrnam_r(group, &gr, scratch, sizeof(scratch), &res) != 0 || !res)
			r = config_ld_fail(
				ld, LOCATE_VALUE,
				"%s names %s, which is not a group on this machine; create it "
				"(groupadd) or leave \"group\" out",
				config_ld_where(ld), config_ld_quote(ld, 0, group));
		else {
			t->group = xstrdup(group);
			t->group_gid = res->gr_gid;
		}
		config_ld_pop(ld);
	}
	t->draft_bytes_per_user = (long) bytes_mb << 20;
	config_ld_pop(ld);
	return r;
}

int config_parse_artifacts(struct loader *ld, const json_t *doc)
{
	static const char *const keys[] = {"max_files", "max_mb", "cache_max_mb", "inputs_root",
					   NULL};
	struct cfg_artifacts *a = &ld->c->artifacts;
	json_t *obj;
	int max_mb = (int) (a->max_bytes >> 20), cache_mb = (int) (a->cache_max_bytes >> 20);
	const char *root = NULL;
	int r = config_open_object(ld, doc, "artifacts", keys, &obj);

	if (r <= 0)
		return r;
	r = config_parse_int(ld, obj, "max_files", 0, 100000, &a->max_files);
	if (r == 0)
		r = config_parse_int(ld, obj, "max_mb", 0, 16 * 1024 * 1024, &max_mb);
	if (r == 0)
		r = config_parse_int(ld, obj, "cache_max_mb", 0, 16 * 1024 * 1024, &cache_mb);
	if (r == 0)
		r = config_parse_string(ld, obj, "inputs_root", true, &root);
	if (r == 0 && root) {
		config_ld_push(ld, "inputs_root");
		if (root[0] != '/')
			r = config_ld_fail(ld, LOCATE_VALUE, "%s must be an absolute path, not %s",
					   config_ld_where(ld), config_ld_quote(ld, 0, root));
		else
			a->inputs_root = xstrdup(root);
		config_ld_pop(ld);
	}
	a->max_bytes = (long long) max_mb << 20;
	a->cache_max_bytes = (long long) cache_mb << 20;
	config_ld_pop(ld);
	return r;
}

/* "join": {"listen": "ADDR:PORT", "token_file": F, "tls": {"cert_file", "key_file"},
 * "forget_after_s": N, "announce": BOOL}. Join traffic is HTTPS from the start: tls is
 * required. */
int config_parse_join(struct loader *ld, const json_t *doc)
{
	static const char *const keys[] = {"listen",         "token_file", "tls",
					   "forget_after_s", "announce",   NULL};
	static const char *const tls_keys[] = {"cert_file", "key_file", NULL};
	struct cfg_join *j = &ld->c->join;
	json_t *join = json_object_get(doc, "join"), *tls;
	const char *listen = NULL, *token_file = NULL, *cert = NULL, *key = NULL;
	int r;

	if (!join)
		return 0;
	config_ld_push(ld, "join");
	r = config_expect_object(ld, join);
	if (r == 0)
		r = config_reject_inline_token(ld, join);
	if (r == 0)
		r = config_check_keys(ld, join, keys);
	if (r == 0)
		r = config_parse_string(ld, join, "listen", true, &listen);
	if (r == 0)
		r = config_parse_string(ld, join, "token_file", true, &token_file);
	if (r == 0)
		r = config_parse_int(ld, join, "forget_after_s", 0, 365 * 86400,
				     &j->forget_after_s);
	if (r == 0)
		r = config_parse_bool(ld, join, "announce", &j->announce);
	if (r == 0 && j->forget_after_s && j->forget_after_s < ld->c->probe.offline_after_s) {
		config_ld_push(ld, "forget_after_s");
		r = config_ld_fail(
			ld, LOCATE_VALUE,
			"join.forget_after_s (%d) must be 0 (never) or at least "
			"probe.offline_after_s (%d): a node is forgotten once it is offline",
			j->forget_after_s, ld->c->probe.offline_after_s);
		config_ld_pop(ld);
	}
	if (r == 0 && (!listen || !token_file))
		r = config_ld_fail(
			ld, LOCATE_VALUE,
			"%s needs \"listen\" (\"ADDR:PORT\") and \"token_file\" (the join "
			"token, mode 0600)",
			config_ld_where(ld));
	tls = r == 0 ? json_object_get(join, "tls") : NULL;
	if (r == 0 && !tls)
		r = config_ld_fail(ld, LOCATE_VALUE,
				   "%s needs \"tls\": {\"cert_file\": F, \"key_file\": F}: join "
				   "traffic carries tokens and is HTTPS only",
				   config_ld_where(ld));
	if (r == 0) {
		config_ld_push(ld, "tls");
		r = config_expect_object(ld, tls);
		if (r == 0)
			r = config_check_keys(ld, tls, tls_keys);
		if (r == 0)
			r = config_parse_string(ld, tls, "cert_file", true, &cert);
		if (r == 0)
			r = config_parse_string(ld, tls, "key_file", true, &key);
		if (r == 0 && (!cert || !key))
			r = config_ld_fail(ld, LOCATE_VALUE, "%s needs both cert_file and key_file",
					   config_ld_where(ld));
		config_ld_pop(ld);
	}
	config_ld_pop(ld);
	if (r < 0)
		return r;
	j->enabled = true;
	j->listen = xstrdup(listen);
	j->token_file = config_path_join(ld->dir, token_file);
	j->cert_file = config_path_join(ld->dir, cert);
	j->key_file = config_path_join(ld->dir, key);
	return 0;
}

int config_parse_events(struct loader *ld, const json_t *doc)
{
	static const char *const keys[] = {"keep", NULL};
	json_t *events;
	int r = config_open_object(ld, doc, "events", keys, &events);

	if (r <= 0)
		return r;
	r = config_parse_int(ld, events, "keep", 100, 10000000, &ld->c->events.keep);
	config_ld_pop(ld);
	return r;
}

/* One list of a routing policy: hosts (known host names), roles, tiers. */
static int parse_routing_list(struct loader *ld, const json_t *policy, const char *key)
{
	json_t *v = json_object_get(policy, key);
	int r = 0;

	if (!v)
		return 0;
	config_ld_push(ld, key);
	if (!json_is_array(v)) {
		r = config_ld_fail(ld, LOCATE_VALUE, "%s must be a list of strings, not %s",
				   config_ld_where(ld), config_ld_value(ld, v));
		config_ld_pop(ld);
		return r;
	}
	for (size_t i = 0; i < json_array_size(v) && r == 0; i++) {
		json_t *e = json_array_get(v, i);
		config_ld_push_index(ld, i);
		if (strcmp(key, "hosts") == 0) {
			/* the Slurm cluster's node may be routed to like a host */
			bool slurm = ld->c->slurm && json_is_string(e) &&
				     !strcmp(json_string_value(e), ld->c->slurm->name);
			r = slurm ? 0 : config_check_host_ref(ld, e);
		} else if (!json_is_string(e) || json_string_length(e) == 0) {
			r = config_ld_fail(ld, LOCATE_VALUE,
					   "%s must be a non-empty string, not %s",
					   config_ld_where(ld), config_ld_value(ld, e));
		} else if (strcmp(key, "tiers") == 0 &&
			   !config_in_list(json_string_value(e), config_tier_names)) {
			r = config_ld_fail(
				ld, LOCATE_VALUE,
				"%s must be \"powerhouse\", \"standard\" or \"light\", not %s",
				config_ld_where(ld), config_ld_quote(ld, 0, json_string_value(e)));
		}
		config_ld_pop(ld);
	}
	config_ld_pop(ld);
	return r;
}

int config_parse_routing(struct loader *ld, const json_t *doc)
{
	static const char *const keys[] = {"hosts", "roles", "tiers", NULL};
	json_t *routing = json_object_get(doc, "routing"), *v;
	const char *type;
	int r;

	if (!routing) {
		ld->c->routing = json_object();
		return ld->c->routing ? 0 : -ENOMEM;
	}
	config_ld_push(ld, "routing");
	r = config_expect_object(ld, routing);
	if (r == 0) {
		json_object_foreach (routing, type, v) {
			if (!name_is_valid(type)) {
				config_ld_push(ld, type);
				r = config_ld_fail(ld, LOCATE_KEY,
						   "task type %s must be printable, without '/'",
						   config_ld_quote(ld, 0, type));
				config_ld_pop(ld);
				break;
			}
			config_ld_push(ld, type);
			r = config_expect_object(ld, v);
			if (r == 0)
				r = config_check_keys(ld, v, keys);
			if (r == 0)
				r = parse_routing_list(ld, v, "hosts");
			if (r == 0)
				r = parse_routing_list(ld, v, "roles");
			if (r == 0)
				r = parse_routing_list(ld, v, "tiers");
			config_ld_pop(ld);
			if (r < 0)
				break;
		}
	}
	config_ld_pop(ld);
	if (r < 0)
		return r;
	ld->c->routing = json_incref(routing);
	return 0;
}

static int parse_service_file(struct loader *ld, const char *name, const json_t *v)
{
	static const char *const keys[] = {"get", "post", NULL};
	const char *path = NULL, *method;
	int r;

	r = config_enter_entry(ld, "file", name, v, keys);
	if (r < 0)
		goto out_pop;
	if (json_object_get(v, "get") && json_object_get(v, "post")) {
		config_ld_push(ld, "post");
		r = config_ld_fail(
			ld, LOCATE_KEY,
			"%s has both \"get\" and \"post\"; a file is either read (get) or "
			"written (post)",
			config_ld_where(ld));
		config_ld_pop(ld);
		goto out_pop;
	}
	if (!json_object_get(v, "get") && !json_object_get(v, "post")) {
		r = config_ld_fail(ld, LOCATE_VALUE,
				   "%s needs \"get\" or \"post\" with a URL path, e.g. {\"get\": "
				   "\"/api/status\"}",
				   config_ld_where(ld));
		goto out_pop;
	}
	method = json_object_get(v, "get") ? "get" : "post";
	r = config_parse_string(ld, v, method, true, &path);
	if (r == 0 && !config_url_path_ok(path)) {
		config_ld_push(ld, method);
		r = config_ld_fail(
			ld, LOCATE_VALUE,
			"%s must be a URL path starting with '/' and without spaces, not %s",
			config_ld_where(ld), config_ld_quote(ld, 0, path));
		config_ld_pop(ld);
	}
out_pop:
	config_ld_pop(ld);
	return r;
}

static int parse_service(struct loader *ld, const char *name, const json_t *v)
{
	static const char *const keys[] = {"host", "port", "files", "tls", "insecure_http", NULL};
	struct config *c = ld->c;
	json_t *files, *f;
	const char *file;
	int port = 0, r;

	r = config_enter_entry(ld, "service", name, v, keys);
	if (r < 0)
		goto out_pop;
	if (!json_object_get(v, "host")) {
		r = config_ld_fail(ld, LOCATE_VALUE, "%s has no \"host\"; name one of \"hosts\"",
				   config_ld_where(ld));
		goto out_pop;
	}
	config_ld_push(ld, "host");
	r = config_check_host_ref(ld, json_object_get(v, "host"));
	config_ld_pop(ld);
	if (r < 0)
		goto out_pop;
	if (!json_object_get(v, "port")) {
		r = config_ld_fail(ld, LOCATE_VALUE,
				   "%s has no \"port\"; give it as \"port\": 8080",
				   config_ld_where(ld));
		goto out_pop;
	}
	r = config_parse_int(ld, v, "port", 1, MAX_PORT, &port);
	if (r < 0)
		goto out_pop;
	c->service_names[c->n_service_transports] = xstrdup(name);
	r = config_parse_transport(ld, v, &c->service_transports[c->n_service_transports++]);
	if (r < 0)
		goto out_pop;
	files = json_object_get(v, "files");
	if (!files)
		goto out_pop;
	config_ld_push(ld, "files");
	r = config_expect_object(ld, files);
	if (r == 0) {
		json_object_foreach (files, file, f) {
			r = parse_service_file(ld, file, f);
			if (r < 0)
				break;
		}
	}
	config_ld_pop(ld);
out_pop:
	config_ld_pop(ld);
	return r;
}

int config_parse_services(struct loader *ld, const json_t *doc)
{
	json_t *services = json_object_get(doc, "services"), *v;
	const char *name;
	int r;

	if (!services) {
		ld->c->services = json_object();
		return ld->c->services ? 0 : -ENOMEM;
	}
	config_ld_push(ld, "services");
	r = config_expect_object(ld, services);
	if (r == 0) {
		size_t n = json_object_size(services);
		ld->c->service_names = xcalloc(n, sizeof(*ld->c->service_names));
		ld->c->service_transports = xcalloc(n, sizeof(*ld->c->service_transports));
		json_object_foreach (services, name, v) {
			r = parse_service(ld, name, v);
			if (r < 0)
				break;
		}
	}
	config_ld_pop(ld);
	if (r < 0)
		return r;
	ld->c->services = json_incref(services);
	return 0;
}

/* The seed's "local_host", "default_trainer", "default_inference": kept in doc, checked. */
int config_parse_seed_refs(struct loader *ld, const json_t *doc)
{
	static const char *const keys[] = {"local_host", "default_trainer", "default_inference",
					   NULL};
	for (size_t i = 0; keys[i]; i++) {
		json_t *v = json_object_get(doc, keys[i]);
		int r;
		if (!v)
			continue;
		config_ld_push(ld, keys[i]);
		r = config_check_host_ref(ld, v);
		config_ld_pop(ld);
		if (r < 0)
			return r;
	}
	return 0;
}
