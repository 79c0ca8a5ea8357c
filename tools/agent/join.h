/* `clusterfs-agent --join URL`: the agent registers itself with a control plane's join
 * listener (HTTPS, the join token as bearer), then pushes its health document every
 * heartbeat_s seconds (the control plane says how often). `--leave` deregisters.
 *
 * One thread of its own, with libcurl easy handles: the control plane is one peer, and
 * requests are seconds apart. */
#pragma once

#include <stdbool.h>

#include "tools/agent/api.h"

struct join_options {
	const char *url;               /* "https://HOST:PORT" of the join listener */
	const char *token_file;        /* the join token (0600) */
	const char *ca_file;           /* verify the control plane against this CA, or NULL */
	const char *fingerprint;       /* or pin its key, "sha256:BASE64", or NULL: system CAs */
	const char *advertise;         /* the address the control plane should use, or NULL: the one
				  * our request comes from */
	const char *role;              /* or NULL */
	const char *capabilities;      /* comma-separated, or NULL */
	int port;                      /* the agent's port */
	const char *agent_token;       /* borrowed: handed to the control plane at registration */
	const char *agent_fingerprint; /* of the agent's certificate, or NULL (plain HTTP) */
	bool reverse;          /* --reverse: the control plane cannot dial us; keep a channel */
	const char *local_url; /* "https://ADDR:PORT" of our own API, for relayed requests */
};

struct agent_join;

/* Starts registering (retried with backoff while the control plane is unreachable) and,
 * once registered, heartbeats; with `reverse`, also the reverse channel: one long poll
 * (GET /api/join/work/NAME?wait=30) that brings the control plane's requests, each run
 * against our own API on a thread of its own and answered with a POST (re-established
 * with backoff when it drops). A refusal (401, 409, 400) is final: it is logged and the
 * agent is asked to stop (SIGTERM to itself), and agent_join_stop() then says so.
 * `opts` and `api` are borrowed and must outlive the thread. 0 or -errno with errbuf. */
int agent_join_start(const struct join_options *opts, const struct api_context *api,
		     struct agent_join **ret, char *errbuf, size_t errlen);
/* Stops the thread (at most one request's timeout) and frees it. Returns true when the
 * control plane had refused the registration. NULL is a no-op (false). */
bool agent_join_stop(struct agent_join *j);

/* `--leave`: asks the control plane to forget this node (it removes its drop-in). 0 or
 * -errno after logging why. */
int agent_join_leave(const struct join_options *opts, const char *name);
