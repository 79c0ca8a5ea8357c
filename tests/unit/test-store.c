/* Unit tests for backend/store: pages of task ids by position, counts by index, the total
 * of kept output, and the retention's batches. A real sqlite store in a temporary
 * directory. Prints TAP ("ok N - name"); exits non-zero when any check failed. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/store.h"
#include "backend/util.h"

#include "tests/unit/check.h"

#define N 1000

static char tmpdir[] = "/tmp/test-store.XXXXXX";

/* Task k: state by k % 4 (succeeded, failed, queued, running), node a or b by k % 2
 * (none while queued), ended at 1000 + k. */
static const char *const states[] = {"succeeded", "failed", "queued", "running"};

static void make_task(struct store_task *t, int k)
{
	char id[32];
	snprintf(id, sizeof(id), "t%d", k);
	memset(t, 0, sizeof(*t));
	t->id = xstrdup(id);
	t->spec = xstrdup("{\"cmd\":\"true\"}");
	t->state = xstrdup(states[k % 4]);
	t->node = k % 4 == 2 ? NULL : xstrdup(k % 2 ? "b" : "a");
	t->exit_code = k % 4 == 1 ? 1 : k % 4 == 0 ? 0 : -1;
	t->uid = 1000;
	t->submitted_at = 500 + k;
	t->finished_at = k % 4 < 2 ? 1000 + k : 0;
}

struct page {
	int64_t last;
	size_t n, bad_order;
	int seen[N];
};

static bool page_add(void *arg, int64_t seq, const char *id)
{
	struct page *p = arg;
	if (seq <= p->last)
		p->bad_order++;
	p->last = seq;
	p->seen[atoi(id + 1)]++;
	p->n++;
	return false;
}

/* Reads a whole listing in pages of `max`, as readdir does. */
static void read_all(struct store *s, int group, const char *node, size_t max, struct page *p)
{
	memset(p, 0, sizeof(*p));
	for (;;) {
		int r = store_list_page(s, group, node, p->last, max, page_add, p);
		if (r < (int) max)
			break;
	}
}

struct counts {
	int64_t by_state[4];
	int64_t on_a;
};

static void count_add(void *arg, const char *node, const char *state, int64_t n)
{
	struct counts *c = arg;
	for (int i = 0; i < 4; i++)
		if (!strcmp(state, states[i]))
			c->by_state[i] += n;
	if (node && !strcmp(node, "a"))
		c->on_a += n;
}

struct gone {
	int records, outputs;
	int first_record;
};

static void pruned(void *arg, const char *id, const char *node, const char *state, bool record)
{
	struct gone *g = arg;
	if (record) {
		if (!g->records++)
			g->first_record = atoi(id + 1);
	} else {
		g->outputs++;
	}
	(void) node;
	(void) state;
}

/* Every field of a task as it went in, after an insert and again after an update of the
 * mutable ones (the statements bind them by position). */
static bool same_task(const struct store_task *a, const struct store_task *b)
{
	const char *sa[] = {a->id,          a->parent, a->spec,      a->state, a->node,
			    a->dispatch_id, a->reason, a->placement, a->user};
	const char *sb[] = {b->id,          b->parent, b->spec,      b->state, b->node,
			    b->dispatch_id, b->reason, b->placement, b->user};
	for (size_t i = 0; i < sizeof(sa) / sizeof(sa[0]); i++)
		if (!sa[i] != !sb[i] || (sa[i] && strcmp(sa[i], sb[i])))
			return false;
	return a->exit_code == b->exit_code && a->attempts == b->attempts &&
	       a->priority == b->priority && a->uid == b->uid && a->gid == b->gid &&
	       a->submitted_at == b->submitted_at && a->started_at == b->started_at &&
	       a->finished_at == b->finished_at && a->seq == b->seq;
}

static void check_round_trip(struct store *s)
{
	struct store_task t = {
		.id = xstrdup("rt"),
		.parent = xstrdup("rt-parent"),
		.spec = xstrdup("{\"cmd\":\"true\"}"),
		.state = xstrdup("queued"),
		.reason = xstrdup("waiting for a node"),
		.exit_code = -1,
		.priority = 3,
		.uid = 1234,
		.gid = 5678,
		.user = xstrdup("someone"),
		.submitted_at = 4000.25,
	};
	struct store_task row;
	CHECK(store_insert_task(s, &t) == 0 && t.seq > 0, "a task with every field goes in");
	CHECK(store_load_task(s, "rt", &row) == 0 && same_task(&t, &row),
	      "and reads back field by field");
	store_task_clear(&row);
	free(t.state);
	free(t.reason);
	t.state = xstrdup("succeeded");
	t.node = xstrdup("b");
	t.dispatch_id = xstrdup("d-7");
	t.reason = NULL;
	t.placement = xstrdup("least loaded");
	t.exit_code = 0;
	t.attempts = 2;
	t.priority = 1;
	t.started_at = 4001.5;
	t.finished_at = 4002.75;
	CHECK(store_update_task(s, &t) == 0, "an update writes the mutable fields");
	CHECK(store_load_task(s, "rt", &row) == 0 && same_task(&t, &row),
	      "and each reads back as written, the others as they were");
	store_task_clear(&row);
	store_task_clear(&t);
	t.id = xstrdup("no-such-task");
	CHECK(store_update_task(s, &t) == -ENOENT, "an update of an unknown id is -ENOENT");
	store_task_clear(&t);
}

int main(void)
{
	if (!mkdtemp(tmpdir))
		return 1;
	char err[256];
	struct store *s = NULL;
	CHECK(store_open(tmpdir, &s, err, sizeof(err)) == 0, "a new store opens");
	struct store_task *ts = xcalloc(N, sizeof(*ts));
	for (int k = 0; k < N; k++)
		make_task(&ts[k], k);
	CHECK(store_insert_tasks(s, ts, N) == 0, "1000 tasks go in in one transaction");

	struct page p;
	read_all(s, 2, NULL, 7, &p);
	bool exact = p.n == N / 4 && !p.bad_order;
	for (int k = 0; k < N; k++)
		exact &= p.seen[k] == (k % 4 == 0);
	CHECK(exact, "done/ in pages of 7: every succeeded task once, in order, nothing else");
	read_all(s, 3, NULL, 1, &p);
	CHECK(p.n == N / 4 && !p.bad_order, "failed/ in pages of 1");
	read_all(s, 1, NULL, 50, &p);
	CHECK(p.n == N / 4, "running/ holds the running ones");
	read_all(s, -1, NULL, 64, &p);
	CHECK(p.n == N && !p.bad_order, "all tasks in pages of 64");
	read_all(s, -1, "a", 10, &p);
	exact = !p.bad_order;
	for (int k = 0; k < N; k++)
		exact &= p.seen[k] == (k % 2 == 0 && k % 4 != 2);
	CHECK(exact, "a node's tasks: those placed there");

	/* a listing that goes on while a task moves into its group and one moves out */
	memset(&p, 0, sizeof(p));
	store_list_page(s, 2, NULL, 0, 100, page_add, &p); /* t0..t396 */
	free(ts[2].state);
	ts[2].state = xstrdup("succeeded"); /* t2, before the cursor: not seen */
	free(ts[998].state);
	ts[998].state = xstrdup("succeeded"); /* t998, after it: seen */
	free(ts[800].state);
	ts[800].state = xstrdup("failed"); /* t800 leaves */
	CHECK(store_update_task(s, &ts[2]) == 0 && store_update_task(s, &ts[998]) == 0 &&
		      store_update_task(s, &ts[800]) == 0,
	      "three tasks change state");
	while (store_list_page(s, 2, NULL, p.last, 100, page_add, &p) == 100)
		;
	CHECK(p.seen[998] == 1 && p.seen[2] == 0 && p.seen[800] == 0 && !p.bad_order &&
		      p.n == N / 4 + 1 - 1,
	      "carrying on from the cursor: no duplicate, the mover after it is seen");

	struct counts c = {0};
	CHECK(store_count_tasks(s, count_add, &c) == 0, "the counts come from an index");
	CHECK(c.by_state[0] == N / 4 + 1 && c.by_state[1] == N / 4 + 1 &&
		      c.by_state[2] == N / 4 - 2 && c.by_state[3] == N / 4,
	      "counts by state");
	CHECK(c.on_a == N / 4, "counts on a node");

	/* output, and the retention by size: the oldest ends go first */
	int64_t sum = 0;
	for (int k = 0; k < N; k += 4) {
		char line[64];
		int len = snprintf(line, sizeof(line), "output of t%d\n", k);
		store_put_output(s, ts[k].id, "stdout", line, (size_t) len);
		store_put_output(s, ts[k].id, "stderr", "", 0);
		sum += len;
	}
	store_put_output(s, "t0", "stdout", "again\n", 6); /* replaced whole */
	sum += 6 - (int64_t) strlen("output of t0\n");
	CHECK(store_output_total(s) == sum, "the total of kept output follows each write");
	struct store_retention keep = {.output_bytes = 160};
	struct gone g = {0};
	double next = -1;
	int n, runs = 0;
	while ((n = store_prune(s, &keep, 5000, 256, pruned, &g, &next)) == 256)
		runs++;
	CHECK(runs > 0 && n >= 0 && g.records == 0, "runs by size prune output only, in batches");
	CHECK(store_output_total(s) <= 160 && store_output_total(s) > 100, "down to the bound");
	char *data = NULL;
	size_t len = 0, size = 0;
	store_get_output(s, "t0", "stdout", &data, &len);
	CHECK(!strncmp(data, "[clusterfs: output removed by the retention policy", 50),
	      "pruned output reads as a sentence");
	store_output_size(s, "t0", "stdout", &size);
	CHECK(size == len, "its size is the sentence's");
	free(data);
	store_get_output(s, "t0", "stderr", &data, &len);
	CHECK(len == 0, "an empty stream stays empty");
	free(data);
	store_get_output(s, "t996", "stdout", &data, &len);
	CHECK(!strcmp(data, "output of t996\n"), "the newest output stays");
	free(data);
	g.outputs = 0;
	CHECK(store_prune(s, &keep, 5000, 256, pruned, &g, &next) == 0 && g.outputs == 0,
	      "a second run finds nothing more (the cursor)");

	/* by age, in batches */
	struct store_retention age = {.output_s = 100};
	g = (struct gone){0};
	n = store_prune(s, &age, 1000 + 100 + 996.5, 3, pruned, &g, &next);
	CHECK(n == 3 && next == 1000 + 100 + 996.5, "a full batch says: more now");
	while ((n = store_prune(s, &age, 1000 + 100 + 996.5, 3, pruned, &g, &next)) == 3)
		;
	CHECK(next == 1000 + 997 + 100, "then the next one is due when t997 is old enough");

	/* records */
	struct store_retention rec = {.records_s = 100};
	g = (struct gone){0};
	n = store_prune(s, &rec, 1000 + 100 + 6, 256, pruned, &g, &next);
	CHECK(n == 4 && g.records == 4 && g.first_record == 0, "records that ended long ago go");
	struct store_task row;
	CHECK(store_load_task(s, "t0", &row) == -ENOENT, "and are gone from the store");
	CHECK(store_load_task(s, "t12", &row) == 0 && !strcmp(row.state, "succeeded"),
	      "the others stay");
	store_task_clear(&row);
	memset(&c, 0, sizeof(c));
	store_count_tasks(s, count_add, &c);
	CHECK(c.by_state[0] + c.by_state[1] + c.by_state[2] + c.by_state[3] == N - 4,
	      "the counts lose them");

	check_round_trip(s);

	for (int k = 0; k < N; k++)
		store_task_clear(&ts[k]);
	free(ts);
	store_close(s);
	char cmd[64];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
	if (system(cmd) != 0)
		return 1;
	return check_done();
}
