/* Rendering: the content of every file, from the cluster model. */
#include "fs/render.h"
#include "fs/render_dashboard.h"
#include "fs/render_internal.h"
#include "fs/render_placement.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define RENDER_INDENT_MAX (4u << 20) /* a larger indented document is written compact */

/* Documents hold what agents sent (at most 1 MiB, 32 levels, per answer); indenting 32
 * levels of tiny objects would multiply that, so an indented rendering past
 * RENDER_INDENT_MAX is replaced by the compact one: a file's size stays near its data's. */
static void put_json(struct buf *out, json_t *doc)
{
	char *s = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
	if (s && strlen(s) > RENDER_INDENT_MAX) {
		free(s);
		s = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
	}
	if (s) {
		buf_puts(out, s);
		free(s);
	}
	buf_puts(out, "\n");
}

static json_t *json_time(double wall)
{
	if (wall <= 0)
		return json_null();
	/* RFC 3339 with milliseconds: scripts compare task times finer than a second */
	char ts[32], out[40];
	clock_format_utc(wall, ts);
	int ms = (int) ((wall - (double) (time_t) wall) * 1000.0);
	snprintf(out, sizeof(out), "%.19s.%03dZ", ts, ms < 0 ? 0 : ms > 999 ? 999 : ms);
	return json_string(out);
}

double render_round_to(double v, double unit)
{
	return round(v / unit) * unit;
}

/* nodes/NODE/health as a new JSON object. */
static json_t *health_doc(const struct node_view *v)
{
	json_t *doc = json_object();
	json_object_set_new(doc, "node", json_string(v->name));
	json_object_set_new(doc, "status", json_string(node_level_name(v->level)));
	json_object_set_new(doc, "reachable", json_boolean(v->reachable));
	json_object_set_new(doc, "checked_at", json_time(v->checked_at));
	/* the age as of the last probe attempt, not of the reading: a document that changes
	 * only when its data does (NFS and SMB clients trust st_size between reads) */
	double age = v->checked_at <= 0                ? -1
		     : v->attempted_at > v->checked_at ? v->attempted_at - v->checked_at
						       : 0;
	json_object_set_new(doc, "age_s",
			    age < 0 ? json_null() : json_real(render_round_to(age, 0.001)));
	json_object_set_new(doc, "latency_ms",
			    v->checked_at > 0 ? json_real(render_round_to(v->latency_ms, 0.001))
					      : json_null());
	json_object_set_new(doc, "reasons", json_incref(v->reasons));
	json_object_set_new(doc, "failures", json_integer(v->failures));
	json_object_set_new(doc, "last_error",
			    v->last_error ? json_string(v->last_error) : json_null());
	if (v->health) {
		static const char *const keys[] = {
			"cpu_percent",      "cores",        "load",      "mem_total_mb",
			"mem_available_mb", "mem_percent",  "disk_path", "disk_total_mb",
			"disk_free_mb",     "disk_percent", "gpus",      "uptime_s",
			"tasks_running",    "version",      "hostname",  "slurm",
		};
		for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
			json_t *x = json_object_get(v->health, keys[i]);
			if (x)
				json_object_set(doc, keys[i], x);
		}
	}
	return doc;
}

static void put_health(const struct tree_ctx *ctx, const struct node_view *v, struct buf *out)
{
	json_t *doc = health_doc(v);
	put_json(out, doc);
	json_decref(doc);
}

static void put_node_info(const struct tree_ctx *ctx, const struct node_view *v, struct buf *out)
{
	json_t *doc = json_object();
	json_object_set_new(doc, "name", json_string(v->name));
	if (v->display_name)
		json_object_set_new(doc, "display_name", json_string(v->display_name));
	json_object_set_new(doc, "address", json_string(v->address));
	json_object_set_new(doc, "port", json_integer(v->port));
	json_object_set_new(doc, "role", json_string(v->role));
	json_object_set_new(doc, "tier", json_string(v->tier));
	json_object_set_new(doc, "capabilities", json_incref(v->capabilities));
	/* how the node is reached: pulled by probes, or pushing heartbeats; and since when */
	json_object_set_new(doc, "reached", json_string(v->via ? v->via : "pull"));
	json_object_set_new(doc, "last_heard_at", json_time(v->checked_at));
	json_object_set_new(doc, "joined", json_boolean(v->joined));
	if (v->system) {
		const char *k;
		json_t *x;
		json_object_foreach (v->system, k, x) {
			if (strcmp(k, "name") != 0 && !json_object_get(doc, k))
				json_object_set(doc, k, x);
		}
	} else {
		json_object_set_new(doc, "system", json_null());
		json_object_set_new(doc, "reason",
				    json_string("not known yet: the agent has not "
						"answered a system query"));
	}
	put_json(out, doc);
	json_decref(doc);
}

/* The fresh view of one node, set by fs/pending.c on the loop thread while a node
 * refresh's callback finishes its requests (DESIGN §2, "The async contract"). */
static __thread const struct node_view *render_fresh_view;

void render_fresh_view_set(const struct node_view *v)
{
	render_fresh_view = v;
}

/* A file of a node's directory, from the node's view: put appends it; the mtime is the
 * node's. 0 or -ENOENT. */
static int node_render(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		       double *ret_mtime,
		       void (*put)(const struct tree_ctx *ctx, const struct node_view *v,
				   struct buf *out))
{
	const struct node_view *fresh = render_fresh_view;
	if (fresh && strcmp(fresh->name, e->node) == 0 &&
	    fresh->generation == cluster_generation(ctx->cluster)) {
		/* the view a refresh just handed over, and nothing changed since: the model is
		 * not asked again (after a drain from another thread, say, it is) */
		*ret_mtime = fresh->changed_at;
		put(ctx, fresh, out);
		return 0;
	}
	struct node_view v;
	int r = cluster_get_node(ctx->cluster, e->node, &v);
	if (r < 0)
		return r;
	*ret_mtime = v.changed_at;
	put(ctx, &v, out);
	node_view_clear(&v);
	return 0;
}

static void put_status(const struct tree_ctx *ctx, const struct node_view *v, struct buf *out)
{
	buf_printf(out, "%s\n", node_level_name(v->level));
}

int render_node_status(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		       double *ret_mtime, uint64_t *ret_seq)
{
	return node_render(ctx, e, out, ret_mtime, put_status);
}

int render_node_health(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		       double *ret_mtime, uint64_t *ret_seq)
{
	return node_render(ctx, e, out, ret_mtime, put_health);
}

int render_node_info(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		     double *ret_mtime, uint64_t *ret_seq)
{
	return node_render(ctx, e, out, ret_mtime, put_node_info);
}

static void put_address(const struct tree_ctx *ctx, const struct node_view *v, struct buf *out)
{
	buf_printf(out, "%s:%d\n", v->address, v->port);
}

int render_node_address(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
			double *ret_mtime, uint64_t *ret_seq)
{
	return node_render(ctx, e, out, ret_mtime, put_address);
}

static void put_role(const struct tree_ctx *ctx, const struct node_view *v, struct buf *out)
{
	buf_printf(out, "%s\n", v->role);
}

int render_node_role(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		     double *ret_mtime, uint64_t *ret_seq)
{
	return node_render(ctx, e, out, ret_mtime, put_role);
}

static void put_tier(const struct tree_ctx *ctx, const struct node_view *v, struct buf *out)
{
	buf_printf(out, "%s\n", v->tier);
}

int render_node_tier(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		     double *ret_mtime, uint64_t *ret_seq)
{
	return node_render(ctx, e, out, ret_mtime, put_tier);
}

static void put_capabilities(const struct tree_ctx *ctx, const struct node_view *v, struct buf *out)
{
	for (size_t i = 0; i < json_array_size(v->capabilities); i++)
		buf_printf(out, "%s\n", json_string_value(json_array_get(v->capabilities, i)));
}

int render_node_capabilities(const struct tree_ctx *ctx, const struct tree_entry *e,
			     struct buf *out, double *ret_mtime, uint64_t *ret_seq)
{
	return node_render(ctx, e, out, ret_mtime, put_capabilities);
}

/* One number, as scripts want it: the score routing uses. */
static void put_reliability(const struct tree_ctx *ctx, const struct node_view *v, struct buf *out)
{
	buf_printf(out, "%.1f\n", tasks_node_reliability(ctx->tasks, v->name, NULL, NULL));
}

int render_node_reliability(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
			    double *ret_mtime, uint64_t *ret_seq)
{
	int r = node_render(ctx, e, out, ret_mtime, put_reliability);
	double tmt = tasks_changed_at(ctx->tasks);
	if (r == 0 && tmt > *ret_mtime)
		*ret_mtime = tmt;
	return r;
}

/* Views of every node, in name order. */
struct node_view *render_all_views(struct cluster *c, size_t *ret_n, double *ret_mtime)
{
	size_t n = 0;
	char **names = cluster_list_nodes(c, &n);
	struct node_view *views = xcalloc(n + 1, sizeof(*views));
	size_t k = 0;
	double mtime = cluster_changed_at(c);
	for (size_t i = 0; i < n; i++) {
		if (cluster_get_node(c, names[i], &views[k]) == 0) {
			if (views[k].changed_at > mtime)
				mtime = views[k].changed_at;
			k++;
		}
		free(names[i]);
	}
	free(names);
	*ret_n = k;
	*ret_mtime = mtime;
	return views;
}

void render_free_views(struct node_view *views, size_t n)
{
	for (size_t i = 0; i < n; i++)
		node_view_clear(&views[i]);
	free(views);
}

/* /health: one object keyed by node name, each value that node's health document. */
int render_all_health(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		      double *ret_mtime, uint64_t *ret_seq)
{
	size_t n;
	struct node_view *views = render_all_views(ctx->cluster, &n, ret_mtime);
	json_t *doc = json_object();
	for (size_t i = 0; i < n; i++)
		json_object_set_new(doc, views[i].name, health_doc(&views[i]));
	put_json(out, doc);
	json_decref(doc);
	render_free_views(views, n);
	return 0;
}

int render_stats(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		 double *ret_mtime, uint64_t *ret_seq)
{
	struct cluster *c = ctx->cluster;
	size_t n;
	struct node_view *views = render_all_views(c, &n, ret_mtime);
	struct config *cfg = cluster_get_config(c);
	json_t *doc = json_object();
	json_object_set_new(doc, "cluster", json_string(cfg->cluster));
	json_t *nodes = json_object();
	json_object_set_new(nodes, "total", json_integer((json_int_t) n));
	for (int l = NODE_UNKNOWN; l <= NODE_DRAINING; l++)
		json_object_set_new(nodes, node_level_name((enum node_level) l), json_integer(0));
	size_t reachable = 0;
	double cores = 0, ram = 0, gpus = 0, cpu_busy = 0;
	for (size_t i = 0; i < n; i++) {
		const char *lv = node_level_name(views[i].level);
		json_object_set_new(
			nodes, lv,
			json_integer(json_integer_value(json_object_get(nodes, lv)) + 1));
		if (views[i].reachable)
			reachable++;
		/* capacities were range-checked when the document arrived (a node claiming
		 * 1e300 cores adds nothing); a busy share counts only within 0..100 % */
		const struct node_metrics *m = &views[i].metrics;
		double nc = m->cores > 0 ? m->cores : 0;
		cores += nc;
		if (m->cpu_percent >= 0 && m->cpu_percent <= 100)
			cpu_busy += nc * m->cpu_percent / 100.0;
		ram += m->mem_total_mb > 0 ? m->mem_total_mb : 0;
		gpus += m->gpus;
	}
	json_object_set_new(nodes, "reachable", json_integer((json_int_t) reachable));
	json_object_set_new(doc, "nodes", nodes);
	json_t *cap = json_object();
	json_object_set_new(cap, "cores", json_integer((json_int_t) cores));
	json_object_set_new(cap, "cores_busy", json_real(render_round_to(cpu_busy, 0.01)));
	json_object_set_new(cap, "ram_mb", json_integer((json_int_t) ram));
	json_object_set_new(cap, "gpus", json_integer((json_int_t) gpus));
	json_object_set_new(doc, "capacity", cap);
	json_t *tasks = json_object();
	/* counts kept as states change: no walk over the history */
	size_t by_state[TASK_N_STATES], total = 0;
	tasks_count_states(ctx->tasks, NULL, by_state);
	for (int i = 0; i < TASK_N_STATES; i++)
		total += by_state[i];
	json_object_set_new(tasks, "total", json_integer((json_int_t) total));
	json_object_set_new(tasks, "queued", json_integer((json_int_t) by_state[0]));
	json_object_set_new(tasks, "running",
			    json_integer((json_int_t) (by_state[1] + by_state[2])));
	json_object_set_new(tasks, "done", json_integer((json_int_t) by_state[3]));
	json_object_set_new(
		tasks, "failed",
		json_integer((json_int_t) (by_state[4] + by_state[5] + by_state[6] + by_state[7])));
	json_object_set_new(doc, "tasks", tasks);
	json_object_set_new(doc, "tasks_per_node", render_tasks_per_node(ctx));
	double tmt = tasks_changed_at(ctx->tasks);
	if (tmt > *ret_mtime)
		*ret_mtime = tmt;
	json_object_set_new(doc, "started_at", json_time(cluster_started_at(c)));
	put_json(out, doc);
	json_decref(doc);
	config_unref(cfg);
	render_free_views(views, n);
	return 0;
}

int render_alerts(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		  double *ret_mtime, uint64_t *ret_seq)
{
	struct cluster *c = ctx->cluster;
	size_t n;
	struct node_view *views = render_all_views(c, &n, ret_mtime);
	char *cerr = cluster_get_config_error(c);
	if (cerr) {
		buf_printf(out, "config error: %s (the last good config stays in force)\n", cerr);
		free(cerr);
	}
	for (size_t i = 0; i < n; i++) {
		enum node_level l = views[i].level;
		if (l == NODE_HEALTHY || l == NODE_UNKNOWN || l == NODE_DRAINING)
			continue;
		buf_printf(out, "node %s %s:", views[i].name, node_level_name(l));
		for (size_t k = 0; k < json_array_size(views[i].reasons); k++)
			buf_printf(out, "%s %s", k ? ";" : "",
				   json_string_value(json_array_get(views[i].reasons, k)));
		buf_puts(out, "\n");
	}
	cluster_render_alerts(c, out);
	/* an alert comes and goes with an event: the file's mtime moves with them */
	double emt = 0;
	cluster_events_size(c, &emt);
	if (emt > *ret_mtime)
		*ret_mtime = emt;
	render_free_views(views, n);
	return 0;
}

static void render_topology(const struct tree_ctx *ctx, bool dot, struct buf *out,
			    double *ret_mtime)
{
	struct cluster *c = ctx->cluster;
	size_t n;
	struct node_view *views = render_all_views(c, &n, ret_mtime);
	struct config *cfg = cluster_get_config(c);
	if (dot) {
		buf_printf(out, "digraph \"%s\" {\n\trankdir=LR;\n\t\"clusterfs\" [shape=box];\n",
			   cfg->cluster);
		for (size_t i = 0; i < n; i++) {
			buf_printf(out, "\t\"%s\" [label=\"%s\\n%s %s\\n%s\"];\n", views[i].name,
				   views[i].name, views[i].role, views[i].tier,
				   node_level_name(views[i].level));
			buf_printf(out, "\t\"clusterfs\" -> \"%s\" [label=\"agent :%d\"];\n",
				   views[i].name, views[i].port);
		}
		buf_puts(out, "}\n");
	} else {
		json_t *doc = json_object();
		json_object_set_new(doc, "cluster", json_string(cfg->cluster));
		json_t *nodes = json_array(), *links = json_array();
		for (size_t i = 0; i < n; i++) {
			const struct cfg_host *h = config_find_host(cfg, views[i].name);
			json_t *o = json_object();
			json_object_set_new(o, "name", json_string(views[i].name));
			json_object_set_new(o, "address", json_string(views[i].address));
			json_object_set_new(o, "role", json_string(views[i].role));
			json_object_set_new(o, "tier", json_string(views[i].tier));
			json_object_set_new(o, "status",
					    json_string(node_level_name(views[i].level)));
			json_t *svcs = json_object();
			for (size_t k = 0; h && k < h->n_services; k++)
				json_object_set_new(svcs, h->services[k].name,
						    json_integer(h->services[k].port));
			json_object_set_new(o, "services", svcs);
			/* the models its servers were last seen to hold (listing models/ asks) */
			size_t nm = 0;
			char **files = models_node_list(ctx->models, views[i].name, &nm);
			json_t *models = json_array();
			for (size_t k = 0; k < nm; k++) {
				char *name = models_decode_name(files[k]);
				json_array_append_new(models, json_string(name ? name : files[k]));
				free(name);
				free(files[k]);
			}
			free(files);
			json_object_set_new(o, "models", models);
			json_array_append_new(nodes, o);
			json_t *link = json_object();
			json_object_set_new(link, "from", json_string("clusterfs"));
			json_object_set_new(link, "to", json_string(views[i].name));
			json_object_set_new(link, "via", json_string("agent"));
			json_object_set_new(link, "up", json_boolean(views[i].reachable));
			json_array_append_new(links, link);
		}
		json_object_set_new(doc, "nodes", nodes);
		json_object_set_new(doc, "links", links);
		put_json(out, doc);
		json_decref(doc);
	}
	config_unref(cfg);
	render_free_views(views, n);
}

int render_topology_json(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
			 double *ret_mtime, uint64_t *ret_seq)
{
	render_topology(ctx, false, out, ret_mtime);
	return 0;
}

int render_topology_dot(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
			double *ret_mtime, uint64_t *ret_seq)
{
	render_topology(ctx, true, out, ret_mtime);
	return 0;
}

static const char readme_text[] =
	"clusterfs: this cluster as a directory tree\n"
	"\n"
	"Every file is rendered from what the control plane knows when you open it; nothing\n"
	"here waits longer than the probe timeout for a host.\n"
	"\n"
	"  README          this text\n"
	"  config          the configuration in force (secrets redacted)\n"
	"  stats           JSON: nodes by status, capacity\n"
	"  alerts          one active alert per line (empty when all is well)\n"
	"  events          what happened, one line per event; `tail -f events` follows it\n"
	"  metrics         Prometheus text exposition\n"
	"  topology.json   nodes, roles, services, links (topology.dot for graphviz)\n"
	"  nodes/NODE/\n"
	"    status        one word: healthy warning critical unhealthy stale offline draining\n"
	"                  (unknown until the first probe answered)\n"
	"    health        JSON: live status; opening it probes the node unless its data is\n"
	"                  fresh, and answers with the last known state, its age and the\n"
	"                  reason when the node does not answer in time\n"
	"    info          JSON: hostname, os, kernel, cores, ram, disks, gpus, agent version\n"
	"    address       HOST:PORT of the node's agent\n"
	"    role  tier    one word each\n"
	"    capabilities  one per line\n"
	"    reliability   0..100 from the node's task history (routing uses it)\n"
	"    tasks/        symlinks to the tasks placed here\n"
	"    ctl           write: drain | resume | probe | remove (a joined node)\n"
	"    models/       one JSON file per model on this node; ctl: pull | delete | load |\n"
	"                  unload NAME, and reading ctl shows what runs and how far\n"
	"  models/MODEL/   nodes (has it), loaded (holds it in memory), info\n"
	"  ledger/         entries/STEP, best/METRIC, summary, source; write a JSON entry to\n"
	"                  record to record a checkpoint (kept and delivered while the\n"
	"                  ledger host is away)\n"
	"  services/NAME/FILE  REST endpoints from the config: reading GETs, writing POSTs\n"
	"  placement       JSON: the nodes ranked for a default task, each score's parts, and\n"
	"                  why a node is not eligible; write a spec and read back on the same\n"
	"                  handle to rank for it (nothing is submitted)\n"
	"  dashboard.html  a page for a browser: serve this directory with any static web\n"
	"                  server (python3 -m http.server -d /cluster) and open it\n"
	"  recent-tasks.json  JSON: the tasks in flight and the newest 50 (what the\n"
	"                  dashboard shows)\n"
	"  backup/state.db a consistent copy of the store, made when it is opened: cp it\n"
	"  knowledge/      small versioned documents every node holds (tasks read them at\n"
	"                  $CLUSTERFS_KNOWLEDGE); a close commits a version; every version\n"
	"                  is in .versions/NAME/N; a writer behind the latest gets EBUSY and\n"
	"                  NAME.conflict\n"
	"  tasks/\n"
	"    new/          drop NAME.json here to submit task NAME; a rejected spec stays,\n"
	"                  with NAME.error saying why\n"
	"    ID/           spec status node exit_code info stdout stderr result wait ctl\n"
	"                  files/ (wait blocks until the task ends; ctl takes cancel |\n"
	"                  retry | priority P0..P3; result: a prompt task's answer as JSON;\n"
	"                  files/: its outputs)\n"
	"    queued/ running/ done/ failed/   symlinks by state\n"
	"\n"
	"Examples:\n"
	"  cat nodes/*/health\n"
	"  grep -l critical nodes/*/status\n"
	"  tail -f events\n"
	"  echo '{\"cmd\": \"make test\"}' > tasks/new/test.json; cat tasks/test/wait\n"
	"  echo '{\"model\": \"qwen3:8b\", \"prompt\": \"Why?\"}' > tasks/new/q.json;\n"
	"      tail -f tasks/q/stdout\n";

static json_t *json_time_or_null(double t)
{
	return t > 0 ? json_time(t) : json_null();
}

/* A file of a task's directory, from the task's view: put (NULL: none) appends it; the
 * mtime is the task's. 0 or -ENOENT. */
static int task_render(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		       double *ret_mtime, void (*put)(const struct task_view *v, struct buf *out))
{
	struct task_view v;
	int r = tasks_get(ctx->tasks, e->task, &v);
	if (r < 0)
		return r;
	*ret_mtime = v.changed_at;
	if (put)
		put(&v, out);
	task_view_clear(&v);
	return 0;
}

static void put_spec(const struct task_view *v, struct buf *out)
{
	put_json(out, v->spec);
}

int render_task_spec(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		     double *ret_mtime, uint64_t *ret_seq)
{
	return task_render(ctx, e, out, ret_mtime, put_spec);
}

static void put_state(const struct task_view *v, struct buf *out)
{
	buf_printf(out, "%s\n", v->state);
}

int render_task_status(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		       double *ret_mtime, uint64_t *ret_seq)
{
	return task_render(ctx, e, out, ret_mtime, put_state);
}

static void put_node(const struct task_view *v, struct buf *out)
{
	buf_printf(out, "%s\n", v->node ? v->node : "");
}

int render_task_node(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		     double *ret_mtime, uint64_t *ret_seq)
{
	return task_render(ctx, e, out, ret_mtime, put_node);
}

static void put_exit_code(const struct task_view *v, struct buf *out)
{
	if (v->exit_code >= 0)
		buf_printf(out, "%d\n", v->exit_code);
	else
		buf_puts(out, "\n");
}

int render_task_exit_code(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
			  double *ret_mtime, uint64_t *ret_seq)
{
	return task_render(ctx, e, out, ret_mtime, put_exit_code);
}

static void put_task_info(const struct task_view *v, struct buf *out)
{
	json_t *doc = json_object();
	json_object_set_new(doc, "id", json_string(v->id));
	json_object_set_new(doc, "state", json_string(v->state));
	json_object_set_new(doc, "node", v->node ? json_string(v->node) : json_null());
	json_object_set_new(doc, "exit_code",
			    v->exit_code >= 0 ? json_integer(v->exit_code) : json_null());
	char prio[4];
	snprintf(prio, sizeof(prio), "P%d", v->priority);
	json_object_set_new(doc, "priority", json_string(prio));
	json_object_set_new(doc, "attempts", json_integer(v->attempts));
	json_object_set_new(doc, "submitter_uid", json_integer((json_int_t) v->uid));
	json_object_set_new(doc, "submitter", v->user ? json_string(v->user) : json_null());
	/* who it runs as on its node: a user name, or null for the agent's own user */
	json_object_set_new(doc, "run_as", v->run_as ? json_string(v->run_as) : json_null());
	json_object_set_new(doc, "submitted_at", json_time_or_null(v->submitted_at));
	json_object_set_new(doc, "started_at", json_time_or_null(v->started_at));
	json_object_set_new(doc, "finished_at", json_time_or_null(v->finished_at));
	json_object_set_new(doc, "reason", v->reason ? json_string(v->reason) : json_null());
	json_object_set_new(doc, "placement",
			    v->placement ? json_string(v->placement) : json_null());
	if (v->parent)
		json_object_set_new(doc, "parent", json_string(v->parent));
	if (v->children)
		json_object_set(doc, "children", v->children);
	json_object_set_new(doc, "dispatch_id",
			    v->dispatch_id ? json_string(v->dispatch_id) : json_null());
	/* a Slurm job's id, state and node, as slurmrestd last said */
	if (json_object_get(v->remote, "slurm_job_id"))
		json_object_set_new(
			doc, "slurm",
			json_pack("{sO? sO? sO? so? so?}", "job_id",
				  json_object_get(v->remote, "slurm_job_id"), "state",
				  json_object_get(v->remote, "slurm_state"), "node",
				  json_object_get(v->remote, "slurm_node"), "reason",
				  json_deep_copy(json_object_get(v->remote, "slurm_reason")),
				  "times",
				  json_deep_copy(json_object_get(v->remote, "slurm_times"))));
	json_object_set_new(doc, "stdout_bytes", json_integer((json_int_t) v->stdout_len));
	json_object_set_new(doc, "stderr_bytes", json_integer((json_int_t) v->stderr_len));
	json_object_set(doc, "spec", v->spec);
	put_json(out, doc);
	json_decref(doc);
}

int render_task_info(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		     double *ret_mtime, uint64_t *ret_seq)
{
	return task_render(ctx, e, out, ret_mtime, put_task_info);
}

/* stdout and stderr as they are now: the task's, kept or fetched so far. */
static int render_output(const struct tree_ctx *ctx, const struct tree_entry *e, const char *which,
			 struct buf *out, double *ret_mtime)
{
	int r = task_render(ctx, e, out, ret_mtime, NULL);
	if (r < 0)
		return r;
	return tasks_read_output(ctx->tasks, e->task, which, 0, out);
}

int render_task_stdout(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		       double *ret_mtime, uint64_t *ret_seq)
{
	return render_output(ctx, e, "stdout", out, ret_mtime);
}

int render_task_stderr(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		       double *ret_mtime, uint64_t *ret_seq)
{
	return render_output(ctx, e, "stderr", out, ret_mtime);
}

int render_task_result(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		       double *ret_mtime, uint64_t *ret_seq)
{
	return render_output(ctx, e, "result", out, ret_mtime);
}

static void put_ctl_usage(const struct task_view *v, struct buf *out)
{
	buf_puts(out, "write one of: cancel | retry | priority P0..P3\n");
}

int render_task_ctl(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		    double *ret_mtime, uint64_t *ret_seq)
{
	return task_render(ctx, e, out, ret_mtime, put_ctl_usage);
}

/* "STATE EXIT_CODE" once the task ended; empty while it runs. */
static void put_wait(const struct task_view *v, struct buf *out)
{
	if (task_state_is_final(v->state))
		buf_printf(out, "%s %d\n", v->state, v->exit_code);
}

int render_task_wait(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		     double *ret_mtime, uint64_t *ret_seq)
{
	return task_render(ctx, e, out, ret_mtime, put_wait);
}

int render_readme(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		  double *ret_mtime, uint64_t *ret_seq)
{
	buf_puts(out, readme_text);
	return 0;
}

int render_config(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		  double *ret_mtime, uint64_t *ret_seq)
{
	struct config *cfg = cluster_get_config(ctx->cluster);
	char *s = config_render(cfg);
	buf_puts(out, s);
	if (s[0] && s[strlen(s) - 1] != '\n')
		buf_puts(out, "\n");
	free(s);
	config_unref(cfg);
	return 0;
}

int render_events(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		  double *ret_mtime, uint64_t *ret_seq)
{
	uint64_t seq = cluster_render_events(ctx->cluster, 0, out);
	cluster_events_size(ctx->cluster, ret_mtime);
	if (ret_seq)
		*ret_seq = seq;
	return 0;
}

int render_node_ctl(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		    double *ret_mtime, uint64_t *ret_seq)
{
	buf_puts(out, "write one of: drain | resume | probe | remove\n");
	return 0;
}

int render_service_file(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
			double *ret_mtime, uint64_t *ret_seq)
{
	services_last_answer(ctx->services, e->name, e->file, out);
	return 0;
}

int render_ledger_record(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
			 double *ret_mtime, uint64_t *ret_seq)
{
	buf_puts(out, "write a JSON entry to record a checkpoint, e.g.\n"
		      "{\"step\": 1000, \"metrics\": {\"val_loss\": 0.61}, "
		      "\"path\": \"/ckpt/step-1000\"}\n");
	return 0;
}

int render_dashboard_file(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
			  double *ret_mtime, uint64_t *ret_seq)
{
	render_dashboard(out);
	return 0;
}

int render_recent_tasks_file(const struct tree_ctx *ctx, const struct tree_entry *e,
			     struct buf *out, double *ret_mtime, uint64_t *ret_seq)
{
	render_recent_tasks(ctx, out);
	return 0;
}

/* placement moves with the nodes' data and the tasks'. */
int render_placement_file(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
			  double *ret_mtime, uint64_t *ret_seq)
{
	char err[512];
	double tmt = tasks_changed_at(ctx->tasks);
	*ret_mtime = cluster_changed_at(ctx->cluster);
	if (tmt > *ret_mtime)
		*ret_mtime = tmt;
	render_placement(ctx, NULL, 0, out, err, sizeof(err));
	return 0;
}

/* The copy is made at open (fs/backup.c): its size is not known before. */
int render_backup_state(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
			double *ret_mtime, uint64_t *ret_seq)
{
	*ret_mtime = clock_wall_s();
	return 0;
}

/* The wall time the data behind a row last changed, as its mtime source says. */
static double row_mtime(const struct tree_ctx *ctx, enum tree_mtime source)
{
	switch (source) {
	case TREE_MTIME_CLUSTER: return cluster_changed_at(ctx->cluster);
	case TREE_MTIME_TASKS: return tasks_changed_at(ctx->tasks);
	case TREE_MTIME_DRAFTS: return drafts_changed_at(ctx->drafts);
	case TREE_MTIME_LEDGER: return ledger_changed_at(ctx->ledger);
	case TREE_MTIME_MODELS: return models_changed_at(ctx->models);
	default: return cluster_started_at(ctx->cluster);
	}
}

double render_mtime(const struct tree_ctx *ctx, const struct tree_entry *e)
{
	return row_mtime(ctx, e->row->mtime);
}

int render_file(const struct tree_ctx *ctx, const struct tree_entry *e, struct buf *out,
		double *ret_mtime, uint64_t *ret_seq)
{
	*ret_mtime = render_mtime(ctx, e);
	if (!e->row->render)
		return -EISDIR;
	return e->row->render(ctx, e, out, ret_mtime, ret_seq);
}

int render_stat(const struct tree_ctx *ctx, const struct tree_entry *e, size_t *ret_size,
		double *ret_mtime)
{
	if (e->kind == TREE_EVENTS) {
		*ret_size = cluster_events_size(ctx->cluster, ret_mtime);
		return 0;
	}
	struct buf b;
	buf_init(&b);
	int r = render_file(ctx, e, &b, ret_mtime, NULL);
	if (r == 0)
		*ret_size = b.len;
	buf_free(&b);
	return r;
}
