/* clusterfs-agent-sim: many simulated agents in one process, for benchmarks.
 *
 * One thread, one epoll set: a listening socket per simulated node on consecutive ports,
 * a timerfd for the injected delay and a signalfd for SIGTERM/SIGINT. Each request is
 * parsed at once, its answer is rendered at once, and the answer is held back until
 * arrival + delay; the held connections sit in a list sorted by due time and the timerfd
 * is armed to the head of that list. Nothing ever sleeps, so one process can keep
 * thousands of slow requests in flight. The figures it serves are plausible constants
 * derived from the node's index; it measures nothing. */
#include "tools/agent-sim.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#define SIM_EXIT_RUNTIME 1 /* could not start: port taken, fd limit */
#define SIM_EXIT_USAGE   2 /* bad command line or token file */

struct sim_options {
	const char *listen_addr;
	const char *token_file;
	const char *name_prefix;
	long base_port;
	long count;
	long delay_ms;
};

static void sim_usage(FILE *out)
{
	fprintf(out,
		"Usage: clusterfs-agent-sim --base-port PORT --token-file FILE [--count N]\n"
		"                           [--delay-ms MS] [--listen-addr ADDR] [--name-prefix P]\n"
		"       clusterfs-agent-sim --help | --version\n"
		"\n"
		"A LOAD SIMULATOR for benchmarks, not an agent: one single-threaded process that\n"
		"pretends to be N clusterfs-agents, one per port PORT..PORT+N-1. Each serves\n"
		"GET /api/node/health and GET /api/node/system with the same JSON fields as\n"
		"clusterfs-agent, but the figures are plausible constants derived from the node's\n"
		"index (only time and uptime_s move); nothing on this machine is measured. Every\n"
		"request needs \"Authorization: Bearer TOKEN\" (401 otherwise) and every answer is\n"
		"sent --delay-ms after its request arrived, without blocking the others. HTTP/1.1\n"
		"keep-alive and pipelining are supported.\n"
		"\n"
		"Options:\n"
		"  --base-port PORT    first port to listen on (required)\n"
		"  --count N           number of simulated nodes and ports (default 1)\n"
		"  --delay-ms MS       injected delay before each answer, 0..%d (default 0)\n"
		"  --listen-addr ADDR  numeric IPv4 or IPv6 address (default 127.0.0.1)\n"
		"  --token-file FILE   file holding the bearer token; it must not be readable or\n"
		"                      writable by group or others (required)\n"
		"  --name-prefix P     node names are P001, P002, ... zero-padded to at least\n"
		"                      three digits (default \"sim-\")\n"
		"  --help              print this help and exit\n"
		"  --version           print the version and exit\n"
		"\n"
		"Exit status: 0 after SIGTERM or SIGINT, 1 could not start (port taken, too few\n"
		"file descriptors), 2 bad command line or token file.\n",
		SIM_MAX_DELAY_MS);
}

bool sim_parse_long(const char *s, long min, long max, long *ret)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		return false;
	*ret = v;
	return true;
}

/* Returns 0, 1 when the program should exit successfully (--help, --version), or -EINVAL
 * after printing the problem and the usage to stderr. */
static int sim_parse_options(int argc, char **argv, struct sim_options *ret_opts)
{
	/* Long options only: a letter names each in the switch below, but only "h" is in
	 * the short options getopt_long() is given. */
	static const struct option longopts[] = {
		{"base-port", required_argument, NULL, 'p'},
		{"count", required_argument, NULL, 'n'},
		{"delay-ms", required_argument, NULL, 'd'},
		{"listen-addr", required_argument, NULL, 'l'},
		{"token-file", required_argument, NULL, 't'},
		{"name-prefix", required_argument, NULL, 'N'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{NULL, 0, NULL, 0},
	};
	struct sim_options o = {.listen_addr = "127.0.0.1", .name_prefix = "sim-", .count = 1};
	const char *bad = NULL;
	int c;

	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'p':
			if (!sim_parse_long(optarg, 1, 65535, &o.base_port))
				bad = "--base-port must be a port number, 1..65535";
			break;
		case 'n':
			if (!sim_parse_long(optarg, 1, 65535, &o.count))
				bad = "--count must be a number of nodes, 1..65535";
			break;
		case 'd':
			if (!sim_parse_long(optarg, 0, SIM_MAX_DELAY_MS, &o.delay_ms))
				bad = "--delay-ms must be a number of milliseconds, 0..600000";
			break;
		case 'l': o.listen_addr = optarg; break;
		case 't': o.token_file = optarg; break;
		case 'N': o.name_prefix = optarg; break;
		case 'h': sim_usage(stdout); return 1;
		case 'V': printf("clusterfs-agent-sim %s\n", CLUSTERFS_VERSION); return 1;
		default: sim_usage(stderr); return -EINVAL;
		}
		if (bad)
			break;
	}
	if (!bad && optind < argc) {
		fprintf(stderr, "clusterfs-agent-sim: unexpected argument '%s'\n", argv[optind]);
		sim_usage(stderr);
		return -EINVAL;
	}
	if (!bad && !o.base_port)
		bad = "--base-port is required";
	else if (!bad && !o.token_file)
		bad = "--token-file is required";
	else if (!bad && o.base_port + o.count - 1 > 65535)
		bad = "--base-port + --count - 1 is past port 65535";
	else if (!bad && strlen(o.name_prefix) > 40)
		bad = "--name-prefix is longer than 40 bytes";
	if (bad) {
		fprintf(stderr, "clusterfs-agent-sim: %s (see --help)\n", bad);
		return -EINVAL;
	}
	*ret_opts = o;
	return 0;
}

/* ---- the simulated nodes ---- */

static void sim_node_init(struct sim_node *n, unsigned index, unsigned count, const char *prefix,
			  double now_wall)
{
	static const int cores[] = {2, 4, 8, 16, 32, 64};
	int width = count >= 10000 ? 5 : count >= 1000 ? 4 : 3;
	snprintf(n->name, sizeof(n->name), "%.40s%0*u", prefix, width, index + 1);
	n->cores = cores[index % 6];
	/* the kernel reports a little less RAM than the label says */
	n->mem_total_mb = (int64_t) n->cores * 4096 * 97 / 100;
	n->mem_percent = 20.0 + (double) ((index * 13) % 50) + 0.25;
	n->cpu_percent = 3.0 + (double) ((index * 37) % 60) + 0.5;
	n->disk_total_mb = 256000 * (1 + (int64_t) (index % 4));
	n->disk_percent = 30.0 + (double) ((index * 7) % 40) + 0.75;
	n->uptime_base_s = 86400.0 * (1 + index % 30) + 17.0 * index;

	json_t *doc =
		json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:I, s:[{s:s, s:I}], s:[],"
			  " s:I}",
			  "name", n->name, "hostname", n->name, "version", CLUSTERFS_VERSION, "os",
			  "Debian GNU/Linux 12 (bookworm)", "kernel", "6.1.0-sim-amd64", "arch",
			  "x86_64", "cores", n->cores, "ram_mb", (json_int_t) n->mem_total_mb,
			  "disks", "path", "/", "total_mb", (json_int_t) n->disk_total_mb, "gpus",
			  "boot_time", (json_int_t) (now_wall - n->uptime_base_s));
	char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(12)) : NULL;
	json_decref(doc);
	if (!text)
		abort();
	struct buf b;
	buf_init(&b);
	buf_printf(&b, "%s\n", text);
	free(text);
	n->system_body = buf_steal(&b, &n->system_len);
}

/* Rounds a non-negative figure to 0.01, as the agent does. */
static double round_cents(double v)
{
	return (double) (int64_t) (v * 100.0 + 0.5) / 100.0;
}

void sim_render_health(const struct sim *s, const struct sim_node *n, struct buf *out)
{
	double now = clock_wall_s();
	double load1 = n->cores * n->cpu_percent / 100.0;
	int64_t mem_avail = (int64_t) ((double) n->mem_total_mb * (100.0 - n->mem_percent) / 100.0);
	int64_t disk_free =
		(int64_t) ((double) n->disk_total_mb * (100.0 - n->disk_percent) / 100.0);
	json_t *doc = json_pack(
		"{s:s, s:s, s:s, s:f, s:f, s:i, s:f, s:[f,f,f], s:I, s:I, s:f,"
		" s:s, s:I, s:I, s:f, s:[], s:i}",
		"name", n->name, "hostname", n->name, "version", CLUSTERFS_VERSION, "time",
		round_cents(now), "uptime_s", round_cents(n->uptime_base_s + now - s->started_wall),
		"cores", n->cores, "cpu_percent", n->cpu_percent, "load", round_cents(load1),
		round_cents(load1 * 0.9), round_cents(load1 * 0.8), "mem_total_mb",
		(json_int_t) n->mem_total_mb, "mem_available_mb", (json_int_t) mem_avail,
		"mem_percent", n->mem_percent, "disk_path", "/var/lib/clusterfs-agent",
		"disk_total_mb", (json_int_t) n->disk_total_mb, "disk_free_mb",
		(json_int_t) disk_free, "disk_percent", n->disk_percent, "gpus", "tasks_running",
		0);
	char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(12)) : NULL;
	json_decref(doc);
	if (!text)
		abort();
	buf_puts(out, text);
	buf_puts(out, "\n");
	free(text);
}

/* ---- setup ---- */

/* Raises the soft fd limit to the hard one and checks it leaves room for the listeners
 * and at least as many connections again. */
static int sim_raise_fd_limit(unsigned n_listeners)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return -errno;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			return -errno;
	}
	if (rl.rlim_cur != RLIM_INFINITY &&
	    rl.rlim_cur < 2 * (rlim_t) n_listeners + SIM_SPARE_FDS) {
		fprintf(stderr,
			"clusterfs-agent-sim: the file descriptor limit (%llu) is too low for %u "
			"listeners and their connections; raise it (ulimit -Hn) or lower --count\n",
			(unsigned long long) rl.rlim_cur, n_listeners);
		return -EMFILE;
	}
	return 0;
}

/* Opens the listening socket of one node. 0 or -errno (the message is printed). */
static int sim_listen(const char *addr, unsigned port, int *ret_fd)
{
	struct sockaddr_storage ss = {0};
	socklen_t len;
	struct sockaddr_in *in4 = (struct sockaddr_in *) &ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) &ss;
	if (inet_pton(AF_INET, addr, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons((uint16_t) port);
		len = sizeof(*in4);
	} else if (inet_pton(AF_INET6, addr, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t) port);
		len = sizeof(*in6);
	} else {
		fprintf(stderr,
			"clusterfs-agent-sim: --listen-addr %s is not a numeric IPv4 or "
			"IPv6 address\n",
			addr);
		return -EINVAL;
	}
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		int r = -errno;
		fprintf(stderr, "clusterfs-agent-sim: socket: %s\n", strerror(errno));
		return r;
	}
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *) &ss, len) < 0 || listen(fd, SIM_BACKLOG) < 0) {
		int r = -errno;
		fprintf(stderr, "clusterfs-agent-sim: cannot listen on %s%s%s:%u: %s\n",
			ss.ss_family == AF_INET6 ? "[" : "", addr,
			ss.ss_family == AF_INET6 ? "]" : "", port, strerror(errno));
		close(fd);
		return r;
	}
	*ret_fd = fd;
	return 0;
}

static int sim_add_watch(struct sim *s, int fd, struct watch *w)
{
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = w};
	return epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

static void sim_free(struct sim *s)
{
	while (s->conns)
		sim_conn_close(s, s->conns);
	sim_free_dead(s);
	for (unsigned i = 0; s->listeners && i < s->n_nodes; i++)
		if (s->listeners[i].fd >= 0)
			close(s->listeners[i].fd);
	for (unsigned i = 0; s->nodes && i < s->n_nodes; i++)
		free(s->nodes[i].system_body);
	free(s->listeners);
	free(s->nodes);
	if (s->token) {
		explicit_bzero(s->token, strlen(s->token));
		free(s->token);
	}
	if (s->tfd >= 0)
		close(s->tfd);
	if (s->sfd >= 0)
		close(s->sfd);
	if (s->epfd >= 0)
		close(s->epfd);
	if (s->spare_fd >= 0)
		close(s->spare_fd);
}

int main(int argc, char **argv)
{
	struct sim_options opts;
	struct sim s = {.epfd = -1, .tfd = -1, .sfd = -1, .spare_fd = -1};
	char errbuf[512];
	sigset_t sigs;
	int ret = SIM_EXIT_RUNTIME;

	log_set_prefix("clusterfs-agent-sim");
	int r = sim_parse_options(argc, argv, &opts);
	if (r != 0)
		return r > 0 ? 0 : SIM_EXIT_USAGE;
	if (token_read_file(opts.token_file, &s.token, errbuf, sizeof(errbuf)) < 0) {
		fprintf(stderr, "clusterfs-agent-sim: %s\n", errbuf);
		return SIM_EXIT_USAGE;
	}
	s.n_nodes = (unsigned) opts.count;
	s.delay_us = (uint64_t) opts.delay_ms * 1000u;
	s.started_wall = clock_wall_s();

	/* SIGTERM/SIGINT arrive through the signalfd; a vanished client must not kill us */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigprocmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (sim_raise_fd_limit(s.n_nodes) < 0)
		goto out;
	s.epfd = epoll_create1(EPOLL_CLOEXEC);
	s.tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	s.sfd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);
	s.spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (s.epfd < 0 || s.tfd < 0 || s.sfd < 0) {
		fprintf(stderr,
			"clusterfs-agent-sim: cannot set up epoll, timerfd or signalfd: %s\n",
			strerror(errno));
		goto out;
	}
	s.timer_w.kind = WATCH_TIMER;
	s.signal_w.kind = WATCH_SIGNAL;
	if (sim_add_watch(&s, s.tfd, &s.timer_w) < 0 || sim_add_watch(&s, s.sfd, &s.signal_w) < 0) {
		fprintf(stderr, "clusterfs-agent-sim: epoll_ctl: %s\n", strerror(errno));
		goto out;
	}

	s.nodes = xcalloc(s.n_nodes, sizeof(*s.nodes));
	s.listeners = xcalloc(s.n_nodes, sizeof(*s.listeners));
	for (unsigned i = 0; i < s.n_nodes; i++)
		s.listeners[i].fd = -1;
	for (unsigned i = 0; i < s.n_nodes; i++) {
		struct listener *l = &s.listeners[i];
		sim_node_init(&s.nodes[i], i, s.n_nodes, opts.name_prefix, s.started_wall);
		l->w.kind = WATCH_LISTENER;
		l->node = i;
		if (sim_listen(opts.listen_addr, (unsigned) opts.base_port + i, &l->fd) < 0)
			goto out;
		if (sim_add_watch(&s, l->fd, &l->w) < 0) {
			fprintf(stderr, "clusterfs-agent-sim: epoll_ctl: %s\n", strerror(errno));
			goto out;
		}
	}
	log_info("simulating %u node%s (%s .. %s) on %s:%ld-%ld, delay %ld ms", s.n_nodes,
		 s.n_nodes == 1 ? "" : "s", s.nodes[0].name, s.nodes[s.n_nodes - 1].name,
		 opts.listen_addr, opts.base_port, opts.base_port + opts.count - 1, opts.delay_ms);

	if (sim_run(&s) == 0)
		ret = 0;
	log_info("served %llu request%s (%llu unauthorized) on %llu connection%s, "
		 "at most %zu open at once",
		 (unsigned long long) s.n_requests, s.n_requests == 1 ? "" : "s",
		 (unsigned long long) s.n_unauthorized, (unsigned long long) s.n_accepted,
		 s.n_accepted == 1 ? "" : "s", s.peak_conns);
out:
	sim_free(&s);
	return ret;
}
