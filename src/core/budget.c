/* budget: budgets and the nested limits (see budget.h). */
#include "budget.h"

#include <errno.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "ledger.h"
#include "log.h"
#include "pool.h"
#include "sluice.h"

struct budget_set *budget_set_acquire(struct budget_set *set)
{
    if (set)
        atomic_fetch_add_explicit(&set->refs, 1, memory_order_relaxed);
    return set;
}

void budget_set_release(struct budget_set *set)
{
    if (!set || atomic_fetch_sub_explicit(&set->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (int i = 0; i < set->n; i++) {
        struct budget_rule *r = &set->rules[i];
        free(r->app_pattern);
        free(r->user);
        /* the last touch of the identity: budget_sync may free it once this reaches 0 */
        atomic_fetch_sub_explicit(&r->budget->gens, 1, memory_order_acq_rel);
    }
    free(set);
}

struct budget_set *budget_set_current(struct process *proc)
{
    ledger_lock(&proc->ledger);
    struct budget_set *set = budget_set_acquire(proc->budgets);
    ledger_unlock(&proc->ledger);
    return set;
}

void budget_set_swap(struct budget_set **held, struct budget_set *set)
{
    struct budget_set *old = *held;
    *held = set;
    budget_set_release(old);
}

int budget_slot(const struct budget_set *set, const struct budget *b)
{
    for (int i = 0; set && b && i < set->n; i++)
        if (set->rules[i].budget == b)
            return i;
    return -1;
}

const struct budget_rule *budget_rule_of(const struct budget_set *set, const struct budget *b)
{
    int i = budget_slot(set, b);
    return i >= 0 ? &set->rules[i] : NULL;
}

/* The identity named name: known already (its counts carry over), or a new one. */
static struct budget *identity(struct process *proc, const char *name)
{
    for (struct budget *b = proc->budgets_known; b; b = b->next_known)
        if (strcmp(b->name, name) == 0)
            return b;
    struct budget *b = calloc(1, sizeof(*b));
    if (!b || !(b->name = strdup(name))) {
        free(b);
        return NULL;
    }
    b->next_known = proc->budgets_known;
    proc->budgets_known = b;
    return b;
}

static int dup_str(char **dst, const char *src)
{
    *dst = src ? strdup(src) : NULL;
    return src && !*dst ? -ENOMEM : 0;
}

/* Fill r from entry e (NULL: the built-in "default") or from an old rule (retiring it). */
static int fill(struct budget_rule *r, struct budget *b, const struct budget_entry *e,
                const struct budget_rule *was)
{
    r->budget = b;
    r->name = b->name;
    atomic_fetch_add_explicit(&b->gens, 1, memory_order_relaxed);
    if (was) {
        r->addr = was->addr;
        r->has_addr = was->has_addr;
        r->max_servers = was->max_servers;
        r->max_clients = was->max_clients;
        r->min_servers = was->min_servers;
        r->retired = true;
        return dup_str(&r->app_pattern, was->app_pattern) | dup_str(&r->user, was->user);
    }
    r->has_addr = e && e->addr.net.family != AF_UNSPEC;
    if (r->has_addr)
        r->addr = e->addr.net;
    r->max_servers = e ? e->max_servers : 0;
    r->max_clients = e ? e->max_clients : 0;
    r->min_servers = e ? e->min_servers : 0;
    return dup_str(&r->app_pattern, e ? e->app_pattern : NULL) |
           dup_str(&r->user, e ? e->user : NULL);
}

/* The next generation from proc->cfg and the current one (under the ledger's lock). */
static struct budget_set *build_locked(struct process *proc)
{
    const struct config *cfg = proc->cfg;
    const struct budget_set *old = proc->budgets;
    int most = cfg->nbudgets + 1 + (old ? old->n : 0);
    struct budget_set *set = calloc(1, sizeof(*set) + (size_t)most * sizeof(set->rules[0]));
    if (!set)
        return NULL;
    atomic_init(&set->refs, 1);
    int rc = 0;
    for (int i = 0; i <= cfg->nbudgets && rc == 0; i++) {
        const struct budget_entry *e = i < cfg->nbudgets ? &cfg->budgets[i] : NULL;
        const char *name = e ? e->name : "default";
        /* A configured budget named "default" gives the default budget its limits. */
        if (!e && budget_slot(set, identity(proc, "default")) >= 0)
            break;
        struct budget *b = identity(proc, name);
        rc = b ? fill(&set->rules[set->n++], b, e, NULL) : -ENOMEM;
    }
    /* Budgets gone from the config stay (retired, matching nobody) until their clients leave. */
    for (int i = 0; old && i < old->n && rc == 0; i++) {
        const struct budget_rule *was = &old->rules[i];
        if (budget_slot(set, was->budget) >= 0)
            continue;
        if (atomic_load(&was->budget->clients) > 0 ||
            budget_leases(was->budget, BUDGET_LEASE_SHARES) > 0)
            rc = fill(&set->rules[set->n++], was->budget, NULL, was);
    }
    if (rc < 0) {
        budget_set_release(set);
        return NULL;
    }
    return set;
}

/* Free the identities nothing can reach: no generation lists them (so no login can join them)
 * and no client or lease counts in them (under the ledger's lock). */
static void sweep_locked(struct process *proc, bool all)
{
    struct budget **link = &proc->budgets_known;
    while (*link) {
        struct budget *b = *link;
        bool unreachable = atomic_load_explicit(&b->gens, memory_order_acquire) == 0 &&
                           atomic_load(&b->clients) == 0 &&
                           budget_leases(b, BUDGET_LEASE_SHARES) == 0;
        if (!all && !unreachable) {
            link = &b->next_known;
            continue;
        }
        *link = b->next_known;
        free(b->name);
        free(b);
    }
}

int budget_sync(struct process *proc)
{
    ledger_lock(&proc->ledger);
    struct budget_set *next = build_locked(proc);
    struct budget_set *old = proc->budgets;
    if (next) {
        proc->budgets = next;
        bool any_cap = false;
        for (int i = 0; i < next->n; i++)
            any_cap |= next->rules[i].max_servers > 0 || next->rules[i].min_servers > 0;
        ledger_set_lease_caps(&proc->ledger, any_cap);
    }
    ledger_unlock(&proc->ledger);
    if (!next)
        return -ENOMEM;
    budget_set_release(old);
    /* the control worker runs on this thread: it takes the new set now, as its config */
    budget_set_swap(&sluice_control_worker(proc)->budgets, budget_set_acquire(next));
    ledger_lock(&proc->ledger);
    sweep_locked(proc, false);
    ledger_unlock(&proc->ledger);
    return 0;
}

void budget_free_all(struct process *proc)
{
    for (int i = 0; i < SLUICE_MAX_WORKERS; i++)
        budget_set_swap(&proc->workers[i].budgets, NULL);
    budget_set_swap(&proc->budgets, NULL);
    sweep_locked(proc, true);
}

static const struct budget_rule *match_rule(struct worker *worker, const char *app_name,
                                            const char *user, const union peer_addr *addr)
{
    const struct budget_rule *fallback = NULL;
    const struct budget_set *set = worker->budgets;
    for (int i = 0; set && i < set->n; i++) {
        const struct budget_rule *b = &set->rules[i];
        if (b->retired)
            continue;
        if (strcmp(b->name, "default") == 0) {
            fallback = b;
            continue;
        }
        if (!b->app_pattern && !b->user && !b->has_addr)
            continue; /* matches nothing by construction: a budget with no matcher */
        if (b->app_pattern && fnmatch(b->app_pattern, app_name ? app_name : "", 0) != 0)
            continue;
        if (b->user && strcmp(b->user, user) != 0)
            continue;
        if (b->has_addr && !cidr_contains(&b->addr, addr))
            continue;
        return b;
    }
    return fallback;
}

struct budget *budget_match(struct worker *worker, const char *app_name, const char *user,
                            const union peer_addr *addr)
{
    const struct budget_rule *r = match_rule(worker, app_name, user, addr);
    return r ? r->budget : NULL;
}

bool budget_join(struct worker *worker, const char *app_name, const char *user,
                 const union peer_addr *addr, const struct budget_rule **out)
{
    struct ledger *l = &worker->proc->ledger;
    *out = match_rule(worker, app_name, user, addr);
    ledger_lock(l); /* max_clients is counted across workers */
    bool room = ledger_take_client_held(*out);
    ledger_unlock(l);
    return room;
}

const char *limit_kind_key(enum limit_kind k)
{
    switch (k) {
    case LIMIT_NONE:
        return "none";
    case LIMIT_POOL:
        return "pool_size";
    case LIMIT_DB:
        return "max_db_connections";
    case LIMIT_USER:
        return "max_user_connections";
    case LIMIT_GLOBAL:
        return "max_server_connections";
    case LIMIT_BUDGET:
        return "max_servers";
    case LIMIT_RESERVED:
        return "min_servers";
    }
    return "?";
}

static int db_cap_of(const struct config *cfg, const char *db_name, int server_usable)
{
    const struct db_entry *db = config_find_db(cfg, db_name);
    struct limit l = cfg->max_db_connections;
    if (db && db->max_db_connections.value > 0)
        l = db->max_db_connections;
    return limit_resolve(l, server_usable);
}

static int user_cap_of(const struct config *cfg, const char *user_name, int server_usable)
{
    const struct user_entry *u = config_find_user(cfg, user_name);
    struct limit l = cfg->max_user_connections;
    if (u && u->max_user_connections.value > 0)
        l = u->max_user_connections;
    return limit_resolve(l, server_usable);
}

/* The usable connections behind p's NN% caps: the process's (the ledger's, learnt by any
 * worker's pool of p's key), else what p itself has learnt. */
static int usable(const struct pool *p)
{
    int learnt = ledger_key_usable(p->ledger_key);
    return learnt > 0 ? learnt : p->server_usable;
}

static int db_cap(const struct pool *p)
{
    return db_cap_of(p->worker->cfg, p->db_name, usable(p));
}

static int user_cap(const struct pool *p)
{
    return user_cap_of(p->worker->cfg, p->user_name, usable(p));
}

static int global_cap(const struct worker *worker, int server_usable)
{
    return limit_resolve(worker->cfg->max_server_connections, server_usable);
}

/* A percent cap cannot be resolved before a server has told its max_connections: until then a
 * pool opens one connection at a time, which is how it learns. */
bool budget_has_percent_caps(const struct pool *p)
{
    const struct config *cfg = p->worker->cfg;
    const struct db_entry *db = config_find_db(cfg, p->db_name);
    return cfg->max_db_connections.is_percent || cfg->max_user_connections.is_percent ||
           cfg->max_server_connections.is_percent || (db && db->max_db_connections.is_percent);
}

static bool percent_unresolved(const struct pool *p)
{
    return usable(p) <= 0 && budget_has_percent_caps(p);
}

int budget_limit_value(const struct pool *p, const struct budget *b, enum limit_kind k)
{
    switch (k) {
    case LIMIT_POOL:
        return p->size;
    case LIMIT_DB:
        return db_cap(p);
    case LIMIT_USER:
        return user_cap(p);
    case LIMIT_GLOBAL:
        return global_cap(p->worker, usable(p));
    case LIMIT_BUDGET:
        return budget_rule_of(p->worker->budgets, b)
                   ? budget_rule_of(p->worker->budgets, b)->max_servers
                   : 0;
    default:
        return 0;
    }
}

void budget_server_caps(const struct pool *p, bool use_reserve, struct ledger_caps *out)
{
    *out = (struct ledger_caps){
        .pool = p->size + (use_reserve ? p->reserve_size : 0),
        .db = db_cap(p),
        .user = user_cap(p),
        .global = global_cap(p->worker, usable(p)),
        .awaiting_probe = percent_unresolved(p) && p->connecting.count > 0,
    };
}

void budget_own_caps(const struct worker *worker, const char *db_name, const char *user_name,
                     struct ledger_caps *out)
{
    /* NN% caps: as the pools of that database know the server (none yet: no cap to apply),
     * this worker's or any worker's (the ledger's). The walk of this worker's pools only adds
     * what a pool learnt before its key did; the count the caps compare is the ledger's. */
    int known = ledger_db_usable(&worker->proc->ledger, db_name);
    struct list_node *node, *tmp;
    list_for_each(&worker->pools, node, tmp)
    {
        const struct pool *p = container_of(node, struct pool, node);
        if (strcmp(p->db_name, db_name) == 0 && p->server_usable > known)
            known = p->server_usable;
    }
    *out = (struct ledger_caps){
        .db = db_cap_of(worker->cfg, db_name, known),
        .user = user_cap_of(worker->cfg, user_name, known),
        .global = global_cap(worker, known),
    };
}

/* The budget every client of p falls into, if one does: budgets are matched in order, so the
 * first that could take any of the pool's clients must take all of them (it matches on the user
 * alone, or it is "default"). */
static const struct budget_rule *budget_of_every_client_of(const struct worker *worker,
                                                           const struct budget_key *k)
{
    const struct budget_set *set = worker->budgets;
    for (int i = 0; set && i < set->n; i++) {
        const struct budget_rule *b = &set->rules[i];
        if (b->retired)
            continue;
        if (strcmp(b->name, "default") == 0)
            continue; /* the fallback: matched after every other budget */
        if (!b->app_pattern && !b->user && !b->has_addr)
            continue; /* matches nobody */
        if (b->user && k->user_forced)
            return NULL; /* a forced user's pool serves clients of any user name */
        if (b->user && strcmp(b->user, k->user_name) != 0)
            continue;
        return b->app_pattern || b->has_addr ? NULL : b;
    }
    for (int i = 0; set && i < set->n; i++)
        if (!set->rules[i].retired && strcmp(set->rules[i].name, "default") == 0)
            return &set->rules[i];
    return NULL;
}

static struct budget_key key_of(const struct pool *p)
{
    return (struct budget_key){.db_name = p->db_name,
                               .user_name = p->user_name,
                               .pool_size = p->size,
                               .server_usable = usable(p),
                               .user_forced = p->user_forced};
}

static const struct budget_rule *budget_of_every_client(const struct pool *p)
{
    struct budget_key k = key_of(p);
    return budget_of_every_client_of(p->worker, &k);
}

/* Servers linked to clients in the pools of one database and/or user (NULL: any): this
 * worker's, for budget_pool_cap's in_use, which only a view of one worker shows (a merged view
 * sums every worker's: view_pool_caps); no decision reads it. */
static int linked_servers(const struct worker *worker, const char *db_name, const char *user_name)
{
    int n = 0;
    struct list_node *node, *tmp;
    list_for_each(&worker->pools, node, tmp)
    {
        const struct pool *p = container_of(node, struct pool, node);
        if (pool_in_scope(p, db_name, user_name))
            n += p->active.count;
    }
    return n;
}

void budget_key_cap(const struct worker *worker, const struct budget_key *k, struct pool_cap *out)
{
    const struct budget_rule *b = budget_of_every_client_of(worker, k);
    const struct config *cfg = worker->cfg;
    *out = (struct pool_cap){.key = LIMIT_POOL, .servers = k->pool_size};
    const struct {
        enum limit_kind key;
        int cap;
    } caps[] = {
        {LIMIT_DB, db_cap_of(cfg, k->db_name, k->server_usable)},
        {LIMIT_USER, user_cap_of(cfg, k->user_name, k->server_usable)},
        {LIMIT_GLOBAL, global_cap(worker, k->server_usable)},
        {LIMIT_BUDGET, b ? b->max_servers : 0},
    };
    for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
        if (caps[i].cap <= 0 || caps[i].cap >= out->servers)
            continue;
        out->key = caps[i].key;
        out->servers = caps[i].cap;
    }
    if (out->key == LIMIT_BUDGET)
        out->budget = b->budget;
}

void budget_pool_cap(const struct pool *p, struct pool_cap *out)
{
    struct budget_key k = key_of(p);
    budget_key_cap(p->worker, &k, out);
    const struct budget_rule *b = budget_of_every_client(p);
    switch (out->key) {
    case LIMIT_POOL:
        out->in_use = p->active.count;
        break;
    case LIMIT_DB:
        out->in_use = linked_servers(p->worker, p->db_name, NULL);
        break;
    case LIMIT_USER:
        out->in_use = linked_servers(p->worker, NULL, p->user_name);
        break;
    case LIMIT_GLOBAL:
        out->in_use = linked_servers(p->worker, NULL, NULL);
        break;
    case LIMIT_BUDGET:
        out->in_use = budget_leases(b->budget, p->worker->proc->nworkers);
        break;
    default:
        break;
    }
}

/* The budgets' shared capacity is process-wide (docs/architecture.md 5.3): it sums the pool
 * keys of the ledger, whatever worker has their pools, not this worker's pools. A worker's own
 * list is a part of it only (pools are made where clients land): with a greedy budget's clients
 * on three workers and a reserving one's on a fourth, the first three saw only the greedy pool
 * and held it to its own size less the reservation. A key lives as long as a pool of it on some
 * worker (a "*" database's are freed after autodb_idle_timeout unused, autodb.c); it counts once
 * a pool of it applied its config. */

/* The servers of key's database the budgets can count on: its keys' pool sizes, at most its
 * max_db_connections (*key_kind says which binds). Under the lock. */
static int db_capacity(const struct worker *worker, const struct ledger_key *first,
                       enum limit_kind *key_kind)
{
    int sum = 0, known = 0;
    for (const struct ledger_key *k = worker->proc->ledger.keys; k; k = k->next) {
        if (k->db != first->db)
            continue;
        sum += atomic_load_explicit(&k->pool_size, memory_order_relaxed);
        int u = ledger_key_usable(k);
        known = u > known ? u : known;
    }
    int cap = db_cap_of(worker->cfg, first->db->name, known);
    *key_kind = cap > 0 && cap < sum ? LIMIT_DB : LIMIT_POOL;
    return *key_kind == LIMIT_DB ? cap : sum;
}

/* Is key the first (in the ledger's list) of its database's keys that have a pool? */
static bool first_of_its_db(const struct worker *worker, const struct ledger_key *key)
{
    for (const struct ledger_key *o = worker->proc->ledger.keys; o != key; o = o->next)
        if (o->db == key->db && atomic_load_explicit(&o->pool_size, memory_order_relaxed) > 0)
            return false;
    return true;
}

int budget_shared_capacity_held(const struct worker *worker, enum limit_kind *key_kind)
{
    int most = 0, sum = 0;
    *key_kind = LIMIT_POOL;
    for (const struct ledger_key *k = worker->proc->ledger.keys; k; k = k->next) {
        int u = ledger_key_usable(k);
        most = u > most ? u : most;
        if (atomic_load_explicit(&k->pool_size, memory_order_relaxed) <= 0 ||
            !first_of_its_db(worker, k))
            continue;
        enum limit_kind kind;
        sum += db_capacity(worker, k, &kind);
        if (kind == LIMIT_DB)
            *key_kind = LIMIT_DB;
    }
    int cap = global_cap(worker, most);
    if (cap > 0 && cap <= sum) {
        *key_kind = LIMIT_GLOBAL;
        return cap;
    }
    return sum;
}

int budget_shared_capacity(const struct worker *worker, enum limit_kind *key_kind)
{
    ledger_lock(&worker->proc->ledger);
    int capacity = budget_shared_capacity_held(worker, key_kind);
    ledger_unlock(&worker->proc->ledger);
    return capacity;
}

/* "max_db_connections = 80% of 22 usable = 17", or "max_db_connections = 8". */
static void describe_cap(const struct pool *p, enum limit_kind k, char *out, size_t len)
{
    const struct config *cfg = p->worker->cfg;
    const struct db_entry *db = config_find_db(cfg, p->db_name);
    const struct user_entry *u = config_find_user(cfg, p->user_name);
    struct limit l = {0, false};
    if (k == LIMIT_DB)
        l = db && db->max_db_connections.value > 0 ? db->max_db_connections
                                                   : cfg->max_db_connections;
    else if (k == LIMIT_USER)
        l = u && u->max_user_connections.value > 0 ? u->max_user_connections
                                                   : cfg->max_user_connections;
    else if (k == LIMIT_GLOBAL)
        l = cfg->max_server_connections;
    int value = budget_limit_value(p, NULL, k);
    if (l.is_percent)
        snprintf(out, len, "%s = %d%% of %d usable = %d", limit_kind_key(k), l.value, usable(p),
                 value);
    else
        snprintf(out, len, "%s = %d", limit_kind_key(k), value);
}

void budget_log_cap(const struct pool *p)
{
    if (p->is_admin)
        return;
    enum limit_kind binding = LIMIT_POOL;
    int cap = p->size;
    const enum limit_kind shared[] = {LIMIT_DB, LIMIT_USER, LIMIT_GLOBAL};
    for (size_t i = 0; i < sizeof(shared) / sizeof(shared[0]); i++) {
        int v = budget_limit_value(p, NULL, shared[i]);
        if (v > 0 && v < cap) {
            cap = v;
            binding = shared[i];
        }
    }
    char why[160];
    describe_cap(p, binding, why, sizeof(why));
    const char *pending = percent_unresolved(p) ? "; NN% caps apply once a server has told "
                                                  "max_connections"
                                                : "";
    char line[512];
    snprintf(line, sizeof(line), "pool %s/%s: at most %d servers (%s)%s", p->db_name, p->user_name,
             cap, why, pending);
    /* Every worker's pool of the key computes the same line (one config generation): the first
     * to see it changed logs it (5.6). */
    if (ledger_key_line_is_new(&p->ledger_key->cap_line_logged, line))
        log_msg(LOG_INFO, "%s", line);
}
