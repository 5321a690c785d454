/* passthrough: what lets sluice log in upstream as a user whose password it does not know
 * (auth passthrough, as PgBouncer does): the ClientKey a client proved in a SCRAM exchange
 * against the user's SCRAM secret, or the user's md5 secret, kept per user name from the last
 * successful login. server_login.c uses them; libpq cannot (it needs the password). */
#ifndef SLUICE_PASSTHROUGH_H
#define SLUICE_PASSTHROUGH_H

#include <stdint.h>

#include "scram.h"

enum passthrough_kind {
    PASSTHROUGH_SCRAM = 1, /* secret + client_key */
    PASSTHROUGH_MD5,       /* md5 */
};

struct passthrough_keys {
    enum passthrough_kind kind;
    struct scram_secret secret;          /* salt, iterations, StoredKey, ServerKey */
    uint8_t client_key[SCRAM_KEY_LEN];   /* what the client proved */
    char md5[36];                        /* "md5" + 32 hex digits, NUL-terminated */
};

/* Keep (or replace) the keys for user. 0, or -ENOMEM (then nothing changes). */
int passthrough_remember(const char *user, const struct passthrough_keys *k);
/* The keys for user, or NULL: a copy of this thread's, valid until its next passthrough_find.
 * Any thread may call these at any time. */
const struct passthrough_keys *passthrough_find(const char *user);
/* Shutdown (after the workers have ended). (A reload keeps them: they are the server's secret, not the config's; keys that no
 * longer fit fail the upstream login with a clear error, and the next login replaces them.) */
void passthrough_free_all(void);
/* The calling thread's copy of the keys passthrough_find last gave it, cleansed (its end). */
void passthrough_forget_found(void);

#endif
