/* Unit tests for backend/cluster's typed node documents: node_metrics_parse and
 * node_system_parse over well-formed, absent, mistyped and absurd fields (DESIGN §4,
 * "Typed node documents"); and a node's level from its metrics, failures, age and drain
 * (DESIGN §6, "Health policy"), evaluated without a network. Prints TAP ("ok N - name");
 * exits non-zero when any failed. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cluster.h"
#include "backend/cluster_internal.h"

#include "tests/unit/check.h"

static json_t *doc(const char *text)
{
	json_error_t err;
	json_t *d = json_loads(text, 0, &err);
	if (!d)
		printf("# bad test document: %s\n", err.text);
	return d;
}

static void test_agent_health(void)
{
	json_t *h =
		doc("{\"cpu_percent\": 12.5, \"cores\": 8, \"load\": [0.5, 0.2, 0.1],"
		    "\"mem_total_mb\": 16000, \"mem_available_mb\": 9000.5, \"mem_percent\": 40,"
		    "\"disk_total_mb\": 100000, \"disk_free_mb\": 50000, \"disk_percent\": 50.0,"
		    "\"gpus\": [{}, {}], \"uptime_s\": 1000}");
	struct node_metrics m;
	node_metrics_parse(h, &m);
	CHECK(m.cpu_percent == 12.5, "cpu_percent as sent");
	CHECK(m.mem_percent == 40, "mem_percent: an integer is a number too");
	CHECK(m.disk_percent == 50, "disk_percent");
	CHECK(m.load1 == 0.5, "load1 is load[0]");
	CHECK(m.cores == 8, "cores");
	CHECK(m.mem_total_mb == 16000, "mem_total_mb");
	CHECK(m.mem_available_mb == 9000.5, "mem_available_mb");
	CHECK(m.disk_total_mb == 100000 && m.disk_free_mb == 50000, "disk sizes");
	CHECK(m.uptime_s == 1000, "uptime_s");
	CHECK(m.gpus == 2, "gpus counts the array's entries");
	json_decref(h);
}

static void test_absent(void)
{
	struct node_metrics m;
	node_metrics_parse(NULL, &m);
	CHECK(isnan(m.cpu_percent) && isnan(m.mem_percent) && isnan(m.disk_percent) &&
		      isnan(m.load1) && isnan(m.mem_available_mb) && isnan(m.uptime_s),
	      "no document: the doubles are NaN");
	CHECK(m.cores == -1 && m.mem_total_mb == -1 && m.gpus == 0,
	      "no document: counts -1, no gpus");
	json_t *h = doc("{\"cpu_percent\": \"12\", \"load\": 1.5, \"cores\": null,"
			"\"gpus\": {\"a\": 1}, \"mem_total_mb\": true}");
	node_metrics_parse(h, &m);
	CHECK(isnan(m.cpu_percent), "a string is not a number");
	CHECK(isnan(m.load1), "load that is not an array is absent");
	CHECK(m.cores == -1 && m.mem_total_mb == -1, "null and true are absent counts");
	CHECK(m.gpus == 0, "gpus that is not an array counts none");
	json_decref(h);
}

static void test_absurd(void)
{
	/* the hostile "numbers" agent (tests/fixtures/hostile_agent.py) */
	json_t *h = doc("{\"cores\": 1e300, \"cpu_percent\": 1e300, \"mem_total_mb\": -1e300}");
	struct node_metrics m;
	node_metrics_parse(h, &m);
	CHECK(m.cores == -1, "1e300 cores is absent");
	CHECK(m.mem_total_mb == -1, "-1e300 MiB is absent");
	CHECK(m.cpu_percent == 1e300, "a percentage is kept as sent: the level judges it");
	json_decref(h);
	h = doc("{\"cores\": 8.0, \"mem_total_mb\": 4096.0}");
	node_metrics_parse(h, &m);
	CHECK(m.cores == -1 && m.mem_total_mb == -1, "counts must be JSON integers");
	json_decref(h);
	h = doc("{\"cores\": 1048577, \"mem_total_mb\": 2147483648}");
	node_metrics_parse(h, &m);
	CHECK(m.cores == -1, "more than 2^20 cores is absent");
	CHECK(m.mem_total_mb == -1, "more than INT_MAX MiB is absent");
	json_decref(h);
	h = doc("{\"cores\": 1048576, \"mem_total_mb\": 0}");
	node_metrics_parse(h, &m);
	CHECK(m.cores == 1 << 20 && m.mem_total_mb == 0, "the bounds themselves are kept");
	json_decref(h);
}

static void test_system(void)
{
	struct node_system s;
	node_system_parse(NULL, &s);
	CHECK(!s.has_cores && isnan(s.ram_mb), "no system document: all absent");
	json_t *d = doc("{\"cores\": 12, \"ram_mb\": 24000.5}");
	node_system_parse(d, &s);
	CHECK(s.has_cores && s.cores == 12 && s.ram_mb == 24000.5, "cores and ram_mb");
	json_decref(d);
	d = doc("{\"cores\": 12.0, \"ram_mb\": \"24000\"}");
	node_system_parse(d, &s);
	CHECK(!s.has_cores && isnan(s.ram_mb), "a real cores and a string ram_mb are absent");
	json_decref(d);
}

/* The reasons of a node as one string, "; "-separated (static buffer). */
static const char *reasons_of(const struct node *n)
{
	static char out[1024];
	out[0] = '\0';
	for (size_t i = 0; i < json_array_size(n->reasons); i++) {
		if (i)
			strncat(out, "; ", sizeof(out) - strlen(out) - 1);
		strncat(out, json_string_value(json_array_get(n->reasons, i)),
			sizeof(out) - strlen(out) - 1);
	}
	return out;
}

static struct cluster *level_cluster(struct loop **ret_loop)
{
	const char *text = "{\"hosts\": {\"a\": {\"host\": \"10.0.0.1\"}},"
			   " \"thresholds\": {\"cpu\": [50, 90], \"memory\": [60, 95],"
			   "   \"disk\": [70, 80], \"load\": [4, 8]},"
			   " \"probe\": {\"stale_after_s\": 10, \"offline_after_s\": 20,"
			   "   \"unhealthy_after\": 2}}";
	char err[512];
	struct config *cfg = NULL;
	struct cluster *c = NULL;
	if (config_load_string(text, "t.json", NULL, &cfg, err, sizeof(err)) != 0 ||
	    loop_new(ret_loop) < 0 || cluster_new(*ret_loop, cfg, &c) < 0) {
		printf("# setup failed: %s\n", err);
		exit(2);
	}
	config_unref(cfg);
	return c;
}

/* Gives node n a health document (text) from a probe that succeeded at `ok_us`, and
 * evaluates it at `now`. Lock held for writing. Returns whether the level changed. */
static bool probed(struct cluster *c, struct node *n, const char *health, uint64_t ok_us,
		   uint64_t now, enum node_level *ret_old)
{
	cluster_node_set_docs(n, health ? doc(health) : NULL, NULL);
	n->last_ok_us = ok_us;
	return cluster_node_evaluate(c, n, now, ret_old);
}

static void test_levels_from_metrics(void)
{
	struct loop *loop;
	struct cluster *c = level_cluster(&loop);
	struct config *cfg = cluster_get_config(c);
	json_t *reasons = json_array();
	struct node_metrics m;
	node_metrics_parse(NULL, &m);
	CHECK(cluster_level_from_metrics(cfg, &m, reasons) == NODE_HEALTHY &&
		      json_array_size(reasons) == 0,
	      "levels: no numbers at all is healthy, with no reason");
	json_t *h = doc("{\"cpu_percent\": 50, \"mem_percent\": 60, \"disk_percent\": 70,"
			" \"load\": [4]}");
	node_metrics_parse(h, &m);
	CHECK(cluster_level_from_metrics(cfg, &m, reasons) == NODE_HEALTHY &&
		      json_array_size(reasons) == 0,
	      "levels: a value at its warning threshold does not exceed it");
	json_decref(h);
	h = doc("{\"cpu_percent\": 50.5, \"mem_percent\": 10}");
	node_metrics_parse(h, &m);
	CHECK(cluster_level_from_metrics(cfg, &m, reasons) == NODE_WARNING,
	      "levels: cpu above its warning threshold is a warning");
	CHECK(json_array_size(reasons) == 1 &&
		      !strcmp(json_string_value(json_array_get(reasons, 0)),
			      "cpu 50.5% > warning 50%"),
	      "levels: the warning's reason names the metric, the value and the threshold");
	json_decref(h);
	json_array_clear(reasons);
	h = doc("{\"cpu_percent\": 60, \"mem_percent\": 96, \"disk_percent\": 75,"
		" \"load\": [9.5, 1, 1]}");
	node_metrics_parse(h, &m);
	CHECK(cluster_level_from_metrics(cfg, &m, reasons) == NODE_CRITICAL,
	      "levels: the worst metric decides (memory critical over cpu warning)");
	CHECK(json_array_size(reasons) == 4, "levels: one reason per threshold crossed");
	CHECK(!strcmp(json_string_value(json_array_get(reasons, 1)), "memory 96.0% > critical 95%"),
	      "levels: a critical reason names the critical threshold");
	CHECK(!strcmp(json_string_value(json_array_get(reasons, 3)), "load 9.50 > critical 8"),
	      "levels: load is no percentage");
	json_decref(h);
	json_array_clear(reasons);
	h = doc("{\"disk_percent\": 80.1}");
	node_metrics_parse(h, &m);
	CHECK(cluster_level_from_metrics(cfg, &m, reasons) == NODE_CRITICAL,
	      "levels: disk above its critical threshold is critical");
	json_decref(h);
	json_decref(reasons);
	config_unref(cfg);
	cluster_free(c);
	loop_free(loop);
}

static void test_levels_of_a_node(void)
{
	struct loop *loop;
	struct cluster *c = level_cluster(&loop);
	uint64_t t0 = c->started_us, s = 1000000u;
	enum node_level old;
	pthread_rwlock_wrlock(&c->lock);
	struct node *n = cluster_find(c, "a");
	CHECK(n && n->level == NODE_UNKNOWN, "node: unknown before any probe");

	CHECK(!cluster_node_evaluate(c, n, t0 + 5 * s, &old) && n->level == NODE_UNKNOWN &&
		      !strcmp(reasons_of(n), "not probed yet"),
	      "node: never heard from for 5 s is still unknown, not probed yet");
	CHECK(cluster_node_evaluate(c, n, t0 + 25 * s, &old) && n->level == NODE_OFFLINE &&
		      old == NODE_UNKNOWN,
	      "node: never heard from for longer than offline_after_s is offline");
	CHECK(!strcmp(reasons_of(n), "no successful probe for 25 s (offline after 20 s)"),
	      "node: the offline reason says for how long");

	uint64_t now = t0 + 30 * s;
	CHECK(probed(c, n, "{\"cpu_percent\": 10, \"mem_percent\": 20}", now, now, &old) &&
		      n->level == NODE_HEALTHY && old == NODE_OFFLINE &&
		      json_array_size(n->reasons) == 0,
	      "node: a successful probe below every threshold is healthy");
	CHECK(!cluster_node_evaluate(c, n, now + s, &old) && old == NODE_HEALTHY,
	      "node: evaluating again without a change changes nothing");
	CHECK(probed(c, n, "{\"cpu_percent\": 91}", now, now, &old) && n->level == NODE_CRITICAL &&
		      !strcmp(reasons_of(n), "cpu 91.0% > critical 90%"),
	      "node: cpu above critical makes the node critical");
	CHECK(probed(c, n, "{\"cpu_percent\": 70}", now, now, &old) && n->level == NODE_WARNING &&
		      old == NODE_CRITICAL,
	      "node: back below critical is a warning");

	/* failed probes: below unhealthy_after the metrics still decide, with a reason */
	n->failures = 1;
	n->last_error = xstrdup("unreachable: no answer within 2000 ms");
	CHECK(!cluster_node_evaluate(c, n, now + 2 * s, &old) && n->level == NODE_WARNING &&
		      !strcmp(reasons_of(n), "cpu 70.0% > warning 50%; unreachable: no answer "
					     "within 2000 ms (1 failed probe in a row)"),
	      "node: one failed probe keeps the level, with the failure as a reason");
	n->failures = 2;
	CHECK(cluster_node_evaluate(c, n, now + 3 * s, &old) && n->level == NODE_UNHEALTHY,
	      "node: unhealthy_after failed probes in a row is unhealthy");
	n->failures = 1;
	CHECK(cluster_node_evaluate(c, n, now + 3 * s, &old) && n->level == NODE_WARNING,
	      "node: one failure again: the metrics decide again");
	n->insecure = true;
	CHECK(cluster_node_evaluate(c, n, now + 3 * s, &old) && n->level == NODE_UNHEALTHY &&
		      old == NODE_WARNING,
	      "node: a rejected transport is unhealthy at the first failure");
	n->insecure = false;
	CHECK(cluster_node_evaluate(c, n, now + 12 * s, &old) && n->level == NODE_STALE,
	      "node: failing for longer than stale_after_s is stale");
	CHECK(strstr(reasons_of(n), "no successful probe for 12 s (stale after 10 s)") != NULL,
	      "node: the stale reason says for how long");
	n->failures = 5;
	CHECK(cluster_node_evaluate(c, n, now + 21 * s, &old) && n->level == NODE_OFFLINE &&
		      old == NODE_STALE,
	      "node: failing for longer than offline_after_s is offline, over unhealthy");
	n->failures = 0;
	free(n->last_error);
	n->last_error = NULL;
	CHECK(probed(c, n, "{\"cpu_percent\": 12}", now + 22 * s, now + 22 * s + 60 * s, &old) &&
		      n->level == NODE_HEALTHY,
	      "node: data older than stale_after_s without a failure is not stale");

	/* drains */
	n->draining = true;
	CHECK(cluster_node_evaluate(c, n, now + 23 * s, &old) && n->level == NODE_DRAINING &&
		      !strcmp(reasons_of(n), "draining: takes no new work"),
	      "node: a healthy drained node is draining");
	CHECK(!probed(c, n, "{\"cpu_percent\": 60}", now, now, &old) && n->level == NODE_DRAINING &&
		      json_array_size(n->reasons) == 2,
	      "node: a drained warning is draining (no change), with both reasons");
	CHECK(probed(c, n, "{\"cpu_percent\": 95}", now, now, &old) && n->level == NODE_CRITICAL,
	      "node: a drained critical node stays critical");
	n->draining = false;
	CHECK(probed(c, n, "{\"cpu_percent\": 1}", now, now, &old) && n->level == NODE_HEALTHY,
	      "node: resumed, it is healthy again");
	pthread_rwlock_unlock(&c->lock);
	cluster_free(c);
	loop_free(loop);
}

static void test_levels_external(void)
{
	struct loop *loop;
	struct cluster *c = level_cluster(&loop);
	enum node_level old;
	pthread_rwlock_wrlock(&c->lock);
	struct node *n = cluster_find(c, "a");
	n->owner = xstrdup("hpc");
	n->ext_level = NODE_WARNING;
	json_array_clear(n->reasons);
	json_array_append_new(n->reasons, json_string("load 5 of 4 cpus"));
	CHECK(cluster_node_evaluate(c, n, clock_now_us(), &old) && n->level == NODE_WARNING,
	      "external: the level is its owner's, whatever its metrics");
	n->draining = true;
	CHECK(cluster_node_evaluate(c, n, clock_now_us(), &old) && n->level == NODE_DRAINING &&
		      !strcmp(reasons_of(n), "load 5 of 4 cpus; draining: takes no new work"),
	      "external: drained, it is draining, the owner's reasons kept");
	CHECK(!cluster_node_evaluate(c, n, clock_now_us(), &old) &&
		      json_array_size(n->reasons) == 2,
	      "external: evaluating again adds no second drain reason");
	n->draining = false;
	CHECK(cluster_node_evaluate(c, n, clock_now_us(), &old) && n->level == NODE_WARNING &&
		      !strcmp(reasons_of(n), "load 5 of 4 cpus"),
	      "external: resumed, the drain reason goes");
	n->ext_level = NODE_OFFLINE;
	n->draining = true;
	CHECK(cluster_node_evaluate(c, n, clock_now_us(), &old) && n->level == NODE_OFFLINE,
	      "external: an offline node stays offline when drained");
	pthread_rwlock_unlock(&c->lock);
	cluster_free(c);
	loop_free(loop);
}

int main(void)
{
	test_agent_health();
	test_absent();
	test_absurd();
	test_system();
	test_levels_from_metrics();
	test_levels_of_a_node();
	test_levels_external();
	return check_done();
}
