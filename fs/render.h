/* Rendering: the content of every file, from the cluster model. Never touches the network. */
#pragma once

#include "backend/cluster.h"
#include "backend/util.h"
#include "fs/tree.h"

#include <stdint.h>

/* For the calling thread until it is set to NULL again: renders of v's node files use v
 * instead of a copy out of the model, while the cluster's generation is v's. Borrows v;
 * fs/pending.c sets it around finishing the requests a node refresh waited for. */
void render_fresh_view_set(const struct node_view *v);

/* Appends the content of the file `e` to `out` with its row's renderer and sets *ret_mtime
 * to the wall time its data last changed (the row's mtime source, or the renderer's). For
 * the events file, *ret_seq (may be NULL) gets the last event number rendered. The files
 * of tasks/new/ are not rendered here. Returns 0 or -errno (-ENOENT when a node vanished
 * meanwhile, -EISDIR for a row without a renderer). */
int render_file(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		double *ret_mtime, uint64_t *ret_seq);

/* Size and mtime of the file as an open would render it now. */
int render_stat(const struct tree_ctx *ctx, const struct tree_entry *e, size_t *ret_size,
		double *ret_mtime);

/* The mtime of `e` by its row's mtime source alone (directories, and files before their
 * renderer refines it). */
double render_mtime(const struct tree_ctx *ctx, const struct tree_entry *e);

/* The renderers the tree table (fs/tree.c) names, one per file: each appends the file's
 * content to out, as struct tree_row's render says. */
#define RENDER_ARGS                                                                                \
	const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,                   \
		double *ret_mtime, uint64_t *ret_seq
/* at the top */
int render_readme(RENDER_ARGS);
int render_config(RENDER_ARGS);
int render_stats(RENDER_ARGS);
int render_alerts(RENDER_ARGS);
int render_events(RENDER_ARGS);
int render_metrics(RENDER_ARGS);
int render_topology_json(RENDER_ARGS);
int render_topology_dot(RENDER_ARGS);
int render_all_health(RENDER_ARGS);
int render_placement_file(RENDER_ARGS);
int render_dashboard_file(RENDER_ARGS);
int render_recent_tasks_file(RENDER_ARGS);
int render_backup_state(RENDER_ARGS);
/* nodes/NODE/ */
int render_node_status(RENDER_ARGS);
int render_node_health(RENDER_ARGS);
int render_node_info(RENDER_ARGS);
int render_node_address(RENDER_ARGS);
int render_node_role(RENDER_ARGS);
int render_node_tier(RENDER_ARGS);
int render_node_capabilities(RENDER_ARGS);
int render_node_reliability(RENDER_ARGS);
int render_node_ctl(RENDER_ARGS);
int render_node_model(RENDER_ARGS);
int render_node_models_ctl(RENDER_ARGS);
/* tasks/ID/ */
int render_task_spec(RENDER_ARGS);
int render_task_status(RENDER_ARGS);
int render_task_node(RENDER_ARGS);
int render_task_exit_code(RENDER_ARGS);
int render_task_info(RENDER_ARGS);
int render_task_stdout(RENDER_ARGS);
int render_task_stderr(RENDER_ARGS);
int render_task_result(RENDER_ARGS);
int render_task_wait(RENDER_ARGS);
int render_task_ctl(RENDER_ARGS);
/* models/, ledger/, services/ */
int render_model_nodes(RENDER_ARGS);
int render_model_loaded(RENDER_ARGS);
int render_model_info(RENDER_ARGS);
int render_ledger_entry(RENDER_ARGS);
int render_ledger_best(RENDER_ARGS);
int render_ledger_summary(RENDER_ARGS);
int render_ledger_source(RENDER_ARGS);
int render_ledger_record(RENDER_ARGS);
int render_service_file(RENDER_ARGS);
