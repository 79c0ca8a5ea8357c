/* The checkpoint ledger: a training host's record of checkpoints (step, metrics, path),
 * served by `clusterfs-agent --ledger FILE` and found through the config: the host whose
 * services declare "ledger" ({"port": 8767, "path": "/api/ledger"}). clusterfs keeps a
 * copy in its store and serves it while the ledger host is away, marked cached with its
 * age; records written meanwhile wait in a durable outbox and are delivered, each exactly
 * once (the ledger drops a record_id it has seen), when the host returns. Thread-safe. */
#pragma once

#include "backend/cluster.h"
#include "backend/loop.h"
#include "backend/store.h"
#include "backend/util.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#define LEDGER_RECORD_MAX (64u << 10) /* a record larger than this is EFBIG */

struct ledger;

int ledger_new(struct loop *loop, struct cluster *cluster, struct store *store,
	       struct ledger **ret);
void ledger_free(struct ledger *l);
/* Loads the stored copy and starts delivery of pending records (loop thread work). */
int ledger_start(struct ledger *l);

typedef void (*ledger_done_fn)(void *arg);
/* Any thread: makes the copy at most probe.max_age_ms old (DESIGN §2, "The async
 * contract"). Returns 1 when there is nothing to wait for: fresh already, no host serves
 * the ledger, or the last fetch failed recently (then the cached copy answers at once);
 * done is not called. Returns 0 when a fetch runs: done(arg) then runs exactly once on the
 * loop thread, within probe.timeout_ms (done may be NULL: a fetch in the background). A
 * fetch that cannot start still ends, with its error, through done. */
int ledger_refresh(struct ledger *l, ledger_done_fn done, void *arg);

/* Steps of the entries, ascending, as strings; new NULL-terminated array. */
char **ledger_steps(struct ledger *l, size_t *ret_n);
/* The file names of the metrics seen in any entry (encoded as models_encode_name does;
 * names that cannot be file names even so are left out, with an alert), sorted; new
 * NULL-terminated array. */
char **ledger_metrics(struct ledger *l, size_t *ret_n);
/* The data of ledger/entries/, best/, summary and source (fs/render_ledger.c renders them).
 * The view: the copy and the records not delivered yet (those marked "pending": true) as
 * one array sorted by step, a new reference; *ret_pending (may be NULL) gets the number of
 * records not delivered yet. */
json_t *ledger_view(struct ledger *l, size_t *ret_pending);
/* The step of an entry of the view. */
json_int_t ledger_entry_step(json_t *entry);
/* The best entry of `view` by a metric (ledger_lower_is_better decides), borrowed from it,
 * or NULL when no entry has the metric. */
json_t *ledger_best_of(json_t *view, const char *metric);
/* The metric names of every entry, as the ledger spells them, sorted; new NULL-terminated
 * array. */
char **ledger_metric_names(struct ledger *l, size_t *ret_n);

/* Where the copy comes from and how it stands. Strings are new; ledger_source_clear. */
struct ledger_source {
	bool declared;     /* a host of the config declares a "ledger" service */
	char *host, *url;  /* that host and the service's URL, when declared */
	bool live;         /* the last fetch succeeded */
	double fetched_at; /* wall time of the last good fetch, 0 when none */
	double age_s;      /* the copy's age at the last failed fetch, 0 while fetches succeed */
	char *error;       /* why the last fetch failed, or NULL */
	size_t entries, pending_records;
	char *refused; /* the last record the ledger refused, and why, or NULL */
};
void ledger_source_get(struct ledger *l, struct ledger_source *ret);
void ledger_source_clear(struct ledger_source *s);
double ledger_changed_at(struct ledger *l);
/* Wall time of the last fetch of the entries, or of the last failed one (0 before any):
 * what ledger/source shows moves with it. */
double ledger_fetched_at(struct ledger *l);

/* True when lower values of this metric are better: names with loss, error or
 * perplexity in them. */
bool ledger_lower_is_better(const char *metric);

/* Records a checkpoint from a JSON entry: checked (step, metrics, path; created_at added
 * when missing), stored durably, shown at once (marked pending) and delivered to the
 * ledger host as soon as it answers. 0, or -EINVAL/-EFBIG with a sentence in errbuf. */
int ledger_record(struct ledger *l, const char *text, size_t len, char *errbuf, size_t errlen);
