/* The cluster model, external nodes: the nodes of an external source (a Slurm cluster),
 * set by their owner each round and never probed here. */
#include "backend/cluster_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Lock held (write): takes what the external source says of node o. Returns whether what
 * the node's files show changed (its documents, reachability, error, reasons, address or
 * role; every failed round counts). */
static bool external_apply_locked(struct cluster *c, struct node *o,
				  const struct cluster_external *e, uint64_t now)
{
	assert(cluster_wrlock_held(c));
	json_t *reasons = e->reasons ? json_deep_copy(e->reasons) : json_array();
	/* what the node's files show: its documents, and its reachability (a success
	 * moves checked_at), failures, error, reasons, address and role */
	bool data = !json_equal(o->health, e->health) || !json_equal(o->system, e->system) ||
		    e->reachable || !e->error != !o->last_error ||
		    (e->error && strcmp(e->error, o->last_error)) ||
		    !json_equal(o->reasons, reasons) || !o->ext_address ||
		    strcmp(o->ext_address, e->address ? e->address : "") || !o->ext_role ||
		    strcmp(o->ext_role, e->role ? e->role : "");
	free(o->ext_address);
	o->ext_address = xstrdup(e->address ? e->address : "");
	free(o->ext_role);
	o->ext_role = xstrdup(e->role ? e->role : "");
	if (e->health && e->health != o->health) {
		json_decref(o->health);
		o->health = json_incref(e->health);
	}
	if (e->system && e->system != o->system) {
		json_decref(o->system);
		o->system = json_incref(e->system);
	}
	json_decref(o->reasons);
	o->reasons = reasons;
	o->ext_level = e->level;
	o->attempted_at = clock_wall_s();
	if (e->reachable) {
		o->last_ok_us = now;
		o->checked_at = o->attempted_at;
		o->latency_ms = e->latency_ms;
		o->failures = 0;
	} else {
		o->failures++;
		data = true;
	}
	free(o->last_error);
	o->last_error = e->error ? xstrdup(e->error) : NULL;
	return data;
}

void cluster_set_external(struct cluster *c, const char *owner, const struct cluster_external *v,
			  size_t n)
{
	assert(loop_is_current(c->loop));
	struct node **gone = NULL;
	size_t n_gone = 0;
	char **changed = NULL;
	size_t n_changed = 0;
	bool set_changed = false;
	uint64_t now = clock_now_us();

	pthread_rwlock_wrlock(&c->lock);
	if (!c->cfg->slurm || strcmp(c->cfg->slurm->name, owner)) {
		/* the source left the config while its answer was on its way */
		pthread_rwlock_unlock(&c->lock);
		return;
	}
	/* the owner's nodes that are not in v leave */
	size_t keep = 0;
	for (size_t i = 0; i < c->n_nodes; i++) {
		struct node *o = c->nodes[i];
		bool listed = false;
		for (size_t j = 0; j < n && o->owner && !listed; j++)
			listed = !strcmp(v[j].name, o->name);
		if (o->owner && !strcmp(o->owner, owner) && !listed) {
			gone = xrealloc(gone, (n_gone + 1) * sizeof(*gone));
			gone[n_gone++] = o;
			set_changed = true;
		} else
			c->nodes[keep++] = o;
	}
	c->n_nodes = keep;
	for (size_t j = 0; j < n; j++) {
		const struct cluster_external *e = &v[j];
		struct node *o = cluster_find(c, e->name);
		if (o && !o->owner)
			continue; /* a host of the config has the name: it wins */
		if (!o) {
			o = xcalloc(1, sizeof(*o));
			o->name = xstrdup(e->name);
			o->owner = xstrdup(owner);
			o->reasons = json_array();
			o->level = NODE_UNKNOWN;
			c->nodes = xrealloc(c->nodes, (c->n_nodes + 1) * sizeof(*c->nodes));
			c->nodes[c->n_nodes++] = o;
			qsort(c->nodes, c->n_nodes, sizeof(*c->nodes), cluster_node_cmp);
			set_changed = true;
		}
		bool data = external_apply_locked(c, o, e, now);
		enum node_level old;
		bool lv = cluster_node_evaluate_external(o, &old);
		if (lv)
			cluster_node_event_level(c, o, old);
		if (lv || data) {
			o->changed_at = clock_wall_s();
			changed = xrealloc(changed, (n_changed + 1) * sizeof(*changed));
			changed[n_changed++] = xstrdup(o->name);
		}
	}
	if (set_changed)
		c->changed_at = clock_wall_s();
	pthread_rwlock_unlock(&c->lock);
	for (size_t i = 0; i < n_gone; i++) {
		cluster_node_call_waiters(c, gone[i], -ENOENT);
		cluster_node_free(gone[i]);
	}
	free(gone);
	for (size_t i = 0; i < n_changed; i++) {
		cluster_notify(c, changed[i]);
		free(changed[i]);
	}
	free(changed);
	if (set_changed)
		cluster_notify(c, NULL);
}

bool cluster_node_is_external(struct cluster *c, const char *name, char **ret_owner)
{
	pthread_rwlock_rdlock(&c->lock);
	struct node *n = cluster_find(c, name);
	bool ext = n && n->owner;
	if (ext && ret_owner)
		*ret_owner = xstrdup(n->owner);
	pthread_rwlock_unlock(&c->lock);
	return ext;
}
