/* Placement: which node runs a task (DESIGN §6, from the seeds' tiers, reliability and
 * weighted load balancing).
 *
 * Pure: the caller snapshots the nodes into an array and gets back an index and one
 * sentence saying why, which it stores in the task's info. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "backend/cluster.h"
#include "backend/util.h"
#include "config/config.h"

#define SCHED_DEMOTE_BELOW 30.0 /* reliability under which a node gets no routed work */
#define SCHED_P0_MIN       80.0 /* reliability a P0 task needs */

/* What placement knows of one node. Borrows every pointer. */
struct sched_node {
	const char *name;
	const char *role; /* "" when none */
	const char *tier; /* powerhouse|standard|light|unknown (NULL: unknown) */
	const char *const *capabilities;
	size_t n_capabilities;
	enum node_level level;
	bool draining;
	double cpu, mem;         /* load fractions 0..1 (cpu_percent/100, mem_percent/100) */
	int cores, ram_mb, gpus; /* capacity (0 when unknown) */
	int active;              /* tasks dispatched or running there now */
	int queue_depth;         /* config queue_depth (default 10); caps the slots; 0: no cap */
	bool by_name_only; /* takes only tasks that name it: "node", or its type's routing hosts */
	int slots; /* when > 0, the slots themselves (a scheduler of its own, Slurm, places the
		    * work behind this node), instead of the tier's capped by queue_depth */
	int completed, total, consecutive_failures; /* task history on this node */
	int model; /* with a request's model: one of SCHED_MODEL_* (0 otherwise) */
};

/* How a node holds the model a prompt task asks for. */
#define SCHED_MODEL_FAILED  (-2) /* has it, but the task's last attempt failed there */
#define SCHED_MODEL_NOSERVE (-1) /* has no model server */
#define SCHED_MODEL_ABSENT  0
#define SCHED_MODEL_PRESENT 1
#define SCHED_MODEL_LOADED  2

/* What a task asks for. Borrows every pointer. */
struct sched_request {
	const char *node; /* "any" (or NULL), or an explicit node name */
	const char *type; /* routing class, or NULL */
	const char *const *requires;
	size_t n_requires;
	int cpus, mem_mb, gpus; /* 0 when not asked */
	int priority;           /* 0..3; 0 (P0) needs reliability >= SCHED_P0_MIN */
	const char *model;      /* a prompt task's model (nodes[].model says who has it), or NULL */
};

/* Reliability 0..100: completed/total*100 (100 when total is 0), minus 10 per consecutive
 * failure (at most -50), clamped to 0..100. */
double sched_reliability(const struct sched_node *n);

/* Max concurrent tasks by tier: powerhouse cores/2 capped at 16; standard cores/2; light 1
 * under 4 cores, else 2; unknown 1. Always at least 1. */
int sched_max_concurrent(const struct sched_node *n);

/* Score boost by tier: powerhouse 0.3, standard 0.1, light and unknown 0. */
double sched_tier_boost(const char *tier);

/* Picks the node for req, in this order:
 *  1. an explicit node skips the routing policy and the demotion rule; otherwise the
 *     type's policy in cfg->routing applies (cfg may be NULL): a node must be in every
 *     list the policy gives (hosts, roles, tiers; an empty list admits nobody); a type
 *     without a policy admits every node;
 *  2. requirements: the model, when req->model (nodes[].model PRESENT or LOADED), every
 *     capability in req->requires, a free slot (active below
 *     sched_max_concurrent() capped by queue_depth), and the resources asked
 *     (cpus <= cores, mem_mb <= ram_mb, gpus <= gpus; unknown capacity fits nothing);
 *  3. eligible: level healthy or warning, not draining, reliability >= SCHED_DEMOTE_BELOW
 *     (unless explicit);
 *  4. a P0 task needs reliability >= SCHED_P0_MIN (explicit or not);
 *  5. score 0.4*(1-cpu) + 0.3*(1-mem) + 0.2*(1-active/slots) + 0.1*health (healthy 1,
 *     warning 0.5) + tier boost; the highest wins, a tie goes to the smaller name. With
 *     req->model, a node that has the model loaded wins over one that only has it, and
 *     the score decides between nodes alike in that.
 * Returns 0 and *ret_index; -EAGAIN when no node fits now (it may later); -ENOENT when
 * the explicit node does not exist; -EINVAL for node "all" (use sched_place_all). Always
 * appends one sentence to `why`, e.g. "placed on n2: score 0.873 (cpu 12%, mem 40%,
 * slots 1/4, healthy, tier standard +0.1); next n1 0.610" or "no eligible node: n1
 * draining; n2 lacks capability gpu; n3 reliability 25 < 30". */
int sched_place(const struct config *cfg, const struct sched_request *req,
		const struct sched_node *nodes, size_t n, size_t *ret_index, struct buf *why);

/* For node "all": the indices (ascending) of every node that passes the policy, the
 * requirements except free slots, eligibility and the P0 rule; each gets one copy.
 * ret_indices has room for n. Returns the count and appends one sentence to `why`
 * ("placed on n1, n2; skipped n3 draining", or "no eligible node: ..." with 0). */
size_t sched_place_all(const struct config *cfg, const struct sched_request *req,
		       const struct sched_node *nodes, size_t n, size_t *ret_indices,
		       struct buf *why);

/* The ranking behind sched_place (or sched_place_all for node "all"), for people to read:
 * {"placed": [names], "why": the sentence the task would get, "nodes": [...]}, one entry
 * per node: node, eligible, rank (1.. among the eligible, by score; null otherwise),
 * score and its parts (cpu 0.4*(1-cpu), mem 0.3*(1-mem), slots 0.2*(1-active/slots),
 * health 0.1 or 0.05, tier boost), reason (the first rule it fails, or null), status,
 * tier, cpu_percent, mem_percent, active, slots, reliability, and with req->model "model"
 * ("loaded", "present", "absent", "no server" or "failed here"). Eligible nodes come first,
 * best first; the others by name. Returns a new reference. */
json_t *sched_rank(const struct config *cfg, const struct sched_request *req,
		   const struct sched_node *nodes, size_t n);
