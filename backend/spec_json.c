/* The canonical JSON of a task spec (spec_to_json, see spec.h): what spec_parse() accepts
 * back, with every default written out. */
#include "backend/spec.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* Appends json_string(v[i]) for each i; false when out of memory. */
static bool array_add_strings(json_t *a, char *const *v, size_t n)
{
	bool ok = a != NULL;
	for (size_t i = 0; ok && i < n; i++)
		ok = json_array_append_new(a, json_string(v[i])) == 0;
	return ok;
}

json_t *spec_to_json(const struct task_spec *s)
{
	json_t *o = json_object(), *a, *res;
	int prio = s->priority < 0 ? 0 : s->priority > 3 ? 3 : s->priority;
	bool ok = o != NULL;

	if (!ok)
		return NULL;
	if (s->model) {
		ok = json_object_set_new(o, "model", json_string(s->model)) == 0;
		if (s->prompt)
			ok = ok && json_object_set_new(o, "prompt", json_string(s->prompt)) == 0;
		else
			ok = ok &&
			     json_object_set_new(o, "messages", json_deep_copy(s->messages)) == 0;
		ok = ok && json_object_set_new(o, "options",
					       s->options ? json_deep_copy(s->options)
							  : json_object()) == 0;
		ok = ok && json_object_set_new(o, "pull", json_boolean(s->pull)) == 0;
	} else if (s->shell) {
		ok = json_object_set_new(o, "cmd", json_string(s->shell)) == 0;
	} else {
		a = json_array();
		ok = array_add_strings(a, s->argv, s->argc) && json_object_set(o, "cmd", a) == 0;
		json_decref(a);
	}
	ok = ok && json_object_set_new(o, "node", json_string(s->node ? s->node : "any")) == 0;
	ok = ok &&
	     json_object_set_new(o, "type", s->type ? json_string(s->type) : json_null()) == 0;

	a = json_array();
	ok = ok && array_add_strings(a, s->requires, s->n_requires) &&
	     json_object_set(o, "requires", a) == 0;
	json_decref(a);

	res = json_object();
	ok = ok && res != NULL;
	if (ok && s->cpus > 0)
		ok = json_object_set_new(res, "cpus", json_integer(s->cpus)) == 0;
	if (ok && s->mem_mb > 0)
		ok = json_object_set_new(res, "mem_mb", json_integer(s->mem_mb)) == 0;
	if (ok && s->gpus > 0)
		ok = json_object_set_new(res, "gpus", json_integer(s->gpus)) == 0;
	ok = ok && json_object_set(o, "resources", res) == 0;
	json_decref(res);

	ok = ok && json_object_set_new(o, "priority", json_string(spec_priority_names[prio])) == 0;
	if (!s->model) {
		ok = ok && json_object_set_new(
				   o, "env", s->env ? json_deep_copy(s->env) : json_object()) == 0;
		ok = ok &&
		     json_object_set_new(o, "cwd", s->cwd ? json_string(s->cwd) : json_null()) == 0;
	}
	ok = ok && json_object_set_new(o, "timeout_s", json_integer(s->timeout_s)) == 0;
	ok = ok && json_object_set_new(o, "retries", json_integer(s->retries)) == 0;

	a = json_array();
	ok = ok && array_add_strings(a, s->after, s->n_after) &&
	     json_object_set(o, "after", a) == 0;
	json_decref(a);
	if (ok && s->n_outputs) {
		a = json_array();
		ok = array_add_strings(a, s->outputs, s->n_outputs) &&
		     json_object_set(o, "outputs", a) == 0;
		json_decref(a);
	}
	if (ok && s->inputs)
		ok = json_object_set_new(o, "inputs", json_deep_copy(s->inputs)) == 0;

	if (!ok) {
		json_decref(o);
		return NULL;
	}
	return o;
}
