/* The cluster model, levels: the typed node documents, and a node's level from its
 * metrics, failures, age and drain (DESIGN §6, "Health policy"). */
#include "backend/cluster_internal.h"
#include "httpd/agent_api.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

const char *node_level_name(enum node_level level)
{
	static const char *const names[] = {
		[NODE_UNKNOWN] = "unknown",     [NODE_HEALTHY] = "healthy",
		[NODE_WARNING] = "warning",     [NODE_CRITICAL] = "critical",
		[NODE_UNHEALTHY] = "unhealthy", [NODE_STALE] = "stale",
		[NODE_OFFLINE] = "offline",     [NODE_DRAINING] = "draining",
	};
	return level <= NODE_DRAINING ? names[level] : "unknown";
}

/* ---- levels ---- */

/* Compares one metric with its [warning, critical] pair (a level is reached when the value
 * exceeds it, as the seeds say); appends a reason when one is reached. */
static enum node_level metric_level(const char *what, double value, const double pair[2],
				    bool percent, json_t *reasons)
{
	enum node_level level = value > pair[1]   ? NODE_CRITICAL
				: value > pair[0] ? NODE_WARNING
						  : NODE_HEALTHY;
	if (level == NODE_HEALTHY)
		return level;
	double limit = level == NODE_CRITICAL ? pair[1] : pair[0];
	const char *name = level == NODE_CRITICAL ? "critical" : "warning";
	char line[160];
	if (percent)
		snprintf(line, sizeof(line), "%s %.1f%% > %s %g%%", what, value, name, limit);
	else
		snprintf(line, sizeof(line), "%s %.2f > %s %g", what, value, name, limit);
	json_array_append_new(reasons, json_string(line));
	return level;
}

static enum node_level level_max(enum node_level a, enum node_level b)
{
	return a > b ? a : b;
}

/* A number of a document, or NaN when it is absent or another JSON type. */
static double doc_num(const json_t *x)
{
	return json_is_number(x) ? json_number_value(x) : NAN;
}

/* A JSON integer in [0, max], or -1. */
static int doc_count(const json_t *x, int max)
{
	if (!json_is_integer(x))
		return -1;
	json_int_t v = json_integer_value(x);
	return v >= 0 && v <= max ? (int) v : -1;
}

void node_metrics_parse(const json_t *h, struct node_metrics *ret)
{
	*ret = (struct node_metrics){
		.cpu_percent = doc_num(json_object_get(h, "cpu_percent")),
		.mem_percent = doc_num(json_object_get(h, "mem_percent")),
		.disk_percent = doc_num(json_object_get(h, "disk_percent")),
		.load1 = doc_num(json_array_get(json_object_get(h, "load"), 0)),
		.cores = doc_count(json_object_get(h, "cores"), AGENT_API_MAX_CORES),
		.mem_total_mb = doc_count(json_object_get(h, "mem_total_mb"), INT_MAX),
		.mem_available_mb = doc_num(json_object_get(h, "mem_available_mb")),
		.disk_total_mb = doc_num(json_object_get(h, "disk_total_mb")),
		.disk_free_mb = doc_num(json_object_get(h, "disk_free_mb")),
		.uptime_s = doc_num(json_object_get(h, "uptime_s")),
		.gpus = (int) json_array_size(json_object_get(h, "gpus")),
	};
}

void node_system_parse(const json_t *sys, struct node_system *ret)
{
	const json_t *cores = json_object_get(sys, "cores");
	*ret = (struct node_system){
		.has_cores = json_is_integer(cores),
		.cores = json_integer_value(cores),
		.ram_mb = doc_num(json_object_get(sys, "ram_mb")),
	};
}

/* Loop or listener thread, lock held for writing: replaces the node's documents (either
 * may be NULL: that one is kept) and their parsed numbers. Takes the references given. */
void cluster_node_set_docs(struct node *n, json_t *health, json_t *system)
{
	if (health) {
		json_decref(n->health);
		n->health = health;
		node_metrics_parse(health, &n->metrics);
	}
	if (system) {
		json_decref(n->system);
		n->system = system;
		node_system_parse(system, &n->sys);
	}
}

/* The level the last health document reaches under the thresholds, with its reasons. */
enum node_level cluster_level_from_metrics(const struct config *cfg, const struct node_metrics *m,
					   json_t *reasons)
{
	const struct cfg_thresholds *t = &cfg->thresholds;
	enum node_level level = NODE_HEALTHY;
	if (!isnan(m->cpu_percent))
		level = level_max(level,
				  metric_level("cpu", m->cpu_percent, t->cpu, true, reasons));
	if (!isnan(m->mem_percent))
		level = level_max(level,
				  metric_level("memory", m->mem_percent, t->memory, true, reasons));
	if (!isnan(m->disk_percent))
		level = level_max(level,
				  metric_level("disk", m->disk_percent, t->disk, true, reasons));
	if (!isnan(m->load1))
		level = level_max(level, metric_level("load", m->load1, t->load, false, reasons));
	return level;
}

/* Recomputes a node's level from its metrics, failures and age. Loop thread, lock held
 * for writing. Returns true when the level changed; *ret_old gets the previous one. */
bool cluster_node_evaluate_external(struct node *n, enum node_level *ret_old)
{
	/* its owner sets its documents in cluster_set_external: their numbers follow here */
	node_metrics_parse(n->health, &n->metrics);
	node_system_parse(n->system, &n->sys);
	enum node_level level = n->ext_level;
	json_t *reasons = json_deep_copy(n->reasons);
	size_t k = json_array_size(reasons);
	const char *last = k ? json_string_value(json_array_get(reasons, k - 1)) : NULL;
	bool marked = last && !strcmp(last, "draining: takes no new work");
	if (n->draining && (level == NODE_HEALTHY || level == NODE_WARNING)) {
		level = NODE_DRAINING;
		if (!marked)
			json_array_append_new(reasons, json_string("draining: takes no new work"));
	} else if (marked)
		json_array_remove(reasons, k - 1);
	*ret_old = n->level;
	bool changed = level != n->level;
	json_decref(n->reasons);
	n->reasons = reasons;
	n->level = level;
	if (changed)
		n->changed_at = clock_wall_s();
	return changed;
}

bool cluster_node_evaluate(struct cluster *c, struct node *n, uint64_t now,
			   enum node_level *ret_old)
{
	assert(cluster_wrlock_held(c));
	if (n->owner)
		return cluster_node_evaluate_external(n, ret_old);
	const struct cfg_probe *p = &c->cfg->probe;
	json_t *reasons = json_array();
	enum node_level level = NODE_UNKNOWN;
	if (n->health)
		level = cluster_level_from_metrics(c->cfg, &n->metrics, reasons);
	if (n->failures > 0 && n->last_error) {
		char line[512];
		snprintf(line, sizeof(line), "%s (%d failed probe%s in a row)", n->last_error,
			 n->failures, n->failures == 1 ? "" : "s");
		json_array_append_new(reasons, json_string(line));
		/* a refused or rejected transport is not transient: unhealthy at once */
		if (n->failures >= p->unhealthy_after || n->insecure)
			level = NODE_UNHEALTHY;
	}
	/* a node never heard from is silent since it was added, or since the start */
	uint64_t since = n->last_ok_us                 ? n->last_ok_us
			 : n->added_us > c->started_us ? n->added_us
						       : c->started_us;
	uint64_t silent = now > since ? now - since : 0;
	if (n->failures > 0 || !n->last_ok_us) {
		char line[160];
		if (silent >= (uint64_t) p->offline_after_s * 1000000u) {
			level = NODE_OFFLINE;
			snprintf(line, sizeof(line),
				 "no successful probe for %llu s (offline after %d s)",
				 (unsigned long long) (silent / 1000000u), p->offline_after_s);
			json_array_append_new(reasons, json_string(line));
		} else if (silent >= (uint64_t) p->stale_after_s * 1000000u) {
			level = NODE_STALE;
			snprintf(line, sizeof(line),
				 "no successful probe for %llu s (stale after %d s)",
				 (unsigned long long) (silent / 1000000u), p->stale_after_s);
			json_array_append_new(reasons, json_string(line));
		}
	}
	if (n->draining && (level == NODE_HEALTHY || level == NODE_WARNING)) {
		level = NODE_DRAINING;
		json_array_append_new(reasons, json_string("draining: takes no new work"));
	}
	if (level == NODE_UNKNOWN && json_array_size(reasons) == 0)
		json_array_append_new(reasons, json_string("not probed yet"));

	bool changed = level != n->level || !json_equal(reasons, n->reasons);
	*ret_old = n->level;
	json_decref(n->reasons);
	n->reasons = reasons;
	bool level_changed = level != n->level;
	n->level = level;
	if (changed)
		n->changed_at = clock_wall_s();
	return level_changed;
}

void cluster_node_event_level(struct cluster *c, struct node *n, enum node_level old)
{
	struct buf why;
	buf_init(&why);
	for (size_t i = 0; i < json_array_size(n->reasons); i++)
		buf_printf(&why, "%s%s", i ? "; " : "",
			   json_string_value(json_array_get(n->reasons, i)));
	cluster_add_event(c, "node", n->name, "%s -> %s%s%s", node_level_name(old),
			  node_level_name(n->level), why.len ? ": " : "", why.data ? why.data : "");
	buf_free(&why);
}
