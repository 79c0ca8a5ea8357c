/* The reverse channel of nodes behind NAT (`clusterfs-agent --join URL --reverse`).
 *
 * Such a node cannot be dialled, so its drop-in points the control plane's agent client
 * at the join listener itself: https://LISTENER/api/join/relay/NAME/api/node/... Every
 * request the backend makes of the node (probes, dispatches, cancels, output, blocking
 * task polls, models) arrives there and is queued for the node; the agent keeps one long
 * poll open (GET /api/join/work/NAME?wait=30) that carries the queued requests down, runs
 * each against its own API, and POSTs each answer back (/api/join/result/NAME), which
 * answers the waiting relayed request. The backend sees an agent like any other, so the
 * guarantees are the same: a dispatch carries its id, a lost answer is a failed request
 * that the backend retries with the same id, and the agent never runs an id twice.
 *
 * All of it runs on the join listener's threads, under one lock. */
#pragma once

#include "httpd/server.h"

struct relay;

struct relay *relay_new(void);
void relay_free(struct relay *r);
/* The server whose deferred requests the relay wakes; set before it serves. */
void relay_set_server(struct relay *r, struct server *srv);

/* Handlers (the caller has authorised the request for node req->params[0]). */
int relay_handle_request(struct relay *r, struct request *req, struct response *resp);
int relay_handle_work(struct relay *r, struct request *req, struct response *resp);
int relay_handle_result(struct relay *r, struct request *req, struct response *resp);

/* Whether node `name` has a work poll open now. */
bool relay_is_connected(struct relay *r, const char *name);
