/* auth: the client authentication exchange — trust, plain password and md5 against secrets from
 * auth_file or DATABASE_URL. Unknown users and wrong passwords fail the same way, after the same
 * work, so the reply does not tell which it was. */
#ifndef SLUICE_AUTH_H
#define SLUICE_AUTH_H

#include <stddef.h>
#include <stdint.h>

struct client;

/* Begin after a valid startup packet: either log in at once (trust) or send the challenge. */
void auth_start(struct client *c);
/* A message from a client in CLIENT_AUTH. */
void auth_on_message(struct client *c, uint8_t type, const uint8_t *body, uint32_t len);

/* md5 helpers (also for tests): "md5" + hex(md5(a || b)) into out[36]. */
void auth_md5_hex(const void *a, size_t alen, const void *b, size_t blen, char out[36]);
/* Constant-time string equality (length is not secret). */
int auth_secret_equal(const char *a, const char *b);

#endif
