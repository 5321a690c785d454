/* tally: each worker's published pool counts (see tally.h). */
#include "tally.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sluice.h"

struct tally *tally_new(void)
{
    struct tally *t = calloc(1, sizeof(*t));
    if (t && uv_mutex_init(&t->mu) < 0) {
        free(t);
        return NULL;
    }
    return t;
}

void tally_free(struct tally *t)
{
    if (!t)
        return;
    free(t->frames[0].pools);
    free(t->frames[1].pools);
    uv_mutex_destroy(&t->mu);
    free(t);
}

/* Room for n pools in f; false (f unchanged) when out of memory. */
static bool reserve(struct tally_frame *f, int n)
{
    if (n <= f->cap)
        return true;
    struct tally_pool *more = realloc(f->pools, (size_t)n * sizeof(*more));
    if (!more)
        return false;
    f->pools = more;
    f->cap = n;
    return true;
}

void tally_publish(struct worker *worker)
{
    struct tally *t = worker->tally;
    /* Only this thread writes the back frame, and readers see the front only: no lock here. */
    struct tally_frame *back = &t->frames[1 - t->front];
    if (!reserve(back, worker->pools.count))
        return; /* the last frame stays: one tick older */
    uint64_t now = sluice_now(worker);
    int n = 0;
    view_for_each_pool(worker, pool)
    {
        struct tally_pool *tp = &back->pools[n++];
        view_pool(pool, now, &tp->v);
        snprintf(tp->db_name, sizeof(tp->db_name), "%s", pool->db_name);
        snprintf(tp->user_name, sizeof(tp->user_name), "%s", pool->user_name);
        tp->v.pool = NULL;
        tp->v.db_name = tp->v.user_name = NULL;
        tp->v.wait_hist = tp->v.query_hist = NULL;
    }
    back->npools = n;
    back->login_clients = worker->login_clients.count;
    uv_mutex_lock(&t->mu);
    t->front = 1 - t->front;
    uv_mutex_unlock(&t->mu);
}

int tally_each_pool(struct worker *worker, tally_pool_fn *fn, void *ctx)
{
    struct tally *t = worker->tally;
    uv_mutex_lock(&t->mu);
    struct tally_frame *f = &t->frames[t->front];
    for (int i = 0; i < f->npools; i++) {
        struct tally_pool *tp = &f->pools[i];
        tp->v.db_name = tp->db_name;
        tp->v.user_name = tp->user_name;
        fn(tp, ctx);
    }
    int login_clients = f->login_clients;
    uv_mutex_unlock(&t->mu);
    return login_clients;
}
