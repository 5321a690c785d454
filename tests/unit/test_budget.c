/* Unit tests for budget.c: which budget a client belongs to, and the nested caps a lease or a new
 * connection must fit, with pools and counts set up by hand (no sockets). */
#include "check.h"
#include "fixture.h"

#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "budget.h"
#include "config.h"
#include "ledger.h"
#include "pool.h"
#include "sluice.h"

static char *no_env[] = {NULL};

static struct pool *add_pool(struct worker *worker, const char *db, const char *user)
{
    return pool_get(worker, NULL, user, db); /* the real constructor: lists, settings from config */
}

/* Pretend the pool has n servers: each takes its slot in the ledger (under no cap) and sits
 * on the idle list as a bare struct, so the ledger and the lists agree (ledger_audit). */
static void set_servers(struct pool *p, int n)
{
    const struct ledger_caps none = {.pool = INT_MAX};
    while (p->idle.count < n) {
        struct server *s = calloc(1, sizeof(*s));
        s->pool = p;
        list_append(&p->idle, &s->node);
        p->worker->nservers++;
        CHECK_INT(ledger_take_server(&p->worker->proc->ledger, p->ledger_key, 0, &none),
                  LIMIT_NONE);
    }
}

static union peer_addr ipv4(const char *ip)
{
    union peer_addr ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *a = &ss.in;
    a->sin_family = AF_INET;
    inet_pton(AF_INET, ip, &a->sin_addr);
    return ss;
}

static const char base_ini[] = "[sluice]\n"
                               "default_pool_size = 10\n"
                               "[databases]\n"
                               "app = host=127.0.0.1 dbname=app\n"
                               "other = host=127.0.0.1 dbname=other\n";

/* An app from base_ini with these [budgets] lines. */
static struct worker *worker_with_budgets(const char *budgets)
{
    char ini[1024];
    snprintf(ini, sizeof(ini), "%s[budgets]\n%s", base_ini, budgets);
    return fixture_worker(ini, NULL);
}

static void client_joins_first_budget_whose_every_matcher_matches(void)
{
    struct worker *worker = worker_with_budgets("seeds = app=seed* max_servers=2\n"
                                                "admin = user=ops addr=10.0.0.0/8 max_servers=1\n"
                                                "api = app=api* min_servers=4\n");
    CHECK(worker != NULL);
    if (!worker)
        return;
    union peer_addr local = ipv4("127.0.0.1"), inside = ipv4("10.1.2.3");
    CHECK_STR(budget_match(worker, "seed-products", "app", &local)->name, "seeds");
    CHECK_STR(budget_match(worker, "api-server", "app", &local)->name, "api");
    CHECK_STR(budget_match(worker, "psql", "ops", &inside)->name, "admin");
    CHECK_STR(budget_match(worker, "psql", "ops", &local)->name, "default"); /* addr differs */
    CHECK_STR(budget_match(worker, NULL, "app", &local)->name, "default");
    fixture_worker_free(worker);
}

static void budget_at_max_servers_holds_back_only_its_clients(void)
{
    struct worker *worker = worker_with_budgets("seeds = app=seed* max_servers=2\n");
    if (!worker)
        return;
    union peer_addr local = ipv4("127.0.0.1");
    struct budget *seeds = budget_match(worker, "seed1", "app", &local);
    struct budget *other = budget_match(worker, "web", "app", &local);
    add_pool(worker, "app", "app");
    seeds->lease_share[0].n = 2;
    CHECK_INT(ledger_lease_limit(worker, seeds), LIMIT_BUDGET);
    CHECK_INT(ledger_lease_limit(worker, other), LIMIT_NONE);
    seeds->lease_share[0].n = 1;
    CHECK_INT(ledger_lease_limit(worker, seeds), LIMIT_NONE);
    fixture_worker_free(worker);
}

static void min_servers_of_one_budget_are_kept_from_the_others(void)
{
    struct worker *worker = worker_with_budgets("api = app=api* min_servers=4\n");
    if (!worker)
        return;
    union peer_addr local = ipv4("127.0.0.1");
    struct budget *api = budget_match(worker, "api", "app", &local);
    struct budget *dflt = budget_match(worker, "seed", "app", &local);
    add_pool(worker, "app", "app"); /* capacity: the pool size, 10 */
    dflt->lease_share[0].n = 5;     /* 5 used + 4 held for api = 9 < 10: one more allowed */
    CHECK_INT(ledger_lease_limit(worker, dflt), LIMIT_NONE);
    dflt->lease_share[0].n = 6;
    CHECK_INT(ledger_lease_limit(worker, dflt), LIMIT_RESERVED);
    CHECK_INT(ledger_lease_limit(worker, api), LIMIT_NONE); /* api may use its share */
    api->lease_share[0].n = 4;                              /* api took its share: none held now */
    CHECK_INT(ledger_lease_limit(worker, dflt), LIMIT_RESERVED); /* 10 leases of 10 */
    dflt->lease_share[0].n = 5;
    CHECK_INT(ledger_lease_limit(worker, dflt), LIMIT_NONE);
    fixture_worker_free(worker);
}

static void connections_stop_at_the_first_full_cap(void)
{
    char ini[1024];
    snprintf(ini, sizeof(ini),
             "[sluice]\ndefault_pool_size = 5\nmax_db_connections = 6\nmax_server_connections = 8\n"
             "reserve_pool_size = 1\n"
             "[databases]\napp = host=127.0.0.1 dbname=app\nother = host=127.0.0.1 dbname=other\n");
    struct worker *worker = fixture_worker(ini, NULL);
    if (!worker)
        return;
    struct pool *a1 = add_pool(worker, "app", "u1");
    struct pool *a2 = add_pool(worker, "app", "u2");
    struct pool *o = add_pool(worker, "other", "u1");
    CHECK_INT(ledger_pool_limit(a1, false), LIMIT_NONE);
    set_servers(a1, 5);
    CHECK_INT(ledger_pool_limit(a1, false), LIMIT_POOL);
    CHECK_INT(ledger_pool_limit(a1, true), LIMIT_NONE); /* the reserve pool */
    set_servers(a2, 1);
    CHECK_INT(ledger_pool_limit(a2, false), LIMIT_DB); /* 6 servers on "app" */
    CHECK_INT(ledger_pool_limit(o, false), LIMIT_NONE);
    set_servers(o, 2);
    CHECK_INT(ledger_pool_limit(o, false), LIMIT_GLOBAL); /* 8 in total */
    CHECK_INT(ledger_db_servers(&worker->proc->ledger, "app"), 6);
    CHECK_INT(ledger_user_servers(&worker->proc->ledger, "u1"), 7);
    fixture_worker_free(worker);
}

static void a_server_closed_elsewhere_makes_room_only_under_the_caps_it_shares(void)
{
    struct worker *worker =
        fixture_worker("[sluice]\ndefault_pool_size = 5\nmax_db_connections = 6\n"
                       "[databases]\napp = host=127.0.0.1 dbname=app\n"
                       "other = host=127.0.0.1 dbname=other\n",
                       NULL);
    if (!worker)
        return;
    struct pool *a1 = add_pool(worker, "app", "u1");
    struct pool *a2 = add_pool(worker, "app", "u2");
    struct pool *o = add_pool(worker, "other", "u3");
    set_servers(a1, 5);
    set_servers(a2, 1);
    CHECK_INT(ledger_pool_limit(a2, false), LIMIT_DB);
    CHECK(ledger_pool_fits_if_closed(a2, a1));  /* same database: its room */
    CHECK(!ledger_pool_fits_if_closed(a2, o));  /* another database frees nothing here */
    CHECK(!ledger_pool_fits_if_closed(a1, a2)); /* a1 is at its own pool_size */
    CHECK_INT(ledger_pool_over_limit(a1), LIMIT_NONE);
    fixture_worker_free(worker);
}

static void a_lowered_cap_shows_the_servers_above_it(void)
{
    struct worker *worker =
        fixture_worker("[sluice]\ndefault_pool_size = 10\nmax_db_connections = 4\n"
                       "max_server_connections = 6\n"
                       "[databases]\napp = host=127.0.0.1 dbname=app\n"
                       "other = host=127.0.0.1 dbname=other\n",
                       NULL);
    if (!worker)
        return;
    struct pool *a = add_pool(worker, "app", "u1");
    struct pool *o = add_pool(worker, "other", "u1");
    set_servers(a, 4);
    CHECK_INT(ledger_pool_over_limit(a), LIMIT_NONE); /* at the cap is not above it */
    set_servers(a, 5);
    CHECK_INT(ledger_pool_over_limit(a), LIMIT_DB);
    set_servers(o, 2);
    CHECK_INT(ledger_pool_over_limit(o), LIMIT_GLOBAL); /* 7 servers of 6 */
    a->size = 3;
    CHECK_INT(ledger_pool_over_limit(a), LIMIT_POOL);
    fixture_worker_free(worker);
}

static void min_servers_are_held_out_of_what_max_db_connections_allows(void)
{
    char ini[1024];
    snprintf(ini, sizeof(ini),
             "[sluice]\ndefault_pool_size = 10\nmax_db_connections = 3\n"
             "[databases]\napp = host=127.0.0.1 dbname=app\n"
             "[budgets]\napi = app=api* min_servers=2\n");
    struct worker *worker = fixture_worker(ini, NULL);
    if (!worker)
        return;
    union peer_addr local = ipv4("127.0.0.1");
    struct budget *dflt = budget_match(worker, "batch", "app", &local);
    add_pool(worker, "app", "app");
    enum limit_kind key;
    CHECK_INT(budget_shared_capacity(worker, &key), 3);
    CHECK_INT(key, LIMIT_DB);
    dflt->lease_share[0].n = 1; /* 1 used + 2 held for api = 3 of 3 */
    CHECK_INT(ledger_lease_limit(worker, dflt), LIMIT_RESERVED);
    fixture_worker_free(worker);
}

static void percent_caps_follow_the_servers_max_connections(void)
{
    struct worker *worker =
        fixture_worker("[sluice]\ndefault_pool_size = 30\nmax_db_connections = 80%\n"
                       "[databases]\napp = host=127.0.0.1 dbname=app\n",
                       NULL);
    if (!worker)
        return;
    struct pool *p = add_pool(worker, "app", "u");
    /* unknown yet: one connection at a time, to learn it */
    CHECK_INT(ledger_pool_limit(p, false), LIMIT_NONE);
    struct list_node probe;
    list_append(&p->connecting, &probe);
    CHECK_INT(ledger_pool_limit(p, false), LIMIT_DB);
    list_remove(&p->connecting, &probe);
    p->server_usable = 22; /* 25 on the server, 3 reserved */
    CHECK_INT(budget_limit_value(p, NULL, LIMIT_DB), 17);
    set_servers(p, 17);
    CHECK_INT(ledger_pool_limit(p, false), LIMIT_DB);
    fixture_worker_free(worker);
}

static void a_budget_named_default_sets_the_limits_of_unmatched_clients(void)
{
    struct worker *worker = worker_with_budgets("default = max_servers=3\napi = app=api*\n");
    if (!worker)
        return;
    union peer_addr local = ipv4("127.0.0.1");
    struct budget *d = budget_match(worker, "psql", "app", &local);
    CHECK_STR(d->name, "default");
    CHECK_INT(budget_rule_of(worker->budgets, d)->max_servers, 3);
    CHECK_INT(worker->proc->budgets->n, 2);
    CHECK_STR(budget_match(worker, "api-1", "app", &local)->name, "api");
    fixture_worker_free(worker);
}

static void reload_keeps_live_counts_and_retires_removed_budgets(void)
{
    struct worker *worker = worker_with_budgets("seeds = app=seed* max_servers=2\n");
    if (!worker)
        return;
    union peer_addr local = ipv4("127.0.0.1");
    struct budget *seeds = budget_match(worker, "seed", "app", &local);
    seeds->clients = 3;
    struct config_diag diag = {0};
    struct config *next = config_load_string(base_ini, no_env, &diag);
    config_diag_free(&diag);
    config_free(worker->cfg);
    worker->proc->cfg = worker->cfg = next;
    CHECK_INT(budget_sync(worker->proc), 0);
    CHECK(budget_rule_of(worker->budgets, seeds)->retired);
    CHECK_INT(seeds->clients, 3);
    CHECK_STR(budget_match(worker, "seed", "app", &local)->name, "default");
    fixture_worker_free(worker);
}

int main(void)
{
    RUN(client_joins_first_budget_whose_every_matcher_matches);
    RUN(budget_at_max_servers_holds_back_only_its_clients);
    RUN(min_servers_of_one_budget_are_kept_from_the_others);
    RUN(connections_stop_at_the_first_full_cap);
    RUN(a_server_closed_elsewhere_makes_room_only_under_the_caps_it_shares);
    RUN(a_lowered_cap_shows_the_servers_above_it);
    RUN(min_servers_are_held_out_of_what_max_db_connections_allows);
    RUN(percent_caps_follow_the_servers_max_connections);
    RUN(a_budget_named_default_sets_the_limits_of_unmatched_clients);
    RUN(reload_keeps_live_counts_and_retires_removed_budgets);
    return CHECK_DONE();
}
