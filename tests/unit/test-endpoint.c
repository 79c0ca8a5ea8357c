/* Unit tests for backend/endpoint.c: the scheme and TLS settings each transport gives a
 * URL, the loopback rule for plain HTTP, and the base64 helpers the fingerprints use.
 * Prints TAP; exits non-zero when a check failed. */
#include <stdlib.h>
#include <string.h>

#include "backend/endpoint.h"
#include "backend/util.h"

#include "tests/unit/check.h"

#define FP "sha256:kNLI7nCQGzzpvVFG0aMjWtREkRISq8fnt72YaEzyXc4="

static void test_loopback(void)
{
	CHECK(endpoint_address_is_loopback("127.0.0.1") &&
		      endpoint_address_is_loopback("127.200.3.4") &&
		      endpoint_address_is_loopback("::1") &&
		      endpoint_address_is_loopback("::ffff:127.0.0.1") &&
		      endpoint_address_is_loopback("localhost") &&
		      endpoint_address_is_loopback("LocalHost"),
	      "loopback addresses");
	CHECK(!endpoint_address_is_loopback("128.0.0.1") &&
		      !endpoint_address_is_loopback("10.0.0.1") &&
		      !endpoint_address_is_loopback("::2") &&
		      !endpoint_address_is_loopback("localhost.example.net") &&
		      !endpoint_address_is_loopback("127.0.0.1.nip.io"),
	      "other addresses are not loopback");
}

static void test_endpoints(void)
{
	struct config cfg = {.tls_ca_file = "/etc/ca.pem"};
	struct cfg_transport pinned = {.tls = true, .fingerprint = FP};
	struct cfg_transport by_ca = {.tls = true};
	struct cfg_transport own_ca = {.tls = true, .ca_file = "/own.pem"};
	struct cfg_transport insecure = {.insecure_http = true};
	struct endpoint e, sub;

	endpoint_init(&e, &cfg, "10.0.0.1", 8768, &pinned, "/api/node/health", "this host");
	CHECK(strcmp(e.url, "https://10.0.0.1:8768/api/node/health") == 0 && e.https &&
		      !e.refused && !e.ca_file &&
		      strcmp(e.pinned_key,
			     "sha256//kNLI7nCQGzzpvVFG0aMjWtREkRISq8fnt72YaEzyXc4=") == 0,
	      "pinned: https, curl's pin form, no CA");
	endpoint_init_sub(&sub, &e, "/x");
	CHECK(strcmp(sub.url, "https://10.0.0.1:8768/api/node/health/x") == 0 &&
		      sub.tls.pinned_key && strcmp(sub.tls.pinned_key, e.pinned_key) == 0 &&
		      sub.tls.pinned_key != e.pinned_key,
	      "a sub-endpoint copies the settings");
	endpoint_clear(&sub);
	endpoint_clear(&e);

	endpoint_init(&e, &cfg, "fe80::1", 1, &by_ca, "", "this host");
	CHECK(strcmp(e.url, "https://[fe80::1]:1") == 0 && e.tls.ca_file &&
		      strcmp(e.tls.ca_file, "/etc/ca.pem") == 0 && !e.tls.pinned_key,
	      "tls: true verifies against the top-level CA file");
	endpoint_clear(&e);
	endpoint_init(&e, &cfg, "h", 1, &own_ca, "", "this host");
	CHECK(strcmp(e.tls.ca_file, "/own.pem") == 0, "a CA file of its own");
	endpoint_clear(&e);

	endpoint_init(&e, &cfg, "192.168.1.10", 80, NULL, "/", "service s");
	CHECK(strncmp(e.url, "http://", 7) == 0 && !e.https && e.refused &&
		      strcmp(e.refused, "plain HTTP to 192.168.1.10 is refused: set tls or "
					"insecure_http for service s") == 0,
	      "plain http to a remote address is refused");
	endpoint_clear(&e);
	endpoint_init(&e, &cfg, "192.168.1.10", 80, &insecure, "/", "this host");
	CHECK(!e.refused && !e.https, "unless insecure_http");
	endpoint_clear(&e);
	endpoint_init(&e, &cfg, "127.0.0.1", 80, NULL, "/", "this host");
	CHECK(!e.refused && strcmp(e.url, "http://127.0.0.1:80/") == 0, "loopback goes plain");
	struct http_request req = {0};
	endpoint_apply(&e, &req);
	CHECK(req.url == e.url && !req.tls && !req.refused, "apply: plain");
	endpoint_clear(&e);
}

static void test_base64(void)
{
	unsigned char out[8];
	char *s = util_base64_encode("ab", 2);
	CHECK(strcmp(s, "YWI=") == 0, "base64 with padding");
	free(s);
	s = util_base64_encode("abc", 3);
	CHECK(strcmp(s, "YWJj") == 0, "base64 without padding");
	free(s);
	CHECK(util_base64_decode("YWI=", out, sizeof(out)) == 2 && memcmp(out, "ab", 2) == 0,
	      "decode");
	CHECK(util_base64_decode("YW=I", out, sizeof(out)) < 0 &&
		      util_base64_decode("YWI", out, sizeof(out)) < 0 &&
		      util_base64_decode("YWJjYWJjYWJj", out, 4) < 0,
	      "decode rejects bad padding, length, overflow");
}

int main(void)
{
	test_loopback();
	test_endpoints();
	test_base64();
	return check_done();
}
