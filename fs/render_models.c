/* Rendering models/MODEL/ and nodes/NODE/models/: the model view of backend/models.c as text
 * and JSON. A model's files are named by the model's name encoded for a file name (e->file). */
#include "fs/render_models.h"
#include "fs/render.h"

#include <errno.h>
#include <stdlib.h>

/* The JSON of the model files, indented, as they have always been written. */
static void put_json(struct buf *out, json_t *doc)
{
	char *s = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	if (s) {
		buf_puts(out, s);
		free(s);
	}
	buf_puts(out, "\n");
}

/* models/MODEL/nodes (or loaded): one node name per line. -ENOENT when no node has it. */
static int model_nodes(const struct tree_ctx *ctx, const struct tree_entry *e, bool loaded_only,
		       struct buf *out)
{
	char *name = models_decode_name(e->file);
	if (!name)
		return -ENOENT;
	json_t *nodes = models_cluster_view(ctx->models);
	bool found = false;
	const char *node;
	json_t *all;
	/* keys come in config order, which is sorted by name */
	json_object_foreach (nodes, node, all) {
		json_t *m = json_object_get(all, name);
		if (!m)
			continue;
		found = true;
		if (!loaded_only || json_is_true(json_object_get(m, "loaded")))
			buf_printf(out, "%s\n", node);
	}
	json_decref(nodes);
	free(name);
	return found ? 0 : -ENOENT;
}

int render_model_nodes(RENDER_ARGS)
{
	return model_nodes(ctx, e, false, out);
}

int render_model_loaded(RENDER_ARGS)
{
	return model_nodes(ctx, e, true, out);
}

/* models/MODEL/info: the model's details (from the first node that knows its family) and,
 * per node, server, size, digest, modified_at, loaded, size_vram and expires_at. */
int render_model_info(RENDER_ARGS)
{
	char *name = models_decode_name(e->file);
	if (!name)
		return -ENOENT;
	json_t *nodes = models_cluster_view(ctx->models), *doc = NULL, *per_node = json_object();
	const char *node;
	json_t *all;
	json_object_foreach (nodes, node, all) {
		json_t *m = json_object_get(all, name);
		if (!m)
			continue;
		if (!doc || (json_is_null(json_object_get(doc, "family")) &&
			     json_is_string(json_object_get(m, "family")))) {
			json_decref(doc);
			doc = json_object();
			json_object_set_new(doc, "name", json_string(name));
			static const char *const model_keys[] = {"family", "parameter_size",
								 "quantization", "owned_by"};
			for (size_t k = 0; k < 4; k++)
				if (json_object_get(m, model_keys[k]))
					json_object_set(doc, model_keys[k],
							json_object_get(m, model_keys[k]));
		}
		json_t *one = json_object();
		static const char *const keys[] = {"server",      "size",   "digest",
						   "modified_at", "loaded", "size_vram",
						   "expires_at"};
		for (size_t k = 0; k < 7; k++)
			if (json_object_get(m, keys[k]))
				json_object_set(one, keys[k], json_object_get(m, keys[k]));
		json_object_set_new(per_node, node, one);
	}
	int r = -ENOENT;
	if (doc) {
		json_object_set(doc, "nodes", per_node);
		put_json(out, doc);
		r = 0;
	}
	json_decref(doc);
	json_decref(per_node);
	json_decref(nodes);
	free(name);
	return r;
}

int render_node_model(RENDER_ARGS)
{
	char *name = models_decode_name(e->file);
	json_t *m = name ? models_node_entry(ctx->models, e->node, name) : NULL;
	free(name);
	if (!m)
		return -ENOENT;
	put_json(out, m);
	json_decref(m);
	return 0;
}

void render_models_ops(const struct models_op_view *ops, size_t n, struct buf *out)
{
	for (size_t i = 0; i < n; i++) {
		char ts[32];
		clock_format_utc(ops[i].started_at, ts);
		buf_printf(out, "%s %s %s %s%s%s\n", ts, ops[i].verb, ops[i].model, ops[i].state,
			   ops[i].detail ? ": " : "", ops[i].detail ? ops[i].detail : "");
	}
	if (!n)
		buf_puts(out, "no model operations yet; write \"pull NAME\", \"delete NAME\", "
			      "\"load NAME\" or \"unload NAME\" here\n");
}

int render_node_models_ctl(RENDER_ARGS)
{
	struct models_op_view *ops;
	size_t n = models_ops(ctx->models, e->node, &ops);
	render_models_ops(ops, n, out);
	models_ops_free(ops, n);
	return 0;
}
