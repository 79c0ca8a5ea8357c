/* dashboard.html and recent-tasks.json. */
#include "fs/render_dashboard.h"
#include "backend/tasks.h"

#include <stdlib.h>

extern const char dashboard_html[]; /* generated from fs/dashboard.html */

void render_dashboard(struct buf *out)
{
	buf_puts(out, dashboard_html);
}

void render_recent_tasks(const struct tree_ctx *ctx, struct buf *out)
{
	json_t *doc = tasks_recent(ctx->tasks, RENDER_RECENT_TASKS);
	char *s = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	buf_puts(out, s);
	buf_puts(out, "\n");
	free(s);
	json_decref(doc);
}
