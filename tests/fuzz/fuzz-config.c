/* libFuzzer target: the hosts.json parser and validator, and the rendering of what it
 * accepts. Token files resolve against a directory that does not exist. */
#include "config/config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1);
	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	char err[1024];
	struct config *c = NULL;
	if (config_load_string(text, "hosts.json", "/nonexistent-clusterfs-fuzz", &c, err,
			       sizeof(err)) == 0) {
		free(config_render(c));
		config_unref(c);
	} else if (!memchr(err, '\0', sizeof(err))) {
		abort();
	}
	free(text);
	return 0;
}
