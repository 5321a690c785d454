/* auth: client authentication (see auth.h).
 * Protocol section 55.3: the server sends AuthenticationCleartextPassword (3) or
 * AuthenticationMD5Password (5, with a 4-byte salt); the client answers with PasswordMessage 'p'.
 * md5 answer = "md5" || hex(md5(hex(md5(password || user)) || salt)). */
#include "auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include "client.h"
#include "config.h"
#include "log.h"
#include "sluice.h"

#define AUTH_REQ_OK 0
#define AUTH_REQ_PASSWORD 3
#define AUTH_REQ_MD5 5

void auth_md5_hex(const void *a, size_t alen, const void *b, size_t blen, char out[36])
{
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_md5(), NULL) != 1 || EVP_DigestUpdate(ctx, a, alen) != 1 ||
        EVP_DigestUpdate(ctx, b, blen) != 1 || EVP_DigestFinal_ex(ctx, digest, &dlen) != 1 ||
        dlen != 16) {
        /* Never equal to any answer a client can send. */
        memset(out, 0, 36);
        EVP_MD_CTX_free(ctx);
        return;
    }
    EVP_MD_CTX_free(ctx);
    static const char hex[] = "0123456789abcdef";
    memcpy(out, "md5", 3);
    for (int i = 0; i < 16; i++) {
        out[3 + 2 * i] = hex[digest[i] >> 4];
        out[4 + 2 * i] = hex[digest[i] & 15];
    }
    out[35] = '\0';
}

int auth_secret_equal(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la != lb)
        return 0;
    return CRYPTO_memcmp(a, b, la) == 0;
}

static bool is_md5_secret(const char *s)
{
    return strncmp(s, "md5", 3) == 0 && strlen(s) == 35;
}

static bool is_scram_secret(const char *s)
{
    return strncmp(s, "SCRAM-SHA-256$", 14) == 0;
}

/* A stand-in secret for unknown users, so their failure costs and looks like a wrong password. */
static const char dummy_secret[] = "md5" "00000000000000000000000000000000";

void auth_start(struct client *c)
{
    const struct config *cfg = c->app->cfg;
    c->auth_method = (uint8_t)cfg->auth_type;
    switch (cfg->auth_type) {
    case AUTH_TRUST:
    case AUTH_ANY:
        client_login_ok(c);
        return;
    case AUTH_PLAIN:
        codec_put_auth_request(&c->out, AUTH_REQ_PASSWORD, NULL, 0);
        client_send(c);
        return;
    case AUTH_MD5:
    case AUTH_SCRAM:
    default:
        /* SCRAM towards clients is not implemented yet: md5 is offered instead. */
        if (getrandom(c->md5_salt, sizeof(c->md5_salt), 0) != sizeof(c->md5_salt)) {
            client_fail(c, FAIL_OUT_OF_MEMORY, " (no randomness for the salt)");
            return;
        }
        c->auth_method = AUTH_MD5;
        codec_put_auth_request(&c->out, AUTH_REQ_MD5, c->md5_salt, sizeof(c->md5_salt));
        client_send(c);
        return;
    }
}

static bool check_plain(const char *secret, const char *user, const char *password)
{
    if (is_md5_secret(secret)) {
        char hashed[36];
        auth_md5_hex(password, strlen(password), user, strlen(user), hashed);
        return auth_secret_equal(hashed, secret);
    }
    if (is_scram_secret(secret))
        return false;
    return auth_secret_equal(password, secret);
}

static bool check_md5(const char *secret, const char *user, const uint8_t salt[4],
                      const char *answer)
{
    char stored[36];
    if (is_md5_secret(secret)) {
        memcpy(stored, secret, 36);
    } else if (is_scram_secret(secret)) {
        return false;
    } else {
        auth_md5_hex(secret, strlen(secret), user, strlen(user), stored);
    }
    char expected[36];
    auth_md5_hex(stored + 3, 32, salt, 4, expected);
    return auth_secret_equal(expected, answer);
}

void auth_on_message(struct client *c, uint8_t type, const uint8_t *body, uint32_t len)
{
    if (type != 'p') {
        client_fail(c, FAIL_AUTH_METHOD, "expected a password message");
        return;
    }
    struct msg_reader r;
    codec_reader_init(&r, body, len);
    const char *answer = codec_read_cstring(&r);
    if (!answer || codec_reader_left(&r) != 0) {
        client_fail(c, FAIL_AUTH_METHOD, "malformed password message");
        return;
    }
    const struct auth_entry *a = config_find_auth(c->app->cfg, c->user);
    const char *secret = a ? a->secret : dummy_secret;
    bool ok;
    if (c->auth_method == AUTH_PLAIN)
        ok = check_plain(secret, c->user, answer);
    else
        ok = check_md5(secret, c->user, c->md5_salt, answer);
    if (!ok || !a) {
        if (a && is_scram_secret(a->secret))
            log_client(LOG_WARNING, c, "user has only a SCRAM secret; md5 and plain logins cannot "
                                       "be checked against it");
        client_fail(c, FAIL_AUTH_FAILED, c->user);
        return;
    }
    client_login_ok(c);
}
