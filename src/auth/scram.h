/* scram: SCRAM-SHA-256 (RFC 5802, RFC 7677) as Postgres speaks it (protocol sections 55.3.1 and
 * 55.4): the stored secret, the server side of one exchange, channel binding checks. Computations
 * and parsing only, on OpenSSL primitives: no sockets, no clocks, no config. auth.c moves the
 * messages; tls.c supplies the tls-server-end-point hash (RFC 5929). */
#ifndef SLUICE_SCRAM_H
#define SLUICE_SCRAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SCRAM_KEY_LEN 32 /* SHA-256 */
#define SCRAM_MAX_SALT_LEN 64
#define SCRAM_SALT_LEN 16 /* what Postgres generates (SCRAM_DEFAULT_SALT_LEN) */
#define SCRAM_DEFAULT_ITERATIONS 4096
#define SCRAM_MAX_ITERATIONS 10000000
#define SCRAM_CBIND_MAX 64 /* the largest digest a certificate hash may use */
#define SCRAM_MECHANISM "SCRAM-SHA-256"
#define SCRAM_MECHANISM_PLUS "SCRAM-SHA-256-PLUS"

/* "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>" (base64 parts), as in pg_authid. */
struct scram_secret {
    int iterations;
    size_t salt_len;
    uint8_t salt[SCRAM_MAX_SALT_LEN];
    uint8_t stored_key[SCRAM_KEY_LEN];
    uint8_t server_key[SCRAM_KEY_LEN];
};

bool scram_is_secret(const char *text);
/* 0, or -1 when text is not a well-formed SCRAM-SHA-256 secret. */
int scram_parse_secret(const char *text, struct scram_secret *out)
    __attribute__((warn_unused_result));
/* The pg_authid text form; 0, or -1 when out is too small (160 bytes always suffice). */
int scram_format_secret(const struct scram_secret *s, char *out, size_t outlen)
    __attribute__((warn_unused_result));
/* SASLprep (RFC 4013) as libpq and Postgres apply it to a password before deriving: ASCII is
 * unchanged; other text is mapped and NFKC-normalized (libidn's stringprep); text that is not
 * valid UTF-8, or that SASLprep prohibits, is used as given (as Postgres does). malloc'd, or
 * NULL when out of memory. */
char *scram_saslprep(const char *password);
/* Derive a secret from a password (SASLprep, PBKDF2-HMAC-SHA-256, then the two HMAC keys).
 * This costs 2 x iterations HMACs: callers derive once and keep the result. 0 or -1. */
int scram_make_secret(const char *password, const uint8_t *salt, size_t salt_len, int iterations,
                      struct scram_secret *out) __attribute__((warn_unused_result));
/* Does a cleartext password match the secret (auth_type plain with a SCRAM secret)? Costs a
 * derivation. Constant-time in the comparison. */
bool scram_verify_password(const struct scram_secret *s, const char *password);

/* Free the calling thread's contexts that the exchanges reuse (each thread keeps its own): at
 * shutdown, and by a worker thread before it ends. */
void scram_free_contexts(void);

/* ---- one server-side exchange ---- */

enum scram_result {
    SCRAM_OK = 0,
    SCRAM_MALFORMED,   /* 08P01: the message breaks the grammar; why says how */
    SCRAM_CBIND_ERROR, /* 08P01: channel binding flag, type or data do not fit the connection */
    SCRAM_FAILED,      /* 28P01: wrong proof, or a doomed exchange (unknown user) */
    SCRAM_UNSUPPORTED, /* 0A000: an authorization identity or a mandatory extension; why: which */
    SCRAM_NOMEM,
};

struct scram_server {
    struct scram_secret secret;
    bool doomed;       /* fail at the end whatever the proof: unknown user, unusable secret */
    bool offered_plus; /* SCRAM-SHA-256-PLUS was offered (TLS with a certificate hash) */
    bool plus;         /* the client chose it */
    char cbind_flag;   /* 'n', 'y' or 'p' from the client's gs2 header */
    size_t cbind_len;
    uint8_t cbind_data[SCRAM_CBIND_MAX]; /* tls-server-end-point hash of sluice's certificate */
    char *client_first_bare;             /* kept for the AuthMessage */
    char *server_first;
    size_t nonce_len; /* the combined nonce: server_first + 2, this long */
    /* After a successful exchange with a real secret: the ClientKey the client proved, which
     * lets sluice log in upstream as this user (struct scram_client). */
    bool client_key_known;
    uint8_t client_key[SCRAM_KEY_LEN];
};

/* Start an exchange with the user's secret (or a fake one and doomed = true). cbind_data is the
 * certificate hash when TLS is on (then SCRAM-SHA-256-PLUS is offered), else NULL. */
void scram_server_init(struct scram_server *x, const struct scram_secret *secret, bool doomed,
                       const uint8_t *cbind_data, size_t cbind_len);
/* The SASLInitialResponse's data: check it and build the server-first-message into *out
 * (malloc'd, NUL-terminated, the caller frees). mechanism_plus: the client chose -PLUS.
 * server_nonce: NULL for a fresh random one (tests pass RFC vectors' nonces). */
enum scram_result scram_server_first(struct scram_server *x, bool mechanism_plus, const char *msg,
                                     size_t len, const char *server_nonce, char **out,
                                     const char **why);
/* The SASLResponse's data (client-final-message): verify the proof and build the
 * server-final-message into *out (malloc'd) on SCRAM_OK. */
enum scram_result scram_server_final(struct scram_server *x, const char *msg, size_t len,
                                     char **out, const char **why);
/* Wipe keys and free the kept messages. */
void scram_server_free(struct scram_server *x);

/* ---- one client-side exchange, with keys instead of a password ----
 * A client that proves itself with SCRAM hands sluice its ClientKey (the proof XOR the
 * signature). With it and the secret's ServerKey, sluice can log in upstream as that user
 * without knowing the password (auth passthrough, as PgBouncer does for SCRAM secrets from
 * auth_file or auth_query): the server's salt and iteration count must be the secret's. No
 * channel binding (gs2 header "n,,"). */
struct scram_client {
    struct scram_secret secret;          /* salt, iterations, ServerKey the server must prove */
    uint8_t client_key[SCRAM_KEY_LEN];
    char nonce[32];                      /* our half of the nonce, base64 */
    char *client_first_bare;
    uint8_t server_signature[SCRAM_KEY_LEN]; /* expected in the server-final-message */
    bool sent_final;
};

void scram_client_init(struct scram_client *x, const struct scram_secret *secret,
                       const uint8_t client_key[SCRAM_KEY_LEN]);
/* The SASLInitialResponse data ("n,,n=,r=<nonce>") into *out (malloc'd). client_nonce: NULL
 * for a fresh random one (tests pass RFC vectors'). */
enum scram_result scram_client_first(struct scram_client *x, const char *client_nonce, char **out);
/* The server-first-message (SASLContinue data) in; the client-final-message out (malloc'd).
 * SCRAM_FAILED when the server's salt or iteration count differ from the secret's: the keys
 * sluice holds are not this server's. */
enum scram_result scram_client_final(struct scram_client *x, const char *msg, size_t len,
                                     char **out, const char **why);
/* The server-final-message (SASLFinal data): SCRAM_OK only when the server proved it knows
 * the ServerKey. */
enum scram_result scram_client_verify(struct scram_client *x, const char *msg, size_t len,
                                      const char **why);
void scram_client_free(struct scram_client *x);

/* The fake secret for a user name that has none: deterministic per name under a server key, so
 * repeated probes see the same salt (as for a real user) and learn nothing; with the iterations
 * a real user's derived secret has (scram_iterations), or the count would tell them apart. */
void scram_fake_secret(const uint8_t key[32], const char *user, int iterations,
                       struct scram_secret *out);

/* ---- base64 (RFC 4648, padded), exposed for tests ---- */
/* Writes NUL-terminated text; returns its length, or -1 when outlen is too small. */
int scram_b64_encode(const uint8_t *in, size_t len, char *out, size_t outlen);
/* Strict: only the standard alphabet, length a multiple of 4, padding at the end only. Returns
 * the decoded length, or -1. */
int scram_b64_decode(const char *in, size_t len, uint8_t *out, size_t outlen);

#endif
