/* The join listener: agents register themselves, push heartbeats and leave. */
#include "daemon/join.h"
#include "daemon/relay.h"
#include "backend/util.h"
#include "httpd/dnssd.h"
#include "httpd/server.h"
#include "httpd/tls.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define JOIN_MAX_TOKEN 512 /* an agent's token longer than this is refused */
/* An agent's connection outlives its heartbeat period by this much (a heartbeat late by
 * less comes back on it), and is never kept idle longer than JOIN_KEEP_MAX_S. */
#define JOIN_KEEP_MARGIN_S 30
#define JOIN_KEEP_MAX_S    600

struct join {
	struct server *srv;
	struct cluster *cluster; /* borrowed */
	char *token;             /* the join token; the server borrows it */
	char *cert_pem, *key_pem;
	char bound[64];
	int listen_fd;       /* bound, until the server owns it; -1 then */
	int port;            /* of bound */
	char relay_host[64]; /* where the control plane reaches its own listener */
	char *fingerprint;   /* of the listener's certificate: what reverse drop-ins pin */
	struct relay *relay;
	/* join.announce: _clusterfs-join._tcp on the LAN, with the fingerprint vouched for
	 * with the join token (tls_vouch) for `clusterfs-agent --join auto` */
	bool announce;
	char listen_host[64]; /* the listen address as configured (a wildcard stays one) */
	char *cluster_name;
	struct dnssd *dnssd;
	unsigned keep_s; /* an agent's idle connection is kept this long: past a heartbeat */
	/* Registrations check, then write: one at a time, so two agents racing for one name
	 * cannot both win. */
	pthread_mutex_t write_lock;
};

/* Writes `data` to DIR/NAME atomically (DIR/.NAME.tmp, fsync, rename) with `mode`. */
static int write_file_atomic(const char *dir, const char *name, const char *data, mode_t mode)
{
	char tmp[4096], dst[4096];
	snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, name);
	snprintf(dst, sizeof(dst), "%s/%s", dir, name);
	unlink(tmp);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
	if (fd < 0)
		return -errno;
	size_t len = strlen(data), off = 0;
	int r = 0;
	if (fchmod(fd, mode) < 0)
		r = -errno;
	while (r == 0 && off < len) {
		ssize_t n = write(fd, data + off, len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			r = -errno;
		else
			off += (size_t) n;
	}
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (close(fd) < 0 && r == 0)
		r = -errno;
	if (r == 0 && rename(tmp, dst) < 0)
		r = -errno;
	if (r < 0)
		unlink(tmp);
	return r;
}

/* The fingerprint pinned by an existing drop-in, "" when it pins none; -ENOENT when there is
 * no drop-in. *ret is a new string. */
static int dropin_fingerprint(const char *dir, const char *name, char **ret)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s.json", dir, name);
	json_t *doc = json_load_file(path, 0, NULL);
	if (!doc)
		return access(path, F_OK) == 0 ? -EBADMSG : -ENOENT;
	const char *fp = json_string_value(json_object_get(doc, "agent_fingerprint"));
	if (!fp)
		fp = json_string_value(json_object_get(json_object_get(doc, "tls"), "fingerprint"));
	*ret = xstrdup(fp ? fp : "");
	json_decref(doc);
	return 0;
}

/* Whether `token` equals the agent token stored for drop-in `name` (constant time). */
static bool join_token_matches(const char *dir, const char *name, const char *token)
{
	char path[4096], *held = NULL, err[256];
	snprintf(path, sizeof(path), "%s/%s.token", dir, name);
	if (token_read_file(path, &held, err, sizeof(err)) < 0)
		return false;
	bool ok = secret_equal(token, held);
	explicit_bzero(held, strlen(held));
	free(held);
	return ok;
}

/* Whether `token` is usable as an agent token: printable ASCII without spaces. */
static bool token_is_sane(const char *token)
{
	size_t len = strlen(token);
	if (len < 16 || len > JOIN_MAX_TOKEN)
		return false;
	for (const char *p = token; *p; p++)
		if (*p <= ' ' || *p >= 0x7f)
			return false;
	return true;
}

/* The body as a JSON object, or an answer of 400. */
static json_t *join_body(struct request *req, struct response *resp)
{
	json_error_t jerr;
	json_t *doc = json_loadb(req->body, req->body_len, 0, &jerr);
	if (!json_is_object(doc)) {
		json_decref(doc);
		response_set_error(resp, 400, "the body must be a JSON object: %s", jerr.text);
		return NULL;
	}
	return doc;
}

/* Checks the agent token in body "token" against the one the control plane holds for
 * joined node `name`, in constant time: 0 when it matches the loaded config's; -ENOENT
 * when the node is registered (its token file matches) but not loaded yet; else -EPERM. */
static int join_agent_proves(struct join *j, const char *name, const char *token)
{
	if (!token || !name_is_valid(name) || name[0] == '.')
		return -EPERM;
	struct config *cfg = cluster_get_config(j->cluster);
	const struct cfg_host *h = config_find_host(cfg, name);
	int r = -EPERM;
	if (h && h->dropin && h->token && secret_equal(token, h->token)) {
		r = 0;
	} else if (!h && cfg->dropin_dir) {
		char path[4096], *held = NULL, err[256];
		snprintf(path, sizeof(path), "%s/%s.json", cfg->dropin_dir, name);
		bool registered = access(path, F_OK) == 0;
		snprintf(path, sizeof(path), "%s/%s.token", cfg->dropin_dir, name);
		if (registered && token_read_file(path, &held, err, sizeof(err)) == 0) {
			if (secret_equal(token, held))
				r = -ENOENT;
			explicit_bzero(held, strlen(held));
			free(held);
		}
	}
	config_unref(cfg);
	return r;
}

/* POST /api/join: {"name", "port", "token", "fingerprint"?, "host"?, "role"?,
 * "capabilities"?, "version"?}. The address defaults to the one the request came from. */
/* The drop-in of a registration: what hosts.NAME would hold, naming token_name for the
 * token. A new object. */
static json_t *registration_entry(const struct join *j, const char *name, const char *address,
				  json_t *port, const char *fp, bool reverse, json_t *role,
				  json_t *caps, const char *token_name)
{
	json_t *entry;
	if (reverse) {
		/* behind NAT: reached through this listener's relay, which it pins */
		char relay_path[320];
		snprintf(relay_path, sizeof(relay_path), "/api/join/relay/%s", name);
		entry = json_pack("{ss s{s{si ss}} ss s{ss} sb}", "host", j->relay_host, "services",
				  "agent", "port", j->port, "path", relay_path, "token_file",
				  token_name, "tls", "fingerprint", j->fingerprint, "reverse", 1);
		if (fp)
			json_object_set_new(entry, "agent_fingerprint", json_string(fp));
	} else {
		entry = json_pack("{ss sO ss}", "host", address, "port", port, "token_file",
				  token_name);
		if (fp)
			json_object_set_new(entry, "tls", json_pack("{ss}", "fingerprint", fp));
	}
	if (json_is_string(role))
		json_object_set(entry, "role", role);
	if (caps)
		json_object_set(entry, "capabilities", caps);
	return entry;
}

/* Writes the registration's token and drop-in into the drop-in directory, unless the name
 * is another host's (pinned to another fingerprint, or registered with another token).
 * Returns 0 with *ret_update (the name was registered before) and file_name set, or -1
 * with the answer in resp. */
static int registration_write(struct join *j, const struct config *cfg, const char *name,
			      const char *fp, const char *token, const char *token_name,
			      json_t *entry, struct response *resp, bool *ret_update,
			      char *file_name, size_t file_len)
{
	char *old_fp = NULL, *text = NULL;
	pthread_mutex_lock(&j->write_lock);
	if (mkdir(cfg->dropin_dir, 0755) < 0 && errno != EEXIST) {
		int e = errno;
		pthread_mutex_unlock(&j->write_lock);
		log_err("join: cannot create %s: %s", cfg->dropin_dir, strerror(e));
		response_set_error(resp, 500, "cannot create the drop-in directory");
		goto fail;
	}
	int r = dropin_fingerprint(cfg->dropin_dir, name, &old_fp);
	bool update = *ret_update = r == 0;
	if (r == -EBADMSG || (r == 0 && strcmp(old_fp, fp ? fp : "") != 0)) {
		pthread_mutex_unlock(&j->write_lock);
		response_set_error(resp, 409,
				   "the name \"%s\" is taken by another host (hosts.d/%s.json pins "
				   "%s); join under another --name, or remove that file first",
				   name, name,
				   r == -EBADMSG ? "something unreadable"
				   : old_fp[0]   ? "another certificate fingerprint"
						 : "no certificate");
		goto fail;
	}
	if (update && !join_token_matches(cfg->dropin_dir, name, token)) {
		/* a fingerprint is public: re-joining must also prove the agent's own token,
		 * or anyone with the join token could take a registered node's work */
		pthread_mutex_unlock(&j->write_lock);
		response_set_error(
			resp, 409,
			"the name \"%s\" is registered by an agent with another token; "
			"run --leave with the old token, or remove hosts.d/%s.json first",
			name, name);
		goto fail;
	}
	snprintf(file_name, file_len, "%s.json", name);
	text = json_dumps(entry, JSON_INDENT(2) | JSON_SORT_KEYS);
	/* the token first: the drop-in that names it loads only once both are there */
	r = write_file_atomic(cfg->dropin_dir, token_name, token, 0600);
	if (r == 0) {
		char *with_nl = xasprintf("%s\n", text);
		r = write_file_atomic(cfg->dropin_dir, file_name, with_nl, 0644);
		free(with_nl);
	}
	pthread_mutex_unlock(&j->write_lock);
	if (r < 0) {
		log_err("join: cannot write %s/%s: %s", cfg->dropin_dir, file_name, strerror(-r));
		response_set_error(resp, 500, "cannot write the drop-in: %s", strerror(-r));
		goto fail;
	}
	free(text);
	free(old_fp);
	return 0;
fail:
	free(text);
	free(old_fp);
	return -1;
}

static int join_register(struct request *req, struct response *resp)
{
	struct join *j = req->userdata;
	json_t *body = join_body(req, resp);
	if (!body)
		return 0;
	const char *name = json_string_value(json_object_get(body, "name"));
	const char *token = json_string_value(json_object_get(body, "token"));
	const char *fp = json_string_value(json_object_get(body, "fingerprint"));
	const char *address = json_string_value(json_object_get(body, "host"));
	json_t *port = json_object_get(body, "port");
	json_t *role = json_object_get(body, "role");
	json_t *caps = json_object_get(body, "capabilities");
	const char *version = json_string_value(json_object_get(body, "version"));
	bool reverse = json_is_true(json_object_get(body, "reverse"));
	char peer[64] = "";
	char err[512];
	json_t *entry = NULL;
	struct config *cfg = NULL;

	if (!name || !token || !json_is_integer(port)) {
		response_set_error(resp, 400,
				   "a registration needs \"name\", \"port\" and \"token\" (the "
				   "agent's own token, which the control plane will use)");
		goto out;
	}
	if (!token_is_sane(token)) {
		response_set_error(resp, 400,
				   "the agent's token must be 16 to %d printable characters "
				   "without spaces",
				   JOIN_MAX_TOKEN);
		goto out;
	}
	if (fp && !config_fingerprint_is_valid(fp)) {
		response_set_error(resp, 400, "\"fingerprint\" must be \"sha256:BASE64\"");
		goto out;
	}
	if (!address) {
		if (request_peer_address(req, peer, sizeof(peer)) < 0) {
			response_set_error(resp, 400, "no \"host\" given and no peer address");
			goto out;
		}
		address = peer;
	}

	/* The drop-in: what hosts.NAME would hold. The token goes into a file of its own. */
	char token_name[300];
	snprintf(token_name, sizeof(token_name), "%s.token", name);
	entry = registration_entry(j, name, address, port, fp, reverse, role, caps, token_name);
	if (config_check_host(name, entry, err, sizeof(err)) < 0) {
		response_set_error(resp, 400, "invalid registration: %s", err);
		goto out;
	}

	cfg = cluster_get_config(j->cluster);
	if (!cfg->dropin_dir) {
		response_set_error(resp, 503, "the control plane runs without a config file");
		goto out;
	}
	const struct cfg_host *typed = config_find_host(cfg, name);
	if (typed && !typed->dropin) {
		response_set_error(resp, 409,
				   "the name \"%s\" is taken: hosts.json has a host of that name; "
				   "join under another --name",
				   name);
		goto out;
	}
	bool update;
	char file_name[300];
	if (registration_write(j, cfg, name, fp, token, token_name, entry, resp, &update, file_name,
			       sizeof(file_name)) < 0)
		goto out;
	log_info("join: %s %s at %s:%lld%s%s", update ? "updated" : "registered", name, address,
		 (long long) json_integer_value(port), version ? ", agent " : "",
		 version ? version : "");
	cluster_add_event(j->cluster, "node", name, "%s by the agent (%s:%lld)",
			  update ? "joined again" : "joined", address,
			  (long long) json_integer_value(port));
	response_set_json(resp, update ? 200 : 201,
			  json_pack("{ss ss si ss}", "name", name, "file", file_name, "heartbeat_s",
				    cfg->probe.heartbeat_s, "reached",
				    reverse ? "reverse" : "push"));
out:
	json_decref(entry);
	json_decref(body);
	config_unref(cfg);
	return 0;
}

/* The heartbeat period in force: an edit of probe.heartbeat_s reaches the agents with the
 * answer to their next heartbeat. */
static int join_heartbeat_s(struct join *j)
{
	struct config *cfg = cluster_get_config(j->cluster);
	int s = cfg->probe.heartbeat_s;
	config_unref(cfg);
	return s;
}

/* POST /api/join/heartbeat: {"name", "token", "health": {...}}. */
static int join_heartbeat(struct request *req, struct response *resp)
{
	struct join *j = req->userdata;
	json_t *body = join_body(req, resp);
	if (!body)
		return 0;
	const char *name = json_string_value(json_object_get(body, "name"));
	const char *token = json_string_value(json_object_get(body, "token"));
	json_t *health = json_object_get(body, "health");
	int proof;
	if (!name || !json_is_object(health)) {
		response_set_error(resp, 400,
				   "a heartbeat needs \"name\", \"token\" and \"health\"");
	} else if ((proof = join_agent_proves(j, name, token)) == -ENOENT) {
		response_set_error(resp, 404, "node %s is not loaded yet", name);
	} else if (proof < 0) {
		/* unknown, not joined, or another agent's token: all look the same */
		response_set_error(resp, 403, "no joined node %s holds this token", name);
	} else {
		json_t *system = json_object_get(body, "system");
		int r = cluster_heartbeat(j->cluster, name, health,
					  json_is_object(system) ? system : NULL);
		if (r < 0)
			response_set_error(resp, 404, "node %s is not loaded yet", name);
		else {
			/* the answer to every heartbeat, printed rather than built and dumped */
			buf_free(&resp->body);
			buf_printf(&resp->body, "{\"ok\":true,\"heartbeat_s\":%d}\n",
				   join_heartbeat_s(j));
			resp->content_type = NULL;
			resp->status = 200;
		}
	}
	json_decref(body);
	return 0;
}

/* POST /api/join/leave: {"name", "token"}. */
static int join_leave(struct request *req, struct response *resp)
{
	struct join *j = req->userdata;
	json_t *body = join_body(req, resp);
	if (!body)
		return 0;
	const char *name = json_string_value(json_object_get(body, "name"));
	const char *token = json_string_value(json_object_get(body, "token"));
	if (!name || join_agent_proves(j, name, token) < 0) {
		response_set_error(resp, 403, "no joined node %s holds this token",
				   name ? name : "(none)");
	} else {
		pthread_mutex_lock(&j->write_lock);
		int r = cluster_forget_node(j->cluster, name, "left (the agent asked)");
		pthread_mutex_unlock(&j->write_lock);
		if (r < 0) {
			response_set_error(resp, 500, "cannot remove the drop-in: %s",
					   strerror(-r));
		} else {
			log_info("join: %s left", name);
			response_set_json(resp, 200, json_pack("{sb}", "ok", 1));
		}
	}
	json_decref(body);
	return 0;
}

static int join_relay(struct request *req, struct response *resp)
{
	struct join *j = req->userdata;
	return relay_handle_request(j->relay, req, resp);
}

static int join_work(struct request *req, struct response *resp)
{
	struct join *j = req->userdata;
	return relay_handle_work(j->relay, req, resp);
}

static int join_result(struct request *req, struct response *resp)
{
	struct join *j = req->userdata;
	return relay_handle_result(j->relay, req, resp);
}

static const struct route join_routes[] = {
	{"POST", "/api/join", join_register},
	{"POST", "/api/join/heartbeat", join_heartbeat},
	{"POST", "/api/join/leave", join_leave},
	{"GET", "/api/join/work/{name}", join_work},
	{"POST", "/api/join/result/{name}", join_result},
	{"GET", "/api/join/relay/{name}/{*}", join_relay},
	{"POST", "/api/join/relay/{name}/{*}", join_relay},
	{"PUT", "/api/join/relay/{name}/{*}", join_relay},
	{"DELETE", "/api/join/relay/{name}/{*}", join_relay},
};

/* The reverse channel's paths (/api/join/{relay,work,result}/NAME...) belong to node NAME
 * and take its agent token; every other path takes the join token. */
static bool join_authorize(void *userdata, const char *path, const char *bearer)
{
	static const char *const node_paths[] = {"/api/join/relay/", "/api/join/work/",
						 "/api/join/result/"};
	struct join *j = userdata;
	if (!bearer)
		return false;
	for (size_t i = 0; i < sizeof(node_paths) / sizeof(node_paths[0]); i++) {
		size_t l = strlen(node_paths[i]);
		if (strncmp(path, node_paths[i], l) != 0)
			continue;
		char name[256];
		size_t n = strcspn(path + l, "/");
		if (n == 0 || n >= sizeof(name))
			return false;
		memcpy(name, path + l, n);
		name[n] = '\0';
		return join_agent_proves(j, name, bearer) == 0;
	}
	return secret_equal(bearer, j->token);
}

int join_new(const struct config *cfg, struct cluster *cluster, struct join **ret, char *errbuf,
	     size_t errlen)
{
	struct join *j = xcalloc(1, sizeof(*j));
	int r;
	j->cluster = cluster;
	j->listen_fd = -1;
	pthread_mutex_init(&j->write_lock, NULL);
	j->token = xstrdup(cfg->join.token);
	r = tls_read_pair(cfg->join.cert_file, cfg->join.key_file, &j->cert_pem, &j->key_pem,
			  errbuf, errlen);
	if (r < 0)
		goto err_free;
	r = server_listen(cfg->join.listen, &j->listen_fd, j->bound, sizeof(j->bound));
	if (r < 0) {
		snprintf(errbuf, errlen, "join.listen %s: %s", cfg->join.listen,
			 r == -EINVAL ? "expected ADDR:PORT or [ADDR6]:PORT, numeric"
				      : strerror(-r));
		goto err_free;
	}
	r = tls_fingerprint_pem(j->cert_pem, &j->fingerprint, errbuf, errlen);
	if (r < 0)
		goto err_free;
	/* the relay is reached on the listener's own address; a wildcard one on loopback */
	const char *colon = strrchr(j->bound, ':');
	j->port = colon ? atoi(colon + 1) : 0;
	size_t hl = colon ? (size_t) (colon - j->bound) : 0;
	if (hl >= 2 && j->bound[0] == '[')
		snprintf(j->relay_host, sizeof(j->relay_host), "%.*s", (int) (hl - 2),
			 j->bound + 1);
	else
		snprintf(j->relay_host, sizeof(j->relay_host), "%.*s", (int) hl, j->bound);
	snprintf(j->listen_host, sizeof(j->listen_host), "%s", j->relay_host);
	j->announce = cfg->join.announce;
	j->keep_s = (unsigned) cfg->probe.heartbeat_s + JOIN_KEEP_MARGIN_S;
	if (j->keep_s > JOIN_KEEP_MAX_S)
		j->keep_s = JOIN_KEEP_MAX_S;
	j->cluster_name = xstrdup(cfg->cluster);
	if (j->announce && !dnssd_supported()) {
		snprintf(errbuf, errlen,
			 "join.announce: this clusterfs was built without avahi (DNS-SD)");
		r = -ENOTSUP;
		goto err_free;
	}
	if (j->announce &&
	    (strncmp(j->listen_host, "127.", 4) == 0 || strcmp(j->listen_host, "::1") == 0)) {
		snprintf(errbuf, errlen,
			 "join.announce: join.listen %s is a loopback address, which no agent on "
			 "the LAN can reach (listen on a LAN address, or 0.0.0.0)",
			 cfg->join.listen);
		r = -EINVAL;
		goto err_free;
	}
	if (strcmp(j->relay_host, "0.0.0.0") == 0)
		snprintf(j->relay_host, sizeof(j->relay_host), "127.0.0.1");
	else if (strcmp(j->relay_host, "::") == 0)
		snprintf(j->relay_host, sizeof(j->relay_host), "::1");
	j->relay = relay_new();
	*ret = j;
	return 0;

err_free:
	join_stop(j);
	return r;
}

int join_start(struct join *j, char *errbuf, size_t errlen)
{
	struct server_config sc = {
		.listen_fd = j->listen_fd,
		.token = j->token,
		.routes = join_routes,
		.n_routes = sizeof(join_routes) / sizeof(join_routes[0]),
		.userdata = j,
		.tls_cert_pem = j->cert_pem,
		.tls_key_pem = j->key_pem,
		.authorize = join_authorize,
		/* an agent's heartbeats come back on their connection: no handshake each */
		.auth_timeout_s = j->keep_s,
	};
	j->listen_fd = -1; /* the server owns it now, even on failure */
	int r = server_start(&sc, &j->srv);
	if (r == 0)
		relay_set_server(j->relay, j->srv);
	if (r < 0) {
		snprintf(errbuf, errlen, "cannot start the join listener on %s: %s", j->bound,
			 strerror(-r));
		return r;
	}
	if (j->announce) {
		char cluster[128], fp[128], mac[128];
		char *vouch = tls_vouch(j->token, j->fingerprint);
		snprintf(cluster, sizeof(cluster), "cluster=%s", j->cluster_name);
		snprintf(fp, sizeof(fp), "fp=%s", j->fingerprint);
		snprintf(mac, sizeof(mac), "mac=%s", vouch ? vouch : "");
		free(vouch);
		const char *txt[] = {"v=1", cluster, fp, mac, NULL};
		r = dnssd_publish(DNSSD_JOIN_TYPE, j->cluster_name, j->listen_host, j->port, txt,
				  &j->dnssd, errbuf, errlen);
		if (r < 0)
			return r;
	}
	return 0;
}

void join_stop(struct join *j)
{
	if (!j)
		return;
	dnssd_free(j->dnssd);
	free(j->cluster_name);
	server_stop(j->srv);
	relay_free(j->relay);
	free(j->fingerprint);
	if (j->listen_fd >= 0)
		close(j->listen_fd);
	pthread_mutex_destroy(&j->write_lock);
	if (j->token) {
		explicit_bzero(j->token, strlen(j->token));
		free(j->token);
	}
	free(j->cert_pem);
	if (j->key_pem) {
		explicit_bzero(j->key_pem, strlen(j->key_pem));
		free(j->key_pem);
	}
	free(j);
}

const char *join_bound(const struct join *j)
{
	return j->bound;
}
