/* ledger_audit: the proof that the ledger's counters are true. Walks what the counters stand
 * for — the pools' server lists, auth_query's connections, the servers charged to a budget and
 * the clients in it, the logged-in clients on the pools' client lists — and compares. Debug builds run it on every maintenance tick (sluice.c);
 * tests/unit/test_ledger.c runs it too. Reads only. */
#include <stdio.h>
#include <string.h>

#include "client.h"
#include "ledger.h"
#include "log.h"
#include "pool.h"
#include "secret.h"
#include "server.h"
#include "sluice.h"

static bool agree(const char *what, const char *name, int counted, int walked)
{
    if (counted == walked)
        return true;
    log_msg(LOG_ERROR, "ledger: %s%s%s counts %d, the walk finds %d", what, name ? " " : "",
            name ? name : "", counted, walked);
    return false;
}

/* Backends of the pools in a scope (NULL: any), auth_query's included. */
static int walked_servers(const struct worker *worker, const char *db_name, const char *user_name)
{
    int n = 0;
    struct list_node *node, *tmp;
    list_for_each(&worker->pools, node, tmp)
    {
        const struct pool *p = container_of(node, struct pool, node);
        if ((!db_name || strcmp(p->db_name, db_name) == 0) &&
            (!user_name || strcmp(p->user_name, user_name) == 0))
            n += pool_server_count(p);
    }
    return n + secret_query_servers(db_name, user_name);
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

bool ledger_audit(const struct worker *worker)
{
    const struct ledger *l = &worker->proc->ledger;
    bool ok = agree("every backend", NULL, l->servers, walked_servers(worker, NULL, NULL));
    ok &= agree("auth_query's connections", NULL, l->own_servers,
                secret_query_servers(NULL, NULL));
    ok &= agree("pool servers", NULL, l->servers - l->own_servers, worker->nservers);
    ok &= agree("logged-in clients", NULL, l->clients, walked_clients(worker, NULL, NULL));
    for (const struct ledger_scope *s = l->dbs; s; s = s->next) {
        ok &= agree("database", s->name, s->servers, walked_servers(worker, s->name, NULL));
        ok &= agree("clients of database", s->name, s->clients,
                    walked_clients(worker, s->name, NULL));
    }
    for (const struct ledger_scope *s = l->users; s; s = s->next) {
        ok &= agree("user", s->name, s->servers, walked_servers(worker, NULL, s->name));
        ok &= agree("clients of user", s->name, s->clients, walked_clients(worker, NULL, s->name));
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
        snprintf(key, sizeof(key), "%s/%s", k->db->name, k->user->name);
        ok &= agree("pool", key, k->servers, n);
    }
    for (const struct budget *b = worker->proc->budgets_known; b; b = b->next_known) {
        ok &=
            agree("leases of budget", b->name, b->leases, walked_budget(worker, b, CHARGE_LEASES));
        ok &= agree("clients of budget", b->name, b->clients,
                    walked_budget(worker, b, CHARGE_CLIENTS));
    }
    return ok;
}
