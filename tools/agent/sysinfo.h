/* Host metrics for the node agent: point-in-time readers over /proc, statvfs, uname and
 * /etc/os-release, plus a sampler thread for the values that need an interval (CPU busy
 * percent) or are too slow for the request path (nvidia-smi). */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define SYSINFO_MAX_GPUS  16
#define SYSINFO_MAX_DISKS 32

/* One GPU as reported by nvidia-smi. A value nvidia-smi reports as unavailable
 * ("[N/A]", "[Not Supported]") is NAN. */
struct sysinfo_gpu {
	int index;
	char name[96];
	double util_percent;
	double mem_used_mb;
	double mem_total_mb;
	double temp_c;
};

struct sysinfo_mem {
	uint64_t total_kb;     /* MemTotal */
	uint64_t available_kb; /* MemAvailable */
};

/* Capacity of a filesystem, in bytes. */
struct sysinfo_disk {
	char path[256]; /* where it is mounted; only filled in by sysinfo_list_disks() */
	uint64_t total;
	uint64_t avail; /* f_bavail: what an unprivileged writer can still use */
};

/* Static facts about the host; strings are empty when unknown. */
struct sysinfo_host {
	char os[128];     /* PRETTY_NAME from /etc/os-release */
	char kernel[128]; /* uname release */
	char arch[72];    /* uname machine */
};

/* Number of online CPUs, at least 1. */
int sysinfo_count_cpus(void);
/* Seconds since boot from /proc/uptime. 0 or -errno. */
int sysinfo_read_uptime(double *ret_uptime_s);
/* 1, 5 and 15 minute load averages from /proc/loadavg. 0 or -errno. */
int sysinfo_read_loadavg(double ret_load[3]);
/* MemTotal and MemAvailable from /proc/meminfo. 0 or -errno. */
int sysinfo_read_mem(struct sysinfo_mem *ret_mem);
/* Size of the filesystem that holds `path` (borrowed); leaves ret_disk->path alone.
 * 0 or -errno. */
int sysinfo_read_disk(const char *path, struct sysinfo_disk *ret_disk);
/* The filesystems worth listing: `first` (borrowed) and then every mounted directory
 * backed by a block device, one entry per filesystem. Writes up to `max` entries to
 * `disks`; returns how many, or -errno when even `first` could not be read. */
int sysinfo_list_disks(const char *first, struct sysinfo_disk *disks, size_t max);
/* Boot time in unix seconds ("btime" in /proc/stat). 0 or -errno. */
int sysinfo_read_boot_time(int64_t *ret_boot_time);
/* OS name, kernel release and architecture. Never fails; unknown fields stay "". */
void sysinfo_read_host(struct sysinfo_host *ret_host);

/* Background sampler: once a second it measures CPU busy time from /proc/stat deltas,
 * every five seconds it queries nvidia-smi (2 s timeout) and caches the result. */
struct sysinfo_sampler;

/* The latest sampled values. */
struct sysinfo_sample {
	double cpu_percent; /* busy share of all CPUs over the last interval, 0..100 */
	struct sysinfo_gpu gpus[SYSINFO_MAX_GPUS];
	size_t n_gpus; /* 0 when nvidia-smi is absent or failed */
};

/* Takes the first samples synchronously (two /proc/stat reads ~100 ms apart and one
 * nvidia-smi query), then starts the thread. Returns a new sampler, 0 or -errno. */
int sysinfo_sampler_start(struct sysinfo_sampler **ret_sampler);
/* Copies the latest values; thread-safe. Borrows `s`. */
void sysinfo_sampler_get(struct sysinfo_sampler *s, struct sysinfo_sample *ret_sample);
/* Stops and joins the thread (interrupting a running nvidia-smi) and frees `s`. Nothing
 * may use `s` any more: stop the HTTP server first. NULL is a no-op. */
void sysinfo_sampler_stop(struct sysinfo_sampler *s);
