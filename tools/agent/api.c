/* The node API: JSON documents built from sysinfo readings. Field names are a contract
 * with the control plane. */
#include "tools/agent/api.h"
#include "tools/agent/staging.h"

#include "backend/util.h"
#include "tools/agent/knowledge.h"
#include "httpd/agent_api.h"
#include "tools/agent/ledger.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Percentages are rounded to 0.01: more digits would be noise. */
static double percent_round(double p)
{
	return round(p * 100.0) / 100.0;
}

static json_t *json_mb(uint64_t bytes)
{
	return json_integer((json_int_t) (bytes / (1024 * 1024)));
}

/* A JSON string; bytes that are not valid UTF-8 text become '?' rather than failing the
 * whole document (hostnames and GPU names come from outside). */
static json_t *json_text(const char *s)
{
	json_t *v = json_string(s);
	if (v)
		return v;
	char *copy = xstrdup(s);
	for (char *p = copy; *p; p++)
		if ((unsigned char) *p < 0x20 || (unsigned char) *p >= 0x7f)
			*p = '?';
	v = json_string(copy);
	free(copy);
	return v;
}

/* A number from nvidia-smi: null when unavailable, an integer when it is one. */
static json_t *json_measure(double v)
{
	if (isnan(v))
		return json_null();
	if (v == floor(v) && fabs(v) < 1e15)
		return json_integer((json_int_t) v);
	return json_real(v);
}

/* doc[key] = value, stealing value. A failure (out of memory) clears *ok, so that one
 * check at the end covers a whole document. */
static void json_put(json_t *doc, const char *key, json_t *value, bool *ok)
{
	if (!doc || !value || json_object_set_new(doc, key, value) < 0) {
		if (!doc)
			json_decref(value);
		*ok = false;
	}
}

/* Appends value to array, stealing value; clears *ok on failure. */
static void json_push(json_t *array, json_t *value, bool *ok)
{
	if (!array || !value || json_array_append_new(array, value) < 0) {
		if (!array)
			json_decref(value);
		*ok = false;
	}
}

/* Hands a finished document over: *ret_doc and 0, or -ENOMEM with a sentence in errbuf
 * when building it failed (ok false, as json_put() and json_push() leave it). Steals doc. */
static int api_doc_done(json_t *doc, bool ok, json_t **ret_doc, char *errbuf, size_t errlen)
{
	if (!ok) {
		json_decref(doc);
		snprintf(errbuf, errlen, "out of memory");
		return -ENOMEM;
	}
	*ret_doc = doc;
	return 0;
}

/* Answers a GET with the document `build` makes (200), or with its sentence (500). */
static int api_reply_doc(struct request *req, struct response *resp,
			 int (*build)(const struct api_context *ctx, json_t **ret_doc, char *errbuf,
				      size_t errlen))
{
	char err[256];
	json_t *doc = NULL;
	int r = build(req->userdata, &doc, err, sizeof(err));
	if (r < 0) {
		response_set_error(resp, 500, "%s", err);
		return 0;
	}
	return response_set_json(resp, 200, doc);
}

static void host_get_name(char *out, size_t outlen)
{
	if (gethostname(out, outlen) < 0)
		snprintf(out, outlen, "unknown");
	out[outlen - 1] = '\0';
}

/* The "gpus" array: every field for health, the inventory ones for system. */
static json_t *api_gpus_json(const struct sysinfo_sample *smp, bool full, bool *ok)
{
	json_t *gpus = json_array();
	if (!gpus)
		*ok = false;
	for (size_t i = 0; gpus && i < smp->n_gpus; i++) {
		const struct sysinfo_gpu *g = &smp->gpus[i];
		json_t *o = json_object();
		json_put(o, "index", json_integer(g->index), ok);
		json_put(o, "name", json_text(g->name), ok);
		if (full) {
			json_put(o, "util_percent", json_measure(g->util_percent), ok);
			json_put(o, "mem_used_mb", json_measure(g->mem_used_mb), ok);
		}
		json_put(o, "mem_total_mb", json_measure(g->mem_total_mb), ok);
		if (full)
			json_put(o, "temp_c", json_measure(g->temp_c), ok);
		json_push(gpus, o, ok);
	}
	return gpus;
}

/* GET /api/node/health: the load figures the control plane schedules by. */
int api_health_doc(const struct api_context *ctx, json_t **ret_doc, char *errbuf, size_t errlen)
{
	char hostname[HOST_NAME_MAX + 1];
	struct sysinfo_sample smp;
	struct sysinfo_mem mem;
	struct sysinfo_disk disk;
	double uptime, load[3];
	bool ok = true;
	int r;

	if ((r = sysinfo_read_uptime(&uptime)) < 0) {
		snprintf(errbuf, errlen, "cannot read /proc/uptime: %s", strerror(-r));
		return r;
	}
	if ((r = sysinfo_read_loadavg(load)) < 0) {
		snprintf(errbuf, errlen, "cannot read /proc/loadavg: %s", strerror(-r));
		return r;
	}
	if ((r = sysinfo_read_mem(&mem)) < 0) {
		snprintf(errbuf, errlen, "cannot read /proc/meminfo: %s", strerror(-r));
		return r;
	}
	if ((r = sysinfo_read_disk(ctx->state_dir, &disk)) < 0) {
		snprintf(errbuf, errlen, "cannot read the filesystem of %s: %s", ctx->state_dir,
			 strerror(-r));
		return r;
	}
	sysinfo_sampler_get(ctx->sampler, &smp);
	host_get_name(hostname, sizeof(hostname));

	uint64_t mem_avail = mem.available_kb < mem.total_kb ? mem.available_kb : mem.total_kb;
	uint64_t disk_avail = disk.avail < disk.total ? disk.avail : disk.total;
	double mem_percent = 100.0 * (double) (mem.total_kb - mem_avail) / (double) mem.total_kb;
	double disk_percent =
		disk.total ? 100.0 * (double) (disk.total - disk_avail) / (double) disk.total : 0.0;

	json_t *doc = json_object();
	json_put(doc, "name", json_text(ctx->name), &ok);
	json_put(doc, "hostname", json_text(hostname), &ok);
	json_put(doc, "version", json_string(CLUSTERFS_VERSION), &ok);
	json_put(doc, "time", json_real(clock_wall_s()), &ok);
	json_put(doc, "uptime_s", json_real(uptime), &ok);
	json_put(doc, "cores", json_integer(sysinfo_count_cpus()), &ok);
	json_put(doc, "cpu_percent", json_real(percent_round(smp.cpu_percent)), &ok);
	json_put(doc, "load", json_pack("[f,f,f]", load[0], load[1], load[2]), &ok);
	json_put(doc, "mem_total_mb", json_integer((json_int_t) (mem.total_kb / 1024)), &ok);
	json_put(doc, "mem_available_mb", json_integer((json_int_t) (mem_avail / 1024)), &ok);
	json_put(doc, "mem_percent", json_real(percent_round(mem_percent)), &ok);
	json_put(doc, "disk_path", json_text(ctx->state_dir), &ok);
	json_put(doc, "disk_total_mb", json_mb(disk.total), &ok);
	json_put(doc, "disk_free_mb", json_mb(disk_avail), &ok);
	json_put(doc, "disk_percent", json_real(percent_round(disk_percent)), &ok);
	json_put(doc, "gpus", api_gpus_json(&smp, true, &ok), &ok);
	json_put(doc, "tasks_running", json_integer((json_int_t) tasks_count_running(ctx->tasks)),
		 &ok);
	json_put(doc, "knowledge_seq", json_integer((json_int_t) knowledge_replica_seq()), &ok);
	return api_doc_done(doc, ok, ret_doc, errbuf, errlen);
}

static int api_get_health(struct request *req, struct response *resp)
{
	return api_reply_doc(req, resp, api_health_doc);
}

/* GET /api/node/system: the inventory, which changes rarely. */
int api_system_doc(const struct api_context *ctx, json_t **ret_doc, char *errbuf, size_t errlen)
{
	char hostname[HOST_NAME_MAX + 1];
	struct sysinfo_disk disks[SYSINFO_MAX_DISKS];
	struct sysinfo_sample smp;
	struct sysinfo_host host;
	struct sysinfo_mem mem;
	int64_t boot_time;
	bool ok = true;
	int r, n_disks;

	if ((r = sysinfo_read_mem(&mem)) < 0) {
		snprintf(errbuf, errlen, "cannot read /proc/meminfo: %s", strerror(-r));
		return r;
	}
	if ((r = sysinfo_read_boot_time(&boot_time)) < 0) {
		snprintf(errbuf, errlen, "cannot read the boot time from /proc/stat: %s",
			 strerror(-r));
		return r;
	}
	n_disks = sysinfo_list_disks(ctx->state_dir, disks, SYSINFO_MAX_DISKS);
	sysinfo_read_host(&host);
	sysinfo_sampler_get(ctx->sampler, &smp);
	host_get_name(hostname, sizeof(hostname));

	json_t *disk_list = json_array();
	if (!disk_list)
		ok = false;
	for (int i = 0; disk_list && i < n_disks; i++) {
		json_t *d = json_object();
		json_put(d, "path", json_text(disks[i].path), &ok);
		json_put(d, "total_mb", json_mb(disks[i].total), &ok);
		json_push(disk_list, d, &ok);
	}

	json_t *doc = json_object();
	json_put(doc, "name", json_text(ctx->name), &ok);
	json_put(doc, "hostname", json_text(hostname), &ok);
	json_put(doc, "version", json_string(CLUSTERFS_VERSION), &ok);
	json_put(doc, "os", json_text(host.os), &ok);
	json_put(doc, "kernel", json_text(host.kernel), &ok);
	json_put(doc, "arch", json_text(host.arch), &ok);
	json_put(doc, "cores", json_integer(sysinfo_count_cpus()), &ok);
	json_put(doc, "ram_mb", json_integer((json_int_t) (mem.total_kb / 1024)), &ok);
	json_put(doc, "disks", disk_list, &ok);
	json_put(doc, "gpus", api_gpus_json(&smp, false, &ok), &ok);
	json_put(doc, "boot_time", json_integer((json_int_t) boot_time), &ok);
	return api_doc_done(doc, ok, ret_doc, errbuf, errlen);
}

static int api_get_system(struct request *req, struct response *resp)
{
	return api_reply_doc(req, resp, api_system_doc);
}

/* The task API: thin wrappers that hand the registry to tasks.c. */
static int api_create_task(struct request *req, struct response *resp)
{
	const struct api_context *ctx = req->userdata;
	return tasks_handle_create(ctx->tasks, req, resp);
}

static int api_list_tasks(struct request *req, struct response *resp)
{
	const struct api_context *ctx = req->userdata;
	return tasks_handle_list(ctx->tasks, req, resp);
}

static int api_get_task(struct request *req, struct response *resp)
{
	const struct api_context *ctx = req->userdata;
	return tasks_handle_get(ctx->tasks, req, resp);
}

static int api_get_task_stdout(struct request *req, struct response *resp)
{
	const struct api_context *ctx = req->userdata;
	return tasks_handle_output(ctx->tasks, "stdout", req, resp);
}

static int api_get_task_stderr(struct request *req, struct response *resp)
{
	const struct api_context *ctx = req->userdata;
	return tasks_handle_output(ctx->tasks, "stderr", req, resp);
}

static int api_task_files(struct request *req, struct response *resp)
{
	const struct api_context *ctx = req->userdata;
	return staging_handle_manifest(ctx->state_dir, req, resp);
}

static int api_task_file(struct request *req, struct response *resp)
{
	const struct api_context *ctx = req->userdata;
	return staging_handle_file(ctx->state_dir, req, resp);
}

static int api_stage_input(struct request *req, struct response *resp)
{
	const struct api_context *ctx = req->userdata;
	return staging_handle_stage(ctx->state_dir, &ctx->stopping, req, resp);
}

static int api_stage_put(struct request *req, struct response *resp)
{
	const struct api_context *ctx = req->userdata;
	return staging_handle_put(ctx->state_dir, req, resp);
}

static int api_stage_upload(struct request *req, const char *data, size_t len)
{
	const struct api_context *ctx = req->userdata;
	return staging_upload(ctx->state_dir, req, data, len);
}

static int api_knowledge_put(struct request *req, struct response *resp)
{
	const struct api_context *ctx = req->userdata;
	return knowledge_handle_put(ctx->state_dir, req, resp);
}

static int api_knowledge_delete(struct request *req, struct response *resp)
{
	const struct api_context *ctx = req->userdata;
	return knowledge_handle_delete(ctx->state_dir, req, resp);
}

static int api_cancel_task(struct request *req, struct response *resp)
{
	const struct api_context *ctx = req->userdata;
	return tasks_handle_cancel(ctx->tasks, req, resp);
}

const struct route api_routes[] = {
	{"GET", AGENT_API_HEALTH, api_get_health},
	{"GET", AGENT_API_SYSTEM, api_get_system},
	{"GET", AGENT_API_TASKS, api_list_tasks},
	{"POST", AGENT_API_TASKS, api_create_task},
	{"GET", AGENT_API_TASKS "/{id}", api_get_task},
	{"GET", AGENT_API_TASKS "/{id}/stdout", api_get_task_stdout},
	{"GET", AGENT_API_TASKS "/{id}/stderr", api_get_task_stderr},
	{"POST", AGENT_API_TASKS "/{id}/cancel", api_cancel_task},
	{"GET", AGENT_API_TASKS "/{id}/files", api_task_files},
	{"GET", AGENT_API_TASKS "/{id}/files/{*}", api_task_file},
	{"POST", AGENT_API_STAGING "/{id}/{*}", api_stage_input},
	{"PUT", AGENT_API_STAGING "/{id}/{*}", api_stage_put},
	{"PUT", AGENT_API_KNOWLEDGE "/{*}", api_knowledge_put},
	{"DELETE", AGENT_API_KNOWLEDGE "/{*}", api_knowledge_delete},
	/* The checkpoint ledger (ledger.h); best and summary before {step}. */
	{"GET", "/api/ledger", ledger_handle_list},
	{"GET", "/api/ledger/best", ledger_handle_best},
	{"GET", "/api/ledger/summary", ledger_handle_summary},
	{"POST", "/api/ledger/record", ledger_handle_record},
	{"GET", "/api/ledger/{step}", ledger_handle_get},
};

const size_t api_n_routes = sizeof(api_routes) / sizeof(api_routes[0]);

const struct upload_route api_uploads[] = {
	{"PUT", AGENT_API_STAGING "/{id}/{*}", api_stage_upload},
};

const size_t api_n_uploads = sizeof(api_uploads) / sizeof(api_uploads[0]);
