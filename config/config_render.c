/* Config: the effective configuration as JSON (config_render()), defaults filled in and
 * every secret redacted. */
#include "config/config_internal.h"

#include <stdlib.h>
#include <string.h>

#include "backend/util.h"

static json_t *render_pair(const double pair[2])
{
	return json_pack("[ff]", pair[0], pair[1]);
}

/* A transport as the config's rendering shows it: fingerprints are public, not secrets. */
static void render_transport(json_t *o, const struct cfg_transport *t)
{
	if (t->tls) {
		json_t *tls = json_object();
		json_object_set_new(tls, "fingerprint",
				    t->fingerprint ? json_string(t->fingerprint) : json_null());
		json_object_set_new(tls, "ca_file",
				    t->ca_file ? json_string(t->ca_file) : json_null());
		json_object_set_new(o, "tls", tls);
	} else {
		json_object_set_new(o, "tls", json_false());
	}
	json_object_set_new(o, "insecure_http", json_boolean(t->insecure_http));
}

static json_t *render_host(const struct cfg_host *h)
{
	json_t *o = json_object(), *caps = json_array(), *svcs = json_object();

	json_object_set_new(o, "host", json_string(h->address));
	if (h->display_name)
		json_object_set_new(o, "name", json_string(h->display_name));
	json_object_set_new(o, "role", json_string(h->role));
	if (h->tier)
		json_object_set_new(o, "tier", json_string(h->tier));
	json_object_set_new(o, "agent_port", json_integer(h->agent_port));
	for (size_t i = 0; i < h->n_capabilities; i++)
		json_array_append_new(caps, json_string(h->capabilities[i]));
	json_object_set_new(o, "capabilities", caps);
	json_object_set_new(o, "queue_depth", json_integer(h->queue_depth));
	if (h->run_as != CFG_RUN_AS_INHERIT)
		json_object_set_new(o, "run_as", json_string(config_run_as_name(h->run_as)));
	for (size_t i = 0; i < h->n_services; i++) {
		const struct cfg_service *s = &h->services[i];
		json_t *so = json_object();
		json_object_set_new(so, "port", json_integer(s->port));
		if (s->path[0])
			json_object_set_new(so, "path", json_string(s->path));
		if (s->kind)
			json_object_set_new(so, "type", json_string(s->kind));
		if (strcmp(s->name, "agent") != 0)
			render_transport(so, &s->transport);
		json_object_set_new(svcs, s->name, so);
	}
	json_object_set_new(o, "services", svcs);
	render_transport(o, &h->transport);
	json_object_set_new(o, "token_file",
			    h->token_file ? json_string(h->token_file) : json_null());
	json_object_set_new(o, "token", h->token ? json_string("(redacted)") : json_null());
	if (h->dropin)
		json_object_set_new(o, "dropin", json_string(h->dropin));
	return o;
}

char *config_render(const struct config *c)
{
	static const char *const seed_keys[] = {"local_host", "default_trainer",
						"default_inference", NULL};
	json_t *o = json_object(), *auth = json_object(), *probe, *th, *hosts = json_object();
	char *text;
	struct buf b;

	json_object_set_new(o, "cluster", json_string(c->cluster));
	json_object_set_new(o, "file", c->path ? json_string(c->path) : json_null());
	json_object_set_new(auth, "token_file",
			    c->token_file ? json_string(c->token_file) : json_null());
	json_object_set_new(o, "auth", auth);
	json_object_set_new(o, "tls",
			    json_pack("{so}", "ca_file",
				      c->tls_ca_file ? json_string(c->tls_ca_file) : json_null()));
	probe = json_pack("{si si si si si si}", "interval_s", c->probe.interval_s, "timeout_ms",
			  c->probe.timeout_ms, "stale_after_s", c->probe.stale_after_s,
			  "offline_after_s", c->probe.offline_after_s, "unhealthy_after",
			  c->probe.unhealthy_after, "max_age_ms", c->probe.max_age_ms);
	json_object_set_new(probe, "heartbeat_s", json_integer(c->probe.heartbeat_s));
	json_object_set_new(o, "probe", probe);
	if (c->join.enabled)
		json_object_set_new(o, "join",
				    json_pack("{ss ss ss s{ss ss} si sb}", "listen", c->join.listen,
					      "token_file", c->join.token_file, "token",
					      "(redacted)", "tls", "cert_file", c->join.cert_file,
					      "key_file", c->join.key_file, "forget_after_s",
					      c->join.forget_after_s, "announce",
					      c->join.announce));
	if (c->dropin_dir)
		json_object_set_new(o, "dropin_dir", json_string(c->dropin_dir));
	th = json_pack("{so so so so}", "cpu", render_pair(c->thresholds.cpu), "memory",
		       render_pair(c->thresholds.memory), "disk", render_pair(c->thresholds.disk),
		       "load", render_pair(c->thresholds.load));
	json_object_set_new(o, "thresholds", th);
	json_object_set_new(
		o, "tasks",
		json_pack("{ss sb so si sI si si s{sf sf sf}}", "run_as",
			  config_run_as_name(c->tasks.run_as), "allow_root", c->tasks.allow_root,
			  "group", c->tasks.group ? json_string(c->tasks.group) : json_null(),
			  "drafts_per_user", c->tasks.drafts_per_user, "draft_bytes_per_user",
			  (json_int_t) (c->tasks.draft_bytes_per_user >> 20), "queued_per_user",
			  c->tasks.queued_per_user, "finished_cached", c->tasks.finished_cached,
			  "retention", "output_days", c->tasks.retention.output_days, "output_mb",
			  c->tasks.retention.output_mb, "records_days",
			  c->tasks.retention.records_days));
	json_object_set_new(o, "events", json_pack("{si}", "keep", c->events.keep));
	for (size_t i = 0; i < c->n_hosts; i++)
		json_object_set_new(hosts, c->hosts[i].name, render_host(&c->hosts[i]));
	json_object_set_new(o, "hosts", hosts);
	json_object_set(o, "routing", c->routing);
	json_t *services = json_deep_copy(c->services);
	const char *sname;
	json_t *sv;
	json_object_foreach (services, sname, sv) {
		const struct cfg_transport *t = config_service_transport(c, sname);
		if (t && json_is_object(sv))
			render_transport(sv, t);
	}
	json_object_set_new(o, "services", services);
	if (c->slurm) {
		const struct cfg_slurm *sl = c->slurm;
		json_t *so = json_pack("{ss ss ss si ss ss ss so ss si si}", "name", sl->name,
				       "prefix", sl->prefix, "address", sl->address, "port",
				       sl->port, "token_file", sl->token_file, "user", sl->user,
				       "partition", sl->partition, "api",
				       sl->api ? json_string(sl->api) : json_string("(discovered)"),
				       "output_dir", sl->output_dir, "interval_s", sl->interval_s,
				       "queue_depth", sl->queue_depth);
		render_transport(so, &sl->transport);
		json_object_set_new(o, "slurm", so);
	}
	for (size_t i = 0; seed_keys[i]; i++) {
		json_t *v = c->doc ? json_object_get(c->doc, seed_keys[i]) : NULL;
		if (v)
			json_object_set(o, seed_keys[i], v);
	}

	text = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15));
	json_decref(o);
	if (!text)
		return NULL;
	buf_init(&b);
	buf_puts(&b, text);
	buf_puts(&b, "\n");
	free(text);
	return buf_steal(&b, NULL);
}
