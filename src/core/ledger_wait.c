/* ledger_wait: the ledger's cross-worker wait list (see ledger.h, architecture 5.3 and 5.4): a
 * worker whose waiters a cap holds registers its need; a freed slot wakes the oldest entry it
 * serves (ledger_wake_for); idle servers and released ones are claimed for an older waiter
 * elsewhere. Every function takes the ledger's lock; the counts stay ledger.c's. */
#include <errno.h>
#include <stdlib.h>

#include "ledger_internal.h"

/* Under the lock: take (key, worker)'s entry off the list; it, or NULL. */
static struct ledger_waiter *unlink_waiter(struct ledger *l, const struct ledger_key *key,
                                           int worker)
{
    for (struct ledger_waiter **pp = &l->waiters; *pp; pp = &(*pp)->next) {
        struct ledger_waiter *w = *pp;
        if (w->key == key && w->worker == worker) {
            *pp = w->next;
            return w;
        }
    }
    return NULL;
}

int ledger_wait_need(struct ledger *l, struct ledger_key *key, int worker, enum limit_kind scope,
                     uint64_t since_ms, int want, const struct ledger_caps *caps,
                     uint64_t startup_fp)
{
    struct ledger_waiter *fresh = malloc(sizeof(*fresh)); /* outside the lock */
    lock(l);
    struct ledger_waiter *w = unlink_waiter(l, key, worker);
    int coming = w ? w->coming : 0, made = !w, rooms = 0;
    /* The same oldest waiter: the closes for it still on their way stay counted (those whose
     * slot was freed were taken by this registering worker, or by another: not coming). */
    if (w && w->startup_fp == startup_fp && w->since_ms + 5 >= since_ms &&
        since_ms + 5 >= w->since_ms) /* within the loops' clock skew (uv_now per iteration) */
        rooms = w->rooms - w->rooms_freed;
    if (!w) {
        w = fresh;
        fresh = NULL;
    }
    if (w) {
        *w = (struct ledger_waiter){.key = key,
                                    .scope = scope,
                                    .worker = worker,
                                    .since_ms = since_ms,
                                    .want = want > 0 ? want : 1,
                                    .coming = coming,
                                    .caps_known = caps != NULL,
                                    .startup_fp = startup_fp,
                                    .rooms = rooms};
        if (caps)
            w->caps = *caps;
        /* after every entry as old or older: equal times keep the order they came in */
        struct ledger_waiter **pp = &l->waiters;
        while (*pp && (*pp)->since_ms <= since_ms)
            pp = &(*pp)->next;
        w->next = *pp;
        *pp = w;
        add(&l->nwaiters, made);
    }
    unlock(l);
    free(fresh);
    return w ? made : -ENOMEM;
}

int ledger_wait_slot(struct ledger *l, struct ledger_key *key, int worker, enum limit_kind scope,
                     uint64_t since_ms)
{
    int rc = ledger_wait_need(l, key, worker, scope, since_ms, 1, NULL, 0);
    return rc < 0 ? rc : 0;
}

/* Under the lock: (key, worker)'s entry, or NULL. */
static struct ledger_waiter *find_waiter(struct ledger *l, const struct ledger_key *key, int worker)
{
    for (struct ledger_waiter *w = l->waiters; w; w = w->next)
        if (w->key == key && w->worker == worker)
            return w;
    return NULL;
}

bool ledger_wait_room_here(struct ledger *l, const struct ledger_key *key, int worker,
                           int unprovided, int rooms_awaited)
{
    lock(l);
    struct ledger_waiter *w = find_waiter(l, key, worker);
    bool close = unprovided > rooms_awaited + (w ? w->rooms : 0);
    if (close && w)
        w->rooms_here++;
    unlock(l);
    return close;
}

/* Under the lock: a server claimed for w arrived, or its slot was freed for it. */
static void claim_done(struct ledger_waiter *w)
{
    if (w->rooms > w->rooms_freed)
        w->rooms_freed++;
    else if (w->coming > 0)
        w->coming--;
}

void ledger_wait_done(struct ledger *l, struct ledger_key *key, int worker)
{
    lock(l);
    struct ledger_waiter *w = unlink_waiter(l, key, worker);
    if (w)
        add(&l->nwaiters, -1);
    unlock(l);
    free(w);
}

struct ledger_claim ledger_claim_idle(struct ledger *l, struct ledger_key *key, int self)
{
    struct ledger_claim claim = {.kind = LEDGER_CLAIM_NONE, .worker = LEDGER_NO_WORKER};
    lock(l);
    for (struct ledger_waiter *w = l->waiters; w; w = w->next) {
        if (get(&w->key->state) == LEDGER_KEY_PAUSED)
            continue;
        /* local first: an older waiter of the asking worker's own that a close would serve is
         * its own pool.c's to serve (pool_evict_idle_elsewhere, pool_longer_waiter_elsewhere) */
        if (w->worker == self && w->key != key && frees_for(w, key, key->db, key->user))
            break;
        if (w->worker == self || w->coming >= w->want)
            continue;
        if (w->key == key) {
            claim.kind = LEDGER_CLAIM_MOVE; /* its slot moves with it: no count changes */
        } else if (frees_for(w, key, key->db, key->user) &&
                   (!w->caps_known || ledger_passed(l, w->key->db, w->key->user, w->key, &w->caps,
                                                    1, key) == LIMIT_NONE)) {
            claim.kind = LEDGER_CLAIM_CLOSE;
        } else {
            continue;
        }
        w->coming++;
        claim.worker = w->worker;
        claim.key = w->key;
        break;
    }
    if (claim.kind == LEDGER_CLAIM_CLOSE)
        claim.key->room_claims++; /* kept until the close gives the slot (ledger_key_release) */
    unlock(l);
    return claim;
}

/* Under the lock: w, off the list, back in its place by since_ms (after every entry as old). */
static void place_waiter(struct ledger *l, struct ledger_waiter *w)
{
    struct ledger_waiter **pp = &l->waiters;
    while (*pp && (*pp)->since_ms <= w->since_ms)
        pp = &(*pp)->next;
    w->next = *pp;
    *pp = w;
}

struct ledger_claim ledger_claim_older(struct ledger *l, struct ledger_key *key, int self,
                                       uint64_t since_ms, uint64_t slack_ms, uint64_t next_since_ms,
                                       uint64_t startup_fp)
{
    struct ledger_claim claim = {.kind = LEDGER_CLAIM_NONE, .worker = LEDGER_NO_WORKER};
    lock(l);
    /* the local waiter is served: the asking worker's own entry is its next waiter's from now
     * (else it looks older than it is, and other workers send their servers here for nothing) */
    struct ledger_waiter *own = next_since_ms ? unlink_waiter(l, key, self) : NULL;
    if (own) {
        own->since_ms = next_since_ms;
        place_waiter(l, own);
    }
    /* oldest first: the first entry not older by more than the slack ends the search */
    for (struct ledger_waiter *w = l->waiters; w && w->since_ms + slack_ms < since_ms;
         w = w->next) {
        if (w->worker == self || w->coming >= w->want || get(&w->key->state) == LEDGER_KEY_PAUSED)
            continue;
        if (w->key != key) {
            /* another key's waiter held by a cap this key shares (database, user, global):
             * closing the server makes its room, as pool_longer_waiter_elsewhere between one
             * worker's pools; the slot is kept for it (ledger_give_server_for) */
            if (!frees_for(w, key, key->db, key->user) || !w->caps_known ||
                ledger_passed(l, w->key->db, w->key->user, w->key, &w->caps, 1, key) != LIMIT_NONE)
                continue;
            claim.kind = LEDGER_CLAIM_CLOSE;
            w->coming++;
        } else if (w->startup_fp == startup_fp) {
            claim.kind = LEDGER_CLAIM_MOVE;
            w->coming++;
        } else if (w->rooms == 0 && w->rooms_here == 0) {
            /* moved, it would be closed there for the same; not when its own worker closed
             * one for it (ledger_wait_room_here) and has yet to register its next waiter */
            claim.kind = LEDGER_CLAIM_CLOSE;
            w->rooms++;
        } else {
            continue;
        }
        claim.worker = w->worker;
        claim.key = w->key;
        break;
    }
    if (own && claim.kind != LEDGER_CLAIM_NONE) {
        own->since_ms = since_ms; /* not served here after all */
        own = unlink_waiter(l, key, self);
        place_waiter(l, own);
    }
    if (claim.kind == LEDGER_CLAIM_CLOSE)
        claim.key->room_claims++; /* kept until the close gives the slot (ledger_key_release) */
    unlock(l);
    return claim;
}

void ledger_wait_arrived(struct ledger *l, struct ledger_key *key, int worker)
{
    lock(l);
    struct ledger_waiter *w = find_waiter(l, key, worker);
    if (w)
        claim_done(w);
    unlock(l);
}

/* Under the lock: a LEDGER_CLAIM_CLOSE for room_key is over. */
static void room_claim_done(struct ledger *l, struct ledger_key *room_key)
{
    assert(room_key->room_claims > 0);
    room_key->room_claims--;
    ledger_key_free_if_unused(l, room_key);
}

void ledger_room_unused(struct ledger *l, struct ledger_key *key, int worker)
{
    lock(l);
    struct ledger_waiter *w = find_waiter(l, key, worker);
    if (w)
        claim_done(w);
    room_claim_done(l, key);
    unlock(l);
}

int ledger_give_server_for(struct ledger *l, struct ledger_key *key, int holder,
                           struct ledger_key *room_key, int room_worker)
{
    lock(l);
    ledger_give_server_locked(l, key, holder);
    struct ledger_waiter *w = find_waiter(l, room_key, room_worker);
    int worker;
    if (w) {
        /* the entry stays: its worker takes the slot (kept for it when it fits its caps) and
         * registers again if still held */
        claim_done(w);
        (void)ledger_grant_locked(l, w);
        worker = room_worker;
    } else {
        worker = l->waiters ? ledger_wake_for(l, key, key->db, key->user, LEDGER_NO_WORKER)
                            : LEDGER_NO_WORKER;
    }
    room_claim_done(l, room_key);
    unlock(l);
    return worker;
}

void ledger_offer_grants(struct ledger *l, int worker)
{
    if (worker < 0 || worker >= LEDGER_WORKERS || get(&l->granted[worker]) == 0)
        return;
    lock(l);
    for (struct ledger_key *key = l->keys; key; key = key->next)
        key->offered[worker] = key->granted[worker];
    unlock(l);
}

bool ledger_drop_grant(struct ledger *l, int worker, int *wake)
{
    *wake = LEDGER_NO_WORKER;
    if (worker < 0 || worker >= LEDGER_WORKERS || get(&l->granted[worker]) == 0)
        return false;
    lock(l);
    struct ledger_key *key = l->keys;
    while (key && key->offered[worker] == 0)
        key = key->next;
    if (key) {
        key->offered[worker]--;
        key->granted[worker]--;
        add(&l->granted[worker], -1);
        ledger_give_server_locked(l, key, LEDGER_IN_TRANSIT);
        /* not to this worker's waiter of key again: its dispatch just found no use for it; its
         * older waiter of another key the slot serves may be the one it goes to */
        *wake = l->waiters ? ledger_wake_for(l, key, key->db, key->user, worker) : LEDGER_NO_WORKER;
    }
    unlock(l);
    return key != NULL;
}

int ledger_wait_oldest(struct ledger *l, uint64_t *since_ms)
{
    lock(l);
    int worker = l->waiters ? l->waiters->worker : LEDGER_NO_WORKER;
    if (l->waiters && since_ms)
        *since_ms = l->waiters->since_ms;
    unlock(l);
    return worker;
}
