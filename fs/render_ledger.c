/* Rendering ledger/: entries/STEP, best/METRIC, summary and source, as JSON, from the view
 * and the source state that backend/ledger.c keeps. */
#include "backend/ledger.h"
#include "backend/models.h"
#include "fs/render.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

/* The JSON of the ledger files: indented, metric values with up to 10 significant digits. */
static void put_json(struct buf *out, json_t *doc)
{
	char *s = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
	buf_puts(out, s ? s : "null");
	buf_puts(out, "\n");
	free(s);
}

/* entries/STEP: the entry of that step (the last of a step wins: a pending record is
 * newest). */
int render_ledger_entry(RENDER_ARGS)
{
	const char *step = e->name;
	char *end;
	long long want = strtoll(step, &end, 10);
	if (*end || !*step)
		return -ENOENT;
	json_t *all = ledger_view(ctx->ledger, NULL);
	int r = -ENOENT;
	size_t i;
	json_t *entry, *found = NULL;
	json_array_foreach (all, i, entry)
		if (ledger_entry_step(entry) == want)
			found = entry;
	if (found) {
		put_json(out, found);
		r = 0;
	}
	json_decref(all);
	return r;
}

/* best/METRIC: the best entry by the metric (METRIC encoded as a model name is), with the
 * direction that made it best. */
int render_ledger_best(RENDER_ARGS)
{
	_cleanup_free_ char *metric = models_decode_name(e->name);
	if (!metric)
		return -ENOENT;
	json_t *all = ledger_view(ctx->ledger, NULL);
	json_t *best = ledger_best_of(all, metric);
	int r = -ENOENT;
	if (best) {
		json_t *doc = json_deep_copy(best);
		json_object_set_new(doc, "best_by", json_string(metric));
		json_object_set_new(doc, "direction",
				    json_string(ledger_lower_is_better(metric)
							? "lower is better"
							: "higher is better"));
		put_json(out, doc);
		json_decref(doc);
		r = 0;
	}
	json_decref(all);
	return r;
}

/* summary: how many entries, their first and last step, the records not delivered yet, and
 * the best step and value per metric. */
int render_ledger_summary(RENDER_ARGS)
{
	size_t pending;
	json_t *all = ledger_view(ctx->ledger, &pending);
	json_t *doc = json_object();
	size_t n = json_array_size(all);
	json_object_set_new(doc, "count", json_integer((json_int_t) n));
	json_object_set_new(doc, "first_step",
			    n ? json_integer(ledger_entry_step(json_array_get(all, 0)))
			      : json_null());
	json_object_set_new(doc, "last_step",
			    n ? json_integer(ledger_entry_step(json_array_get(all, n - 1)))
			      : json_null());
	json_object_set_new(doc, "pending", json_integer((json_int_t) pending));
	json_t *best = json_object();
	size_t nm = 0;
	char **metrics = ledger_metric_names(ctx->ledger, &nm);
	for (size_t i = 0; i < nm; i++) {
		json_t *b_entry = ledger_best_of(all, metrics[i]);
		json_t *b = json_object();
		json_object_set_new(b, "step", json_integer(ledger_entry_step(b_entry)));
		json_object_set(b, "value",
				json_object_get(json_object_get(b_entry, "metrics"), metrics[i]));
		json_object_set_new(
			b, "direction",
			json_string(ledger_lower_is_better(metrics[i]) ? "lower" : "higher"));
		json_object_set_new(best, metrics[i], b);
		free(metrics[i]);
	}
	free(metrics);
	json_object_set_new(doc, "best", best);
	put_json(out, doc);
	json_decref(doc);
	json_decref(all);
	return 0;
}

/* source: where the copy comes from (state none, live or cached), its age and error, and
 * the counts of entries and of records waiting for delivery. */
int render_ledger_source(RENDER_ARGS)
{
	struct ledger_source src;
	ledger_source_get(ctx->ledger, &src);
	json_t *doc = json_object();
	if (!src.declared) {
		json_object_set_new(doc, "state", json_string("none"));
		json_object_set_new(doc, "reason",
				    json_string("no host of the config declares a "
						"\"ledger\" service"));
	} else {
		json_object_set_new(doc, "state", json_string(src.live ? "live" : "cached"));
		json_object_set_new(doc, "host", json_string(src.host));
		json_object_set_new(doc, "url", json_string(src.url));
		if (src.fetched_at > 0) {
			char ts[32];
			clock_format_utc(src.fetched_at, ts);
			json_object_set_new(doc, "fetched_at", json_string(ts));
			/* the document changes only when the ledger's state does */
			json_object_set_new(doc, "age_s",
					    json_real(round(src.age_s * 1000) / 1000));
		} else {
			json_object_set_new(doc, "fetched_at", json_null());
			json_object_set_new(doc, "age_s", json_null());
		}
		json_object_set_new(doc, "error", src.error ? json_string(src.error) : json_null());
	}
	json_object_set_new(doc, "entries", json_integer((json_int_t) src.entries));
	json_object_set_new(doc, "pending_records", json_integer((json_int_t) src.pending_records));
	if (src.refused)
		json_object_set_new(doc, "refused", json_string(src.refused));
	put_json(out, doc);
	json_decref(doc);
	ledger_source_clear(&src);
	double fmt = ledger_fetched_at(ctx->ledger); /* fetched_at, age_s, error */
	if (fmt > *ret_mtime)
		*ret_mtime = fmt;
	return 0;
}
