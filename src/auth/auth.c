/* auth: client authentication (see auth.h).
 *
 * Protocol section 55.3. The server asks with an Authentication message and the client answers
 * with a 'p' message whose meaning depends on the question:
 *   AuthenticationCleartextPassword (3)  -> PasswordMessage: the password
 *   AuthenticationMD5Password (5) + salt -> PasswordMessage: "md5" || hex(md5(hex(md5(password ||
 *                                           user)) || salt))
 *   AuthenticationSASL (10) + mechanisms -> SASLInitialResponse: mechanism, int32 length, data
 *   AuthenticationSASLContinue (11)      -> SASLResponse: data
 *   AuthenticationSASLFinal (12), then AuthenticationOk (the core sends it: client_login_ok)
 * Section 55.3.1: over TLS the server offers SCRAM-SHA-256-PLUS before SCRAM-SHA-256, binding
 * the exchange to its certificate (tls-server-end-point), so a man in the middle holding another
 * certificate cannot relay it.
 *
 * Like Postgres: md5 with a user whose only secret is SCRAM uses SCRAM; an unknown user, or a
 * secret the method cannot use, goes through the whole exchange with a fake secret and fails at
 * the end with the same 28P01 as a wrong password. */
#include "auth.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "config.h"
#include "hba.h"
#include "list.h"
#include "log.h"
#include "passthrough.h"
#include "scram.h"
#include "secret.h"
#include "sluice.h"
#include "snapshot.h"
#include "tls.h"

#define AUTH_REQ_OK 0
#define AUTH_REQ_PASSWORD 3
#define AUTH_REQ_MD5 5
#define AUTH_REQ_SASL 10
#define AUTH_REQ_SASL_CONTINUE 11
#define AUTH_REQ_SASL_FINAL 12

/* Process-wide, shared by every worker: the hba rules and ident maps in force, each a snapshot
 * (snapshot.h) that a reload replaces whole while logins on other threads may still read the
 * previous one; and the key that makes unknown users' fake SCRAM salts stable per name but
 * unpredictable (written once by auth_init, before any worker starts; read-only after). */
static struct snapshot_slot hba_rules = SNAPSHOT_SLOT_INIT;  /* struct hba */
static struct snapshot_slot ident_maps = SNAPSHOT_SLOT_INIT; /* struct hba_ident, for map= */
static uint8_t fake_key[32];

enum auth_step {
    STEP_LOOKUP,        /* waiting for the secret (auth_query, derivation) */
    STEP_PASSWORD,      /* sent AuthenticationCleartextPassword */
    STEP_MD5,           /* sent AuthenticationMD5Password */
    STEP_SASL_INITIAL,  /* sent AuthenticationSASL */
    STEP_SASL_RESPONSE, /* sent AuthenticationSASLContinue */
};

struct auth_state {
    struct auth_login login;
    enum auth_step step;
    enum auth_type method; /* the method in use: never AUTH_HBA */
    struct secret_waiter waiter;
    enum secret_kind kind;
    char *text;                /* PLAIN or MD5 secret (copy) */
    struct scram_secret scram; /* SCRAM, or PLAIN's derived one */
    bool have_scram;
    const char *note; /* why this login cannot succeed whatever the client sends (log only) */
    uint8_t md5_salt[4];
    struct scram_server sx;
    /* While auth_start asks for the secret: its answer. A lookup can fail before secret_lookup
     * returns (an auth_query connection that cannot even start), and that answer belongs to
     * auth_start's caller, who does not hold the state yet. */
    struct auth_result *starting;
};

/* ---- helpers ---- */

void auth_md5_hex(const void *a, size_t alen, const void *b, size_t blen, char out[36])
{
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_md5(), NULL) != 1 ||
        EVP_DigestUpdate(ctx, a, alen) != 1 || EVP_DigestUpdate(ctx, b, blen) != 1 ||
        EVP_DigestFinal_ex(ctx, digest, &dlen) != 1 || dlen != 16) {
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

/* A stand-in md5 secret for unknown users, so their failure costs and looks like a wrong
 * password. */
static const char dummy_md5[] = "md5"
                                "00000000000000000000000000000000";

static void host_text(const struct auth_login *l, char *out, size_t n)
{
    int port;
    if (!peer_addr_ip(l->addr, out, n, &port))
        snprintf(out, n, "[local]");
}

/* A log line about the login, through the core (which knows who it is). */
__attribute__((format(printf, 3, 4))) static void say(const struct auth_login *l,
                                                      enum log_level level, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    va_list ap;
    va_start(ap, fmt);
    l->hooks->log(l->owner, level, fmt, ap);
    va_end(ap);
}

static void state_free(struct auth_state *st)
{
    scram_server_free(&st->sx);
    if (st->text) {
        OPENSSL_cleanse(st->text, strlen(st->text));
        free(st->text);
    }
    OPENSSL_cleanse(st, sizeof(*st));
    free(st);
}

void auth_end(struct auth_state *st)
{
    if (!st)
        return;
    secret_cancel(&st->waiter);
    state_free(st);
}

/* ---- outcomes (the core ends the state: auth_end) ---- */

static void proven(struct auth_result *r)
{
    r->verdict = AUTH_PROVEN;
}

static void goes_on(struct auth_result *r)
{
    r->verdict = AUTH_GOES_ON;
}

static void refused(struct auth_result *r, enum failure f, const char *detail)
{
    r->verdict = AUTH_REFUSED;
    r->failure = f;
    r->detail = detail;
}

/* The client proved itself against a secret sluice holds without the password: keep what lets
 * sluice log in upstream as this user too (passthrough.h). Before login_ok, which may connect
 * a first server at once. */
static void remember_for_upstream(struct auth_state *st)
{
    struct passthrough_keys k;
    memset(&k, 0, sizeof(k));
    if (st->kind == SECRET_SCRAM && st->sx.client_key_known) {
        k.kind = PASSTHROUGH_SCRAM;
        k.secret = st->scram;
        memcpy(k.client_key, st->sx.client_key, SCRAM_KEY_LEN);
    } else if (st->kind == SECRET_MD5 && st->text && strlen(st->text) == 35) {
        k.kind = PASSTHROUGH_MD5;
        memcpy(k.md5, st->text, 36);
    } else {
        return;
    }
    if (passthrough_remember(st->login.user, &k) < 0)
        say(&st->login, LOG_WARNING, "out of memory keeping the keys for upstream logins");
    OPENSSL_cleanse(&k, sizeof(k));
}

/* Wrong password, unknown user, unusable secret: all look the same to the client. */
static void login_failed(struct auth_state *st, const char *why, struct auth_result *r)
{
    say(&st->login, LOG_WARNING, "login failed (%s): %s", auth_type_name(st->method), why);
    refused(r, FAIL_AUTH_FAILED, st->login.user);
}

/* The client broke the exchange's rules (08P01). */
static void exchange_broken(struct auth_result *r, const char *why)
{
    refused(r, FAIL_AUTH_METHOD, why);
}

/* ---- cleartext password ---- */

static void check_password(struct auth_state *st, const char *password, struct auth_result *r)
{
    const char *user = st->login.user;
    bool ok = false;
    char hashed[36];
    switch (st->kind) {
    case SECRET_PLAIN:
        ok = auth_secret_equal(password, st->text);
        break;
    case SECRET_MD5:
        auth_md5_hex(password, strlen(password), user, strlen(user), hashed);
        ok = auth_secret_equal(hashed, st->text);
        break;
    case SECRET_SCRAM:
        /* Derives with the secret's own salt: one PBKDF2 per login, on the loop. Only this
         * method (cleartext over the wire against a SCRAM secret) pays it. */
        ok = scram_verify_password(&st->scram, password);
        break;
    case SECRET_NONE:
        auth_md5_hex(password, strlen(password), user, strlen(user), hashed);
        (void)auth_secret_equal(hashed, dummy_md5);
        break;
    }
    if (!ok) {
        login_failed(st, st->note ? st->note : "wrong password", r);
        return;
    }
    proven(r);
}

/* ---- md5 ---- */

static void check_md5(struct auth_state *st, const char *answer, struct auth_result *r)
{
    const char *user = st->login.user;
    char stored[36];
    if (st->kind == SECRET_MD5)
        memcpy(stored, st->text, 36);
    else if (st->kind == SECRET_PLAIN)
        auth_md5_hex(st->text, strlen(st->text), user, strlen(user), stored);
    else
        memcpy(stored, dummy_md5, 36);
    char expected[36];
    auth_md5_hex(stored + 3, 32, st->md5_salt, 4, expected);
    bool ok = auth_secret_equal(expected, answer);
    OPENSSL_cleanse(stored, sizeof(stored));
    if (!ok || (st->kind != SECRET_MD5 && st->kind != SECRET_PLAIN)) {
        login_failed(st, st->note ? st->note : "wrong password", r);
        return;
    }
    remember_for_upstream(st);
    proven(r);
}

/* ---- SCRAM-SHA-256 ---- */

static void start_scram(struct auth_state *st, struct auth_result *r)
{
    struct auth_login *l = &st->login;
    struct scram_secret secret;
    bool doomed = !st->have_scram;
    if (doomed) {
        scram_fake_secret(fake_key, l->user, (int)l->worker->cfg->scram_iterations, &secret);
        if (!st->note)
            st->note = st->kind == SECRET_MD5 ? "the user has an md5 secret, which "
                                                "scram-sha-256 cannot use; store the password "
                                                "or a SCRAM secret"
                                              : "no usable secret";
    } else {
        secret = st->scram;
    }
    uint8_t cb[EVP_MAX_MD_SIZE];
    size_t cblen = l->ssl ? tls_server_end_point(l->ssl, cb, sizeof(cb)) : 0;
    scram_server_init(&st->sx, &secret, doomed, cb, cblen);
    OPENSSL_cleanse(&secret, sizeof(secret));
    static const char plus_and_plain[] = SCRAM_MECHANISM_PLUS "\0" SCRAM_MECHANISM "\0";
    static const char plain_only[] = SCRAM_MECHANISM "\0";
    if (st->sx.offered_plus)
        codec_put_auth_request(l->out, AUTH_REQ_SASL, plus_and_plain, sizeof(plus_and_plain));
    else
        codec_put_auth_request(l->out, AUTH_REQ_SASL, plain_only, sizeof(plain_only));
    st->step = STEP_SASL_INITIAL;
    goes_on(r);
}

static void scram_outcome(struct auth_state *st, enum scram_result rc, const char *why,
                          struct auth_result *r)
{
    switch (rc) {
    case SCRAM_OK:
        return;
    case SCRAM_FAILED:
        login_failed(st, st->note ? st->note : why, r);
        return;
    case SCRAM_NOMEM:
        refused(r, FAIL_OUT_OF_MEMORY, "");
        return;
    case SCRAM_UNSUPPORTED:
        say(&st->login, LOG_WARNING, "SCRAM exchange refused: %s", why);
        refused(r, FAIL_SCRAM_UNSUPPORTED, why);
        return;
    case SCRAM_MALFORMED:
    case SCRAM_CBIND_ERROR:
        say(&st->login, LOG_WARNING, "SCRAM exchange refused: %s", why);
        exchange_broken(r, why);
        return;
    }
}

static void sasl_initial(struct auth_state *st, const uint8_t *body, uint32_t len,
                         struct auth_result *res)
{
    struct msg_reader r;
    codec_reader_init(&r, body, len);
    const char *mech = codec_read_cstring(&r);
    int32_t n = codec_read_i32(&r);
    const uint8_t *data = n > 0 ? codec_read_bytes(&r, (size_t)n) : NULL;
    if (!mech || r.bad || codec_reader_left(&r) != 0) {
        exchange_broken(res, "malformed SASLInitialResponse message");
        return;
    }
    bool plus = strcmp(mech, SCRAM_MECHANISM_PLUS) == 0;
    if ((!plus && strcmp(mech, SCRAM_MECHANISM) != 0) || (plus && !st->sx.offered_plus)) {
        exchange_broken(res, "client selected an invalid SASL authentication mechanism");
        return;
    }
    if (n <= 0) {
        exchange_broken(res, "SASLInitialResponse without the client-first-message");
        return;
    }
    char *out = NULL;
    const char *why = NULL;
    enum scram_result rc =
        scram_server_first(&st->sx, plus, (const char *)data, (size_t)n, NULL, &out, &why);
    if (rc != SCRAM_OK) {
        scram_outcome(st, rc, why, res);
        return;
    }
    codec_put_auth_request(st->login.out, AUTH_REQ_SASL_CONTINUE, out, strlen(out));
    free(out);
    st->step = STEP_SASL_RESPONSE;
    goes_on(res);
}

static void sasl_response(struct auth_state *st, const uint8_t *body, uint32_t len,
                          struct auth_result *r)
{
    char *out = NULL;
    const char *why = NULL;
    enum scram_result rc = scram_server_final(&st->sx, (const char *)body, len, &out, &why);
    if (rc != SCRAM_OK) {
        scram_outcome(st, rc, why, r);
        return;
    }
    codec_put_auth_request(st->login.out, AUTH_REQ_SASL_FINAL, out, strlen(out));
    free(out);
    say(&st->login, LOG_DEBUG, "SCRAM-SHA-256%s login", st->sx.plus ? "-PLUS" : "");
    remember_for_upstream(st);
    proven(r);
}

/* ---- the secret arrives ---- */

static void lookup_failed(const struct auth_login *l, const char *why, struct auth_result *r)
{
    say(l, LOG_WARNING, "cannot check the password: %s", why ? why : "lookup failed");
    refused(r, FAIL_SERVER_LOGIN,
            "cannot check the password now: the password lookup (auth_query) failed; see "
            "sluice's log");
}

/* trust: the secret itself does not matter, only that the user is listed (PgBouncer). */
static void trust_outcome(struct auth_state *st, const struct user_secret *s,
                          struct auth_result *r)
{
    if (s->found) {
        proven(r);
        return;
    }
    say(&st->login, LOG_WARNING, "login failed (trust): %s", s->note ? s->note : "unknown user");
    refused(r, FAIL_TRUST_UNKNOWN_USER, "");
}

static void got_secret(struct auth_state *st, const struct user_secret *s, struct auth_result *r)
{
    if (st->method == AUTH_TRUST) {
        trust_outcome(st, s, r);
        return;
    }
    st->kind = s->kind;
    if (s->text && !(st->text = strdup(s->text))) {
        refused(r, FAIL_OUT_OF_MEMORY, "");
        return;
    }
    st->scram = s->scram;
    st->have_scram = s->kind == SECRET_SCRAM || s->have_scram;
    if (s->kind == SECRET_NONE)
        st->note = s->note ? s->note : "unknown user";
    switch (st->method) {
    case AUTH_PLAIN:
        st->step = STEP_PASSWORD;
        codec_put_auth_request(st->login.out, AUTH_REQ_PASSWORD, NULL, 0);
        goes_on(r);
        return;
    case AUTH_MD5:
        if (st->kind == SECRET_SCRAM) {
            /* An md5 answer cannot be checked against a SCRAM secret; Postgres switches to
             * SCRAM for such a user, and so do we. */
            st->method = AUTH_SCRAM;
            start_scram(st, r);
            return;
        }
        if (RAND_bytes(st->md5_salt, sizeof(st->md5_salt)) != 1) {
            refused(r, FAIL_OUT_OF_MEMORY, " (no randomness for the salt)");
            return;
        }
        st->step = STEP_MD5;
        codec_put_auth_request(st->login.out, AUTH_REQ_MD5, st->md5_salt, sizeof(st->md5_salt));
        goes_on(r);
        return;
    default:
        start_scram(st, r);
        return;
    }
}

static void on_secret_ready(struct secret_waiter *w, const struct user_secret *s, const char *error)
{
    struct auth_state *st = container_of(w, struct auth_state, waiter);
    struct auth_result answer, *r = st->starting ? st->starting : &answer;
    if (!s)
        lookup_failed(&st->login, error, r);
    else
        got_secret(st, s, r);
    if (!st->starting)
        st->login.hooks->resumed(st->login.owner, r); /* last: the core may end st */
}

/* ---- certificates ---- */

/* map: the hba rule's map=NAME (auth_ident_file), or NULL: the CN must be the user name. */
static void check_cert(const struct auth_login *l, const char *map, struct auth_result *r)
{
    char cn[256], why[400];
    struct snapshot *maps = map ? snapshot_acquire(&ident_maps) : NULL;
    const struct hba_ident *ident = snapshot_value(maps);
    if (!l->ssl)
        snprintf(why, sizeof(why), "the connection does not use TLS");
    else if (!tls_peer_cn(l->ssl, cn, sizeof(cn)))
        snprintf(why, sizeof(why),
                 "no verified client certificate with a CN (client_tls_ca_file must be set for "
                 "sluice to ask for one)");
    else if (map && !hba_ident_match(ident, map, cn, l->user))
        snprintf(why, sizeof(why),
                 "the certificate's CN \"%.120s\" is not mapped to user \"%.100s\" by map "
                 "\"%.60s\" (auth_ident_file%s)",
                 cn, l->user, map, ident ? "" : " is not set");
    else if (!map && strcmp(cn, l->user) != 0)
        snprintf(why, sizeof(why), "the certificate's CN \"%.200s\" is not the user name", cn);
    else {
        snapshot_release(maps);
        proven(r);
        return;
    }
    snapshot_release(maps);
    say(l, LOG_WARNING, "login failed (cert): %s", why);
    refused(r, FAIL_CERT_AUTH, l->user);
}

/* ---- start ---- */

static enum auth_type method_of_rule(enum hba_method m)
{
    switch (m) {
    case HBA_TRUST:
        return AUTH_TRUST;
    case HBA_MD5:
        return AUTH_MD5;
    case HBA_SCRAM:
        return AUTH_SCRAM;
    case HBA_PASSWORD:
        return AUTH_PLAIN;
    case HBA_CERT:
        return AUTH_CERT;
    case HBA_REJECT:
        break;
    }
    return AUTH_HBA; /* not a method: the caller rejects */
}

/* Whether sluice has a list of users to check trust logins against: auth_file, or auth_query
 * (an auth_user). Without either, as with no pg_hba user column, any name is admitted. */
static bool has_user_list(const struct config *cfg)
{
    if (cfg->auth_file[0] || cfg->auth_user[0])
        return true;
    for (int i = 0; i < cfg->ndbs; i++) {
        if (cfg->dbs[i].auth_user && cfg->dbs[i].auth_user[0])
            return true;
    }
    return false;
}

/* The method for this login: auth_type, or the first matching rule of hba (auth_hba_file) and
 * its map= in cert_map (valid while hba is). AUTH_HBA when the login is refused (r says why). */
static enum auth_type choose_method(const struct auth_login *l, const struct hba *hba,
                                    const char **cert_map, struct auth_result *r)
{
    bool local = l->addr->sa.sa_family == AF_UNIX;
    bool tls = l->ssl != NULL;
    if (!tls && !local && tls_client_mode() >= SSLMODE_REQUIRE) {
        refused(r, FAIL_TLS_REQUIRED, sslmode_name(tls_client_mode()));
        return AUTH_HBA;
    }
    if (tls && tls_client_mode() >= SSLMODE_VERIFY_CA && !tls_peer_verified(l->ssl)) {
        refused(r, FAIL_CLIENT_CERT_REQUIRED, "");
        return AUTH_HBA;
    }
    enum auth_type method = l->worker->cfg->auth_type;
    if (method != AUTH_HBA)
        return method;
    struct hba_login hl = {.addr = l->addr, .tls = tls, .database = l->database, .user = l->user};
    const struct hba_rule *rule = hba_match(hba, &hl);
    if (!rule || rule->method == HBA_REJECT) {
        char host[INET6_ADDRSTRLEN + 8];
        host_text(l, host, sizeof(host));
        snprintf(r->text, sizeof(r->text), "%s: host=%s user=%.100s database=%.100s, TLS %s",
                 rule ? "hba rule rejects the connection" : "no hba rule matches", host, l->user,
                 l->database, tls ? "on" : "off");
        if (rule)
            say(l, LOG_WARNING, "auth_hba_file line %d rejects the login", rule->line);
        refused(r, FAIL_HBA_REJECT, r->text);
        return AUTH_HBA;
    }
    *cert_map = rule->map;
    say(l, LOG_DEBUG, "auth_hba_file line %d: %s", rule->line, hba_method_name(rule->method));
    return method_of_rule(rule->method);
}

/* auth_type = any: no name is proven, so a database entry must force the user its servers log
 * in as (PgBouncer's rule); otherwise a client would reach the server as any user it names, with
 * that user's auth_file password. A database with no entry is refused after this, as unknown;
 * the admin console keeps its own check (admin_users, stats_users). */
static void any_outcome(const struct auth_login *l, struct auth_result *r)
{
    const struct db_entry *db = l->admin ? NULL : config_find_db(l->worker->cfg, l->database);
    if (db && !config_db_forced_user(db)) {
        snprintf(r->text, sizeof(r->text), "%.100s", l->database);
        refused(r, FAIL_ANY_WITHOUT_FORCED_USER, r->text);
        return;
    }
    proven(r);
}

/* true when method decides the login without an exchange (r says how). */
static bool decided_at_once(const struct auth_login *l, enum auth_type method, const char *cert_map,
                            struct auth_result *r)
{
    switch (method) {
    case AUTH_HBA:
        return true; /* refused */
    case AUTH_TRUST:
        if (has_user_list(l->worker->cfg))
            return false; /* look the user up (trust_outcome) */
        proven(r);
        return true;
    case AUTH_ANY:
        any_outcome(l, r);
        return true;
    case AUTH_CERT:
        check_cert(l, cert_map, r);
        return true;
    default:
        return false;
    }
}

struct auth_state *auth_start(const struct auth_login *l, struct auth_result *r)
{
    /* The rules in force now, held until the method is chosen and a certificate checked (the
     * map name points into them): a reload on another thread may publish new ones meanwhile. */
    struct snapshot *rules =
        l->worker->cfg->auth_type == AUTH_HBA ? snapshot_acquire(&hba_rules) : NULL;
    const char *cert_map = NULL;
    enum auth_type method = choose_method(l, snapshot_value(rules), &cert_map, r);
    bool decided = decided_at_once(l, method, cert_map, r);
    snapshot_release(rules);
    if (decided)
        return NULL;
    struct auth_state *st = calloc(1, sizeof(*st));
    if (!st) {
        refused(r, FAIL_OUT_OF_MEMORY, "");
        return NULL;
    }
    st->login = *l;
    st->method = method;
    st->step = STEP_LOOKUP;
    st->waiter.req = (struct secret_request){.worker = l->worker,
                                             .user = l->user,
                                             .database = l->database,
                                             .admin = l->admin,
                                             .need_scram = method == AUTH_SCRAM,
                                             .addr = l->addr};
    st->waiter.done = on_secret_ready;
    struct user_secret s;
    goes_on(r); /* on_secret_ready continues; the client waits for our request meanwhile */
    st->starting = r;
    int rc = secret_lookup(&st->waiter, &s);
    st->starting = NULL;
    if (rc < 0)
        lookup_failed(l, s.note, r);
    else if (rc > 0)
        got_secret(st, &s, r);
    secret_wipe(&s);
    if (r->verdict == AUTH_GOES_ON)
        return st;
    auth_end(st);
    return NULL;
}

bool auth_awaits_message(const struct auth_state *st)
{
    return st && st->step != STEP_LOOKUP;
}

bool auth_lookup_held_back(const struct auth_state *st)
{
    return st && st->step == STEP_LOOKUP && secret_waiter_held_back(&st->waiter);
}

/* Postgres's bounds on an authentication message, its length word included (auth.c
 * PG_MAX_AUTH_TOKEN_LENGTH, sasl.h PG_MAX_SASL_MESSAGE_LENGTH). */
#define PG_MAX_AUTH_TOKEN_LENGTH 65535u
#define PG_MAX_SASL_MESSAGE_LENGTH 1024u

static bool awaits_sasl(const struct auth_state *st)
{
    return st->step == STEP_SASL_INITIAL || st->step == STEP_SASL_RESPONSE;
}

uint32_t auth_message_max(const struct auth_state *st)
{
    uint32_t with_length_word =
        st && awaits_sasl(st) ? PG_MAX_SASL_MESSAGE_LENGTH : PG_MAX_AUTH_TOKEN_LENGTH;
    return with_length_word - 4;
}

void auth_on_oversized(struct auth_state *st, uint8_t type, uint32_t len, struct auth_result *r)
{
    if (!st || st->step == STEP_LOOKUP || type != 'p') {
        auth_on_message(st, type, NULL, 0, r); /* refused for its type */
        return;
    }
    say(&st->login, LOG_WARNING, "%s message of %u bytes refused: invalid message length",
        awaits_sasl(st) ? "SASL" : "password", len + 4);
    if (awaits_sasl(st)) {
        /* Postgres ends the SASL exchange as failed (auth-sasl.c CheckSASLAuth: STATUS_ERROR) */
        refused(r, FAIL_AUTH_FAILED, st->login.user);
        return;
    }
    /* Postgres logs 08P01 "invalid message length" and closes without a word (a password
     * packet it cannot read is taken as the client's EOF); the client here is told why. */
    snprintf(r->text, sizeof(r->text),
             "invalid message length: a password message may be at most %u bytes, length word "
             "included; this one is %u",
             PG_MAX_AUTH_TOKEN_LENGTH, len + 4);
    refused(r, FAIL_PROTOCOL_VIOLATION, r->text);
}

void auth_on_message(struct auth_state *st, uint8_t type, const uint8_t *body, uint32_t len,
                     struct auth_result *r)
{
    if (!st || st->step == STEP_LOOKUP) {
        refused(r, FAIL_PROTOCOL_VIOLATION,
                "message received before the authentication "
                "request");
        return;
    }
    if (type != 'p') {
        exchange_broken(r, "expected a password message");
        return;
    }
    if (st->step == STEP_SASL_INITIAL) {
        sasl_initial(st, body, len, r);
        return;
    }
    if (st->step == STEP_SASL_RESPONSE) {
        sasl_response(st, body, len, r);
        return;
    }
    struct msg_reader rd;
    codec_reader_init(&rd, body, len);
    const char *answer = codec_read_cstring(&rd);
    if (!answer || codec_reader_left(&rd) != 0) {
        exchange_broken(r, "malformed password message");
        return;
    }
    if (st->step == STEP_PASSWORD)
        check_password(st, answer, r);
    else
        check_md5(st, answer, r);
}

/* ---- process-wide ---- */

static void destroy_hba(void *h)
{
    hba_free(h);
}

static void destroy_ident(void *m)
{
    hba_ident_free(m);
}

/* Is anything published in slot? (for the log) */
static bool slot_has_value(struct snapshot_slot *slot)
{
    struct snapshot *s = snapshot_acquire(slot);
    snapshot_release(s);
    return s != NULL;
}

/* h: cfg's auth_hba_file as read (NULL when it names none) becomes the rules in force. */
static int publish_hba(const struct config *cfg, struct hba *h, const char *when)
{
    if (!h)
        return snapshot_publish(&hba_rules, NULL, NULL);
    int nrules = h->nrules;
    if (snapshot_publish(&hba_rules, h, destroy_hba) < 0) {
        log_msg(LOG_ERROR, "%sauth_hba_file %s: out of memory", when, cfg->auth_hba_file);
        return -1;
    }
    log_msg(LOG_INFO, "%sauth_hba_file %s: %d rules", when, cfg->auth_hba_file, nrules);
    return 0;
}

static int publish_ident(const struct config *cfg, struct hba_ident *m, const char *when)
{
    if (!m)
        return snapshot_publish(&ident_maps, NULL, NULL);
    int nlines = hba_ident_count(m);
    if (snapshot_publish(&ident_maps, m, destroy_ident) < 0) {
        log_msg(LOG_ERROR, "%sauth_ident_file %s: out of memory", when, cfg->auth_ident_file);
        return -1;
    }
    log_msg(LOG_INFO, "%sauth_ident_file %s: %d map lines", when, cfg->auth_ident_file, nlines);
    return 0;
}

static int load_hba(const struct config *cfg, const char *when)
{
    if (!cfg->auth_hba_file[0])
        return publish_hba(cfg, NULL, when);
    char err[700];
    struct hba *h = hba_load(cfg->auth_hba_file, err, sizeof(err));
    if (!h) {
        log_msg(LOG_ERROR, "%s%s", when, err);
        return -1;
    }
    return publish_hba(cfg, h, when);
}

static int load_ident(const struct config *cfg, const char *when)
{
    if (!cfg->auth_ident_file[0])
        return publish_ident(cfg, NULL, when);
    char err[700];
    struct hba_ident *m = hba_ident_load(cfg->auth_ident_file, err, sizeof(err));
    if (!m) {
        log_msg(LOG_ERROR, "%s%s", when, err);
        return -1;
    }
    return publish_ident(cfg, m, when);
}

struct auth_files {
    struct hba *hba;         /* NULL: cfg names no auth_hba_file */
    struct hba_ident *ident; /* NULL: cfg names no auth_ident_file */
};

void auth_files_free(struct auth_files *f)
{
    if (!f)
        return;
    hba_free(f->hba);
    hba_ident_free(f->ident);
    free(f);
}

struct auth_files *auth_files_read(const struct config *cfg, char *err, size_t errlen)
{
    struct auth_files *f = calloc(1, sizeof(*f));
    if (!f) {
        snprintf(err, errlen, "out of memory reading auth_hba_file and auth_ident_file");
        return NULL;
    }
    char why[700];
    if (cfg->auth_hba_file[0] && !(f->hba = hba_load(cfg->auth_hba_file, why, sizeof(why)))) {
        snprintf(err, errlen, "%s; keeping the previous auth_hba_file rules", why);
        auth_files_free(f);
        return NULL;
    }
    if (cfg->auth_ident_file[0] &&
        !(f->ident = hba_ident_load(cfg->auth_ident_file, why, sizeof(why)))) {
        snprintf(err, errlen, "%s; keeping the previous auth_ident_file maps", why);
        auth_files_free(f);
        return NULL;
    }
    return f;
}

int auth_init(const struct config *cfg)
{
    if (RAND_bytes(fake_key, sizeof(fake_key)) != 1) {
        log_msg(LOG_ERROR, "no randomness for the authentication key");
        return -1;
    }
    if (load_hba(cfg, "") < 0)
        return -1;
    return load_ident(cfg, "");
}

void auth_reload_read(const struct config *cfg, struct auth_files *f)
{
    if (publish_hba(cfg, f->hba, "reload: ") < 0)
        log_msg(LOG_ERROR, "reload: keeping the previous auth_hba_file rules%s",
                slot_has_value(&hba_rules) ? "" : " (none: every hba login is rejected)");
    f->hba = NULL; /* publish_hba owns it, published or freed */
    if (publish_ident(cfg, f->ident, "reload: ") < 0)
        log_msg(LOG_ERROR, "reload: keeping the previous auth_ident_file maps%s",
                slot_has_value(&ident_maps) ? ""
                                            : " (none: every cert login with map= is rejected)");
    f->ident = NULL;
    auth_files_free(f);
    secret_reload();
}

void auth_free_thread(void)
{
    secret_free_all();
    scram_free_contexts();
    passthrough_forget_found();
}

void auth_free_all(void)
{
    snapshot_publish(&hba_rules, NULL, NULL);
    snapshot_publish(&ident_maps, NULL, NULL);
    auth_free_thread();
    passthrough_free_all();
}
