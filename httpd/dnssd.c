/* DNS-SD through avahi: publishing a service, browsing for one. */
#include "httpd/dnssd.h"
#include "backend/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *dnssd_service_txt(const struct dnssd_service *s, const char *key)
{
	size_t kl = strlen(key);
	for (size_t i = 0; i < DNSSD_MAX_TXT && s->txt[i]; i++)
		if (strncmp(s->txt[i], key, kl) == 0 && s->txt[i][kl] == '=')
			return s->txt[i] + kl + 1;
	return NULL;
}

#ifdef HAVE_AVAHI

bool dnssd_supported(void)
{
	return true;
}

#include <arpa/inet.h>
#include <avahi-client/client.h>
#include <avahi-client/lookup.h>
#include <avahi-client/publish.h>
#include <avahi-common/alternative.h>
#include <avahi-common/error.h>
#include <avahi-common/malloc.h>
#include <avahi-common/simple-watch.h>
#include <avahi-common/thread-watch.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <time.h>

struct dnssd {
	AvahiThreadedPoll *poll;
	/* the fields below belong to avahi's thread once it runs */
	AvahiClient *client;
	AvahiEntryGroup *group;
	char *type, *name;
	int port;
	AvahiIfIndex iface;
	AvahiProtocol proto;
	char **txt;
	int n_txt;
	bool waiting_logged; /* "avahi-daemon is not running" said once per outage */
};

static void dnssd_client_cb(AvahiClient *c, AvahiClientState state, void *userdata);

static void dnssd_add(struct dnssd *d, AvahiClient *c);

/* Avahi's thread: another host on the LAN has our instance name: take the next one. */
static void dnssd_group_cb(AvahiEntryGroup *g, AvahiEntryGroupState state, void *userdata)
{
	struct dnssd *d = userdata;
	if (state == AVAHI_ENTRY_GROUP_COLLISION) {
		char *n = avahi_alternative_service_name(d->name);
		log_warn("dnssd: the name \"%s\" is taken on the LAN; publishing %s as \"%s\"",
			 d->name, d->type, n);
		avahi_free(d->name);
		d->name = n;
		avahi_entry_group_reset(g);
		dnssd_add(d, avahi_entry_group_get_client(g));
	} else if (state == AVAHI_ENTRY_GROUP_FAILURE) {
		log_warn("dnssd: publishing %s failed: %s", d->type,
			 avahi_strerror(avahi_client_errno(avahi_entry_group_get_client(g))));
	}
}

/* Avahi's thread: adds the service to a fresh entry group and commits it. */
static void dnssd_add(struct dnssd *d, AvahiClient *c)
{
	if (!d->group)
		d->group = avahi_entry_group_new(c, dnssd_group_cb, d);
	if (!d->group) {
		log_warn("dnssd: cannot publish %s: %s", d->type,
			 avahi_strerror(avahi_client_errno(c)));
		return;
	}
	if (!avahi_entry_group_is_empty(d->group))
		return;
	for (int tries = 0; tries < 20; tries++) {
		AvahiStringList *txt =
			avahi_string_list_new_from_array((const char **) d->txt, d->n_txt);
		int e = avahi_entry_group_add_service_strlst(d->group, d->iface, d->proto, 0,
							     d->name, d->type, NULL, NULL,
							     (uint16_t) d->port, txt);
		avahi_string_list_free(txt);
		if (e == AVAHI_ERR_COLLISION) {
			char *n = avahi_alternative_service_name(d->name);
			log_warn(
				"dnssd: the name \"%s\" is taken on the LAN; publishing %s as \"%s\"",
				d->name, d->type, n);
			avahi_free(d->name);
			d->name = n;
			avahi_entry_group_reset(d->group);
			continue;
		}
		if (e == 0)
			e = avahi_entry_group_commit(d->group);
		if (e < 0)
			log_warn("dnssd: cannot publish %s \"%s\": %s", d->type, d->name,
				 avahi_strerror(e));
		else
			log_info("dnssd: publishing %s \"%s\" on port %d", d->type, d->name,
				 d->port);
		return;
	}
}

/* Avahi's thread: follows the daemon; a collision of our host name, or a restart of the
 * daemon, publishes again once it is running. */
static void dnssd_client_cb(AvahiClient *c, AvahiClientState state, void *userdata)
{
	struct dnssd *d = userdata;
	switch (state) {
	case AVAHI_CLIENT_S_RUNNING:
		if (d->waiting_logged)
			log_info("dnssd: avahi-daemon is running again");
		d->waiting_logged = false;
		dnssd_add(d, c);
		break;
	case AVAHI_CLIENT_S_COLLISION:
	case AVAHI_CLIENT_S_REGISTERING:
		if (d->group)
			avahi_entry_group_reset(d->group);
		break;
	case AVAHI_CLIENT_CONNECTING:
		if (!d->waiting_logged)
			log_warn("dnssd: avahi-daemon is not running: %s is published once it is",
				 d->type);
		d->waiting_logged = true;
		break;
	case AVAHI_CLIENT_FAILURE:
		if (avahi_client_errno(c) == AVAHI_ERR_DISCONNECTED) {
			/* the daemon went away: start over, waiting for it to come back */
			int err = 0;
			avahi_client_free(c); /* frees the group too */
			d->group = NULL;
			d->client =
				avahi_client_new(avahi_threaded_poll_get(d->poll),
						 AVAHI_CLIENT_NO_FAIL, dnssd_client_cb, d, &err);
			if (!d->client)
				log_warn("dnssd: cannot reconnect to avahi-daemon: %s",
					 avahi_strerror(err));
		} else {
			log_warn("dnssd: avahi failed: %s", avahi_strerror(avahi_client_errno(c)));
		}
		break;
	default: break;
	}
}

/* The interface holding IPv4 `address`, for publishing on it alone. */
static int dnssd_iface_of(const char *address, AvahiIfIndex *ret, AvahiProtocol *ret_proto,
			  char *errbuf, size_t errlen)
{
	struct in_addr want;
	if (!address || strcmp(address, "0.0.0.0") == 0 || strcmp(address, "::") == 0 ||
	    !address[0]) {
		*ret = AVAHI_IF_UNSPEC;
		*ret_proto = AVAHI_PROTO_UNSPEC;
		return 0;
	}
	if (inet_pton(AF_INET, address, &want) != 1) {
		snprintf(errbuf, errlen, "DNS-SD announces IPv4 listeners (or a wildcard), not %s",
			 address);
		return -EAFNOSUPPORT;
	}
	if ((ntohl(want.s_addr) >> 24) == 127) {
		snprintf(errbuf, errlen,
			 "%s is a loopback address: nothing on the LAN could reach what is "
			 "announced (listen on a LAN address, or 0.0.0.0)",
			 address);
		return -EADDRNOTAVAIL;
	}
	struct ifaddrs *ifs = NULL;
	if (getifaddrs(&ifs) < 0) {
		int e = errno;
		snprintf(errbuf, errlen, "cannot list the interfaces: %s", strerror(e));
		return -e;
	}
	int r = -EADDRNOTAVAIL;
	for (struct ifaddrs *i = ifs; i; i = i->ifa_next) {
		if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET)
			continue;
		if (((struct sockaddr_in *) i->ifa_addr)->sin_addr.s_addr == want.s_addr) {
			*ret = (AvahiIfIndex) if_nametoindex(i->ifa_name);
			*ret_proto = AVAHI_PROTO_INET;
			r = 0;
			break;
		}
	}
	freeifaddrs(ifs);
	if (r < 0)
		snprintf(errbuf, errlen, "no interface has the address %s", address);
	return r;
}

int dnssd_publish(const char *type, const char *name, const char *address, int port,
		  const char *const *txt, struct dnssd **ret, char *errbuf, size_t errlen)
{
	AvahiIfIndex iface = AVAHI_IF_UNSPEC;
	AvahiProtocol proto = AVAHI_PROTO_UNSPEC;
	int r = dnssd_iface_of(address, &iface, &proto, errbuf, errlen);
	if (r < 0)
		return r;
	struct dnssd *d = xcalloc(1, sizeof(*d));
	d->type = avahi_strdup(type);
	d->name = avahi_strdup(name);
	d->port = port;
	d->iface = iface;
	d->proto = proto;
	while (txt && txt[d->n_txt])
		d->n_txt++;
	d->txt = xcalloc((size_t) d->n_txt + 1, sizeof(char *));
	for (int i = 0; i < d->n_txt; i++)
		d->txt[i] = xstrdup(txt[i]);
	d->poll = avahi_threaded_poll_new();
	int err = 0;
	if (d->poll) {
		/* the callback may run from here already, on this thread: the poll is not
		 * started yet */
		d->client = avahi_client_new(avahi_threaded_poll_get(d->poll), AVAHI_CLIENT_NO_FAIL,
					     dnssd_client_cb, d, &err);
	}
	if (!d->poll || !d->client || avahi_threaded_poll_start(d->poll) < 0) {
		snprintf(errbuf, errlen, "cannot start avahi's client: %s",
			 d->poll ? avahi_strerror(err) : "no memory");
		dnssd_free(d);
		return -ENOMEM;
	}
	*ret = d;
	return 0;
}

void dnssd_free(struct dnssd *d)
{
	if (!d)
		return;
	if (d->poll)
		avahi_threaded_poll_stop(d->poll);
	if (d->client)
		avahi_client_free(d->client); /* withdraws the entry group */
	if (d->poll)
		avahi_threaded_poll_free(d->poll);
	for (int i = 0; i < d->n_txt; i++)
		free(d->txt[i]);
	free(d->txt);
	avahi_free(d->type);
	avahi_free(d->name);
	free(d);
}

struct browse {
	AvahiSimplePoll *sp;
	AvahiClient *client;
	bool (*accept)(void *arg, const struct dnssd_service *s);
	void *arg;
	bool accepted;
	int err;
	char why[256];
};

static void browse_resolved(AvahiServiceResolver *res, AvahiIfIndex iface, AvahiProtocol proto,
			    AvahiResolverEvent event, const char *name, const char *type,
			    const char *domain, const char *host, const AvahiAddress *addr,
			    uint16_t port, AvahiStringList *txt, AvahiLookupResultFlags flags,
			    void *userdata)
{
	struct browse *b = userdata;
	if (event == AVAHI_RESOLVER_FOUND && !b->accepted && addr) {
		struct dnssd_service s;
		memset(&s, 0, sizeof(s));
		snprintf(s.name, sizeof(s.name), "%s", name);
		snprintf(s.host, sizeof(s.host), "%s", host ? host : "");
		avahi_address_snprint(s.address, sizeof(s.address), addr);
		s.port = port;
		int n = 0;
		for (AvahiStringList *t = txt; t && n < DNSSD_MAX_TXT - 1;
		     t = avahi_string_list_get_next(t)) {
			size_t len = avahi_string_list_get_size(t);
			const char *text = (const char *) avahi_string_list_get_text(t);
			if (memchr(text, '\0', len))
				continue; /* binary: none of ours */
			s.txt[n] = xcalloc(1, len + 1);
			memcpy(s.txt[n++], text, len);
		}
		if (b->accept(b->arg, &s)) {
			b->accepted = true;
			avahi_simple_poll_quit(b->sp);
		}
		for (int i = 0; i < n; i++)
			free(s.txt[i]);
	}
	avahi_service_resolver_free(res);
}

static void browse_cb(AvahiServiceBrowser *sb, AvahiIfIndex iface, AvahiProtocol proto,
		      AvahiBrowserEvent event, const char *name, const char *type,
		      const char *domain, AvahiLookupResultFlags flags, void *userdata)
{
	struct browse *b = userdata;
	if (event == AVAHI_BROWSER_NEW) {
		if (!avahi_service_resolver_new(b->client, iface, proto, name, type, domain,
						AVAHI_PROTO_INET, 0, browse_resolved, b))
			log_warn("dnssd: cannot resolve \"%s\": %s", name,
				 avahi_strerror(avahi_client_errno(b->client)));
	} else if (event == AVAHI_BROWSER_FAILURE) {
		b->err = -EIO;
		snprintf(b->why, sizeof(b->why), "browsing for %s failed: %s", type,
			 avahi_strerror(avahi_client_errno(b->client)));
		avahi_simple_poll_quit(b->sp);
	}
}

static void browse_client_cb(AvahiClient *c, AvahiClientState state, void *userdata)
{
	struct browse *b = userdata;
	if (state == AVAHI_CLIENT_FAILURE) {
		b->err = -ECONNRESET;
		snprintf(b->why, sizeof(b->why), "avahi-daemon went away: %s",
			 avahi_strerror(avahi_client_errno(c)));
		avahi_simple_poll_quit(b->sp);
	}
}

int dnssd_browse(const char *type, int timeout_ms, const volatile bool *stop,
		 bool (*accept)(void *arg, const struct dnssd_service *s), void *arg, char *errbuf,
		 size_t errlen)
{
	struct browse b = {.accept = accept, .arg = arg};
	int err = 0, r;
	b.sp = avahi_simple_poll_new();
	if (!b.sp) {
		snprintf(errbuf, errlen, "no memory for avahi's poll");
		return -ENOMEM;
	}
	b.client = avahi_client_new(avahi_simple_poll_get(b.sp), 0, browse_client_cb, &b, &err);
	if (!b.client) {
		snprintf(errbuf, errlen, "cannot reach avahi-daemon (is it running?): %s",
			 avahi_strerror(err));
		avahi_simple_poll_free(b.sp);
		return err == AVAHI_ERR_NO_DAEMON ? -ECONNREFUSED : -EIO;
	}
	AvahiServiceBrowser *sb = avahi_service_browser_new(
		b.client, AVAHI_IF_UNSPEC, AVAHI_PROTO_INET, type, NULL, 0, browse_cb, &b);
	if (!sb) {
		snprintf(errbuf, errlen, "cannot browse for %s: %s", type,
			 avahi_strerror(avahi_client_errno(b.client)));
		r = -EIO;
		goto out_free_client;
	}
	uint64_t deadline = clock_now_us() + (uint64_t) timeout_ms * 1000;
	while (!b.accepted && !b.err && !(stop && *stop)) {
		uint64_t now = clock_now_us();
		if (now >= deadline)
			break;
		uint64_t left_ms = (deadline - now) / 1000 + 1;
		/* slices: a stop is seen within 200 ms */
		if (avahi_simple_poll_iterate(b.sp, left_ms > 200 ? 200 : (int) left_ms) != 0)
			break;
	}
	if (b.accepted) {
		r = 0;
	} else if (b.err) {
		snprintf(errbuf, errlen, "%s", b.why);
		r = b.err;
	} else {
		snprintf(errbuf, errlen, "no %s service answered within %d ms", type, timeout_ms);
		r = -ETIMEDOUT;
	}
	avahi_service_browser_free(sb);
out_free_client:
	avahi_client_free(b.client); /* frees the resolvers still running */
	avahi_simple_poll_free(b.sp);
	return r;
}

#else /* !HAVE_AVAHI */

#define DNSSD_NO_AVAHI                                                                             \
	"this clusterfs was built without avahi (meson -Davahi=enabled needs "                     \
	"libavahi-client-dev)"

bool dnssd_supported(void)
{
	return false;
}

int dnssd_publish(const char *type, const char *name, const char *address, int port,
		  const char *const *txt, struct dnssd **ret, char *errbuf, size_t errlen)
{
	snprintf(errbuf, errlen, "cannot publish %s: %s", type, DNSSD_NO_AVAHI);
	return -ENOTSUP;
}

void dnssd_free(struct dnssd *d)
{
}

int dnssd_browse(const char *type, int timeout_ms, const volatile bool *stop,
		 bool (*accept)(void *arg, const struct dnssd_service *s), void *arg, char *errbuf,
		 size_t errlen)
{
	snprintf(errbuf, errlen, "cannot browse for %s: %s", type, DNSSD_NO_AVAHI);
	return -ENOTSUP;
}

#endif
