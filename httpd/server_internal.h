/* The agent's HTTP server: the private header of httpd/server*.c, never included
 * elsewhere. server.c runs the server (libmicrohttpd), server_listen.c makes its socket. */
#pragma once

#include <stddef.h>
#include <sys/socket.h>

/* "A.B.C.D:PORT" or "[V6]:PORT" of an IPv4 or IPv6 address, into out (outlen bytes). */
void server_format_address(const struct sockaddr_storage *ss, char *out, size_t outlen);
