/* Unit tests for the order of a budget's leases across workers (ledger.c, 5.3): the room of a
 * budget's max_servers goes to the longest waiter whatever its worker. A worker whose waiter a
 * lease limit held notes its arrival (ledger_note_lease_wait); another worker's younger take
 * leaves it the room, until the noted waiter leaves its queue (ledger_lease_wait_moved).
 * Two workers of one process on one thread; ledger_audit proves the notes. */
#include "ledger_fixture.h"

/* Worker 0 of a process with two workers whose config is ini; *w1 its worker 1. */
static struct worker *two_workers(const char *ini, struct worker **w1)
{
    struct worker *w0 = app_from(ini);
    if (!w0)
        return NULL;
    w0->proc->nworkers = 2;
    *w1 = fixture_add_worker(w0->proc, 1);
    budget_set_swap(&w0->budgets, budget_set_acquire(w0->proc->budgets));
    budget_set_swap(&(*w1)->budgets, budget_set_acquire(w0->proc->budgets));
    return w0;
}

static const char seeds_of_one[] = "[sluice]\ndefault_pool_size = 4\n"
                                   "[databases]\na = host=127.0.0.1\n"
                                   "[budgets]\nseeds = app=seed* max_servers=1\n";

static void a_lease_given_back_goes_to_the_older_waiter_of_another_worker(void)
{
    struct worker *w1, *w0 = two_workers(seeds_of_one, &w1);
    if (!w0)
        return;
    union peer_addr addr = local_addr();
    struct budget *seeds = budget_match(w0, "seed", "u", &addr);
    CHECK_INT(ledger_take_lease_since(w0, seeds, 500), LIMIT_NONE); /* the holder */
    CHECK_INT(ledger_note_lease_wait(w1, seeds, 1000), 0);           /* older, on worker 1 */
    CHECK_INT(ledger_note_lease_wait(w0, seeds, 2000), 0);           /* younger, on worker 0 */
    ledger_give_lease(w0, seeds);
    /* worker 0's release: its own younger waiter leaves the room to worker 1's */
    CHECK_INT(ledger_lease_room_since(w0, seeds, 2000), 0);
    CHECK_INT(ledger_lease_limit_since(w0, seeds, 2000), LIMIT_BUDGET);
    CHECK_INT(ledger_take_lease_since(w0, seeds, 2000), LIMIT_BUDGET);
    CHECK_INT(budget_leases(seeds, 2), 0);
    /* worker 1's older one takes it: worker 0's note is younger */
    CHECK_INT(ledger_lease_room_since(w1, seeds, 1000), 1);
    CHECK_INT(ledger_take_lease_since(w1, seeds, 1000), LIMIT_NONE);
    ledger_lease_wait_moved(w1, seeds, 0); /* served: worker 1 has no waiter of seeds left */
    ledger_give_lease(w1, seeds);
    CHECK_INT(ledger_take_lease_since(w0, seeds, 2000), LIMIT_NONE);
    ledger_lease_wait_moved(w0, seeds, 0);
    CHECK_INT(seeds->lease_waits, 0);
    ledger_give_lease(w0, seeds);
    free_app(w0);
}

static void waiters_within_the_slack_or_of_one_worker_keep_their_workers_order(void)
{
    struct worker *w1, *w0 = two_workers(seeds_of_one, &w1);
    if (!w0)
        return;
    union peer_addr addr = local_addr();
    struct budget *seeds = budget_match(w0, "seed", "u", &addr);
    CHECK_INT(ledger_note_lease_wait(w1, seeds, 1000), 1);
    /* arrived within LEDGER_LEASE_SLACK_MS of worker 1's: no server moves for a tie */
    CHECK_INT(ledger_lease_room_since(w0, seeds, 1000 + LEDGER_LEASE_SLACK_MS), 1);
    CHECK_INT(ledger_lease_room_since(w0, seeds, 1001 + LEDGER_LEASE_SLACK_MS), 0);
    /* a worker's own note never holds its own waiters back; since 0 has none before it */
    CHECK_INT(ledger_lease_room_since(w1, seeds, 5000), 1);
    CHECK_INT(ledger_lease_room_since(w0, seeds, 0), 1);
    /* the note keeps the worker's oldest waiter */
    CHECK_INT(ledger_note_lease_wait(w1, seeds, 3000), 1);
    CHECK(seeds->lease_wait_since[1] == 1000);
    CHECK_INT(ledger_note_lease_wait(w1, seeds, 800), 1);
    CHECK(seeds->lease_wait_since[1] == 800);
    CHECK_INT(seeds->lease_waits, 1);
    /* the noted waiter left: the next one, younger than worker 0's, no longer holds it back */
    ledger_lease_wait_moved(w1, seeds, 4000);
    CHECK_INT(ledger_lease_room_since(w0, seeds, 2000), 1);
    CHECK_INT(seeds->lease_waits, 1);
    ledger_lease_wait_moved(w1, seeds, 0);
    CHECK_INT(seeds->lease_waits, 0);
    /* nothing noted: a waiter leaving notes none (it was not held by a lease limit) */
    ledger_lease_wait_moved(w1, seeds, 4000);
    CHECK_INT(seeds->lease_waits, 0);
    free_app(w0);
}

static void the_audit_finds_a_note_of_a_waiter_no_longer_queued(void)
{
    struct worker *w1, *w0 = two_workers(seeds_of_one, &w1);
    if (!w0)
        return;
    union peer_addr addr = local_addr();
    struct budget *seeds = budget_match(w0, "seed", "u", &addr);
    CHECK(ledger_audit(w1));
    CHECK_INT(ledger_note_lease_wait(w1, seeds, 1000), 1);
    fprintf(stderr, "(a 'ledger: waiters of budget seeds' error is expected next)\n");
    CHECK(!ledger_audit(w1)); /* worker 1 has no waiter of seeds queued: a stale note */
    CHECK(ledger_audit(w0));  /* worker 0's own note is none */
    ledger_lease_wait_moved(w1, seeds, 0);
    CHECK(ledger_audit(w1));
    free_app(w0);
}

int main(void)
{
    RUN(a_lease_given_back_goes_to_the_older_waiter_of_another_worker);
    RUN(waiters_within_the_slack_or_of_one_worker_keep_their_workers_order);
    RUN(the_audit_finds_a_note_of_a_waiter_no_longer_queued);
    return CHECK_DONE();
}
