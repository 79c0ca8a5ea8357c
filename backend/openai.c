/* Models, the OpenAI-compatible client: the entries of GET /models ("data"). Such servers
 * are read-only here: they are listed, never pulled to or deleted from. */
#include "backend/models_impl.h"

#include <jansson.h>

static json_t *openai_entry(const char *id, json_t *o)
{
	json_t *e = json_object();
	json_object_set_new(e, "name", json_string(id));
	json_object_set_new(e, "server", json_string("openai"));
	json_object_set_new(e, "id", json_string(id));
	json_object_set_new(e, "owned_by", models_json_copy(json_object_get(o, "owned_by")));
	json_object_set_new(e, "created", models_json_copy(json_object_get(o, "created")));
	return e;
}

void openai_add_entries(const struct server *sv, json_t *all)
{
	size_t i;
	json_t *v;
	json_array_foreach (sv->data, i, v) {
		const char *id = json_string_value(json_object_get(v, "id"));
		if (id && id[0] && !json_object_get(all, id))
			json_object_set_new(all, id, openai_entry(id, v));
	}
}

enum models_holding openai_holds(const struct server *sv, const char *model)
{
	size_t i;
	json_t *v;
	json_array_foreach (sv->data, i, v)
		if (models_same_name(json_string_value(json_object_get(v, "id")), model))
			return MODELS_PRESENT;
	return MODELS_ABSENT;
}
