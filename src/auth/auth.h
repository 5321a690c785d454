/* auth: the client authentication exchange (protocol section 55.3) — which method a login gets
 * (auth_type, or the first matching auth_hba_file rule), TLS requirements, and the methods
 * themselves: trust, cleartext password, md5, SCRAM-SHA-256 (with channel binding over TLS) and
 * TLS client certificates. Secrets come from secret.c (auth_file, auth_query). Unknown users and
 * wrong passwords fail the same way, after the same exchange, so the reply does not tell which
 * it was. The per-login state is a small heap object that exists only while the exchange goes on.
 * Auth sits below the core: the core drives it and acts on its answers (struct auth_result). */
#ifndef SLUICE_AUTH_H
#define SLUICE_AUTH_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cidr.h"
#include "error.h"
#include "log.h"

struct auth_result;
struct auth_state;
struct msg_out;
struct worker;
struct ssl_st;

/* Start-up: read auth_hba_file, make the key for unknown users' fake SCRAM secrets.
 * 0, or -1 after logging why (sluice does not start). */
int auth_init(const struct config *cfg) __attribute__((warn_unused_result));
/* cfg's auth_hba_file and auth_ident_file as read, for a reload that reads its files off the
 * loop (reload_reader.h) and puts them in force on it, never reading them twice. */
struct auth_files;
/* Read and parse them, with blocking I/O, on any thread: NULL with what is wrong in err (a
 * reload or SET that fails it is refused whole: SHOW CONFIG names only files in force). */
struct auth_files *auth_files_read(const struct config *cfg, char *err, size_t errlen);
void auth_files_free(struct auth_files *f);
/* Reload: put the files read in force (f is taken; a rule set that cannot be published keeps
 * the previous one, logged). Any thread may run logins meanwhile: a login that started keeps
 * the rules it read (snapshot.h). */
void auth_reload_read(const struct config *cfg, struct auth_files *f);
/* Shutdown: free the rules and caches (the calling thread's too: auth_free_thread). */
void auth_free_all(void);
/* What the calling thread keeps of auth's own: its auth_query lookups and connections, SCRAM's
 * OpenSSL contexts, and the passthrough keys it last read (cleansed). A worker thread calls it
 * as it ends; the main thread's go in auth_free_all. */
void auth_free_thread(void);

/* The login as auth sees it, filled by the core (client_login.c) after a valid startup packet.
 * The pointers outlive the exchange. Auth never calls into the client, pool or server code: it
 * answers with a struct auth_result, and what happens later (a looked-up secret arrives) reaches
 * the core through hooks. */
struct auth_hooks {
    /* An exchange that waited for a secret lookup moved on: r says what to do now, as the answer
     * of auth_start or auth_on_message would have. Called last: auth touches nothing after. */
    void (*resumed)(void *owner, const struct auth_result *r);
    /* A log line about this login (the core says who it is). */
    void (*log)(void *owner, enum log_level level, const char *fmt, va_list ap)
        __attribute__((format(printf, 3, 0)));
};

struct auth_login {
    struct worker *worker;
    const char *user;
    const char *database;
    const union peer_addr *addr;
    struct ssl_st *ssl;   /* the client's TLS session, NULL without */
    bool admin;           /* an admin console login: auth_file only */
    struct msg_out *out;  /* where the Authentication requests are written */
    const struct auth_hooks *hooks;
    void *owner;          /* handed back to the hooks */
};

enum auth_verdict {
    AUTH_GOES_ON, /* send what is in out (nothing while a lookup runs); the client answers */
    AUTH_PROVEN,  /* the client is who it says it is: log it in */
    AUTH_REFUSED, /* fail the login with failure and detail */
};

struct auth_result {
    enum auth_verdict verdict;
    enum failure failure; /* REFUSED */
    const char *detail;   /* REFUSED: static text, the login's user, or text */
    char text[600];
};

/* Begin after a valid startup packet: either decide at once (trust, cert, a rejecting rule) or
 * send the challenge (possibly after looking the secret up). The exchange's state while it goes
 * on (AUTH_GOES_ON), else NULL; it lives until auth_end. */
struct auth_state *auth_start(const struct auth_login *login, struct auth_result *r);
/* Has the client been asked for its answer (an Authentication request is out)? False while the
 * secret is looked up: a message the client sent ahead waits until then, as Postgres reads it
 * only once it has asked. */
bool auth_awaits_message(const struct auth_state *st);
/* Is the secret's lookup held back behind other client addresses' (secret_waiter_held_back)?
 * Then the login waits on its own address's other logins, not on sluice. */
bool auth_lookup_held_back(const struct auth_state *st);
/* The longest message body the exchange takes now, as Postgres bounds the message it awaits:
 * a password (cleartext or md5) up to PG_MAX_AUTH_TOKEN_LENGTH, 65535 bytes with the length word
 * (a long password, a cloud provider's token used as one); a SASL message up to
 * PG_MAX_SASL_MESSAGE_LENGTH, 1024. */
uint32_t auth_message_max(const struct auth_state *st);
/* The client announced a message of this type with a body of len bytes, past auth_message_max:
 * refused as Postgres refuses it (a wrong type first, as there). */
void auth_on_oversized(struct auth_state *st, uint8_t type, uint32_t len, struct auth_result *r);
/* A message from the client during the exchange. */
void auth_on_message(struct auth_state *st, uint8_t type, const uint8_t *body, uint32_t len,
                     struct auth_result *r);
/* The exchange is over (a final verdict) or the client is leaving: free its state and drop any
 * lookup it waits on. NULL is fine. */
void auth_end(struct auth_state *st);

/* md5 helpers (also for tests): "md5" + hex(md5(a || b)) into out[36]. */
void auth_md5_hex(const void *a, size_t alen, const void *b, size_t blen, char out[36]);
/* Constant-time string equality (length is not secret). */
int auth_secret_equal(const char *a, const char *b);

#endif
