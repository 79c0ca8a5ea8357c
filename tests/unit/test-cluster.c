/* Unit tests for backend/cluster's typed node documents: node_metrics_parse and
 * node_system_parse over well-formed, absent, mistyped and absurd fields (DESIGN §4,
 * "Typed node documents"). Prints TAP ("ok N - name"); exits non-zero when any failed. */
#include <math.h>
#include <stdio.h>

#include "backend/cluster.h"

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

int main(void)
{
	test_agent_health();
	test_absent();
	test_absurd();
	test_system();
	return check_done();
}
