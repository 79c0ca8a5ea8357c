/* Where and how to reach one server of the config: an agent, a host's service (Ollama,
 * OpenAI, ledger) or a top-level REST service. The one place URLs are made: the scheme
 * comes from the server's transport (https when it says "tls"), and plain http to an
 * address that is not loopback is refused here, before any request (or token) is sent,
 * unless the config says "insecure_http". */
#pragma once

#include "backend/loop.h"
#include "config/config.h"

#include <stdbool.h>

struct endpoint {
	char *url;           /* "https://ADDRESS:PORT/path" or "http://..."; owned */
	char *refused;       /* why nothing may be sent to it, or NULL; owned */
	bool https;          /* tls below applies */
	struct http_tls tls; /* points into the strings below */
	char *ca_file;       /* owned, or NULL */
	char *pinned_key;    /* "sha256//BASE64", owned, or NULL */
};

/* Builds the endpoint of `path` at address:port spoken to by transport `t` (NULL: plain
 * http), with `cfg`'s top-level tls.ca_file as the default CA file. `who` names the server
 * in the refusal ("this host", "service training"). Copies everything it keeps, so the
 * endpoint outlives the config. */
void endpoint_init(struct endpoint *e, const struct config *cfg, const char *address, int port,
		   const struct cfg_transport *t, const char *path, const char *who);
/* The endpoint of a host's agent, path on it. */
void endpoint_init_agent(struct endpoint *e, const struct config *cfg, const struct cfg_host *h,
			 const char *path);
/* A copy of e with `suffix` appended to its URL. */
void endpoint_init_sub(struct endpoint *e, const struct endpoint *base, const char *suffix);
void endpoint_clear(struct endpoint *e);

/* Points req's url, tls and refused at e (borrowed: e must outlive the loop_http call). */
void endpoint_apply(const struct endpoint *e, struct http_request *req);

/* True for an address that cannot leave the machine: 127.0.0.0/8, ::1 (also as
 * ::ffff:127.x.y.z) and "localhost". */
bool endpoint_address_is_loopback(const char *address);
