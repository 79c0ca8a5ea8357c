/* Host metrics for the node agent. */
#include "tools/agent/sysinfo.h"

#include "backend/util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <mntent.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define CPU_INTERVAL_US     (1000 * 1000)
#define CPU_FIRST_GAP_US    (100 * 1000)
#define GPU_INTERVAL_US     (5000 * 1000)
#define GPU_TIMEOUT_US      (2000 * 1000)
#define GPU_OUTPUT_MAX      (64 * 1024)
#define PROC_SMALL_FILE_MAX (64 * 1024)

/* Cumulative jiffies from the "cpu" line of /proc/stat. */
struct cpu_times {
	uint64_t idle; /* idle + iowait */
	uint64_t total;
};

struct sysinfo_sampler {
	pthread_t thread;
	int stop_fd;           /* eventfd, readable once stop was requested */
	struct cpu_times prev; /* sampler thread only */
	int gpu_error;         /* sampler thread only: last query result, for logging changes */
	pthread_mutex_t lock;
	struct sysinfo_sample cur; /* protected by lock */
};

int sysinfo_count_cpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n >= 1 ? (int) n : 1;
}

/* Reads a small /proc file into a new string. */
static int proc_read(const char *path, char **ret_data)
{
	return file_read_all(path, PROC_SMALL_FILE_MAX, ret_data, NULL);
}

int sysinfo_read_uptime(double *ret_uptime_s)
{
	_cleanup_free_ char *data = NULL;
	int r = proc_read("/proc/uptime", &data);
	if (r < 0)
		return r;
	double up;
	if (sscanf(data, "%lf", &up) != 1)
		return -EBADMSG;
	*ret_uptime_s = up;
	return 0;
}

int sysinfo_read_loadavg(double ret_load[3])
{
	_cleanup_free_ char *data = NULL;
	int r = proc_read("/proc/loadavg", &data);
	if (r < 0)
		return r;
	double l[3];
	if (sscanf(data, "%lf %lf %lf", &l[0], &l[1], &l[2]) != 3)
		return -EBADMSG;
	memcpy(ret_load, l, sizeof(l));
	return 0;
}

int sysinfo_read_mem(struct sysinfo_mem *ret_mem)
{
	_cleanup_free_ char *data = NULL;
	int r = proc_read("/proc/meminfo", &data);
	if (r < 0)
		return r;
	uint64_t total = 0, avail = 0;
	bool have_total = false, have_avail = false;
	for (char *line = data; line && *line;) {
		char *next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		if (sscanf(line, "MemTotal: %" SCNu64, &total) == 1)
			have_total = true;
		else if (sscanf(line, "MemAvailable: %" SCNu64, &avail) == 1)
			have_avail = true;
		line = next;
	}
	if (!have_total || !have_avail || total == 0)
		return -EBADMSG;
	ret_mem->total_kb = total;
	ret_mem->available_kb = avail;
	return 0;
}

int sysinfo_read_disk(const char *path, struct sysinfo_disk *ret_disk)
{
	struct statvfs sv;
	if (statvfs(path, &sv) < 0)
		return -errno;
	ret_disk->total = (uint64_t) sv.f_blocks * sv.f_frsize;
	ret_disk->avail = (uint64_t) sv.f_bavail * sv.f_frsize;
	return 0;
}

/* Adds the filesystem mounted at `dir` unless its device was already listed. */
static void disk_list_add(const char *dir, struct sysinfo_disk *disks, dev_t *devs, size_t *n)
{
	struct stat st;
	if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
		return;
	for (size_t i = 0; i < *n; i++)
		if (devs[i] == st.st_dev)
			return;
	struct sysinfo_disk d = {.total = 0};
	if (strlen(dir) >= sizeof(d.path) || sysinfo_read_disk(dir, &d) < 0 || d.total == 0)
		return;
	strcpy(d.path, dir);
	disks[*n] = d;
	devs[*n] = st.st_dev;
	(*n)++;
}

int sysinfo_list_disks(const char *first, struct sysinfo_disk *disks, size_t max)
{
	dev_t devs[SYSINFO_MAX_DISKS];
	size_t n = 0;

	if (max > SYSINFO_MAX_DISKS)
		max = SYSINFO_MAX_DISKS;
	if (max == 0)
		return 0;
	disk_list_add("/", disks, devs, &n);

	/* Only block-device mounts are stat()ed: a dead network mount must not hang us. */
	FILE *f = setmntent("/proc/self/mounts", "re");
	if (f) {
		struct mntent ent;
		char line[4096];
		while (n < max && getmntent_r(f, &ent, line, sizeof(line))) {
			if (strncmp(ent.mnt_fsname, "/dev/", 5) != 0 ||
			    strcmp(ent.mnt_type, "squashfs") == 0)
				continue;
			disk_list_add(ent.mnt_dir, disks, devs, &n);
		}
		endmntent(f);
	}

	if (n < max)
		disk_list_add(first, disks, devs, &n);
	return (int) n;
}

int sysinfo_read_boot_time(int64_t *ret_boot_time)
{
	FILE *f = fopen("/proc/stat", "re");
	if (!f)
		return -errno;
	char *line = NULL;
	size_t cap = 0;
	int r = -EBADMSG;
	while (getline(&line, &cap, f) > 0) {
		int64_t bt;
		if (sscanf(line, "btime %" SCNd64, &bt) == 1) {
			*ret_boot_time = bt;
			r = 0;
			break;
		}
	}
	free(line);
	fclose(f);
	return r;
}

/* Undoes os-release shell quoting in place: "..." with backslash escapes, or '...'. */
static void os_release_unquote(char *v)
{
	size_t len = strlen(v);
	while (len > 0 && (v[len - 1] == '\n' || v[len - 1] == ' '))
		v[--len] = '\0';
	if (len >= 2 && v[0] == '\'' && v[len - 1] == '\'') {
		memmove(v, v + 1, len - 2);
		v[len - 2] = '\0';
		return;
	}
	if (len < 2 || v[0] != '"' || v[len - 1] != '"')
		return;
	char *out = v;
	for (size_t i = 1; i < len - 1; i++) {
		if (v[i] == '\\' && i + 1 < len - 1)
			i++;
		*out++ = v[i];
	}
	*out = '\0';
}

static void host_read_os(char *out, size_t outlen)
{
	static const char *const paths[] = {"/etc/os-release", "/usr/lib/os-release"};
	for (size_t p = 0; p < sizeof(paths) / sizeof(paths[0]); p++) {
		_cleanup_free_ char *data = NULL;
		if (file_read_all(paths[p], PROC_SMALL_FILE_MAX, &data, NULL) < 0)
			continue;
		for (char *line = data; line && *line;) {
			char *next = strchr(line, '\n');
			if (next)
				*next++ = '\0';
			if (strncmp(line, "PRETTY_NAME=", 12) == 0) {
				os_release_unquote(line + 12);
				snprintf(out, outlen, "%s", line + 12);
				return;
			}
			line = next;
		}
	}
}

void sysinfo_read_host(struct sysinfo_host *ret_host)
{
	struct utsname u;
	memset(ret_host, 0, sizeof(*ret_host));
	host_read_os(ret_host->os, sizeof(ret_host->os));
	if (uname(&u) == 0) {
		snprintf(ret_host->kernel, sizeof(ret_host->kernel), "%s", u.release);
		snprintf(ret_host->arch, sizeof(ret_host->arch), "%s", u.machine);
	}
}

static int cpu_read_times(struct cpu_times *ret_times)
{
	FILE *f = fopen("/proc/stat", "re");
	if (!f)
		return -errno;
	char line[512];
	uint64_t v[8] = {0};
	int r = -EBADMSG;
	/* user nice system idle iowait irq softirq steal; guest time is inside user. */
	if (fgets(line, sizeof(line), f) &&
	    sscanf(line,
		   "cpu %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64
		   " %" SCNu64 " %" SCNu64,
		   &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) >= 4) {
		uint64_t total = 0;
		for (size_t i = 0; i < 8; i++)
			total += v[i];
		ret_times->total = total;
		ret_times->idle = v[3] + v[4];
		r = 0;
	}
	fclose(f);
	return r;
}

/* Busy percent between two samples; 0 when no time passed. The kernel's iowait counter
 * may step backwards, hence the signed arithmetic and the clamp. */
static double cpu_percent_between(const struct cpu_times *a, const struct cpu_times *b)
{
	int64_t total = (int64_t) (b->total - a->total);
	int64_t idle = (int64_t) (b->idle - a->idle);
	if (total <= 0)
		return 0.0;
	double p = 100.0 * (double) (total - idle) / (double) total;
	return p < 0.0 ? 0.0 : p > 100.0 ? 100.0 : p;
}

/* Parses one nvidia-smi field: a number, or NAN for "[N/A]" and the like. */
static double gpu_parse_number(const char *s)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (end == s || *end != '\0' || errno)
		return NAN;
	return v;
}

static char *str_trim(char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	size_t len = strlen(s);
	while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t' || s[len - 1] == '\r'))
		s[--len] = '\0';
	return s;
}

/* Parses one "index, name, util, mem.used, mem.total, temp" line. A name may hold
 * commas, so the numbers are taken from both ends. Modifies `line`. 0 or -EBADMSG. */
static int gpu_parse_line(char *line, struct sysinfo_gpu *ret_gpu)
{
	char *tail[4]; /* temp, mem.total, mem.used, util: right to left */
	char *comma = strchr(line, ',');
	if (!comma)
		return -EBADMSG;
	*comma = '\0';
	char *name = comma + 1;
	for (size_t i = 0; i < 4; i++) {
		char *c = strrchr(name, ',');
		if (!c)
			return -EBADMSG;
		*c = '\0';
		tail[i] = c + 1;
	}
	double index = gpu_parse_number(str_trim(line));
	if (isnan(index) || index < 0 || index > 1e6)
		return -EBADMSG;
	ret_gpu->index = (int) index;
	snprintf(ret_gpu->name, sizeof(ret_gpu->name), "%s", str_trim(name));
	ret_gpu->util_percent = gpu_parse_number(str_trim(tail[3]));
	ret_gpu->mem_used_mb = gpu_parse_number(str_trim(tail[2]));
	ret_gpu->mem_total_mb = gpu_parse_number(str_trim(tail[1]));
	ret_gpu->temp_c = gpu_parse_number(str_trim(tail[0]));
	return 0;
}

/* Parses nvidia-smi's CSV output, skipping lines it cannot read. Modifies `out`. */
static size_t gpu_parse_csv(char *out, struct sysinfo_gpu *gpus, size_t max)
{
	size_t n = 0;
	for (char *line = out; line && *line && n < max;) {
		char *next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		if (gpu_parse_line(line, &gpus[n]) == 0)
			n++;
		line = next;
	}
	return n;
}

/* Waits for `pid` until `deadline_us`, then kills its process group. Returns the wait
 * status, or -ETIMEDOUT after killing. */
static int child_reap(pid_t pid, uint64_t deadline_us)
{
	int status;
	for (;;) {
		pid_t w = waitpid(pid, &status, WNOHANG);
		if (w == pid)
			return status;
		if (w < 0 && errno != EINTR)
			return -errno;
		if (clock_now_us() >= deadline_us)
			break;
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	kill(-pid, SIGKILL);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	return -ETIMEDOUT;
}

static int gpu_spawn(int out_fd, pid_t *ret_pid)
{
	static char arg0[] = "nvidia-smi";
	static char arg1[] = "--query-gpu=index,name,utilization.gpu,memory.used,memory.total,"
			     "temperature.gpu";
	static char arg2[] = "--format=csv,noheader,nounits";
	char *argv[] = {arg0, arg1, arg2, NULL};
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t none, deflt;
	int r;

	sigemptyset(&none);
	sigemptyset(&deflt);
	sigaddset(&deflt, SIGPIPE);
	sigaddset(&deflt, SIGTERM);
	sigaddset(&deflt, SIGINT);
	sigaddset(&deflt, SIGHUP);

	r = posix_spawn_file_actions_init(&fa);
	if (r)
		return -r;
	r = posix_spawnattr_init(&attr);
	if (r)
		goto out_destroy_actions;
	/* Our own pgroup so a timeout kills any helper it forked; the agent's blocked and
	 * ignored signals must not leak into the child. */
	if ((r = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0)) ||
	    (r = posix_spawn_file_actions_adddup2(&fa, out_fd, 1)) ||
	    (r = posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0)) ||
	    (r = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
							 POSIX_SPAWN_SETSIGDEF)) ||
	    (r = posix_spawnattr_setpgroup(&attr, 0)) ||
	    (r = posix_spawnattr_setsigmask(&attr, &none)) ||
	    (r = posix_spawnattr_setsigdefault(&attr, &deflt)))
		goto out_destroy_attr;
	r = posix_spawnp(ret_pid, argv[0], &fa, &attr, argv, environ);

out_destroy_attr:
	posix_spawnattr_destroy(&attr);
out_destroy_actions:
	posix_spawn_file_actions_destroy(&fa);
	return -r;
}

/* Runs nvidia-smi with a 2 s timeout. -ENOENT when it is not installed, -ETIMEDOUT,
 * -EIO when it exits with an error, -ECANCELED when `stop_fd` became readable. */
static int gpu_query(int stop_fd, struct sysinfo_gpu *gpus, size_t max, size_t *ret_n)
{
	uint64_t deadline = clock_now_us() + GPU_TIMEOUT_US;
	int pipefd[2];
	pid_t pid;
	struct buf out;
	int r;

	if (pipe2(pipefd, O_CLOEXEC) < 0)
		return -errno;
	r = gpu_spawn(pipefd[1], &pid);
	close(pipefd[1]);
	if (r < 0) {
		close(pipefd[0]);
		return r;
	}

	buf_init(&out);
	for (;;) {
		uint64_t now = clock_now_us();
		if (now >= deadline) {
			r = -ETIMEDOUT;
			break;
		}
		struct pollfd p[2] = {{.fd = pipefd[0], .events = POLLIN},
				      {.fd = stop_fd, .events = POLLIN}};
		int np = poll(p, 2, (int) ((deadline - now + 999) / 1000));
		if (np < 0) {
			if (errno == EINTR)
				continue;
			r = -errno;
			break;
		}
		if (p[1].revents) {
			r = -ECANCELED;
			break;
		}
		if (!p[0].revents)
			continue;
		char chunk[4096];
		ssize_t got = read(pipefd[0], chunk, sizeof(chunk));
		if (got < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			r = -errno;
			break;
		}
		if (got == 0)
			break;
		if (out.len + (size_t) got > GPU_OUTPUT_MAX) {
			r = -EFBIG;
			break;
		}
		buf_append(&out, chunk, (size_t) got);
	}
	close(pipefd[0]);

	int status = child_reap(pid, r < 0 ? 0 : deadline);
	if (r == 0 && status < 0)
		r = status;
	if (r == 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
		r = -EIO;
	if (r == 0)
		*ret_n = out.data ? gpu_parse_csv(out.data, gpus, max) : 0;
	buf_free(&out);
	return r;
}

/* Refreshes the GPU cache. On failure the cache is emptied: stale utilisation figures
 * would be worse than none. Logs only when the outcome changes. */
static int sampler_take_gpus(struct sysinfo_sampler *s)
{
	struct sysinfo_gpu gpus[SYSINFO_MAX_GPUS];
	size_t n = 0;
	int r = gpu_query(s->stop_fd, gpus, SYSINFO_MAX_GPUS, &n);
	if (r == -ECANCELED)
		return r;
	if (r != s->gpu_error) {
		if (r == -ENOENT)
			log_info("nvidia-smi not found; reporting no GPUs");
		else if (r == -ETIMEDOUT)
			log_warn("nvidia-smi did not answer within 2 s; reporting no GPUs");
		else if (r < 0)
			log_warn("nvidia-smi failed: %s; reporting no GPUs",
				 r == -EIO ? "it exited with an error" : strerror(-r));
		else
			log_info("nvidia-smi reports %zu GPU(s)", n);
		s->gpu_error = r;
	}
	pthread_mutex_lock(&s->lock);
	s->cur.n_gpus = r < 0 ? 0 : n;
	if (r == 0)
		memcpy(s->cur.gpus, gpus, n * sizeof(gpus[0]));
	pthread_mutex_unlock(&s->lock);
	return 0;
}

static void sampler_take_cpu(struct sysinfo_sampler *s)
{
	struct cpu_times now;
	if (cpu_read_times(&now) < 0)
		return;
	double p = cpu_percent_between(&s->prev, &now);
	s->prev = now;
	pthread_mutex_lock(&s->lock);
	s->cur.cpu_percent = p;
	pthread_mutex_unlock(&s->lock);
}

/* Sleeps up to `us`; true when stop was requested. */
static bool sampler_wait(struct sysinfo_sampler *s, uint64_t us)
{
	struct pollfd p = {.fd = s->stop_fd, .events = POLLIN};
	int r = poll(&p, 1, (int) ((us + 999) / 1000));
	return r > 0;
}

static void *sampler_main(void *arg)
{
	struct sysinfo_sampler *s = arg;
	uint64_t next_cpu = clock_now_us() + CPU_INTERVAL_US;
	uint64_t next_gpu = clock_now_us() + GPU_INTERVAL_US;

	for (;;) {
		uint64_t now = clock_now_us();
		uint64_t wake = next_cpu < next_gpu ? next_cpu : next_gpu;
		if (wake > now && sampler_wait(s, wake - now))
			break;
		now = clock_now_us();
		if (now >= next_cpu) {
			sampler_take_cpu(s);
			next_cpu += CPU_INTERVAL_US;
			if (next_cpu <= now)
				next_cpu = now + CPU_INTERVAL_US;
		}
		if (now >= next_gpu) {
			if (sampler_take_gpus(s) == -ECANCELED)
				break;
			next_gpu = clock_now_us() + GPU_INTERVAL_US;
		}
	}
	return NULL;
}

int sysinfo_sampler_start(struct sysinfo_sampler **ret_sampler)
{
	struct sysinfo_sampler *s = xcalloc(1, sizeof(*s));
	int r;

	s->gpu_error = 1; /* no outcome yet: the first one is always logged */
	s->stop_fd = eventfd(0, EFD_CLOEXEC);
	if (s->stop_fd < 0) {
		r = -errno;
		goto err_free;
	}
	r = pthread_mutex_init(&s->lock, NULL);
	if (r) {
		r = -r;
		goto err_close_stop;
	}

	/* The GPU query sits between the two CPU reads, so the ~100 ms gap is usually free. */
	uint64_t t0 = clock_now_us();
	r = cpu_read_times(&s->prev);
	if (r < 0)
		goto err_destroy_lock;
	sampler_take_gpus(s);
	uint64_t elapsed = clock_now_us() - t0;
	if (elapsed < CPU_FIRST_GAP_US) {
		uint64_t left = CPU_FIRST_GAP_US - elapsed;
		struct timespec ts = {(time_t) (left / 1000000), (long) (left % 1000000) * 1000};
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
	}
	sampler_take_cpu(s);

	r = pthread_create(&s->thread, NULL, sampler_main, s);
	if (r) {
		r = -r;
		goto err_destroy_lock;
	}
	*ret_sampler = s;
	return 0;

err_destroy_lock:
	pthread_mutex_destroy(&s->lock);
err_close_stop:
	close(s->stop_fd);
err_free:
	free(s);
	return r;
}

void sysinfo_sampler_get(struct sysinfo_sampler *s, struct sysinfo_sample *ret_sample)
{
	pthread_mutex_lock(&s->lock);
	*ret_sample = s->cur;
	pthread_mutex_unlock(&s->lock);
}

void sysinfo_sampler_stop(struct sysinfo_sampler *s)
{
	if (!s)
		return;
	uint64_t one = 1;
	if (write(s->stop_fd, &one, sizeof(one)) != sizeof(one))
		log_warn("cannot wake the sampler thread: %s", strerror(errno));
	pthread_join(s->thread, NULL);
	pthread_mutex_destroy(&s->lock);
	close(s->stop_fd);
	free(s);
}
