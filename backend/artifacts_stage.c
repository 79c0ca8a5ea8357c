/* Artifacts: staging a task's inputs on its node before it is sent (see artifacts.h). */
#include "backend/artifacts_internal.h"

#include "backend/digest.h"
#include "backend/endpoint.h"
#include "httpd/agent_api.h"

#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* One file to stage. */
struct stage_item {
	char *dest;  /* the name in the task's directory */
	char *local; /* a file on this machine (kept copy or under inputs_root), or NULL */
	char *node;  /* the producer's node, when not local */
	char *did;   /* its dispatch id there */
	char *name;  /* its output's name */
	char *task;  /* its producer's task id, when not local */
	char *sha;   /* its digest, NULL for a local file from inputs_root */
	uint64_t size;
};

struct stage {
	struct artifacts *a;
	char *node, *did;
	struct stage_item *items;
	size_t n, next;
	json_t *staged; /* names; handed to the caller */
	json_t **ret_staged;
	artifacts_done_fn done;
	void *arg;
	int err;
	char why[768];
};

static void stage_free(struct stage *s)
{
	for (size_t i = 0; i < s->n; i++) {
		free(s->items[i].dest);
		free(s->items[i].local);
		free(s->items[i].node);
		free(s->items[i].did);
		free(s->items[i].name);
		free(s->items[i].task);
		free(s->items[i].sha);
	}
	free(s->items);
	free(s->node);
	free(s->did);
	json_decref(s->staged);
	free(s);
}

static void stage_end(void *arg)
{
	struct stage *s = arg;
	if (!s->err) {
		*s->ret_staged = s->staged;
		s->staged = NULL;
	}
	s->done(s->arg, s->err, s->err ? s->why : NULL);
	stage_free(s);
}

static void stage_next(struct stage *s);

static void stage_sent(void *arg, const struct http_response *r)
{
	struct stage *s = arg;
	struct stage_item *it = &s->items[s->next - 1];
	if (r->status == 502 && !it->local && it->task) {
		/* the destination could not fetch it from its producer (stopped, say): the
		 * copy kept here, if there is one, is sent instead */
		char *kept = artifacts_kept_path(s->a, it->task, it->name);
		if (access(kept, R_OK) == 0) {
			log_info("input %s for %s: %s did not serve it; sending the copy kept here",
				 it->dest, s->did, it->node);
			it->local = kept;
			s->next--;
			return stage_next(s);
		}
		free(kept);
	}
	if (r->error) {
		json_t *doc = json_loadb(r->body, r->body_len, 0, NULL);
		const char *e = json_string_value(json_object_get(doc, "error"));
		snprintf(s->why, sizeof(s->why), "input %s could not be staged on %s: %s", it->dest,
			 s->node, e ? e : r->error_text);
		json_decref(doc);
		/* no answer, or a relay without its node: worth another try */
		bool again = r->status == 0 || r->status == 503 || r->status == 504;
		s->err = again && r->error != -ECANCELED ? -EAGAIN : r->error;
		stage_end(s);
		return;
	}
	json_array_append_new(s->staged, json_string(it->dest));
	stage_next(s);
}

static void stage_next(struct stage *s)
{
	if (s->next == s->n)
		return stage_end(s);
	struct stage_item *it = &s->items[s->next++];
	struct buf path;
	buf_init(&path);
	buf_printf(&path, AGENT_API_STAGING "/%s/", s->did);
	artifacts_url_path_append(&path, it->dest);
	int r;
	if (it->local) {
		/* sent from here, streamed from the file */
		int fd = open(it->local, O_RDONLY | O_CLOEXEC);
		struct stat st;
		if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
			snprintf(s->why, sizeof(s->why), "input %s: cannot read %s: %s", it->dest,
				 it->local, fd < 0 ? strerror(errno) : "not a regular file");
			if (fd >= 0)
				close(fd);
			buf_free(&path);
			s->err = -ENOENT;
			return stage_end(s);
		}
		if (it->sha)
			buf_printf(&path, "?sha256=%s", it->sha);
		r = artifacts_agent_request(
			s->a, s->node, "PUT", path.data, NULL, fd, (uint64_t) st.st_size,
			artifacts_transfer_timeout_ms((uint64_t) st.st_size), NULL, stage_sent, s);
	} else {
		/* fetched by the destination from the producer's agent, with a signed URL */
		struct config *cfg = cluster_get_config(s->a->cluster);
		const struct cfg_host *h = config_find_host(cfg, it->node);
		if (!h) {
			config_unref(cfg);
			buf_free(&path);
			snprintf(
				s->why, sizeof(s->why),
				"input %s: its producer's node %s is gone, and no copy of %s is kept "
				"(larger than artifacts.cache_max_mb)",
				it->dest, it->node, it->name);
			s->err = -EHOSTUNREACH;
			return stage_end(s);
		}
		struct buf fpath, spath, url;
		buf_init(&fpath);
		buf_init(&spath);
		buf_init(&url);
		buf_printf(&fpath, AGENT_API_TASKS "/%s/files/", it->did);
		artifacts_url_path_append(&fpath, it->name);
		/* the agent checks the signature against the path as it decodes it */
		buf_printf(&spath, AGENT_API_TASKS "/%s/files/%s", it->did, it->name);
		uint64_t expires = (uint64_t) clock_wall_s() + SIGNED_FOR_S;
		char sig[DIGEST_HEX_LEN + 1];
		digest_sign_path(h && h->token ? h->token : "", spath.data, expires, sig);
		struct endpoint ep;
		endpoint_init_agent(&ep, cfg, h, fpath.data);
		buf_printf(&url, "%s?expires=%" PRIu64 "&sig=%s", ep.url, expires, sig);
		json_t *doc = json_pack("{s:s, s:s, s:I}", "url", url.data, "sha256", it->sha,
					"size", (json_int_t) it->size);
		if (ep.pinned_key)
			json_object_set_new(doc, "pinned_key", json_string(ep.pinned_key));
		char *text = json_dumps(doc, JSON_COMPACT);
		json_decref(doc);
		explicit_bzero(sig, sizeof(sig));
		buf_free(&url);
		buf_free(&spath);
		buf_free(&fpath);
		endpoint_clear(&ep);
		config_unref(cfg);
		r = artifacts_agent_request(s->a, s->node, "POST", path.data, text, 0, 0,
					    artifacts_transfer_timeout_ms(it->size), NULL,
					    stage_sent, s);
		free(text);
	}
	buf_free(&path);
	if (r < 0) {
		snprintf(s->why, sizeof(s->why),
			 "input %s could not be staged: %s is not reachable", it->dest, s->node);
		s->err = r;
		stage_end(s);
	}
}

static void stage_begin(void *arg)
{
	stage_next(arg);
}

static struct stage_item *stage_add(struct stage *s)
{
	s->items = xrealloc(s->items, (s->n + 1) * sizeof(*s->items));
	struct stage_item *it = &s->items[s->n++];
	memset(it, 0, sizeof(*it));
	return it;
}

/* The items of input `name` from the outputs of task `id`; the number added, or -1 with
 * the reason in s->why. */
static int stage_resolve_task(struct stage *s, const char *name, const char *id,
			      const char *pattern, bool all, const struct config *cfg)
{
	json_t *rec = artifacts_record_get(s->a, id);
	if (!rec) {
		snprintf(s->why, sizeof(s->why), "input %s: task %s kept no outputs", name, id);
		return -1;
	}
	bool dir = name[strlen(name) - 1] == '/';
	int added = 0;
	size_t i;
	json_t *f;
	const char *node = json_string_value(json_object_get(rec, "node"));
	json_array_foreach (json_object_get(rec, "files"), i, f) {
		const char *fn = json_string_value(json_object_get(f, "name"));
		if (fnmatch(pattern, fn, FNM_PATHNAME) != 0)
			continue;
		struct stage_item *it = stage_add(s);
		struct buf dest;
		buf_init(&dest);
		if (dir)
			buf_printf(&dest, "%s%s%s%s", name, all ? node : "", all ? "/" : "", fn);
		else
			buf_puts(&dest, name);
		it->dest = buf_steal(&dest, NULL);
		it->name = xstrdup(fn);
		it->task = xstrdup(id);
		it->sha = xstrdup(json_string_value(json_object_get(f, "sha256")));
		it->size = (uint64_t) json_integer_value(json_object_get(f, "size"));
		it->node = xstrdup(node);
		it->did = xstrdup(json_string_value(json_object_get(rec, "dispatch_id")));
		/* its node is gone, or cannot be dialled (a reverse node, reached through the
		 * join listener, which takes no signed URL): the copy kept here, if any */
		const struct cfg_host *h = config_find_host(cfg, node);
		const struct cfg_service *svc = h ? config_host_service(h, "agent") : NULL;
		if (!h || (svc && svc->path && svc->path[0])) {
			char *kept = artifacts_kept_path(s->a, id, fn);
			if (access(kept, R_OK) == 0)
				it->local = kept;
			else
				free(kept);
		}
		added++;
	}
	json_decref(rec);
	if (!added)
		snprintf(s->why, sizeof(s->why), "input %s: task %s has no output %s", name, id,
			 pattern);
	return added ? added : -1;
}

int artifacts_stage(struct artifacts *a, const json_t *inputs, const json_t *producers,
		    const char *node, const char *dispatch_id, json_t **staged,
		    artifacts_done_fn done, void *arg)
{
	assert(loop_is_current(a->loop));
	struct stage *s = xcalloc(1, sizeof(*s));
	s->a = a;
	s->node = xstrdup(node);
	s->did = xstrdup(dispatch_id);
	s->staged = json_array();
	s->ret_staged = staged;
	s->done = done;
	s->arg = arg;
	struct config *cfg = cluster_get_config(a->cluster);
	const char *name;
	json_t *src;
	json_object_foreach ((json_t *) inputs, name, src) {
		const char *sv = json_string_value(src);
		if (sv[0] == '/') {
			/* from this machine's disk, beneath artifacts.inputs_root */
			const char *root = cfg->artifacts.inputs_root;
			char real[PATH_MAX], rroot[PATH_MAX];
			size_t rl = root && realpath(root, rroot) ? strlen(rroot) : 0;
			if (!root) {
				snprintf(
					s->why, sizeof(s->why),
					"input %s: %s is on the control plane, and the config sets no "
					"artifacts.inputs_root",
					name, sv);
			} else if (!realpath(sv, real)) {
				snprintf(s->why, sizeof(s->why), "input %s: %s: %s", name, sv,
					 strerror(errno));
			} else if (!rl || strncmp(real, rroot, rl) ||
				   (real[rl] != '/' && real[rl] != '\0' && strcmp(rroot, "/"))) {
				snprintf(s->why, sizeof(s->why),
					 "input %s: %s is not beneath artifacts.inputs_root (%s)",
					 name, sv, root);
			} else {
				struct stage_item *it = stage_add(s);
				it->dest = xstrdup(name);
				it->local = xstrdup(real);
				continue;
			}
			s->err = -ENOENT;
			break;
		}
		/* TASK[@NODE|@*]/PATH */
		const char *slash = strchr(sv, '/');
		char *prod = xstrndup(sv, (size_t) (slash - sv));
		bool all = strlen(prod) > 2 && !strcmp(prod + strlen(prod) - 2, "@*");
		if (all)
			prod[strlen(prod) - 2] = '\0';
		json_t *ids = json_object_get(producers, prod);
		size_t i;
		json_t *id;
		if (!json_array_size(ids)) {
			snprintf(s->why, sizeof(s->why), "input %s: %s is not a task", name, prod);
			s->err = -ENOENT;
		}
		json_array_foreach (ids, i, id) {
			if (s->err)
				break;
			if (stage_resolve_task(s, name, json_string_value(id), slash + 1, all,
					       cfg) < 0)
				s->err = -ENOENT;
		}
		free(prod);
		if (s->err)
			break;
	}
	config_unref(cfg);
	/* started (or ended) from the loop, never from within the caller */
	loop_post(a->loop, s->err ? stage_end : stage_begin, s);
	return 0;
}
