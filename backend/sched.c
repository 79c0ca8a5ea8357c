/* Placement: filters the nodes through the routing policy, the task's requirements,
 * eligibility and the P0 rule, then scores the rest (DESIGN §6). Each node that is
 * filtered out keeps the first reason, so a waiting task can say why it waits. */
#include "backend/sched.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REASON_MAX 160
#define SCORE_EPS  1e-9

static bool is_any(const char *node)
{
	return !node || !*node || strcmp(node, "any") == 0;
}

static bool tier_is(const char *tier, const char *name)
{
	return tier && strcmp(tier, name) == 0;
}

double sched_reliability(const struct sched_node *n)
{
	double r = n->total > 0 ? 100.0 * n->completed / n->total : 100.0;
	int cf = n->consecutive_failures > 0 ? n->consecutive_failures : 0;

	r -= cf >= 5 ? 50.0 : 10.0 * cf;
	if (r < 0)
		r = 0;
	if (r > 100)
		r = 100;
	return r;
}

int sched_max_concurrent(const struct sched_node *n)
{
	int half = n->cores / 2;

	if (tier_is(n->tier, "powerhouse"))
		return half > 16 ? 16 : half > 0 ? half : 1;
	if (tier_is(n->tier, "standard"))
		return half > 0 ? half : 1;
	if (tier_is(n->tier, "light"))
		return n->cores < 4 ? 1 : 2;
	return 1;
}

double sched_tier_boost(const char *tier)
{
	if (tier_is(tier, "powerhouse"))
		return 0.3;
	if (tier_is(tier, "standard"))
		return 0.1;
	return 0.0;
}

/* Slots: the tier's concurrency, capped by the node's configured queue depth. */
static int node_slots(const struct sched_node *n)
{
	if (n->slots > 0)
		return n->slots;
	int max = sched_max_concurrent(n);
	return n->queue_depth > 0 && n->queue_depth < max ? n->queue_depth : max;
}

static double fraction(double x)
{
	if (isnan(x) || x > 1)
		return 1;
	return x < 0 ? 0 : x;
}

static double node_score(const struct sched_node *n)
{
	int slots = node_slots(n);
	double busy = n->active >= slots ? 1.0 : n->active > 0 ? (double) n->active / slots : 0.0;
	double health = n->level == NODE_HEALTHY ? 1.0 : 0.5;

	return 0.4 * (1 - fraction(n->cpu)) + 0.3 * (1 - fraction(n->mem)) + 0.2 * (1 - busy) +
	       0.1 * health + sched_tier_boost(n->tier);
}

/* Reliability for display, rounded down to a tenth so it never reads as the threshold. */
static void show_reliability(double r, char *out, size_t outlen)
{
	double shown = floor(r * 10) / 10;
	if (shown == floor(shown))
		snprintf(out, outlen, "%.0f", shown);
	else
		snprintf(out, outlen, "%.1f", shown);
}

static bool json_list_has(const json_t *list, const char *s)
{
	size_t i;
	json_t *e;

	json_array_foreach (list, i, e) {
		if (json_is_string(e) && s && strcmp(json_string_value(e), s) == 0)
			return true;
	}
	return false;
}

/* The routing policy of req->type, or NULL when every node is admitted. */
static const json_t *routing_policy(const struct config *cfg, const struct sched_request *req)
{
	if (!cfg || !cfg->routing || !req->type)
		return NULL;
	return json_object_get(cfg->routing, req->type);
}

/* Rule 1: the policy's lists. False with a reason when the node is not admitted. */
static bool check_policy(const json_t *policy, const char *type, const struct sched_node *n,
			 char *reason)
{
	const json_t *l;

	if (!policy)
		return true;
	l = json_object_get(policy, "hosts");
	if (json_is_array(l) && !json_list_has(l, n->name)) {
		snprintf(reason, REASON_MAX, "not in routing hosts for %s", type);
		return false;
	}
	l = json_object_get(policy, "roles");
	if (json_is_array(l) && !json_list_has(l, n->role)) {
		snprintf(reason, REASON_MAX, "role %s not in routing roles for %s",
			 n->role && *n->role ? n->role : "(none)", type);
		return false;
	}
	l = json_object_get(policy, "tiers");
	if (json_is_array(l) && !json_list_has(l, n->tier)) {
		snprintf(reason, REASON_MAX, "tier %s not in routing tiers for %s",
			 n->tier ? n->tier : "unknown", type);
		return false;
	}
	return true;
}

static bool has_capability(const struct sched_node *n, const char *cap)
{
	for (size_t i = 0; i < n->n_capabilities; i++)
		if (n->capabilities[i] && strcmp(n->capabilities[i], cap) == 0)
			return true;
	return false;
}

static const char *model_word(int level)
{
	switch (level) {
	case SCHED_MODEL_LOADED: return "loaded";
	case SCHED_MODEL_PRESENT: return "present";
	case SCHED_MODEL_NOSERVE: return "no server";
	case SCHED_MODEL_FAILED: return "failed here";
	default: return "absent";
	}
}

/* Rule 2: the model, capabilities, free slots (when check_slots), resources. */
static bool check_requirements(const struct sched_request *req, const struct sched_node *n,
			       bool check_slots, char *reason)
{
	if (req->model && n->model == SCHED_MODEL_NOSERVE) {
		snprintf(reason, REASON_MAX, "has no model server");
		return false;
	}
	if (req->model && n->model == SCHED_MODEL_FAILED) {
		snprintf(reason, REASON_MAX, "the last attempt failed here; another node has %.64s",
			 req->model);
		return false;
	}
	if (req->model && n->model < SCHED_MODEL_PRESENT) {
		snprintf(reason, REASON_MAX, "lacks model %.64s", req->model);
		return false;
	}
	for (size_t i = 0; i < req->n_requires; i++) {
		if (!has_capability(n, req->requires[i])) {
			snprintf(reason, REASON_MAX, "lacks capability %s", req->requires[i]);
			return false;
		}
	}
	if (check_slots && n->active >= node_slots(n)) {
		snprintf(reason, REASON_MAX, "full (slots %d/%d)", n->active, node_slots(n));
		return false;
	}
	if (req->cpus > 0 && req->cpus > n->cores) {
		if (n->cores <= 0)
			snprintf(reason, REASON_MAX, "cores unknown (%d cpus asked)", req->cpus);
		else
			snprintf(reason, REASON_MAX, "has %d cores < %d cpus asked", n->cores,
				 req->cpus);
		return false;
	}
	if (req->mem_mb > 0 && req->mem_mb > n->ram_mb) {
		if (n->ram_mb <= 0)
			snprintf(reason, REASON_MAX, "RAM unknown (%d mem_mb asked)", req->mem_mb);
		else
			snprintf(reason, REASON_MAX, "has %d MB RAM < %d mem_mb asked", n->ram_mb,
				 req->mem_mb);
		return false;
	}
	if (req->gpus > 0 && req->gpus > n->gpus) {
		snprintf(reason, REASON_MAX, "has %d gpus < %d asked", n->gpus > 0 ? n->gpus : 0,
			 req->gpus);
		return false;
	}
	return true;
}

/* Rules 3 and 4: level, draining, demotion (unless explicit), the P0 rule. */
static bool check_eligible(const struct sched_request *req, const struct sched_node *n,
			   bool explicit, char *reason)
{
	char rel[16];
	double r;

	if (n->draining || n->level == NODE_DRAINING) {
		snprintf(reason, REASON_MAX, "draining");
		return false;
	}
	if (n->level == NODE_UNKNOWN) {
		snprintf(reason, REASON_MAX, "not probed yet");
		return false;
	}
	if (n->level != NODE_HEALTHY && n->level != NODE_WARNING) {
		snprintf(reason, REASON_MAX, "%s", node_level_name(n->level));
		return false;
	}
	r = sched_reliability(n);
	show_reliability(r, rel, sizeof(rel));
	if (!explicit && r < SCHED_DEMOTE_BELOW) {
		snprintf(reason, REASON_MAX, "reliability %s < %.0f", rel, SCHED_DEMOTE_BELOW);
		return false;
	}
	if (req->priority == 0 && r < SCHED_P0_MIN) {
		snprintf(reason, REASON_MAX, "reliability %s < %.0f for P0", rel, SCHED_P0_MIN);
		return false;
	}
	return true;
}

/* Every rule; false with the first reason the node fails. */
static bool node_fits(const json_t *policy, const struct sched_request *req,
		      const struct sched_node *n, bool explicit, bool check_slots, char *reason)
{
	if (!explicit && n->by_name_only) {
		const json_t *hosts = policy ? json_object_get(policy, "hosts") : NULL;
		if (!json_is_array(hosts) || !json_list_has(hosts, n->name)) {
			snprintf(reason, REASON_MAX,
				 "takes only tasks that name it (\"node\" or routing hosts)");
			return false;
		}
	}
	if (!explicit && !check_policy(policy, req->type, n, reason))
		return false;
	return check_requirements(req, n, check_slots, reason) &&
	       check_eligible(req, n, explicit, reason);
}

/* The winner between a and b: the model loaded (for a prompt), then the higher score, then
 * the smaller name. */
static bool better(const struct sched_request *req, const struct sched_node *a, double sa,
		   const struct sched_node *b, double sb)
{
	if (req->model && a->model != b->model)
		return a->model > b->model;
	if (sa > sb + SCORE_EPS)
		return true;
	if (sb > sa + SCORE_EPS)
		return false;
	return strcmp(a->name, b->name) < 0;
}

static void explain_choice(struct buf *why, const struct sched_request *req,
			   const struct sched_node *n, double score, bool explicit)
{
	double boost = sched_tier_boost(n->tier);

	buf_printf(
		why,
		"placed on %s%s: score %.3f (cpu %.0f%%, mem %.0f%%, slots %d/%d, %s, tier %s +%g)",
		n->name, explicit ? " as asked" : "", score, 100 * fraction(n->cpu),
		100 * fraction(n->mem), n->active, node_slots(n),
		n->level == NODE_HEALTHY ? "healthy" : "warning", n->tier ? n->tier : "unknown",
		boost);
	if (req->model)
		buf_printf(why, ", model %.64s %s", req->model, model_word(n->model));
}

/* Explicit placement: the named node, if it fits. */
static int place_explicit(const struct sched_request *req, const struct sched_node *nodes, size_t n,
			  size_t *ret_index, struct buf *why)
{
	char reason[REASON_MAX];

	for (size_t i = 0; i < n; i++) {
		if (strcmp(nodes[i].name, req->node) != 0)
			continue;
		if (!node_fits(NULL, req, &nodes[i], true, true, reason)) {
			buf_printf(why, "cannot place on %s (asked for by name): %s", req->node,
				   reason);
			return -EAGAIN;
		}
		explain_choice(why, req, &nodes[i], node_score(&nodes[i]), true);
		*ret_index = i;
		return 0;
	}

	const char **names = xcalloc(n ? n : 1, sizeof(*names));
	for (size_t i = 0; i < n; i++)
		names[i] = nodes[i].name;
	const char *hint = util_closest_word(req->node, names, n, 2);
	free(names);
	if (hint)
		buf_printf(why, "no node named \"%s\"; did you mean \"%s\"?", req->node, hint);
	else
		buf_printf(why, "no node named \"%s\"", req->node);
	return -ENOENT;
}

int sched_place(const struct config *cfg, const struct sched_request *req,
		const struct sched_node *nodes, size_t n, size_t *ret_index, struct buf *why)
{
	const json_t *policy = routing_policy(cfg, req);
	char reason[REASON_MAX];
	size_t best = SIZE_MAX, next = SIZE_MAX;
	double best_score = 0, next_score = 0;
	struct buf skipped;

	if (!is_any(req->node) && strcmp(req->node, "all") == 0) {
		buf_puts(why, "node \"all\" runs a copy on every eligible node, not one placement");
		return -EINVAL;
	}
	if (!is_any(req->node))
		return place_explicit(req, nodes, n, ret_index, why);

	buf_init(&skipped);
	for (size_t i = 0; i < n; i++) {
		if (!node_fits(policy, req, &nodes[i], false, true, reason)) {
			buf_printf(&skipped, "%s%s %s", skipped.len ? "; " : "", nodes[i].name,
				   reason);
			continue;
		}
		double s = node_score(&nodes[i]);
		if (best == SIZE_MAX || better(req, &nodes[i], s, &nodes[best], best_score)) {
			next = best;
			next_score = best_score;
			best = i;
			best_score = s;
		} else if (next == SIZE_MAX ||
			   better(req, &nodes[i], s, &nodes[next], next_score)) {
			next = i;
			next_score = s;
		}
	}

	if (best == SIZE_MAX) {
		buf_printf(why, "no eligible node: %s",
			   skipped.len ? skipped.data : "the cluster has no nodes");
		buf_free(&skipped);
		return -EAGAIN;
	}
	explain_choice(why, req, &nodes[best], best_score, false);
	if (next != SIZE_MAX)
		buf_printf(why, "; next %s %.3f", nodes[next].name, next_score);
	buf_free(&skipped);
	*ret_index = best;
	return 0;
}

size_t sched_place_all(const struct config *cfg, const struct sched_request *req,
		       const struct sched_node *nodes, size_t n, size_t *ret_indices,
		       struct buf *why)
{
	const json_t *policy = routing_policy(cfg, req);
	char reason[REASON_MAX];
	struct buf placed, skipped;
	size_t count = 0;

	buf_init(&placed);
	buf_init(&skipped);
	for (size_t i = 0; i < n; i++) {
		if (node_fits(policy, req, &nodes[i], false, false, reason)) {
			buf_printf(&placed, "%s%s", count ? ", " : "", nodes[i].name);
			ret_indices[count++] = i;
		} else {
			buf_printf(&skipped, "%s%s %s", skipped.len ? "; " : "", nodes[i].name,
				   reason);
		}
	}
	if (count == 0)
		buf_printf(why, "no eligible node: %s",
			   skipped.len ? skipped.data : "the cluster has no nodes");
	else if (skipped.len)
		buf_printf(why, "placed on %s; skipped %s", placed.data, skipped.data);
	else
		buf_printf(why, "placed on %s", placed.data);
	buf_free(&placed);
	buf_free(&skipped);
	return count;
}

/* One node's line in a ranking: its score and the parts of it, its load, and whether it
 * is eligible (with the first reason when not). */
static json_t *rank_entry(const json_t *policy, const struct sched_request *req,
			  const struct sched_node *n, bool explicit, bool check_slots, bool asked)
{
	char reason[REASON_MAX] = "";
	bool fits = asked && node_fits(policy, req, n, explicit, check_slots, reason);
	if (!asked)
		snprintf(reason, REASON_MAX, "not the node asked for (%s)", req->node);
	int slots = node_slots(n);
	double busy = n->active >= slots ? 1.0 : n->active > 0 ? (double) n->active / slots : 0.0;
	double health = n->level == NODE_HEALTHY ? 1.0 : 0.5;
	json_t *parts = json_object();
	json_object_set_new(parts, "cpu", json_real(0.4 * (1 - fraction(n->cpu))));
	json_object_set_new(parts, "mem", json_real(0.3 * (1 - fraction(n->mem))));
	json_object_set_new(parts, "slots", json_real(0.2 * (1 - busy)));
	json_object_set_new(parts, "health", json_real(0.1 * health));
	json_object_set_new(parts, "tier", json_real(sched_tier_boost(n->tier)));
	json_t *e = json_object();
	json_object_set_new(e, "node", json_string(n->name));
	json_object_set_new(e, "eligible", json_boolean(fits));
	json_object_set_new(e, "rank", json_null());
	json_object_set_new(e, "score", json_real(node_score(n)));
	json_object_set_new(e, "parts", parts);
	json_object_set_new(e, "reason", fits ? json_null() : json_string(reason));
	json_object_set_new(e, "status", json_string(node_level_name(n->level)));
	json_object_set_new(e, "tier", json_string(n->tier ? n->tier : "unknown"));
	json_object_set_new(e, "cpu_percent", json_real(100 * fraction(n->cpu)));
	json_object_set_new(e, "mem_percent", json_real(100 * fraction(n->mem)));
	json_object_set_new(e, "active", json_integer(n->active));
	json_object_set_new(e, "slots", json_integer(slots));
	json_object_set_new(e, "reliability", json_real(sched_reliability(n)));
	if (req->model)
		json_object_set_new(e, "model", json_string(model_word(n->model)));
	return e;
}

/* Eligible first, by score (highest first), then by name; then the others by name. */
static int rank_cmp(const void *pa, const void *pb)
{
	const json_t *a = *(const json_t *const *) pa, *b = *(const json_t *const *) pb;
	bool ea = json_is_true(json_object_get(a, "eligible"));
	bool eb = json_is_true(json_object_get(b, "eligible"));
	if (ea != eb)
		return ea ? -1 : 1;
	/* a prompt's model loaded before present, as placement has it */
	bool la = !strcmp(json_string_value(json_object_get(a, "model")) ?: "", "loaded");
	bool lb = !strcmp(json_string_value(json_object_get(b, "model")) ?: "", "loaded");
	if (ea && la != lb)
		return la ? -1 : 1;
	if (ea) {
		double sa = json_real_value(json_object_get(a, "score"));
		double sb = json_real_value(json_object_get(b, "score"));
		if (sa > sb + SCORE_EPS)
			return -1;
		if (sb > sa + SCORE_EPS)
			return 1;
	}
	return strcmp(json_string_value(json_object_get(a, "node")),
		      json_string_value(json_object_get(b, "node")));
}

json_t *sched_rank(const struct config *cfg, const struct sched_request *req,
		   const struct sched_node *nodes, size_t n)
{
	const json_t *policy = routing_policy(cfg, req);
	bool all = !is_any(req->node) && strcmp(req->node, "all") == 0;
	bool explicit = !is_any(req->node) && !all;
	json_t **entries = xcalloc(n ? n : 1, sizeof(*entries));
	for (size_t i = 0; i < n; i++) {
		bool asked = !explicit || strcmp(nodes[i].name, req->node) == 0;
		entries[i] =
			rank_entry(explicit ? NULL : policy, req, &nodes[i], explicit, !all, asked);
	}
	qsort(entries, n, sizeof(*entries), rank_cmp);
	json_t *list = json_array();
	int rank = 0;
	for (size_t i = 0; i < n; i++) {
		if (json_is_true(json_object_get(entries[i], "eligible")))
			json_object_set_new(entries[i], "rank", json_integer(++rank));
		json_array_append_new(list, entries[i]);
	}
	free(entries);

	/* the sentence the task would get, from the same rules */
	struct buf why;
	buf_init(&why);
	json_t *placed = json_array();
	if (all) {
		size_t *idx = xcalloc(n ? n : 1, sizeof(*idx));
		size_t k = sched_place_all(cfg, req, nodes, n, idx, &why);
		for (size_t i = 0; i < k; i++)
			json_array_append_new(placed, json_string(nodes[idx[i]].name));
		free(idx);
	} else {
		size_t idx;
		if (sched_place(cfg, req, nodes, n, &idx, &why) == 0)
			json_array_append_new(placed, json_string(nodes[idx].name));
	}
	json_t *doc = json_object();
	json_object_set_new(doc, "placed", placed);
	json_object_set_new(doc, "why", json_string(why.data ? why.data : ""));
	json_object_set_new(doc, "nodes", list);
	buf_free(&why);
	return doc;
}
