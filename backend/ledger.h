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
/* Makes the copy at most probe.max_age_ms old: 1 when fresh already, or when the last
 * fetch failed recently (then the cached copy answers at once; done not called); 0 when
 * a fetch runs (done(arg) on the loop thread within probe.timeout_ms); -errno. */
int ledger_refresh(struct ledger *l, ledger_done_fn done, void *arg);

/* Steps of the entries, ascending, as strings; new NULL-terminated array. */
char **ledger_steps(struct ledger *l, size_t *ret_n);
/* The file names of the metrics seen in any entry (encoded as models_encode_name does;
 * names that cannot be file names even so are left out, with an alert), sorted; new
 * NULL-terminated array. */
char **ledger_metrics(struct ledger *l, size_t *ret_n);
/* entries/STEP, best/FILE (FILE from ledger_metrics), summary, source: JSON into out.
 * -ENOENT when there is none. */
int ledger_render_entry(struct ledger *l, const char *step, struct buf *out);
int ledger_render_best(struct ledger *l, const char *file, struct buf *out);
void ledger_render_summary(struct ledger *l, struct buf *out);
void ledger_render_source(struct ledger *l, struct buf *out);
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
