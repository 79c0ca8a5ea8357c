/* Unit tests for backend/prompt's stream reader: Ollama's NDJSON (generate and chat) and
 * OpenAI's server-sent events, split anywhere, with errors and early ends.
 * Prints TAP ("ok N - name"); exits non-zero when any check failed. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "backend/prompt.h"

#include "tests/unit/check.h"

/* The reader's summary of chunks, as JSON (new reference). */
static json_t *parse(bool openai, bool chat, const char *const *chunks, size_t n)
{
	char *s = prompts_parse_stream(openai, chat, chunks, n);
	json_t *o = json_loads(s, 0, NULL);
	free(s);
	return o;
}

static const char *str(json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));
	return s ? s : "(null)";
}

static json_int_t num(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);
	return json_is_integer(v) ? json_integer_value(v) : -1;
}

static void test_ollama(void)
{
	/* a line split inside its JSON, two lines in one chunk, \r\n endings */
	const char *gen[] = {
		"{\"model\":\"m\",\"response\":\"Hel",
		"lo\",\"done\":false}\n{\"model\":\"m\",\"response\":\" world\",\"done\":false}\r\n",
		"{\"model\":\"m\",\"response\":\"\",\"done\":true,\"done_reason\":\"stop\","
		"\"prompt_eval_count\":4,\"eval_count\":2,\"eval_duration\":2000000}\n",
	};
	json_t *o = parse(false, false, gen, 3);
	CHECK(!strcmp(str(o, "text"), "Hello world") && json_is_true(json_object_get(o, "done")),
	      "ollama generate: text across chunks, done");
	CHECK(!strcmp(str(o, "done_reason"), "stop") && num(o, "prompt_tokens") == 4 &&
		      num(o, "completion_tokens") == 2,
	      "ollama generate: the final line's counts");
	json_decref(o);

	const char *chat[] = {
		"{\"message\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"done\":false}\n",
		"{\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true}",
	};
	o = parse(false, true, chat, 2);
	CHECK(!strcmp(str(o, "text"), "Hi") && json_is_true(json_object_get(o, "done")),
	      "ollama chat: message.content, a last line without newline");
	json_decref(o);

	const char *err[] = {"{\"response\":\"a\",\"done\":false}\n",
			     "{\"error\":\"llama runner process has terminated\"}\n"};
	o = parse(false, false, err, 2);
	CHECK(!strcmp(str(o, "error"), "llama runner process has terminated") &&
		      !json_is_true(json_object_get(o, "done")),
	      "ollama: an error line mid-stream");
	json_decref(o);

	const char *cut[] = {"{\"response\":\"a\",\"done\":false}\n{\"response\":\"b\""};
	o = parse(false, false, cut, 1);
	CHECK(!strcmp(str(o, "text"), "a") && !json_is_true(json_object_get(o, "done")),
	      "ollama: a stream cut short is not done, and a broken line is dropped");
	json_decref(o);
}

static void test_openai(void)
{
	const char *sse[] = {
		": keep-alive comment\n\nevent: message\n",
		"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":"
		"\"Hi\"},\"finish_reason\":null}]}\n\n",
		"data:{\"choices\":[{\"index\":0,\"delta\":{\"content\":\" there\"},"
		"\"finish_reason\":\"length\"}]}\n\nda",
		"ta: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,"
		"\"total_tokens\":5}}\n\ndata: [DONE]\n\n",
	};
	json_t *o = parse(true, true, sse, 4);
	CHECK(!strcmp(str(o, "text"), "Hi there") && json_is_true(json_object_get(o, "done")),
	      "openai: deltas, comments and other fields ignored, [DONE]");
	CHECK(!strcmp(str(o, "done_reason"), "length") && num(o, "prompt_tokens") == 3 &&
		      num(o, "completion_tokens") == 2,
	      "openai: finish_reason and the usage chunk");
	json_decref(o);

	const char *noend[] = {"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n"};
	o = parse(true, true, noend, 1);
	CHECK(!json_is_true(json_object_get(o, "done")), "openai: no [DONE], not done");
	json_decref(o);

	const char *err[] = {"data: {\"error\":{\"message\":\"boom\",\"type\":\"api_error\"}}\n\n"};
	o = parse(true, true, err, 1);
	CHECK(!strcmp(str(o, "error"), "boom"), "openai: an error event");
	json_decref(o);
}

int main(void)
{
	test_ollama();
	test_openai();
	return check_done();
}
