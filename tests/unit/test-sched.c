/* Unit tests for backend/sched: reliability, tiers, routing policies, requirements,
 * eligibility, the P0 and demotion rules, scoring and its explanations, node "all".
 * Prints TAP ("ok N - name"); exits non-zero when any check failed. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/sched.h"
#include "backend/util.h"
#include "config/config.h"

#include "tests/unit/check.h"

static const char *const caps_gpu[] = {"docker", "gpu"};
static const char *const req_gpu[] = {"gpu"};
static const char *const req_gpu_docker[] = {"gpu", "docker"};

/* A healthy standard node with 8 cores, 16 GB, half loaded, idle, no history. */
static struct sched_node mk(const char *name)
{
	return (struct sched_node){
		.name = name,
		.role = "worker",
		.tier = "standard",
		.level = NODE_HEALTHY,
		.cpu = 0.5,
		.mem = 0.5,
		.cores = 8,
		.ram_mb = 16000,
		.queue_depth = 10,
	};
}

static const struct sched_request any = {.node = "any", .priority = 2};

static bool near(double a, double b)
{
	return fabs(a - b) < 1e-9;
}

/* Runs sched_place; returns its result, the index in *idx (SIZE_MAX when untouched) and
 * the explanation in why (static). */
static char why_text[1024];
static int place(const struct config *cfg, const struct sched_request *req,
		 const struct sched_node *nodes, size_t n, size_t *idx)
{
	struct buf why;
	buf_init(&why);
	*idx = SIZE_MAX;
	int r = sched_place(cfg, req, nodes, n, idx, &why);
	snprintf(why_text, sizeof(why_text), "%s", why.data ? why.data : "");
	buf_free(&why);
	return r;
}

static bool why_is(const char *want)
{
	if (strcmp(why_text, want) == 0)
		return true;
	printf("# want: %s\n# got:  %s\n", want, why_text);
	return false;
}

static void test_reliability(void)
{
	struct sched_node n = mk("n");

	CHECK(near(sched_reliability(&n), 100), "reliability: no history is 100");
	n.completed = 8, n.total = 10;
	CHECK(near(sched_reliability(&n), 80), "reliability: 8 of 10 is 80");
	n.consecutive_failures = 1;
	CHECK(near(sched_reliability(&n), 70), "reliability: one failure in a row costs 10");
	n.completed = 10, n.consecutive_failures = 7;
	CHECK(near(sched_reliability(&n), 50), "reliability: the penalty stops at 50");
	n.completed = 1, n.consecutive_failures = 3;
	CHECK(near(sched_reliability(&n), 0), "reliability: clamped at 0");
	n.completed = 2, n.total = 3, n.consecutive_failures = 0;
	CHECK(fabs(sched_reliability(&n) - 200.0 / 3) < 1e-9, "reliability: fractions kept");
	n.completed = 5, n.total = 4;
	CHECK(near(sched_reliability(&n), 100), "reliability: clamped at 100");
}

static void test_tiers(void)
{
	struct sched_node n = mk("n");

	n.tier = "powerhouse", n.cores = 32;
	CHECK(sched_max_concurrent(&n) == 16, "max: powerhouse 32 cores -> 16");
	n.cores = 64;
	CHECK(sched_max_concurrent(&n) == 16, "max: powerhouse capped at 16");
	n.cores = 12;
	CHECK(sched_max_concurrent(&n) == 6, "max: powerhouse 12 cores -> 6");
	n.cores = 0;
	CHECK(sched_max_concurrent(&n) == 1, "max: powerhouse unknown cores -> 1");
	n.tier = "standard", n.cores = 8;
	CHECK(sched_max_concurrent(&n) == 4, "max: standard 8 cores -> 4");
	n.cores = 1;
	CHECK(sched_max_concurrent(&n) == 1, "max: standard at least 1");
	n.tier = "light", n.cores = 2;
	CHECK(sched_max_concurrent(&n) == 1, "max: light under 4 cores -> 1");
	n.cores = 4;
	CHECK(sched_max_concurrent(&n) == 2, "max: light 4 cores -> 2");
	n.tier = "unknown", n.cores = 64;
	CHECK(sched_max_concurrent(&n) == 1, "max: unknown -> 1");
	n.tier = NULL;
	CHECK(sched_max_concurrent(&n) == 1, "max: no tier -> 1");

	CHECK(near(sched_tier_boost("powerhouse"), 0.3), "boost: powerhouse");
	CHECK(near(sched_tier_boost("standard"), 0.1), "boost: standard");
	CHECK(near(sched_tier_boost("light"), 0), "boost: light");
	CHECK(near(sched_tier_boost("unknown"), 0), "boost: unknown");
	CHECK(near(sched_tier_boost(NULL), 0), "boost: NULL");
}

static void test_score(void)
{
	struct sched_node ns[3] = {mk("n1"), mk("n2"), mk("n3")};
	size_t i;
	int r;

	ns[1].cpu = 0.12, ns[1].mem = 0.40, ns[1].active = 1;
	ns[2].cpu = 0.9, ns[2].mem = 0.9;
	r = place(NULL, &any, ns, 3, &i);
	/* n2: 0.4*0.88 + 0.3*0.6 + 0.2*0.75 + 0.1 + 0.1 = 0.882; n1: 0.2+0.15+0.2+0.1+0.1 = 0.75 */
	CHECK(r == 0 && i == 1, "score: least loaded wins");
	CHECK(why_is("placed on n2: score 0.882 (cpu 12%, mem 40%, slots 1/4, healthy, tier "
		     "standard +0.1); next n1 0.750"),
	      "score: the explanation names the numbers and the runner-up");

	/* Ties go to the smaller name, wherever it is in the array. */
	struct sched_node tie[3] = {mk("c"), mk("a"), mk("b")};
	r = place(NULL, &any, tie, 3, &i);
	CHECK(r == 0 && i == 1, "score: a tie goes to the smaller name");
	CHECK(strstr(why_text, "; next b ") != NULL, "score: the runner-up of a tie is next");

	/* The tier boost outweighs load. */
	struct sched_node tb[2] = {mk("light1"), mk("power1")};
	tb[0].tier = "light", tb[0].cpu = 0, tb[0].mem = 0;
	tb[1].tier = "powerhouse", tb[1].cores = 32, tb[1].cpu = 0.5, tb[1].mem = 0.5;
	tb[1].queue_depth = 20;
	r = place(NULL, &any, tb, 2, &i);
	/* light: 0.4+0.3+0.2+0.1 = 1.0; powerhouse: 0.2+0.15+0.2+0.1+0.3 = 0.95 */
	CHECK(r == 0 && i == 0, "score: an idle light node beats a half-loaded powerhouse");
	tb[0].cpu = 0.2;
	r = place(NULL, &any, tb, 2, &i);
	CHECK(r == 0 && i == 1, "score: the boost decides once loads are closer");
	CHECK(why_is("placed on power1: score 0.950 (cpu 50%, mem 50%, slots 0/16, healthy, "
		     "tier powerhouse +0.3); next light1 0.920"),
	      "score: powerhouse explanation");

	/* Warning counts half. */
	struct sched_node w[2] = {mk("a"), mk("b")};
	w[0].level = NODE_WARNING;
	r = place(NULL, &any, w, 2, &i);
	CHECK(r == 0 && i == 1, "score: healthy beats warning at equal load");
	w[1].cpu = 0.7;
	r = place(NULL, &any, w, 2, &i);
	CHECK(r == 0 && i == 0, "score: a warning node can still win");
	CHECK(why_is("placed on a: score 0.700 (cpu 50%, mem 50%, slots 0/4, warning, tier "
		     "standard +0.1); next b 0.670"),
	      "score: warning in the explanation");

	/* Out-of-range loads are clamped; an unknown tier has no boost. */
	struct sched_node odd = mk("odd");
	odd.cpu = -1, odd.mem = 7, odd.tier = NULL;
	r = place(NULL, &any, &odd, 1, &i);
	CHECK(r == 0 && i == 0 &&
		      why_is("placed on odd: score 0.700 (cpu 0%, mem 100%, slots 0/1, healthy, "
			     "tier unknown +0)"),
	      "score: clamped loads, unknown tier, no runner-up");

	/* The explanation is appended. */
	struct buf why;
	buf_init(&why);
	buf_puts(&why, "attempt 2: ");
	sched_place(NULL, &any, &odd, 1, &i, &why);
	CHECK(strncmp(why.data, "attempt 2: placed on odd:", 25) == 0, "score: why is appended to");
	buf_free(&why);
}

static struct config *load(const char *text)
{
	char err[512];
	struct config *c = NULL;
	if (config_load_string(text, "t.json", NULL, &c, err, sizeof(err)) != 0)
		printf("# config rejected: %s\n", err);
	return c;
}

static void test_routing(void)
{
	struct config *cfg = load(
		"{\"hosts\": {\"n1\": {\"host\": \"10.0.0.1\"}, \"n2\": {\"host\": \"10.0.0.2\"},"
		" \"n3\": {\"host\": \"10.0.0.3\"}, \"n4\": {\"host\": \"10.0.0.4\"}},"
		" \"routing\": {\"deep\": {\"hosts\": [\"n2\", \"n3\"]},"
		"  \"deploy\": {\"roles\": [\"cloud\"]},"
		"  \"build\": {\"tiers\": [\"powerhouse\", \"standard\"]},"
		"  \"mix\": {\"roles\": [\"worker\"], \"tiers\": [\"powerhouse\"]},"
		"  \"closed\": {\"hosts\": []}, \"open\": {}}}");
	struct sched_node ns[4] = {mk("n1"), mk("n2"), mk("n3"), mk("n4")};
	struct sched_request req = any;
	size_t i;
	int r;

	CHECK(cfg != NULL, "routing: config loads");
	if (!cfg)
		return;
	ns[0].cpu = 0; /* n1 would win on score */
	ns[2].role = "cloud", ns[2].tier = "light";
	ns[3].tier = "powerhouse", ns[3].cores = 16, ns[3].cpu = 0.9, ns[3].mem = 0.9;

	req.type = "deep";
	r = place(cfg, &req, ns, 4, &i);
	CHECK(r == 0 && i == 1, "routing: hosts policy picks among its hosts");
	ns[1].draining = true;
	r = place(cfg, &req, ns, 4, &i);
	CHECK(r == 0 && i == 2, "routing: then the next host of the policy");
	ns[2].level = NODE_OFFLINE;
	r = place(cfg, &req, ns, 4, &i);
	CHECK(r == -EAGAIN && i == SIZE_MAX, "routing: no host of the policy left -> EAGAIN");
	CHECK(why_is("no eligible node: n1 not in routing hosts for deep; n2 draining; n3 "
		     "offline; n4 not in routing hosts for deep"),
	      "routing: every node's reason");
	ns[1].draining = false, ns[2].level = NODE_HEALTHY;

	req.type = "deploy";
	r = place(cfg, &req, ns, 4, &i);
	CHECK(r == 0 && i == 2, "routing: roles policy");
	ns[2].role = "";
	r = place(cfg, &req, ns, 4, &i);
	CHECK(r == -EAGAIN && why_is("no eligible node: n1 role worker not in routing roles for "
				     "deploy; n2 role worker not in routing roles for deploy; n3 "
				     "role (none) not in routing roles for deploy; n4 role worker "
				     "not in routing roles for deploy"),
	      "routing: roles reasons");
	ns[2].role = "cloud";

	req.type = "build";
	ns[0].tier = "light";
	r = place(cfg, &req, ns, 4, &i);
	CHECK(r == 0 && i == 1, "routing: tiers policy skips light nodes");
	ns[1].tier = NULL;
	r = place(cfg, &req, ns, 4, &i);
	CHECK(r == 0 && i == 3, "routing: a node of unknown tier is not in any tier list");
	ns[3].level = NODE_CRITICAL;
	r = place(cfg, &req, ns, 4, &i);
	CHECK(r == -EAGAIN && why_is("no eligible node: n1 tier light not in routing tiers for "
				     "build; n2 tier unknown not in routing tiers for build; n3 "
				     "tier light not in routing tiers for build; n4 critical"),
	      "routing: tiers reasons");
	ns[0].tier = ns[1].tier = "standard", ns[3].level = NODE_HEALTHY;

	req.type = "mix";
	r = place(cfg, &req, ns, 4, &i);
	CHECK(r == 0 && i == 3, "routing: a node must pass every list of the policy");
	ns[3].role = "trainer";
	r = place(cfg, &req, ns, 4, &i);
	CHECK(r == -EAGAIN && strstr(why_text, "n4 role trainer not in routing roles for mix"),
	      "routing: the right role alone is not enough");
	ns[3].role = "worker";

	req.type = "closed";
	r = place(cfg, &req, ns, 4, &i);
	CHECK(r == -EAGAIN, "routing: an empty list admits nobody");

	req.type = "open";
	r = place(cfg, &req, ns, 4, &i);
	CHECK(r == 0 && i == 0, "routing: an empty policy admits every node");
	req.type = "unlisted";
	r = place(cfg, &req, ns, 4, &i);
	CHECK(r == 0 && i == 0, "routing: a type without a policy admits every node");
	req.type = "deep";
	r = place(NULL, &req, ns, 4, &i);
	CHECK(r == 0 && i == 0, "routing: no config means no policy");

	/* Explicit placement ignores the policy. */
	req.type = "deep", req.node = "n4";
	r = place(cfg, &req, ns, 4, &i);
	CHECK(r == 0 && i == 3, "routing: an explicit node ignores the policy");
	CHECK(strncmp(why_text, "placed on n4 as asked: score ", 29) == 0 &&
		      strstr(why_text, "; next") == NULL,
	      "routing: explicit explanation");

	/* node "all" with the policy. */
	size_t idx[4];
	struct buf why;
	buf_init(&why);
	req.node = "all", req.type = "deep";
	ns[2].active = 99; /* slots do not matter for "all" */
	size_t k = sched_place_all(cfg, &req, ns, 4, idx, &why);
	CHECK(k == 2 && idx[0] == 1 && idx[1] == 2, "all: the policy's hosts, slots ignored");
	CHECK(strcmp(why.data, "placed on n2, n3; skipped n1 not in routing hosts for deep; n4 "
			       "not in routing hosts for deep") == 0,
	      "all: explanation");
	buf_free(&why);
	config_unref(cfg);
}

static void test_requirements(void)
{
	struct sched_node ns[2] = {mk("n1"), mk("n2")};
	struct sched_request req = any;
	size_t i;
	int r;

	ns[1].capabilities = caps_gpu, ns[1].n_capabilities = 2, ns[1].cpu = 0.9;
	req.requires = req_gpu, req.n_requires = 1;
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == 0 && i == 1, "caps: only the node with the capability");
	req.requires = req_gpu_docker, req.n_requires = 2;
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == 0 && i == 1, "caps: every capability");
	ns[1].n_capabilities = 1; /* docker only */
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == -EAGAIN && why_is("no eligible node: n1 lacks capability gpu; n2 lacks "
				     "capability gpu"),
	      "caps: missing capability reason");
	ns[1].n_capabilities = 2;
	req.requires = NULL, req.n_requires = 0;

	req.cpus = 8;
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == 0 && i == 0, "resources: cpus equal to cores fit");
	req.cpus = 9;
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == -EAGAIN && why_is("no eligible node: n1 has 8 cores < 9 cpus asked; n2 has 8 "
				     "cores < 9 cpus asked"),
	      "resources: too many cpus");
	ns[1].cores = 0;
	req.cpus = 1;
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == 0 && i == 0 && place(NULL, &req, ns + 1, 1, &i) == -EAGAIN &&
		      why_is("no eligible node: n2 cores unknown (1 cpus asked)"),
	      "resources: unknown cores fit nothing asked");
	ns[1].cores = 8, req.cpus = 0;

	req.mem_mb = 16000;
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == 0 && i == 0, "resources: memory equal to RAM fits");
	req.mem_mb = 16001;
	ns[1].ram_mb = 0;
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == -EAGAIN && why_is("no eligible node: n1 has 16000 MB RAM < 16001 mem_mb asked; "
				     "n2 RAM unknown (16001 mem_mb asked)"),
	      "resources: too much memory");
	ns[1].ram_mb = 16000, req.mem_mb = 0;

	ns[1].gpus = 2;
	req.gpus = 2;
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == 0 && i == 1, "resources: gpus");
	req.gpus = 3;
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == -EAGAIN && why_is("no eligible node: n1 has 0 gpus < 3 asked; n2 has 2 gpus "
				     "< 3 asked"),
	      "resources: too many gpus");
	req.gpus = 0;

	/* Slots: 8 cores standard -> 4. */
	ns[0].active = 4, ns[1].active = 3;
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == 0 && i == 1, "slots: a full node is skipped");
	ns[1].active = 4;
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == -EAGAIN && why_is("no eligible node: n1 full (slots 4/4); n2 full (slots 4/4)"),
	      "slots: all full -> EAGAIN");
	ns[0].active = ns[1].active = 0;

	/* queue_depth caps the slots. */
	struct sched_node big = mk("big");
	big.tier = "powerhouse", big.cores = 32, big.queue_depth = 10, big.active = 9;
	r = place(NULL, &any, &big, 1, &i);
	CHECK(r == 0 && strstr(why_text, "slots 9/10"), "slots: queue_depth caps the tier's 16");
	big.active = 10;
	r = place(NULL, &any, &big, 1, &i);
	CHECK(r == -EAGAIN && why_is("no eligible node: big full (slots 10/10)"),
	      "slots: full at queue_depth");
	big.queue_depth = 0;
	r = place(NULL, &any, &big, 1, &i);
	CHECK(r == 0 && strstr(why_text, "slots 10/16"), "slots: queue_depth 0 does not cap");
}

static void test_eligibility(void)
{
	static const struct {
		enum node_level level;
		const char *reason;
	} levels[] = {
		{NODE_UNKNOWN, "n1 not probed yet"}, {NODE_CRITICAL, "n1 critical"},
		{NODE_UNHEALTHY, "n1 unhealthy"},    {NODE_STALE, "n1 stale"},
		{NODE_OFFLINE, "n1 offline"},        {NODE_DRAINING, "n1 draining"},
	};
	struct sched_node n = mk("n1");
	char want[128], name[128];
	size_t i;
	int r;

	for (size_t k = 0; k < sizeof(levels) / sizeof(levels[0]); k++) {
		n.level = levels[k].level;
		r = place(NULL, &any, &n, 1, &i);
		snprintf(want, sizeof(want), "no eligible node: %s", levels[k].reason);
		snprintf(name, sizeof(name), "eligible: %s is not eligible", levels[k].reason);
		CHECK(r == -EAGAIN && i == SIZE_MAX && why_is(want), name);
	}
	n.level = NODE_HEALTHY, n.draining = true;
	r = place(NULL, &any, &n, 1, &i);
	CHECK(r == -EAGAIN && why_is("no eligible node: n1 draining"), "eligible: draining flag");
	r = place(NULL, &any, NULL, 0, &i);
	CHECK(r == -EAGAIN && why_is("no eligible node: the cluster has no nodes"),
	      "eligible: an empty cluster");
}

static void test_reliability_rules(void)
{
	struct sched_node ns[2] = {mk("n1"), mk("n2")};
	struct sched_request req = any;
	size_t i;
	int r;

	/* P0 needs 80: n1 (79) would win on score. */
	ns[0].completed = 79, ns[0].total = 100, ns[0].cpu = 0;
	ns[1].completed = 80, ns[1].total = 100;
	req.priority = 0;
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == 0 && i == 1, "P0: reliability 80 qualifies, 79 does not");
	req.priority = 1;
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == 0 && i == 0, "P0: P1 does not care");
	req.priority = 0;
	ns[1].consecutive_failures = 1; /* 80 - 10 = 70 */
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == -EAGAIN && why_is("no eligible node: n1 reliability 79 < 80 for P0; n2 "
				     "reliability 70 < 80 for P0"),
	      "P0: no reliable node -> EAGAIN with reasons");
	ns[0].completed = 2, ns[0].total = 3;
	r = place(NULL, &req, ns, 1, &i);
	CHECK(r == -EAGAIN && why_is("no eligible node: n1 reliability 66.6 < 80 for P0"),
	      "P0: a fraction is shown rounded down");
	ns[0].completed = 7999, ns[0].total = 10000;
	r = place(NULL, &req, ns, 1, &i);
	CHECK(r == -EAGAIN && why_is("no eligible node: n1 reliability 79.9 < 80 for P0"),
	      "P0: 79.99 never reads as 80");
	req.node = "n2";
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == -EAGAIN &&
		      why_is("cannot place on n2 (asked for by name): reliability 70 < 80 for P0"),
	      "P0: applies to explicit placement too");
	req = any;

	/* Demotion below 30. */
	ns[0].completed = 25, ns[0].total = 100, ns[0].consecutive_failures = 0;
	ns[1].completed = 30, ns[1].total = 100, ns[1].consecutive_failures = 0, ns[1].cpu = 0.9;
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == 0 && i == 1, "demotion: 30 still gets work, 25 does not");
	ns[1].completed = 29;
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == -EAGAIN && why_is("no eligible node: n1 reliability 25 < 30; n2 reliability "
				     "29 < 30"),
	      "demotion: reasons");
	req.node = "n1";
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == 0 && i == 0, "demotion: explicit placement still works");
	ns[0].draining = true;
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == -EAGAIN && i == SIZE_MAX &&
		      why_is("cannot place on n1 (asked for by name): draining"),
	      "explicit: a draining node is refused");
	ns[0].draining = false, ns[0].level = NODE_OFFLINE;
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == -EAGAIN && why_is("cannot place on n1 (asked for by name): offline"),
	      "explicit: an unreachable node is refused");
	ns[0].level = NODE_HEALTHY, ns[0].active = 4;
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == -EAGAIN && why_is("cannot place on n1 (asked for by name): full (slots 4/4)"),
	      "explicit: a full node makes the task wait");
	ns[0].active = 0;
	req.requires = req_gpu, req.n_requires = 1;
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == -EAGAIN &&
		      why_is("cannot place on n1 (asked for by name): lacks capability gpu"),
	      "explicit: capabilities still count");
	req.requires = NULL, req.n_requires = 0;

	req.node = "n9";
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == -ENOENT && i == SIZE_MAX && why_is("no node named \"n9\"; did you mean \"n1\"?"),
	      "explicit: unknown node -> ENOENT with did-you-mean");
	req.node = "elsewhere";
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == -ENOENT && why_is("no node named \"elsewhere\""),
	      "explicit: unknown node, nothing close");
	req.node = "all";
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == -EINVAL && i == SIZE_MAX, "explicit: \"all\" is not one placement");
	req.node = NULL;
	r = place(NULL, &req, ns, 2, &i);
	CHECK(r == -EAGAIN, "explicit: NULL node means any");
}

/* A node that stands for a scheduler of its own (Slurm): its own slots, and only the tasks
 * that name it. */
static void test_by_name_only(void)
{
	struct config *cfg = load(
		"{\"hosts\": {\"n1\": {\"host\": \"10.0.0.1\"}, \"n2\": {\"host\": \"10.0.0.2\"}},"
		" \"routing\": {\"hpc\": {\"hosts\": [\"n2\"]}}}");
	struct sched_node ns[2] = {mk("n1"), mk("n2")};
	struct sched_request req = any;
	size_t i;
	int r;

	CHECK(cfg != NULL, "by name only: config loads");
	if (!cfg)
		return;
	ns[1].by_name_only = true, ns[1].slots = 100, ns[1].active = 50, ns[1].cpu = 0;
	ns[0].level = NODE_OFFLINE;
	r = place(cfg, &req, ns, 2, &i);
	CHECK(r == -EAGAIN && strstr(why_text, "n2 takes only tasks that name it"),
	      "by name only: not placed on for \"any\"");
	req.type = "hpc";
	r = place(cfg, &req, ns, 2, &i);
	CHECK(r == 0 && i == 1 && strstr(why_text, "slots 50/100"),
	      "by name only: its routing hosts name it; its own slots");
	req.type = NULL, req.node = "n2";
	r = place(cfg, &req, ns, 2, &i);
	CHECK(r == 0 && i == 1, "by name only: named explicitly");
	config_unref(cfg);
}

static void test_place_all(void)
{
	struct sched_node ns[5] = {mk("n1"), mk("n2"), mk("n3"), mk("n4"), mk("n5")};
	struct sched_request req = {.node = "all", .priority = 2};
	size_t idx[5] = {99, 99, 99, 99, 99};
	struct buf why;
	size_t k;

	ns[0].active = 4;                      /* full: still gets a copy */
	ns[1].draining = true;                 /* skipped */
	ns[2].completed = 1, ns[2].total = 10; /* demoted: skipped */
	ns[3].level = NODE_WARNING;            /* fine */
	ns[4].capabilities = caps_gpu, ns[4].n_capabilities = 2;

	buf_init(&why);
	k = sched_place_all(NULL, &req, ns, 5, idx, &why);
	CHECK(k == 3 && idx[0] == 0 && idx[1] == 3 && idx[2] == 4 && idx[3] == 99,
	      "all: every eligible node, full ones included, in order");
	CHECK(strcmp(why.data, "placed on n1, n4, n5; skipped n2 draining; n3 reliability 10 < "
			       "30") == 0,
	      "all: explanation lists the skipped");
	buf_free(&why);

	buf_init(&why);
	req.requires = req_gpu, req.n_requires = 1;
	k = sched_place_all(NULL, &req, ns, 5, idx, &why);
	CHECK(k == 1 && idx[0] == 4 && strncmp(why.data, "placed on n5; skipped n1 lacks", 30) == 0,
	      "all: requirements apply");
	buf_free(&why);

	buf_init(&why);
	req.requires = NULL, req.n_requires = 0, req.priority = 0;
	ns[0].completed = ns[3].completed = ns[4].completed = 7;
	ns[0].total = ns[3].total = ns[4].total = 10;
	k = sched_place_all(NULL, &req, ns, 5, idx, &why);
	CHECK(k == 0 && strcmp(why.data, "no eligible node: n1 reliability 70 < 80 for P0; n2 "
					 "draining; n3 reliability 10 < 30; n4 reliability 70 < "
					 "80 for P0; n5 reliability 70 < 80 for P0") == 0,
	      "all: none eligible -> 0 with reasons");
	buf_free(&why);

	buf_init(&why);
	k = sched_place_all(NULL, &req, NULL, 0, idx, &why);
	CHECK(k == 0 && strcmp(why.data, "no eligible node: the cluster has no nodes") == 0,
	      "all: an empty cluster");
	buf_free(&why);
}

/* A prompt's model: a rule of its own, loaded before present, then the score. */
static void test_model(void)
{
	struct sched_node ns[4] = {mk("n1"), mk("n2"), mk("n3"), mk("n4")};
	struct sched_request req = {.node = "any", .priority = 2, .model = "qwen3:8b"};
	size_t idx;

	ns[0].model = SCHED_MODEL_NOSERVE;
	ns[1].model = SCHED_MODEL_PRESENT, ns[1].cpu = 0.0; /* the better score */
	ns[2].model = SCHED_MODEL_LOADED;
	ns[3].model = SCHED_MODEL_ABSENT;
	CHECK(place(NULL, &req, ns, 4, &idx) == 0 && idx == 2,
	      "model: loaded wins over a better score");
	CHECK(strstr(why_text, ", model qwen3:8b loaded; next n2") != NULL, "model: said");
	ns[2].model = SCHED_MODEL_FAILED;
	CHECK(place(NULL, &req, ns, 4, &idx) == 0 && idx == 1, "model: then present");
	ns[1].model = SCHED_MODEL_ABSENT;
	CHECK(place(NULL, &req, ns, 4, &idx) == -EAGAIN &&
		      why_is("no eligible node: n1 has no model server; n2 lacks model qwen3:8b; "
			     "n3 the last attempt failed here; another node has qwen3:8b; n4 "
			     "lacks model qwen3:8b"),
	      "model: none has it -> waits, with the reasons");
	req.node = "n4";
	CHECK(place(NULL, &req, ns, 4, &idx) == -EAGAIN &&
		      why_is("cannot place on n4 (asked for by name): lacks model qwen3:8b"),
	      "model: an explicit node needs it too");
	req.model = NULL;
	CHECK(place(NULL, &req, ns, 4, &idx) == 0 && idx == 3, "model: a command ignores it");
}

int main(void)
{
	test_reliability();
	test_tiers();
	test_score();
	test_routing();
	test_requirements();
	test_eligibility();
	test_reliability_rules();
	test_place_all();
	test_by_name_only();
	test_model();
	printf("1..%d\n", n_checks);
	if (n_failed)
		printf("# %d of %d checks failed\n", n_failed, n_checks);
	return n_failed ? 1 : 0;
}
