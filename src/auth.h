/* auth: the client authentication exchange (protocol section 55.3) — which method a login gets
 * (auth_type, or the first matching auth_hba_file rule), TLS requirements, and the methods
 * themselves: trust, cleartext password, md5, SCRAM-SHA-256 (with channel binding over TLS) and
 * TLS client certificates. Secrets come from secret.c (auth_file, auth_query). Unknown users and
 * wrong passwords fail the same way, after the same exchange, so the reply does not tell which
 * it was. The per-login state is a small heap object that exists only while the client is in
 * CLIENT_AUTH (client->auth). */
#ifndef SLUICE_AUTH_H
#define SLUICE_AUTH_H

#include <stddef.h>
#include <stdint.h>

struct client;
struct sluice;

/* Start-up: read auth_hba_file, make the key for unknown users' fake SCRAM secrets.
 * 0, or -1 after logging why (sluice does not start). */
int auth_init(struct sluice *app) __attribute__((warn_unused_result));
/* Reload: re-read auth_hba_file (a broken file keeps the previous rules, logged). */
void auth_reload(struct sluice *app);
/* Shutdown: free the rules and caches. */
void auth_free_all(void);

/* Begin after a valid startup packet: either log in at once (trust, cert) or send the challenge
 * (possibly after looking the secret up). */
void auth_start(struct client *c);
/* A message from a client in CLIENT_AUTH. */
void auth_on_message(struct client *c, uint8_t type, const uint8_t *body, uint32_t len);
/* The client is closing: drop its auth state and any lookup it waits on. Idempotent. */
void auth_client_gone(struct client *c);

/* md5 helpers (also for tests): "md5" + hex(md5(a || b)) into out[36]. */
void auth_md5_hex(const void *a, size_t alen, const void *b, size_t blen, char out[36]);
/* Constant-time string equality (length is not secret). */
int auth_secret_equal(const char *a, const char *b);

#endif
