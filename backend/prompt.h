/* Prompt tasks: a spec with "model" and "prompt" (or "messages"), run by the control plane
 * itself as one streaming request to a model server of the node placement picked, Ollama
 * (/api/generate, /api/chat: NDJSON) or OpenAI-compatible (/v1/chat/completions with
 * "stream": true: server-sent events). Tokens are appended to the task's stdout as they
 * come; the end gives tasks/ID/result its JSON (README, "Prompt tasks").
 *
 * The runner of struct tasks_prompts (backend/tasks.h): the task manager places, retries,
 * waits and cancels as for any task; this module answers holds (from models.c's lists,
 * refreshed while a prompt waits for a model), pulls for "pull": true, and streams. Every
 * request runs on the loop thread. */
#pragma once

#include "backend/cluster.h"
#include "backend/loop.h"
#include "backend/models.h"
#include "backend/tasks.h"

struct prompts;

/* Borrows loop, cluster, models and tasks: they outlive it. Sets itself as the runner of
 * tasks (tasks_set_prompts), so call it before tasks_start(). */
int prompts_new(struct loop *loop, struct cluster *cluster, struct models *models,
		struct tasks *tasks, struct prompts **ret);
/* After loop_stop(): the streams still open were ended with it (a prompt that was running
 * is asked again at the next start). */
void prompts_free(struct prompts *p);

/* The text of one streamed answer, for tests: feeds chunks of an Ollama NDJSON stream
 * (openai false) or an OpenAI SSE stream into a result, as the runner does. New JSON text
 * {"text", "done", "error", "done_reason", "prompt_tokens", "completion_tokens"}. */
char *prompts_parse_stream(bool openai, bool chat, const char *const *chunks, size_t n);
