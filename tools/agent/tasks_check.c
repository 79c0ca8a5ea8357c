/* The checks of a task request (POST /api/node/tasks) against TASKS-API.md, before
 * anything is created. */
#include "tools/agent/tasks_internal.h"
#include "tools/agent/artifacts.h"

#include "backend/util.h"
#include "tools/agent/supervisor.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

/* [A-Za-z0-9._-]{1,64}, not starting with '-': a user name that no option parser or
 * path can mistake for something else. */
static bool task_user_is_valid(const char *name)
{
	size_t len = strlen(name);

	if (len == 0 || len > TASKS_USER_MAX || name[0] == '-')
		return false;
	for (const char *p = name; *p; p++) {
		char c = *p;
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      strchr("._-", c)))
			return false;
	}
	return true;
}

/* Checks a POST body against TASKS-API.md. 0, or -EINVAL with a sentence in msg. */
/* The fields a task request may hold, and a misspelt one named. */
static int check_fields(json_t *doc, char *msg, size_t msglen)
{
	static const char *const fields[] = {"id",
					     "cmd",
					     "env",
					     "cwd",
					     "timeout_s",
					     "user",
					     "outputs",
					     "outputs_max_files",
					     "outputs_max_bytes",
					     "inputs"};
	const size_t n_fields = sizeof(fields) / sizeof(fields[0]);
	const char *key;
	json_t *v;
	json_object_foreach (doc, key, v) {
		bool known = false;
		for (size_t i = 0; i < n_fields; i++)
			known = known || strcmp(key, fields[i]) == 0;
		if (!known) {
			const char *near = util_closest_word(key, fields, n_fields, 2);
			snprintf(msg, msglen,
				 "unknown field \"%.64s\"%s%s%s; the fields are id, "
				 "cmd, env, cwd, timeout_s, user, outputs, outputs_max_files, "
				 "outputs_max_bytes and inputs",
				 key, near ? " (did you mean \"" : "", near ? near : "",
				 near ? "\"?)" : "");
			return -EINVAL;
		}
	}
	return 0;
}

/* "cmd": a shell command string or a non-empty argv list, without NUL bytes. */
static int check_cmd(json_t *v, char *msg, size_t msglen)
{
	if (json_is_string(v)) {
		if (json_string_length(v) == 0 ||
		    json_string_length(v) != strlen(json_string_value(v))) {
			snprintf(msg, msglen, "\"cmd\" must not be empty or contain NUL bytes");
			return -EINVAL;
		}
	} else if (json_is_array(v) && json_array_size(v) > 0) {
		size_t i;
		json_t *arg;
		json_array_foreach (v, i, arg) {
			if (!json_is_string(arg) ||
			    json_string_length(arg) != strlen(json_string_value(arg)) ||
			    (i == 0 && json_string_length(arg) == 0)) {
				snprintf(msg, msglen,
					 "\"cmd\" must be a string or a non-empty list "
					 "of strings without NUL bytes, the first not empty");
				return -EINVAL;
			}
		}
	} else {
		snprintf(msg, msglen,
			 "\"cmd\" is required: a shell command string or a "
			 "non-empty list of strings (argv)");
		return -EINVAL;
	}
	return 0;
}

/* "env": names without "=" to strings without NUL bytes, none of the identity's. */
static int check_env(json_t *v, char *msg, size_t msglen)
{
	const char *key;
	if (v && !json_is_null(v)) {
		json_t *value;
		if (!json_is_object(v)) {
			snprintf(msg, msglen, "\"env\" must be an object of strings");
			return -EINVAL;
		}
		json_object_foreach (v, key, value) {
			if (!key[0] || strchr(key, '=') || !json_is_string(value) ||
			    json_string_length(value) != strlen(json_string_value(value))) {
				snprintf(msg, msglen,
					 "\"env\" must map names without \"=\" to "
					 "strings without NUL bytes; \"%.64s\" does not",
					 key);
				return -EINVAL;
			}
			if (supervisor_env_is_identity(key)) {
				snprintf(msg, msglen,
					 "env may not set %s (the task's identity comes from its "
					 "user)",
					 key);
				return -EINVAL;
			}
		}
	}
	return 0;
}

int tasks_check_request(json_t *doc, char *msg, size_t msglen)
{
	json_t *v;

	if (!json_is_object(doc)) {
		snprintf(msg, msglen, "the request must be a JSON object");
		return -EINVAL;
	}
	if (check_fields(doc, msg, msglen) < 0)
		return -EINVAL;

	v = json_object_get(doc, "id");
	if (!json_is_string(v) || json_string_length(v) != strlen(json_string_value(v)) ||
	    !tasks_id_is_valid(json_string_value(v))) {
		snprintf(msg, msglen,
			 "\"id\" must be a string of 1 to %d characters from "
			 "A-Z a-z 0-9 . _ @ : -, other than \".\" and \"..\"",
			 TASKS_ID_MAX);
		return -EINVAL;
	}

	if (check_cmd(json_object_get(doc, "cmd"), msg, msglen) < 0 ||
	    check_env(json_object_get(doc, "env"), msg, msglen) < 0)
		return -EINVAL;

	v = json_object_get(doc, "user");
	if (v && !json_is_null(v) &&
	    (!json_is_string(v) || json_string_length(v) != strlen(json_string_value(v)) ||
	     !task_user_is_valid(json_string_value(v)))) {
		snprintf(msg, msglen,
			 "\"user\" must be a user name of 1 to %d characters from A-Z a-z 0-9 "
			 ". _ -, not starting with \"-\"",
			 TASKS_USER_MAX);
		return -EINVAL;
	}

	v = json_object_get(doc, "cwd");
	if (v && !json_is_null(v) &&
	    (!json_is_string(v) || json_string_value(v)[0] != '/' ||
	     json_string_length(v) != strlen(json_string_value(v)))) {
		snprintf(msg, msglen, "\"cwd\" must be an absolute path");
		return -EINVAL;
	}

	v = json_object_get(doc, "timeout_s");
	if (v && !json_is_null(v) &&
	    (!json_is_number(v) || json_number_value(v) < 0 ||
	     json_number_value(v) > TASKS_TIMEOUT_MAX)) {
		snprintf(msg, msglen,
			 "\"timeout_s\" must be a number of seconds from 0 (none) "
			 "to %.0f",
			 TASKS_TIMEOUT_MAX);
		return -EINVAL;
	}
	return artifacts_check_request(doc, msg, msglen);
}
