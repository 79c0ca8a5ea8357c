/* The cluster model: what is known of every node, kept fresh by probes.
 *
 * The state lives here and is mutated only on the loop thread, under cluster->lock;
 * any thread reads it through views (copies and new references), so the fs layer
 * renders files without ever waiting on the network. */
#pragma once

#include "backend/loop.h"
#include "backend/util.h"
#include "config/config.h"

#include <jansson.h>
#include <math.h> /* isnan() for the absent numbers of node_metrics */
#include <stdbool.h>
#include <stdint.h>

struct cluster;

enum node_level {
	NODE_UNKNOWN, /* never probed yet */
	NODE_HEALTHY,
	NODE_WARNING,   /* a metric at or above its warning threshold */
	NODE_CRITICAL,  /* a metric at or above its critical threshold */
	NODE_UNHEALTHY, /* probe.unhealthy_after failures in a row */
	NODE_STALE,     /* no success for probe.stale_after_s */
	NODE_OFFLINE,   /* no success for probe.offline_after_s */
	NODE_DRAINING,  /* reachable, but takes no new work */
};

/* Upper bounds (seconds) of the probe latency histogram's buckets; +Inf is the count. */
#define CLUSTER_LATENCY_BUCKETS 10
extern const double cluster_latency_bounds_s[CLUSTER_LATENCY_BUCKETS];

/* The one word shown in nodes/NODE/status. */
const char *node_level_name(enum node_level level);

/* The numbers of an agent's health document (GET /api/node/health, or a heartbeat's
 * "health"), parsed once where the document arrives (DESIGN §4, "Typed node documents").
 * A field the document lacks, or holds as another JSON type, is absent: NaN for the
 * doubles, -1 for cores and mem_total_mb. Percentages are kept as sent (a node claiming
 * 1e300 % CPU is critical and scores low); capacities are range-checked here, since they
 * are summed and converted to int. */
struct node_metrics {
	double cpu_percent;      /* CPU busy, percent */
	double mem_percent;      /* memory used, percent */
	double disk_percent;     /* disk of the agent's state directory used, percent */
	double load1;            /* one-minute load average ("load"[0]) */
	int cores;               /* logical CPUs: a JSON integer in [0, 2^20], else -1 */
	int mem_total_mb;        /* MiB in total: a JSON integer in [0, INT_MAX], else -1 */
	double mem_available_mb; /* MiB */
	double disk_total_mb;    /* MiB */
	double disk_free_mb;     /* MiB */
	double uptime_s;         /* seconds since the node booted */
	int gpus;                /* entries of the "gpus" array; 0 when there is none */
};

/* The numbers of an agent's system document (GET /api/node/system), parsed once where it
 * arrives. They give the tier (cores and RAM). */
struct node_system {
	bool has_cores;   /* "cores" is a JSON integer */
	json_int_t cores; /* logical CPUs, as sent (any integer) */
	double ram_mb;    /* MiB; NaN when absent or not a number */
};

/* Fill *ret from a health or a system document (borrowed; NULL or a non-object gives all
 * fields absent). */
void node_metrics_parse(const json_t *health, struct node_metrics *ret);
void node_system_parse(const json_t *system, struct node_system *ret);

/* A copy of one node's state. Owns every pointer; release with node_view_clear(). */
struct node_view {
	char *name;
	char *display_name; /* or NULL */
	char *address;
	int port;
	char *role;
	char *tier;           /* configured, else computed from cores and RAM, else "unknown" */
	json_t *capabilities; /* array of strings */
	json_t *health;       /* the agent's last health document, or NULL: shown as received */
	json_t *system;       /* the agent's last system document, or NULL: shown as received */
	struct node_metrics metrics; /* health's numbers (all absent without health) */
	struct node_system sys;      /* system's numbers (all absent without system) */
	json_t *reasons;             /* array of sentences explaining the level */
	enum node_level level;
	bool reachable;      /* the last probe succeeded */
	bool draining;       /* takes no new work */
	bool probing;        /* a probe is in flight */
	int failures;        /* consecutive failed probes */
	char *last_error;    /* reason of the last failed probe, or NULL */
	double checked_at;   /* wall time of the last successful probe, 0 if none */
	double attempted_at; /* wall time the last probe finished, 0 if none */
	double age_s;        /* seconds since the last success, -1 if none */
	double latency_ms;   /* of the last successful probe */
	/* every successful probe's latency since the node appeared, as a histogram over
	 * cluster_latency_bounds_s (cumulative counts, Prometheus-style), their sum and count */
	uint64_t latency_buckets[CLUSTER_LATENCY_BUCKETS];
	double latency_sum_s;
	uint64_t latency_count;
	double changed_at; /* wall time the node's shown data last changed */
	/* cluster_generation() as of this view: while it has not moved, the view is what
	 * cluster_get_node() would return (every change the view shows moves it) */
	uint64_t generation;
	const char *via; /* static: "reverse" (behind NAT, over its channel), else how it
			      * was last heard from: "pull" (a probe) or "push" (a heartbeat) */
	bool joined;     /* it registered itself: its entry is a hosts.d drop-in */
};

void node_view_clear(struct node_view *v);

/* Called after something changed: `node` names the node whose data changed, or is NULL
 * when the set of nodes or the config changed. */
typedef void (*cluster_change_fn)(void *arg, const char *node);

/* Creates the model for `cfg` (borrowed; a reference is taken). Probing starts with
 * cluster_start(). Returns 0 or -errno. */
int cluster_new(struct loop *loop, struct config *cfg, struct cluster **ret);
void cluster_free(struct cluster *c);
/* Adds a listener (at most 4; before cluster_start). Listeners run on whichever thread
 * changed something and must not block. */
void cluster_add_listener(struct cluster *c, cluster_change_fn fn, void *arg);

/* Thread-safe: starts the first probe round and the 1 s tick on the loop thread. */
int cluster_start(struct cluster *c);

/* Loop thread: swaps in a new config (borrowed; a reference is taken). Nodes that keep
 * their name and address keep their state; others appear or vanish. */
void cluster_set_config(struct cluster *c, struct config *cfg);
/* Loop thread: records that a config edit was rejected (msg, or NULL once resolved). */
void cluster_set_config_error(struct cluster *c, const char *msg);

/* Any thread: raises (msg) or clears (NULL) the alert named key ("service training/status",
 * "ledger", ...). An alert that is raised or changes is also an event. */
void cluster_set_alert(struct cluster *c, const char *key, const char *msg);
/* Any thread: the raised alerts as "key: message" lines, appended to out. */
void cluster_render_alerts(struct cluster *c, struct buf *out);

/* Any thread: the config in force. Returns a new reference. */
struct config *cluster_get_config(struct cluster *c);
/* Any thread: the last config error, or NULL. Returns a new string. */
char *cluster_get_config_error(struct cluster *c);

/* Any thread: the node names, sorted. Returns a new NULL-terminated array (free each
 * string and the array). */
char **cluster_list_nodes(struct cluster *c, size_t *ret_n);
/* Any thread: a view of one node. 0, or -ENOENT. */
int cluster_get_node(struct cluster *c, const char *name, struct node_view *ret);
/* Any thread: true when the node exists. */
bool cluster_has_node(struct cluster *c, const char *name);
/* Any thread: wall time node `name`'s shown data last changed (node_view.changed_at),
 * without copying its view; 0 when there is no such node. */
double cluster_node_changed_at(struct cluster *c, const char *name);
/* Any thread: a count that grows at every change of what is shown of the cluster (a
 * node's data, the set of nodes, the config), before the listeners hear of it: what is
 * rendered after reading it is at least as new as that change. */
uint64_t cluster_generation(struct cluster *c);
/* Any thread: a node's level, without copying its view. 0, or -ENOENT. */
int cluster_get_level(struct cluster *c, const char *name, enum node_level *ret);
/* Any thread: true when the node's data is younger than probe.max_age_ms. */
bool cluster_node_is_fresh(struct cluster *c, const char *name);

/* Called once when a refresh finished, on the loop thread: err is 0 and v the node's view
 * as the probe left it (borrowed: valid during the call only), or err is -ENOENT (the node
 * vanished) or -ECANCELED (the model is freed) and v is NULL. */
typedef void (*cluster_refresh_fn)(void *arg, int err, const struct node_view *v);

/* Any thread: makes the node's data fresh (DESIGN §2, "The async contract"). Returns 1 when
 * it is younger than max_age_ms already (done is not called), -ENOENT for an unknown node or
 * another -errno (done is not called), or 0: then done(arg, err, v) runs exactly once on the
 * loop thread when the node's probe finished, at most probe.timeout_ms from now. Joins a
 * probe in flight or starts one, and starts one for every other node whose data is older
 * than max_age_ms, so that reading all nodes' health costs one round of parallel
 * requests. */
int cluster_refresh_node(struct cluster *c, const char *name, cluster_refresh_fn done, void *arg);

/* Any thread: a pushed heartbeat of node `name` (a joined agent's health document, and
 * its system document or NULL; both borrowed, references are taken). It counts as a
 * successful probe; while heartbeats arrive on time the node is not probed. 0, or -ENOENT
 * for a node that is not in the config (yet). */
int cluster_heartbeat(struct cluster *c, const char *name, json_t *health, json_t *system);

/* Any thread: forgets a joined node: deletes its hosts.d drop-in (the config reload then
 * removes it; its finished tasks stay in the history). `why` goes into the event. 0,
 * -ENOENT, -EPERM for a node typed into hosts.json, or -errno. */
int cluster_forget_node(struct cluster *c, const char *name, const char *why);

/* Any thread: a drained node takes no new work and finishes what it has. 0 or -ENOENT. */
int cluster_set_draining(struct cluster *c, const char *name, bool draining);
/* Any thread: probes a node now, without waiting for the answer. 0 or -ENOENT. */
int cluster_probe_now(struct cluster *c, const char *name);

/* One node of an external source (a Slurm cluster), as its owner saw it. Borrowed. */
struct cluster_external {
	const char *name;
	const char *address; /* shown in nodes/NODE/address */
	const char *role;
	enum node_level level; /* draining is applied on top by cluster_set_draining() */
	json_t *health;        /* shown in health; may be NULL */
	json_t *system;        /* shown in info ("cores", "ram_mb" give the tier); may be NULL */
	json_t *reasons;       /* sentences explaining the level; may be NULL */
	bool reachable;        /* its source answered this round */
	double latency_ms;
	const char *error; /* why its source did not answer, or NULL */
};

/* Loop thread: the nodes of external source `owner` (the config's slurm section's name) as
 * listed in one round; replaces the owner's earlier set (nodes it no longer lists leave).
 * Not probed here: a refresh answers from this data at once. Borrows v. */
void cluster_set_external(struct cluster *c, const char *owner, const struct cluster_external *v,
			  size_t n);
/* Any thread: true when `name` is a node of an external source; then *ret_owner (may be
 * NULL) is a new string naming it. */
bool cluster_node_is_external(struct cluster *c, const char *name, char **ret_owner);
struct store;
/* Main thread, before cluster_start: events and drains are kept in `store` (borrowed; it
 * outlives the cluster) from now on; the events and drains kept before a restart are
 * loaded (the newest events.keep events, up to 10000 of them in memory). 0 or -errno. */
int cluster_attach_store(struct cluster *c, struct store *store);

/* Any thread: appends an event line ("<time> <kind> <subject> <message>"). */
void cluster_add_event(struct cluster *c, const char *kind, const char *subject, const char *fmt,
		       ...) __attribute__((format(printf, 4, 5)));
/* Any thread: appends every event with a sequence number above `after` to `out` and
 * returns the last sequence number appended (or `after`). */
uint64_t cluster_render_events(struct cluster *c, uint64_t after, struct buf *out);
/* Any thread: the total size of cluster_render_events(c, 0, ...), and when the last
 * event was added (wall time). */
size_t cluster_events_size(struct cluster *c, double *ret_changed_at);

/* Any thread: when the cluster's set of nodes or config last changed (wall time). */
double cluster_changed_at(struct cluster *c);
/* Any thread: wall time the daemon started. */
double cluster_started_at(struct cluster *c);
