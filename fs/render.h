/* Rendering: the content of every file, from the cluster model. Never touches the network. */
#pragma once

#include "backend/cluster.h"
#include "backend/util.h"
#include "fs/tree.h"

#include <stdint.h>

/* Appends the content of the file `e` to `out` and sets *ret_mtime to the wall time its
 * data last changed. For the events file, *ret_seq (may be NULL) gets the last event
 * number rendered. The files of tasks/new/ and tasks/ID/wait are not rendered here. Returns 0 or -errno (-ENOENT when a node vanished meanwhile). */
int render_file(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		double *ret_mtime, uint64_t *ret_seq);

/* Size and mtime of the file as an open would render it now. */
int render_stat(const struct tree_ctx *ctx, const struct tree_entry *e, size_t *ret_size,
		double *ret_mtime);
