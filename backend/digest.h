/* SHA-256 digests and HMAC-SHA256 signatures (nettle), for artifacts: an output's digest
 * is computed as it is copied, checked as it is staged, and a fetch of one file from an
 * agent can be signed with the agent's token instead of carrying it (a URL that opens one
 * path until it expires). */
#pragma once

#include <nettle/sha2.h>
#include <stddef.h>
#include <stdint.h>

#define DIGEST_HEX_LEN 64 /* hex characters of a SHA-256 digest */

/* A running SHA-256. */
struct digest {
	struct sha256_ctx ctx;
};

void digest_init(struct digest *d);
void digest_update(struct digest *d, const void *data, size_t len);
/* Writes the lower-case hex digest and a NUL to out; `d` must be initialised again to be
 * used again. */
void digest_final_hex(struct digest *d, char out[DIGEST_HEX_LEN + 1]);

/* The signature of a GET of `path` (as the server sees it: percent-decoded, without the
 * query) that is good until the wall-clock second `expires`, keyed by `token`: lower-case
 * hex HMAC-SHA256 of "GET\nPATH\nEXPIRES". Borrows everything. */
void digest_sign_path(const char *token, const char *path, uint64_t expires,
		      char out[DIGEST_HEX_LEN + 1]);
