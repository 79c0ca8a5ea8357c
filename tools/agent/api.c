/* The node API: JSON documents built from sysinfo readings. Field names are a contract
 * with the control plane. */
#include "tools/agent/api.h"

#include "backend/util.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define MB (1024.0 * 1024.0)

/* Percentages are rounded to 0.01: more digits would be noise. */
static double percent_round(double p)
{
	return round(p * 100.0) / 100.0;
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

static void host_get_name(char *out, size_t outlen)
{
	if (gethostname(out, outlen) < 0)
		snprintf(out, outlen, "unknown");
	out[outlen - 1] = '\0';
}

/* Adds `value` to `array`, stealing it; false when either is NULL. */
static bool json_array_add(json_t *array, json_t *value)
{
	return array && value && json_array_append_new(array, value) == 0;
}

static json_t *api_gpus_json(const struct sysinfo_sample *smp, bool full)
{
	json_t *gpus = json_array();
	for (size_t i = 0; gpus && i < smp->n_gpus; i++) {
		const struct sysinfo_gpu *g = &smp->gpus[i];
		json_t *o;
		if (full)
			o = json_pack("{s:i, s:s, s:o, s:o, s:o, s:o}", "index", g->index, "name",
				      g->name, "util_percent", json_measure(g->util_percent),
				      "mem_used_mb", json_measure(g->mem_used_mb), "mem_total_mb",
				      json_measure(g->mem_total_mb), "temp_c",
				      json_measure(g->temp_c));
		else
			o = json_pack("{s:i, s:s, s:o}", "index", g->index, "name", g->name,
				      "mem_total_mb", json_measure(g->mem_total_mb));
		if (!json_array_add(gpus, o)) {
			json_decref(gpus);
			return NULL;
		}
	}
	return gpus;
}

/* GET /api/node/health: the load figures the control plane schedules by. */
static int api_get_health(struct request *req, struct response *resp)
{
	const struct api_context *ctx = req->userdata;
	char hostname[HOST_NAME_MAX + 1];
	struct sysinfo_sample smp;
	struct sysinfo_mem mem;
	struct sysinfo_disk disk;
	double uptime, load[3];
	int r;

	if ((r = sysinfo_read_uptime(&uptime)) < 0) {
		response_set_error(resp, 500, "cannot read /proc/uptime: %s", strerror(-r));
		return 0;
	}
	if ((r = sysinfo_read_loadavg(load)) < 0) {
		response_set_error(resp, 500, "cannot read /proc/loadavg: %s", strerror(-r));
		return 0;
	}
	if ((r = sysinfo_read_mem(&mem)) < 0) {
		response_set_error(resp, 500, "cannot read /proc/meminfo: %s", strerror(-r));
		return 0;
	}
	if ((r = sysinfo_read_disk(ctx->state_dir, &disk)) < 0) {
		response_set_error(resp, 500, "cannot read the filesystem of %s: %s",
				   ctx->state_dir, strerror(-r));
		return 0;
	}
	sysinfo_sampler_get(ctx->sampler, &smp);
	host_get_name(hostname, sizeof(hostname));

	uint64_t mem_avail = mem.available_kb < mem.total_kb ? mem.available_kb : mem.total_kb;
	uint64_t disk_avail = disk.avail < disk.total ? disk.avail : disk.total;
	double mem_used = (double) (mem.total_kb - mem_avail);
	double disk_used = (double) (disk.total - disk_avail);
	json_t *doc = json_pack(
		"{s:s, s:s, s:s, s:f, s:f, s:i, s:f, s:[f,f,f], s:I, s:I, s:f,"
		" s:s, s:I, s:I, s:f, s:o, s:i}",
		"name", ctx->name, "hostname", hostname, "version", CLUSTERFS_VERSION, "time",
		clock_wall_s(), "uptime_s", uptime, "cores", sysinfo_count_cpus(), "cpu_percent",
		percent_round(smp.cpu_percent), "load", load[0], load[1], load[2],
		"mem_total_mb", (json_int_t) (mem.total_kb / 1024), "mem_available_mb",
		(json_int_t) (mem.available_kb / 1024), "mem_percent",
		percent_round(100.0 * mem_used / (double) mem.total_kb), "disk_path", disk.path,
		"disk_total_mb", (json_int_t) ((double) disk.total / MB), "disk_free_mb",
		(json_int_t) ((double) disk.avail / MB), "disk_percent",
		percent_round(disk.total ? 100.0 * disk_used / (double) disk.total : 0.0), "gpus",
		api_gpus_json(&smp, true), "tasks_running", 0 /* no task runner yet */);
	return response_set_json(resp, 200, doc);
}

/* GET /api/node/system: the inventory, which changes rarely. */
static int api_get_system(struct request *req, struct response *resp)
{
	const struct api_context *ctx = req->userdata;
	char hostname[HOST_NAME_MAX + 1];
	struct sysinfo_disk disks[SYSINFO_MAX_DISKS];
	struct sysinfo_sample smp;
	struct sysinfo_host host;
	struct sysinfo_mem mem;
	int64_t boot_time;
	int r, n_disks;

	if ((r = sysinfo_read_mem(&mem)) < 0) {
		response_set_error(resp, 500, "cannot read /proc/meminfo: %s", strerror(-r));
		return 0;
	}
	if ((r = sysinfo_read_boot_time(&boot_time)) < 0) {
		response_set_error(resp, 500, "cannot read the boot time from /proc/stat: %s",
				   strerror(-r));
		return 0;
	}
	n_disks = sysinfo_list_disks(ctx->state_dir, disks, SYSINFO_MAX_DISKS);
	sysinfo_read_host(&host);
	sysinfo_sampler_get(ctx->sampler, &smp);
	host_get_name(hostname, sizeof(hostname));

	json_t *disk_list = json_array();
	for (int i = 0; disk_list && i < n_disks; i++) {
		json_t *d = json_pack("{s:s, s:I}", "path", disks[i].path, "total_mb",
				      (json_int_t) ((double) disks[i].total / MB));
		if (!json_array_add(disk_list, d)) {
			json_decref(disk_list);
			disk_list = NULL;
		}
	}
	json_t *doc = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:I, s:o, s:o, s:I}", "name",
				ctx->name, "hostname", hostname, "version", CLUSTERFS_VERSION, "os",
				host.os, "kernel", host.kernel, "arch", host.arch, "cores",
				sysinfo_count_cpus(), "ram_mb", (json_int_t) (mem.total_kb / 1024),
				"disks", disk_list, "gpus", api_gpus_json(&smp, false), "boot_time",
				(json_int_t) boot_time);
	return response_set_json(resp, 200, doc);
}

const struct route api_routes[] = {
	{"GET", "/api/node/health", api_get_health},
	{"GET", "/api/node/system", api_get_system},
};

const size_t api_n_routes = sizeof(api_routes) / sizeof(api_routes[0]);
