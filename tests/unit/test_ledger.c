/* Unit tests for ledger.c on one thread: a take checks every cap and counts in every scope at
 * once, or refuses and changes nothing; gives undo takes; the counters always equal what walking
 * the pools finds (ledger_audit); the wait list names the oldest worker a freed slot serves.
 * Pools come from a config (no sockets); servers are bare structs on the lists. The same under
 * several threads: test_ledger_threads.c. */
#include "ledger_fixture.h"

#include <limits.h>
#include <stdatomic.h>

#include "client.h"
#include "config.h"


struct snapshot {
    int servers, own, key, db, user;
};

static struct snapshot snap(const struct pool *p)
{
    const struct ledger *l = &p->worker->proc->ledger;
    return (struct snapshot){l->servers, l->own_servers, p->ledger_key->servers,
                             ledger_db_servers(l, p->db_name),
                             ledger_user_servers(l, p->user_name)};
}

static bool same(struct snapshot a, struct snapshot b)
{
    return memcmp(&a, &b, sizeof(a)) == 0;
}

static void each_cap_refuses_in_order_and_a_refusal_changes_nothing(void)
{
    struct worker *worker = app_from("[sluice]\ndefault_pool_size = 3\nmax_db_connections = 4\n"
                                     "max_user_connections = 5\nmax_server_connections = 7\n"
                                     "[databases]\na = host=127.0.0.1\nb = host=127.0.0.1\n"
                                     "c = host=127.0.0.1\n");
    if (!worker)
        return;
    struct pool *a1 = pool_get(worker, NULL, "u1", "a"), *a2 = pool_get(worker, NULL, "u2", "a");
    struct pool *b1 = pool_get(worker, NULL, "u1", "b"), *c2 = pool_get(worker, NULL, "u2", "c");
    struct pool *c3 = pool_get(worker, NULL, "u3", "c");
    for (int i = 0; i < 3; i++)
        CHECK_INT(take(a1, false), LIMIT_NONE);
    struct snapshot before = snap(a1);
    CHECK_INT(take(a1, false), LIMIT_POOL); /* pool_size 3 */
    CHECK(same(before, snap(a1)));
    CHECK_INT(take(a2, false), LIMIT_NONE);
    before = snap(a2);
    CHECK_INT(take(a2, false), LIMIT_DB); /* 4 on database a */
    CHECK(same(before, snap(a2)));
    CHECK_INT(take(b1, false), LIMIT_NONE);
    CHECK_INT(take(b1, false), LIMIT_NONE);
    before = snap(b1);
    CHECK_INT(take(b1, false), LIMIT_USER); /* 5 as user u1 */
    CHECK(same(before, snap(b1)));
    CHECK_INT(take(c2, false), LIMIT_NONE);
    before = snap(c3);
    CHECK_INT(take(c3, false), LIMIT_GLOBAL); /* 7 in all */
    CHECK(same(before, snap(c3)));
    CHECK_INT(worker->proc->ledger.servers, 7);
    CHECK_INT(ledger_db_servers(&worker->proc->ledger, "a"), 4);
    CHECK_INT(ledger_user_servers(&worker->proc->ledger, "u1"), 5);
    CHECK(ledger_audit(worker));
    give(a1); /* one back: every scope of a1 has room again */
    CHECK_INT(take(c3, false), LIMIT_NONE);
    CHECK_INT(take(a1, false), LIMIT_GLOBAL);
    CHECK(ledger_audit(worker));
    free_app(worker);
}

static void the_reserve_counts_only_when_in_play(void)
{
    struct worker *worker = app_from("[sluice]\ndefault_pool_size = 2\nreserve_pool_size = 1\n"
                                     "[databases]\na = host=127.0.0.1\n");
    if (!worker)
        return;
    struct pool *p = pool_get(worker, NULL, "u", "a");
    CHECK_INT(take(p, false), LIMIT_NONE);
    CHECK_INT(take(p, false), LIMIT_NONE);
    CHECK_INT(take(p, false), LIMIT_POOL);
    CHECK_INT(take(p, true), LIMIT_NONE); /* after reserve_pool_timeout */
    CHECK_INT(take(p, true), LIMIT_POOL);
    CHECK_INT(ledger_pool_over_limit(p), LIMIT_NONE); /* the reserve is within the caps */
    p->reserve_size = 0;                              /* a reload took it away */
    CHECK_INT(ledger_pool_over_limit(p), LIMIT_POOL);
    CHECK(ledger_audit(worker));
    free_app(worker);
}

static void percent_caps_take_one_at_a_time_until_resolved(void)
{
    struct worker *worker = app_from("[sluice]\ndefault_pool_size = 30\nmax_db_connections = 50%\n"
                                     "max_server_connections = 80%\n"
                                     "[databases]\na = host=127.0.0.1\n");
    if (!worker)
        return;
    struct pool *p = pool_get(worker, NULL, "u", "a");
    struct server probe = {.pool = p};
    list_append(&p->connecting, &probe.node); /* a server learning max_connections */
    struct ledger_caps caps;
    budget_server_caps(p, false, &caps);
    CHECK(caps.awaiting_probe);
    CHECK_INT(ledger_take_server(&worker->proc->ledger, p->ledger_key, 0, &caps), LIMIT_DB);
    list_remove(&p->connecting, &probe.node);
    p->server_usable = 10; /* told: 50% of 10 = 5 per database, 80% = 8 in all */
    budget_server_caps(p, false, &caps);
    CHECK(!caps.awaiting_probe);
    CHECK_INT(caps.db, 5);
    CHECK_INT(caps.global, 8);
    for (int i = 0; i < 5; i++)
        CHECK_INT(take(p, false), LIMIT_NONE);
    CHECK_INT(take(p, false), LIMIT_DB);
    p->server_usable = 4; /* a reload found a smaller server: 2 per database */
    CHECK_INT(ledger_pool_over_limit(p), LIMIT_DB);
    CHECK(ledger_audit(worker));
    free_app(worker);
}

static void auth_query_connections_count_in_db_user_and_global(void)
{
    struct worker *worker =
        app_from("[sluice]\nmax_db_connections = 2\nmax_server_connections = 3\n"
                 "[databases]\na = host=127.0.0.1\nb = host=127.0.0.1\n");
    if (!worker)
        return;
    struct pool *p = pool_get(worker, NULL, "u", "a");
    struct ledger_caps caps;
    budget_own_caps(worker, "a", "auth", &caps);
    CHECK_INT(ledger_take_own(&worker->proc->ledger, 0, "a", "auth", &caps), LIMIT_NONE);
    CHECK_INT(take(p, false), LIMIT_NONE);
    struct snapshot before = snap(p);
    CHECK_INT(ledger_take_own(&worker->proc->ledger, 0, "a", "auth", &caps), LIMIT_DB);
    CHECK_INT(take(p, false), LIMIT_DB);
    CHECK(same(before, snap(p)));
    budget_own_caps(worker, "b", "auth", &caps);
    CHECK_INT(ledger_take_own(&worker->proc->ledger, 0, "b", "auth", &caps), LIMIT_NONE);
    CHECK_INT(ledger_take_own(&worker->proc->ledger, 0, "b", "auth", &caps), LIMIT_GLOBAL);
    CHECK_INT(worker->proc->ledger.own_servers, 2);
    CHECK_INT(ledger_user_servers(&worker->proc->ledger, "auth"), 2);
    CHECK_INT(ledger_user_servers(&worker->proc->ledger, NULL), 3);
    ledger_give_own(&worker->proc->ledger, 0, "a", "auth");
    ledger_give_own(&worker->proc->ledger, 0, "b", "auth");
    CHECK_INT(worker->proc->ledger.own_servers, 0);
    CHECK_INT(worker->proc->ledger.servers, 1);
    CHECK(ledger_audit(worker));
    free_app(worker);
}

static void leases_stop_at_max_servers_and_at_others_min_servers(void)
{
    struct worker *worker = app_from("[sluice]\ndefault_pool_size = 5\n"
                                     "[databases]\na = host=127.0.0.1\n"
                                     "[budgets]\nseeds = app=seed* max_servers=2\n"
                                     "api = app=api* min_servers=2\n");
    if (!worker)
        return;
    pool_get(worker, NULL, "u", "a"); /* capacity: 5 */
    union peer_addr addr = local_addr();
    struct budget *seeds = budget_match(worker, "seed", "u", &addr);
    struct budget *api = budget_match(worker, "api", "u", &addr);
    struct budget *dflt = budget_match(worker, "psql", "u", &addr);
    CHECK_INT(ledger_take_lease(worker, seeds), LIMIT_NONE);
    CHECK_INT(ledger_take_lease(worker, seeds), LIMIT_NONE);
    CHECK_INT(ledger_take_lease(worker, seeds), LIMIT_BUDGET);
    CHECK_INT(budget_leases(seeds, BUDGET_LEASE_SHARES), 2);
    CHECK_INT(ledger_lease_room(worker, seeds), 0);
    CHECK_INT(ledger_take_lease(worker, dflt), LIMIT_NONE);     /* 2 used + 2 held for api < 5 */
    CHECK_INT(ledger_take_lease(worker, dflt), LIMIT_RESERVED); /* 3 used + 2 held */
    CHECK_INT(budget_leases(dflt, BUDGET_LEASE_SHARES), 1);
    CHECK_INT(ledger_take_lease(worker, api), LIMIT_NONE); /* api may use its share */
    CHECK_INT(ledger_take_lease(worker, api), LIMIT_NONE);
    CHECK_INT(ledger_take_lease(worker, api), LIMIT_RESERVED); /* 5 of 5, min_servers in play */
    CHECK_INT(budget_leases(api, BUDGET_LEASE_SHARES), 2);
    ledger_give_lease(worker, seeds);
    CHECK_INT(ledger_lease_room(worker, seeds), 1);
    CHECK_INT(ledger_take_lease(worker, NULL), LIMIT_NONE); /* no budget: nothing to count */
    free_app(worker);
}

static void clients_stop_at_max_clients(void)
{
    struct worker *worker = app_from("[sluice]\n[databases]\na = host=127.0.0.1\n"
                                     "[budgets]\nweb = app=web* max_clients=2\n");
    if (!worker)
        return;
    union peer_addr addr = local_addr();
    struct budget *web = budget_match(worker, "web", "u", &addr);
    CHECK(ledger_take_client(worker, web));
    CHECK(ledger_take_client(worker, web));
    CHECK(!ledger_take_client(worker, web));
    CHECK_INT(web->clients, 2);
    ledger_give_client(&worker->proc->ledger, web);
    CHECK(ledger_take_client(worker, web));
    CHECK(ledger_take_client(worker, NULL));
    free_app(worker);
}

/* A login as client_login_ok takes it: counted, a client on its pool's idle list (the console's
 * with no names); LOGIN_COUNTED or why not. */
static enum login_take login(struct pool *p, const char *user, const struct ledger_login_caps *caps)
{
    const char *db = p->is_admin ? NULL : p->db_name;
    enum login_take k = ledger_take_login(&p->worker->proc->ledger, (int)p->worker->index, db,
                                          p->is_admin ? NULL : user, caps);
    if (k == LOGIN_COUNTED) {
        struct client *c = calloc(1, sizeof(*c));
        c->user = strdup(user);
        c->pool = p;
        list_append(&p->idle_clients, &c->node);
    }
    return k;
}

/* Its last client leaves (client_set_state entering CLOSING): off the list, its slot back. */
static void leave(struct pool *p)
{
    struct client *c = container_of(list_last(&p->idle_clients), struct client, node);
    list_remove(&p->idle_clients, &c->node);
    ledger_give_login(&p->worker->proc->ledger, (int)p->worker->index,
                      p->is_admin ? NULL : p->db_name, p->is_admin ? NULL : c->user);
    free(c->user);
    free(c);
}

struct login_counts {
    int all, db_a, db_b, u1, u2, forced;
};

static struct login_counts login_counts(const struct ledger *l)
{
    return (struct login_counts){ledger_db_clients(l, NULL),   ledger_db_clients(l, "a"),
                                 ledger_db_clients(l, "b"),    ledger_user_clients(l, "u1"),
                                 ledger_user_clients(l, "u2"), ledger_user_clients(l, "forced")};
}

static bool same_logins(struct login_counts a, struct login_counts b)
{
    return memcmp(&a, &b, sizeof(a)) == 0;
}

/* max_client_conn counts every logged-in client, the admin console's too; the per-database and
 * per-user caps count a database's clients only, each by its own user name (not a forced
 * user=). Caps bind in that order, a refusal changes nothing, and the walk agrees. */
static void logins_count_globally_per_database_and_per_user(void)
{
    struct worker *worker = app_from("[sluice]\n[databases]\na = host=127.0.0.1 user=forced\n"
                                     "b = host=127.0.0.1\n");
    if (!worker)
        return;
    struct pool *a1 = pool_get(worker, config_find_db(worker->cfg, "a"), "u1", "a");
    struct pool *b1 = pool_get(worker, NULL, "u1", "b"), *b2 = pool_get(worker, NULL, "u2", "b");
    struct pool *console = pool_get(worker, NULL, "u1", "pgbouncer");
    console->is_admin = true;
    CHECK_STR(a1->user_name, "forced");
    const struct ledger_login_caps caps = {.global = 6, .db = 2, .user = 3};
    CHECK_INT(login(a1, "u1", &caps), LOGIN_COUNTED);
    CHECK_INT(login(a1, "u2", &caps), LOGIN_COUNTED);
    struct login_counts before = login_counts(&worker->proc->ledger);
    CHECK_INT(login(a1, "u2", &caps), LOGIN_OVER_DB_CLIENTS); /* 2 on database a */
    CHECK(same_logins(before, login_counts(&worker->proc->ledger)));
    CHECK_INT(ledger_user_clients(&worker->proc->ledger, "forced"),
              0); /* by the client's own name */
    CHECK_INT(login(b1, "u1", &caps), LOGIN_COUNTED);
    CHECK_INT(login(b1, "u1", &caps), LOGIN_COUNTED);
    CHECK_INT(login(b2, "u2", &caps), LOGIN_OVER_DB_CLIENTS); /* 2 on database b */
    const struct ledger_login_caps wider = {.global = 6, .db = 5, .user = 2};
    before = login_counts(&worker->proc->ledger);
    CHECK_INT(login(b2, "u1", &wider), LOGIN_OVER_USER_CLIENTS); /* u1: 1 on a, 2 on b */
    CHECK(same_logins(before, login_counts(&worker->proc->ledger)));
    CHECK_INT(login(console, "u1", &wider), LOGIN_COUNTED); /* the console: globally only */
    CHECK_INT(login(console, "u1", &wider), LOGIN_COUNTED);
    CHECK_INT(ledger_user_clients(&worker->proc->ledger, "u1"), 3);
    CHECK_INT(ledger_db_clients(&worker->proc->ledger, "pgbouncer"), 0);
    CHECK_INT(login(b2, "u3", &wider), LOGIN_OVER_CLIENT_CONN); /* 6 in all */
    CHECK_INT(ledger_db_clients(&worker->proc->ledger, NULL), 6);
    CHECK(ledger_audit(worker));
    leave(console);
    CHECK_INT(login(b2, "u3", &wider), LOGIN_COUNTED);
    CHECK(ledger_audit(worker));
    leave(a1);
    leave(b1);
    CHECK_INT(ledger_db_clients(&worker->proc->ledger, "a"), 1);
    CHECK_INT(ledger_user_clients(&worker->proc->ledger, "u1"), 2);
    CHECK(ledger_audit(worker));
    worker->proc->ledger.clients++; /* the audit logs the difference (an expected line) */
    CHECK(!ledger_audit(worker));
    worker->proc->ledger.clients--;
    struct pool *pools[] = {a1, b1, b2, console};
    for (size_t i = 0; i < sizeof(pools) / sizeof(pools[0]); i++)
        while (pools[i]->idle_clients.count > 0)
            leave(pools[i]);
    CHECK_INT(ledger_db_clients(&worker->proc->ledger, NULL), 0);
    CHECK(ledger_audit(worker));
    free_app(worker);
}

/* Many takes and gives over pools that share databases and users: after each, the counters
 * are what walking the lists finds, and a counter set wrong by hand is caught. */
static void counters_always_equal_the_walked_counts(void)
{
    struct worker *worker = app_from("[sluice]\ndefault_pool_size = 4\nmax_db_connections = 6\n"
                                     "max_user_connections = 7\nmax_server_connections = 10\n"
                                     "reserve_pool_size = 1\n"
                                     "[databases]\na = host=127.0.0.1\nb = host=127.0.0.1\n");
    if (!worker)
        return;
    struct pool *pools[] = {pool_get(worker, NULL, "u1", "a"), pool_get(worker, NULL, "u2", "a"),
                            pool_get(worker, NULL, "u1", "b"), pool_get(worker, NULL, "u2", "b")};
    unsigned seed = 12345;
    bool ok = true;
    for (int step = 0; step < 2000; step++) {
        seed = seed * 1103515245u + 12345u;
        struct pool *p = pools[(seed >> 16) % 4];
        if ((seed >> 8) % 3 != 0) {
            (void)take(p, (seed >> 4) % 2);
        } else if (p->idle.count > 0) {
            give(p);
        }
        ok &= ledger_audit(worker);
        ok &= worker->proc->ledger.servers <= 10 &&
              ledger_db_servers(&worker->proc->ledger, "a") <= 6 &&
              ledger_user_servers(&worker->proc->ledger, "u1") <= 7 && p->ledger_key->servers <= 5;
    }
    CHECK(ok);
    pools[0]->ledger_key->servers++; /* the audit logs the difference (an expected line) */
    CHECK(!ledger_audit(worker));
    pools[0]->ledger_key->servers--;
    CHECK(ledger_audit(worker));
    free_app(worker);
}

/* ---- the wait list: slots go to the oldest waiting worker they can serve ---- */

static void a_freed_slot_wakes_the_oldest_worker_it_serves(void)
{
    struct worker *worker = app_from("[sluice]\ndefault_pool_size = 1\n"
                                     "[databases]\na = host=127.0.0.1\nb = host=127.0.0.1\n");
    if (!worker)
        return;
    struct ledger *l = &worker->proc->ledger;
    struct ledger_key *a1 = pool_get(worker, NULL, "u1", "a")->ledger_key;
    struct ledger_key *a2 = pool_get(worker, NULL, "u2", "a")->ledger_key;
    struct ledger_key *b1 = pool_get(worker, NULL, "u1", "b")->ledger_key;
    struct ledger_caps one = {.pool = 1};
    CHECK_INT(ledger_take_server(l, a1, 0, &one), LIMIT_NONE);
    CHECK_INT(ledger_give_server(l, a1, 0), LEDGER_NO_WORKER); /* nobody waits */
    CHECK_INT(ledger_take_server(l, a1, 0, &one), LIMIT_NONE);
    /* arrival times out of order; one entry per (key, worker) */
    CHECK_INT(ledger_wait_slot(l, a1, 2, LIMIT_POOL, 300), 0);
    CHECK_INT(ledger_wait_slot(l, a2, 1, LIMIT_DB, 200), 0);
    CHECK_INT(ledger_wait_slot(l, b1, 3, LIMIT_USER, 100), 0);
    CHECK_INT(ledger_wait_slot(l, b1, 0, LIMIT_GLOBAL, 400), 0);
    uint64_t since = 0;
    CHECK_INT(ledger_wait_oldest(l, &since), 3);
    CHECK_INT(since, 100);
    /* a1's slot: b1's (user u1, 100) is oldest; then a2's (database a, 200); then a1's own */
    CHECK_INT(ledger_give_server(l, a1, 0), 3);
    CHECK_INT(ledger_take_server(l, a1, 0, &one), LIMIT_NONE);
    CHECK_INT(ledger_give_server(l, a1, 0), 1);
    CHECK_INT(ledger_take_server(l, a1, 0, &one), LIMIT_NONE);
    /* a paused key's waiter is passed over: the global one (400) is next */
    ledger_key_set_state(l, a1, LEDGER_KEY_PAUSED);
    CHECK_INT(ledger_key_get_state(a1), LEDGER_KEY_PAUSED);
    CHECK_INT(ledger_give_server(l, a1, 0), 0);
    CHECK_INT(ledger_take_server(l, a1, 0, &one), LIMIT_NONE);
    CHECK_INT(ledger_give_server(l, a1, 0), LEDGER_NO_WORKER);
    ledger_key_set_state(l, a1, LEDGER_KEY_SERVING);
    CHECK_STR(ledger_key_state_name(ledger_key_get_state(a1)), "serving");
    /* registering again moves the entry to its new time; done takes it off */
    CHECK_INT(ledger_wait_slot(l, b1, 3, LIMIT_POOL, 50), 0);
    CHECK_INT(ledger_wait_oldest(l, &since), 3);
    CHECK_INT(ledger_wait_slot(l, b1, 3, LIMIT_POOL, 500), 0); /* after a1's 300 now */
    CHECK_INT(ledger_wait_oldest(l, &since), 2);
    ledger_wait_done(l, a1, 2);
    CHECK_INT(ledger_wait_oldest(l, &since), 3);
    CHECK_INT(since, 500);
    CHECK_INT(ledger_take_server(l, a1, 0, &one), LIMIT_NONE);
    CHECK_INT(ledger_give_server(l, a1, 0), LEDGER_NO_WORKER); /* b1's pool cap: not a1's slot */
    CHECK_INT(ledger_take_server(l, b1, 0, &one), LIMIT_NONE);
    CHECK_INT(ledger_give_server(l, b1, 0), 3);
    CHECK_INT(ledger_wait_oldest(l, NULL), LEDGER_NO_WORKER);
    /* auth_query's slot frees its database, user and global scopes */
    CHECK_INT(ledger_wait_slot(l, a2, 1, LIMIT_DB, 10), 0);
    struct ledger_caps none = {0};
    CHECK_INT(ledger_take_own(l, 0, "b", "auth", &none), LIMIT_NONE);
    CHECK_INT(ledger_give_own(l, 0, "b", "auth"), LEDGER_NO_WORKER); /* database b, not a */
    CHECK_INT(ledger_take_own(l, 0, "a", "auth", &none), LIMIT_NONE);
    CHECK_INT(ledger_give_own(l, 0, "a", "auth"), 1);
    CHECK(ledger_now_ms() > 0);
    free_app(worker);
}

/* The state the grant and claim tests start from: database a (keys a1, a2, a3 of users u1..u3)
 * and b (key b2) under default_pool_size = pool_size and max_db_connections = max_db (0: none);
 * worker 0 holds `held` servers of a1, so worker 1's take of `waiter` is refused for `refusal`,
 * and that waiter (arrived at 100, one client) is registered with ledger_wait_need. */
struct waiter_on_worker_1 {
    struct worker *worker;
    struct ledger *l;
    struct ledger_key *a1, *a2, *a3, *b2;
    struct ledger_caps caps;
};

static bool a1_held_and_a_waiter_on_worker_1(struct waiter_on_worker_1 *s, int pool_size,
                                             int max_db, int held, const char *waiter_user,
                                             enum limit_kind refusal)
{
    char ini[256];
    snprintf(ini, sizeof(ini),
             "[sluice]\ndefault_pool_size = %d\nmax_db_connections = %d\n"
             "[databases]\na = host=127.0.0.1\nb = host=127.0.0.1\n",
             pool_size, max_db);
    s->worker = app_from(ini);
    if (!s->worker)
        return false;
    s->l = &s->worker->proc->ledger;
    s->a1 = pool_get(s->worker, NULL, "u1", "a")->ledger_key;
    s->a2 = pool_get(s->worker, NULL, "u2", "a")->ledger_key;
    s->a3 = pool_get(s->worker, NULL, "u3", "a")->ledger_key;
    s->b2 = pool_get(s->worker, NULL, "u2", "b")->ledger_key;
    s->caps = (struct ledger_caps){.pool = pool_size, .db = max_db};
    for (int i = 0; i < held; i++)
        CHECK_INT(ledger_take_server(s->l, s->a1, 0, &s->caps), LIMIT_NONE);
    struct ledger_key *waiter = pool_get(s->worker, NULL, waiter_user, "a")->ledger_key;
    CHECK_INT(ledger_take_server(s->l, waiter, 1, &s->caps), refusal);
    CHECK_INT(ledger_wait_need(s->l, waiter, 1, refusal, 100, 1, &s->caps, 0), 1);
    return true;
}

/* A slot freed while another worker's older waiter is registered is kept for that waiter (issue
 * 21: the longest waiter across workers goes first): the give takes it for the waiter's key in
 * the same critical section (a grant, counted in transit), so a younger take on the freeing
 * worker or a third one is refused until the woken worker's own take finds it. Under a shared
 * cap too: the slot of another key of the database goes to the waiter's key. A grant its worker
 * does not use is dropped, and goes on to the next waiter it serves. */
static void a_freed_slot_is_kept_for_the_older_waiter_it_wakes(void)
{
    /* pool_size: worker 1's waiter (arrived at 100) is held while worker 0 has a1's one slot */
    struct waiter_on_worker_1 s;
    if (!a1_held_and_a_waiter_on_worker_1(&s, 1, 2, 1, "u1", LIMIT_POOL))
        return;
    struct worker *worker = s.worker;
    struct ledger *l = s.l;
    struct ledger_key *a1 = s.a1, *a2 = s.a2, *a3 = s.a3;
    struct ledger_caps caps = s.caps;
    CHECK_INT(ledger_give_server(l, a1, 0), 1);
    CHECK_INT(ledger_take_server(l, a1, 0, &caps), LIMIT_POOL); /* worker 0's younger one */
    CHECK_INT(ledger_take_server(l, a1, 2, &caps), LIMIT_POOL); /* a third worker's */
    CHECK_INT(a1->servers, 1);                                  /* the grant counts */
    CHECK(ledger_audit(worker));                                /* in transit, not worker 0's */
    CHECK_INT(ledger_take_server(l, a1, 1, &caps), LIMIT_NONE); /* the woken worker's take */
    CHECK_INT(a1->servers, 1);
    CHECK_INT(ledger_give_server(l, a1, 1), LEDGER_NO_WORKER); /* served: its entry is gone */
    /* max_db_connections: a2's slot goes to worker 1's older waiter of a3 */
    CHECK_INT(ledger_take_server(l, a1, 0, &caps), LIMIT_NONE);
    CHECK_INT(ledger_take_server(l, a2, 0, &caps), LIMIT_NONE);
    CHECK_INT(ledger_take_server(l, a3, 1, &caps), LIMIT_DB);
    CHECK_INT(ledger_wait_need(l, a3, 1, LIMIT_DB, 200, 1, &caps, 0), 1);
    CHECK_INT(ledger_give_server(l, a2, 0), 1);
    CHECK_INT(ledger_take_server(l, a2, 0, &caps), LIMIT_DB);
    CHECK_INT(ledger_take_server(l, a3, 1, &caps), LIMIT_NONE);
    CHECK_INT(ledger_db_servers(l, "a"), 2);
    /* a grant its worker did not use (its waiter left) goes on to the next waiter it serves */
    CHECK_INT(ledger_take_server(l, a2, 2, &caps), LIMIT_DB);
    CHECK_INT(ledger_wait_need(l, a2, 2, LIMIT_DB, 300, 1, &caps, 0), 1);
    CHECK_INT(ledger_take_server(l, a2, 0, &caps), LIMIT_DB);
    CHECK_INT(ledger_wait_need(l, a2, 0, LIMIT_DB, 400, 1, &caps, 0), 1);
    CHECK_INT(ledger_give_server(l, a3, 1), 2);
    int wake = LEDGER_NO_WORKER;
    ledger_offer_grants(l, 0);
    ledger_offer_grants(l, 2);
    CHECK(!ledger_drop_grant(l, 0, &wake)); /* worker 0 holds none */
    CHECK(ledger_drop_grant(l, 2, &wake));
    CHECK_INT(wake, 0);
    CHECK(!ledger_drop_grant(l, 2, &wake));
    CHECK_INT(ledger_take_server(l, a2, 2, &caps), LIMIT_POOL); /* a2's one slot: worker 0's */
    CHECK_INT(ledger_take_server(l, a2, 0, &caps), LIMIT_NONE);
    CHECK_INT(ledger_db_servers(l, "a"), 2);
    CHECK_INT(ledger_wait_oldest(l, NULL), LEDGER_NO_WORKER);
    free_app(worker);
}

/* A grant is counted under the caps its waiter registered; its worker's take uses it only under
 * the caps it asks with now (issue 21): a RELOAD that lowered a cap since, or a NN% cap now
 * awaiting its probe, refuses it as it refuses any take, and the grant is dropped after the
 * dispatch. Before, the take used it unchecked and a server opened above the lowered cap. */
static void a_grant_is_taken_only_under_the_takers_caps_now(void)
{
    struct waiter_on_worker_1 s;
    if (!a1_held_and_a_waiter_on_worker_1(&s, 2, 2, 2, "u2", LIMIT_DB))
        return;
    struct ledger *l = s.l;
    struct ledger_key *a1 = s.a1, *a2 = s.a2;
    struct ledger_caps caps = s.caps;
    CHECK_INT(ledger_give_server(l, a1, 0), 1); /* granted under max_db_connections = 2 */
    CHECK_INT(ledger_db_servers(l, "a"), 2);
    /* a reload lowered max_db_connections to 1 before worker 1 took it */
    struct ledger_caps lowered = {.pool = 2, .db = 1};
    CHECK_INT(ledger_take_server(l, a2, 1, &lowered), LIMIT_DB);
    struct ledger_caps probing = {.pool = 2, .db = 2, .awaiting_probe = true};
    CHECK_INT(ledger_take_server(l, a2, 1, &probing), LIMIT_DB);
    CHECK_INT(ledger_db_servers(l, "a"), 2);
    int wake = LEDGER_NO_WORKER;
    ledger_offer_grants(l, 1); /* its dispatch */
    CHECK(ledger_drop_grant(l, 1, &wake));
    CHECK_INT(wake, LEDGER_NO_WORKER);
    CHECK_INT(ledger_db_servers(l, "a"), 1);
    CHECK_INT(ledger_take_server(l, a2, 1, &lowered), LIMIT_DB);
    /* under the caps it was granted under, the take uses it */
    CHECK_INT(ledger_wait_need(l, a2, 1, LIMIT_DB, 100, 1, &caps, 0), 1);
    CHECK_INT(ledger_take_server(l, a1, 0, &caps), LIMIT_NONE);
    CHECK_INT(ledger_give_server(l, a1, 0), 1);
    CHECK_INT(ledger_take_server(l, a2, 1, &caps), LIMIT_NONE);
    CHECK(!ledger_drop_grant(l, 1, &wake));
    CHECK_INT(ledger_db_servers(l, "a"), 2);
    CHECK_INT(a2->servers, 1);
    free_app(s.worker);
}

/* A grant dropped unused goes on to the oldest waiter it serves but the dropping worker's own
 * of that key (its dispatch found no use for it there): the dropping worker's waiter of another
 * key is served before a younger one elsewhere (issue 21: the longest waiter first). Before, every
 * entry of the dropping worker was passed over, and a third worker's younger waiter took the
 * slot that the grant had just kept from the older one. */
static void a_dropped_grant_goes_to_the_droppers_older_waiter_of_another_key(void)
{
    struct waiter_on_worker_1 s;
    if (!a1_held_and_a_waiter_on_worker_1(&s, 1, 1, 1, "u2", LIMIT_DB))
        return;
    struct ledger *l = s.l;
    struct ledger_key *a1 = s.a1, *a3 = s.a3;
    struct ledger_caps caps = s.caps;
    CHECK_INT(ledger_take_server(l, a3, 1, &caps), LIMIT_DB);
    CHECK_INT(ledger_wait_need(l, a3, 1, LIMIT_DB, 150, 1, &caps, 0), 1);
    CHECK_INT(ledger_take_server(l, a3, 2, &caps), LIMIT_DB);
    CHECK_INT(ledger_wait_need(l, a3, 2, LIMIT_DB, 200, 1, &caps, 0), 1);
    CHECK_INT(ledger_give_server(l, a1, 0), 1); /* granted to worker 1's a2 waiter */
    /* worker 1's dispatch: its a2 waiter left; its a3 waiter (150) is held by the grant */
    ledger_offer_grants(l, 1);
    CHECK_INT(ledger_take_server(l, a3, 1, &caps), LIMIT_DB);
    CHECK_INT(ledger_wait_need(l, a3, 1, LIMIT_DB, 150, 1, &caps, 0), 0);
    int wake = LEDGER_NO_WORKER;
    CHECK(ledger_drop_grant(l, 1, &wake));
    CHECK_INT(wake, 1); /* its own a3 waiter, older than worker 2's */
    CHECK_INT(ledger_take_server(l, a3, 2, &caps), LIMIT_POOL);
    CHECK_INT(ledger_take_server(l, a3, 1, &caps), LIMIT_NONE);
    CHECK(!ledger_drop_grant(l, 1, &wake));
    CHECK_INT(ledger_db_servers(l, "a"), 1);
    CHECK_INT(ledger_wait_oldest(l, NULL), 2);
    free_app(s.worker);
}

/* A grant a give makes while its worker's dispatch runs, after that dispatch's take of the key,
 * is not dropped at that dispatch's end: the wake-up that follows the grant dispatches again and
 * its take uses it. Before, the end of the dispatch under way gave it on to a younger waiter,
 * and the older one it was kept for registered again behind it. */
static void a_grant_made_during_a_dispatch_is_the_next_dispatchs(void)
{
    struct waiter_on_worker_1 s;
    if (!a1_held_and_a_waiter_on_worker_1(&s, 1, 0, 1, "u1", LIMIT_POOL))
        return;
    struct worker *worker = s.worker;
    struct ledger *l = s.l;
    struct ledger_key *a1 = s.a1;
    struct ledger_caps caps = s.caps;
    CHECK_INT(ledger_take_server(l, a1, 2, &caps), LIMIT_POOL);
    CHECK_INT(ledger_wait_need(l, a1, 2, LIMIT_POOL, 200, 1, &caps, 0), 1);
    /* worker 1's dispatch: its take of a1 ran (refused), then worker 0's give grants to it */
    ledger_offer_grants(l, 1);
    CHECK_INT(ledger_take_server(l, a1, 1, &caps), LIMIT_POOL);
    CHECK_INT(ledger_give_server(l, a1, 0), 1);
    int wake = LEDGER_NO_WORKER;
    CHECK(!ledger_drop_grant(l, 1, &wake)); /* the dispatch's end: kept */
    CHECK_INT(ledger_take_server(l, a1, 2, &caps), LIMIT_POOL);
    /* the wake-up's dispatch */
    ledger_offer_grants(l, 1);
    CHECK_INT(ledger_take_server(l, a1, 1, &caps), LIMIT_NONE);
    CHECK(!ledger_drop_grant(l, 1, &wake));
    CHECK_INT(a1->servers, 1);
    /* one its next dispatch does not use is dropped then */
    CHECK_INT(ledger_give_server(l, a1, 1), 2);
    CHECK(ledger_audit(worker)); /* the grant in transit, and in worker 2's count */
    atomic_fetch_add(&l->granted[2], 1);
    CHECK(!ledger_audit(worker));
    atomic_fetch_sub(&l->granted[2], 1);
    ledger_offer_grants(l, 2);
    CHECK(ledger_drop_grant(l, 2, &wake));
    CHECK_INT(wake, LEDGER_NO_WORKER);
    CHECK_INT(a1->servers, 0);
    free_app(worker);
}

/* A released server goes to another worker's older waiter of another key under a cap both
 * share (issue 21), as pool_longer_waiter_elsewhere does between one worker's pools: a waiter there
 * that arrived more than the slack earlier gets the server closed for it (LEDGER_CLAIM_CLOSE),
 * and the slot freed is kept for it, rather than the releasing worker serving its own younger
 * waiter. Not within the slack, not for a waiter the close would not make room for. */
static void a_released_server_closes_for_an_older_waiter_of_another_key_under_a_shared_cap(void)
{
    struct waiter_on_worker_1 s;
    if (!a1_held_and_a_waiter_on_worker_1(&s, 2, 2, 2, "u2", LIMIT_DB))
        return;
    struct ledger *l = s.l;
    struct ledger_key *a1 = s.a1, *a2 = s.a2, *b2 = s.b2;
    struct ledger_caps caps = s.caps;
    /* worker 0 releases an a1 server with its own waiter of a1 there since 103: within the
     * slack, it serves its own */
    struct ledger_claim c = ledger_claim_older(l, a1, 0, 103, 5, 0, 0);
    CHECK_INT(c.kind, LEDGER_CLAIM_NONE);
    /* a server of database b makes no room in database a */
    CHECK_INT(ledger_take_server(l, b2, 0, &caps), LIMIT_NONE);
    CHECK_INT(ledger_claim_older(l, b2, 0, 200, 5, 0, 0).kind, LEDGER_CLAIM_NONE);
    /* its waiter since 200: the server closes for worker 1's older waiter of a2 */
    c = ledger_claim_older(l, a1, 0, 200, 5, 0, 0);
    CHECK_INT(c.kind, LEDGER_CLAIM_CLOSE);
    CHECK_INT(c.worker, 1);
    CHECK(c.key == a2);
    /* one is on its way */
    CHECK_INT(ledger_claim_older(l, a1, 0, 200, 5, 0, 0).kind, LEDGER_CLAIM_NONE);
    CHECK_INT(ledger_give_server_for(l, a1, 0, c.key, c.worker), 1);
    CHECK_INT(ledger_take_server(l, a1, 0, &caps), LIMIT_DB); /* kept for worker 1 */
    CHECK_INT(ledger_take_server(l, a2, 1, &caps), LIMIT_NONE);
    ledger_wait_done(l, a2, 1);
    CHECK_INT(ledger_db_servers(l, "a"), 2);
    free_app(s.worker);
}

/* auth_query's connections are capped for the process (caps.pool), every worker's together:
 * a worker refused is noted, so another worker's idle connection gives way to it. */
static void auth_query_connections_are_capped_for_the_whole_process(void)
{
    static struct ledger l; /* zeroed: ready */
    struct ledger_caps two = {.pool = 2};
    CHECK_INT(ledger_take_own(&l, 0, "a", "auth", &two), LIMIT_NONE);
    CHECK_INT(ledger_take_own(&l, 1, "b", "auth", &two), LIMIT_NONE);
    CHECK(!ledger_own_wanted(&l, 0));
    CHECK_INT(ledger_take_own(&l, 1, "a", "auth", &two), LIMIT_POOL);
    CHECK(ledger_own_wanted(&l, 0) && !ledger_own_wanted(&l, 1));
    ledger_give_own(&l, 0, "a", "auth");
    CHECK_INT(ledger_take_own(&l, 1, "a", "auth", &two), LIMIT_NONE);
    CHECK(!ledger_own_wanted(&l, 0));
    CHECK_INT(l.own_servers, 2);
    ledger_free(&l);
}

/* The room a give makes is the longest waiter's: a worker that was not waiting (worker 0, which
 * just gave its connection back with lookups of its own queued) is refused and noted behind
 * the others, and the waiters take it in the order they were noted. */
static void auth_query_room_goes_to_the_workers_waiting(void)
{
    static struct ledger l; /* zeroed: ready */
    struct ledger_caps two = {.pool = 2};
    CHECK_INT(ledger_take_own(&l, 0, "a", "auth", &two), LIMIT_NONE);
    CHECK_INT(ledger_take_own(&l, 1, "a", "auth", &two), LIMIT_NONE);
    CHECK_INT(ledger_take_own(&l, 2, "a", "auth", &two), LIMIT_POOL);
    CHECK_INT(ledger_take_own(&l, 3, "a", "auth", &two), LIMIT_POOL);
    CHECK(ledger_own_waiters(&l, 0) == ((1u << 2) | (1u << 3)));
    ledger_give_own(&l, 0, "a", "auth");
    CHECK_INT(ledger_take_own(&l, 0, "a", "auth", &two), LIMIT_POOL); /* behind 2 and 3 */
    CHECK(ledger_own_waiters(&l, 1) == ((1u << 0) | (1u << 2) | (1u << 3)));
    CHECK_INT(ledger_take_own(&l, 3, "a", "auth", &two), LIMIT_POOL); /* behind 2 */
    CHECK_INT(ledger_take_own(&l, 2, "a", "auth", &two), LIMIT_NONE);
    ledger_give_own(&l, 1, "a", "auth");
    CHECK_INT(ledger_take_own(&l, 0, "a", "auth", &two), LIMIT_POOL); /* behind 3 */
    CHECK_INT(ledger_take_own(&l, 3, "a", "auth", &two), LIMIT_NONE);
    ledger_give_own(&l, 2, "a", "auth");
    /* refused by another cap: no longer noted, so it holds nobody back */
    struct ledger_caps db_full = {.pool = 2, .db = 1};
    CHECK_INT(ledger_take_own(&l, 0, "a", "auth", &db_full), LIMIT_DB);
    CHECK(ledger_own_waiters(&l, 1) == 0);
    CHECK_INT(ledger_take_own(&l, 1, "b", "auth", &two), LIMIT_NONE); /* nobody waits now */
    CHECK_INT(l.own_servers, 2);
    ledger_free(&l);
}

/* PAUSE is kept on the database and on everything, as PgBouncer keeps it: a key made after it
 * (a database or user with no pool yet) starts paused; RESUME db leaves a PAUSE without a name
 * in force, RESUME without a name ends both. */
static void a_pause_covers_keys_made_after_it(void)
{
    static struct ledger l; /* zeroed: ready */
    ledger_db_set_state(&l, "a", LEDGER_KEY_PAUSED); /* no key of a yet */
    CHECK_INT(ledger_key_get_state(ledger_key_get(&l, "a", "u1")), LEDGER_KEY_PAUSED);
    CHECK_INT(ledger_key_get_state(ledger_key_get(&l, "b", "u1")), LEDGER_KEY_SERVING);
    ledger_db_set_state(&l, NULL, LEDGER_KEY_PAUSED);
    CHECK_INT(ledger_key_get_state(ledger_key_get(&l, "c", "u2")), LEDGER_KEY_PAUSED);
    ledger_db_set_state(&l, "c", LEDGER_KEY_SERVING); /* the PAUSE without a name holds c */
    CHECK_INT(ledger_key_get_state(ledger_key_get(&l, "c", "u2")), LEDGER_KEY_PAUSED);
    ledger_db_set_state(&l, NULL, LEDGER_KEY_SERVING);
    CHECK_INT(ledger_key_get_state(ledger_key_get(&l, "a", "u1")), LEDGER_KEY_SERVING);
    CHECK_INT(ledger_key_get_state(ledger_key_get(&l, "a", "u3")), LEDGER_KEY_SERVING);
    CHECK_INT(ledger_key_get_state(ledger_key_get(&l, "c", "u2")), LEDGER_KEY_SERVING);
    ledger_free(&l);
}

/* A pool learns max_connections on one worker: every worker's pool of that key resolves its NN%
 * caps against it (the ledger's number), without a probe of its own. */
static void usable_connections_learnt_once_serve_every_pool_of_the_key(void)
{
    struct worker *worker = app_from("[sluice]\ndefault_pool_size = 30\nmax_db_connections = 50%\n"
                                     "[databases]\na = host=127.0.0.1\n");
    if (!worker)
        return;
    struct pool *p = pool_get(worker, NULL, "u", "a");
    CHECK_INT(budget_limit_value(p, NULL, LIMIT_DB), 0); /* not known yet: no cap */
    ledger_learn_usable(&worker->proc->ledger, p->ledger_key,
                        10); /* another worker's pool probed */
    CHECK_INT(p->server_usable, 0);
    CHECK_INT(budget_limit_value(p, NULL, LIMIT_DB), 5);
    struct ledger_caps caps;
    budget_own_caps(worker, "a", "auth", &caps);
    CHECK_INT(caps.db, 5);
    CHECK_INT(ledger_db_usable(&worker->proc->ledger, "b"), 0);
    free_app(worker);
}

/* autodb_idle_timeout frees a "*" database's pools: the key goes with its last pool when nothing
 * it counts is left, and a scope with its last use, so names a client chose do not pile up. */
static void a_key_goes_with_its_last_pool_and_a_scope_with_its_last_use(void)
{
    struct ledger l = {0};
    struct ledger_key *k1 = ledger_key_get(&l, "x", "u");
    struct ledger_key *k2 = ledger_key_get(&l, "x", "u"); /* another worker's pool of it */
    CHECK(k1 && k1 == k2);
    if (!k1 || k1 != k2)
        return;
    struct ledger_caps caps = {.pool = 5};
    CHECK_INT(ledger_take_server(&l, k1, 0, &caps), LIMIT_NONE);
    uint64_t later = ledger_now_ms() + 5000;
    CHECK_INT((int)ledger_db_idle_ms(&l, k1, later), 0); /* a backend: in use */
    ledger_key_release(&l, k1);
    CHECK(l.keys == k1); /* the other pool holds it */
    (void)ledger_give_server(&l, k1, 0);
    CHECK(ledger_db_idle_ms(&l, k1, later) >= 4000); /* idle since the give */
    ledger_key_release(&l, k2);
    CHECK(l.keys == NULL && l.dbs == NULL && l.users == NULL);
    struct ledger_login_caps lc = {0};
    CHECK_INT(ledger_take_login(&l, 0, "y", "v", &lc), LOGIN_COUNTED);
    CHECK(l.dbs != NULL && l.users != NULL);
    ledger_give_login(&l, 0, "y", "v");
    CHECK(l.dbs == NULL && l.users == NULL);
    struct ledger_caps own = {.pool = 1};
    CHECK_INT(ledger_take_own(&l, 0, "z", "w", &own), LIMIT_NONE);
    (void)ledger_give_own(&l, 0, "z", "w");
    CHECK(l.dbs == NULL && l.users == NULL);
    own.global = 0;
    own.pool = 1;
    CHECK_INT(ledger_take_own(&l, 0, "z1", "w", &own), LIMIT_NONE);
    CHECK_INT(ledger_take_own(&l, 0, "z2", "w", &own), LIMIT_POOL); /* refused: z2 not kept */
    CHECK(l.dbs != NULL && l.dbs->next == NULL && strcmp(l.dbs->name, "z1") == 0);
    (void)ledger_give_own(&l, 0, "z1", "w");
    CHECK(l.dbs == NULL);
    ledger_own_wait_done(&l, 0);
    ledger_free(&l);
}

int main(void)
{
    RUN(each_cap_refuses_in_order_and_a_refusal_changes_nothing);
    RUN(the_reserve_counts_only_when_in_play);
    RUN(percent_caps_take_one_at_a_time_until_resolved);
    RUN(auth_query_connections_count_in_db_user_and_global);
    RUN(auth_query_connections_are_capped_for_the_whole_process);
    RUN(auth_query_room_goes_to_the_workers_waiting);
    RUN(leases_stop_at_max_servers_and_at_others_min_servers);
    RUN(clients_stop_at_max_clients);
    RUN(logins_count_globally_per_database_and_per_user);
    RUN(counters_always_equal_the_walked_counts);
    RUN(a_freed_slot_wakes_the_oldest_worker_it_serves);
    RUN(a_freed_slot_is_kept_for_the_older_waiter_it_wakes);
    RUN(a_grant_is_taken_only_under_the_takers_caps_now);
    RUN(a_dropped_grant_goes_to_the_droppers_older_waiter_of_another_key);
    RUN(a_grant_made_during_a_dispatch_is_the_next_dispatchs);
    RUN(a_released_server_closes_for_an_older_waiter_of_another_key_under_a_shared_cap);
    RUN(a_pause_covers_keys_made_after_it);
    RUN(usable_connections_learnt_once_serve_every_pool_of_the_key);
    RUN(a_key_goes_with_its_last_pool_and_a_scope_with_its_last_use);
    return CHECK_DONE();
}
