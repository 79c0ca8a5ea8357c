/* libFuzzer target: what the daemon does with the bytes of an answer from a remote host
 * before any module looks at it: the nesting check, JSON decoding under it, the error
 * sentence of a REST answer, NDJSON line splitting at any chunk boundary, the escaping
 * of sentences, the reader of a model server's streamed answer (NDJSON and server-sent
 * events), and the reversible file names of remote names. */
#include "backend/models.h"
#include "backend/prompt.h"
#include "backend/rest.h"
#include "backend/util.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void on_line(const char *line, size_t len, void *arg)
{
	size_t *total = arg;
	if (len == 0 || len > MODELS_LINE_MAX || memchr(line, '\n', len))
		abort();
	*total += len;
	json_decref(json_loadb(line, len, 0, NULL));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *text = (const char *) data;
	if (util_json_depth(text, size, JSON_MAX_DEPTH) <= JSON_MAX_DEPTH)
		json_decref(json_loadb(text, size, 0, NULL));
	free(rest_error_message(text, size));

	/* the first byte picks where the stream is cut into two chunks */
	size_t cut = size ? data[0] % (size + 1) : 0;
	struct models_lines lines;
	size_t total = 0;
	models_lines_init(&lines);
	models_lines_feed(&lines, text, cut, on_line, &total);
	models_lines_feed(&lines, text + cut, size - cut, on_line, &total);
	models_lines_finish(&lines, on_line, &total);
	if (total > size)
		abort();

	char *s = malloc(size + 1);
	if (!s)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';
	/* a streamed answer, cut at the same place, read as Ollama's and as OpenAI's */
	char *head = strndup(s, cut);
	if (head) {
		const char *const chunks[] = {head, s + (cut < strlen(s) ? cut : strlen(s))};
		for (int kind = 0; kind < 4; kind++)
			free(prompts_parse_stream(kind & 1, kind & 2, chunks, 2));
		free(head);
	}
	char out[512];
	util_escape_controls(s, out, sizeof(out));
	for (const char *p = out; *p; p++)
		if ((unsigned char) *p < 0x20 || *p == 0x7f)
			abort();
	char *file = models_encode_name(s);
	char *back = models_decode_name(file);
	if (!back || strcmp(back, s) != 0 || strchr(file, '/'))
		abort(); /* encoding is reversible and yields no '/' */
	free(back);
	free(file);
	free(s);
	return 0;
}
