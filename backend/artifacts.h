/* Artifacts on the control plane (issue 14): what the agents collected of a task's
 * outputs, kept here once the task ends, and the staging of a task's inputs on its node.
 *
 * When a task with "outputs" ends, its record (the agent's file list, with the node and
 * attempt it came from) is fetched and kept in STATE_DIR/artifacts/TASK/record.json, and
 * every file of at most artifacts.cache_max_mb is copied to STATE_DIR/artifacts/TASK/files/,
 * checked by its SHA-256, so that it stays readable when its node is gone. Larger files are
 * fetched when they are opened.
 *
 * Inputs are staged before a task is dispatched: the destination agent is sent a URL of
 * the producer's agent signed with that agent's token (httpd/server.h), and fetches the
 * file itself, streamed to disk and checked by digest; a file kept here (its node gone)
 * or from the control plane's disk under artifacts.inputs_root is sent to the agent
 * with a streamed PUT instead. No file is ever held whole in memory.
 *
 * Thread-safe unless said otherwise; network work happens on the loop thread. */
#pragma once

#include "backend/cluster.h"
#include "backend/loop.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct artifacts;

/* Creates the module, keeping its files under state_dir/artifacts. Borrows loop and
 * cluster. 0 or -errno. */
int artifacts_new(struct loop *loop, struct cluster *cluster, const char *state_dir,
		  struct artifacts **ret);
void artifacts_free(struct artifacts *a);

/* Called once on the loop thread when a collection or a staging has finished: err 0, or
 * -errno with one sentence in why; -EAGAIN when the node did not answer (another try may
 * do). */
typedef void (*artifacts_done_fn)(void *arg, int err, const char *why);

/* Loop thread: fetches the file list of task `task`, attempt `dispatch_id` on `node`,
 * keeps it, and copies the files small enough. done() runs later, never from within.
 * 0 or -errno (then done is not called). */
int artifacts_collect(struct artifacts *a, const char *task, const char *node,
		      const char *dispatch_id, artifacts_done_fn done, void *arg);

/* Loop thread: stages the inputs `inputs` (a spec's "inputs", borrowed) for attempt
 * `dispatch_id` on `node`. `producers` (borrowed) maps each producer a source names
 * ("TASK" of "TASK@*", or "TASK@NODE") to the ids of the tasks whose outputs it means (the
 * copies of a node "all" task, or the task itself). On success *staged is set to the
 * names staged (a new array, for the task's "inputs" on its node) before done(0) runs.
 * done() runs later, never from within. 0 or -errno. */
int artifacts_stage(struct artifacts *a, const json_t *inputs, const json_t *producers,
		    const char *node, const char *dispatch_id, json_t **staged,
		    artifacts_done_fn done, void *arg);

/* For the tree, from what is kept here (never the network): whether `name` (relative, ""
 * for the top) is a file (1, with its size) or a directory (0) of task's outputs, or
 * -ENOENT. *ret_mtime: when the outputs were collected. */
int artifacts_lookup(struct artifacts *a, const char *task, const char *name, uint64_t *ret_size,
		     double *ret_mtime);
/* The names in directory `name` ("" for the top) of task's outputs, sorted; a new
 * NULL-terminated array (empty when none). */
char **artifacts_list(struct artifacts *a, const char *task, const char *name, size_t *ret_n);

/* Called on the loop thread with a descriptor open on the file (the callee owns it), or
 * -errno. */
typedef void (*artifacts_open_fn)(void *arg, int fd);
/* Opens output `name` of `task` for reading: a descriptor (>= 0) at once when it is kept
 * here; -EINPROGRESS when it is being fetched from its node, and done() gets the
 * descriptor later; -ENOENT. */
int artifacts_open(struct artifacts *a, const char *task, const char *name, artifacts_open_fn done,
		   void *arg);
