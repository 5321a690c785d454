/* Unit tests for ledger.c under several threads (run under ThreadSanitizer in build-tsan): the
 * lock makes each take and give one step, so four threads taking and giving at once never pass
 * a cap and end at zero; each worker audits its own share while servers move between workers;
 * leases stay lock-free until a budget caps them. One thread's cases: test_ledger.c. */
#include "ledger_fixture.h"

#include <pthread.h>
#include <stdatomic.h>

#include "client.h"
#include "config.h"

/* ---- threads (docs/architecture.md 5.3): the lock makes each take and give one step ---- */

#define NTHREADS 4
#define ROUNDS 300000

struct race {
    struct worker *shared; /* the one worker whose process's ledger every thread moves */
    struct pool *pools[4];
    struct ledger_caps caps[4];
    struct budget *budget; /* max_servers = 3 */
    int worker;
    /* waits registered with their caps (as pool.c's note_slot_wait does): a give grants its slot
     * to the oldest waiter, whose next take of the key finds it (or a drop passes it on) */
    bool with_caps;
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
                int rc = r->with_caps
                             ? ledger_wait_need(l, p->ledger_key, r->worker, why, ledger_now_ms(),
                                                1, &r->caps[k], 0)
                             : ledger_wait_slot(l, p->ledger_key, r->worker, why, ledger_now_ms());
                r->over += rc < 0;
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
            if (r->with_caps && (seed & 2)) { /* the end of a dispatch: grants not taken */
                int w;
                ledger_offer_grants(l, r->worker);
                while (ledger_drop_grant(l, r->worker, &w))
                    r->woken_bad += w != LEDGER_NO_WORKER && (w < 0 || w >= NTHREADS);
                break;
            }
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
    /* no entry left: no grant comes to this worker any more; those it holds go on */
    int w;
    ledger_offer_grants(l, r->worker);
    while (ledger_drop_grant(l, r->worker, &w))
        ;
    return NULL;
}

/* Four workers take and give slots and leases of pools that share databases and users, all at
 * once: no count is ever seen above its cap, no more slots are held than the global cap allows,
 * and every count ends at zero. Without the lock this fails (counts over a cap, counts that do
 * not return to zero, and ThreadSanitizer's reports). */
static void race_four_threads(bool with_caps)
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
        args[i].with_caps = with_caps;
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

static void four_threads_never_pass_a_cap_and_end_at_zero(void)
{
    race_four_threads(false);
}

/* The same with the waits' caps registered: every freed slot is granted to the oldest waiter
 * it serves, taken by that thread's next take of the key or dropped on to the next; no count
 * passes a cap and every grant ends taken or given back (5.3). */
static void four_threads_granting_freed_slots_never_pass_a_cap_and_end_at_zero(void)
{
    race_four_threads(true);
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
    struct worker *w = fixture_add_worker(proc, index);
    w->budgets = budget_set_current(proc);
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

int main(void)
{
    RUN(four_threads_never_pass_a_cap_and_end_at_zero);
    RUN(four_threads_granting_freed_slots_never_pass_a_cap_and_end_at_zero);
    RUN(each_worker_audits_its_own_share_while_servers_move);
    RUN(leases_are_lock_free_until_a_budget_caps_them);
    return CHECK_DONE();
}
