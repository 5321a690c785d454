/* passthrough: keys for logging in upstream without the password (see passthrough.h). A short
 * list: one entry per user that logged in with a SCRAM or md5 secret. Shared by every worker
 * (a key a client proved on one worker serves the servers every worker opens), under a mutex:
 * it is touched once per such login and once per server login, never per query. */
#include "passthrough.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct entry {
    struct entry *next;
    struct passthrough_keys keys;
    char user[];
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct entry *entries; /* under mu */

/* What passthrough_find hands its caller: a copy taken under the mutex, so another thread's
 * passthrough_remember for the same user cannot change it half-way through the caller's use. */
static _Thread_local struct passthrough_keys found;

static struct entry *find(const char *user)
{
    for (struct entry *e = entries; e; e = e->next)
        if (strcmp(e->user, user) == 0)
            return e;
    return NULL;
}

int passthrough_remember(const char *user, const struct passthrough_keys *k)
{
    int rc = 0;
    pthread_mutex_lock(&mu);
    struct entry *e = find(user);
    if (!e) {
        size_t n = strlen(user) + 1;
        e = calloc(1, sizeof(*e) + n);
        if (e) {
            memcpy(e->user, user, n);
            e->next = entries;
            entries = e;
        }
    }
    if (e)
        e->keys = *k;
    else
        rc = -ENOMEM;
    pthread_mutex_unlock(&mu);
    return rc;
}

const struct passthrough_keys *passthrough_find(const char *user)
{
    pthread_mutex_lock(&mu);
    struct entry *e = find(user);
    if (e)
        found = e->keys;
    pthread_mutex_unlock(&mu);
    return e ? &found : NULL;
}

void passthrough_free_all(void)
{
    pthread_mutex_lock(&mu);
    while (entries) {
        struct entry *e = entries;
        entries = e->next;
        OPENSSL_cleanse(&e->keys, sizeof(e->keys));
        free(e);
    }
    pthread_mutex_unlock(&mu);
}

void passthrough_forget_found(void)
{
    OPENSSL_cleanse(&found, sizeof(found));
}
