/* budget: named groups of clients with caps of their own, and the nested limits every server
 * must fit under — pool size (+ reserve), max_db_connections, max_user_connections,
 * max_server_connections — so that "too many clients already" cannot happen upstream.
 *
 * Two kinds of limit:
 *   connections  a new backend needs room in its pool, its database, its user and globally;
 *   leases       a client of budget B may hold a server only while B has fewer than max_servers
 *                and the servers left still cover every other budget's unused min_servers.
 * This file resolves the caps from the config; ledger.c owns the counts they are compared
 * against (and the lease checks, which are counts against a budget's numbers). */
#ifndef SLUICE_BUDGET_H
#define SLUICE_BUDGET_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "cidr.h"

struct process;
struct worker;
struct pool;
struct client;

/* A budget's identity: one per name for as long as anything counts in it or a generation lists
 * it. Clients (c->budget) and links (s->lease_budget) point here; its counts survive reloads. */
#define BUDGET_LEASE_SHARES 64 /* one per worker (SLUICE_MAX_WORKERS) */

/* One worker's leases of a budget, on a cache line of its own: every client is in a budget (at
 * least "default"), so a lease is taken and given per transaction, and a count shared by the
 * workers would move its line between their CPUs twice a transaction. */
struct budget_lease_share {
    atomic_int n;
    char pad[64 - sizeof(atomic_int)];
};

struct budget {
    char *name;
    atomic_int clients;        /* logged-in clients now (counted by ledger.c only) */
    atomic_int gens;           /* generations (struct budget_set) listing it */
    struct budget *next_known; /* the process's list of every budget (budget_sync sweeps it) */
    /* servers linked to its clients now, per worker (counted by ledger.c only, each share by
     * its worker: a lease is taken and given on its client's worker); budget_leases sums */
    struct budget_lease_share lease_share[BUDGET_LEASE_SHARES];
    /* The order of its waiters across workers (ledger.h, ledger_note_lease_wait): element i is
     * the arrival (ledger_now_ms) of worker i's oldest waiter that a lease limit of this budget
     * held, 0: none; written under the ledger's lock by worker i only (so it reads its own
     * without the lock), read under the lock by the others. lease_waits counts the elements
     * that are not 0 (under the lock): a take reads no element while it is 0. Written only
     * while the budget's leases are contended, so off the per-transaction path. */
    uint64_t lease_wait_since[BUDGET_LEASE_SHARES];
    int lease_waits;
};

/* b's leases on the first nworkers workers (the process's nworkers: all of them). Exact under
 * the ledger's lock but for gives racing it, which only make it larger. */
static inline int budget_leases(const struct budget *b, int nworkers)
{
    int n = 0;
    for (int i = 0; i < nworkers && i < BUDGET_LEASE_SHARES; i++)
        n += atomic_load_explicit(&b->lease_share[i].n, memory_order_relaxed);
    return n;
}

/* What one generation says of a budget: immutable once its set is published. */
struct budget_rule {
    struct budget *budget;
    const char *name;  /* budget->name */
    char *app_pattern; /* fnmatch(3) glob, NULL = any */
    char *user;        /* NULL = any */
    struct cidr addr;
    bool has_addr;
    int max_servers, max_clients, min_servers; /* 0 = none */
    bool retired; /* removed from the config; kept while its clients or leases still count */
};

/* A generation of the budget set: built whole by budget_sync, never changed after, shared by
 * reference. The process holds the newest (proc->budgets); each worker holds the one it applied
 * (worker->budgets: worker 0 swapped by budget_sync itself, the others by their RELOAD
 * message), so a pool reads its worker's set and rules without a lock while a reload builds the
 * next. The last release frees it, on whichever thread. */
struct budget_set {
    atomic_int refs;
    int n;                      /* configured budgets in file order, "default" last, retired */
    struct budget_rule rules[]; /* index = the budget's slot in per-budget tallies */
};

struct budget_set *budget_set_acquire(struct budget_set *set);
void budget_set_release(struct budget_set *set);
/* The process's newest set, acquired under the ledger's lock: from any thread. */
struct budget_set *budget_set_current(struct process *proc);
/* Replace *held with set (taken: a reference the caller acquired), releasing the old one. */
void budget_set_swap(struct budget_set **held, struct budget_set *set);
/* b's rule in set, or NULL; its index, or -1. */
const struct budget_rule *budget_rule_of(const struct budget_set *set, const struct budget *b);
int budget_slot(const struct budget_set *set, const struct budget *b);

/* Build the next generation from the current config (start and reload); live counts carry over
 * by name (the identities are kept). Under the ledger's lock, which also learns whether leases
 * are checked at all (ledger.h); the control worker (worker 0, the caller's thread) swaps to it
 * at once, the others when their RELOAD message brings it. Identities no generation lists and
 * nothing counts in are freed here. 0 or -ENOMEM (the old generation stays). */
int budget_sync(struct process *proc) __attribute__((warn_unused_result));
/* At the end: every worker's and the process's set and every identity. */
void budget_free_all(struct process *proc);

/* A client logs in: its budget (budget_match) counted as one more of its clients, both under
 * the ledger's lock, so that a reload's budget_sync on another thread can neither change the
 * set under the match nor retire and free the budget before it counts the client. False (*out
 * the budget's rule in the worker's set, nothing counted) when that budget has max_clients
 * connected. */
bool budget_join(struct worker *worker, const char *app_name, const char *user,
                 const union peer_addr *addr, const struct budget_rule **out)
    __attribute__((warn_unused_result));
/* The budget a client belongs to: the first whose every given matcher matches; else "default".
 * Reads the worker's own set: its thread only. */
struct budget *budget_match(struct worker *worker, const char *app_name, const char *user,
                            const union peer_addr *addr);

/* Which limit stops something, for decisions and for messages that name it. */
enum limit_kind {
    LIMIT_NONE = 0,
    LIMIT_POOL,    /* pool_size (+ reserve_pool_size) */
    LIMIT_DB,      /* max_db_connections */
    LIMIT_USER,    /* max_user_connections */
    LIMIT_GLOBAL,  /* max_server_connections */
    LIMIT_BUDGET,  /* the budget's max_servers */
    LIMIT_RESERVED /* the rest is held for other budgets' min_servers */
};
const char *limit_kind_key(enum limit_kind k);

/* The caps one more backend of p must fit under, resolved for the ledger (ledger.h):
 * use_reserve: the reserve pool is in play. */
struct ledger_caps;
void budget_server_caps(const struct pool *p, bool use_reserve, struct ledger_caps *out);
/* The same for a connection of sluice's own (auth_query) to database entry db_name as
 * user_name: max_db_connections, max_user_connections and max_server_connections, no pool. */
void budget_own_caps(const struct worker *worker, const char *db_name, const char *user_name,
                     struct ledger_caps *out);
/* The resolved number behind a limit for pool p (for messages). */
int budget_limit_value(const struct pool *p, const struct budget *b, enum limit_kind k);

/* The servers budgets share: max_server_connections, or else what all pools may open, each
 * database's no more than its max_db_connections; every worker's pools (the ledger's keys, as
 * their pools last applied their config), not only worker's. *key: the key that sets it.
 * Takes the ledger's lock; _held: the caller holds it (ledger.c's lease check). */
int budget_shared_capacity(const struct worker *worker, enum limit_kind *key);
int budget_shared_capacity_held(const struct worker *worker, enum limit_kind *key);
/* Log the most servers the pool may have and the key that sets it ("max_db_connections = 80%
 * of 22 usable = 17"): at creation, on reload and when a server told max_connections. */
void budget_log_cap(const struct pool *p);
/* The most servers pool p can have linked to clients at once and the key that sets it: the
 * smallest of pool_size, max_db/user/server_connections and the max_servers of a budget that
 * every client of the pool falls into (LIMIT_POOL on a tie: it is the pool's own). in_use: the
 * servers that count against that cap now (linked to clients, in every pool it covers); budget
 * is the binding budget for LIMIT_BUDGET, else NULL. Reads only. */
struct pool_cap {
    enum limit_kind key;
    int servers;
    int in_use;
    const struct budget *budget;
};
void budget_pool_cap(const struct pool *p, struct pool_cap *out);
/* The same cap for a pool key whatever worker has its pools (docs/architecture.md 5.6): the
 * caps from worker's config and budget generation, NN% ones resolved against server_usable
 * (the ledger's, learnt by any worker); in_use is left 0 (the caller sums it over the workers),
 * budget set for LIMIT_BUDGET. budget_pool_cap is this plus the pool's own in_use. */
struct budget_key {
    const char *db_name, *user_name;
    int pool_size;     /* pool_size in force */
    int server_usable; /* behind NN% caps; 0: not learnt */
    bool user_forced;  /* the database entry names the user (pool.h) */
};
void budget_key_cap(const struct worker *worker, const struct budget_key *k, struct pool_cap *out);

/* Does any cap of this pool depend on the server's max_connections (NN%)? */
bool budget_has_percent_caps(const struct pool *p);

#endif
