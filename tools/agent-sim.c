/* clusterfs-agent-sim: many simulated agents in one process, for benchmarks.
 *
 * One thread, one epoll set: a listening socket per simulated node on consecutive ports,
 * a timerfd for the injected delay and a signalfd for SIGTERM/SIGINT. Each request is
 * parsed at once, its answer is rendered at once, and the answer is held back until
 * arrival + delay; the held connections sit in a list sorted by due time and the timerfd
 * is armed to the head of that list. Nothing ever sleeps, so one process can keep
 * thousands of slow requests in flight. The figures it serves are plausible constants
 * derived from the node's index; it measures nothing. */
#include "backend/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#define SIM_EXIT_RUNTIME 1 /* could not start: port taken, fd limit */
#define SIM_EXIT_USAGE   2 /* bad command line or token file */

#define SIM_MAX_REQUEST  16384 /* request line, headers and body of one request */
#define SIM_BACKLOG      4096
#define SIM_MAX_EVENTS   256
#define SIM_MAX_DELAY_MS 600000
#define SIM_SPARE_FDS    64 /* beyond listeners: stdio, epoll, timer, signal, spare */

enum watch_kind { WATCH_LISTENER, WATCH_CONN, WATCH_TIMER, WATCH_SIGNAL };

/* First member of everything registered with epoll: says what data.ptr points to. */
struct watch {
	enum watch_kind kind;
};

/* One simulated node: constants derived from its index. */
struct sim_node {
	char name[64]; /* prefix (at most 40 bytes) and index */
	int cores;
	int64_t mem_total_mb;
	double mem_percent;
	double cpu_percent;
	int64_t disk_total_mb;
	double disk_percent;
	double uptime_base_s; /* uptime when the simulator started */
	char *system_body;    /* the /api/node/system document, rendered once */
	size_t system_len;
};

struct listener {
	struct watch w;
	int fd;
	unsigned node; /* index into sim->nodes */
};

enum conn_state {
	CONN_READING, /* waiting for (the rest of) a request */
	CONN_WAITING, /* answer rendered, held until due_us */
	CONN_WRITING, /* answer partly sent; waiting for EPOLLOUT */
	CONN_CLOSED,  /* fd closed; freed after the current batch of events */
};

struct conn {
	struct watch w;
	int fd;
	unsigned node;
	enum conn_state state;
	uint32_t events;          /* what epoll watches for now */
	char in[SIM_MAX_REQUEST]; /* received bytes not yet consumed */
	size_t in_len;
	struct buf out; /* the answer being held or sent */
	size_t out_off;
	bool close_after;                 /* close once the answer is sent */
	uint64_t due_us;                  /* monotonic; while CONN_WAITING */
	struct conn *due_prev, *due_next; /* in sim->due_*, while CONN_WAITING */
	struct conn *prev, *next;         /* in sim->conns, or sim->dead once closed */
};

struct sim {
	int epfd;
	struct watch timer_w;
	int tfd;
	struct watch signal_w;
	int sfd;
	int spare_fd; /* closed to accept-and-drop when out of fds */
	char *token;  /* owned; never logged */
	uint64_t delay_us;
	struct sim_node *nodes;     /* owned, n_nodes */
	struct listener *listeners; /* owned, n_nodes */
	unsigned n_nodes;
	struct conn *conns;               /* every open connection */
	struct conn *dead;                /* closed during this batch of events, freed after it */
	struct conn *due_head, *due_tail; /* waiting connections, sorted by due_us */
	uint64_t armed_us;                /* the timerfd's deadline, 0 when disarmed */
	bool stop;
	size_t n_conns, peak_conns;
	uint64_t n_accepted, n_requests, n_unauthorized;
	double started_wall;
};

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

/* Parses a decimal integer in [min, max]; false on anything else. */
static bool parse_long(const char *s, long min, long max, long *ret)
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
	enum {
		OPT_BASE_PORT = 256,
		OPT_COUNT,
		OPT_DELAY_MS,
		OPT_LISTEN_ADDR,
		OPT_TOKEN_FILE,
		OPT_NAME_PREFIX,
		OPT_VERSION,
	};
	static const struct option longopts[] = {
		{"base-port", required_argument, NULL, OPT_BASE_PORT},
		{"count", required_argument, NULL, OPT_COUNT},
		{"delay-ms", required_argument, NULL, OPT_DELAY_MS},
		{"listen-addr", required_argument, NULL, OPT_LISTEN_ADDR},
		{"token-file", required_argument, NULL, OPT_TOKEN_FILE},
		{"name-prefix", required_argument, NULL, OPT_NAME_PREFIX},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, OPT_VERSION},
		{NULL, 0, NULL, 0},
	};
	struct sim_options o = {.listen_addr = "127.0.0.1", .name_prefix = "sim-", .count = 1};
	const char *bad = NULL;
	int c;

	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case OPT_BASE_PORT:
			if (!parse_long(optarg, 1, 65535, &o.base_port))
				bad = "--base-port must be a port number, 1..65535";
			break;
		case OPT_COUNT:
			if (!parse_long(optarg, 1, 65535, &o.count))
				bad = "--count must be a number of nodes, 1..65535";
			break;
		case OPT_DELAY_MS:
			if (!parse_long(optarg, 0, SIM_MAX_DELAY_MS, &o.delay_ms))
				bad = "--delay-ms must be a number of milliseconds, 0..600000";
			break;
		case OPT_LISTEN_ADDR: o.listen_addr = optarg; break;
		case OPT_TOKEN_FILE: o.token_file = optarg; break;
		case OPT_NAME_PREFIX: o.name_prefix = optarg; break;
		case 'h': sim_usage(stdout); return 1;
		case OPT_VERSION: printf("clusterfs-agent-sim %s\n", CLUSTERFS_VERSION); return 1;
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

/* Renders the health document of node n as the agent would now. */
static void sim_render_health(const struct sim *s, const struct sim_node *n, struct buf *out)
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

/* ---- connections ---- */

static void conn_set_events(struct sim *s, struct conn *c, uint32_t events)
{
	if (c->events == events)
		return;
	struct epoll_event ev = {.events = events, .data.ptr = &c->w};
	if (epoll_ctl(s->epfd, EPOLL_CTL_MOD, c->fd, &ev) == 0)
		c->events = events;
}

static void due_unlink(struct sim *s, struct conn *c)
{
	if (c->due_prev)
		c->due_prev->due_next = c->due_next;
	else
		s->due_head = c->due_next;
	if (c->due_next)
		c->due_next->due_prev = c->due_prev;
	else
		s->due_tail = c->due_prev;
	c->due_prev = c->due_next = NULL;
}

/* Inserts c by due time. The delay is constant, so this almost always appends. */
static void due_insert(struct sim *s, struct conn *c)
{
	struct conn *after = s->due_tail;
	while (after && after->due_us > c->due_us)
		after = after->due_prev;
	c->due_prev = after;
	c->due_next = after ? after->due_next : s->due_head;
	if (c->due_next)
		c->due_next->due_prev = c;
	else
		s->due_tail = c;
	if (after)
		after->due_next = c;
	else
		s->due_head = c;
}

/* Closes the socket now; the struct lives on until the current batch of epoll events
 * is done, as a later event of the batch may still point to it. */
static void conn_close(struct sim *s, struct conn *c)
{
	if (c->state == CONN_CLOSED)
		return;
	if (c->state == CONN_WAITING)
		due_unlink(s, c);
	close(c->fd); /* also drops it from the epoll set */
	c->fd = -1;
	c->state = CONN_CLOSED;
	buf_free(&c->out);
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->prev = NULL;
	c->next = s->dead;
	s->dead = c;
	s->n_conns--;
}

static void sim_free_dead(struct sim *s)
{
	while (s->dead) {
		struct conn *c = s->dead;
		s->dead = c->next;
		free(c);
	}
}

static const char *status_reason(unsigned status)
{
	switch (status) {
	case 200: return "OK";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 413: return "Content Too Large";
	case 431: return "Request Header Fields Too Large";
	case 501: return "Not Implemented";
	default: return "Error";
	}
}

/* Puts a whole answer in c->out: status line, headers, body. */
static void conn_put_answer(struct conn *c, unsigned status, const char *extra_header,
			    const char *body, size_t body_len)
{
	buf_printf(&c->out,
		   "HTTP/1.1 %u %s\r\n"
		   "Content-Type: application/json\r\n"
		   "Cache-Control: no-store\r\n"
		   "Content-Length: %zu\r\n"
		   "%s%s"
		   "%s"
		   "\r\n",
		   status, status_reason(status), body_len, extra_header ? extra_header : "",
		   extra_header ? "\r\n" : "", c->close_after ? "Connection: close\r\n" : "");
	buf_append(&c->out, body, body_len);
}

static void conn_put_error(struct conn *c, unsigned status, const char *extra_header,
			   const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* An answer {"error": "..."}; the message is made printable ASCII first. */
static void conn_put_error(struct conn *c, unsigned status, const char *extra_header,
			   const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	for (char *p = msg; *p; p++)
		if ((unsigned char) *p < 0x20 || (unsigned char) *p >= 0x7f)
			*p = '?';
	json_t *doc = json_pack("{s:s}", "error", msg);
	char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
	json_decref(doc);
	if (!text)
		abort();
	struct buf body;
	buf_init(&body);
	buf_printf(&body, "%s\n", text);
	free(text);
	conn_put_answer(c, status, extra_header, body.data, body.len);
	buf_free(&body);
}

/* Finds header `name` (case-insensitive) among the header lines in [p, end). Returns
 * its value with surrounding blanks trimmed, or NULL. */
static const char *header_find(const char *p, const char *end, const char *name, size_t *ret_len)
{
	size_t nlen = strlen(name);
	while (p < end) {
		const char *eol = memchr(p, '\n', (size_t) (end - p));
		if (!eol)
			eol = end;
		if ((size_t) (eol - p) > nlen && strncasecmp(p, name, nlen) == 0 &&
		    p[nlen] == ':') {
			const char *v = p + nlen + 1, *ve = eol;
			while (v < ve && (*v == ' ' || *v == '\t'))
				v++;
			while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
				ve--;
			*ret_len = (size_t) (ve - v);
			return v;
		}
		p = eol + 1;
	}
	return NULL;
}

static bool token_matches(const struct sim *s, const char *v, size_t len)
{
	if (!v || len < 7 || strncasecmp(v, "Bearer", 6) != 0 || (v[6] != ' ' && v[6] != '\t'))
		return false;
	const char *t = v + 6;
	while (t < v + len && (*t == ' ' || *t == '\t'))
		t++;
	char given[4200];
	size_t glen = (size_t) (v + len - t);
	if (glen >= sizeof(given))
		return false;
	memcpy(given, t, glen);
	given[glen] = '\0';
	bool ok = secret_equal(given, s->token);
	explicit_bzero(given, glen);
	return ok;
}

/* Handles the request at the start of c->in when it is complete: renders its answer into
 * c->out, consumes it and returns true. False when more bytes are needed. A malformed
 * request gets an error answer and close_after. */
/* Answers a whole, well-formed request for target (its query cut off here). */
static void conn_answer(struct sim *s, struct conn *c, const char *method, char *target,
			const char *headers, const char *end)
{
	size_t vlen;
	const char *v = header_find(headers, end, "Authorization", &vlen);
	char *query = strchr(target, '?');
	if (query)
		*query = '\0';
	if (!token_matches(s, v, vlen)) {
		s->n_unauthorized++;
		conn_put_error(c, 401, "WWW-Authenticate: Bearer",
			       "unauthorized: missing or invalid bearer token");
	} else if (strcmp(target, "/api/node/health") != 0 &&
		   strcmp(target, "/api/node/system") != 0) {
		conn_put_error(c, 404, NULL, "no such endpoint: %.200s", target);
	} else if (strcmp(method, "GET") != 0) {
		conn_put_error(c, 405, "Allow: GET", "method %.16s not allowed on %.200s", method,
			       target);
	} else if (strcmp(target, "/api/node/system") == 0) {
		const struct sim_node *node = &s->nodes[c->node];
		conn_put_answer(c, 200, NULL, node->system_body, node->system_len);
	} else {
		struct buf body;
		buf_init(&body);
		sim_render_health(s, &s->nodes[c->node], &body);
		conn_put_answer(c, 200, NULL, body.data, body.len);
		buf_free(&body);
	}
}

static bool conn_take_request(struct sim *s, struct conn *c)
{
	char *hdr_end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
	if (!hdr_end) {
		if (c->in_len < sizeof(c->in))
			return false;
		c->close_after = true;
		c->in_len = 0;
		conn_put_error(c, 431, NULL, "request headers larger than %d bytes",
			       SIM_MAX_REQUEST);
		return true;
	}
	size_t head_len = (size_t) (hdr_end - c->in) + 4;
	const char *line_end = memchr(c->in, '\r', head_len);
	const char *end = c->in + head_len - 2;

	/* request line: METHOD SP TARGET SP HTTP/1.x */
	char method[16], target[1024], version[16];
	int n = 0;
	char line[sizeof(target) + 64];
	size_t line_len = (size_t) (line_end - c->in);
	bool parsed = false;
	if (line_len < sizeof(line)) {
		memcpy(line, c->in, line_len);
		line[line_len] = '\0';
		parsed = sscanf(line, "%15s %1023s %15s%n", method, target, version, &n) == 3 &&
			 (size_t) n == line_len &&
			 (strcmp(version, "HTTP/1.1") == 0 || strcmp(version, "HTTP/1.0") == 0);
	}
	const char *headers = line_end + 2;

	size_t vlen;
	const char *v = header_find(headers, end, "Connection", &vlen);
	bool http10 = parsed && strcmp(version, "HTTP/1.0") == 0;
	if (v && vlen == 5 && strncasecmp(v, "close", 5) == 0)
		c->close_after = true;
	else if (http10 && !(v && vlen == 10 && strncasecmp(v, "keep-alive", 10) == 0))
		c->close_after = true;

	size_t body_len = 0;
	v = header_find(headers, end, "Content-Length", &vlen);
	if (v) {
		char num[24];
		long cl = -1;
		if (vlen < sizeof(num)) {
			memcpy(num, v, vlen);
			num[vlen] = '\0';
			if (!parse_long(num, 0, SIM_MAX_REQUEST, &cl))
				cl = -1;
		}
		if (cl < 0 || head_len + (size_t) cl > sizeof(c->in)) {
			c->close_after = true;
			c->in_len = 0;
			conn_put_error(c, 413, NULL,
				       "request body too large: the limit is %d bytes",
				       SIM_MAX_REQUEST);
			return true;
		}
		body_len = (size_t) cl;
	}
	if (header_find(headers, end, "Transfer-Encoding", &vlen)) {
		c->close_after = true;
		c->in_len = 0;
		conn_put_error(c, 501, NULL,
			       "Transfer-Encoding is not supported; send Content-Length");
		return true;
	}
	if (c->in_len < head_len + body_len)
		return false;

	s->n_requests++;
	if (!parsed) {
		c->close_after = true;
		c->in_len = 0;
		conn_put_error(c, 400, NULL, "malformed request line");
		return true;
	}
	conn_answer(s, c, method, target, headers, end);
	size_t used = head_len + body_len;
	memmove(c->in, c->in + used, c->in_len - used);
	c->in_len -= used;
	return true;
}

static void conn_send(struct sim *s, struct conn *c);

/* In CONN_READING: takes the next buffered request, if complete, and holds its answer
 * until it is due (or sends it now when there is no delay). */
static void conn_advance(struct sim *s, struct conn *c)
{
	if (c->state != CONN_READING || !conn_take_request(s, c))
		return;
	if (s->delay_us == 0) {
		conn_send(s, c);
		return;
	}
	c->state = CONN_WAITING;
	c->due_us = clock_now_us() + s->delay_us;
	due_insert(s, c);
	conn_set_events(s, c, 0);
}

/* Sends what is left of the answer; then reads on, closes, or waits for EPOLLOUT. */
static void conn_send(struct sim *s, struct conn *c)
{
	while (c->out_off < c->out.len) {
		ssize_t w = send(c->fd, c->out.data + c->out_off, c->out.len - c->out_off,
				 MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			c->state = CONN_WRITING;
			conn_set_events(s, c, EPOLLOUT);
			return;
		}
		if (w < 0)
			return conn_close(s, c);
		c->out_off += (size_t) w;
	}
	if (c->close_after)
		return conn_close(s, c);
	buf_free(&c->out);
	c->out_off = 0;
	c->state = CONN_READING;
	conn_set_events(s, c, EPOLLIN);
	conn_advance(s, c); /* a pipelined request may be waiting */
}

static void conn_on_readable(struct sim *s, struct conn *c)
{
	for (;;) {
		if (c->in_len == sizeof(c->in))
			break;
		ssize_t r = recv(c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (r <= 0)
			return conn_close(s, c); /* peer closed, or reset */
		c->in_len += (size_t) r;
	}
	conn_advance(s, c);
}

static void listener_on_readable(struct sim *s, struct listener *l)
{
	for (;;) {
		int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0 && errno == EINTR)
			continue;
		if (fd < 0 && (errno == EMFILE || errno == ENFILE)) {
			/* out of fds: accept and drop one so the listener does not spin */
			static bool warned;
			if (!warned)
				log_warn("out of file descriptors with %zu connections open; "
					 "dropping new connections",
					 s->n_conns);
			warned = true;
			if (s->spare_fd >= 0) {
				close(s->spare_fd);
				fd = accept(l->fd, NULL, NULL);
				if (fd >= 0)
					close(fd);
				s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
			}
			return;
		}
		if (fd < 0)
			return; /* EAGAIN, or the client gave up (ECONNABORTED) */
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		struct conn *c = calloc(1, sizeof(*c));
		if (!c) {
			close(fd);
			return;
		}
		c->w.kind = WATCH_CONN;
		c->fd = fd;
		c->node = l->node;
		c->state = CONN_READING;
		c->events = EPOLLIN;
		buf_init(&c->out);
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &c->w};
		if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
			close(fd);
			free(c);
			continue;
		}
		c->next = s->conns;
		if (s->conns)
			s->conns->prev = c;
		s->conns = c;
		s->n_accepted++;
		if (++s->n_conns > s->peak_conns)
			s->peak_conns = s->n_conns;
	}
}

/* Sends every held answer that is due. */
static void sim_on_timer(struct sim *s)
{
	uint64_t expirations;
	if (read(s->tfd, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN)
		log_warn("timerfd read: %s", strerror(errno));
	s->armed_us = 0;
	uint64_t now = clock_now_us();
	while (s->due_head && s->due_head->due_us <= now) {
		struct conn *c = s->due_head;
		due_unlink(s, c);
		c->state = CONN_WRITING; /* conn_send moves it on */
		conn_send(s, c);
	}
}

/* Arms the timerfd for the earliest held answer, when that changed. */
static void sim_arm_timer(struct sim *s)
{
	uint64_t want = s->due_head ? s->due_head->due_us : 0;
	if (want == s->armed_us)
		return;
	struct itimerspec its = {0};
	if (want) {
		its.it_value.tv_sec = (time_t) (want / 1000000u);
		its.it_value.tv_nsec = (long) (want % 1000000u) * 1000;
	}
	if (timerfd_settime(s->tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0) {
		log_err("timerfd_settime: %s", strerror(errno));
		abort();
	}
	s->armed_us = want;
}

static void sim_on_signal(struct sim *s)
{
	struct signalfd_siginfo si;
	if (read(s->sfd, &si, sizeof(si)) != (ssize_t) sizeof(si))
		return;
	log_info("received %s, shutting down", si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
	s->stop = true;
}

static int sim_run(struct sim *s)
{
	struct epoll_event evs[SIM_MAX_EVENTS];
	while (!s->stop) {
		sim_arm_timer(s);
		int n = epoll_wait(s->epfd, evs, SIM_MAX_EVENTS, -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			log_err("epoll_wait: %s", strerror(errno));
			return -errno;
		}
		for (int i = 0; i < n; i++) {
			struct watch *w = evs[i].data.ptr;
			switch (w->kind) {
			case WATCH_LISTENER: listener_on_readable(s, (struct listener *) w); break;
			case WATCH_TIMER: sim_on_timer(s); break;
			case WATCH_SIGNAL: sim_on_signal(s); break;
			case WATCH_CONN: {
				struct conn *c = (struct conn *) w;
				if (c->state == CONN_WRITING && (evs[i].events & EPOLLOUT))
					conn_send(s, c);
				else if (c->state == CONN_READING &&
					 (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
					conn_on_readable(s, c);
				else if (evs[i].events & (EPOLLHUP | EPOLLERR))
					conn_close(s, c);
				break;
			}
			}
		}
		sim_free_dead(s);
	}
	return 0;
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
		conn_close(s, s->conns);
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

	s.nodes = calloc(s.n_nodes, sizeof(*s.nodes));
	s.listeners = calloc(s.n_nodes, sizeof(*s.listeners));
	if (!s.nodes || !s.listeners) {
		fprintf(stderr, "clusterfs-agent-sim: out of memory\n");
		goto out;
	}
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
