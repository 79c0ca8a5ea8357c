/* SHA-256 and HMAC-SHA256 by nettle (see digest.h). */
#include "backend/digest.h"

#include <inttypes.h>
#include <nettle/hmac.h>
#include <stdio.h>
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
	sha256_init(&d->ctx);
}

void digest_update(struct digest *d, const void *data, size_t len)
{
	sha256_update(&d->ctx, len, data);
}

void digest_final_hex(struct digest *d, char out[DIGEST_HEX_LEN + 1])
{
	uint8_t raw[SHA256_DIGEST_SIZE];
	sha256_digest(&d->ctx, sizeof(raw), raw);
	hex_of(raw, sizeof(raw), out);
}

void digest_sign_path(const char *token, const char *path, uint64_t expires,
		      char out[DIGEST_HEX_LEN + 1])
{
	struct hmac_sha256_ctx ctx;
	uint8_t raw[SHA256_DIGEST_SIZE];
	char tail[32];
	int n = snprintf(tail, sizeof(tail), "\n%" PRIu64, expires);
	hmac_sha256_set_key(&ctx, strlen(token), (const uint8_t *) token);
	hmac_sha256_update(&ctx, 4, (const uint8_t *) "GET\n");
	hmac_sha256_update(&ctx, strlen(path), (const uint8_t *) path);
	hmac_sha256_update(&ctx, (size_t) n, (const uint8_t *) tail);
	hmac_sha256_digest(&ctx, sizeof(raw), raw);
	explicit_bzero(&ctx, sizeof(ctx));
	hex_of(raw, sizeof(raw), out);
}
