/* scram: SCRAM-SHA-256 secrets and the server side of an exchange (see scram.h).
 *
 * RFC 5802 section 3, with H = SHA-256 (RFC 7677):
 *   SaltedPassword  = Hi(password, salt, i)            PBKDF2-HMAC-SHA-256
 *   ClientKey       = HMAC(SaltedPassword, "Client Key")
 *   StoredKey       = H(ClientKey)
 *   ServerKey       = HMAC(SaltedPassword, "Server Key")
 *   AuthMessage     = client-first-message-bare + "," + server-first-message + "," +
 *                     client-final-message-without-proof
 *   ClientSignature = HMAC(StoredKey, AuthMessage);   ClientProof = ClientKey XOR ClientSignature
 *   ServerSignature = HMAC(ServerKey, AuthMessage)
 * The server never sees ClientKey at rest: it recovers it from the proof and checks its hash
 * against StoredKey. The checks and messages follow Postgres's auth-scram.c, so a client sees
 * the same errors from sluice as from the server. */
#include "scram.h"

#include <idn-free.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stringprep.h>

#define SECRET_PREFIX "SCRAM-SHA-256$"
#define RAW_NONCE_LEN 18 /* Postgres's SCRAM_RAW_NONCE_LEN */
#define MAX_MESSAGE 4096 /* longer than any message a real client sends */

/* ---- base64 ---- */

static const char b64_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int scram_b64_encode(const uint8_t *in, size_t len, char *out, size_t outlen)
{
    size_t need = (len + 2) / 3 * 4 + 1;
    if (outlen < need)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len)
            v |= in[i + 2];
        out[o++] = b64_chars[(v >> 18) & 63];
        out[o++] = b64_chars[(v >> 12) & 63];
        out[o++] = i + 1 < len ? b64_chars[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? b64_chars[v & 63] : '=';
    }
    out[o] = '\0';
    return (int)o;
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

int scram_b64_decode(const char *in, size_t len, uint8_t *out, size_t outlen)
{
    if (len % 4 != 0)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            char ch = in[i + k];
            if (ch == '=') {
                /* padding only in the last group's last one or two places */
                if (i + 4 != len || k < 2)
                    return -1;
                v[k] = 0;
                pad++;
            } else {
                if (pad)
                    return -1;
                v[k] = b64_value(ch);
                if (v[k] < 0)
                    return -1;
            }
        }
        uint32_t w =
            (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        int n = 3 - pad;
        if (o + (size_t)n > outlen)
            return -1;
        out[o++] = (uint8_t)(w >> 16);
        if (n > 1)
            out[o++] = (uint8_t)(w >> 8);
        if (n > 2)
            out[o++] = (uint8_t)w;
    }
    return (int)o;
}

/* ---- the key schedule ---- */

static int hmac_sha256(const uint8_t *key, size_t keylen, const void *data, size_t len,
                       uint8_t out[SCRAM_KEY_LEN])
{
    unsigned int outlen = 0;
    if (!HMAC(EVP_sha256(), key, (int)keylen, data, len, out, &outlen) || outlen != SCRAM_KEY_LEN)
        return -1;
    return 0;
}

char *scram_saslprep(const char *password)
{
    bool ascii = true;
    for (const unsigned char *p = (const unsigned char *)password; *p; p++)
        ascii &= *p < 0x80;
    char *out = NULL;
    /* Stored strings: unassigned code points are prohibited, as Postgres does. */
    if (!ascii && stringprep_profile(password, &out, "SASLprep", STRINGPREP_NO_UNASSIGNED) ==
                      STRINGPREP_OK &&
        out && out[0]) {
        char *copy = strdup(out); /* libidn's allocator need not be ours */
        OPENSSL_cleanse(out, strlen(out));
        idn_free(out);
        return copy;
    }
    if (out) {
        OPENSSL_cleanse(out, strlen(out));
        idn_free(out);
    }
    return strdup(password);
}

/* The exchange's HMACs and hashes. OpenSSL 3 looks the algorithm up and builds a context on
 * every one-shot HMAC()/SHA256() call (about 2.9 and 1.2 us each on the benchmark machine); a
 * context kept and re-keyed costs 0.7 and 0.2 us. A SCRAM login makes three such calls. A
 * context is used by one thread at a time, so each thread (each worker's loop) keeps its own,
 * without a lock. (scram_make_secret runs on the thread pool and keeps the one-shot calls.) */
static _Thread_local EVP_MAC *mac_alg;
static _Thread_local EVP_MAC_CTX *mac_ctx;
static _Thread_local EVP_MD *sha_alg;
static _Thread_local EVP_MD_CTX *sha_ctx;

static bool exchange_contexts(void)
{
    if (mac_ctx && sha_ctx)
        return true;
    if (!mac_alg)
        mac_alg = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (!sha_alg)
        sha_alg = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (mac_alg && !mac_ctx) {
        char digest[] = "SHA256";
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
            OSSL_PARAM_construct_end()};
        mac_ctx = EVP_MAC_CTX_new(mac_alg);
        if (mac_ctx && EVP_MAC_CTX_set_params(mac_ctx, params) != 1) {
            EVP_MAC_CTX_free(mac_ctx);
            mac_ctx = NULL;
        }
    }
    if (sha_alg && !sha_ctx)
        sha_ctx = EVP_MD_CTX_new();
    return mac_ctx && sha_ctx;
}

void scram_free_contexts(void)
{
    EVP_MAC_CTX_free(mac_ctx);
    EVP_MD_CTX_free(sha_ctx);
    EVP_MAC_free(mac_alg);
    EVP_MD_free(sha_alg);
    mac_ctx = NULL;
    sha_ctx = NULL;
    mac_alg = NULL;
    sha_alg = NULL;
}

static int exchange_hmac(const uint8_t *key, size_t keylen, const void *data, size_t len,
                         uint8_t out[SCRAM_KEY_LEN])
{
    if (!exchange_contexts())
        return hmac_sha256(key, keylen, data, len, out);
    size_t outlen = 0;
    if (EVP_MAC_init(mac_ctx, key, keylen, NULL) != 1 || EVP_MAC_update(mac_ctx, data, len) != 1 ||
        EVP_MAC_final(mac_ctx, out, &outlen, SCRAM_KEY_LEN) != 1 || outlen != SCRAM_KEY_LEN)
        return -1;
    return 0;
}

static int exchange_sha256(const void *data, size_t len, uint8_t out[SCRAM_KEY_LEN])
{
    unsigned int outlen = 0;
    if (!exchange_contexts())
        return SHA256(data, len, out) ? 0 : -1;
    if (EVP_DigestInit_ex(sha_ctx, sha_alg, NULL) != 1 || EVP_DigestUpdate(sha_ctx, data, len) != 1 ||
        EVP_DigestFinal_ex(sha_ctx, out, &outlen) != 1 || outlen != SCRAM_KEY_LEN)
        return -1;
    return 0;
}

static int salted_password(const char *password, const uint8_t *salt, size_t salt_len,
                           int iterations, uint8_t out[SCRAM_KEY_LEN])
{
    char *prepared = scram_saslprep(password);
    if (!prepared)
        return -1;
    int rc = PKCS5_PBKDF2_HMAC(prepared, (int)strlen(prepared), salt, (int)salt_len, iterations,
                               EVP_sha256(), SCRAM_KEY_LEN, out) == 1
                 ? 0
                 : -1;
    OPENSSL_cleanse(prepared, strlen(prepared));
    free(prepared);
    return rc;
}

int scram_make_secret(const char *password, const uint8_t *salt, size_t salt_len, int iterations,
                      struct scram_secret *out)
{
    if (salt_len == 0 || salt_len > SCRAM_MAX_SALT_LEN || iterations < 1 ||
        iterations > SCRAM_MAX_ITERATIONS)
        return -1;
    uint8_t salted[SCRAM_KEY_LEN], client_key[SCRAM_KEY_LEN];
    int rc = -1;
    memset(out, 0, sizeof(*out));
    out->iterations = iterations;
    out->salt_len = salt_len;
    memcpy(out->salt, salt, salt_len);
    if (salted_password(password, salt, salt_len, iterations, salted) == 0 &&
        hmac_sha256(salted, sizeof(salted), "Client Key", 10, client_key) == 0 &&
        SHA256(client_key, sizeof(client_key), out->stored_key) &&
        hmac_sha256(salted, sizeof(salted), "Server Key", 10, out->server_key) == 0)
        rc = 0;
    OPENSSL_cleanse(salted, sizeof(salted));
    OPENSSL_cleanse(client_key, sizeof(client_key));
    return rc;
}

bool scram_verify_password(const struct scram_secret *s, const char *password)
{
    struct scram_secret derived;
    if (scram_make_secret(password, s->salt, s->salt_len, s->iterations, &derived) != 0)
        return false;
    bool ok = CRYPTO_memcmp(derived.stored_key, s->stored_key, SCRAM_KEY_LEN) == 0 &&
              CRYPTO_memcmp(derived.server_key, s->server_key, SCRAM_KEY_LEN) == 0;
    OPENSSL_cleanse(&derived, sizeof(derived));
    return ok;
}

void scram_fake_secret(const uint8_t key[32], const char *user, int iterations,
                       struct scram_secret *out)
{
    uint8_t mac[SCRAM_KEY_LEN];
    size_t ulen = strlen(user);
    memset(out, 0, sizeof(*out));
    out->iterations = iterations;
    out->salt_len = SCRAM_SALT_LEN;
    /* Different labels give unrelated values; any failure leaves zeros, which is as fake. */
    uint8_t buf[512];
    size_t n = ulen < sizeof(buf) - 8 ? ulen : sizeof(buf) - 8;
    memcpy(buf, "salt:", 5);
    memcpy(buf + 5, user, n);
    if (exchange_hmac(key, 32, buf, n + 5, mac) == 0)
        memcpy(out->salt, mac, SCRAM_SALT_LEN);
    memcpy(buf, "keys:", 5);
    if (exchange_hmac(key, 32, buf, n + 5, mac) == 0) {
        memcpy(out->stored_key, mac, SCRAM_KEY_LEN);
        exchange_sha256(mac, sizeof(mac), out->server_key);
    }
    OPENSSL_cleanse(mac, sizeof(mac));
}

/* ---- the text form of a secret ---- */

bool scram_is_secret(const char *text)
{
    return strncmp(text, SECRET_PREFIX, strlen(SECRET_PREFIX)) == 0;
}

int scram_parse_secret(const char *text, struct scram_secret *out)
{
    memset(out, 0, sizeof(*out));
    if (!scram_is_secret(text))
        return -1;
    const char *p = text + strlen(SECRET_PREFIX);
    /* <iterations>:<salt>$<stored>:<server> */
    const char *colon1 = strchr(p, ':');
    const char *dollar = colon1 ? strchr(colon1, '$') : NULL;
    const char *colon2 = dollar ? strchr(dollar, ':') : NULL;
    if (!colon1 || !dollar || !colon2 || colon1 == p || colon1 - p > 8)
        return -1;
    long iter = 0;
    for (const char *q = p; q < colon1; q++) {
        if (*q < '0' || *q > '9')
            return -1;
        iter = iter * 10 + (*q - '0');
    }
    if (iter < 1 || iter > SCRAM_MAX_ITERATIONS)
        return -1;
    out->iterations = (int)iter;
    int n =
        scram_b64_decode(colon1 + 1, (size_t)(dollar - colon1 - 1), out->salt, sizeof(out->salt));
    if (n <= 0)
        return -1;
    out->salt_len = (size_t)n;
    if (scram_b64_decode(dollar + 1, (size_t)(colon2 - dollar - 1), out->stored_key,
                         SCRAM_KEY_LEN) != SCRAM_KEY_LEN ||
        scram_b64_decode(colon2 + 1, strlen(colon2 + 1), out->server_key, SCRAM_KEY_LEN) !=
            SCRAM_KEY_LEN) {
        OPENSSL_cleanse(out, sizeof(*out));
        return -1;
    }
    return 0;
}

int scram_format_secret(const struct scram_secret *s, char *out, size_t outlen)
{
    char salt[SCRAM_MAX_SALT_LEN * 2], stored[64], server[64];
    if (scram_b64_encode(s->salt, s->salt_len, salt, sizeof(salt)) < 0 ||
        scram_b64_encode(s->stored_key, SCRAM_KEY_LEN, stored, sizeof(stored)) < 0 ||
        scram_b64_encode(s->server_key, SCRAM_KEY_LEN, server, sizeof(server)) < 0)
        return -1;
    int n = snprintf(out, outlen, SECRET_PREFIX "%d:%s$%s:%s", s->iterations, salt, stored, server);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

/* ---- the exchange ---- */

void scram_server_init(struct scram_server *x, const struct scram_secret *secret, bool doomed,
                       const uint8_t *cbind_data, size_t cbind_len)
{
    memset(x, 0, sizeof(*x));
    x->secret = *secret;
    x->doomed = doomed;
    if (cbind_data && cbind_len > 0 && cbind_len <= SCRAM_CBIND_MAX) {
        x->offered_plus = true;
        x->cbind_len = cbind_len;
        memcpy(x->cbind_data, cbind_data, cbind_len);
    }
}

void scram_server_free(struct scram_server *x)
{
    free(x->client_first_bare);
    free(x->server_first);
    OPENSSL_cleanse(x, sizeof(*x));
}

/* RFC 5802: printable = %x21-2B / %x2D-7E (no comma). */
static bool nonce_ok(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x21 || ch > 0x7e || ch == ',')
            return false;
    }
    return true;
}

/* This side's half of the nonce: the one given (tests use RFC vectors'), checked, or a fresh
 * random one. SCRAM_MALFORMED for a given nonce that is not printable or does not fit. */
static enum scram_result our_nonce(const char *given, char *out, size_t outlen)
{
    if (given) {
        if (strlen(given) >= outlen || !nonce_ok(given, strlen(given)))
            return SCRAM_MALFORMED;
        strcpy(out, given);
        return SCRAM_OK;
    }
    uint8_t raw[RAW_NONCE_LEN];
    if (RAND_bytes(raw, sizeof(raw)) != 1)
        return SCRAM_NOMEM;
    scram_b64_encode(raw, sizeof(raw), out, outlen);
    return SCRAM_OK;
}

/* A message is text without NULs (Postgres reads it as a C string): *copy gets it as one, for
 * the caller to free. SCRAM_MALFORMED, with why, for an empty, overlong or NUL-holding one. */
static enum scram_result copy_message(const char *msg, size_t len, char **copy, const char **why)
{
    *copy = NULL;
    if (len == 0 || len > MAX_MESSAGE || memchr(msg, '\0', len)) {
        *why = "malformed SCRAM message (empty, too long or containing NUL)";
        return SCRAM_MALFORMED;
    }
    *copy = malloc(len + 1);
    if (!*copy)
        return SCRAM_NOMEM;
    memcpy(*copy, msg, len);
    (*copy)[len] = '\0';
    return SCRAM_OK;
}

enum scram_result scram_server_first(struct scram_server *x, bool mechanism_plus, const char *msg,
                                     size_t len, const char *server_nonce, char **out,
                                     const char **why)
{
    *out = NULL;
    *why = NULL;
    if (x->server_first) {
        *why = "client-first-message sent twice";
        return SCRAM_MALFORMED;
    }
    char *m;
    enum scram_result rc = copy_message(msg, len, &m, why);
    if (rc != SCRAM_OK)
        return rc;
    rc = SCRAM_MALFORMED;
    char *p = m;
    x->plus = mechanism_plus;
    if (mechanism_plus && !x->offered_plus) {
        *why = "SCRAM-SHA-256-PLUS was not offered on this connection";
        rc = SCRAM_CBIND_ERROR;
        goto out;
    }
    /* gs2-cbind-flag */
    switch (*p) {
    case 'n':
    case 'y':
        if (mechanism_plus) {
            *why = "The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not "
                   "include channel binding data.";
            rc = SCRAM_CBIND_ERROR;
            goto out;
        }
        if (*p == 'y' && x->offered_plus) {
            /* The client could bind but believes sluice cannot: a downgrade by someone in the
             * middle who removed -PLUS from the offer. */
            *why = "SCRAM channel binding negotiation error: the client supports channel binding "
                   "but thinks the server does not; this server does support it.";
            rc = SCRAM_CBIND_ERROR;
            goto out;
        }
        x->cbind_flag = *p++;
        break;
    case 'p':
        if (!mechanism_plus) {
            *why = "The client selected SCRAM-SHA-256 without channel binding, but the SCRAM "
                   "message includes channel binding data.";
            rc = SCRAM_CBIND_ERROR;
            goto out;
        }
        if (strncmp(p, "p=tls-server-end-point,", 23) != 0) {
            *why = "unsupported SCRAM channel-binding type (only tls-server-end-point)";
            rc = SCRAM_CBIND_ERROR;
            goto out;
        }
        x->cbind_flag = 'p';
        p += 22;
        break;
    default:
        *why = "unexpected channel-binding flag in client-first-message";
        goto out;
    }
    if (*p++ != ',') {
        *why = "comma expected after the channel-binding flag";
        goto out;
    }
    if (*p == 'a') {
        *why = "client uses authorization identity, but it is not supported"; /* Postgres's */
        rc = SCRAM_UNSUPPORTED;
        goto out;
    }
    if (*p++ != ',') {
        *why = "comma expected after the authorization identity";
        goto out;
    }
    char *bare = p;
    if (*p == 'm') {
        *why = "client requires an unsupported SCRAM extension";
        rc = SCRAM_UNSUPPORTED;
        goto out;
    }
    /* n=<user name>: ignored, as by Postgres: the startup packet's user is the one that counts
     * (libpq sends it empty). */
    if (strncmp(p, "n=", 2) != 0) {
        *why = "attribute \"n\" expected in client-first-message";
        goto out;
    }
    p = strchr(p, ',');
    if (!p || strncmp(p, ",r=", 3) != 0) {
        *why = "attribute \"r\" expected in client-first-message";
        goto out;
    }
    char *cnonce = p + 3;
    size_t cnonce_len = strcspn(cnonce, ",");
    if (!nonce_ok(cnonce, cnonce_len)) {
        *why = "invalid SCRAM client nonce";
        goto out;
    }
    /* Extensions after the nonce are allowed by the grammar and ignored, but each must be one
     * (a letter, '=', a value), as Postgres's read_any_attr requires: a comma inside the nonce
     * is a malformed message, not a shorter nonce. A comma that ends the message is taken, as
     * Postgres's read_attr_value takes it with the value before it ("r=abc," logs in there). */
    for (const char *ext = cnonce + cnonce_len; *ext && ext[1];
         ext += 1 + strcspn(ext + 1, ",")) {
        unsigned char attr = (unsigned char)ext[1];
        if (!((attr >= 'a' && attr <= 'z') || (attr >= 'A' && attr <= 'Z')) || ext[2] != '=') {
            *why = "malformed SCRAM message (an extension after the nonce is not attr=value)";
            goto out;
        }
    }

    char snonce[64];
    enum scram_result nrc = our_nonce(server_nonce, snonce, sizeof(snonce));
    if (nrc != SCRAM_OK) {
        if (nrc == SCRAM_MALFORMED)
            *why = "bad server nonce";
        rc = nrc;
        goto out;
    }
    char salt[SCRAM_MAX_SALT_LEN * 2];
    scram_b64_encode(x->secret.salt, x->secret.salt_len, salt, sizeof(salt));
    size_t cap = 3 + cnonce_len + strlen(snonce) + 3 + strlen(salt) + 3 + 12 + 1;
    char *sf = malloc(cap);
    x->client_first_bare = strdup(bare);
    if (!sf || !x->client_first_bare) {
        free(sf);
        rc = SCRAM_NOMEM;
        goto out;
    }
    snprintf(sf, cap, "r=%.*s%s,s=%s,i=%d", (int)cnonce_len, cnonce, snonce, salt,
             x->secret.iterations);
    x->server_first = sf;
    x->nonce_len = cnonce_len + strlen(snonce);
    *out = strdup(sf);
    rc = *out ? SCRAM_OK : SCRAM_NOMEM;
out:
    free(m);
    return rc;
}

/* AuthMessage = client-first-message-bare + "," + server-first-message + "," +
 * client-final-message-without-proof (RFC 5802 section 3). malloc'd, *len set; NULL if out of
 * memory. Both sides of an exchange sign it. */
static char *auth_message_build(const char *client_first_bare, const char *server_first,
                                const char *final_without_proof, size_t final_len, size_t *len)
{
    size_t bare_len = strlen(client_first_bare), sf_len = strlen(server_first);
    *len = bare_len + 1 + sf_len + 1 + final_len;
    char *am = malloc(*len);
    if (!am)
        return NULL;
    memcpy(am, client_first_bare, bare_len);
    am[bare_len] = ',';
    memcpy(am + bare_len + 1, server_first, sf_len);
    am[bare_len + 1 + sf_len] = ',';
    memcpy(am + bare_len + 2 + sf_len, final_without_proof, final_len);
    return am;
}

/* The channel-binding attribute the client must send: base64 of the gs2 header it sent first,
 * followed by the certificate hash when it bound. */
static bool cbind_matches(const struct scram_server *x, const char *c_attr, size_t len)
{
    uint8_t expect[64 + SCRAM_CBIND_MAX];
    size_t n;
    if (x->cbind_flag == 'p') {
        static const char hdr[] = "p=tls-server-end-point,,";
        n = sizeof(hdr) - 1;
        memcpy(expect, hdr, n);
        memcpy(expect + n, x->cbind_data, x->cbind_len);
        n += x->cbind_len;
    } else {
        expect[0] = (uint8_t)x->cbind_flag;
        expect[1] = ',';
        expect[2] = ',';
        n = 3;
    }
    uint8_t got[64 + SCRAM_CBIND_MAX];
    if (len > (sizeof(got) / 3 + 1) * 4)
        return false;
    int g = scram_b64_decode(c_attr, len, got, sizeof(got));
    return g >= 0 && (size_t)g == n && CRYPTO_memcmp(got, expect, n) == 0;
}

enum scram_result scram_server_final(struct scram_server *x, const char *msg, size_t len,
                                     char **out, const char **why)
{
    *out = NULL;
    *why = NULL;
    if (!x->server_first) {
        *why = "client-final-message before client-first-message";
        return SCRAM_MALFORMED;
    }
    char *m;
    enum scram_result rc = copy_message(msg, len, &m, why);
    if (rc != SCRAM_OK)
        return rc;
    rc = SCRAM_MALFORMED;
    uint8_t proof[SCRAM_KEY_LEN], sig[SCRAM_KEY_LEN], client_key[SCRAM_KEY_LEN],
        check[SCRAM_KEY_LEN];
    char *auth_message = NULL;

    /* c=<channel binding>,r=<nonce>[,extensions],p=<proof> */
    if (strncmp(m, "c=", 2) != 0) {
        *why = "attribute \"c\" expected in client-final-message";
        goto out;
    }
    char *c_attr = m + 2;
    size_t c_len = strcspn(c_attr, ",");
    if (!cbind_matches(x, c_attr, c_len)) {
        *why = x->cbind_flag == 'p' ? "SCRAM channel binding check failed"
                                    : "unexpected SCRAM channel-binding attribute in "
                                      "client-final-message";
        rc = SCRAM_CBIND_ERROR;
        goto out;
    }
    char *p = c_attr + c_len;
    if (strncmp(p, ",r=", 3) != 0) {
        *why = "attribute \"r\" expected in client-final-message";
        goto out;
    }
    char *nonce = p + 3;
    size_t nonce_len = strcspn(nonce, ",");
    if (nonce_len != x->nonce_len || memcmp(nonce, x->server_first + 2, nonce_len) != 0) {
        *why = "SCRAM nonce mismatch";
        goto out;
    }
    /* The proof is the last attribute. */
    char *proof_attr = strstr(nonce + nonce_len, ",p=");
    if (!proof_attr) {
        *why = "attribute \"p\" expected in client-final-message";
        goto out;
    }
    while (strstr(proof_attr + 3, ",p="))
        proof_attr = strstr(proof_attr + 3, ",p=");
    const char *pv = proof_attr + 3;
    if (strchr(pv, ',') ||
        scram_b64_decode(pv, strlen(pv), proof, sizeof(proof)) != SCRAM_KEY_LEN) {
        *why = "malformed SCRAM proof in client-final-message";
        goto out;
    }
    size_t without_proof = (size_t)(proof_attr - m);

    size_t am_len;
    auth_message =
        auth_message_build(x->client_first_bare, x->server_first, m, without_proof, &am_len);
    if (!auth_message) {
        rc = SCRAM_NOMEM;
        goto out;
    }

    if (exchange_hmac(x->secret.stored_key, SCRAM_KEY_LEN, auth_message, am_len, sig) != 0) {
        rc = SCRAM_NOMEM;
        goto out;
    }
    for (int i = 0; i < SCRAM_KEY_LEN; i++)
        client_key[i] = proof[i] ^ sig[i];
    if (exchange_sha256(client_key, SCRAM_KEY_LEN, check) != 0) {
        rc = SCRAM_NOMEM;
        goto out;
    }
    bool proof_ok = CRYPTO_memcmp(check, x->secret.stored_key, SCRAM_KEY_LEN) == 0;
    if (!proof_ok || x->doomed) {
        *why = "wrong password";
        rc = SCRAM_FAILED;
        goto out;
    }
    if (exchange_hmac(x->secret.server_key, SCRAM_KEY_LEN, auth_message, am_len, sig) != 0) {
        rc = SCRAM_NOMEM;
        goto out;
    }
    char v[64];
    scram_b64_encode(sig, SCRAM_KEY_LEN, v, sizeof(v));
    size_t cap = strlen(v) + 3;
    *out = malloc(cap);
    if (!*out) {
        rc = SCRAM_NOMEM;
        goto out;
    }
    snprintf(*out, cap, "v=%s", v);
    memcpy(x->client_key, client_key, SCRAM_KEY_LEN);
    x->client_key_known = true;
    rc = SCRAM_OK;
out:
    OPENSSL_cleanse(client_key, sizeof(client_key));
    OPENSSL_cleanse(proof, sizeof(proof));
    free(auth_message);
    free(m);
    return rc;
}

/* ---- the client side ---- */

void scram_client_init(struct scram_client *x, const struct scram_secret *secret,
                       const uint8_t client_key[SCRAM_KEY_LEN])
{
    memset(x, 0, sizeof(*x));
    x->secret = *secret;
    memcpy(x->client_key, client_key, SCRAM_KEY_LEN);
}

void scram_client_free(struct scram_client *x)
{
    free(x->client_first_bare);
    OPENSSL_cleanse(x, sizeof(*x));
}

enum scram_result scram_client_first(struct scram_client *x, const char *client_nonce, char **out)
{
    *out = NULL;
    enum scram_result rc = our_nonce(client_nonce, x->nonce, sizeof(x->nonce));
    if (rc != SCRAM_OK)
        return rc;
    /* Postgres ignores the SCRAM user name (the startup packet's counts): send it empty. */
    size_t cap = strlen(x->nonce) + 16;
    free(x->client_first_bare);
    x->client_first_bare = malloc(cap);
    *out = malloc(cap);
    if (!x->client_first_bare || !*out) {
        free(*out);
        *out = NULL;
        return SCRAM_NOMEM;
    }
    snprintf(x->client_first_bare, cap, "n=,r=%s", x->nonce);
    snprintf(*out, cap, "n,,%s", x->client_first_bare);
    return SCRAM_OK;
}

enum scram_result scram_client_final(struct scram_client *x, const char *msg, size_t len,
                                     char **out, const char **why)
{
    *out = NULL;
    *why = NULL;
    if (!x->client_first_bare || x->sent_final) {
        *why = "server-first-message out of order";
        return SCRAM_MALFORMED;
    }
    char *m;
    enum scram_result rc = copy_message(msg, len, &m, why);
    if (rc != SCRAM_OK) {
        *why = "malformed server-first-message";
        return rc;
    }
    rc = SCRAM_MALFORMED;
    char *auth_message = NULL, *final = NULL;
    uint8_t salt[SCRAM_MAX_SALT_LEN], sig[SCRAM_KEY_LEN], proof[SCRAM_KEY_LEN];

    /* r=<client nonce + server nonce>,s=<salt>,i=<iterations> */
    size_t cn = strlen(x->nonce);
    if (strncmp(m, "r=", 2) != 0 || strncmp(m + 2, x->nonce, cn) != 0) {
        *why = "the server's nonce does not start with ours";
        goto out;
    }
    char *nonce = m + 2;
    size_t nonce_len = strcspn(nonce, ",");
    if (nonce_len <= cn || !nonce_ok(nonce, nonce_len) || strncmp(nonce + nonce_len, ",s=", 3)) {
        *why = "malformed server-first-message";
        goto out;
    }
    char *salt_text = nonce + nonce_len + 3;
    size_t salt_text_len = strcspn(salt_text, ",");
    if (salt_text_len > (SCRAM_MAX_SALT_LEN / 3 + 1) * 4 ||
        strncmp(salt_text + salt_text_len, ",i=", 3) != 0) {
        *why = "malformed salt in server-first-message";
        goto out;
    }
    int salt_len = scram_b64_decode(salt_text, salt_text_len, salt, sizeof(salt));
    char *end = NULL;
    long iterations = strtol(salt_text + salt_text_len + 3, &end, 10);
    if (salt_len <= 0 || !end || (*end != '\0' && *end != ',') || iterations < 1) {
        *why = "malformed salt or iteration count in server-first-message";
        goto out;
    }
    if ((size_t)salt_len != x->secret.salt_len ||
        CRYPTO_memcmp(salt, x->secret.salt, (size_t)salt_len) != 0 ||
        iterations != x->secret.iterations) {
        *why = "the server's SCRAM secret for this user is not the one sluice holds (different "
               "salt or iteration count): the password was changed; update auth_file (a user "
               "of auth_query's logs in again with the new password)";
        rc = SCRAM_FAILED;
        goto out;
    }
    /* client-final-message-without-proof: c=biws (base64 of "n,,"),r=<nonce> */
    size_t fcap = nonce_len + 16;
    final = malloc(fcap + 64);
    if (!final) {
        rc = SCRAM_NOMEM;
        goto out;
    }
    int flen = snprintf(final, fcap, "c=biws,r=%.*s", (int)nonce_len, nonce);
    size_t am_len;
    auth_message = auth_message_build(x->client_first_bare, m, final, (size_t)flen, &am_len);
    uint8_t stored_key[SCRAM_KEY_LEN];
    if (!auth_message || exchange_sha256(x->client_key, SCRAM_KEY_LEN, stored_key) != 0 ||
        exchange_hmac(stored_key, SCRAM_KEY_LEN, auth_message, am_len, sig) != 0 ||
        exchange_hmac(x->secret.server_key, SCRAM_KEY_LEN, auth_message, am_len,
                    x->server_signature) != 0) {
        rc = SCRAM_NOMEM;
        goto out;
    }
    for (int i = 0; i < SCRAM_KEY_LEN; i++)
        proof[i] = x->client_key[i] ^ sig[i];
    char p64[64];
    scram_b64_encode(proof, SCRAM_KEY_LEN, p64, sizeof(p64));
    snprintf(final + flen, fcap + 64 - (size_t)flen, ",p=%s", p64);
    *out = final;
    final = NULL;
    x->sent_final = true;
    rc = SCRAM_OK;
out:
    OPENSSL_cleanse(sig, sizeof(sig));
    OPENSSL_cleanse(proof, sizeof(proof));
    free(final);
    free(auth_message);
    free(m);
    return rc;
}

enum scram_result scram_client_verify(struct scram_client *x, const char *msg, size_t len,
                                      const char **why)
{
    *why = NULL;
    if (!x->sent_final) {
        *why = "server-final-message out of order";
        return SCRAM_MALFORMED;
    }
    uint8_t v[SCRAM_KEY_LEN + 3];
    if (len > 2 && strncmp(msg, "e=", 2) == 0) {
        *why = "the server rejected the SCRAM proof";
        return SCRAM_FAILED;
    }
    if (len < 3 || strncmp(msg, "v=", 2) != 0 || len - 2 > (sizeof(v) / 3 + 1) * 4 ||
        scram_b64_decode(msg + 2, len - 2, v, sizeof(v)) != SCRAM_KEY_LEN) {
        *why = "malformed server-final-message";
        return SCRAM_MALFORMED;
    }
    if (CRYPTO_memcmp(v, x->server_signature, SCRAM_KEY_LEN) != 0) {
        *why = "the server's SCRAM signature is wrong: it does not know this user's secret";
        return SCRAM_FAILED;
    }
    return SCRAM_OK;
}
