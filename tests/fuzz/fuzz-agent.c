/* libFuzzer target: the agent's handling of a request once libmicrohttpd has parsed it —
 * the route table's matching of METHOD and PATH, and the checks of a task request's body
 * (what any holder of the token can send). Input: "METHOD PATH\nBODY". */
#include "tools/agent/api.h"
#include "httpd/server.h"
#include "tools/agent/tasks.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *nl = memchr(data, '\n', size);
	size_t head = nl ? (size_t) (nl - (const char *) data) : size;
	if (head > 4096)
		return 0;
	char line[4097];
	memcpy(line, data, head);
	line[head] = '\0';
	if (strlen(line) != head)
		return 0; /* a NUL in a request line never reaches a handler */
	char *sp = strchr(line, ' ');
	if (!sp)
		return 0;
	*sp = '\0';
	const char *method = line, *path = sp + 1;
	size_t n_params = 0;
	int row = server_match_route(api_routes, api_n_routes, method, path, &n_params);
	if (row >= 0 && n_params > SERVER_MAX_PARAMS)
		abort();
	if (row >= 0 && !strcmp(api_routes[row].method, "POST") &&
	    !strcmp(api_routes[row].pattern, "/api/node/tasks") && nl) {
		const char *body = nl + 1;
		size_t len = size - head - 1;
		json_t *doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
		char msg[512];
		msg[0] = '\0';
		if (doc && tasks_check_request(doc, msg, sizeof(msg)) < 0 &&
		    !memchr(msg, '\0', sizeof(msg)))
			abort(); /* the refusal must be a sentence */
		json_decref(doc);
	}
	return 0;
}
