/* placement and the tasks per node in stats. */
#include "fs/render_placement.h"
#include "backend/tasks.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

/* Scores are shown to the thousandth: what sched's sentences show. */
static void round_scores(json_t *v)
{
	const char *key;
	json_t *x;
	size_t i;
	if (json_is_object(v)) {
		json_object_foreach (v, key, x) {
			if (json_is_real(x))
				json_real_set(x,
					      (double) llround(json_real_value(x) * 1000) / 1000);
			else
				round_scores(x);
		}
	} else if (json_is_array(v)) {
		json_array_foreach (v, i, x)
			round_scores(x);
	}
}

int render_placement(const struct tree_ctx *ctx, const char *text, size_t len, struct buf *out,
		     char *errbuf, size_t errlen)
{
	json_t *doc = NULL;
	int r = tasks_rank(ctx->tasks, text, len, &doc, errbuf, errlen);
	if (r < 0)
		doc = json_pack("{ss}", "error", errbuf);
	else
		round_scores(doc);
	/* no time of the ranking in it: the document changes only when the ranking does
	 * (NFS and SMB clients read up to the size a stat gave) */
	char *s = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	buf_puts(out, s);
	buf_puts(out, "\n");
	free(s);
	json_decref(doc);
	return r;
}

json_t *render_tasks_per_node(const struct tree_ctx *ctx)
{
	size_t n = 0;
	char **names = cluster_list_nodes(ctx->cluster, &n);
	json_t *doc = json_object();
	for (size_t i = 0; i < n; i++) {
		int running, ok, failed;
		tasks_node_counts(ctx->tasks, names[i], &running, &ok, &failed);
		json_object_set_new(doc, names[i],
				    json_pack("{si si si}", "running", running,
					      "succeeded_last_hour", ok, "failed_last_hour",
					      failed));
		free(names[i]);
	}
	free(names);
	return doc;
}
