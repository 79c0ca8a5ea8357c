/* The agent's TLS material with GnuTLS: reading a certificate and key for the server,
 * making a self-signed pair for `clusterfs-agent --init`, and the fingerprint the control
 * plane pins (the SHA-256 of the certificate's SubjectPublicKeyInfo, in base64: what
 * libcurl's CURLOPT_PINNEDPUBLICKEY "sha256//BASE64" compares). */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* Reads a PEM certificate and its PEM private key for serving. The key file must be a
 * regular file owned by the agent's user and not accessible by group or others (checked
 * on the opened file). Returns new strings (wipe and free the key), 0 or -errno with one
 * sentence in errbuf. */
int tls_read_pair(const char *cert_file, const char *key_file, char **ret_cert_pem,
		  char **ret_key_pem, char *errbuf, size_t errlen);

/* The fingerprint "sha256:BASE64" of a PEM certificate. Returns a new string, 0 or -errno
 * with one sentence in errbuf. */
int tls_fingerprint_pem(const char *cert_pem, char **ret_fp, char *errbuf, size_t errlen);

/* A fingerprint vouched for by whoever holds `secret` (the join token): base64 of
 * HMAC-SHA256(secret, "clusterfs-join " FINGERPRINT). A DNS-SD announcement carries it, so
 * that an agent holding the join token can tell the control plane's key from an impostor's
 * without a pin (see DESIGN, membership). Returns a new string, or NULL when GnuTLS
 * cannot compute it. */
char *tls_vouch(const char *secret, const char *fingerprint);
/* Whether `mac` is tls_vouch(secret, fingerprint), compared in constant time. */
bool tls_vouch_check(const char *secret, const char *fingerprint, const char *mac);

/* A new self-signed certificate (ECDSA P-256, SHA-256, valid for ten years, random serial)
 * for common name `name`, with every entry of `dns` (n_dns) and `ips` (n_ips, numeric IPv4
 * or IPv6 text) as subjectAltNames. It is its own CA, so it can also serve as a ca_file.
 * Returns new PEM strings (wipe and free the key), 0 or -errno with errbuf. */
int tls_make_self_signed(const char *name, const char *const *dns, size_t n_dns,
			 const char *const *ips, size_t n_ips, char **ret_cert_pem,
			 char **ret_key_pem, char *errbuf, size_t errlen);
