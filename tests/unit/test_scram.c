/* test_scram: SCRAM-SHA-256 secrets and the server side of the exchange (scram.c), against the
 * RFC 7677 test vector, secrets Postgres 15 itself stored, and a small client written here. */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "scram.h"

/* RFC 7677 section 3. */
#define RFC_CLIENT_FIRST "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
#define RFC_SERVER_NONCE "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
#define RFC_SERVER_FIRST                                                                           \
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
#define RFC_CLIENT_FINAL                                                                           \
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+"               \
    "Ute9ytag9zjfMHgs"                                                                             \
    "qmmiz7AndVQ="
#define RFC_SERVER_FINAL "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

/* SELECT rolpassword FROM pg_authid after CREATE ROLE ... PASSWORD '...' on Postgres 15. */
#define PG_SECRET_PENCIL                                                                           \
    "SCRAM-SHA-256$4096:fRcOwk7EG3iKOExQG6z4PA==$Cv1xFz+OZvZ3KHylx4+t5o7S4EFlyT1qYEjGiegk8SM=:X+"  \
    "MbU6PJzZ/qkT/aRDF+Ba/hPl1d4+JiPyaez/jIN8Y="
#define PG_SECRET_NON_ASCII /* password "sluice-s\xc3\xa9cret" (UTF-8, already NFKC) */            \
    "SCRAM-SHA-256$4096:ZLwiW/g50rt7S4f1Uat6bg==$WhRPzty0qO9s0wgs/+lHMeUnXS6xGgiF32eIa2+C/YU=:"    \
    "OnU8d4UCjZkYFB/lZh4i/hqjcBnpQUg8sDbcWIVPXcU="

static struct scram_secret rfc_secret(void)
{
    uint8_t salt[32];
    int n = scram_b64_decode("W22ZaJ0SNY7soEsUEjb6gQ==", 24, salt, sizeof salt);
    struct scram_secret s;
    CHECK_INT(n, 16);
    CHECK_INT(scram_make_secret("pencil", salt, (size_t)n, 4096, &s), 0);
    return s;
}

/* The RFC's client-first-message to x, answered as it should be. */
static void rfc_first(struct scram_server *x)
{
    char *out = NULL;
    const char *why = NULL;
    CHECK_INT(scram_server_first(x, false, RFC_CLIENT_FIRST, strlen(RFC_CLIENT_FIRST),
                                 RFC_SERVER_NONCE, &out, &why),
              SCRAM_OK);
    free(out);
}

static void rfc7677_vector_gives_the_rfc_messages(void)
{
    struct scram_secret s = rfc_secret();
    struct scram_server x;
    scram_server_init(&x, &s, false, NULL, 0);
    char *out = NULL;
    const char *why = NULL;
    CHECK_INT(scram_server_first(&x, false, RFC_CLIENT_FIRST, strlen(RFC_CLIENT_FIRST),
                                 RFC_SERVER_NONCE, &out, &why),
              SCRAM_OK);
    CHECK_STR(out, RFC_SERVER_FIRST);
    free(out);
    CHECK_INT(scram_server_final(&x, RFC_CLIENT_FINAL, strlen(RFC_CLIENT_FINAL), &out, &why),
              SCRAM_OK);
    CHECK_STR(out, RFC_SERVER_FINAL);
    free(out);
    scram_server_free(&x);
}

static void rfc7677_vector_with_a_wrong_proof_fails(void)
{
    struct scram_secret s = rfc_secret();
    struct scram_server x;
    scram_server_init(&x, &s, false, NULL, 0);
    rfc_first(&x);
    char *out = NULL;
    const char *why = NULL;
    char final[] = RFC_CLIENT_FINAL;
    final[strlen(final) - 3] = final[strlen(final) - 3] == 'A' ? 'B' : 'A';
    CHECK_INT(scram_server_final(&x, final, strlen(final), &out, &why), SCRAM_FAILED);
    CHECK(out == NULL);
    scram_server_free(&x);
}

static void a_doomed_exchange_fails_even_with_the_right_proof(void)
{
    struct scram_secret s = rfc_secret();
    struct scram_server x;
    scram_server_init(&x, &s, true, NULL, 0);
    rfc_first(&x);
    char *out = NULL;
    const char *why = NULL;
    CHECK_INT(scram_server_final(&x, RFC_CLIENT_FINAL, strlen(RFC_CLIENT_FINAL), &out, &why),
              SCRAM_FAILED);
    CHECK(out == NULL);
    scram_server_free(&x);
}

static void postgres_secrets_parse_format_and_derive_identically(void)
{
    const char *texts[] = {PG_SECRET_PENCIL, PG_SECRET_NON_ASCII};
    const char *passwords[] = {"pencil", "sluice-s\xc3\xa9"
                                         "cret"};
    for (int i = 0; i < 2; i++) {
        struct scram_secret s, d;
        CHECK(scram_is_secret(texts[i]));
        CHECK_INT(scram_parse_secret(texts[i], &s), 0);
        CHECK_INT(s.iterations, 4096);
        CHECK_INT(s.salt_len, 16);
        char back[200];
        CHECK_INT(scram_format_secret(&s, back, sizeof back), 0);
        CHECK_STR(back, texts[i]);
        CHECK_INT(scram_make_secret(passwords[i], s.salt, s.salt_len, s.iterations, &d), 0);
        CHECK(memcmp(d.stored_key, s.stored_key, SCRAM_KEY_LEN) == 0);
        CHECK(memcmp(d.server_key, s.server_key, SCRAM_KEY_LEN) == 0);
        CHECK(scram_verify_password(&s, passwords[i]));
        CHECK(!scram_verify_password(&s, "Pencil"));
    }
}

static void malformed_secrets_are_refused(void)
{
    const char *bad[] = {
        "",
        "md5c4ca4238a0b923820dcc509a6f75849b",
        "SCRAM-SHA-256$",
        "SCRAM-SHA-256$4096:fRcOwk7EG3iKOExQG6z4PA==$Cv1xFz+OZvZ3KHylx4+t5o7S4EFlyT1qYEjGiegk8SM=",
        "SCRAM-SHA-256$0:fRcOwk7EG3iKOExQG6z4PA==$Cv1xFz+OZvZ3KHylx4+t5o7S4EFlyT1qYEjGiegk8SM=:X+"
        "MbU6PJzZ/qkT/aRDF+Ba/hPl1d4+JiPyaez/jIN8Y=",
        "SCRAM-SHA-256$40x6:fRcOwk7EG3iKOExQG6z4PA==$Cv1xFz+OZvZ3KHylx4+t5o7S4EFlyT1qYEjGiegk8SM=:"
        "X+MbU6PJzZ/qkT/aRDF+Ba/hPl1d4+JiPyaez/jIN8Y=",
        "SCRAM-SHA-256$4096:$Cv1xFz+OZvZ3KHylx4+t5o7S4EFlyT1qYEjGiegk8SM=:X+"
        "MbU6PJzZ/qkT/aRDF+Ba/hPl1d4+JiPyaez/jIN8Y=",
        /* stored key one byte short */
        "SCRAM-SHA-256$4096:fRcOwk7EG3iKOExQG6z4PA==$Cv1xFz+OZvZ3KHylx4+t5o7S4EFlyT1qYEjGieg=:X+"
        "MbU6PJzZ/qkT/aRDF+Ba/hPl1d4+JiPyaez/jIN8Y=",
        /* not base64 */
        "SCRAM-SHA-256$4096:fRcOwk7EG3iKOExQG6z4PA==$Cv1xFz+OZvZ3KHylx4+t5o7S4EFlyT1qYEjGiegk8S!=:"
        "X+"
        "MbU6PJzZ/qkT/aRDF+Ba/hPl1d4+JiPyaez/jIN8Y=",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct scram_secret s;
        CHECK_INT(scram_parse_secret(bad[i], &s), -1);
    }
}

static void base64_is_strict_and_round_trips(void)
{
    uint8_t in[40], out[40];
    char text[80];
    for (int i = 0; i < 40; i++)
        in[i] = (uint8_t)(i * 37 + 11);
    for (size_t len = 0; len <= 40; len++) {
        int t = scram_b64_encode(in, len, text, sizeof text);
        CHECK_INT(t, (int)((len + 2) / 3 * 4));
        CHECK_INT(scram_b64_decode(text, (size_t)t, out, sizeof out), (int)len);
        CHECK(memcmp(in, out, len) == 0);
    }
    CHECK_INT(scram_b64_decode("biws", 4, out, sizeof out), 3);
    CHECK(memcmp(out, "n,,", 3) == 0);
    const char *bad[] = {"biw", "b=ws", "bi=s", "biws=", "bi w", "bi\nw", "====", "ab=c"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_INT(scram_b64_decode(bad[i], strlen(bad[i]), out, sizeof out), -1);
    CHECK_INT(scram_b64_encode(in, 3, text, 4), -1); /* no room for the NUL */
}

/* ---- a client, to test channel binding and the grammar ---- */

static void hmac256(const uint8_t *key, const void *data, size_t len, uint8_t out[32])
{
    unsigned int n;
    HMAC(EVP_sha256(), key, 32, data, len, out, &n);
}

/* client-final for the exchange so far: c=<cbind>, the server's nonce, the proof for password. */
static char *client_final(const char *client_first_bare, const char *server_first,
                          const char *c_attr, const char *password)
{
    const char *r = strstr(server_first, "r=") + 2;
    size_t rlen = strcspn(r, ",");
    const char *s = strstr(server_first, ",s=") + 3;
    size_t slen = strcspn(s, ",");
    int iter = atoi(strstr(server_first, ",i=") + 3);
    uint8_t salt[64];
    int saltlen = scram_b64_decode(s, slen, salt, sizeof salt);
    struct scram_secret sec;
    CHECK_INT(scram_make_secret(password, salt, (size_t)saltlen, iter, &sec), 0);
    uint8_t salted[32], client_key[32], sig[32], proof[32];
    PKCS5_PBKDF2_HMAC(password, (int)strlen(password), salt, saltlen, iter, EVP_sha256(), 32,
                      salted);
    hmac256(salted, "Client Key", 10, client_key);
    char without[512];
    snprintf(without, sizeof without, "c=%s,r=%.*s", c_attr, (int)rlen, r);
    char am[2048];
    snprintf(am, sizeof am, "%s,%s,%s", client_first_bare, server_first, without);
    hmac256(sec.stored_key, am, strlen(am), sig);
    for (int i = 0; i < 32; i++)
        proof[i] = client_key[i] ^ sig[i];
    char p64[64];
    scram_b64_encode(proof, 32, p64, sizeof p64);
    char *out = malloc(700);
    snprintf(out, 700, "%s,p=%s", without, p64);
    return out;
}

/* One whole exchange: returns the result of the step that ended it. */
static enum scram_result exchange(bool offer_plus, bool choose_plus, const char *gs2,
                                  const char *c_attr, const char *password, const char **why_out)
{
    struct scram_secret s = rfc_secret();
    uint8_t cb[32];
    for (int i = 0; i < 32; i++)
        cb[i] = (uint8_t)(0xA0 + i);
    struct scram_server x;
    scram_server_init(&x, &s, false, offer_plus ? cb : NULL, offer_plus ? sizeof cb : 0);
    char first[256];
    const char *bare = "n=,r=clientnonce123";
    snprintf(first, sizeof first, "%s%s", gs2, bare);
    char *sf = NULL, *out = NULL;
    const char *why = NULL;
    enum scram_result rc =
        scram_server_first(&x, choose_plus, first, strlen(first), NULL, &sf, &why);
    if (rc == SCRAM_OK) {
        CHECK(strncmp(sf, "r=clientnonce123", 16) == 0);
        CHECK(strlen(sf) > 16 + 20); /* the server appended its own nonce */
        char *cf = client_final(bare, sf, c_attr, password);
        rc = scram_server_final(&x, cf, strlen(cf), &out, &why);
        free(cf);
    }
    free(sf);
    free(out);
    scram_server_free(&x);
    if (why_out)
        *why_out = why;
    return rc;
}

static void channel_binding_checks_the_certificate_hash(void)
{
    /* c= is base64("p=tls-server-end-point,," || hash) */
    uint8_t raw[24 + 32];
    memcpy(raw, "p=tls-server-end-point,,", 24);
    for (int i = 0; i < 32; i++)
        raw[24 + i] = (uint8_t)(0xA0 + i);
    char good[128], bad[128];
    scram_b64_encode(raw, sizeof raw, good, sizeof good);
    raw[30] ^= 1;
    scram_b64_encode(raw, sizeof raw, bad, sizeof bad);
    CHECK_INT(exchange(true, true, "p=tls-server-end-point,,", good, "pencil", NULL), SCRAM_OK);
    CHECK_INT(exchange(true, true, "p=tls-server-end-point,,", good, "wrong", NULL), SCRAM_FAILED);
    CHECK_INT(exchange(true, true, "p=tls-server-end-point,,", bad, "pencil", NULL),
              SCRAM_CBIND_ERROR);
    /* the flag the client sent must be what c= repeats */
    CHECK_INT(exchange(true, true, "p=tls-server-end-point,,", "biws", "pencil", NULL),
              SCRAM_CBIND_ERROR);
    CHECK_INT(exchange(true, true, "p=tls-unique,,", good, "pencil", NULL), SCRAM_CBIND_ERROR);
}

static void channel_binding_negotiation_follows_postgres(void)
{
    const char *why;
    /* without TLS: n and y both fine; -PLUS was never offered */
    CHECK_INT(exchange(false, false, "n,,", "biws", "pencil", NULL), SCRAM_OK);
    CHECK_INT(exchange(false, false, "y,,", "eSws", "pencil", NULL), SCRAM_OK);
    CHECK_INT(exchange(false, true, "p=tls-server-end-point,,", "biws", "pencil", NULL),
              SCRAM_CBIND_ERROR);
    /* over TLS: plain SCRAM with n is a choice (channel_binding=disable) */
    CHECK_INT(exchange(true, false, "n,,", "biws", "pencil", NULL), SCRAM_OK);
    /* y: the client thinks we cannot bind although we offered it -> a downgrade */
    CHECK_INT(exchange(true, false, "y,,", "eSws", "pencil", &why), SCRAM_CBIND_ERROR);
    CHECK(why && strstr(why, "negotiation error"));
    /* -PLUS chosen but no binding in the header, and the reverse */
    CHECK_INT(exchange(true, true, "n,,", "biws", "pencil", NULL), SCRAM_CBIND_ERROR);
    CHECK_INT(exchange(true, false, "p=tls-server-end-point,,", "biws", "pencil", NULL),
              SCRAM_CBIND_ERROR);
    /* c= must match the flag */
    CHECK_INT(exchange(false, false, "n,,", "eSws", "pencil", NULL), SCRAM_CBIND_ERROR);
}

static void malformed_client_messages_are_refused(void)
{
    struct scram_secret s = rfc_secret();
    const char *firsts[] = {
        "",                     /* empty */
        "x,,n=,r=abc",          /* unknown flag */
        "n,a=someone,n=,r=abc", /* authzid */
        "n,,m=ext,n=,r=abc",    /* mandatory extension */
        "n,,r=abc",             /* no n= */
        "n,,n=,x=abc",          /* no r= */
        "n,,n=,r=",             /* empty nonce */
        "n,,n=,r=ab\x01"
        "c",          /* control character in the nonce */
        "n,n=,r=abc", /* one comma short */
        "n,,n=,r=ab,cdef",  /* a comma inside the nonce: what follows is no attr=value */
        "n,,n=,r=abc,,",    /* an empty extension */
        "n,,n=,r=abc,1=x",  /* an extension's name is a letter */
    };
    for (size_t i = 0; i < sizeof firsts / sizeof firsts[0]; i++) {
        struct scram_server x;
        scram_server_init(&x, &s, false, NULL, 0);
        char *out = NULL;
        const char *why = NULL;
        CHECK(scram_server_first(&x, false, firsts[i], strlen(firsts[i]), NULL, &out, &why) !=
              SCRAM_OK);
        CHECK(out == NULL);
        CHECK(why != NULL);
        scram_server_free(&x);
    }
    /* an extension after the nonce, attr=value, is ignored (Postgres's read_any_attr) */
    struct scram_server x;
    scram_server_init(&x, &s, false, NULL, 0);
    char *ext_out = NULL;
    const char *ext_why = NULL;
    CHECK_INT(scram_server_first(&x, false, "n,,n=,r=abc,x=1,y=", 18, NULL, &ext_out, &ext_why),
              SCRAM_OK);
    free(ext_out);
    scram_server_free(&x);
    /* an authorization identity or a mandatory extension: Postgres's 0A000, not malformed */
    const char *unsupported[] = {"n,a=someone,n=,r=abc", "n,,m=ext,n=,r=abc"};
    for (size_t i = 0; i < 2; i++) {
        scram_server_init(&x, &s, false, NULL, 0);
        char *u_out = NULL;
        const char *u_why = NULL;
        CHECK_INT(scram_server_first(&x, false, unsupported[i], strlen(unsupported[i]), NULL,
                                     &u_out, &u_why),
                  SCRAM_UNSUPPORTED);
        CHECK(u_out == NULL && u_why != NULL);
        scram_server_free(&x);
    }
    /* a comma that ends the message goes with the value before it, as in Postgres's
     * read_attr_value: "r=abc," and "r=abc,x=1," are taken there (SASLContinue) */
    const char *trailing[] = {"n,,n=,r=abc,", "n,,n=,r=abc,x=1,"};
    for (size_t i = 0; i < sizeof trailing / sizeof trailing[0]; i++) {
        scram_server_init(&x, &s, false, NULL, 0);
        ext_out = NULL;
        ext_why = NULL;
        CHECK_INT(scram_server_first(&x, false, trailing[i], strlen(trailing[i]), NULL, &ext_out,
                                     &ext_why),
                  SCRAM_OK);
        free(ext_out);
        scram_server_free(&x);
    }
    /* a NUL inside the message */
    scram_server_init(&x, &s, false, NULL, 0);
    char *out = NULL;
    const char *why = NULL;
    CHECK_INT(scram_server_first(&x, false, "n,,n=,r=a\0b", 11, NULL, &out, &why), SCRAM_MALFORMED);
    scram_server_free(&x);

    const char *finals[] = {
        "",
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgs"
        "qmmiz7AndVQ=",                                                                 /* no c= */
        "c=biws,r=rOprNGfwEbeRWgbNEkqO,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=", /* nonce */
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",        /* no proof */
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzb", /* short proof */
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=!!!!",
    };
    for (size_t i = 0; i < sizeof finals / sizeof finals[0]; i++) {
        scram_server_init(&x, &s, false, NULL, 0);
        rfc_first(&x);
        enum scram_result rc = scram_server_final(&x, finals[i], strlen(finals[i]), &out, &why);
        CHECK(rc == SCRAM_MALFORMED || rc == SCRAM_CBIND_ERROR);
        CHECK(out == NULL);
        scram_server_free(&x);
    }
    /* the final message before the first */
    scram_server_init(&x, &s, false, NULL, 0);
    CHECK_INT(scram_server_final(&x, RFC_CLIENT_FINAL, strlen(RFC_CLIENT_FINAL), &out, &why),
              SCRAM_MALFORMED);
    scram_server_free(&x);
}

static void fake_secrets_are_stable_per_name_and_differ_between_names(void)
{
    uint8_t key[32] = {1, 2, 3};
    struct scram_secret a1, a2, b;
    scram_fake_secret(key, "alice", SCRAM_DEFAULT_ITERATIONS, &a1);
    scram_fake_secret(key, "alice", SCRAM_DEFAULT_ITERATIONS, &a2);
    scram_fake_secret(key, "bob", SCRAM_DEFAULT_ITERATIONS, &b);
    CHECK(memcmp(&a1, &a2, sizeof a1) == 0);
    CHECK(memcmp(a1.salt, b.salt, SCRAM_SALT_LEN) != 0);
    CHECK_INT(a1.iterations, SCRAM_DEFAULT_ITERATIONS);
    CHECK_INT(a1.salt_len, SCRAM_SALT_LEN);
    key[0] = 9;
    struct scram_secret other_key;
    scram_fake_secret(key, "alice", SCRAM_DEFAULT_ITERATIONS, &other_key);
    CHECK(memcmp(a1.salt, other_key.salt, SCRAM_SALT_LEN) != 0);
}

/* Passthrough: the ClientKey a client proves to sluice's server side logs sluice in to another
 * server holding the same secret, without the password. */
static void client_keys_from_one_exchange_log_in_to_a_server_with_the_same_secret(void)
{
    struct scram_secret s = rfc_secret();
    /* 1. A client (the RFC's) proves itself to sluice: sluice learns its ClientKey. */
    struct scram_server front;
    scram_server_init(&front, &s, false, NULL, 0);
    rfc_first(&front);
    char *out = NULL;
    const char *why = NULL;
    CHECK_INT(scram_server_final(&front, RFC_CLIENT_FINAL, strlen(RFC_CLIENT_FINAL), &out, &why),
              SCRAM_OK);
    free(out);
    CHECK(front.client_key_known);

    /* 2. sluice logs in upstream with it (the upstream is another scram_server here). */
    struct scram_server upstream;
    scram_server_init(&upstream, &s, false, NULL, 0);
    struct scram_client x;
    scram_client_init(&x, &s, front.client_key);
    char *first = NULL, *sfirst = NULL, *final = NULL, *sfinal = NULL;
    CHECK_INT(scram_client_first(&x, NULL, &first), SCRAM_OK);
    CHECK(strncmp(first, "n,,n=,r=", 8) == 0);
    CHECK_INT(scram_server_first(&upstream, false, first, strlen(first), NULL, &sfirst, &why),
              SCRAM_OK);
    CHECK_INT(scram_client_final(&x, sfirst, strlen(sfirst), &final, &why), SCRAM_OK);
    CHECK_INT(scram_server_final(&upstream, final, strlen(final), &sfinal, &why), SCRAM_OK);
    CHECK_INT(scram_client_verify(&x, sfinal, strlen(sfinal), &why), SCRAM_OK);
    /* a server that does not know the ServerKey cannot fake the final message */
    char forged[] = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
    CHECK_INT(scram_client_verify(&x, forged, strlen(forged), &why), SCRAM_FAILED);
    CHECK_INT(scram_client_verify(&x, "e=invalid-proof", 15, &why), SCRAM_FAILED);
    free(first);
    free(sfirst);
    free(final);
    free(sfinal);
    scram_client_free(&x);
    scram_server_free(&upstream);
    scram_server_free(&front);
}

static void client_keys_are_refused_by_a_server_with_another_salt(void)
{
    struct scram_secret s = rfc_secret(), other;
    const uint8_t salt[16] = "another-salt-16";
    CHECK_INT(scram_make_secret("pencil", salt, sizeof(salt), 4096, &other), 0);
    uint8_t key[SCRAM_KEY_LEN] = {1, 2, 3};
    struct scram_client x;
    scram_client_init(&x, &s, key);
    char *first = NULL, *final = NULL;
    const char *why = NULL;
    CHECK_INT(scram_client_first(&x, "abcdefgh", &first), SCRAM_OK);
    char sfirst[200];
    char salt64[64];
    scram_b64_encode(other.salt, other.salt_len, salt64, sizeof(salt64));
    snprintf(sfirst, sizeof(sfirst), "r=abcdefghSERVER,s=%s,i=4096", salt64);
    CHECK_INT(scram_client_final(&x, sfirst, strlen(sfirst), &final, &why), SCRAM_FAILED);
    CHECK(why && strstr(why, "salt"));
    CHECK(final == NULL);
    /* a nonce that does not extend ours, and garbage, are malformed */
    CHECK_INT(scram_client_final(&x, "r=zzz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", 39, &final, &why),
              SCRAM_MALFORMED);
    CHECK_INT(scram_client_final(&x, "r=abcdefghX,s=!!,i=4096", 23, &final, &why), SCRAM_MALFORMED);
    CHECK_INT(scram_client_final(&x, "r=abcdefghX,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=x", 42, &final, &why),
              SCRAM_MALFORMED);
    free(first);
    scram_client_free(&x);
}

/* RFC 4013 section 3's examples, and the derivation that depends on them: a client (libpq)
 * prepares the password before deriving, so sluice must too. */
static void saslprep_maps_and_normalizes_like_libpq(void)
{
    const char *cases[][2] = {
        {"I\xc2\xadX", "IX"},           /* SOFT HYPHEN maps to nothing */
        {"user", "user"},               /* ASCII unchanged */
        {"USER", "USER"},               /* no case folding */
        {"\xc2\xaa", "a"},              /* FEMININE ORDINAL INDICATOR: NFKC */
        {"\xe2\x85\xa8", "IX"},         /* ROMAN NUMERAL NINE: NFKC */
        {"a\xe2\x80\x83" "b", "a b"}, /* EM SPACE maps to a space */
        {"\x07", "\x07"},               /* ASCII (even a control character) passes as given */
        {"\xd8\xa7" "1", "\xd8\xa7" "1"}, /* RandALCat then L/EN: prohibited, used as given */
        {"\xff\xfe", "\xff\xfe"},        /* not UTF-8: used as given */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *p = scram_saslprep(cases[i][0]);
        CHECK_STR(p, cases[i][1]);
        free(p);
    }
    struct scram_secret a, b;
    const uint8_t salt[16] = "0123456789abcdef";
    CHECK_INT(scram_make_secret("\xe2\x85\xa8", salt, sizeof(salt), 4096, &a), 0);
    CHECK_INT(scram_make_secret("IX", salt, sizeof(salt), 4096, &b), 0);
    CHECK(memcmp(a.stored_key, b.stored_key, SCRAM_KEY_LEN) == 0);
}

int main(void)
{
    RUN(rfc7677_vector_gives_the_rfc_messages);
    RUN(rfc7677_vector_with_a_wrong_proof_fails);
    RUN(a_doomed_exchange_fails_even_with_the_right_proof);
    RUN(postgres_secrets_parse_format_and_derive_identically);
    RUN(malformed_secrets_are_refused);
    RUN(base64_is_strict_and_round_trips);
    RUN(channel_binding_checks_the_certificate_hash);
    RUN(channel_binding_negotiation_follows_postgres);
    RUN(malformed_client_messages_are_refused);
    RUN(fake_secrets_are_stable_per_name_and_differ_between_names);
    RUN(client_keys_from_one_exchange_log_in_to_a_server_with_the_same_secret);
    RUN(client_keys_are_refused_by_a_server_with_another_salt);
    RUN(saslprep_maps_and_normalizes_like_libpq);
    return CHECK_DONE();
}
