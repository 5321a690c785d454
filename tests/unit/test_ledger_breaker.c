/* Unit tests for ledger_breaker.c, the circuit breaker's process-wide part per pool key: while
 * no attempt failed every worker may try; after a failure the backoff holds every worker and
 * then exactly one of many racing threads gets the attempt; its failure opens the breaker once
 * (one log line for the process), a later one is a probe; a success closes it for all. A pool
 * granted the attempt that a cap then stops gives the claim back at once. */
#include "check.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "fixture.h"
#include "ledger.h"

#define THREADS 8

struct race {
    struct ledger *l;
    struct ledger_key *key;
    int worker;
    atomic_int *granted;
    pthread_barrier_t *start;
};

static void *race_for_the_attempt(void *arg)
{
    struct race *r = arg;
    pthread_barrier_wait(r->start);
    if (ledger_breaker_may_try(r->l, r->key, r->worker, 60000))
        atomic_fetch_add(r->granted, 1);
    return NULL;
}

/* An attempt that failed without a login refusal (no connection, a timeout), reported by a pool
 * with no server logged in. */
static struct ledger_breaker_failure connect_failed(struct ledger *l, struct ledger_key *key,
                                                    const char *message, uint64_t cap_ms)
{
    struct ledger_breaker_report r = {message, NULL, NULL, true};
    return ledger_breaker_failed(l, key, &r, cap_ms, 0);
}

static void one_attempt_for_the_process_while_down(void)
{
    static struct ledger l; /* zeroed: ready */
    struct ledger_key *key = ledger_key_get(&l, "appdb", "app");
    CHECK(key != NULL);
    if (!key)
        return;
    /* healthy: everyone may try, nothing claimed */
    CHECK(ledger_breaker_may_try(&l, key, 0, 60000));
    CHECK(ledger_breaker_may_try(&l, key, 1, 60000));
    CHECK(!ledger_breaker_is_down(key));

    /* the first failure of a pool with no server opens the breaker, once */
    struct ledger_breaker_failure f = connect_failed(&l, key, "refused", 60000);
    CHECK_INT(f.failures, 1);
    CHECK(f.went_down);
    CHECK(!f.was_probe);
    CHECK(ledger_breaker_is_down(key));
    /* within the backoff nobody tries */
    CHECK(!ledger_breaker_may_try(&l, key, 0, 60000));
    CHECK(!ledger_breaker_may_try(&l, key, 3, 60000));
    /* (no sleeps here: a failure with a cap of 0 ends the backoff at once) */
    f = connect_failed(&l, key, "refused", 0);
    CHECK(!f.went_down);

    /* after it, THREADS workers race: exactly one gets the attempt */
    atomic_int granted = 0;
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, THREADS);
    pthread_t t[THREADS];
    struct race r[THREADS];
    for (int i = 0; i < THREADS; i++) {
        r[i] = (struct race){&l, key, i, &granted, &start};
        CHECK_INT(pthread_create(&t[i], NULL, race_for_the_attempt, &r[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&start);
    CHECK_INT(atomic_load(&granted), 1);

    /* its failure is a probe's: no second "down", the breaker stays open */
    f = connect_failed(&l, key, "still refused", 0);
    CHECK_INT(f.failures, 3);
    CHECK(!f.went_down);
    CHECK(f.was_probe);
    struct ledger_breaker seen;
    ledger_breaker_read(&l, key, &seen);
    CHECK_STR(seen.last_error, "still refused");
    CHECK_STR(seen.refusal_sqlstate, "");
    /* a login refusal is kept with its failure, for every worker's waiters, and the next failure
     * that is no refusal forgets it */
    struct ledger_breaker_report refused = {"refused", "28000", "role \"x\" is not permitted", true};
    f = ledger_breaker_failed(&l, key, &refused, 0, 0);
    CHECK_INT(f.failures, 4);
    ledger_breaker_read(&l, key, &seen);
    CHECK_STR(seen.refusal_sqlstate, "28000");
    CHECK_STR(seen.refusal_message, "role \"x\" is not permitted");
    f = connect_failed(&l, key, "still refused", 0);
    ledger_breaker_read(&l, key, &seen);
    CHECK_STR(seen.refusal_sqlstate, "");
    CHECK_STR(seen.last_error, "still refused");
    /* the report ended the claim: after the backoff the next attempt is anyone's */
    CHECK(ledger_breaker_may_try(&l, key, 7, 60000));
    CHECK(!ledger_breaker_may_try(&l, key, 6, 60000));

    /* a success closes it for every worker, and says it was down */
    int failures = 0;
    uint64_t down_ms = 0;
    CHECK(ledger_breaker_succeeded(&l, key, &failures, &down_ms));
    CHECK_INT(failures, 5);
    CHECK(!ledger_breaker_is_down(key));
    CHECK(ledger_breaker_may_try(&l, key, 5, 60000));
    CHECK(!ledger_breaker_succeeded(&l, key, &failures, &down_ms));
    ledger_free(&l);
}

/* The pool's probe while the database is down is granted the process's one attempt, but
 * pool_size (every slot held by another worker's servers) stops it: no attempt was made, so the
 * claim goes back, and another worker's pool may probe at once, not when the claim expires. */
static void a_claim_a_cap_stops_goes_back(void)
{
    uv_loop_t loop;
    struct worker *worker =
        fixture_worker("[sluice]\ndefault_pool_size = 1\n[databases]\na = host=127.0.0.1\n", &loop);
    if (!worker)
        return;
    struct ledger *l = &worker->proc->ledger;
    struct pool *p = pool_get(worker, NULL, "u", "a");
    struct ledger_caps caps = {.pool = 1};
    CHECK_INT(ledger_take_server(l, p->ledger_key, 1, &caps), LIMIT_NONE); /* worker 1's */
    /* a failure with a cap of 0: down, and the backoff over at once */
    CHECK(connect_failed(l, p->ledger_key, "refused", 0).went_down);
    pool_maintain(p, uv_now(&loop)); /* probes: granted, then LIMIT_POOL */
    CHECK_INT(p->connecting.count, 0);
    CHECK(ledger_breaker_may_try(l, p->ledger_key, 1, 60000));
    ledger_give_server(l, p->ledger_key, 1);
    fixture_worker_free(worker);
}

int main(void)
{
    RUN(one_attempt_for_the_process_while_down);
    RUN(a_claim_a_cap_stops_goes_back);
    return CHECK_DONE();
}
