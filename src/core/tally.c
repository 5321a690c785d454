/* tally: each worker's published pool counts (see tally.h). */
#include "tally.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

struct tally_frame *tally_back(struct tally *t, int npools)
{
    /* Only the worker's thread writes the back frame, and readers see the front only: no lock */
    struct tally_frame *back = &t->frames[1 - t->front];
    return reserve(back, npools) ? back : NULL;
}

void tally_swap(struct tally *t)
{
    uv_mutex_lock(&t->mu);
    t->front = 1 - t->front;
    uv_mutex_unlock(&t->mu);
}

struct tally_marks tally_marks(struct tally *t)
{
    uv_mutex_lock(&t->mu);
    struct tally_marks m = t->frames[t->front].marks;
    uv_mutex_unlock(&t->mu);
    return m;
}

int tally_each_pool(struct tally *t, tally_pool_fn *fn, void *ctx)
{
    uv_mutex_lock(&t->mu);
    struct tally_frame *f = &t->frames[t->front];
    for (int i = 0; i < f->npools; i++) {
        struct tally_pool *tp = &f->pools[i];
        tp->v.db_name = tp->db_name;
        tp->v.user_name = tp->user_name;
        tp->v.wait_hist = tp->wait_hist;
        tp->v.query_hist = tp->query_hist;
        fn(tp, ctx);
    }
    int login_clients = f->login_clients;
    uv_mutex_unlock(&t->mu);
    return login_clients;
}
