/* ledger_audit: the proof that the ledger's counters are true. Each worker walks what its share
 * of the counters stands for — its pools' server lists, its auth_query connections, the
 * logged-in clients on its pools' client lists (with one worker also the servers charged to a
 * budget and the clients in it) — and compares; and every counter must be the sum of its
 * shares. It proves too each pool's count of clients that make it match servers by startup
 * fingerprint (pool.h every_mode_startup_clients), which decides how its caps make room. Debug
 * builds run it on every worker's maintenance tick, on that worker's thread (sluice.c);
 * tests/unit/test_ledger.c runs it too. Reads only. */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "client.h"
#include "ledger.h"
#include "log.h"
#include "pool.h"
#include "secret.h"
#include "server.h"
#include "sluice.h"

/* found: what the counter was compared with ("the walk finds", "its shares add up to"). */
static bool agree_with(const char *what, const char *name, int counted, const char *found, int n)
{
    if (counted == n)
        return true;
    log_msg(LOG_ERROR, "ledger: %s%s%s counts %d, %s %d", what, name ? " " : "", name ? name : "",
            counted, found, n);
    return false;
}

static bool agree(const char *what, const char *name, int counted, int walked)
{
    return agree_with(what, name, counted, "the walk finds", walked);
}

static bool sums(const char *what, const char *name, int counted, int shares)
{
    return agree_with(what, name, counted, "its shares add up to", shares);
}

/* Backends of the pools in a scope (NULL: any), auth_query's included. */
static int walked_servers(const struct worker *worker, const char *db_name, const char *user_name)
{
    int n = 0;
    struct list_node *node, *tmp;
    list_for_each(&worker->pools, node, tmp)
    {
        const struct pool *p = container_of(node, struct pool, node);
        if (pool_in_scope(p, db_name, user_name))
            n += pool_server_count(p);
    }
    return n + secret_query_servers(db_name, user_name);
}

/* A pool's clients of startup_scope EVERY_MODE on its client lists: what
 * p->every_mode_startup_clients stands for (client_set_state). A count stuck above 0 keeps a
 * transaction pool matching by fingerprint for ever; one at 0 or below while such a client is
 * in the pool opens no server with its startup parameters, and it waits for query_wait_timeout. */
static int walked_every_mode(const struct pool *p)
{
    const struct list *lists[] = {&p->waiting, &p->idle_clients, &p->active_clients};
    int n = 0;
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) {
        struct list_node *node, *tmp;
        list_for_each(lists[i], node, tmp)
        {
            const struct client *c = container_of(node, struct client, node);
            n += c->startup_scope == STARTUP_SCOPE_EVERY_MODE;
        }
    }
    return n;
}

static bool every_mode_counts_agree(const struct worker *worker)
{
    bool ok = true;
    struct list_node *node, *tmp;
    list_for_each(&worker->pools, node, tmp)
    {
        const struct pool *p = container_of(node, struct pool, node);
        ok &= agree("clients needing their startup parameters in every mode, database", p->db_name,
                    p->every_mode_startup_clients, walked_every_mode(p));
    }
    return ok;
}

/* What a budget is charged for: servers leased to its clients, or its logged-in clients. */
enum charge { CHARGE_LEASES, CHARGE_CLIENTS };

static int charged_in(const struct list *l, const struct budget *b, enum charge what)
{
    int n = 0;
    struct list_node *node, *tmp;
    list_for_each(l, node, tmp)
    {
        if (what == CHARGE_CLIENTS)
            n += container_of(node, struct client, node)->budget == b;
        else
            n += container_of(node, struct server, node)->lease_budget == b;
    }
    return n;
}

/* Servers charged to b (leases) or clients in b, by walking every list they can be on. */
static int walked_budget(const struct worker *worker, const struct budget *b, enum charge what)
{
    int n = 0;
    if (what == CHARGE_CLIENTS)
        n = charged_in(&worker->login_clients, b, what) +
            charged_in(&worker->closing_clients, b, what);
    struct list_node *node, *tmp;
    list_for_each(&worker->pools, node, tmp)
    {
        const struct pool *p = container_of(node, struct pool, node);
        if (what == CHARGE_CLIENTS) {
            n += charged_in(&p->waiting, b, what) + charged_in(&p->idle_clients, b, what) +
                 charged_in(&p->active_clients, b, what);
        } else {
            const struct list *lists[] = {&p->connecting, &p->idle, &p->active, &p->resetting,
                                          &p->leaving};
            for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++)
                n += charged_in(lists[i], b, what);
        }
    }
    return n;
}

/* Logged-in clients, not leaving: those on the pools' client lists (a client in CLOSING has
 * left them). db_name and user_name (the client's own) NULL: any, the admin console's included;
 * else the console's are not counted. */
static int walked_clients(const struct worker *worker, const char *db_name, const char *user_name)
{
    int n = 0;
    struct list_node *node, *tmp, *cn, *ctmp;
    list_for_each(&worker->pools, node, tmp)
    {
        const struct pool *p = container_of(node, struct pool, node);
        if ((db_name || user_name) && p->is_admin)
            continue;
        if (db_name && strcmp(p->db_name, db_name) != 0)
            continue;
        const struct list *lists[] = {&p->waiting, &p->idle_clients, &p->active_clients};
        for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++) {
            list_for_each(lists[i], cn, ctmp)
            {
                const struct client *c = container_of(cn, struct client, node);
                n += !user_name || strcmp(c->user, user_name) == 0;
            }
        }
    }
    return n;
}

static const char *key_name(const struct ledger_key *k, char *buf, size_t size)
{
    snprintf(buf, size, "%s/%s", k->db->name, k->user->name);
    return buf;
}

/* Under the lock: does each counter equal the sum of its shares? */
static int share_sum(const struct ledger_share *share, size_t field)
{
    int n = 0;
    for (int w = 0; w < LEDGER_SHARES; w++)
        n += *(const atomic_int *)((const char *)&share[w] + field);
    return n;
}

static bool totals_are_sums_of_shares(const struct ledger *l)
{
    const size_t servers = offsetof(struct ledger_share, servers);
    const size_t clients = offsetof(struct ledger_share, clients);
    bool ok = sums("every backend", NULL, l->servers, share_sum(l->share, servers));
    ok &= sums("logged-in clients", NULL, l->clients, share_sum(l->share, clients));
    int own = 0;
    for (int w = 0; w < LEDGER_SHARES; w++)
        own += l->own_share[w];
    ok &= sums("auth_query's connections", NULL, l->own_servers, own);
    const struct ledger_scope *const heads[] = {l->dbs, l->users};
    const char *const kinds[][2] = {{"database", "clients of database"},
                                    {"user", "clients of user"}};
    for (size_t i = 0; i < sizeof(heads) / sizeof(heads[0]); i++) {
        for (const struct ledger_scope *s = heads[i]; s; s = s->next) {
            ok &= sums(kinds[i][0], s->name, s->servers, share_sum(s->share, servers));
            ok &= sums(kinds[i][1], s->name, s->clients, share_sum(s->share, clients));
        }
    }
    int granted[LEDGER_WORKERS] = {0};
    for (const struct ledger_key *k = l->keys; k; k = k->next) {
        int n = 0, grants = 0;
        for (int w = 0; w < LEDGER_SHARES; w++)
            n += k->share[w];
        char key[256];
        ok &= sums("pool", key_name(k, key, sizeof(key)), k->servers, n);
        for (int w = 0; w < LEDGER_WORKERS; w++) {
            granted[w] += k->granted[w];
            grants += k->granted[w];
        }
        /* the transit share: the servers in a mailbox, and the grants (ledger_grant_locked) */
        if (k->share[LEDGER_IN_TRANSIT] < grants) {
            log_msg(LOG_ERROR, "ledger: pool %s has %d grants, %d in transit", key, grants,
                    (int)k->share[LEDGER_IN_TRANSIT]);
            ok = false;
        }
    }
    for (int w = 0; w < LEDGER_WORKERS; w++) {
        char name[16];
        snprintf(name, sizeof(name), "%d", w);
        ok &= agree_with("grants to worker", name, l->granted[w], "its keys' add up to",
                         granted[w]);
    }
    return ok;
}

/* A budget's leases have a share per worker, moved only on its thread: each worker walks its
 * own (under the lock, which holds the list of budgets still). */
static bool budget_leases_agree(const struct worker *worker)
{
    bool ok = true;
    for (const struct budget *b = worker->proc->budgets_known; b; b = b->next_known)
        ok &= agree("leases of budget", b->name, b->lease_share[worker->index].n,
                    walked_budget(worker, b, CHARGE_LEASES));
    return ok;
}

/* Does a pool of the worker have a client of b in its queue? */
static bool has_waiter_of(const struct worker *worker, const struct budget *b)
{
    struct list_node *pn, *ptmp, *node, *tmp;
    list_for_each(&worker->pools, pn, ptmp)
    {
        const struct pool *p = container_of(pn, struct pool, node);
        list_for_each(&p->waiting, node, tmp)
        {
            if (container_of(node, struct client, node)->budget == b)
                return true;
        }
    }
    return false;
}

/* The order of a budget's waiters across workers (ledger_note_lease_wait): the worker's oldest
 * waiter of b noted is still in a queue of its own (else other workers' younger waiters leave
 * it a lease of b's room for nobody), and lease_waits counts every worker's noted ones. */
static bool lease_waits_agree(const struct worker *worker)
{
    bool ok = true;
    for (const struct budget *b = worker->proc->budgets_known; b; b = b->next_known) {
        int noted = 0;
        for (int i = 0; i < BUDGET_LEASE_SHARES; i++)
            noted += b->lease_wait_since[i] != 0;
        ok &= agree_with("lease waits of budget", b->name, b->lease_waits,
                         "its workers' noted waiters add up to", noted);
        if (b->lease_wait_since[worker->index] != 0)
            ok &= agree("waiters of budget noted held by its lease limit", b->name, 1,
                        has_waiter_of(worker, b));
    }
    return ok;
}

/* A budget's clients are the process's (no share per worker): only one worker can walk them. */
static bool budget_clients_agree(const struct worker *worker)
{
    bool ok = true;
    for (const struct budget *b = worker->proc->budgets_known; b; b = b->next_known)
        ok &= agree("clients of budget", b->name, b->clients,
                    walked_budget(worker, b, CHARGE_CLIENTS));
    return ok;
}

bool ledger_audit(const struct worker *worker)
{
    struct ledger *l = &worker->proc->ledger;
    const int w = (int)worker->index;
    /* The lock holds other workers' takes and gives still while the shares are read (the sums),
     * and orders a handover's write of this worker's share from another thread. This worker's
     * own share moves only on this thread, in step with the lists walked here. */
    ledger_lock(l);
    const struct ledger_share *mine = &l->share[w];
    bool ok = agree("every backend", NULL, mine->servers, walked_servers(worker, NULL, NULL));
    ok &=
        agree("auth_query's connections", NULL, l->own_share[w], secret_query_servers(NULL, NULL));
    /* a server posted here but still in the mailbox is in nservers, not yet in the share */
    ok &= agree("pool servers", NULL, mine->servers - l->own_share[w],
                worker->nservers - worker->arriving);
    ok &= agree("logged-in clients", NULL, mine->clients, walked_clients(worker, NULL, NULL));
    for (const struct ledger_scope *s = l->dbs; s; s = s->next) {
        ok &=
            agree("database", s->name, s->share[w].servers, walked_servers(worker, s->name, NULL));
        ok &= agree("clients of database", s->name, s->share[w].clients,
                    walked_clients(worker, s->name, NULL));
    }
    for (const struct ledger_scope *s = l->users; s; s = s->next) {
        ok &= agree("user", s->name, s->share[w].servers, walked_servers(worker, NULL, s->name));
        ok &= agree("clients of user", s->name, s->share[w].clients,
                    walked_clients(worker, NULL, s->name));
    }
    for (const struct ledger_key *k = l->keys; k; k = k->next) {
        int n = 0;
        struct list_node *node, *tmp;
        list_for_each(&worker->pools, node, tmp)
        {
            const struct pool *p = container_of(node, struct pool, node);
            n += p->ledger_key == k ? pool_server_count(p) : 0;
        }
        char key[256];
        ok &= agree("pool", key_name(k, key, sizeof(key)), k->share[w], n);
    }
    ok &= totals_are_sums_of_shares(l);
    ok &= budget_leases_agree(worker);
    ok &= lease_waits_agree(worker);
    ok &= every_mode_counts_agree(worker);
    ledger_unlock(l);
    if (worker->proc->nworkers == 1)
        ok &= budget_clients_agree(worker);
    return ok;
}
