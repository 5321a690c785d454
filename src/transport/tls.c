/* tls: the client-facing TLS context and per-client sessions (see tls.h).
 *
 * Protocol section 55.2.10: a client sends SSLRequest; the server answers one byte, 'S' or 'N';
 * after 'S' the TLS handshake starts on the same socket and everything after it, the startup
 * packet included, is encrypted. The socket stays non-blocking under the client's one poll
 * handle: SSL_accept is called again whenever the socket is ready in the direction OpenSSL
 * asked for (SSL_ERROR_WANT_READ / WANT_WRITE).
 *
 * One context serves every new client; reload builds a fresh one and swaps it in only when it
 * built. SSL objects hold a reference to their context, so sessions that started under the old
 * one go on unaffected. The context lives in this file (one per process, shared by every worker
 * thread), not in the config: the context and its mode are one snapshot (snapshot.h), so a
 * worker starting a session while a reload swaps them sees the old pair or the new one, and the
 * old context is freed only after its last reader (and, by OpenSSL's own count, its last SSL). */
#include "tls.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "log.h"
#include "sluice.h"
#include "snapshot.h"

struct tls_current {
    SSL_CTX *ctx; /* NULL when disabled */
    enum sslmode mode;
};
static struct snapshot_slot current = SNAPSHOT_SLOT_INIT; /* struct tls_current; none: disabled */

static void destroy_current(void *p)
{
    struct tls_current *t = p;
    SSL_CTX_free(t->ctx);
    free(t);
}

/* Make (ctx, mode) the pair in force; -1 when out of memory (then ctx is freed). */
static int publish(SSL_CTX *ctx, enum sslmode mode)
{
    struct tls_current *t = malloc(sizeof(*t));
    if (!t) {
        SSL_CTX_free(ctx);
        return -1;
    }
    *t = (struct tls_current){.ctx = ctx, .mode = mode};
    return snapshot_publish(&current, t, destroy_current);
}

enum sslmode tls_client_mode(void)
{
    struct snapshot *s = snapshot_acquire(&current);
    const struct tls_current *t = snapshot_value(s);
    enum sslmode mode = t ? t->mode : SSLMODE_DISABLE;
    snapshot_release(s);
    return mode;
}

void tls_error_text(char *out, size_t n, const char *what)
{
    unsigned long e = ERR_peek_last_error();
    char buf[256] = "unknown error";
    if (e)
        ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    snprintf(out, n, "%s: %s", what, buf);
}

/* client_tls_ciphers (TLSv1.2 and older): PgBouncer's names for cipher lists, as its libusual
 * defines them, so a pgbouncer.ini means the same here; anything else is an OpenSSL cipher list.
 * The default, "secure", is AEAD suites with forward secrecy only (ECDHE, DHE): no CBC, no RSA
 * key exchange. libusual's string relies on !SSLv3 to drop the AES-SHA1 CBC suites, which
 * OpenSSL 1.1 and later count as TLSv1 suites: !SHA1 drops them. */
#define CIPHERS_SECURE "HIGH+EECDH:HIGH+EDH:!SSLv3:!SHA1:!SHA384:!SHA256:!DSS:!aNULL"
#define CIPHERS_COMPAT "HIGH:+3DES:!aNULL"
#define CIPHERS_ALL "ALL:!aNULL:!eNULL"
static const struct {
    const char *name;
    const char *list;
} cipher_names[] = {
    {"", CIPHERS_SECURE},
    {"default", CIPHERS_SECURE},
    {"secure", CIPHERS_SECURE},
    {"compat", CIPHERS_COMPAT},
    {"legacy", CIPHERS_COMPAT},
    {"insecure", CIPHERS_ALL},
    {"all", CIPHERS_ALL},
    {"normal", "HIGH+EECDH:HIGH+EDH:HIGH+RSA:+SHA384:+SHA256:+SSLv3:+EDH:+RSA:-3DES:3DES+RSA:"
               "!CAMELLIA:!DSS:!aNULL"},
    {"fast", "HIGH+EECDH:HIGH+EDH:HIGH+RSA:+AES256:+SHA256:+SHA384:+SSLv3:+EDH:+RSA:-3DES:"
             "3DES+RSA:!CAMELLIA:!DSS:!aNULL"},
};

static const char *cipher_list(const char *text)
{
    for (size_t i = 0; i < sizeof(cipher_names) / sizeof(cipher_names[0]); i++) {
        if (strcasecmp(text, cipher_names[i].name) == 0)
            return cipher_names[i].list;
    }
    return text;
}

/* client_tls_protocols: "secure" (TLSv1.2 and later, the default), "all"/"legacy" (TLSv1.0 and
 * later), or a list of tlsv1.0, tlsv1.1, tlsv1.2, tlsv1.3 separated by commas, colons or blanks
 * (the range from the oldest to the newest named). */
static int parse_protocols(const char *text, int *min, int *max, char *err, size_t n)
{
    *min = TLS1_2_VERSION;
    *max = 0; /* the newest OpenSSL has */
    if (!text || !text[0] || strcasecmp(text, "secure") == 0 || strcasecmp(text, "default") == 0)
        return 0;
    if (strcasecmp(text, "all") == 0 || strcasecmp(text, "legacy") == 0) {
        *min = TLS1_VERSION;
        return 0;
    }
    static const struct {
        const char *name;
        int version;
    } names[] = {{"tlsv1.0", TLS1_VERSION},
                 {"tlsv1", TLS1_VERSION},
                 {"tlsv1.1", TLS1_1_VERSION},
                 {"tlsv1.2", TLS1_2_VERSION},
                 {"tlsv1.3", TLS1_3_VERSION}};
    int lo = 0, hi = 0;
    const char *p = text;
    while (*p) {
        size_t len = strcspn(p, ",: \t");
        if (len > 0) {
            int v = 0;
            for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
                if (strlen(names[i].name) == len && strncasecmp(p, names[i].name, len) == 0)
                    v = names[i].version;
            }
            if (!v) {
                snprintf(err, n,
                         "client_tls_protocols: unknown protocol '%.*s' (use secure, all, or "
                         "tlsv1.0 ... tlsv1.3)",
                         (int)len, p);
                return -1;
            }
            lo = lo == 0 || v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
        p += len;
        p += strspn(p, ",: \t");
    }
    if (!lo) {
        snprintf(err, n, "client_tls_protocols: no protocol named");
        return -1;
    }
    *min = lo;
    *max = hi;
    return 0;
}

/* PG 17 clients may offer ALPN "postgresql"; pick it when offered, ignore ALPN otherwise. */
static int on_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    static const unsigned char pg[] = {10, 'p', 'o', 's', 't', 'g', 'r', 'e', 's', 'q', 'l'};
    unsigned char *sel = NULL;
    if (SSL_select_next_proto(&sel, outlen, pg, sizeof(pg), in, inlen) == OPENSSL_NPN_NEGOTIATED) {
        *out = sel;
        return SSL_TLSEXT_ERR_OK;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

static SSL_CTX *build(const struct config *cfg, enum sslmode *mode, char *err, size_t n)
{
    *mode = cfg->client_tls_sslmode; /* parsed and checked at config load */
    if (*mode == SSLMODE_DISABLE) {
        err[0] = '\0';
        return NULL;
    }
    if (!cfg->client_tls_cert_file[0] || !cfg->client_tls_key_file[0]) {
        snprintf(err, n,
                 "client_tls_sslmode = %s needs client_tls_cert_file and client_tls_key_file",
                 sslmode_name(*mode));
        return NULL;
    }
    if (*mode >= SSLMODE_VERIFY_CA && !cfg->client_tls_ca_file[0]) {
        snprintf(err, n,
                 "client_tls_sslmode = %s needs client_tls_ca_file (the CA that signs "
                 "client certificates)",
                 sslmode_name(*mode));
        return NULL;
    }
    int min, max;
    if (parse_protocols(cfg->client_tls_protocols, &min, &max, err, n) != 0)
        return NULL;
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        tls_error_text(err, n, "cannot create a TLS context");
        return NULL;
    }
    char what[600];
    if (!SSL_CTX_set_min_proto_version(ctx, min) || !SSL_CTX_set_max_proto_version(ctx, max)) {
        tls_error_text(err, n, "client_tls_protocols");
        goto fail;
    }
    /* No renegotiation, no compression (CRIME), no session tickets or cache: Postgres clients
     * do not resume sessions, and tickets would only cost a write per handshake. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_TICKET);
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"sluice", 6);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* Records of at most 8 kB, as Postgres sends (its send buffer is 8 kB). libpq reads with
     * 8 kB of room at least, so such a record always comes out of the client's OpenSSL whole.
     * A 16 kB record can be read in part, and a client that then waits on the socket (psycopg
     * 3.1 in pipeline or non-blocking mode does) waits for ever for bytes already decrypted. */
    SSL_CTX_set_max_send_fragment(ctx, TLS_MAX_RECORD_TO_CLIENT);
    const char *ciphers = cipher_list(cfg->client_tls_ciphers);
    if (!SSL_CTX_set_cipher_list(ctx, ciphers)) {
        snprintf(what, sizeof(what), "client_tls_ciphers = '%s'", ciphers);
        tls_error_text(err, n, what);
        goto fail;
    }
    const char *suites = cfg->client_tls13_ciphers;
    if (suites[0] && !SSL_CTX_set_ciphersuites(ctx, suites)) {
        snprintf(what, sizeof(what), "client_tls13_ciphers = '%s'", suites);
        tls_error_text(err, n, what);
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->client_tls_cert_file) != 1) {
        snprintf(what, sizeof(what), "client_tls_cert_file %s", cfg->client_tls_cert_file);
        tls_error_text(err, n, what);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->client_tls_key_file, SSL_FILETYPE_PEM) != 1) {
        snprintf(what, sizeof(what), "client_tls_key_file %s", cfg->client_tls_key_file);
        tls_error_text(err, n, what);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        tls_error_text(err, n, "client_tls_key_file does not match client_tls_cert_file");
        goto fail;
    }
    if (cfg->client_tls_ca_file[0]) {
        if (SSL_CTX_load_verify_locations(ctx, cfg->client_tls_ca_file, NULL) != 1) {
            snprintf(what, sizeof(what), "client_tls_ca_file %s", cfg->client_tls_ca_file);
            tls_error_text(err, n, what);
            goto fail;
        }
        /* The names asked for in the CertificateRequest, from the certificates just loaded:
         * the file is read once (SSL_load_client_CA_file would open it again, and a FIFO a
         * sidecar writes once would hold that second open for ever). */
        STACK_OF(X509_OBJECT) *objs = X509_STORE_get0_objects(SSL_CTX_get_cert_store(ctx));
        for (int i = 0; i < sk_X509_OBJECT_num(objs); i++) {
            X509 *ca = X509_OBJECT_get0_X509(sk_X509_OBJECT_value(objs, i));
            if (ca && SSL_CTX_add_client_CA(ctx, ca) != 1) {
                snprintf(what, sizeof(what), "client_tls_ca_file %s", cfg->client_tls_ca_file);
                tls_error_text(err, n, what);
                goto fail;
            }
        }
        /* With a CA, a certificate is asked for (auth_type cert, hba "cert"). A certificate that
         * is sent and does not verify fails the handshake; one that is not sent fails the login
         * under verify-* (auth.c), with the 28000 Postgres's clientcert answers after a whole
         * handshake, where a handshake failure would tell the client only a TLS alert. */
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn_select, NULL);
    ERR_clear_error();
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

int tls_init(const struct config *cfg)
{
    char err[1024];
    enum sslmode mode = SSLMODE_DISABLE;
    SSL_CTX *ctx = build(cfg, &mode, err, sizeof(err));
    if (!ctx && mode != SSLMODE_DISABLE) {
        log_msg(LOG_ERROR, "client TLS: %s", err);
        return -1;
    }
    if (!ctx && err[0]) {
        log_msg(LOG_ERROR, "client TLS: %s", err);
        return -1;
    }
    if (publish(ctx, mode) < 0) {
        log_msg(LOG_ERROR, "client TLS: out of memory");
        return -1;
    }
    if (ctx)
        log_msg(LOG_INFO, "client TLS: %s, certificate %s", sslmode_name(mode),
                cfg->client_tls_cert_file);
    return 0;
}

struct tls_context {
    SSL_CTX *ctx; /* NULL when client TLS is off */
    enum sslmode mode;
};

void tls_context_free(struct tls_context *t)
{
    if (!t)
        return;
    SSL_CTX_free(t->ctx);
    free(t);
}

struct tls_context *tls_context_build(const struct config *cfg, char *err, size_t errlen)
{
    char why[1024];
    enum sslmode mode = SSLMODE_DISABLE;
    SSL_CTX *ctx = build(cfg, &mode, why, sizeof(why));
    if (!ctx && (mode != SSLMODE_DISABLE || why[0])) {
        snprintf(err, errlen, "client TLS: %s; keeping the previous TLS settings (%s)", why,
                 sslmode_name(tls_client_mode()));
        return NULL;
    }
    struct tls_context *t = malloc(sizeof(*t));
    if (!t) {
        SSL_CTX_free(ctx);
        snprintf(err, errlen, "client TLS: out of memory; keeping the previous TLS settings");
        return NULL;
    }
    *t = (struct tls_context){.ctx = ctx, .mode = mode};
    return t;
}

void tls_reload_built(const struct config *cfg, struct tls_context *t)
{
    SSL_CTX *ctx = t->ctx;
    enum sslmode mode = t->mode;
    t->ctx = NULL; /* publish takes it, published or freed */
    tls_context_free(t);
    if (publish(ctx, mode) < 0) {
        log_msg(LOG_ERROR, "reload: client TLS: out of memory; keeping the previous TLS settings");
        return;
    }
    if (ctx)
        log_msg(LOG_INFO, "reload: client TLS: %s, certificate %s reloaded", sslmode_name(mode),
                cfg->client_tls_cert_file);
}

void tls_free(void)
{
    snapshot_publish(&current, NULL, NULL);
}

SSL *tls_client_new(int fd)
{
    struct snapshot *s = snapshot_acquire(&current);
    const struct tls_current *t = snapshot_value(s);
    if (!t || !t->ctx) {
        snapshot_release(s);
        return NULL;
    }
    ERR_clear_error();
    SSL *ssl = SSL_new(t->ctx); /* holds its own reference to the context */
    snapshot_release(s);
    if (!ssl || SSL_set_fd(ssl, fd) != 1) {
        char err[300];
        tls_error_text(err, sizeof(err), "cannot start a TLS session");
        log_msg(LOG_ERROR, "%s", err);
        SSL_free(ssl);
        return NULL;
    }
    /* sluice retries a partial write from a buffer that may have moved (buf compaction). */
    SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_set_accept_state(ssl);
    return ssl;
}

enum tls_step tls_handshake(SSL *ssl, const char *peer, char *why, size_t whylen)
{
    ERR_clear_error();
    errno = 0;
    int r = SSL_do_handshake(ssl);
    if (r == 1)
        return TLS_STEP_DONE;
    int e = SSL_get_error(ssl, r);
    switch (e) {
    case SSL_ERROR_WANT_READ:
        return TLS_STEP_WANT_READ;
    case SSL_ERROR_WANT_WRITE:
        return TLS_STEP_WANT_WRITE;
    case SSL_ERROR_SYSCALL:
        ERR_clear_error();
        if (errno)
            snprintf(why, whylen, "TLS handshake failed: %s", strerror(errno));
        else
            snprintf(why, whylen, "TLS handshake failed: the %s closed the connection", peer);
        return TLS_STEP_FAILED;
    case SSL_ERROR_ZERO_RETURN:
        snprintf(why, whylen, "TLS handshake failed: the %s closed the connection", peer);
        return TLS_STEP_FAILED;
    default: {
        long vr = SSL_get_verify_result(ssl);
        char err[256];
        tls_error_text(err, sizeof(err), "TLS handshake failed");
        if (vr != X509_V_OK)
            snprintf(why, whylen, "%s (%s certificate: %s)", err, peer,
                     X509_verify_cert_error_string(vr));
        else
            snprintf(why, whylen, "%s", err);
        return TLS_STEP_FAILED;
    }
    }
}

void tls_client_close(SSL *ssl)
{
    if (!ssl)
        return;
    if (SSL_is_init_finished(ssl)) {
        /* One non-blocking attempt at close_notify; a client that is gone just misses it. */
        ERR_clear_error();
        SSL_set_quiet_shutdown(ssl, 0);
        (void)SSL_shutdown(ssl);
        ERR_clear_error();
    }
    SSL_free(ssl);
}

void tls_describe(SSL *ssl, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s %s", SSL_get_version(ssl), SSL_get_cipher_name(ssl));
}

size_t tls_server_end_point(SSL *ssl, uint8_t *out, size_t outlen)
{
    X509 *cert = SSL_get_certificate(ssl);
    if (!cert || outlen < EVP_MAX_MD_SIZE)
        return 0;
    int algo_nid = NID_undef;
    if (!OBJ_find_sigid_algs(X509_get_signature_nid(cert), &algo_nid, NULL))
        return 0;
    const EVP_MD *md;
    /* RFC 5929 section 4.1: MD5 and SHA-1 are replaced by SHA-256. */
    if (algo_nid == NID_md5 || algo_nid == NID_sha1)
        md = EVP_sha256();
    else
        md = EVP_get_digestbynid(algo_nid);
    unsigned int len = 0;
    if (!md || X509_digest(cert, md, out, &len) != 1) {
        ERR_clear_error();
        return 0;
    }
    return len;
}

bool tls_peer_verified(SSL *ssl)
{
    return SSL_get0_peer_certificate(ssl) && SSL_get_verify_result(ssl) == X509_V_OK;
}

bool tls_peer_cn(SSL *ssl, char *out, size_t outlen)
{
    if (!tls_peer_verified(ssl))
        return false;
    X509_NAME *subject = X509_get_subject_name(SSL_get0_peer_certificate(ssl));
    int idx = subject ? X509_NAME_get_index_by_NID(subject, NID_commonName, -1) : -1;
    if (idx < 0)
        return false;
    ASN1_STRING *data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, idx));
    unsigned char *utf8 = NULL;
    int len = data ? ASN1_STRING_to_UTF8(&utf8, data) : -1;
    bool ok = len > 0 && (size_t)len < outlen && !memchr(utf8, '\0', (size_t)len);
    if (ok) {
        memcpy(out, utf8, (size_t)len);
        out[len] = '\0';
    }
    OPENSSL_free(utf8);
    return ok;
}
