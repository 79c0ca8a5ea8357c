/* placement and the tasks per node in stats: how work is and would be spread. */
#pragma once

#include "backend/util.h"
#include "fs/tree.h"

#include <jansson.h>

/* The ranking of the nodes for a spec (text NULL: a default task), as JSON, appended to
 * out. Returns 0, or -EINVAL for a bad spec: then out gets {"error": SENTENCE} and errbuf
 * the sentence. */
int render_placement(const struct tree_ctx *ctx, const char *text, size_t len, struct buf *out,
		     char *errbuf, size_t errlen);

/* stats' "tasks_per_node": {NODE: {"running", "succeeded_last_hour",
 * "failed_last_hour"}} for every node. Returns a new reference. */
json_t *render_tasks_per_node(const struct tree_ctx *ctx);
