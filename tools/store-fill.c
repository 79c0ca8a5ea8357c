/* Fills a state directory's store with finished tasks, through the store module the
 * daemon uses (its schema, store_insert_tasks and store_put_output), for the scale
 * benchmark and tests: see --help. Run it while no daemon uses the directory. */
#include "backend/spec.h"
#include "backend/store.h"
#include "backend/util.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BATCH 5000 /* tasks per transaction */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: clusterfs-store-fill -s STATE_DIR -n COUNT [-p PREFIX] [-N NODES]\n"
		"                [-P NODE_PREFIX] [-u UID] [-g GID] [-U USER] [-o EVERY] [-t AGE_S]\n"
		"Adds COUNT finished tasks PREFIX-0.. (default \"old\") spread over the nodes\n"
		"n1..nNODES (default 8; -P sets the \"n\"), submitted by UID/GID (default 0/0, USER\n"
		"root); one in 10 failed (exit 1), the rest succeeded. Every EVERY-th task\n"
		"(default 1; 0: none) gets a line of stdout. AGE_S: the newest ended that\n"
		"long ago (default 60), the others one second apart before it.\n");
}

/* What to fill: the options. */
struct fill {
	const char *prefix, *user, *node_prefix;
	long nodes;
	uid_t uid;
	gid_t gid;
};

/* Row k: a finished task (one in ten failed) on a node in turn, ended at `finished`. */
static void fill_row(struct store *s, const struct fill *f, const char *spec_text, long k,
		     double finished, struct store_task *t)
{
	char id[128], node[32], did[256];
	bool ok = k % 10 != 9;
	snprintf(id, sizeof(id), "%s-%ld", f->prefix, k);
	snprintf(node, sizeof(node), "%s%ld", f->node_prefix, k % f->nodes + 1);
	snprintf(did, sizeof(did), "%s.%s.1", store_instance_id(s), id);
	memset(t, 0, sizeof(*t));
	t->id = xstrdup(id);
	t->spec = xstrdup(spec_text);
	t->state = xstrdup(ok ? "succeeded" : "failed");
	t->node = xstrdup(node);
	t->dispatch_id = xstrdup(did);
	t->placement = xstrdup("the least loaded eligible node");
	t->exit_code = ok ? 0 : 1;
	t->attempts = 1;
	t->priority = 2;
	t->uid = f->uid;
	t->gid = f->gid;
	t->user = xstrdup(f->user);
	t->finished_at = finished;
	t->started_at = t->finished_at - 0.01;
	t->submitted_at = t->started_at - 0.01;
}

int main(int argc, char **argv)
{
	const char *dir = NULL;
	struct fill f = {.prefix = "old", .user = "root", .node_prefix = "n", .nodes = 8};
	long count = -1, every = 1;
	double age = 60;
	int c;
	while ((c = getopt(argc, argv, "s:n:p:N:P:u:g:U:o:t:h")) != -1) {
		switch (c) {
		case 's': dir = optarg; break;
		case 'n': count = strtol(optarg, NULL, 10); break;
		case 'p': f.prefix = optarg; break;
		case 'N': f.nodes = strtol(optarg, NULL, 10); break;
		case 'P': f.node_prefix = optarg; break;
		case 'u': f.uid = (uid_t) strtoul(optarg, NULL, 10); break;
		case 'g': f.gid = (gid_t) strtoul(optarg, NULL, 10); break;
		case 'U': f.user = optarg; break;
		case 'o': every = strtol(optarg, NULL, 10); break;
		case 't': age = strtod(optarg, NULL); break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!dir || count < 0 || f.nodes < 1 || every < 0) {
		usage(stderr);
		return 2;
	}
	char err[512];
	struct store *s = NULL;
	int r = store_open(dir, &s, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "clusterfs-store-fill: %s\n", err);
		return 1;
	}
	store_set_durable(s, false);
	/* the canonical spec, as a submission stores it */
	static const char text[] = "{\"cmd\": [\"echo\", \"hello\"]}";
	struct task_spec *spec = NULL;
	if (spec_parse(text, sizeof(text) - 1, &spec, err, sizeof(err)) < 0) {
		fprintf(stderr, "clusterfs-store-fill: %s\n", err);
		return 1;
	}
	json_t *canon = spec_to_json(spec);
	char *spec_text = json_dumps(canon, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(canon);
	spec_free(spec);
	double end = clock_wall_s() - age - (double) count;
	struct store_task *rows = xcalloc(BATCH, sizeof(*rows));
	for (long base = 0; base < count; base += BATCH) {
		size_t n = (size_t) (count - base < BATCH ? count - base : BATCH);
		for (size_t i = 0; i < n; i++) {
			long k = base + (long) i;
			fill_row(s, &f, spec_text, k, end + (double) k, &rows[i]);
		}
		r = store_insert_tasks(s, rows, n);
		if (r < 0) {
			fprintf(stderr, "clusterfs-store-fill: cannot insert tasks: %s\n",
				strerror(-r));
			return 1;
		}
		for (size_t i = 0; i < n && every; i++) {
			long k = base + (long) i;
			if (k % every)
				continue;
			char line[160];
			int len = snprintf(line, sizeof(line), "hello from %s\n", rows[i].id);
			r = store_put_output(s, rows[i].id, "stdout", line, (size_t) len);
			if (r == 0)
				r = store_put_output(s, rows[i].id, "stderr", "", 0);
			if (r < 0) {
				fprintf(stderr, "clusterfs-store-fill: cannot store output: %s\n",
					strerror(-r));
				return 1;
			}
		}
		for (size_t i = 0; i < n; i++)
			store_task_clear(&rows[i]);
	}
	free(rows);
	free(spec_text);
	store_close(s);
	return 0;
}
