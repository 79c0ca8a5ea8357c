/* URLs and transport settings of the config's servers, in one place. */
#include "backend/endpoint.h"
#include "backend/util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

bool endpoint_address_is_loopback(const char *address)
{
	struct in_addr a4;
	struct in6_addr a6;

	if (strcasecmp(address, "localhost") == 0 || strcasecmp(address, "localhost.") == 0)
		return true;
	if (inet_pton(AF_INET, address, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (inet_pton(AF_INET6, address, &a6) == 1)
		return IN6_IS_ADDR_LOOPBACK(&a6) ||
		       (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
	return false;
}

static void endpoint_set_tls(struct endpoint *e)
{
	e->tls.ca_file = e->ca_file;
	e->tls.pinned_key = e->pinned_key;
}

void endpoint_init(struct endpoint *e, const struct config *cfg, const char *address, int port,
		   const struct cfg_transport *t, const char *path, const char *who)
{
	memset(e, 0, sizeof(*e));
	e->https = t && t->tls;
	e->url = util_host_url(e->https ? "https" : "http", address, port, path);
	if (e->https) {
		const char *ca = t->ca_file ? t->ca_file : cfg ? cfg->tls_ca_file : NULL;
		/* a pin alone verifies; a CA file is used when one is named for this server,
		 * or, without a pin, the top-level one */
		if (t->ca_file || !t->fingerprint)
			e->ca_file = ca ? xstrdup(ca) : NULL;
		if (t->fingerprint) {
			struct buf b;
			buf_init(&b);
			buf_printf(&b, "sha256//%s",
				   t->fingerprint + strlen(CFG_FINGERPRINT_PREFIX));
			e->pinned_key = buf_steal(&b, NULL);
		}
		endpoint_set_tls(e);
	} else if (!(t && t->insecure_http) && !endpoint_address_is_loopback(address)) {
		struct buf b;
		buf_init(&b);
		buf_printf(&b, "plain HTTP to %s is refused: set tls or insecure_http for %s",
			   address, who);
		e->refused = buf_steal(&b, NULL);
	}
}

void endpoint_init_agent(struct endpoint *e, const struct config *cfg, const struct cfg_host *h,
			 const char *path)
{
	/* services.agent.path prefixes every agent path: a reverse node is reached through
	 * the join listener's relay (/api/join/relay/NAME) */
	const struct cfg_service *svc = config_host_service(h, "agent");
	if (svc && svc->path && svc->path[0]) {
		struct buf b;
		buf_init(&b);
		buf_printf(&b, "%s%s", svc->path, path);
		endpoint_init(e, cfg, h->address, h->agent_port, &h->transport, b.data,
			      "this host");
		buf_free(&b);
		return;
	}
	endpoint_init(e, cfg, h->address, h->agent_port, &h->transport, path, "this host");
}

void endpoint_init_sub(struct endpoint *e, const struct endpoint *base, const char *suffix)
{
	struct buf b;
	memset(e, 0, sizeof(*e));
	buf_init(&b);
	buf_printf(&b, "%s%s", base->url, suffix);
	e->url = buf_steal(&b, NULL);
	e->refused = base->refused ? xstrdup(base->refused) : NULL;
	e->https = base->https;
	e->ca_file = base->ca_file ? xstrdup(base->ca_file) : NULL;
	e->pinned_key = base->pinned_key ? xstrdup(base->pinned_key) : NULL;
	endpoint_set_tls(e);
}

void endpoint_clear(struct endpoint *e)
{
	free(e->url);
	free(e->refused);
	free(e->ca_file);
	free(e->pinned_key);
	memset(e, 0, sizeof(*e));
}

void endpoint_apply(const struct endpoint *e, struct http_request *req)
{
	req->url = e->url;
	req->tls = e->https ? &e->tls : NULL;
	req->refused = e->refused;
}
