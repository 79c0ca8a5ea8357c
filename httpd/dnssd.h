/* DNS-SD on the LAN through avahi (libavahi-client, over the system D-Bus): the agent's
 * `--announce` (_clusterfs._tcp), the join listener's "join": {"announce": true}
 * (_clusterfs-join._tcp) and `clusterfs-agent --join auto`, which browses for the latter.
 * Only where avahi-daemon runs; never an mDNS of our own. A build without avahi (meson
 * -Davahi=disabled) answers -ENOTSUP with a sentence saying so.
 *
 * What is found is a hint, not a proof: anyone on the LAN can announce anything. The caller
 * checks what it trusts (a pin, or a TXT record vouched for with a shared secret). */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#define DNSSD_AGENT_TYPE "_clusterfs._tcp"      /* an agent (--announce) */
#define DNSSD_JOIN_TYPE  "_clusterfs-join._tcp" /* a control plane's join listener */
#define DNSSD_MAX_TXT    16                     /* TXT entries kept per found service */

struct dnssd;

/* Whether this build has avahi (false: every call below answers -ENOTSUP). */
bool dnssd_supported(void);

/* Publishes service instance `name` of `type` on `port`, with the TXT entries `txt`
 * ("key=value", NULL-terminated; borrowed, copied), on the interface that holds `address`
 * (NULL, "0.0.0.0" or "::": every interface avahi uses). Runs avahi's thread; keeps the
 * service published while avahi-daemon restarts or is not running yet (logged), and takes
 * another name ("NAME #2") on a collision. 0 or -errno with one sentence in errbuf. */
int dnssd_publish(const char *type, const char *name, const char *address, int port,
		  const char *const *txt, struct dnssd **ret, char *errbuf, size_t errlen);
/* Withdraws the service and frees it. NULL is a no-op. */
void dnssd_free(struct dnssd *d);

/* One resolved service instance. */
struct dnssd_service {
	char name[64];    /* the instance name */
	char host[256];   /* its host's mDNS name ("box.local") */
	char address[64]; /* its IPv4 address, numeric */
	int port;
	char *txt[DNSSD_MAX_TXT]; /* "key=value", NULL-terminated */
};

/* The value of TXT entry `key` of s, or NULL. Borrowed from s. */
const char *dnssd_service_txt(const struct dnssd_service *s, const char *key);

/* Browses for instances of `type` (IPv4) for at most timeout_ms, resolving each, and calls
 * accept(arg, s) for each one resolved until it returns true; *stop (when not NULL) ends
 * the browse early. 0 when one was accepted; -ETIMEDOUT when none was; -ECONNREFUSED when
 * avahi-daemon is not running; else -errno; with one sentence in errbuf. */
int dnssd_browse(const char *type, int timeout_ms, const volatile bool *stop,
		 bool (*accept)(void *arg, const struct dnssd_service *s), void *arg, char *errbuf,
		 size_t errlen);
