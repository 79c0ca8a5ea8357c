/* `clusterfs-agent --init`: token, certificate, and the hosts.json entry to paste. */
#include "tools/agent/init.h"
#include "backend/util.h"
#include "httpd/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <jansson.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define INIT_TOKEN_BYTES 32
#define INIT_MAX_NAMES   32

/* Creates dir and its missing parents with mode 0700. 0 or -errno. */
static int init_make_dir(const char *dir)
{
	_cleanup_free_ char *p = xstrdup(dir);
	struct stat st;
	for (char *s = strchr(p + 1, '/'); s; s = strchr(s + 1, '/')) {
		*s = '\0';
		if (mkdir(p, 0700) < 0 && errno != EEXIST)
			return -errno;
		*s = '/';
	}
	if (mkdir(p, 0700) < 0 && errno != EEXIST)
		return -errno;
	if (stat(p, &st) < 0)
		return -errno;
	if (!S_ISDIR(st.st_mode))
		return -ENOTDIR;
	if (st.st_mode & (S_IRWXG | S_IRWXO))
		log_warn("%s is accessible by group or others (mode %04o); consider: chmod 700 %s",
			 p, (unsigned) (st.st_mode & 07777), p);
	return 0;
}

/* Writes a new file of mode 0600 that must not exist yet. 0, -EEXIST, or -errno. */
static int init_write_new(const char *path, const char *data)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return -errno;
	size_t len = strlen(data), off = 0;
	int r = 0;
	while (off < len) {
		ssize_t n = write(fd, data + off, len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = -errno;
			break;
		}
		off += (size_t) n;
	}
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (close(fd) < 0 && r == 0)
		r = -errno;
	if (r < 0)
		unlink(path);
	return r;
}

static char *init_path(const char *dir, const char *file)
{
	struct buf b;
	buf_init(&b);
	buf_printf(&b, "%s/%s", dir, file);
	return buf_steal(&b, NULL);
}

static bool init_exists(const char *path)
{
	struct stat st;
	return lstat(path, &st) == 0;
}

static int init_token(const char *path)
{
	unsigned char raw[INIT_TOKEN_BYTES];
	char hex[2 * INIT_TOKEN_BYTES + 2];
	if (getrandom(raw, sizeof(raw), 0) != (ssize_t) sizeof(raw)) {
		log_err("getrandom: %s", strerror(errno));
		return -EIO;
	}
	for (size_t i = 0; i < sizeof(raw); i++)
		snprintf(hex + 2 * i, 3, "%02x", raw[i]);
	hex[2 * INIT_TOKEN_BYTES] = '\n';
	hex[2 * INIT_TOKEN_BYTES + 1] = '\0';
	int r = init_write_new(path, hex);
	explicit_bzero(raw, sizeof(raw));
	explicit_bzero(hex, sizeof(hex));
	if (r == -EEXIST) {
		fprintf(stderr, "kept %s (it exists)\n", path);
		return 0;
	}
	if (r < 0) {
		log_err("cannot create %s: %s", path, strerror(-r));
		return r;
	}
	fprintf(stderr, "created %s\n", path);
	return 0;
}

/* Splits "ADDR:PORT" or "[ADDR6]:PORT". 0 or -EINVAL. */
static int init_split_listen(const char *listen, char *addr, size_t addrlen, int *ret_port)
{
	const char *colon, *start = listen, *end;
	if (listen[0] == '[') {
		start = listen + 1;
		end = strchr(start, ']');
		if (!end || end[1] != ':')
			return -EINVAL;
		colon = end + 1;
	} else {
		colon = strrchr(listen, ':');
		if (!colon)
			return -EINVAL;
		end = colon;
	}
	char *tail;
	long port = strtol(colon + 1, &tail, 10);
	if ((size_t) (end - start) >= addrlen || *tail || port < 1 || port > 65535)
		return -EINVAL;
	memcpy(addr, start, (size_t) (end - start));
	addr[end - start] = '\0';
	*ret_port = (int) port;
	return 0;
}

/* A name usable as a DNS subjectAltName: letters, digits, '-' and '.'. */
static bool init_dns_ok(const char *s)
{
	if (!*s || strlen(s) > 253)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '-' || *s == '.'))
			return false;
	return true;
}

static bool init_is_wildcard(const char *addr)
{
	return strcmp(addr, "0.0.0.0") == 0 || strcmp(addr, "::") == 0;
}

static void init_add_name(char **list, size_t *n, const char *s)
{
	for (size_t i = 0; i < *n; i++)
		if (strcmp(list[i], s) == 0)
			return;
	if (*n < INIT_MAX_NAMES)
		list[(*n)++] = xstrdup(s);
}

/* The machine's own addresses, for a certificate of an agent listening on all of them
 * (link-local IPv6 addresses, which need a zone, are left out). */
static void init_add_local_addresses(char **ips, size_t *n_ips)
{
	struct ifaddrs *ifa_list, *ifa;
	if (getifaddrs(&ifa_list) < 0)
		return;
	for (ifa = ifa_list; ifa; ifa = ifa->ifa_next) {
		char text[INET6_ADDRSTRLEN];
		if (!ifa->ifa_addr)
			continue;
		if (ifa->ifa_addr->sa_family == AF_INET) {
			inet_ntop(AF_INET, &((struct sockaddr_in *) ifa->ifa_addr)->sin_addr, text,
				  sizeof(text));
		} else if (ifa->ifa_addr->sa_family == AF_INET6) {
			const struct in6_addr *a =
				&((struct sockaddr_in6 *) ifa->ifa_addr)->sin6_addr;
			if (IN6_IS_ADDR_LINKLOCAL(a))
				continue;
			inet_ntop(AF_INET6, a, text, sizeof(text));
		} else {
			continue;
		}
		init_add_name(ips, n_ips, text);
	}
	freeifaddrs(ifa_list);
}

/* Makes DIR/agent.crt and DIR/agent.key, or keeps them when both exist. */
static int init_certificate(const char *cert_path, const char *key_path, const char *name,
			    const char *host, const char *addr)
{
	bool have_cert = init_exists(cert_path), have_key = init_exists(key_path);
	char *dns[INIT_MAX_NAMES], *ips[INIT_MAX_NAMES];
	size_t n_dns = 0, n_ips = 0;
	char *cert = NULL, *key = NULL, errbuf[512];
	int r;

	if (have_cert && have_key) {
		fprintf(stderr, "kept %s and %s (they exist)\n", cert_path, key_path);
		return 0;
	}
	if (have_cert || have_key) {
		log_err("%s exists without %s; move it away to make a new pair, or name a pair "
			"with --tls-cert and --tls-key",
			have_cert ? cert_path : key_path, have_cert ? key_path : cert_path);
		return -EEXIST;
	}
	if (init_dns_ok(name))
		init_add_name(dns, &n_dns, name);
	if (init_dns_ok(host))
		init_add_name(dns, &n_dns, host);
	init_add_name(dns, &n_dns, "localhost");
	if (init_is_wildcard(addr))
		init_add_local_addresses(ips, &n_ips);
	else
		init_add_name(ips, &n_ips, addr);
	init_add_name(ips, &n_ips, "127.0.0.1");
	init_add_name(ips, &n_ips, "::1");

	r = tls_make_self_signed(name, (const char *const *) dns, n_dns, (const char *const *) ips,
				 n_ips, &cert, &key, errbuf, sizeof(errbuf));
	if (r < 0) {
		log_err("cannot make a certificate: %s", errbuf);
		goto out_free;
	}
	r = init_write_new(key_path, key);
	if (r < 0) {
		log_err("cannot create %s: %s", key_path, strerror(-r));
		goto out_free;
	}
	r = init_write_new(cert_path, cert);
	if (r < 0) {
		log_err("cannot create %s: %s", cert_path, strerror(-r));
		unlink(key_path);
		goto out_free;
	}
	fprintf(stderr, "created %s (self-signed, ECDSA P-256, valid for 10 years) and %s\n",
		cert_path, key_path);
out_free:
	for (size_t i = 0; i < n_dns; i++)
		free(dns[i]);
	for (size_t i = 0; i < n_ips; i++)
		free(ips[i]);
	free(cert);
	if (key) {
		explicit_bzero(key, strlen(key));
		free(key);
	}
	return r;
}

/* A word for a shell command line: as it is when safe, else in single quotes. */
static void init_shell_word(struct buf *b, const char *s)
{
	if (s[0] && strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
			      "-_./:=[]@%+,") == strlen(s)) {
		buf_puts(b, s);
		return;
	}
	buf_puts(b, "'");
	for (; *s; s++) {
		if (*s == '\'')
			buf_puts(b, "'\\''");
		else
			buf_append(b, s, 1);
	}
	buf_puts(b, "'");
}

/* Prints what to do with what init made: the hosts.json entry (one line) and the agent's
 * command line on stdout, and how to use them on stderr. */
static void init_print(const struct init_request *req, const char *name, const char *host,
		       const char *addr, int port, const char *fp, const char *token_path,
		       const char *cert_path, const char *key_path)
{
	/* the entry for "hosts" in the control plane's hosts.json */
	struct buf token_file;
	buf_init(&token_file);
	buf_printf(&token_file, "%s.token", name);
	json_t *entry = json_pack("{s:s, s:i, s:s, s:{s:s}}", "host",
				  init_is_wildcard(addr) ? (host[0] ? host : name) : addr, "port",
				  port, "token_file", token_file.data, "tls", "fingerprint", fp);
	json_t *key_json = json_string(name);
	/* one line, ", " and ": " between items, as in the README's examples */
	char *entry_text = json_dumps(entry, JSON_PRESERVE_ORDER);
	char *name_text = json_dumps(key_json, JSON_ENCODE_ANY);
	json_decref(entry);
	json_decref(key_json);
	if (!entry_text || !name_text)
		abort();
	printf("%s: %s\n", name_text, entry_text);

	struct buf cmd;
	buf_init(&cmd);
	buf_puts(&cmd, "clusterfs-agent --listen ");
	init_shell_word(&cmd, req->listen);
	buf_puts(&cmd, " --token-file ");
	init_shell_word(&cmd, token_path);
	buf_puts(&cmd, " --tls-cert ");
	init_shell_word(&cmd, cert_path);
	buf_puts(&cmd, " --tls-key ");
	init_shell_word(&cmd, key_path);
	buf_puts(&cmd, " --name ");
	init_shell_word(&cmd, name);
	printf("%s\n", cmd.data);
	fflush(stdout);

	fprintf(stderr,
		"\nAdd the first line under \"hosts\" in the control plane's hosts.json, and copy\n"
		"%s there as %s (mode 0600, beside hosts.json).\n"
		"Start the agent with the second line (or systemctl enable --now clusterfs-agent).\n",
		token_path, token_file.data);
	if (init_is_wildcard(addr))
		fprintf(stderr,
			"The agent listens on every address, so the entry names this host %s: put\n"
			"the address the control plane reaches it at in \"host\" if that name does "
			"not resolve there.\n",
			host[0] ? host : name);
	free(entry_text);
	free(name_text);
	buf_free(&cmd);
	buf_free(&token_file);
}

int init_run(const struct init_request *req)
{
	char host[HOST_NAME_MAX + 1] = "", addr[INET6_ADDRSTRLEN + 8], errbuf[512];
	const char *name = req->name;
	int port, r;

	if (init_split_listen(req->listen, addr, sizeof(addr), &port) < 0) {
		log_err("invalid --listen address '%s': expected ADDR:PORT or [ADDR6]:PORT",
			req->listen);
		return -EINVAL;
	}
	if (gethostname(host, sizeof(host)) < 0)
		host[0] = '\0';
	host[sizeof(host) - 1] = '\0';
	if (!name)
		name = host[0] ? host : "localhost";
	if (!name_is_valid(name)) {
		log_err("invalid node name '%s'", name);
		return -EINVAL;
	}
	/* a given pair is checked before anything is created */
	if (req->tls_cert) {
		char *c = NULL, *k = NULL;
		r = tls_read_pair(req->tls_cert, req->tls_key, &c, &k, errbuf, sizeof(errbuf));
		if (r < 0) {
			log_err("%s", errbuf);
			return r;
		}
		free(c);
		explicit_bzero(k, strlen(k));
		free(k);
	}
	r = init_make_dir(req->dir);
	if (r < 0) {
		log_err("cannot create %s: %s", req->dir, strerror(-r));
		return r;
	}
	_cleanup_free_ char *dir = realpath(req->dir, NULL);
	if (!dir) {
		r = -errno;
		log_err("cannot resolve %s: %s", req->dir, strerror(errno));
		return r;
	}
	_cleanup_free_ char *token_path = init_path(dir, "agent.token");
	_cleanup_free_ char *cert_path =
		req->tls_cert ? realpath(req->tls_cert, NULL) : init_path(dir, "agent.crt");
	_cleanup_free_ char *key_path =
		req->tls_key ? realpath(req->tls_key, NULL) : init_path(dir, "agent.key");
	if (!cert_path || !key_path) {
		log_err("cannot find %s", !cert_path ? req->tls_cert : req->tls_key);
		return -ENOENT;
	}

	r = init_token(token_path);
	if (r < 0)
		return r;
	if (!req->tls_cert) {
		r = init_certificate(cert_path, key_path, name, host, addr);
		if (r < 0)
			return r;
	}

	/* the pair as the agent will load it: a key it would refuse is refused now */
	char *cert = NULL, *key = NULL, *fp = NULL;
	r = tls_read_pair(cert_path, key_path, &cert, &key, errbuf, sizeof(errbuf));
	if (r == 0) {
		explicit_bzero(key, strlen(key));
		free(key);
		r = tls_fingerprint_pem(cert, &fp, errbuf, sizeof(errbuf));
		free(cert);
	}
	if (r < 0) {
		log_err("%s", errbuf);
		return r;
	}

	init_print(req, name, host, addr, port, fp, token_path, cert_path, key_path);
	free(fp);
	return 0;
}
