/* ledger: the one owner of the counts that caps compare against. A backend takes a slot here
 * before it is opened, and a server is leased to a budget's client only after the lease was
 * taken here: never after. The ledger counts; budget.c resolves the caps (config, NN% against
 * max_connections) and hands them in; pool.c and auth_query decide what to open or close.
 *
 * Counted:
 *   per pool key (database, user)   backends in every state, connecting and leaving included
 *   per database / per user         the pools' backends plus auth_query's own connections
 *   global                          all of them (max_server_connections)
 *   per budget                      leases (servers linked to its clients) and logged-in clients
 *                                   (struct budget's `lease_share`, `clients`: written here only)
 *   logged-in clients               globally (max_client_conn, the admin console's included), per
 *                                   database and per user (max_db_client_connections,
 *                                   max_user_client_connections; by the client's own user name,
 *                                   not a database's forced user=)
 *
 * Threads (docs/architecture.md 5.3): one mutex, ledger->mu, guards the ledger. Every take and
 * give below is one critical section, so a take checks all its limits and bumps all its
 * counters atomically with respect to the others; so are the wait list, the paused state and
 * the learnt server_usable. The counters are atomics written only under the lock, so that
 * the read-only questions of the per-transaction path (ledger_server_limit,
 * ledger_over_limit, a pool key's `servers`, ledger_key_get_state) read them with relaxed loads
 * and no lock: an answer there is a hint, and whatever acts on it takes under the lock. Reads by
 * name (ledger_db_servers and the like, for SHOW and /health) walk the lists under the lock.
 * Leases (per transaction) take the lock only while some budget has max_servers or
 * min_servers (ledger_set_lease_caps); otherwise a lease is one relaxed atomic add, and a give
 * never locks (giving back can only make a concurrent check more cautious).
 * A zeroed struct ledger is ready: its mutex is the default one (PTHREAD_MUTEX_INITIALIZER is
 * all zero bytes on glibc and musl; test_ledger.c checks it). */
#ifndef SLUICE_LEDGER_H
#define SLUICE_LEDGER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "budget.h"
#include "params.h"
#include "siphash.h"

struct worker;

/* ---- Shares: each worker's part of every count (5.6, 5.12 item 6) ----
 * Every take and give names the worker it counts for (its index), and in the same critical
 * section moves that worker's share of each counter it moves: so a worker can prove its own
 * share against its own lists on its own thread (ledger_audit), and each counter equals the sum
 * of its shares at every instant the lock is free. A share is written only under the lock (a
 * load and a store, no locked instruction: the lock orders writers) and read under it. Share
 * LEDGER_IN_TRANSIT holds the servers on their way between workers (ledger_move_share). */
#define LEDGER_WORKERS 64                /* the workers key's range (SLUICE_MAX_WORKERS) */
#define LEDGER_IN_TRANSIT LEDGER_WORKERS /* a share of no worker: servers in a mailbox */
#define LEDGER_SHARES (LEDGER_WORKERS + 1)

struct ledger_share {
    atomic_int servers; /* backends of this scope the worker holds (auth_query's included) */
    atomic_int clients; /* logged-in clients of this scope on the worker */
};

/* May the workers hand out servers of a pool key (its database, everything) now? */
enum ledger_key_state {
    LEDGER_KEY_SERVING = 0,
    LEDGER_KEY_PAUSED, /* PAUSE: no worker hands out a server of this key (5.7) */
};
const char *ledger_key_state_name(enum ledger_key_state s);

/* A database or a user: the backends and the logged-in clients counted under its caps. */
struct ledger_scope {
    struct ledger_scope *next;
    /* A database's scope: PAUSE db (ledger_db_set_state), under the lock. Its keys, and those
     * made later, are paused while it or the ledger's paused_all says so. */
    enum ledger_key_state paused_db;
    /* A database's scope: the console commands naming it that act on its servers, as each
     * worker has applied them (ledger_note_control); element i is worker i's, written and read
     * on its thread only. */
    unsigned controls_applied[LEDGER_WORKERS];
    atomic_int servers;
    atomic_int clients;
    struct ledger_share share[LEDGER_SHARES];
    /* Under the lock: the keys that name it. A scope no key names, with no backend, no client,
     * no PAUSE and no console command counted is freed (scope_free_if_unused): names a client
     * chooses (a "*" entry's databases, auth_query's database) must not pile up. */
    int keys;
    /* A database's scope, under the lock: when its last backend or logged-in client went (or
     * it was made); the "*" entry's databases are freed after autodb_idle_timeout of this. */
    uint64_t idle_since_ms;
    char name[];
};

/* The circuit breaker's process-wide part for one pool key (5.10, ledger_breaker.c): the
 * failures in a row, the backoff and the one attempt in flight while the database is down, so
 * that N workers make the connection attempts (and log the lines) one pooler would. Written under
 * mu; `failures` and `down` are also read lock-free (a hint: what acts on it asks under mu).
 * All times CLOCK_MONOTONIC (ledger_now_ms). Zeroed: closed, nothing claimed. */
struct ledger_breaker {
    atomic_int failures;     /* connection attempts of this key failed in a row, every worker's */
    atomic_bool down;        /* failed while its pool had no server: clients fail fast (57P03) */
    uint64_t next_try_ms;    /* no attempt of any worker before this */
    uint64_t claim_until_ms; /* while failures > 0: the one attempt in flight, until it reports
                              * or this passes (a claim whose attempt never started expires) */
    int claimer;             /* the worker holding that claim */
    uint64_t down_since_ms;
    char last_error[512]; /* the database's reason for the last failed attempt */
    /* When that attempt was refused for good (a role that may not log in, a wrong password:
     * ledger_breaker_report): the server's SQLSTATE and message, which every worker's waiters
     * get (its own pool's get them at once, pool_breaker.c); "" otherwise. */
    char refusal_sqlstate[6];
    char refusal_message[512];
};

/* A pool key (database, user): with workers, the pools of that key on every worker share it. */

struct ledger_key {
    struct ledger_key *next;
    struct ledger_scope *db, *user; /* set before the key is published; never change */
    atomic_int servers;
    atomic_int state;                /* enum ledger_key_state */
    atomic_int server_usable;        /* max_connections - superuser_reserved_connections, as last
                                      * learnt by any worker's pool of this key; 0: not yet */
    atomic_int share[LEDGER_SHARES]; /* `servers` held by each worker (and in transit) */
    /* The pool_size in force for the key's pools (written by each worker's pool as it applies
     * its config, relaxed; every worker's pool of a key applies the same config, so they agree
     * once a reload is through); 0: no pool (yet), or the admin console's. The budgets' shared
     * capacity (budget_shared_capacity) sums it over every key, whatever worker has the pool. */
    atomic_int pool_size;
    /* What a server of this key reported at login, as the first worker's pool to learn it kept
     * it (pool.h `welcome`); under mu. Another worker's first client is welcomed from it
     * instead of waiting for a server of its own worker. */
    struct param_set welcome;
    bool have_welcome;
    uint64_t welcome_fp; /* conninfo_fingerprint of the server it was learnt from */
    struct ledger_breaker breaker;
    /* Slots a give took for worker i's registered waiter of this key (ledger_wake_for, under
     * mu): counted in every scope, in the LEDGER_IN_TRANSIT share, until that worker's next
     * take of the key finds one (ledger_take_server) or drops it (ledger_drop_grant). */
    int granted[LEDGER_WORKERS];
    /* Of granted[i], those worker i held when its dispatch under way began (ledger_offer_grants):
     * the ones its end may drop. A grant made since waits for the next dispatch. */
    int offered[LEDGER_WORKERS];
    /* One log for the process, whatever the workers (5.6): a pool of the key was made and
     * logged "pool ... created" (the first worker's, pool.c), and the hash of the last "at most
     * N servers" line (budget_log_cap) and of the last "server allows N connections" line
     * (server_connect.c) logged: each is logged when it changes (ledger_key_line_is_new). */
    atomic_bool pool_logged;
    _Atomic uint64_t cap_line_logged;
    _Atomic uint64_t usable_line_logged;
    /* Under the lock, what keeps the key besides its counts (ledger_key_release): the pools of
     * it on every worker, and the servers closing for a waiter of it on another worker (a
     * LEDGER_CLAIM_CLOSE, until its ledger_give_server_for or ledger_room_unused). */
    int pools;
    int room_claims;
};

/* The caps one more backend of a key must fit under, resolved by budget.c (0: no such cap). */
struct ledger_caps {
    int pool;   /* pool_size, + reserve_pool_size when the reserve is in play */
    int db;     /* max_db_connections */
    int user;   /* max_user_connections */
    int global; /* max_server_connections */
    /* NN% caps are not resolved yet and a server of this key is learning max_connections: one
     * at a time until it has (binds as LIMIT_DB, after the pool's own size). */
    bool awaiting_probe;
};

/* A worker that cannot take a slot: the arrival time of its oldest waiter for a slot of key. */
struct ledger_waiter {
    struct ledger_waiter *next; /* oldest first */
    struct ledger_key *key;
    enum limit_kind scope; /* the cap that held it: LIMIT_POOL, _DB, _USER or _GLOBAL */
    int worker;
    uint64_t since_ms; /* CLOCK_MONOTONIC (ledger_now_ms), comparable across workers */
    /* The idle-server handover (5.4, handover.c): the servers its waiters still need (set by
     * the waiting worker), and those on their way to it (moved, or a slot being freed for it:
     * counted by ledger_claim_idle, given back by ledger_wait_arrived and the give that frees
     * the slot). Other workers answer only while coming < want. */
    int want, coming;
    struct ledger_caps caps; /* the caps its last take failed under (a close must make room) */
    bool caps_known;
    /* Session mode: the startup fingerprint its oldest waiter wants (a server opened with other
     * parameters is closed for it, not moved); 0 in the other modes, as every server's. */
    uint64_t startup_fp;
    /* Session mode: servers another worker closed for its oldest waiter (ledger_claim_older's
     * CLOSE), and of those the ones whose slot is free now. Kept until the worker registers
     * again: a close per such waiter, not one per release while its worker takes the slot. */
    int rooms, rooms_freed;
    /* Session mode: servers its own worker closed for a waiter it names (ledger_wait_room_here)
     * since it registered; other workers close none for it meanwhile. Its worker registers again
     * at once, naming the next waiter without one. */
    int rooms_here;
};

struct ledger {
    pthread_mutex_t mu; /* one critical section per take, give, wait or switch */
    struct ledger_key *keys;
    struct ledger_scope *dbs, *users;
    struct ledger_waiter *waiters; /* the cross-worker FIFO for slots, oldest first */
    atomic_int nwaiters;           /* entries on it: the lock-free hint ledger_has_waiters reads */
    atomic_int servers;            /* every backend: pools' and auth_query's */
    atomic_int own_servers;        /* auth_query's connections, of `servers` */
    atomic_int clients;            /* logged-in clients, the admin console's included */
    enum ledger_key_state paused_all; /* PAUSE without a database (under the lock) */
    unsigned controls_applied_all[LEDGER_WORKERS]; /* ledger_note_control's without a database */
    atomic_bool lease_caps; /* some budget has max_servers or min_servers: leases are checked */
    /* Bit i: worker i has a waiter its budget's lease limit holds (ledger_note_lease_wait). */
    _Atomic uint64_t lease_waiters;
    struct ledger_share share[LEDGER_SHARES]; /* `servers` and `clients` per worker */
    atomic_int own_share[LEDGER_SHARES];      /* `own_servers` per worker */
    /* Bit i: worker i has a lookup that the process-wide cap on auth_query's connections held
     * back at its last take (ledger_take_own sets it, its next take that passes takes it off).
     * Another worker's idle auth_query connection gives way to it (ledger_own_wanted). */
    _Atomic uint64_t own_waiters;
    /* Under the lock: when each worker noted in own_waiters was noted (smaller: waiting
     * longer), from own_wait_next; the room a give makes is the longest waiter's. */
    uint64_t own_wait_order[LEDGER_WORKERS];
    uint64_t own_wait_next;
    /* Element i: the slots granted to worker i, every key's (written under the lock; read
     * lock-free by ledger_drop_grant, after the wake-up that follows each grant). */
    atomic_int granted[LEDGER_WORKERS];
};

/* The entry of a pool key for a new pool of it (on any worker), made on first use: the pool
 * holds it until ledger_key_release (or ledger_free). NULL: out of memory. */
struct ledger_key *ledger_key_get(struct ledger *l, const char *db_name, const char *user_name);
/* A pool of key was freed (autodb_idle_timeout): its hold ends. The key is freed with the last
 * hold when nothing else needs it (no backend, grant, waiter or claim of it), and so are its
 * scopes that nothing needs any more; a key still needed is kept, and ledger_key_get hands it
 * to the next pool of it. */
void ledger_key_release(struct ledger *l, struct ledger_key *key);
/* How long key's database has had no backend and no logged-in client, on any worker (0: it
 * has one now); now_ms by ledger_now_ms. */
uint64_t ledger_db_idle_ms(struct ledger *l, const struct ledger_key *key, uint64_t now_ms);
/* The usable connections learnt for pool key (db_name, user_name) (0: none, or no such key). */
int ledger_usable_of(struct ledger *l, const char *db_name, const char *user_name);

/* One more backend of key under caps for worker (its index; the share it counts in):
 * LIMIT_NONE and every counter of key +1 in one step, or the first limit it would pass (pool,
 * db, user, global, in that order) and nothing changed. A slot a give granted to worker for key
 * (ledger_give_server) is taken first when caps allow it as if its slot were free (a reload may
 * have lowered a cap since it was granted): LIMIT_NONE, the slot moving from the transit share
 * to worker's, no count changing; refused, the grant stays for ledger_drop_grant. */
enum limit_kind ledger_take_server(struct ledger *l, struct ledger_key *key, int worker,
                                   const struct ledger_caps *caps)
    __attribute__((warn_unused_result));
/* A backend of key held in holder's share (a worker's index; LEDGER_IN_TRANSIT: one lost on its way
 * between workers) is gone (closed; a LEAVING one once its backend has exited). Returns the worker
 * to wake for the slot it frees (the oldest entry of the wait list that this slot can serve, taken
 * off the list), or LEDGER_NO_WORKER. When that entry registered its caps (ledger_wait_need) the
 * slot is granted to it in the same step: taken again for the entry's key under its caps
 * (entries it does not fit are passed over), so that no younger take, on the giving worker or
 * a third, gets it before the woken worker's own take (ledger_take_server). */
int ledger_give_server(struct ledger *l, struct ledger_key *key, int holder);
/* As ledger_give_server, for a backend its own worker closed to make room for one of that worker's
 * waiters (server_close_for's room_for): no other worker's entry is woken or taken off the list,
 * since the slot is that waiter's (its worker's next dispatch takes it). Returns holder. */
int ledger_give_server_to_holder(struct ledger *l, struct ledger_key *key, int holder);
/* The idle-server handover (5.4): one backend of key leaves share `from` for share `to` (a
 * worker's index or LEDGER_IN_TRANSIT) in one step; no total changes, so no cap is checked and
 * nobody is woken. A handover moves it twice so that each worker's audit stays exact while the
 * server sits in a mailbox: the sender, on its thread as it takes the server off its lists,
 * from itself to LEDGER_IN_TRANSIT; the receiver, on its thread as it puts it on its pool's
 * lists, from LEDGER_IN_TRANSIT to itself. A server dropped with its message is given back with
 * ledger_give_server(l, key, LEDGER_IN_TRANSIT). */
void ledger_move_share(struct ledger *l, struct ledger_key *key, int from, int to);
/* auth_query's own connection to database entry db_name as user_name, opened by worker:
 * counted in the database, the user and globally like a pool's backend. caps->pool is the cap
 * on auth_query's connections in the whole process, every worker's and every database's
 * (`own_servers`; 0: none): passing it is LIMIT_POOL, and worker is noted in `own_waiters`
 * until a take of its passes; a give of an auth_query connection wakes it (ledger_own_waiters).
 * The room a give makes is the longest waiter's: a worker refused while one noted before it
 * (or noted at all, when it is not) waits; a give wakes every noted worker and the one whose
 * turn it is takes it. Refused by another cap, a worker is no longer noted (it does not wait for
 * this cap's room, and must not hold the others back). */
enum limit_kind ledger_take_own(struct ledger *l, int worker, const char *db_name,
                                const char *user_name, const struct ledger_caps *caps)
    __attribute__((warn_unused_result));
int ledger_give_own(struct ledger *l, int holder, const char *db_name, const char *user_name);
/* Lock-free hint: does a worker other than self have a lookup held back by the process-wide cap
 * on auth_query's connections (an idle one of self's should close for it)? */
bool ledger_own_wanted(const struct ledger *l, int self);
/* An auth_query connection was given back on worker self: the other workers whose lookups the
 * cap held back (to wake: worker_wake). A refusal before the give is seen here (both under the
 * lock's order); one after it saw the room taken by another. Their bits stay until their take
 * passes, or ledger_own_wait_done. */
uint64_t ledger_own_waiters(const struct ledger *l, int self);
/* Worker has no lookup the cap holds back any more (served, or its clients left). */
void ledger_own_wait_done(struct ledger *l, int worker);

/* Read-only questions, same order of limits as a take. */
/* Would one more backend of key fit (ledger_take_server without taking)? */
enum limit_kind ledger_server_limit(const struct ledger *l, const struct ledger_key *key,
                                    const struct ledger_caps *caps);
/* Would one more backend of key fit if a backend of `closing` were gone? */
bool ledger_fits_if_closed(const struct ledger *l, const struct ledger_key *key,
                           const struct ledger_caps *caps, const struct ledger_key *closing);
/* Does key hold more backends than a cap allows (a reload lowered it)? The first such cap. */
enum limit_kind ledger_over_limit(const struct ledger *l, const struct ledger_key *key,
                                  const struct ledger_caps *caps);
/* Backends of a database / a user (NULL: all of them), auth_query's included. */
int ledger_db_servers(const struct ledger *l, const char *db_name);
int ledger_user_servers(const struct ledger *l, const char *user_name);

/* Leases of budget b: may a client of b that began to wait at since_ms (ledger_now_ms) be
 * given a server now (b's max_servers, and the servers left must still cover every other
 * budget's unused min_servers)? The numbers are the rules of the worker's own budget generation
 * (worker->budgets); the counts are read under the lock. The room of b's max_servers goes to
 * the longest waiter across workers first: each other worker's oldest waiter of b that a lease
 * limit held (ledger_note_lease_wait) and that arrived more than LEDGER_LEASE_SLACK_MS before
 * since_ms holds one lease of the room for itself (since_ms 0: none is older). */
#define LEDGER_LEASE_SLACK_MS 5
enum limit_kind ledger_lease_limit_since(const struct worker *worker, const struct budget *b,
                                         uint64_t since_ms);
/* How many more servers a client of b that began to wait at since_ms may be given now: 0 when
 * held back, -1 when only the other limits bound it. */
int ledger_lease_room_since(const struct worker *worker, const struct budget *b, uint64_t since_ms);
/* Take a lease for a client of b (waiting since since_ms) before it is given a server:
 * LIMIT_NONE and worker's share of b's leases + 1, or the binding limit and nothing changed.
 * b NULL: nothing to count. A lease is given back on the worker that took it (its client's),
 * the only thread that writes its share. */
enum limit_kind ledger_take_lease_since(struct worker *worker, struct budget *b, uint64_t since_ms)
    __attribute__((warn_unused_result));
/* The same for a client no other worker's waiter comes before (since_ms 0): one worker. */
static inline enum limit_kind ledger_lease_limit(const struct worker *worker,
                                                 const struct budget *b)
{
    return ledger_lease_limit_since(worker, b, 0);
}
static inline int ledger_lease_room(const struct worker *worker, const struct budget *b)
{
    return ledger_lease_room_since(worker, b, 0);
}
__attribute__((warn_unused_result)) static inline enum limit_kind
ledger_take_lease(struct worker *worker, struct budget *b)
{
    return ledger_take_lease_since(worker, b, 0);
}
/* Lock-free: are leases checked at all (some budget has max_servers or min_servers)? When not,
 * a caller need not compute a waiter's since_ms for the calls above. */
static inline bool ledger_leases_checked(const struct ledger *l)
{
    return atomic_load_explicit(&l->lease_caps, memory_order_relaxed);
}
void ledger_give_lease(struct worker *worker, struct budget *b);
/* With workers, a lease given back on one worker may be the room a waiter on another was held
 * for (its budget's max_servers, or another budget's min_servers): that worker is woken at once,
 * as one worker wakes its own pools (link.c), not at its next tick. A worker whose waiter found
 * no lease room notes it (a lock-free bit, set only when not set yet); a give of a lease takes
 * the other workers' bits off (the ones to wake: worker_wake), and nothing when leases are not
 * checked. Both sides fence, so that a waiter noting itself just after a give's take either is
 * seen by the give or sees the room on its check again (ledger_note_lease_wait returns the
 * room then, as ledger_lease_room). The note also keeps since_ms, the arrival of the waiter, as
 * worker's oldest waiter of b (budget.h's lease_wait_since: the other workers' younger waiters
 * leave it a lease of b's room, ledger_lease_limit) until ledger_lease_wait_moved replaces it. */
int ledger_note_lease_wait(struct worker *worker, struct budget *b, uint64_t since_ms);
/* A waiter of b on worker left its queue (served, or gone): worker's oldest waiter of b is now
 * the one that arrived at next_since_ms (0: none). No lock unless worker had one noted. */
void ledger_lease_wait_moved(struct worker *worker, struct budget *b, uint64_t next_since_ms);
uint64_t ledger_take_lease_waiters(struct ledger *l, int self);
/* A client of b logs in: false when b has max_clients (its rule in worker's generation)
 * connected (nothing changed). */
bool ledger_take_client(struct worker *worker, struct budget *b)
    __attribute__((warn_unused_result));
/* The same, the caller holding the ledger's lock (budget_join). Inline, as the other accessors
 * budget.c uses (ledger_lock, ledger_key_usable, ...): budget.c is below ledger.c, which asks it
 * for the caps (budget_server_caps), so it calls nothing of ledger.c's (scripts/deps). */
__attribute__((warn_unused_result)) static inline bool
ledger_take_client_held(const struct budget_rule *r)
{
    if (!r)
        return true;
    bool room = !(r->max_clients > 0 &&
                  atomic_load_explicit(&r->budget->clients, memory_order_relaxed) >=
                      r->max_clients);
    if (room)
        atomic_fetch_add_explicit(&r->budget->clients, 1, memory_order_relaxed);
    return room;
}
void ledger_give_client(struct ledger *l, struct budget *b);

/* The caps a logged-in client counts under, resolved by client_login.c (0: no such cap). */
struct ledger_login_caps {
    int global; /* max_client_conn */
    int db;     /* max_db_client_connections */
    int user;   /* max_user_client_connections */
};
/* What ledger_take_login did: counted, or the first cap it would pass (in this order). */
enum login_take {
    LOGIN_COUNTED,
    LOGIN_OVER_CLIENT_CONN,  /* max_client_conn */
    LOGIN_OVER_DB_CLIENTS,   /* max_db_client_connections */
    LOGIN_OVER_USER_CLIENTS, /* max_user_client_connections */
    LOGIN_OUT_OF_MEMORY,     /* no entry for a new database or user name */
};
/* A client of worker logs in to database db_name as user_name (its own name): LOGIN_COUNTED
 * and the global, database and user counts (and worker's shares) +1 in one step, or why not and
 * nothing changed. db_name and user_name NULL: an admin console client, counted globally only
 * (caps->db, ->user ignored). */
enum login_take ledger_take_login(struct ledger *l, int worker, const char *db_name,
                                  const char *user_name, const struct ledger_login_caps *caps)
    __attribute__((warn_unused_result));
/* The client of a take is leaving (the same worker and names). */
void ledger_give_login(struct ledger *l, int worker, const char *db_name, const char *user_name);
/* Logged-in clients of a database / a user (NULL: all of them, the console's included). */
int ledger_db_clients(const struct ledger *l, const char *db_name);
int ledger_user_clients(const struct ledger *l, const char *user_name);

/* ---- Fairness across workers (5.3): the wait list for slots ----
 * A worker whose waiter could not take a slot registers (key, worker, the cap that held it,
 * the oldest waiter's arrival time); one entry per (key, worker), updated in place. A give
 * names the oldest registered worker whose slot it frees (same key for LIMIT_POOL, same
 * database or user, anyone for LIMIT_GLOBAL; paused keys are passed over) and takes that entry
 * off: the worker, woken through its mailbox, takes again and registers again if still held.
 * An entry registered with its caps is granted the slot in the give itself (ledger_give_server),
 * so that its worker's take, not a younger one elsewhere, gets it.
 * Within one worker the order stays the pool's own (pool.c's FIFO,
 * pool_longer_waiter_elsewhere). */
#define LEDGER_NO_WORKER (-1)
/* CLOCK_MONOTONIC in ms: the one clock arrival times are compared in (uv_now is per loop). */
uint64_t ledger_now_ms(void);
/* 0, or -ENOMEM (nothing registered: the worker finds the slot at its next tick). */
int ledger_wait_slot(struct ledger *l, struct ledger_key *key, int worker, enum limit_kind scope,
                     uint64_t since_ms) __attribute__((warn_unused_result));
/* The same, for the idle-server handover (5.4): want, the servers its waiters need (>= 1);
 * caps, those the take failed under (NULL: unknown; then a close for it is not checked);
 * startup_fp, the startup fingerprint its oldest waiter wants (pool_startup_wanted).
 * Returns 1 when the entry is new (the caller tells the other workers: worker_post_need), 0
 * when an entry was updated (want and caps replaced, coming kept), or -ENOMEM. */
int ledger_wait_need(struct ledger *l, struct ledger_key *key, int worker, enum limit_kind scope,
                     uint64_t since_ms, int want, const struct ledger_caps *caps,
                     uint64_t startup_fp) __attribute__((warn_unused_result));
/* Session mode: worker wants to close one of its own servers of key for a waiter without one,
 * the `unprovided`-th (rooms_awaited of its closes already on their way count first).
 * Whether it should: not when the servers other workers are closing for (key, worker)'s oldest
 * waiter make room enough. When it should, the entry notes the close in the same critical
 * section (rooms_here), so that no other worker's ledger_claim_older closes one too for the
 * waiter it names before the worker registers again (a check then a note would let both close:
 * two backends for one waiter). No entry: true, nothing noted. */
bool ledger_wait_room_here(struct ledger *l, const struct ledger_key *key, int worker,
                           int unprovided, int rooms_awaited);
/* Worker's dispatch begins (pool_dispatch_all): the grants it holds now are those its end may
 * drop (ledger_drop_grant); one a give makes meanwhile, perhaps after its take of that key
 * ran, waits for the next dispatch (the wake-up that follows the grant). A relaxed load, no
 * lock, when it holds none. */
void ledger_offer_grants(struct ledger *l, int worker);
/* After worker's dispatch (pool_dispatch_all): one slot granted to it before the dispatch began
 * (ledger_offer_grants) that its takes did not use (its waiters were served otherwise, left, or
 * wait for something else) is given back, and goes on to the oldest entry it serves but
 * worker's own of that key, granted to it as a give does (*wake: that worker, to wake, worker
 * itself when its entry of another key is the oldest, a grant for its next dispatch; else
 * LEDGER_NO_WORKER). false: none left to drop (a relaxed load, no lock, when worker holds no
 * grant). Called until false. */
bool ledger_drop_grant(struct ledger *l, int worker, int *wake);
/* The worker no longer waits for a slot of key (its waiters were served or left). */
void ledger_wait_done(struct ledger *l, struct ledger_key *key, int worker);
/* The worker whose registered waiter is the oldest (LEDGER_NO_WORKER: none); *since_ms its
 * arrival time. Changes nothing. */
int ledger_wait_oldest(struct ledger *l, uint64_t *since_ms);

/* Lock-free hint (a relaxed load): does any worker wait for a slot? The idle-server handover
 * asks it when a server goes idle with workers > 1; what acts on it asks again under the lock. */
static inline bool ledger_has_waiters(const struct ledger *l)
{
    return atomic_load_explicit(&l->nwaiters, memory_order_relaxed) > 0;
}

/* ---- The idle-server handover (5.4): what a worker holding an idle server of key does ----
 * The oldest entry of another worker (paused keys passed over) that such a server serves:
 * LEDGER_CLAIM_MOVE when the entry is of key itself (the server moves there with its slot),
 * LEDGER_CLAIM_CLOSE when its scope is a cap key shares (database, user, global) and closing
 * one backend of key leaves room for the entry's key under its caps (the server closes and the
 * slot goes to that worker: ledger_give_server_for). Either way the entry's `coming` + 1, and
 * entries with coming >= want are passed over. LEDGER_CLAIM_NONE: nobody. */
enum ledger_claim_kind { LEDGER_CLAIM_NONE, LEDGER_CLAIM_MOVE, LEDGER_CLAIM_CLOSE };
struct ledger_claim {
    enum ledger_claim_kind kind;
    int worker;             /* the waiting worker */
    struct ledger_key *key; /* its key (CLOSE: the slot is freed for it) */
};
struct ledger_claim ledger_claim_idle(struct ledger *l, struct ledger_key *key, int self);
/* Fairness of the longest waiter (5.3): the oldest entry of key itself (paused keys passed
 * over, coming < want) of another worker whose waiter arrived more than slack_ms before
 * since_ms (the asking worker's oldest waiter), its coming + 1: the server (opened with
 * startup_fp) moves there (LEDGER_CLAIM_MOVE) instead of serving a local waiter; when that
 * entry's oldest waiter wants other startup parameters (session mode) and nothing is on its
 * way to it yet, the server closes and its slot goes there (LEDGER_CLAIM_CLOSE: once per such
 * waiter, as a close for it on its own worker would be). LEDGER_CLAIM_NONE: none waited that
 * much longer. next_since_ms (0: none or unknown): the arrival of the asking worker's waiter
 * after that one, which its own entry of key (if any) takes when the local waiter is served,
 * so the entry stays its oldest waiter's. An entry of another key held by a cap key shares
 * (database, user, global) that closing a backend of key makes room for under its caps is
 * served the same way (LEDGER_CLAIM_CLOSE, its coming + 1), as pool_longer_waiter_elsewhere
 * serves one worker's pools: the first such entry, oldest first, wins. */
struct ledger_claim ledger_claim_older(struct ledger *l, struct ledger_key *key, int self,
                                       uint64_t since_ms, uint64_t slack_ms, uint64_t next_since_ms,
                                       uint64_t startup_fp);
/* A server claimed for (key, worker) arrived there, or will not come: its entry's coming - 1. */
void ledger_wait_arrived(struct ledger *l, struct ledger_key *key, int worker);
/* A server claimed to close for (key, worker) (LEDGER_CLAIM_CLOSE) closed at once, its slot
 * given back plainly: as ledger_wait_arrived, and the claim no longer keeps key. */
void ledger_room_unused(struct ledger *l, struct ledger_key *key, int worker);
/* As ledger_give_server, for a backend closed to free a slot for (room_key, room_worker)
 * (LEDGER_CLAIM_CLOSE): that entry's coming - 1, and that worker is the one woken while its
 * entry is still there, the slot granted to it when it fits its caps (else the oldest entry the
 * slot serves, as a plain give). */
int ledger_give_server_for(struct ledger *l, struct ledger_key *key, int holder,
                           struct ledger_key *room_key, int room_worker);

/* PAUSE / RESUME of a pool key on every worker at once (5.7). */
void ledger_key_set_state(struct ledger *l, struct ledger_key *key, enum ledger_key_state s);
/* The console's PAUSE, KILL and RESUME (control.c), before the workers hear of it, as PgBouncer
 * keeps them: on the database (db_name), or on every database (NULL), not on the keys of the
 * moment, so a key made later (a user, or a database, that had no pool yet) starts paused while
 * its database or everything is. A key is paused while either says so: RESUME db leaves a
 * PAUSE without a name in force; RESUME without a name ends both (sluice's, where PgBouncer
 * would refuse it while only databases are paused). */
void ledger_db_set_state(struct ledger *l, const char *db_name, enum ledger_key_state s);
/* Is a PAUSE without a database in force (which only RESUME without one ends)? Takes the lock:
 * for messages, not for the path of a query. */
bool ledger_paused_all(struct ledger *l);
/* Lock-free (a relaxed load): may a worker hand out a server of key now? */
enum ledger_key_state ledger_key_get_state(const struct ledger_key *key);

/* On worker's own thread (its index), as it applies a console command that acts on servers
 * (PAUSE, RECONNECT, KILL) of db_name (NULL: every database): counted for that worker. Every
 * worker applies the console's commands in the same order, so two workers' counts for a key
 * (ledger_controls_seen) are equal exactly when no such command concerning the key's database
 * lies between the points each has reached: a server handed over carries its sender's count
 * and compares it with the receiver's on arrival (handover.c), so a command about another
 * database or a RESUME never concerns it. */
void ledger_note_control(struct ledger *l, const char *db_name, int worker);
/* On worker's own thread: the commands ledger_note_control counted for worker that concern
 * key's servers (those naming its database, and those naming none). */
unsigned ledger_controls_seen(const struct ledger *l, const struct ledger_key *key, int worker);

/* ---- What is process-wide behind the caps (5.3: "the resolved caps held in the ledger") ----
 * A pool learnt the server's usable connections (server_probe_sql): every worker's pool of key
 * resolves its NN% caps against this one number. */
void ledger_learn_usable(struct ledger *l, struct ledger_key *key, int server_usable);
/* The usable connections behind key's NN% caps (0: not learnt yet). Lock-free. */
static inline int ledger_key_usable(const struct ledger_key *key)
{
    return key ? atomic_load_explicit(&key->server_usable, memory_order_relaxed) : 0;
}
/* Every worker's pool of a key computes the same log line: true for the first to compute line
 * after it changed, who logs it; *last_logged (one of the key's *_line_logged) remembers it.
 * Lock-free; inline, as budget.c (below ledger.c) asks it. */
static inline bool ledger_key_line_is_new(_Atomic uint64_t *last_logged, const char *line)
{
    static const uint8_t no_key[16];
    uint64_t hash = siphash24(no_key, line, strlen(line)) | 1; /* 0: nothing logged yet */
    return atomic_exchange_explicit(last_logged, hash, memory_order_relaxed) != hash;
}
/* A pool of key applied its config: pool_size (0 for the admin console's pool). Lock-free. */
void ledger_key_note_pool_size(struct ledger_key *key, int pool_size);
/* For a waiter's message: the pool key with the most backends (every worker's) in the scope a
 * shared cap k counts of key (its database for LIMIT_DB, its user for LIMIT_USER, every key for
 * LIMIT_GLOBAL); its names (copied: keys may be freed, ledger_key_release) and count. false:
 * none holds one (the names are left alone). */
bool ledger_largest_in_scope(struct ledger *l, const struct ledger_key *key, enum limit_kind k,
                             char *db_name, char *user_name, size_t name_size, int *most);
/* A pool learnt what a server of key reports at login: kept once for every worker (the first
 * one wins; out of memory keeps none, and each worker then learns its own). */
void ledger_key_share_welcome(struct ledger *l, struct ledger_key *key,
                              const struct param_set *welcome, uint64_t conninfo_fp);
/* Copies key's shared welcome into out (empty, params_init'd): false when none is known yet, it
 * came from a server of other connection settings than conninfo_fp (0: any), or memory ran out
 * (out may then hold part of it: the caller frees or retries). */
bool ledger_key_copy_welcome(struct ledger *l, struct ledger_key *key, struct param_set *out,
                             uint64_t conninfo_fp);
/* A reload changed the key's connection settings to conninfo_fp: a welcome learnt from a
 * server of other settings is dropped, to be learnt again. */
void ledger_key_forget_welcome(struct ledger *l, struct ledger_key *key, uint64_t conninfo_fp);
/* The most usable connections learnt by any key of database db_name (auth_query's caps). */
static inline int ledger_db_usable(const struct ledger *l, const char *db_name)
{
    int usable = 0;
    pthread_mutex_lock((pthread_mutex_t *)&l->mu);
    for (const struct ledger_key *k = l->keys; k; k = k->next) {
        int u = ledger_key_usable(k);
        if (strcmp(k->db->name, db_name) == 0 && u > usable)
            usable = u;
    }
    pthread_mutex_unlock((pthread_mutex_t *)&l->mu);
    return usable;
}
/* The budgets' counts are changed under the ledger's lock; their numbers are an immutable
 * generation each worker holds (budget.h). budget_sync builds the next one and replaces the
 * process's under the lock, and says, still under it, whether any budget has max_servers or
 * min_servers (are leases checked at all?). */
static inline void ledger_lock(struct ledger *l)
{
    pthread_mutex_lock(&l->mu);
}
static inline void ledger_unlock(struct ledger *l)
{
    pthread_mutex_unlock(&l->mu);
}
static inline void ledger_set_lease_caps(struct ledger *l, bool any_budget_cap)
{
    atomic_store_explicit(&l->lease_caps, any_budget_cap, memory_order_relaxed);
}

/* ---- The circuit breaker across workers (5.10, ledger_breaker.c) ----
 * May worker start a connection attempt for key now? Always while no attempt failed; after a
 * failure, once the backoff has passed and no other worker's attempt is in flight: the caller
 * that gets true holds the one attempt (for claim_ms, or until it reports) and must report it. */
bool ledger_breaker_may_try(struct ledger *l, struct ledger_key *key, int worker,
                            uint64_t claim_ms);
/* worker made no attempt after all (a cap stopped it, or it could not start): its claim, if it
 * holds one, goes back, so that another worker may try now rather than when it expires. */
void ledger_breaker_unclaim(struct ledger *l, struct ledger_key *key, int worker);
/* What a failed attempt did to key's breaker. */
struct ledger_breaker_failure {
    int failures;       /* in a row, this one included */
    uint64_t backoff_ms;
    bool went_down;     /* this failure opened the breaker (log it: once per outage) */
    bool was_probe;     /* the breaker was already open: the probe failed */
};
/* A failed attempt of key, as its pool reports it. */
struct ledger_breaker_report {
    const char *message; /* the database's reason */
    /* The server's final refusal of the login (its FATAL: a role that may not log in, a wrong
     * password), which the waiters of every worker get: SQLSTATE and message; NULL when the
     * attempt failed otherwise (no connection, a timeout). */
    const char *refusal_sqlstate;
    const char *refusal_message;
    /* The reporting pool has no server that logged in (else the database takes connections and
     * only this one more failed). */
    bool may_go_down;
};
/* An attempt of key failed. backoff_ms grows with the failures and is capped by cap_ms; jitter is
 * a random number (the caller's) that spreads it by +-20%. */
struct ledger_breaker_failure ledger_breaker_failed(struct ledger *l, struct ledger_key *key,
                                                    const struct ledger_breaker_report *r,
                                                    uint64_t cap_ms, uint32_t jitter);
/* An attempt of key logged in: the breaker closes. true when it was down (log it once); then
 * *failures and *down_ms say for how many failed attempts and how long. */
bool ledger_breaker_succeeded(struct ledger *l, struct ledger_key *key, int *failures,
                              uint64_t *down_ms);
/* A reload changed key's connection settings: the failures were of the old ones, so the next
 * attempt (still one at a time while it is down) may start now, not after their backoff. */
void ledger_breaker_retry_now(struct ledger *l, struct ledger_key *key);
/* A copy of key's breaker (under the lock): what a worker's pool shows and tells its clients. */
void ledger_breaker_read(struct ledger *l, const struct ledger_key *key, struct ledger_breaker *out);
/* Lock-free hint: is key's breaker open? */
static inline bool ledger_breaker_is_down(const struct ledger_key *key)
{
    return atomic_load_explicit(&key->breaker.down, memory_order_relaxed);
}

/* Debug: does worker's share of every counter equal what walking its pools, servers, clients
 * and auth_query's connections finds, and does each counter equal the sum of its shares? Runs
 * on worker's own thread (its lists are read unlocked). Budgets' leases and clients, counted
 * process-wide only (a lease is one lock-free add per transaction), are walked only when the
 * process has one worker. Logs each difference; true when all agree (ledger_audit.c). */
bool ledger_audit(const struct worker *worker);

void ledger_free(struct ledger *l);

/* A pool's questions, with its caps from budget.c (budget_server_caps). */
struct pool;
/* Would the pool's next backend fit (read-only; ledger_take_server takes it)? */
enum limit_kind ledger_pool_limit(const struct pool *p, bool use_reserve);
/* Would the pool have room for one more backend if a server of `closing` closed? */
bool ledger_pool_fits_if_closed(const struct pool *p, const struct pool *closing);
/* Does the pool hold more servers than a cap allows (a reload lowered it)? The first such cap. */
enum limit_kind ledger_pool_over_limit(const struct pool *p);

#endif
