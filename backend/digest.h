/* SHA-256 digests and HMAC-SHA256 signatures (OpenSSL's libcrypto, which uses the CPU's
 * SHA instructions: twice nettle's speed here, and the digest is on the path of every
 * byte an artifact moves), for artifacts: an output's digest
 * is computed as it is copied, checked as it is staged, and a fetch of one file from an
 * agent can be signed with the agent's token instead of carrying it (a URL that opens one
 * path until it expires). */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define DIGEST_HEX_LEN 64 /* hex characters of a SHA-256 digest */

/* A running SHA-256. */
struct digest {
	void *ctx; /* EVP_MD_CTX; NULL once finished or cleared */
};

/* Starts a digest; aborts when out of memory (as buf_append does). */
void digest_init(struct digest *d);
void digest_update(struct digest *d, const void *data, size_t len);
/* Writes the lower-case hex digest and a NUL to out and frees the digest. */
void digest_final_hex(struct digest *d, char out[DIGEST_HEX_LEN + 1]);
/* Frees a digest that will not be finished; a finished or cleared one is a no-op. */
void digest_clear(struct digest *d);

/* The signature of a GET of `path` (as the server sees it: percent-decoded, without the
 * query) that is good until the wall-clock second `expires`, keyed by `token`: lower-case
 * hex HMAC-SHA256 of "GET\nPATH\nEXPIRES". Borrows everything. */
void digest_sign_path(const char *token, const char *path, uint64_t expires,
		      char out[DIGEST_HEX_LEN + 1]);
