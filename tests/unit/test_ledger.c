/* Unit tests for ledger.c: a take checks every cap and counts in every scope at once, or refuses
 * and changes nothing; gives undo takes; the counters always equal what walking the pools finds
 * (ledger_audit); four threads taking and giving at once never pass a cap and end at zero; the
 * wait list names the oldest worker a freed slot serves. Pools come from a config (no sockets);
 * servers are bare structs on the lists. */
#include "check.h"
#include "fixture.h"

#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "budget.h"
#include "client.h"
#include "config.h"
#include "ledger.h"
#include "pool.h"
#include "server.h"
#include "sluice.h"

/* The names these tests use for the shared fixture (kept: other branches add tests here). */
static struct worker *app_from(const char *ini)
{
    return fixture_worker(ini, NULL);
}

static void free_app(struct worker *worker)
{
    fixture_worker_free(worker);
}

/* What a pool's next backend is held to, as pool.c asks (budget.c resolves the config). */
static enum limit_kind take(struct pool *p, bool use_reserve)
{
    struct ledger_caps caps;
    budget_server_caps(p, use_reserve, &caps);
    enum limit_kind k =
        ledger_take_server(&p->worker->proc->ledger, p->ledger_key, (int)p->worker->index, &caps);
    if (k == LIMIT_NONE) { /* what server_connect does with the slot: a server on a list */
        struct server *s = calloc(1, sizeof(*s));
        s->pool = p;
        list_append(&p->idle, &s->node);
        p->worker->nservers++;
    }
    return k;
}

/* A server of p is gone (close_now): off its list, its slot back. */
static void give(struct pool *p)
{
    struct server *s = container_of(list_last(&p->idle), struct server, node);
    list_remove(&p->idle, &s->node);
    free(s);
    p->worker->nservers--;
    ledger_give_server(&p->worker->proc->ledger, p->ledger_key, (int)p->worker->index);
}

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

static union peer_addr local_addr(void)
{
    union peer_addr a;
    memset(&a, 0, sizeof(a));
    a.in.sin_family = AF_INET;
    inet_pton(AF_INET, "127.0.0.1", &a.in.sin_addr);
    return a;
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

/* ---- threads (docs/architecture.md 5.3): the lock makes each take and give one step ---- */

#define NTHREADS 4
#define ROUNDS 300000

struct race {
    struct worker *shared; /* the one worker whose process's ledger every thread moves */
    struct pool *pools[4];
    struct ledger_caps caps[4];
    struct budget *budget; /* max_servers = 3 */
    int worker;
    int over;      /* a count seen above its cap */
    int held_over; /* more slots held by all threads than the global cap */
    int woken_bad; /* a give named a worker that does not exist */
};

static pthread_barrier_t race_start; /* every thread starts at once */
static atomic_int slots_held;        /* by every thread: never above max_server_connections */
static atomic_int leases_held;

static void *race_worker(void *arg)
{
    struct race *r = arg;
    struct ledger *l = &r->shared->proc->ledger;
    /* the worker this thread stands for: a budget's lease share is its worker's, moved only on
     * its thread */
    struct worker me = *r->shared;
    me.index = (unsigned)r->worker;
    int held[4] = {0}, leases = 0;
    unsigned seed = 7919u * (unsigned)(r->worker + 1);
    pthread_barrier_wait(&race_start);
    for (int i = 0; i < ROUNDS; i++) {
        seed = seed * 1103515245u + 12345u;
        int k = (int)((seed >> 16) % 4);
        struct pool *p = r->pools[k];
        switch ((seed >> 8) % 4) {
        case 0:
        case 1: {
            enum limit_kind why = ledger_take_server(l, p->ledger_key, r->worker, &r->caps[k]);
            if (why != LIMIT_NONE) {
                if (ledger_wait_slot(l, p->ledger_key, r->worker, why, ledger_now_ms()) != 0)
                    r->over++;
                break;
            }
            ledger_wait_done(l, p->ledger_key, r->worker);
            held[k]++;
            if (atomic_fetch_add(&slots_held, 1) + 1 > r->caps[k].global)
                r->held_over++;
            /* Counters read with no lock (the hot path's way): never above a cap. */
            r->over += p->ledger_key->servers > r->caps[k].pool;
            r->over += l->servers > r->caps[k].global;
            r->over += ledger_db_servers(l, p->db_name) > r->caps[k].db;
            r->over += ledger_user_servers(l, p->user_name) > r->caps[k].user;
            break;
        }
        case 2:
            if (held[k] > 0) {
                held[k]--;
                atomic_fetch_sub(&slots_held, 1);
                int w = ledger_give_server(l, p->ledger_key, r->worker);
                r->woken_bad += w != LEDGER_NO_WORKER && (w < 0 || w >= NTHREADS);
            }
            break;
        default:
            if (leases > 0 && (seed & 1)) {
                leases--;
                atomic_fetch_sub(&leases_held, 1);
                ledger_give_lease(&me, r->budget);
            } else if (ledger_take_lease(&me, r->budget) == LIMIT_NONE) {
                leases++;
                if (atomic_fetch_add(&leases_held, 1) + 1 > 3)
                    r->over++;
                /* the shares summed under the lock (no take then; a give only lowers it) */
                ledger_lock(l);
                r->over += budget_leases(r->budget, NTHREADS) > 3;
                ledger_unlock(l);
            }
            break;
        }
    }
    for (int k = 0; k < 4; k++)
        while (held[k]-- > 0) {
            atomic_fetch_sub(&slots_held, 1);
            (void)ledger_give_server(l, r->pools[k]->ledger_key, r->worker);
        }
    while (leases-- > 0) {
        atomic_fetch_sub(&leases_held, 1);
        ledger_give_lease(&me, r->budget);
    }
    for (int k = 0; k < 4; k++)
        ledger_wait_done(l, r->pools[k]->ledger_key, r->worker);
    return NULL;
}

/* Four workers take and give slots and leases of pools that share databases and users, all at
 * once: no count is ever seen above its cap, no more slots are held than the global cap allows,
 * and every count ends at zero. Without the lock this fails (counts over a cap, counts that do
 * not return to zero, and ThreadSanitizer's reports). */
static void four_threads_never_pass_a_cap_and_end_at_zero(void)
{
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    static const char zeros[sizeof(fresh)];
    CHECK(memcmp(&fresh, zeros, sizeof(fresh)) == 0); /* a zeroed ledger is a ready one */
    struct worker *worker = app_from("[sluice]\ndefault_pool_size = 3\nmax_db_connections = 4\n"
                                     "max_user_connections = 5\nmax_server_connections = 7\n"
                                     "[databases]\na = host=127.0.0.1\nb = host=127.0.0.1\n"
                                     "[budgets]\nbatch = app=batch* max_servers=3\n");
    if (!worker)
        return;
    union peer_addr addr = local_addr();
    struct race proto = {
        .shared = worker,
        .pools = {pool_get(worker, NULL, "u1", "a"), pool_get(worker, NULL, "u2", "a"),
                  pool_get(worker, NULL, "u1", "b"), pool_get(worker, NULL, "u2", "b")},
        .budget = budget_match(worker, "batch", "u1", &addr)};
    for (int k = 0; k < 4; k++)
        budget_server_caps(proto.pools[k], false, &proto.caps[k]);
    struct race args[NTHREADS];
    pthread_t t[NTHREADS];
    pthread_barrier_init(&race_start, NULL, NTHREADS);
    worker->proc->nworkers = NTHREADS; /* the lease checks sum every thread's share */
    for (int i = 0; i < NTHREADS; i++) {
        args[i] = proto;
        args[i].worker = i;
        CHECK_INT(pthread_create(&t[i], NULL, race_worker, &args[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&race_start);
    worker->proc->nworkers = 1;
    for (int i = 0; i < NTHREADS; i++) {
        CHECK_INT(args[i].over, 0);
        CHECK_INT(args[i].held_over, 0);
        CHECK_INT(args[i].woken_bad, 0);
    }
    CHECK_INT(worker->proc->ledger.servers, 0);
    for (int k = 0; k < 4; k++)
        CHECK_INT(proto.pools[k]->ledger_key->servers, 0);
    CHECK_INT(ledger_db_servers(&worker->proc->ledger, "a"), 0);
    CHECK_INT(ledger_user_servers(&worker->proc->ledger, "u2"), 0);
    CHECK_INT(budget_leases(proto.budget, BUDGET_LEASE_SHARES), 0);
    CHECK_INT(ledger_wait_oldest(&worker->proc->ledger, NULL), LEDGER_NO_WORKER);
    CHECK(ledger_audit(worker));
    free_app(worker);
}

/* ---- shares (5.6): each worker's part of every count, and servers moving between workers ---- */

#define SHARE_ROUNDS 20000

/* A mailbox between two threads: the servers handed over, each a bare struct. */
struct handover {
    pthread_mutex_t mu;
    struct server *queue[64];
    int n;
};

struct share_run {
    struct worker *worker; /* this thread's own, with its own pools of the shared keys */
    struct pool *pools[4];
    struct ledger_caps caps[4];
    struct handover *inbox, *outbox; /* from the previous thread, to the next */
    int audits_failed;
};

/* Take the oldest server of the inbox onto this worker's pool of its key (the receiver's half
 * of a handover). */
static void adopt(struct share_run *r)
{
    pthread_mutex_lock(&r->inbox->mu);
    struct server *s = r->inbox->n > 0 ? r->inbox->queue[--r->inbox->n] : NULL;
    pthread_mutex_unlock(&r->inbox->mu);
    if (!s)
        return;
    struct pool *own = NULL;
    for (int k = 0; k < 4; k++)
        if (r->pools[k]->ledger_key == s->pool->ledger_key)
            own = r->pools[k];
    struct ledger *l = &r->worker->proc->ledger;
    ledger_move_share(l, own->ledger_key, LEDGER_IN_TRANSIT, (int)r->worker->index);
    s->pool = own;
    list_append(&own->idle, &s->node);
    r->worker->nservers++;
}

/* Post an idle server of p to the next thread (the sender's half). */
static void hand_over(struct share_run *r, struct pool *p)
{
    pthread_mutex_lock(&r->outbox->mu);
    bool room = r->outbox->n < 64;
    pthread_mutex_unlock(&r->outbox->mu);
    if (!room)
        return;
    struct server *s = container_of(list_last(&p->idle), struct server, node);
    list_remove(&p->idle, &s->node);
    r->worker->nservers--;
    ledger_move_share(&r->worker->proc->ledger, p->ledger_key, (int)r->worker->index,
                      LEDGER_IN_TRANSIT);
    pthread_mutex_lock(&r->outbox->mu);
    r->outbox->queue[r->outbox->n++] = s;
    pthread_mutex_unlock(&r->outbox->mu);
}

static void *share_worker(void *arg)
{
    struct share_run *r = arg;
    unsigned seed = 104729u * (r->worker->index + 1);
    pthread_barrier_wait(&race_start);
    for (int i = 0; i < SHARE_ROUNDS; i++) {
        seed = seed * 1103515245u + 12345u;
        int k = (int)((seed >> 16) % 4);
        struct pool *p = r->pools[k];
        switch ((seed >> 8) % 5) {
        case 0:
        case 1:
            if (ledger_take_server(&r->worker->proc->ledger, p->ledger_key, (int)r->worker->index,
                                   &r->caps[k]) == LIMIT_NONE) {
                struct server *s = calloc(1, sizeof(*s));
                s->pool = p;
                list_append(&p->idle, &s->node);
                r->worker->nservers++;
            }
            break;
        case 2:
            if (p->idle.count > 0)
                give(p);
            break;
        case 3:
            if (p->idle.count > 0)
                hand_over(r, p);
            break;
        default:
            adopt(r);
            break;
        }
        /* exact at every step, while the other three move the same counters */
        r->audits_failed += !ledger_audit(r->worker);
    }
    for (int k = 0; k < 4; k++)
        while (r->pools[k]->idle.count > 0)
            give(r->pools[k]);
    return NULL;
}

/* A worker of proc beside worker 0, as sluice_start makes it (no loop: the test drives it). */
static struct worker *add_worker(struct process *proc, unsigned index)
{
    struct worker *w = &proc->workers[index];
    w->proc = proc;
    w->index = index;
    w->cfg = proc->cfg;
    w->budgets = budget_set_current(proc);
    list_init(&w->pools);
    list_init(&w->login_clients);
    list_init(&w->closing_clients);
    list_init(&w->dead_clients);
    list_init(&w->dead_servers);
    return w;
}

static void drop_worker(struct worker *w)
{
    struct list_node *n, *tmp;
    list_for_each(&w->pools, n, tmp)
    {
        list_remove(&w->pools, n);
        pool_free(container_of(n, struct pool, node));
    }
    /* its budget generation is released with every worker's by budget_free_all */
}

/* Four workers take, give and hand servers over to each other through mailboxes, all at once:
 * each worker's audit of its own share against its own lists holds at every step, every counter
 * is the sum of the shares (the servers in a mailbox in LEDGER_IN_TRANSIT's), and a server
 * dropped with its message is given back from the transit share. */
static void each_worker_audits_its_own_share_while_servers_move(void)
{
    struct worker *w0 = app_from("[sluice]\ndefault_pool_size = 6\nmax_db_connections = 9\n"
                                 "max_server_connections = 16\n"
                                 "[databases]\na = host=127.0.0.1\nb = host=127.0.0.1\n");
    if (!w0)
        return;
    struct process *proc = w0->proc;
    proc->nworkers = NTHREADS;
    struct handover boxes[NTHREADS];
    struct share_run runs[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        boxes[i] = (struct handover){.mu = PTHREAD_MUTEX_INITIALIZER};
        struct worker *w = i == 0 ? w0 : add_worker(proc, (unsigned)i);
        runs[i] = (struct share_run){
            .worker = w,
            .pools = {pool_get(w, NULL, "u1", "a"), pool_get(w, NULL, "u2", "a"),
                      pool_get(w, NULL, "u1", "b"), pool_get(w, NULL, "u2", "b")}};
        for (int k = 0; k < 4; k++)
            budget_server_caps(runs[i].pools[k], false, &runs[i].caps[k]);
    }
    for (int i = 0; i < NTHREADS; i++) {
        runs[i].inbox = &boxes[i];
        runs[i].outbox = &boxes[(i + 1) % NTHREADS];
    }
    pthread_t t[NTHREADS];
    pthread_barrier_init(&race_start, NULL, NTHREADS);
    for (int i = 0; i < NTHREADS; i++)
        CHECK_INT(pthread_create(&t[i], NULL, share_worker, &runs[i]), 0);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&race_start);
    struct ledger *l = &proc->ledger;
    int in_transit = 0;
    for (int i = 0; i < NTHREADS; i++) {
        CHECK_INT(runs[i].audits_failed, 0);
        CHECK_INT(l->share[i].servers, 0); /* each gave back what it held */
        in_transit += boxes[i].n;
    }
    CHECK_INT(l->share[LEDGER_IN_TRANSIT].servers, in_transit);
    CHECK_INT(l->servers, in_transit);
    /* the messages dropped at the end: their servers go, from the transit share */
    for (int i = 0; i < NTHREADS; i++)
        while (boxes[i].n > 0) {
            struct server *s = boxes[i].queue[--boxes[i].n];
            (void)ledger_give_server(l, s->pool->ledger_key, LEDGER_IN_TRANSIT);
            free(s);
        }
    CHECK_INT(l->servers, 0);
    for (int i = 0; i < NTHREADS; i++)
        CHECK(ledger_audit(runs[i].worker));
    /* one step from worker 1 to worker 2 (no mailbox): the totals stay, the shares move */
    struct ledger_caps room = {.pool = 6};
    CHECK_INT(ledger_take_server(l, runs[1].pools[0]->ledger_key, 1, &room), LIMIT_NONE);
    ledger_move_share(l, runs[1].pools[0]->ledger_key, 1, 2);
    CHECK_INT(l->servers, 1);
    CHECK_INT(runs[1].pools[0]->ledger_key->share[1], 0);
    CHECK_INT(runs[1].pools[0]->ledger_key->share[2], 1);
    CHECK_INT(l->share[2].servers, 1);
    CHECK(!ledger_audit(runs[2].worker)); /* not on worker 2's lists: caught (an expected line) */
    (void)ledger_give_server(l, runs[1].pools[0]->ledger_key, 2);
    CHECK(ledger_audit(runs[2].worker));
    for (int i = 1; i < NTHREADS; i++)
        drop_worker(runs[i].worker);
    proc->nworkers = 1;
    free_app(w0);
}

struct lease_arg {
    struct worker *worker;
    struct budget *budget;
    unsigned index; /* the worker this thread stands for: its lease share */
};

static void *lease_worker(void *arg)
{
    struct lease_arg *a = arg;
    struct worker me = *a->worker;
    me.index = a->index;
    for (int i = 0; i < ROUNDS; i++) {
        if (ledger_take_lease(&me, a->budget) == LIMIT_NONE)
            ledger_give_lease(&me, a->budget);
    }
    return NULL;
}

/* With no budget capping leases (the default), a lease is a lock-free count that four workers
 * move at once and that ends at zero; a reload that gives a budget max_servers switches every
 * take to the checked path. */
static void leases_are_lock_free_until_a_budget_caps_them(void)
{
    struct worker *worker = app_from("[sluice]\n[databases]\na = host=127.0.0.1\n");
    if (!worker)
        return;
    union peer_addr addr = local_addr();
    struct budget *dflt = budget_match(worker, "psql", "u", &addr);
    CHECK(!worker->proc->ledger.lease_caps);
    CHECK_INT(ledger_lease_room(worker, dflt), -1);
    struct lease_arg args[NTHREADS];
    pthread_t t[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        args[i] = (struct lease_arg){worker, dflt, (unsigned)i};
        CHECK_INT(pthread_create(&t[i], NULL, lease_worker, &args[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(t[i], NULL);
    CHECK_INT(budget_leases(dflt, BUDGET_LEASE_SHARES), 0);
    struct config *next = fixture_config("[sluice]\n[databases]\na = host=127.0.0.1\n"
                                         "[budgets]\ndefault = max_servers=1\n");
    CHECK(next != NULL);
    if (next) {
        config_free(worker->proc->cfg);
        worker->proc->cfg = worker->cfg = next;
        CHECK_INT(budget_sync(worker->proc), 0); /* the reload */
        CHECK(worker->proc->ledger.lease_caps);
        CHECK_INT(ledger_take_lease(worker, dflt), LIMIT_NONE);
        CHECK_INT(ledger_take_lease(worker, dflt), LIMIT_BUDGET);
        ledger_give_lease(worker, dflt);
    }
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

int main(void)
{
    RUN(each_cap_refuses_in_order_and_a_refusal_changes_nothing);
    RUN(the_reserve_counts_only_when_in_play);
    RUN(percent_caps_take_one_at_a_time_until_resolved);
    RUN(auth_query_connections_count_in_db_user_and_global);
    RUN(auth_query_connections_are_capped_for_the_whole_process);
    RUN(leases_stop_at_max_servers_and_at_others_min_servers);
    RUN(clients_stop_at_max_clients);
    RUN(logins_count_globally_per_database_and_per_user);
    RUN(counters_always_equal_the_walked_counts);
    RUN(four_threads_never_pass_a_cap_and_end_at_zero);
    RUN(each_worker_audits_its_own_share_while_servers_move);
    RUN(leases_are_lock_free_until_a_budget_caps_them);
    RUN(a_freed_slot_wakes_the_oldest_worker_it_serves);
    RUN(a_pause_covers_keys_made_after_it);
    RUN(usable_connections_learnt_once_serve_every_pool_of_the_key);
    return CHECK_DONE();
}
