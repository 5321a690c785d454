/* ledger: counts behind every cap, taken before and given back after (see ledger.h). Counters
 * move only in the takes and gives below, each one critical section under l->mu; nothing here
 * walks the pools (ledger_audit.c does, in debug builds, to prove the counters true). */
#include "ledger.h"
#include "ledger_internal.h"

#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pool.h"
#include "sluice.h"

uint64_t ledger_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static struct ledger_scope *scope_get(struct ledger_scope **head, const char *name)
{
    for (struct ledger_scope *s = *head; s; s = s->next)
        if (strcmp(s->name, name) == 0)
            return s;
    size_t len = strlen(name) + 1;
    struct ledger_scope *s = calloc(1, sizeof(*s) + len);
    if (!s)
        return NULL;
    memcpy(s->name, name, len);
    s->idle_since_ms = ledger_now_ms();
    s->next = *head;
    *head = s;
    return s;
}

/* Under the lock: does anything need scope s (ledger_scope `keys`)? A console command counted
 * in it (ledger_note_control) keeps it too: a server moving between workers compares those
 * counts, and a scope made again would start them at zero on one side only. */
static bool scope_in_use(const struct ledger_scope *s)
{
    if (s->keys > 0 || get(&s->servers) > 0 || get(&s->clients) > 0 ||
        s->paused_db != LEDGER_KEY_SERVING)
        return true;
    for (int w = 0; w < LEDGER_WORKERS; w++)
        if (s->controls_applied[w] != 0)
            return true;
    return false;
}

/* Under the lock: s (on the list at head, or NULL) is freed when nothing needs it. */
static void scope_free_if_unused(struct ledger_scope **head, struct ledger_scope *s)
{
    if (!s || scope_in_use(s))
        return;
    for (struct ledger_scope **pp = head; *pp; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            free(s);
            return;
        }
    }
}

/* Under the lock: a database scope's backends or clients went down by one; at none left its
 * idle time starts (autodb_idle_timeout). */
static void scope_note_left(struct ledger_scope *db)
{
    if (get(&db->servers) == 0 && get(&db->clients) == 0)
        db->idle_since_ms = ledger_now_ms();
}

static const struct ledger_scope *scope_find(const struct ledger_scope *head, const char *name)
{
    for (const struct ledger_scope *s = head; s; s = s->next)
        if (strcmp(s->name, name) == 0)
            return s;
    return NULL;
}

/* The state a key is in by the PAUSEs in force (ledger_db_set_state), under the lock. */
static enum ledger_key_state state_due(const struct ledger *l, const struct ledger_key *k)
{
    return l->paused_all == LEDGER_KEY_PAUSED || k->db->paused_db == LEDGER_KEY_PAUSED
               ? LEDGER_KEY_PAUSED
               : LEDGER_KEY_SERVING;
}

static struct ledger_key *key_get(struct ledger *l, const char *db_name, const char *user_name)
{
    for (struct ledger_key *k = l->keys; k; k = k->next)
        if (strcmp(k->db->name, db_name) == 0 && strcmp(k->user->name, user_name) == 0)
            return k;
    struct ledger_scope *db = scope_get(&l->dbs, db_name);
    struct ledger_scope *user = scope_get(&l->users, user_name);
    struct ledger_key *k = db && user ? calloc(1, sizeof(*k)) : NULL;
    if (!k) {
        scope_free_if_unused(&l->dbs, db);
        scope_free_if_unused(&l->users, user);
        return NULL;
    }
    k->db = db;
    k->user = user;
    db->keys++;
    user->keys++;
    /* PAUSE applies to the database or to everything: a key made later is paused too */
    atomic_store_explicit(&k->state, (int)state_due(l, k), memory_order_relaxed);
    k->next = l->keys;
    l->keys = k;
    return k;
}

struct ledger_key *ledger_key_get(struct ledger *l, const char *db_name, const char *user_name)
{
    lock(l);
    struct ledger_key *k = key_get(l, db_name, user_name);
    if (k)
        k->pools++;
    unlock(l);
    return k;
}

/* Under the lock: does anything but a pool need key? Its backends (granted slots and servers
 * on their way between workers included: they are counted in it), a wait-list entry, a claim. */
static bool key_in_use(const struct ledger *l, const struct ledger_key *k)
{
    if (k->pools > 0 || k->room_claims > 0 || get(&k->servers) > 0)
        return true;
    for (const struct ledger_waiter *w = l->waiters; w; w = w->next)
        if (w->key == k)
            return true;
    return false;
}

/* ledger_internal.h */
void ledger_key_free_if_unused(struct ledger *l, struct ledger_key *key)
{
    if (key_in_use(l, key))
        return;
    for (struct ledger_key **pp = &l->keys; *pp; pp = &(*pp)->next) {
        if (*pp == key) {
            *pp = key->next;
            break;
        }
    }
    key->db->keys--;
    key->user->keys--;
    scope_free_if_unused(&l->dbs, key->db);
    scope_free_if_unused(&l->users, key->user);
    params_free(&key->welcome);
    free(key);
}

void ledger_key_release(struct ledger *l, struct ledger_key *key)
{
    lock(l);
    assert(key->pools > 0);
    key->pools--;
    ledger_key_free_if_unused(l, key);
    unlock(l);
}

uint64_t ledger_db_idle_ms(struct ledger *l, const struct ledger_key *key, uint64_t now_ms)
{
    lock(l);
    const struct ledger_scope *db = key->db;
    uint64_t idle = get(&db->servers) > 0 || get(&db->clients) > 0 || now_ms < db->idle_since_ms
                        ? 0
                        : now_ms - db->idle_since_ms;
    unlock(l);
    return idle;
}

int ledger_usable_of(struct ledger *l, const char *db_name, const char *user_name)
{
    int usable = 0;
    lock(l);
    for (const struct ledger_key *k = l->keys; k; k = k->next) {
        if (strcmp(k->db->name, db_name) == 0 && strcmp(k->user->name, user_name) == 0) {
            usable = ledger_key_usable(k);
            break;
        }
    }
    unlock(l);
    return usable;
}

const char *ledger_key_state_name(enum ledger_key_state s)
{
    switch (s) {
    case LEDGER_KEY_SERVING:
        return "serving";
    case LEDGER_KEY_PAUSED:
        return "paused";
    }
    return "?";
}

/* The first limit that `add` more backends in key's scopes would pass. `closing`: a key one of
 * whose backends is about to go, so the scopes it shares with key count one less. own: counting
 * an auth_query connection (no pool key, no pool cap). */
enum limit_kind ledger_passed(const struct ledger *l, const struct ledger_scope *db,
                              const struct ledger_scope *user, const struct ledger_key *key,
                              const struct ledger_caps *caps, int add,
                              const struct ledger_key *closing)
{
    int key_servers = key ? get(&key->servers) : 0;
    int db_servers = db ? get(&db->servers) : 0, user_servers = user ? get(&user->servers) : 0;
    if (closing) {
        key_servers -= closing == key;
        db_servers -= closing->db == db;
        user_servers -= closing->user == user;
    }
    if (key && key_servers + add > caps->pool)
        return LIMIT_POOL;
    if (key && add > 0 && caps->awaiting_probe)
        return LIMIT_DB;
    if (caps->db > 0 && db_servers + add > caps->db)
        return LIMIT_DB;
    if (caps->user > 0 && user_servers + add > caps->user)
        return LIMIT_USER;
    if (caps->global > 0 && get(&l->servers) - (closing != NULL) + add > caps->global)
        return LIMIT_GLOBAL;
    return LIMIT_NONE;
}

static void count(struct ledger *l, struct ledger_scope *db, struct ledger_scope *user, int worker,
                  int by)
{
    int d = add(&db->servers, by), u = add(&user->servers, by), g = add(&l->servers, by);
    assert(d >= 0 && u >= 0 && g >= 0);
    (void)d, (void)u, (void)g;
    if (by < 0)
        scope_note_left(db);
    int w = share_of(worker);
    share_add(&db->share[w].servers, by);
    share_add(&user->share[w].servers, by);
    share_add(&l->share[w].servers, by);
}

/* Under the lock: one more backend of key, counted in `worker`'s share (a worker's index, or
 * LEDGER_IN_TRANSIT for a grant). */
static void take_locked(struct ledger *l, struct ledger_key *key, int worker)
{
    add(&key->servers, 1);
    share_add(&key->share[share_of(worker)], 1);
    count(l, key->db, key->user, worker, 1);
}

/* Under the lock: one backend of key leaves share `from` for share `to`; no total changes. */
static void move_share_locked(struct ledger *l, struct ledger_key *key, int from, int to)
{
    int f = share_of(from), t = share_of(to);
    share_add(&key->share[f], -1);
    share_add(&key->share[t], 1);
    struct ledger_share *scopes[][2] = {{&key->db->share[f], &key->db->share[t]},
                                        {&key->user->share[f], &key->user->share[t]},
                                        {&l->share[f], &l->share[t]}};
    for (size_t i = 0; i < sizeof(scopes) / sizeof(scopes[0]); i++) {
        share_add(&scopes[i][0]->servers, -1);
        share_add(&scopes[i][1]->servers, 1);
    }
}

/* ledger_internal.h */
bool ledger_grant_locked(struct ledger *l, const struct ledger_waiter *w)
{
    struct ledger_key *key = w->key;
    if (!w->caps_known || w->worker < 0 || w->worker >= LEDGER_WORKERS ||
        ledger_passed(l, key->db, key->user, key, &w->caps, 1, NULL) != LIMIT_NONE)
        return false;
    take_locked(l, key, LEDGER_IN_TRANSIT);
    key->granted[w->worker]++;
    add(&l->granted[w->worker], 1);
    return true;
}

/* ledger_internal.h */
int ledger_wake_for(struct ledger *l, const struct ledger_key *key, const struct ledger_scope *db,
                    const struct ledger_scope *user, int except)
{
    for (struct ledger_waiter **pp = &l->waiters; *pp; pp = &(*pp)->next) {
        struct ledger_waiter *w = *pp;
        if ((w->worker == except && w->key == key) || get(&w->key->state) == LEDGER_KEY_PAUSED ||
            !frees_for(w, key, db, user))
            continue;
        /* registered with its caps: the slot is kept for it, or it cannot use this one */
        if (w->caps_known && !ledger_grant_locked(l, w))
            continue;
        int worker = w->worker;
        *pp = w->next;
        add(&l->nwaiters, -1);
        free(w);
        return worker;
    }
    return LEDGER_NO_WORKER;
}

enum limit_kind ledger_take_server(struct ledger *l, struct ledger_key *key, int worker,
                                   const struct ledger_caps *caps)
{
    lock(l);
    enum limit_kind k;
    /* A grant was counted under the caps its waiter registered: it is used under the caps the
     * take asks with now (a reload may have lowered one since, a NN% cap may await its probe),
     * as if its own slot were free; refused, it stays until ledger_drop_grant gives it back. */
    if (worker >= 0 && worker < LEDGER_WORKERS && key->granted[worker] > 0 &&
        ledger_passed(l, key->db, key->user, key, caps, 1, key) == LIMIT_NONE) {
        key->granted[worker]--; /* kept for this worker's waiter by a give: its now */
        if (key->offered[worker] > key->granted[worker])
            key->offered[worker] = key->granted[worker];
        add(&l->granted[worker], -1);
        move_share_locked(l, key, LEDGER_IN_TRANSIT, worker);
        k = LIMIT_NONE;
    } else {
        k = ledger_passed(l, key->db, key->user, key, caps, 1, NULL);
        if (k == LIMIT_NONE)
            take_locked(l, key, worker);
    }
    unlock(l);
    return k;
}

/* Under the lock: key's backend, held in holder's share, is gone (its counts -1). */
void ledger_give_server_locked(struct ledger *l, struct ledger_key *key, int holder)
{
    int left = add(&key->servers, -1);
    assert(left >= 0);
    (void)left;
    share_add(&key->share[share_of(holder)], -1);
    count(l, key->db, key->user, holder, -1);
}

int ledger_give_server_to_holder(struct ledger *l, struct ledger_key *key, int holder)
{
    lock(l);
    ledger_give_server_locked(l, key, holder);
    unlock(l);
    return holder;
}

int ledger_give_server(struct ledger *l, struct ledger_key *key, int holder)
{
    lock(l);
    ledger_give_server_locked(l, key, holder);
    int worker = l->waiters ? ledger_wake_for(l, key, key->db, key->user, LEDGER_NO_WORKER)
                            : LEDGER_NO_WORKER;
    unlock(l);
    return worker;
}

void ledger_move_share(struct ledger *l, struct ledger_key *key, int from, int to)
{
    lock(l);
    move_share_locked(l, key, from, to);
    unlock(l);
}

/* Under the lock: another worker noted in own_waiters before this one (or at all, when this
 * one is not)? */
static bool own_turn_elsewhere(const struct ledger *l, int worker)
{
    uint64_t waiting = atomic_load_explicit(&l->own_waiters, memory_order_relaxed);
    uint64_t bit = worker >= 0 && worker < LEDGER_WORKERS ? UINT64_C(1) << worker : 0;
    uint64_t others = waiting & ~bit;
    if (!others || !(waiting & bit))
        return others != 0;
    for (int i = 0; i < LEDGER_WORKERS; i++) {
        if ((others >> i & 1) && l->own_wait_order[i] < l->own_wait_order[worker])
            return true;
    }
    return false;
}

enum limit_kind ledger_take_own(struct ledger *l, int worker, const char *db_name,
                                const char *user_name, const struct ledger_caps *caps)
{
    lock(l);
    struct ledger_scope *db = scope_get(&l->dbs, db_name);
    struct ledger_scope *user = scope_get(&l->users, user_name);
    /* out of memory: refused like a full cap; tried again later */
    uint64_t bit = worker >= 0 && worker < LEDGER_WORKERS ? UINT64_C(1) << worker : 0;
    /* The room a give made is the longest waiter's, or a worker with a queue of its own would
     * take back the connection it just gave, and the waiters woken would race for it. */
    enum limit_kind k =
        !db || !user ? LIMIT_GLOBAL
        : caps->pool > 0 && (get(&l->own_servers) + 1 > caps->pool || own_turn_elsewhere(l, worker))
            ? LIMIT_POOL
            : ledger_passed(l, db, user, NULL, caps, 1, NULL);
    if (k == LIMIT_NONE) {
        count(l, db, user, worker, 1);
        add(&l->own_servers, 1);
        share_add(&l->own_share[share_of(worker)], 1);
    }
    if (k == LIMIT_POOL) {
        if (bit && !(atomic_load_explicit(&l->own_waiters, memory_order_relaxed) & bit))
            l->own_wait_order[worker] = ++l->own_wait_next;
        atomic_fetch_or_explicit(&l->own_waiters, bit, memory_order_relaxed);
    } else {
        atomic_fetch_and_explicit(&l->own_waiters, ~bit, memory_order_relaxed);
    }
    if (k != LIMIT_NONE) { /* the names are the client's (a "*" entry's): none kept for it */
        scope_free_if_unused(&l->dbs, db);
        scope_free_if_unused(&l->users, user);
    }
    unlock(l);
    return k;
}

bool ledger_own_wanted(const struct ledger *l, int self)
{
    return ledger_own_waiters(l, self) != 0;
}

uint64_t ledger_own_waiters(const struct ledger *l, int self)
{
    uint64_t self_bit = self >= 0 && self < LEDGER_WORKERS ? UINT64_C(1) << self : 0;
    return atomic_load_explicit(&l->own_waiters, memory_order_relaxed) & ~self_bit;
}

void ledger_own_wait_done(struct ledger *l, int worker)
{
    uint64_t bit = worker >= 0 && worker < LEDGER_WORKERS ? UINT64_C(1) << worker : 0;
    if (atomic_load_explicit(&l->own_waiters, memory_order_relaxed) & bit)
        atomic_fetch_and_explicit(&l->own_waiters, ~bit, memory_order_relaxed);
}

int ledger_give_own(struct ledger *l, int holder, const char *db_name, const char *user_name)
{
    lock(l);
    struct ledger_scope *db = scope_get(&l->dbs, db_name);
    struct ledger_scope *user = scope_get(&l->users, user_name);
    assert(db && user); /* made by the take */
    int worker = LEDGER_NO_WORKER;
    if (db && user) {
        count(l, db, user, holder, -1);
        add(&l->own_servers, -1);
        share_add(&l->own_share[share_of(holder)], -1);
        worker =
            l->waiters ? ledger_wake_for(l, NULL, db, user, LEDGER_NO_WORKER) : LEDGER_NO_WORKER;
        scope_free_if_unused(&l->dbs, db);
        scope_free_if_unused(&l->users, user);
    }
    unlock(l);
    return worker;
}

enum limit_kind ledger_server_limit(const struct ledger *l, const struct ledger_key *key,
                                    const struct ledger_caps *caps)
{
    return ledger_passed(l, key->db, key->user, key, caps, 1, NULL);
}

bool ledger_fits_if_closed(const struct ledger *l, const struct ledger_key *key,
                           const struct ledger_caps *caps, const struct ledger_key *closing)
{
    return ledger_passed(l, key->db, key->user, key, caps, 1, closing) == LIMIT_NONE;
}

enum limit_kind ledger_over_limit(const struct ledger *l, const struct ledger_key *key,
                                  const struct ledger_caps *caps)
{
    return ledger_passed(l, key->db, key->user, key, caps, 0, NULL);
}

/* A counter of the scope named name in the list at head (NULL name: the global one). */
static int count_by_name(const struct ledger *l, struct ledger_scope *const *head, const char *name,
                         size_t field, const atomic_int *global)
{
    if (!name)
        return get(global);
    lock(l);
    const struct ledger_scope *s = scope_find(*head, name);
    int n = s ? get((const atomic_int *)((const char *)s + field)) : 0;
    unlock(l);
    return n;
}

int ledger_db_servers(const struct ledger *l, const char *db_name)
{
    return count_by_name(l, &l->dbs, db_name, offsetof(struct ledger_scope, servers), &l->servers);
}

int ledger_user_servers(const struct ledger *l, const char *user_name)
{
    return count_by_name(l, &l->users, user_name, offsetof(struct ledger_scope, servers),
                         &l->servers);
}

/* A lease of b taken (by 1) or given (-1) on worker: its own share, which only its thread
 * writes (a lease is taken and given on its client's worker), so a load and a store suffice
 * and no other worker's cache line is touched. */
static void lease_add(const struct worker *worker, struct budget *b, int by)
{
    assert(worker->index < BUDGET_LEASE_SHARES);
    atomic_int *share = &b->lease_share[worker->index % BUDGET_LEASE_SHARES].n;
    int n = get(share) + by;
    assert(n >= 0);
    atomic_store_explicit(share, n, memory_order_relaxed);
}

/* Under the lock: the other workers' oldest waiters of b that a lease limit holds and that
 * arrived more than LEDGER_LEASE_SLACK_MS before since_ms: the room of b's max_servers is
 * theirs first (issue 21: the longest waiter across workers goes first). */
static int older_lease_waits_elsewhere(const struct worker *worker, const struct budget *b,
                                       uint64_t since_ms)
{
    if (b->lease_waits == 0 || since_ms <= LEDGER_LEASE_SLACK_MS)
        return 0;
    int n = 0;
    for (int i = 0; i < worker->proc->nworkers && i < BUDGET_LEASE_SHARES; i++) {
        uint64_t w = b->lease_wait_since[i];
        n += i != (int)worker->index && w != 0 && w < since_ms - LEDGER_LEASE_SLACK_MS;
    }
    return n;
}

/* Under the lock (the counts); the rules are the worker's own generation's (budget.h). */
static enum limit_kind lease_limit(const struct worker *worker, const struct budget *b,
                                   uint64_t since_ms)
{
    const struct budget_set *set = worker->budgets;
    const struct budget_rule *own = budget_rule_of(set, b);
    const int nworkers = worker->proc->nworkers;
    int leases_of_b = budget_leases(b, nworkers);
    if (own && own->max_servers > 0 &&
        leases_of_b + older_lease_waits_elsewhere(worker, b, since_ms) >= own->max_servers)
        return LIMIT_BUDGET;
    int held_for_others = 0, leases = 0, any_min = 0;
    for (int i = 0; set && i < set->n; i++) {
        const struct budget_rule *o = &set->rules[i];
        int used = o->budget == b ? leases_of_b : budget_leases(o->budget, nworkers);
        leases += used;
        any_min |= o->min_servers;
        if (o->budget != b && o->min_servers > used)
            held_for_others += o->min_servers - used;
    }
    enum limit_kind key;
    /* The capacity is resolved from the pools' config only when some budget reserves. */
    if (any_min && leases + held_for_others >= budget_shared_capacity_held(worker, &key))
        return LIMIT_RESERVED;
    return LIMIT_NONE;
}

/* No budget has max_servers or min_servers: every lease is allowed, without the lock. */
static bool leases_unchecked(const struct worker *worker)
{
    return !atomic_load_explicit(&worker->proc->ledger.lease_caps, memory_order_relaxed);
}

enum limit_kind ledger_lease_limit_since(const struct worker *worker, const struct budget *b,
                                         uint64_t since_ms)
{
    if (!b || leases_unchecked(worker))
        return LIMIT_NONE;
    lock(&worker->proc->ledger);
    enum limit_kind k = lease_limit(worker, b, since_ms);
    unlock(&worker->proc->ledger);
    return k;
}

int ledger_lease_room_since(const struct worker *worker, const struct budget *b, uint64_t since_ms)
{
    if (!b || leases_unchecked(worker))
        return -1;
    const struct budget_rule *own = budget_rule_of(worker->budgets, b);
    int max = own ? own->max_servers : 0;
    lock(&worker->proc->ledger);
    int room = -1;
    if (lease_limit(worker, b, since_ms) != LIMIT_NONE)
        room = 0;
    else if (max > 0)
        room = max - budget_leases(b, worker->proc->nworkers) -
               older_lease_waits_elsewhere(worker, b, since_ms);
    unlock(&worker->proc->ledger);
    return room;
}

enum limit_kind ledger_take_lease_since(struct worker *worker, struct budget *b, uint64_t since_ms)
{
    if (!b)
        return LIMIT_NONE;
    if (leases_unchecked(worker)) { /* the per-transaction path of the default config: no lock */
        lease_add(worker, b, 1);
        return LIMIT_NONE;
    }
    lock(&worker->proc->ledger);
    enum limit_kind k = lease_limit(worker, b, since_ms);
    if (k == LIMIT_NONE)
        lease_add(worker, b, 1);
    unlock(&worker->proc->ledger);
    return k;
}

void ledger_give_lease(struct worker *worker, struct budget *b)
{
    /* no lock: a give racing a check only makes that check more cautious */
    if (b)
        lease_add(worker, b, -1);
}

/* Under the lock: worker's oldest waiter of b held by a lease limit arrived at since_ms (0:
 * it has none now). */
static void set_lease_wait(struct budget *b, int worker, uint64_t since_ms)
{
    uint64_t *entry = &b->lease_wait_since[worker];
    b->lease_waits += (since_ms != 0) - (*entry != 0);
    *entry = since_ms;
}

int ledger_note_lease_wait(struct worker *worker, struct budget *b, uint64_t since_ms)
{
    struct ledger *l = &worker->proc->ledger;
    int self = (int)(worker->index % BUDGET_LEASE_SHARES);
    if (since_ms != 0 && (b->lease_wait_since[self] == 0 || since_ms < b->lease_wait_since[self])) {
        lock(l);
        set_lease_wait(b, self, since_ms);
        unlock(l);
    }
    uint64_t bit = UINT64_C(1) << (worker->index % LEDGER_WORKERS);
    if (!(atomic_load_explicit(&l->lease_waiters, memory_order_relaxed) & bit))
        atomic_fetch_or_explicit(&l->lease_waiters, bit, memory_order_seq_cst);
    atomic_thread_fence(memory_order_seq_cst);
    /* a give just before the bit was seen: room again */
    return ledger_lease_room_since(worker, b, since_ms);
}

void ledger_lease_wait_moved(struct worker *worker, struct budget *b, uint64_t next_since_ms)
{
    int self = (int)(worker->index % BUDGET_LEASE_SHARES);
    if (b->lease_wait_since[self] == 0 || b->lease_wait_since[self] == next_since_ms)
        return; /* none noted (a waiter not held by a lease limit is not noted), or no change */
    lock(&worker->proc->ledger);
    set_lease_wait(b, self, next_since_ms);
    unlock(&worker->proc->ledger);
}

uint64_t ledger_take_lease_waiters(struct ledger *l, int self)
{
    if (!atomic_load_explicit(&l->lease_caps, memory_order_relaxed))
        return 0;
    atomic_thread_fence(memory_order_seq_cst); /* the give's count before the bits' load */
    uint64_t self_bit = UINT64_C(1) << (self % LEDGER_WORKERS);
    uint64_t others = atomic_load_explicit(&l->lease_waiters, memory_order_seq_cst) & ~self_bit;
    if (!others)
        return 0;
    return atomic_fetch_and_explicit(&l->lease_waiters, ~others, memory_order_seq_cst) & others;
}

bool ledger_take_client(struct worker *worker, struct budget *b)
{
    struct ledger *l = &worker->proc->ledger;
    const struct budget_rule *r = budget_rule_of(worker->budgets, b);
    lock(l);
    bool room = r ? ledger_take_client_held(r) : true;
    if (!r && b)
        add(&b->clients, 1);
    unlock(l);
    return room;
}

void ledger_give_client(struct ledger *l, struct budget *b)
{
    if (!b)
        return;
    lock(l);
    int left = add(&b->clients, -1);
    unlock(l);
    assert(left >= 0);
    (void)left;
}

/* Under the lock. */
static enum login_take login_take(struct ledger *l, int worker, const char *db_name,
                                  const char *user_name, const struct ledger_login_caps *caps)
{
    struct ledger_scope *db = NULL, *user = NULL;
    if (db_name) {
        db = scope_get(&l->dbs, db_name);
        user = scope_get(&l->users, user_name);
        if (!db || !user)
            return LOGIN_OUT_OF_MEMORY; /* a scope made above goes again (ledger_take_login) */
    }
    if (caps->global > 0 && get(&l->clients) >= caps->global)
        return LOGIN_OVER_CLIENT_CONN;
    if (db && caps->db > 0 && get(&db->clients) >= caps->db)
        return LOGIN_OVER_DB_CLIENTS;
    if (user && caps->user > 0 && get(&user->clients) >= caps->user)
        return LOGIN_OVER_USER_CLIENTS;
    add(&l->clients, 1);
    int w = share_of(worker);
    share_add(&l->share[w].clients, 1);
    if (db) {
        add(&db->clients, 1);
        add(&user->clients, 1);
        share_add(&db->share[w].clients, 1);
        share_add(&user->share[w].clients, 1);
    }
    return LOGIN_COUNTED;
}

enum login_take ledger_take_login(struct ledger *l, int worker, const char *db_name,
                                  const char *user_name, const struct ledger_login_caps *caps)
{
    lock(l);
    enum login_take t = login_take(l, worker, db_name, user_name, caps);
    if (t != LOGIN_COUNTED && db_name) { /* scopes made for it go again */
        scope_free_if_unused(&l->dbs, (struct ledger_scope *)scope_find(l->dbs, db_name));
        scope_free_if_unused(&l->users, (struct ledger_scope *)scope_find(l->users, user_name));
    }
    unlock(l);
    return t;
}

void ledger_give_login(struct ledger *l, int worker, const char *db_name, const char *user_name)
{
    lock(l);
    int left = add(&l->clients, -1);
    assert(left >= 0);
    (void)left;
    int w = share_of(worker);
    share_add(&l->share[w].clients, -1);
    if (db_name) {
        struct ledger_scope *db = scope_get(&l->dbs, db_name);
        struct ledger_scope *user = scope_get(&l->users, user_name);
        assert(db && user); /* made by the take */
        if (db && user) {
            int d = add(&db->clients, -1), u = add(&user->clients, -1);
            assert(d >= 0 && u >= 0);
            (void)d, (void)u;
            share_add(&db->share[w].clients, -1);
            share_add(&user->share[w].clients, -1);
            scope_note_left(db);
            scope_free_if_unused(&l->dbs, db);
            scope_free_if_unused(&l->users, user);
        }
    }
    unlock(l);
}

int ledger_db_clients(const struct ledger *l, const char *db_name)
{
    return count_by_name(l, &l->dbs, db_name, offsetof(struct ledger_scope, clients), &l->clients);
}

int ledger_user_clients(const struct ledger *l, const char *user_name)
{
    return count_by_name(l, &l->users, user_name, offsetof(struct ledger_scope, clients),
                         &l->clients);
}

void ledger_key_set_state(struct ledger *l, struct ledger_key *key, enum ledger_key_state s)
{
    lock(l); /* ordered with the wait list's wake-ups */
    atomic_store_explicit(&key->state, (int)s, memory_order_relaxed);
    unlock(l);
}

bool ledger_paused_all(struct ledger *l)
{
    lock(l);
    bool paused = l->paused_all == LEDGER_KEY_PAUSED;
    unlock(l);
    return paused;
}

void ledger_db_set_state(struct ledger *l, const char *db_name, enum ledger_key_state s)
{
    lock(l);
    if (!db_name) {
        l->paused_all = s;
        for (struct ledger_scope *db = l->dbs; db && s == LEDGER_KEY_SERVING; db = db->next)
            db->paused_db = LEDGER_KEY_SERVING; /* RESUME without a name ends every PAUSE */
    } else {
        /* the scope is made now if no key has it yet: a database without a pool so far */
        struct ledger_scope *db = scope_get(&l->dbs, db_name);
        if (db)
            db->paused_db = s;
    }
    for (struct ledger_key *k = l->keys; k; k = k->next)
        atomic_store_explicit(&k->state, (int)state_due(l, k), memory_order_relaxed);
    unlock(l);
}

enum ledger_key_state ledger_key_get_state(const struct ledger_key *key)
{
    return (enum ledger_key_state)get(&key->state);
}

void ledger_note_control(struct ledger *l, const char *db_name, int worker)
{
    assert(worker >= 0 && worker < LEDGER_WORKERS);
    if (!db_name) {
        l->controls_applied_all[worker]++;
        return;
    }
    lock(l); /* the list of scopes (a scope may be freed once unused: ledger_key_release) */
    struct ledger_scope *db = scope_get(&l->dbs, db_name);
    if (db)
        db->controls_applied[worker]++; /* this thread's own count */
    else /* out of memory: a server moving here is closed rather than escape the command */
        l->controls_applied_all[worker]++;
    unlock(l);
}

unsigned ledger_controls_seen(const struct ledger *l, const struct ledger_key *key, int worker)
{
    /* both counts only grow as a worker goes through the same sequence of commands: their sum
     * differs between two points of it exactly when either does */
    return l->controls_applied_all[worker] + key->db->controls_applied[worker];
}

void ledger_learn_usable(struct ledger *l, struct ledger_key *key, int server_usable)
{
    lock(l);
    atomic_store_explicit(&key->server_usable, server_usable, memory_order_relaxed);
    unlock(l);
}

void ledger_key_note_pool_size(struct ledger_key *key, int pool_size)
{
    if (key)
        atomic_store_explicit(&key->pool_size, pool_size > 0 ? pool_size : 0,
                              memory_order_relaxed);
}

bool ledger_largest_in_scope(struct ledger *l, const struct ledger_key *key, enum limit_kind k,
                             char *db_name, char *user_name, size_t name_size, int *most)
{
    const struct ledger_key *best = NULL;
    *most = 0;
    lock(l);
    for (const struct ledger_key *o = l->keys; o; o = o->next) {
        if ((k == LIMIT_DB && o->db != key->db) || (k == LIMIT_USER && o->user != key->user))
            continue;
        if (get(&o->servers) > *most) {
            *most = get(&o->servers);
            best = o;
        }
    }
    if (best) {
        snprintf(db_name, name_size, "%s", best->db->name);
        snprintf(user_name, name_size, "%s", best->user->name);
    }
    unlock(l);
    return best != NULL;
}

void ledger_key_share_welcome(struct ledger *l, struct ledger_key *key,
                              const struct param_set *welcome, uint64_t conninfo_fp)
{
    lock(l);
    if (!key->have_welcome) {
        if (params_copy(&key->welcome, welcome) == 0) {
            key->have_welcome = true;
            key->welcome_fp = conninfo_fp;
        } else {
            params_free(&key->welcome);
        }
    }
    unlock(l);
}

bool ledger_key_copy_welcome(struct ledger *l, struct ledger_key *key, struct param_set *out,
                             uint64_t conninfo_fp)
{
    lock(l);
    bool copied = key->have_welcome && (conninfo_fp == 0 || key->welcome_fp == conninfo_fp) &&
                  params_copy(out, &key->welcome) == 0;
    unlock(l);
    return copied;
}

void ledger_key_forget_welcome(struct ledger *l, struct ledger_key *key, uint64_t conninfo_fp)
{
    lock(l);
    if (key->have_welcome && key->welcome_fp != conninfo_fp) {
        params_free(&key->welcome);
        key->have_welcome = false;
    }
    unlock(l);
}

void ledger_free(struct ledger *l)
{
    while (l->waiters) {
        struct ledger_waiter *w = l->waiters;
        l->waiters = w->next;
        free(w);
    }
    while (l->keys) {
        struct ledger_key *k = l->keys;
        l->keys = k->next;
        params_free(&k->welcome);
        free(k);
    }
    struct ledger_scope **heads[] = {&l->dbs, &l->users};
    for (size_t i = 0; i < sizeof(heads) / sizeof(heads[0]); i++) {
        while (*heads[i]) {
            struct ledger_scope *s = *heads[i];
            *heads[i] = s->next;
            free(s);
        }
    }
    pthread_mutex_destroy(&l->mu);
    memset(l, 0, sizeof(*l)); /* zeroed: ready again (ledger.h) */
}

_Static_assert(SLUICE_MAX_WORKERS <= LEDGER_WORKERS, "a share for every worker the key allows");
_Static_assert(SLUICE_MAX_WORKERS <= BUDGET_LEASE_SHARES,
               "a budget's lease share for every worker");

enum limit_kind ledger_pool_limit(const struct pool *p, bool use_reserve)
{
    struct ledger_caps caps;
    budget_server_caps(p, use_reserve, &caps);
    return ledger_server_limit(&p->worker->proc->ledger, p->ledger_key, &caps);
}

bool ledger_pool_fits_if_closed(const struct pool *p, const struct pool *closing)
{
    struct ledger_caps caps;
    budget_server_caps(p, false, &caps);
    return ledger_fits_if_closed(&p->worker->proc->ledger, p->ledger_key, &caps,
                                 closing->ledger_key);
}

enum limit_kind ledger_pool_over_limit(const struct pool *p)
{
    struct ledger_caps caps;
    budget_server_caps(p, true, &caps);
    return ledger_over_limit(&p->worker->proc->ledger, p->ledger_key, &caps);
}
