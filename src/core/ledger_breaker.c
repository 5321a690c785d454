/* ledger_breaker: the circuit breaker's process-wide part, one per pool key (5.10). Each
 * worker's pool keeps its own view (pool_breaker.c, for SHOW and its clients' messages); the
 * failures, the backoff and the one attempt while the database is down live here, so that with
 * N workers the database sees the attempts of one pooler, and the log one line per outage. */
#include <stdio.h>
#include <string.h>

#include "ledger.h"

bool ledger_breaker_may_try(struct ledger *l, struct ledger_key *key, int worker,
                            uint64_t claim_ms)
{
    struct ledger_breaker *b = &key->breaker;
    if (atomic_load_explicit(&b->failures, memory_order_relaxed) == 0)
        return true; /* the database takes connections: no backoff, attempts in parallel */
    pthread_mutex_lock(&l->mu);
    uint64_t now = ledger_now_ms();
    bool may = atomic_load_explicit(&b->failures, memory_order_relaxed) == 0;
    if (!may && now >= b->next_try_ms && (now >= b->claim_until_ms || b->claimer == worker)) {
        /* The claimer itself may ask again: its pool allows one attempt at a time. */
        b->claimer = worker;
        b->claim_until_ms = now + claim_ms;
        may = true;
    }
    pthread_mutex_unlock(&l->mu);
    return may;
}

void ledger_breaker_retry_now(struct ledger *l, struct ledger_key *key)
{
    struct ledger_breaker *b = &key->breaker;
    pthread_mutex_lock(&l->mu);
    b->next_try_ms = 0;
    b->claim_until_ms = 0;
    pthread_mutex_unlock(&l->mu);
}

void ledger_breaker_unclaim(struct ledger *l, struct ledger_key *key, int worker)
{
    struct ledger_breaker *b = &key->breaker;
    if (atomic_load_explicit(&b->failures, memory_order_relaxed) == 0)
        return; /* nothing is claimed while no attempt failed */
    pthread_mutex_lock(&l->mu);
    if (b->claimer == worker)
        b->claim_until_ms = 0; /* no attempt reports: the next one is anyone's now */
    pthread_mutex_unlock(&l->mu);
}

struct ledger_breaker_failure ledger_breaker_failed(struct ledger *l, struct ledger_key *key,
                                                    const struct ledger_breaker_report *r,
                                                    uint64_t cap_ms, uint32_t jitter)
{
    struct ledger_breaker *b = &key->breaker;
    struct ledger_breaker_failure f = {0};
    pthread_mutex_lock(&l->mu);
    uint64_t now = ledger_now_ms();
    f.failures = atomic_load_explicit(&b->failures, memory_order_relaxed) + 1;
    atomic_store_explicit(&b->failures, f.failures, memory_order_relaxed);
    /* Exponential backoff with jitter, capped (pool_breaker.c says why the cap). */
    uint64_t backoff = 100;
    for (int i = 1; i < f.failures && backoff < cap_ms; i++)
        backoff *= 2;
    if (backoff > cap_ms)
        backoff = cap_ms;
    backoff = backoff * (80 + jitter % 41) / 100;
    if (backoff > cap_ms)
        backoff = cap_ms;
    f.backoff_ms = backoff;
    b->next_try_ms = now + backoff;
    b->claim_until_ms = 0; /* the attempt reported: the next one is anyone's after the backoff */
    snprintf(b->last_error, sizeof(b->last_error), "%s", r->message);
    /* in the same lock as the failure: no worker reads the failure without its refusal */
    snprintf(b->refusal_sqlstate, sizeof(b->refusal_sqlstate), "%s",
             r->refusal_sqlstate ? r->refusal_sqlstate : "");
    snprintf(b->refusal_message, sizeof(b->refusal_message), "%s",
             r->refusal_sqlstate && r->refusal_message ? r->refusal_message : "");
    f.was_probe = atomic_load_explicit(&b->down, memory_order_relaxed);
    if (!f.was_probe && r->may_go_down) {
        atomic_store_explicit(&b->down, true, memory_order_relaxed);
        b->down_since_ms = now;
        f.went_down = true;
    }
    pthread_mutex_unlock(&l->mu);
    return f;
}

bool ledger_breaker_succeeded(struct ledger *l, struct ledger_key *key, int *failures,
                              uint64_t *down_ms)
{
    struct ledger_breaker *b = &key->breaker;
    if (atomic_load_explicit(&b->failures, memory_order_relaxed) == 0 && !ledger_breaker_is_down(key))
        return false; /* the common case: nothing to close, no lock */
    pthread_mutex_lock(&l->mu);
    bool was_down = atomic_load_explicit(&b->down, memory_order_relaxed);
    *failures = atomic_load_explicit(&b->failures, memory_order_relaxed);
    *down_ms = ledger_now_ms() - b->down_since_ms;
    atomic_store_explicit(&b->failures, 0, memory_order_relaxed);
    atomic_store_explicit(&b->down, false, memory_order_relaxed);
    b->next_try_ms = 0;
    b->claim_until_ms = 0;
    b->refusal_sqlstate[0] = '\0';
    pthread_mutex_unlock(&l->mu);
    return was_down;
}

void ledger_breaker_read(struct ledger *l, const struct ledger_key *key, struct ledger_breaker *out)
{
    pthread_mutex_lock(&l->mu);
    const struct ledger_breaker *b = &key->breaker;
    atomic_init(&out->failures, atomic_load_explicit(&b->failures, memory_order_relaxed));
    atomic_init(&out->down, atomic_load_explicit(&b->down, memory_order_relaxed));
    out->next_try_ms = b->next_try_ms;
    out->claim_until_ms = b->claim_until_ms;
    out->claimer = b->claimer;
    out->down_since_ms = b->down_since_ms;
    memcpy(out->last_error, b->last_error, sizeof(out->last_error));
    memcpy(out->refusal_sqlstate, b->refusal_sqlstate, sizeof(out->refusal_sqlstate));
    memcpy(out->refusal_message, b->refusal_message, sizeof(out->refusal_message));
    pthread_mutex_unlock(&l->mu);
}
