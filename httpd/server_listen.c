/* The agent's HTTP server: its listening socket, bound before the server starts (so a
 * port of 0 is known, and privileges can be dropped first). */
#include "httpd/server.h"
#include "httpd/server_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define SERVER_LISTEN_BACKLOG 128

/* Parses "A.B.C.D:PORT" or "[V6]:PORT" with numeric addresses. */
static int listen_parse(const char *addr, struct sockaddr_storage *ret_ss, socklen_t *ret_len)
{
	char host[INET6_ADDRSTRLEN + 1];
	const char *port_str;
	size_t hl;

	if (addr[0] == '[') {
		const char *end = strchr(addr, ']');
		if (!end || end[1] != ':')
			return -EINVAL;
		hl = (size_t) (end - addr - 1);
		if (hl == 0 || hl >= sizeof(host))
			return -EINVAL;
		memcpy(host, addr + 1, hl);
		port_str = end + 2;
	} else {
		const char *colon = strrchr(addr, ':');
		if (!colon)
			return -EINVAL;
		hl = (size_t) (colon - addr);
		if (hl == 0 || hl >= sizeof(host))
			return -EINVAL;
		memcpy(host, addr, hl);
		port_str = colon + 1;
	}
	host[hl] = '\0';

	if (port_str[0] < '0' || port_str[0] > '9' || strlen(port_str) > 5)
		return -EINVAL;
	char *end;
	unsigned long port = strtoul(port_str, &end, 10);
	if (*end || port > 65535)
		return -EINVAL;

	memset(ret_ss, 0, sizeof(*ret_ss));
	if (addr[0] == '[') {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *) ret_ss;
		if (inet_pton(AF_INET6, host, &s6->sin6_addr) != 1)
			return -EINVAL;
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((uint16_t) port);
		*ret_len = sizeof(*s6);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *) ret_ss;
		if (inet_pton(AF_INET, host, &s4->sin_addr) != 1)
			return -EINVAL;
		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t) port);
		*ret_len = sizeof(*s4);
	}
	return 0;
}

void server_format_address(const struct sockaddr_storage *ss, char *out, size_t outlen)
{
	char host[INET6_ADDRSTRLEN];
	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *) ss;
		inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
		snprintf(out, outlen, "[%s]:%u", host, ntohs(s6->sin6_port));
	} else {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *) ss;
		inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
		snprintf(out, outlen, "%s:%u", host, ntohs(s4->sin_port));
	}
}

int server_listen(const char *addr, int *ret_fd, char *ret_bound, size_t boundlen)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int one = 1;
	int fd, r;

	r = listen_parse(addr, &ss, &len);
	if (r < 0)
		return r;
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *) &ss, len) < 0 || listen(fd, SERVER_LISTEN_BACKLOG) < 0)
		goto err_close;
	len = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *) &ss, &len) < 0)
		goto err_close;
	server_format_address(&ss, ret_bound, boundlen);
	*ret_fd = fd;
	return 0;

err_close:
	r = -errno;
	close(fd);
	return r;
}
