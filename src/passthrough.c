/* passthrough: keys for logging in upstream without the password (see passthrough.h). A short
 * list: one entry per user that logged in with a SCRAM or md5 secret. */
#include "passthrough.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

struct entry {
    struct entry *next;
    struct passthrough_keys keys;
    char user[];
};

static struct entry *entries;

static struct entry *find(const char *user)
{
    for (struct entry *e = entries; e; e = e->next)
        if (strcmp(e->user, user) == 0)
            return e;
    return NULL;
}

int passthrough_remember(const char *user, const struct passthrough_keys *k)
{
    struct entry *e = find(user);
    if (!e) {
        size_t n = strlen(user) + 1;
        e = calloc(1, sizeof(*e) + n);
        if (!e)
            return -ENOMEM;
        memcpy(e->user, user, n);
        e->next = entries;
        entries = e;
    }
    e->keys = *k;
    return 0;
}

const struct passthrough_keys *passthrough_find(const char *user)
{
    struct entry *e = find(user);
    return e ? &e->keys : NULL;
}

void passthrough_free_all(void)
{
    while (entries) {
        struct entry *e = entries;
        entries = e->next;
        OPENSSL_cleanse(&e->keys, sizeof(e->keys));
        free(e);
    }
}
