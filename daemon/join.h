/* The control plane's join listener (config "join"): an HTTPS server for agents only, on
 * the same libmicrohttpd and TLS code as the agent (httpd/). Every request carries the join
 * token (separate from the agents' token) as its bearer, compared in constant time.
 *
 *   POST /api/join            registers an agent: writes hosts.d/NAME.json (and its token
 *                             file, 0600) beside hosts.json; the config watcher loads it
 *   POST /api/join/heartbeat  a joined agent's health document: counts as a probe
 *   POST /api/join/leave      the agent leaves: its drop-in is removed
 *
 * Registration is a file: a joined node is visible, editable and removable with `rm`.
 * A name taken by another host (hosts.json, or a drop-in with another fingerprint) is
 * refused with 409; the same agent joining again updates its file. */
#pragma once

#include "backend/cluster.h"
#include "config/config.h"

struct join;

/* Prepares the listener of cfg->join (which must be enabled): reads its certificate and
 * key and binds its socket, so that errors are found before the daemon detaches. The
 * cluster is borrowed and must outlive the listener; the current config is taken from it
 * at each request. Returns 0 or -errno with one sentence in errbuf. */
int join_new(const struct config *cfg, struct cluster *cluster, struct join **ret, char *errbuf,
	     size_t errlen);
/* Starts serving (threads: after the daemon forked). 0 or -errno with errbuf. */
int join_start(struct join *j, char *errbuf, size_t errlen);
/* Stops the listener (if started) and frees it. NULL is a no-op. */
void join_stop(struct join *j);
/* The address it listens on, "ADDR:PORT" (useful with port 0). Borrowed. */
const char *join_bound(const struct join *j);
