/* libFuzzer target: the task spec parser (what a user drops into tasks/new/). A spec it
 * accepts must come back from its canonical JSON the same way. */
#include "backend/spec.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[1024];
	struct task_spec *s = NULL;
	if (spec_parse((const char *) data, size, &s, err, sizeof(err)) < 0) {
		if (!memchr(err, '\0', sizeof(err)))
			abort(); /* the sentence must be a string */
		return 0;
	}
	json_t *canon = spec_to_json(s);
	char *text = canon ? json_dumps(canon, JSON_COMPACT) : NULL;
	struct task_spec *again = NULL;
	if (text && spec_parse(text, strlen(text), &again, err, sizeof(err)) < 0)
		abort(); /* its own canonical form must parse */
	spec_free(again);
	free(text);
	json_decref(canon);
	spec_free(s);
	return 0;
}
