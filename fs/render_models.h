/* models/ and nodes/NODE/models/: the bytes of their files, from the model view that
 * backend/models.c keeps. The renderers the tree table names are declared in fs/render.h. */
#pragma once

#include "backend/models.h"
#include "backend/util.h"

/* nodes/NODE/models/ctl as read: one line per operation (pull progress, results, errors),
 * oldest first, and a usage line when there are none. */
void render_models_ops(const struct models_op_view *ops, size_t n, struct buf *out);
