/* dashboard.html and the files it reads that nothing else offers (recent-tasks.json). */
#pragma once

#include "backend/util.h"
#include "fs/tree.h"

/* How many of the newest tasks recent-tasks.json lists. */
#define RENDER_RECENT_TASKS 50

/* The page (fs/dashboard.html, compiled in). */
void render_dashboard(struct buf *out);
/* recent-tasks.json: see tasks_recent(). */
void render_recent_tasks(const struct tree_ctx *ctx, struct buf *out);
