/* Rendering cluster/metrics: the Prometheus text exposition (format 0.0.4) of the nodes,
 * their health documents and the tasks. */
#include "fs/render.h"
#include "fs/render_internal.h"

#include <math.h>

/* Prometheus label values escape backslash, quote and newline. */
static void put_label(struct buf *out, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\' || *s == '"')
			buf_printf(out, "\\%c", *s);
		else if (*s == '\n')
			buf_puts(out, "\\n");
		else
			buf_append(out, s, 1);
	}
}

/* One "# HELP" and "# TYPE" pair (Prometheus text exposition format 0.0.4). */
static void metric_head(struct buf *out, const char *name, const char *type, const char *help)
{
	buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void metric_node(struct buf *out, const char *name, const char *node, double value)
{
	buf_printf(out, "%s{node=\"", name);
	put_label(out, node);
	buf_printf(out, "\"} %.15g\n", value);
}

/* The node table: build info, nodes by status, probes (up, failures in a row, latency
 * histogram, last success). */
static void metrics_probes(struct buf *out, const struct node_view *views, size_t n)
{
	metric_head(out, "clusterfs_build_info", "gauge",
		    "The running clusterfs version, as a label.");
	buf_printf(out, "clusterfs_build_info{version=\"%s\"} 1\n", CLUSTERFS_VERSION);
	metric_head(out, "clusterfs_nodes", "gauge", "Nodes by status.");
	for (int l = NODE_UNKNOWN; l <= NODE_DRAINING; l++) {
		size_t k = 0;
		for (size_t i = 0; i < n; i++)
			k += views[i].level == (enum node_level) l;
		buf_printf(out, "clusterfs_nodes{status=\"%s\"} %zu\n",
			   node_level_name((enum node_level) l), k);
	}
	metric_head(out, "clusterfs_node_up", "gauge",
		    "1 when the last probe of the node succeeded.");
	for (size_t i = 0; i < n; i++)
		metric_node(out, "clusterfs_node_up", views[i].name, views[i].reachable ? 1 : 0);
	metric_head(out, "clusterfs_node_probe_failures", "gauge",
		    "Probes of the node that failed in a row.");
	for (size_t i = 0; i < n; i++)
		metric_node(out, "clusterfs_node_probe_failures", views[i].name, views[i].failures);
	metric_head(out, "clusterfs_node_probe_latency_seconds", "histogram",
		    "Latency of the node's successful probes.");
	for (size_t i = 0; i < n; i++) {
		const struct node_view *v = &views[i];
		for (int b = 0; b <= CLUSTER_LATENCY_BUCKETS; b++) {
			buf_puts(out, "clusterfs_node_probe_latency_seconds_bucket{node=\"");
			put_label(out, v->name);
			if (b < CLUSTER_LATENCY_BUCKETS)
				buf_printf(out, "\",le=\"%g\"} %llu\n", cluster_latency_bounds_s[b],
					   (unsigned long long) v->latency_buckets[b]);
			else
				buf_printf(out, "\",le=\"+Inf\"} %llu\n",
					   (unsigned long long) v->latency_count);
		}
		metric_node(out, "clusterfs_node_probe_latency_seconds_sum", v->name,
			    v->latency_sum_s);
		metric_node(out, "clusterfs_node_probe_latency_seconds_count", v->name,
			    (double) v->latency_count);
	}
	metric_head(out, "clusterfs_node_last_success_timestamp_seconds", "gauge",
		    "Unix time of the last successful probe of the node.");
	for (size_t i = 0; i < n; i++)
		if (views[i].checked_at > 0)
			metric_node(out, "clusterfs_node_last_success_timestamp_seconds",
				    views[i].name, render_round_to(views[i].checked_at, 0.001));
}

/* The numbers of the agents' health documents (absent ones are left out), scaled to the
 * base unit. */
static void metrics_health(struct buf *out, const struct node_view *views, size_t n)
{
	static const struct {
		const char *name, *help;
		double scale;
	} gauges[] = {
		{"clusterfs_node_cpu_usage_ratio", "CPU busy, 0 to 1.", 0.01},
		{"clusterfs_node_cpu_cores", "CPU cores.", 1},
		{"clusterfs_node_memory_used_ratio", "Memory used, 0 to 1.", 0.01},
		{"clusterfs_node_memory_total_bytes", "Memory in total.", 1048576},
		{"clusterfs_node_memory_available_bytes", "Memory available.", 1048576},
		{"clusterfs_node_disk_used_ratio",
		 "Disk of the agent's state directory used, 0 to 1.", 0.01},
		{"clusterfs_node_disk_total_bytes",
		 "Size of the disk of the agent's state directory.", 1048576},
		{"clusterfs_node_disk_free_bytes",
		 "Space free on the disk of the agent's state directory.", 1048576},
		{"clusterfs_node_uptime_seconds", "Time since the node booted.", 1},
		{"clusterfs_node_load1", "One-minute load average.", 1},
	};
	for (size_t g = 0; g < sizeof(gauges) / sizeof(gauges[0]); g++) {
		metric_head(out, gauges[g].name, "gauge", gauges[g].help);
		for (size_t i = 0; i < n; i++) {
			const struct node_metrics *m = &views[i].metrics;
			const double x[] = {
				m->cpu_percent,      m->cores < 0 ? NAN : m->cores,
				m->mem_percent,      m->mem_total_mb < 0 ? NAN : m->mem_total_mb,
				m->mem_available_mb, m->disk_percent,
				m->disk_total_mb,    m->disk_free_mb,
				m->uptime_s,         m->load1,
			};
			_Static_assert(sizeof(x) / sizeof(x[0]) ==
					       sizeof(gauges) / sizeof(gauges[0]),
				       "one value per gauge");
			if (!isnan(x[g]))
				metric_node(out, gauges[g].name, views[i].name,
					    render_round_to(x[g] * gauges[g].scale, 1e-4));
		}
	}
	metric_head(out, "clusterfs_node_gpus", "gauge", "GPUs the node's agent reports.");
	for (size_t i = 0; i < n; i++)
		if (views[i].health)
			metric_node(out, "clusterfs_node_gpus", views[i].name,
				    (double) views[i].metrics.gpus);
}

/* Tasks by state, and by node and state. */
static void metrics_tasks(const struct tree_ctx *ctx, struct buf *out,
			  const struct node_view *views, size_t n)
{
	size_t counts[TASK_N_STATES];
	tasks_count_states(ctx->tasks, NULL, counts);
	metric_head(out, "clusterfs_tasks", "gauge", "Tasks by state.");
	for (int s = 0; s < TASK_N_STATES; s++)
		buf_printf(out, "clusterfs_tasks{state=\"%s\"} %zu\n", task_state_names[s],
			   counts[s]);
	metric_head(out, "clusterfs_node_tasks", "gauge", "Tasks placed on the node, by state.");
	for (size_t i = 0; i < n; i++) {
		size_t here[TASK_N_STATES];
		tasks_count_states(ctx->tasks, views[i].name, here);
		for (int s = 0; s < TASK_N_STATES; s++) {
			buf_puts(out, "clusterfs_node_tasks{node=\"");
			put_label(out, views[i].name);
			buf_printf(out, "\",state=\"%s\"} %zu\n", task_state_names[s], here[s]);
		}
	}
}

/* /cluster/metrics: Prometheus conventions (base units, _seconds/_bytes/_ratio suffixes,
 * HELP and TYPE for each family). */
int render_metrics(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		   double *ret_mtime, uint64_t *ret_seq)
{
	struct cluster *c = ctx->cluster;
	size_t n;
	struct node_view *views = render_all_views(c, &n, ret_mtime);
	metrics_probes(out, views, n);
	metrics_health(out, views, n);
	metrics_tasks(ctx, out, views, n);
	double tmt = tasks_changed_at(ctx->tasks);
	if (tmt > *ret_mtime)
		*ret_mtime = tmt;
	render_free_views(views, n);
	return 0;
}
