/* Generic REST-as-files services. */
#include "backend/services.h"
#include "backend/rest.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct services {
	struct loop *loop;
	struct cluster *cluster;
	pthread_mutex_t lock;
	json_t *answers; /* "svc/file" -> last POST answer; protected by lock */
};

int services_new(struct loop *loop, struct cluster *cluster, struct services **ret)
{
	struct services *s = xmalloc(sizeof(*s));
	*s = (struct services){.loop = loop, .cluster = cluster, .answers = json_object()};
	pthread_mutex_init(&s->lock, NULL);
	*ret = s;
	return 0;
}

void services_free(struct services *s)
{
	if (!s)
		return;
	json_decref(s->answers);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

static char **keys_of(json_t *obj, size_t *ret_n)
{
	size_t n = json_object_size(obj), k = 0;
	char **names = xcalloc(n + 1, sizeof(*names));
	const char *key;
	json_t *v;
	json_object_foreach (obj, key, v)
		names[k++] = xstrdup(key);
	qsort(names, k, sizeof(*names), cmp_str);
	*ret_n = k;
	return names;
}

char **services_list(struct services *s, size_t *ret_n)
{
	struct config *cfg = cluster_get_config(s->cluster);
	char **names = keys_of(cfg->services, ret_n);
	config_unref(cfg);
	return names;
}

char **services_files(struct services *s, const char *svc, size_t *ret_n)
{
	struct config *cfg = cluster_get_config(s->cluster);
	json_t *files = json_object_get(json_object_get(cfg->services, svc), "files");
	char **names = json_is_object(files) ? keys_of(files, ret_n) : xcalloc(1, sizeof(char *));
	if (!json_is_object(files))
		*ret_n = 0;
	config_unref(cfg);
	return names;
}

bool services_file_exists(struct services *s, const char *svc, const char *file, bool *ret_post)
{
	struct config *cfg = cluster_get_config(s->cluster);
	json_t *f = json_object_get(json_object_get(json_object_get(cfg->services, svc), "files"),
				    file);
	bool r = json_is_object(f);
	if (r && ret_post)
		*ret_post = json_object_get(f, "post") != NULL;
	config_unref(cfg);
	return r;
}

/* The endpoint of svc/file and the deadline. 0, or -ENOENT when unknown. */
static int service_endpoint(struct services *s, const char *svc, const char *file, bool post,
			    struct endpoint *ret_ep, long *ret_timeout)
{
	struct config *cfg = cluster_get_config(s->cluster);
	json_t *def = json_object_get(cfg->services, svc);
	json_t *f = json_object_get(json_object_get(def, "files"), file);
	const char *path = json_string_value(json_object_get(f, post ? "post" : "get"));
	const struct cfg_host *h =
		config_find_host(cfg, json_string_value(json_object_get(def, "host")));
	if (path && h) {
		char who[300];
		snprintf(who, sizeof(who), "service %s", svc);
		endpoint_init(ret_ep, cfg, h->address,
			      (int) json_integer_value(json_object_get(def, "port")),
			      config_service_transport(cfg, svc), path, who);
	}
	*ret_timeout = cfg->probe.timeout_ms;
	config_unref(cfg);
	return path && h ? 0 : -ENOENT;
}

struct svc_call {
	struct services *s;
	char *key; /* "svc/file" */
	bool post;
	services_done_fn done;
	void *arg;
};

static void svc_done(void *arg, int err, long status, const char *body, size_t len, const char *why)
{
	struct svc_call *c = arg;
	struct services *s = c->s;
	char alert[300];
	snprintf(alert, sizeof(alert), "service %s", c->key);
	if (err) {
		log_err("%s %s: %s", c->post ? "POST to" : "GET of", alert, why);
		cluster_set_alert(s->cluster, alert, why);
	} else {
		cluster_set_alert(s->cluster, alert, NULL);
	}
	if (c->post || !err) {
		pthread_mutex_lock(&s->lock);
		json_object_set_new(s->answers, c->key, json_stringn(body, len));
		pthread_mutex_unlock(&s->lock);
	}
	c->done(c->arg, err, body, len);
	free(c->key);
	free(c);
}

static int svc_call(struct services *s, const char *svc, const char *file, bool post,
		    const char *body, size_t len, services_done_fn done, void *arg)
{
	long timeout = 2000;
	struct endpoint ep;
	if (service_endpoint(s, svc, file, post, &ep, &timeout) < 0)
		return post ? -EACCES : -ENOENT;
	struct svc_call *c = xcalloc(1, sizeof(*c));
	c->s = s;
	struct buf k;
	buf_init(&k);
	buf_printf(&k, "%s/%s", svc, file);
	c->key = buf_steal(&k, NULL);
	c->post = post;
	c->done = done;
	c->arg = arg;
	struct rest_request req = {
		.method = post ? "POST" : "GET",
		.where = &ep,
		.body = post ? body : NULL,
		.body_len = post ? len : 0,
		.timeout_ms = timeout,
	};
	rest_call(s->loop, &req, svc_done, c);
	endpoint_clear(&ep);
	return 0;
}

int services_get(struct services *s, const char *svc, const char *file, services_done_fn done,
		 void *arg)
{
	return svc_call(s, svc, file, false, NULL, 0, done, arg);
}

int services_post(struct services *s, const char *svc, const char *file, const char *body,
		  size_t len, services_done_fn done, void *arg)
{
	return svc_call(s, svc, file, true, body, len, done, arg);
}

void services_last_answer(struct services *s, const char *svc, const char *file, struct buf *out)
{
	char key[600];
	snprintf(key, sizeof(key), "%s/%s", svc, file);
	pthread_mutex_lock(&s->lock);
	json_t *v = json_object_get(s->answers, key);
	if (v)
		buf_append(out, json_string_value(v), json_string_length(v));
	pthread_mutex_unlock(&s->lock);
}
