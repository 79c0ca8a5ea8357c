/* TLS material of the agent, with GnuTLS. */
#include "httpd/tls.h"
#include "backend/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <gnutls/abstract.h>
#include <gnutls/crypto.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TLS_MAX_FILE     (256 * 1024)
#define TLS_VALIDITY_S   (10LL * 365 * 86400 + 2 * 86400) /* ten years and leap days */
#define TLS_SERIAL_BYTES 16

/* A GnuTLS datum as a new NUL-terminated string; frees the datum. */
static char *datum_steal(gnutls_datum_t *d)
{
	char *s = xmalloc(d->size + 1);
	memcpy(s, d->data, d->size);
	s[d->size] = '\0';
	explicit_bzero(d->data, d->size);
	gnutls_free(d->data);
	d->data = NULL;
	return s;
}

/* Reads a PEM file; a key file must also be private to the agent's user. */
static int tls_read_file(const char *path, bool secret, char **ret_pem, char *errbuf, size_t errlen)
{
	const char *what = secret ? "key file" : "certificate file";
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		int r = -errno;
		snprintf(errbuf, errlen, "%s %s: %s", what, path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return r;
	}
	int r = 0;
	if (!S_ISREG(st.st_mode)) {
		snprintf(errbuf, errlen, "%s %s is not a regular file", what, path);
		r = -EINVAL;
	} else if (secret && st.st_uid != geteuid()) {
		snprintf(errbuf, errlen,
			 "key file %s is owned by uid %u, not by the agent's user (uid %u); "
			 "run: chown %u %s",
			 path, (unsigned) st.st_uid, (unsigned) geteuid(), (unsigned) geteuid(),
			 path);
		r = -EPERM;
	} else if (secret && (st.st_mode & (S_IRWXG | S_IRWXO))) {
		snprintf(errbuf, errlen,
			 "key file %s is accessible by group or others (mode %04o); run: chmod "
			 "600 %s",
			 path, (unsigned) (st.st_mode & 07777), path);
		r = -EPERM;
	}
	close(fd);
	if (r < 0)
		return r;
	size_t len = 0;
	r = file_read_all(path, TLS_MAX_FILE, ret_pem, &len);
	if (r < 0)
		snprintf(errbuf, errlen, "%s %s: %s", what, path,
			 r == -EFBIG ? "larger than 256 KiB" : strerror(-r));
	return r;
}

int tls_read_pair(const char *cert_file, const char *key_file, char **ret_cert_pem,
		  char **ret_key_pem, char *errbuf, size_t errlen)
{
	char *cert = NULL, *key = NULL;
	gnutls_certificate_credentials_t cred = NULL;
	int r = tls_read_file(key_file, true, &key, errbuf, errlen);
	if (r < 0)
		return r;
	r = tls_read_file(cert_file, false, &cert, errbuf, errlen);
	if (r < 0)
		goto err_free;

	/* loading them as credentials checks both, and that they belong together */
	gnutls_datum_t c = {(unsigned char *) cert, (unsigned) strlen(cert)};
	gnutls_datum_t k = {(unsigned char *) key, (unsigned) strlen(key)};
	int g = gnutls_certificate_allocate_credentials(&cred);
	if (g >= 0)
		g = gnutls_certificate_set_x509_key_mem(cred, &c, &k, GNUTLS_X509_FMT_PEM);
	gnutls_certificate_free_credentials(cred);
	if (g < 0) {
		snprintf(errbuf, errlen, "cannot use certificate %s with key %s: %s", cert_file,
			 key_file, gnutls_strerror(g));
		r = -EINVAL;
		goto err_free;
	}
	*ret_cert_pem = cert;
	*ret_key_pem = key;
	return 0;

err_free:
	free(cert);
	if (key) {
		explicit_bzero(key, strlen(key));
		free(key);
	}
	return r;
}

int tls_fingerprint_pem(const char *cert_pem, char **ret_fp, char *errbuf, size_t errlen)
{
	gnutls_x509_crt_t crt = NULL;
	gnutls_pubkey_t pub = NULL;
	gnutls_datum_t pem = {(unsigned char *) cert_pem, (unsigned) strlen(cert_pem)};
	gnutls_datum_t spki = {NULL, 0};
	unsigned char digest[32];

	int g = gnutls_x509_crt_init(&crt);
	if (g >= 0)
		g = gnutls_x509_crt_import(crt, &pem, GNUTLS_X509_FMT_PEM);
	if (g >= 0)
		g = gnutls_pubkey_init(&pub);
	if (g >= 0)
		g = gnutls_pubkey_import_x509(pub, crt, 0);
	if (g >= 0)
		g = gnutls_pubkey_export2(pub, GNUTLS_X509_FMT_DER, &spki);
	if (g >= 0)
		g = gnutls_hash_fast(GNUTLS_DIG_SHA256, spki.data, spki.size, digest);
	gnutls_free(spki.data);
	gnutls_pubkey_deinit(pub);
	gnutls_x509_crt_deinit(crt);
	if (g < 0) {
		snprintf(errbuf, errlen, "not a PEM certificate: %s", gnutls_strerror(g));
		return -EINVAL;
	}
	char *b64 = util_base64_encode(digest, sizeof(digest));
	struct buf b;
	buf_init(&b);
	buf_printf(&b, "sha256:%s", b64);
	free(b64);
	*ret_fp = buf_steal(&b, NULL);
	return 0;
}

/* Adds one IP address (text) as a subjectAltName; a non-numeric one is skipped. */
static int crt_add_ip(gnutls_x509_crt_t crt, const char *ip)
{
	unsigned char raw[16];
	if (inet_pton(AF_INET, ip, raw) == 1)
		return gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_IPADDRESS, raw, 4,
							    GNUTLS_FSAN_APPEND);
	if (inet_pton(AF_INET6, ip, raw) == 1)
		return gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_IPADDRESS, raw, 16,
							    GNUTLS_FSAN_APPEND);
	return 0;
}

int tls_make_self_signed(const char *name, const char *const *dns, size_t n_dns,
			 const char *const *ips, size_t n_ips, char **ret_cert_pem,
			 char **ret_key_pem, char *errbuf, size_t errlen)
{
	gnutls_x509_privkey_t key = NULL;
	gnutls_x509_crt_t crt = NULL;
	gnutls_datum_t cert_d = {NULL, 0}, key_d = {NULL, 0};
	unsigned char serial[TLS_SERIAL_BYTES], key_id[64];
	size_t key_id_len = sizeof(key_id);
	time_t now = time(NULL);
	const char *step = "generating the key";

	if (getrandom(serial, sizeof(serial), 0) != (ssize_t) sizeof(serial)) {
		snprintf(errbuf, errlen, "getrandom: %s", strerror(errno));
		return -EIO;
	}
	serial[0] = (unsigned char) ((serial[0] & 0x7f) | 0x01); /* positive, full length */

	int g = gnutls_x509_privkey_init(&key);
	if (g >= 0)
		g = gnutls_x509_privkey_generate(
			key, GNUTLS_PK_ECDSA, GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0);
	if (g < 0)
		goto out;
	step = "making the certificate";
	g = gnutls_x509_crt_init(&crt);
	if (g >= 0)
		g = gnutls_x509_crt_set_version(crt, 3);
	if (g >= 0)
		g = gnutls_x509_crt_set_serial(crt, serial, sizeof(serial));
	if (g >= 0)
		g = gnutls_x509_crt_set_activation_time(crt, now - 3600);
	if (g >= 0)
		g = gnutls_x509_crt_set_expiration_time(crt, (time_t) (now + TLS_VALIDITY_S));
	if (g >= 0)
		g = gnutls_x509_crt_set_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, name,
						  (unsigned) strlen(name));
	if (g >= 0)
		g = gnutls_x509_crt_set_key(crt, key);
	/* its own CA: a control plane may trust it as a ca_file instead of pinning it */
	if (g >= 0)
		g = gnutls_x509_crt_set_basic_constraints(crt, 1, 0);
	if (g >= 0)
		g = gnutls_x509_crt_set_key_usage(crt, GNUTLS_KEY_DIGITAL_SIGNATURE |
							       GNUTLS_KEY_KEY_CERT_SIGN);
	if (g >= 0)
		g = gnutls_x509_crt_set_key_purpose_oid(crt, GNUTLS_KP_TLS_WWW_SERVER, 0);
	for (size_t i = 0; g >= 0 && i < n_dns; i++)
		g = gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_DNSNAME, dns[i],
							 (unsigned) strlen(dns[i]),
							 GNUTLS_FSAN_APPEND);
	for (size_t i = 0; g >= 0 && i < n_ips; i++)
		g = crt_add_ip(crt, ips[i]);
	if (g >= 0)
		g = gnutls_x509_crt_get_key_id(crt, 0, key_id, &key_id_len);
	if (g >= 0)
		g = gnutls_x509_crt_set_subject_key_id(crt, key_id, key_id_len);
	if (g < 0)
		goto out;
	step = "signing the certificate";
	g = gnutls_x509_crt_sign2(crt, crt, key, GNUTLS_DIG_SHA256, 0);
	if (g >= 0)
		g = gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_PEM, &cert_d);
	if (g >= 0)
		g = gnutls_x509_privkey_export2_pkcs8(key, GNUTLS_X509_FMT_PEM, NULL,
						      GNUTLS_PKCS_PLAIN, &key_d);
out:
	gnutls_x509_crt_deinit(crt);
	gnutls_x509_privkey_deinit(key);
	if (g < 0) {
		if (cert_d.data)
			gnutls_free(cert_d.data);
		snprintf(errbuf, errlen, "%s: %s", step, gnutls_strerror(g));
		return -EIO;
	}
	*ret_cert_pem = datum_steal(&cert_d);
	*ret_key_pem = datum_steal(&key_d);
	return 0;
}

char *tls_vouch(const char *secret, const char *fingerprint)
{
	unsigned char mac[32];
	struct buf msg;
	buf_init(&msg);
	buf_printf(&msg, "clusterfs-join %s", fingerprint);
	int g = gnutls_hmac_fast(GNUTLS_MAC_SHA256, secret, strlen(secret), msg.data, msg.len, mac);
	buf_free(&msg);
	if (g < 0)
		return NULL;
	char *b64 = util_base64_encode(mac, sizeof(mac));
	explicit_bzero(mac, sizeof(mac));
	return b64;
}

bool tls_vouch_check(const char *secret, const char *fingerprint, const char *mac)
{
	char *want = tls_vouch(secret, fingerprint);
	bool ok = want && mac && secret_equal(want, mac);
	free(want);
	return ok;
}
