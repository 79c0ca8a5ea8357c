/* A Slurm cluster through slurmrestd (the config's "slurm" section, README "Slurm").
 *
 * Nodes: one GET of /slurm/API/nodes per round lists every node of the partition; they
 * appear in the cluster model as external nodes (PREFIX + Slurm name), and the cluster
 * itself as node NAME, which tasks name to run there.
 *
 * Tasks: the task manager speaks the agent's task protocol to every node; for NAME this
 * module answers it in-process (a dispatch target) and translates each call to slurmrestd:
 * a dispatch becomes a batch job named by the dispatch id (found again by that name after
 * a crash, so it is submitted once), a poll lists the jobs, output is read from
 * output_dir, a cancel deletes the job.
 *
 * Everything runs on the loop thread. The JWT is read from slurm.token_file when it
 * changes, kept in memory only, and never logged. */
#pragma once

#include "backend/cluster.h"
#include "backend/loop.h"

#include <stdbool.h>

struct slurm;

/* Creates the module. Borrows loop and cluster: they outlive it. */
int slurm_new(struct loop *loop, struct cluster *cluster, struct slurm **ret);
/* Thread-safe: starts the node rounds on the loop thread (a config without "slurm" makes
 * them idle until one has it). */
int slurm_start(struct slurm *s);
/* After loop_stop(). */
void slurm_free(struct slurm *s);

/* Any thread: true when tasks on `node` go to this module (node is the slurm name). */
bool slurm_owns_node(void *s, const char *node);
/* Loop thread: one call of the agent's task protocol (POST /api/node/tasks, GET
 * /api/node/tasks[?...], GET /api/node/tasks/ID/stdout|stderr?offset=N&limit=M, POST
 * /api/node/tasks/ID/cancel), answered as an agent would, done(arg, resp) exactly once and
 * never before this returns. Returns 0 or -errno (then done is not called). */
int slurm_task_call(void *s, const char *node, const char *method, const char *path,
		    const char *body, http_done_fn done, void *arg);
