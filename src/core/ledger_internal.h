/* ledger_internal: what ledger.c and ledger_wait.c share and no other file may use: the lock,
 * the relaxed counter operations, the share a worker's take or give names, and the three steps
 * the wait list (ledger_wait.c) needs of ledger.c's counts. The API is ledger.h. */
#ifndef SLUICE_LEDGER_INTERNAL_H
#define SLUICE_LEDGER_INTERNAL_H

#include <assert.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdatomic.h>

#include "ledger.h"

/* The lock is taken for reads by name too, which the API gives a const ledger: the mutex is the
 * one part a reader writes. */
static inline void lock(const struct ledger *l)
{
    pthread_mutex_lock((pthread_mutex_t *)&l->mu);
}

static inline void unlock(const struct ledger *l)
{
    pthread_mutex_unlock((pthread_mutex_t *)&l->mu);
}

/* Relaxed: the order between counters comes from the lock (writers) or does not matter (the
 * lock-free readers' answers are hints). */
static inline int get(const atomic_int *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

static inline int add(atomic_int *c, int by)
{
    return atomic_fetch_add_explicit(c, by, memory_order_relaxed) + by;
}

/* A share (ledger.h): written only under the lock, so a load and a store suffice. */
static inline void share_add(atomic_int *c, int by)
{
    int n = get(c) + by;
    assert(n >= 0);
    atomic_store_explicit(c, n, memory_order_relaxed);
}

/* The share a take or give names: a worker's, or the servers in transit. */
static inline int share_of(int worker)
{
    assert(worker >= 0 && worker < LEDGER_SHARES);
    return worker >= 0 && worker < LEDGER_SHARES ? worker : LEDGER_IN_TRANSIT;
}

/* Would a slot of key (NULL: auth_query's, in db and user) serve waiter w? */
static inline bool frees_for(const struct ledger_waiter *w, const struct ledger_key *key,
                             const struct ledger_scope *db, const struct ledger_scope *user)
{
    switch (w->scope) {
    case LIMIT_POOL:
        return w->key == key;
    case LIMIT_DB:
        return w->key->db == db;
    case LIMIT_USER:
        return w->key->user == user;
    case LIMIT_GLOBAL:
        return true;
    default:
        return false;
    }
}

/* The first limit that `add` more backends in key's scopes would pass. `closing`: a key one of
 * whose backends is about to go, so the scopes it shares with key count one less. own: counting
 * an auth_query connection (no pool key, no pool cap). */
enum limit_kind ledger_passed(const struct ledger *l, const struct ledger_scope *db,
                              const struct ledger_scope *user, const struct ledger_key *key,
                              const struct ledger_caps *caps, int add,
                              const struct ledger_key *closing);

/* Under the lock: key is freed, and its scopes with it, if nothing needs it any more (no pool
 * holds it, no backend, waiter or claim: ledger_key_release). */
void ledger_key_free_if_unused(struct ledger *l, struct ledger_key *key);

/* Under the lock: key's backend, held in holder's share, is gone (its counts -1). */
void ledger_give_server_locked(struct ledger *l, struct ledger_key *key, int holder);

/* Under the lock: the oldest waiter but worker `except`'s of key (LEDGER_NO_WORKER: none passed
 * over) that a freed slot of key (NULL: an auth_query connection's, in db and user) serves, off the
 * list, the slot granted to it when it registered caps (ledger_grant_locked; an entry whose caps
 * the slot does not fit is passed over); its worker, or LEDGER_NO_WORKER. */
int ledger_wake_for(struct ledger *l, const struct ledger_key *key, const struct ledger_scope *db,
                    const struct ledger_scope *user, int except);

/* Under the lock: the slot just freed is taken again for w's key and worker when it fits w's
 * caps (ledger_take_server finds it: ledger.h); false, nothing changed, when it does not or w
 * registered no caps. */
bool ledger_grant_locked(struct ledger *l, const struct ledger_waiter *w);

#endif
