/* The cluster model: the private header of backend/cluster*.c, never included elsewhere
 * (but by tests/unit/test-cluster.c, which evaluates levels without a network). It holds
 * the model's structures and the functions the files share.
 *
 * Threads and locks (DESIGN §2, "Checked contracts"):
 * - cluster->lock (a rwlock) guards the config, the node array and every struct node, the
 *   alerts and the drained set. Nodes are written on the loop thread (and by a heartbeat,
 *   on the join listener's) with it held for writing; any thread reads under it.
 * - cluster->events_lock guards the event ring and the queue of writes for the store; it
 *   is a leaf: nothing is called with it held, and it is never taken with cluster->lock.
 * - The lock order is tasks -> cluster: the tasks module calls cluster_* functions with
 *   its lock held; the listeners (cluster_notify) and the refresh waiters run with no
 *   cluster lock held. */
#pragma once

#include "backend/cluster.h"
#include "backend/store.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <unistd.h> /* gettid() */

#define EVENTS_MAX     10000              /* lines kept in memory */
#define SYSTEM_MAX_AGE (300 * 1000000ull) /* system info is refetched this often */
#define TICK_US        (1000000ull)
#define TICK_US        (1000000ull)

struct waiter {
	cluster_refresh_fn done;
	void *arg;
	struct waiter *next;
};

/* One node. Fields are written on the loop thread with cluster->lock held for writing. */
struct node {
	char *name;
	const struct cfg_host *host; /* points into cluster->cfg */
	json_t *health;              /* last health document, or NULL */
	json_t *system;              /* last system document, or NULL */
	struct node_metrics metrics; /* health's numbers, parsed when health is set */
	struct node_system sys;      /* system's numbers, parsed when system is set */
	uint64_t system_us;          /* when `system` was fetched (monotonic) */
	enum node_level level;
	json_t *reasons;
	int failures;
	char *last_error;
	bool insecure;        /* the last probe failed a transport-security check */
	uint64_t last_ok_us;  /* monotonic; 0 if never */
	uint64_t last_try_us; /* when the last probe started */
	double checked_at;    /* wall */
	double attempted_at;  /* wall */
	double latency_ms;
	uint64_t latency_buckets[CLUSTER_LATENCY_BUCKETS]; /* cumulative */
	double latency_sum_s;
	uint64_t latency_count;
	double changed_at; /* wall */
	bool in_flight;    /* a health probe is under way */
	bool system_in_flight;
	bool draining;
	struct waiter *waiters; /* loop thread only */
	uint64_t pushed_us;     /* monotonic time of the last heartbeat, 0 if none */
	uint64_t added_us;      /* when it appeared in the config (monotonic) */
	bool forgotten;         /* its drop-in was removed for join.forget_after_s */
	bool last_pushed;       /* the last success was a heartbeat, not a probe */
	/* a node of an external source (a Slurm cluster): not probed here; its owner sets
	 * its level and documents with cluster_set_external() */
	char *owner;               /* the source's name, or NULL for a host of the config */
	char *ext_address;         /* shown in nodes/NODE/address */
	char *ext_role;            /* shown in nodes/NODE/role */
	enum node_level ext_level; /* the level the owner reported, before draining */
};

struct event {
	uint64_t seq;
	char *line; /* with the newline */
	size_t len;
};

/* Something to write to the store, in the order it happened: an event, or a drain. */
struct pending {
	struct store_event ev; /* ev.line set: an event (owned) */
	char *node;            /* else a drain (draining) or resume of this node (owned) */
	bool draining;
	struct pending *next;
};

struct cluster {
	struct loop *loop;
	pthread_rwlock_t lock;
	struct config *cfg;  /* protected by lock */
	struct node **nodes; /* sorted by name; protected by lock */
	size_t n_nodes;
	char *config_error; /* protected by lock */
	json_t *alerts;     /* key -> message; protected by lock */
	double changed_at;  /* protected by lock */
	double started_at;
	uint64_t started_us;
	uint64_t generation;            /* cluster_generation(); atomic */
	cluster_change_fn on_change[4]; /* set before cluster_start */
	void *on_change_arg[4];
	size_t n_on_change;
	struct loop_timer *tick; /* loop thread only */

	pthread_mutex_t events_lock;
	struct event *events; /* ring of EVENTS_MAX; protected by events_lock */
	size_t events_first;  /* index of the oldest */
	size_t n_events;
	uint64_t events_seq; /* sequence number of the newest */
	size_t events_bytes;
	double events_changed_at;
	/* writes for the store, made on the loop thread in order; protected by events_lock */
	struct store *store; /* set once by cluster_attach_store, before cluster_start */
	struct pending *pend_head, *pend_tail;
	bool flush_posted;
	json_t *drained; /* names of drained nodes (object used as a set); protected by lock */
};

/* True when the calling thread holds c->lock for writing: glibc's rwlock records its
 * writer's thread id, as its mutex records its owner (util_mutex_held). For
 * assert(cluster_wrlock_held(c)) at the top of a *_locked function. */
static inline bool cluster_wrlock_held(struct cluster *c)
{
	return c->lock.__data.__cur_writer == gettid();
}

/* ---- cluster.c: the model ---- */

/* Lock held: the node named `name`, or NULL (binary search in the sorted array). */
struct node *cluster_find(struct cluster *c, const char *name);
/* Counts a change (cluster_generation) and tells the listeners. No lock held. */
void cluster_notify(struct cluster *c, const char *node);
/* qsort comparison of two struct node pointers, by name. */
int cluster_node_cmp(const void *a, const void *b);
/* Frees a node that left the array (its waiters were called). */
void cluster_node_free(struct node *n);

/* ---- cluster_events.c: events and the store ---- */

/* Writes what is pending for the store. On the loop thread, or on any thread once it has
 * stopped (cluster_free). arg is the cluster. */
void cluster_flush_store(void *arg);
/* Queues one write for the store (steals p) and wakes the loop to make it. */
void cluster_queue_store(struct cluster *c, struct pending *p);

/* ---- cluster_level.c: levels ---- */

/* Lock held for writing: replaces the node's documents (either may be NULL: that one is
 * kept) and their parsed numbers. Takes the references given. */
void cluster_node_set_docs(struct node *n, json_t *health, json_t *system);
/* The level a health document's numbers reach under cfg's thresholds; appends a reason
 * to `reasons` for each threshold crossed. */
enum node_level cluster_level_from_metrics(const struct config *cfg, const struct node_metrics *m,
					   json_t *reasons);
/* Lock held for writing: recomputes a node's level from its metrics, failures and age
 * (`now`, monotonic), or for an external node from what its owner said. Returns true when
 * the level changed; *ret_old gets the previous one. */
bool cluster_node_evaluate(struct cluster *c, struct node *n, uint64_t now,
			   enum node_level *ret_old);
bool cluster_node_evaluate_external(struct node *n, enum node_level *ret_old);
/* Lock held: adds the event of a node's level change from `old`, with its reasons. */
void cluster_node_event_level(struct cluster *c, struct node *n, enum node_level old);

/* ---- cluster_probe.c: probes, the tick, refreshes ---- */

/* Loop thread, lock held for writing: starts a health probe of n unless one is under way,
 * and a system probe when that information is missing or old. */
void cluster_node_probe(struct cluster *c, struct node *n, uint64_t now);
/* No lock held: calls the waiters of a node that left the array with err; with err 0,
 * the view they get is that of the node now named so (-ENOENT when there is none). */
void cluster_node_call_waiters(struct cluster *c, struct node *n, int err);
