/* SHA-256 and HMAC-SHA256 by libcrypto (see digest.h). */
#include "backend/digest.h"
#include "backend/util.h"

#include <inttypes.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void hex_of(const uint8_t *raw, size_t n, char *out)
{
	static const char hex[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = hex[raw[i] >> 4];
		out[2 * i + 1] = hex[raw[i] & 15];
	}
	out[2 * n] = '\0';
}

void digest_init(struct digest *d)
{
	d->ctx = EVP_MD_CTX_new();
	if (!d->ctx || EVP_DigestInit_ex(d->ctx, EVP_sha256(), NULL) != 1)
		abort();
}

void digest_update(struct digest *d, const void *data, size_t len)
{
	EVP_DigestUpdate(d->ctx, data, len);
}

void digest_final_hex(struct digest *d, char out[DIGEST_HEX_LEN + 1])
{
	unsigned char raw[EVP_MAX_MD_SIZE];
	unsigned int n = 0;
	EVP_DigestFinal_ex(d->ctx, raw, &n);
	hex_of(raw, n, out);
	digest_clear(d);
}

void digest_clear(struct digest *d)
{
	EVP_MD_CTX_free(d->ctx);
	d->ctx = NULL;
}

void digest_sign_path(const char *token, const char *path, uint64_t expires,
		      char out[DIGEST_HEX_LEN + 1])
{
	unsigned char raw[EVP_MAX_MD_SIZE];
	unsigned int n = 0;
	char *msg = xasprintf("GET\n%s\n%" PRIu64, path, expires);
	HMAC(EVP_sha256(), token, (int) strlen(token), (const unsigned char *) msg, strlen(msg),
	     raw, &n);
	free(msg);
	hex_of(raw, n, out);
	explicit_bzero(raw, sizeof(raw));
}
