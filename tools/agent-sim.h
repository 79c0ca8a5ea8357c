/* clusterfs-agent-sim: the private header of tools/agent-sim*.c. agent-sim.c holds the
 * options, the simulated nodes and the set-up; agent-sim-conn.c the connections (HTTP
 * parsing, the held answers) and the event loop. One thread: nothing here is locked. */
#pragma once

#include "backend/util.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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

/* Parses a decimal integer in [min, max]; false on anything else. */
bool sim_parse_long(const char *s, long min, long max, long *ret);
/* Renders the health document of node n as the agent would now. */
void sim_render_health(const struct sim *s, const struct sim_node *n, struct buf *out);

/* Closes the socket now; the struct lives on until the current batch of epoll events
 * is done, as a later event of the batch may still point to it (sim_free_dead()). */
void sim_conn_close(struct sim *s, struct conn *c);
/* Frees the connections closed during the batch of events just handled. */
void sim_free_dead(struct sim *s);
/* Serves until SIGTERM or SIGINT: 0, or -errno when epoll failed. */
int sim_run(struct sim *s);
