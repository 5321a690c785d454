/* stats: pool views, per-database totals and periodic averages (see stats.h).
 *
 * The pools' counters only grow, so an average is the difference between two snapshots taken a
 * stats_period apart, divided by the period (rates) or by the number of events (times). One
 * snapshot per database is kept; a database whose first pool appeared during the period counts
 * from zero, which is where its counters started. */
#include "stats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "config.h"
#include "list.h"
#include "params.h"
#include "pool.h"
#include "server.h"
#include "sluice.h"
#include "tally.h"

#define DEFAULT_WINDOW_MS 60000 /* when stats_period is 0 (no stats log line) */

struct stats_db {
    char *name;
    struct stats_totals prev; /* at the last snapshot */
    struct stats_totals cur;  /* scratch while summing */
    struct stats_totals avg;
    bool have_avg;
    bool seen; /* a pool of it was summed at this snapshot (a freed "*" database's is not) */
};

struct stats {
    struct stats_db *dbs;
    int n, cap;
    uint64_t last_ms;
};

void stats_view_pool(const struct pool *p, uint64_t now, struct stats_pool_view *v)
{
    const struct config *cfg = p->worker->cfg;
    memset(v, 0, sizeof(*v));
    v->sv_active = p->active.count;
    v->sv_tested = p->resetting.count;
    v->sv_login = p->connecting.count;
    struct list_node *n, *tmp;
    list_for_each(&p->idle, n, tmp)
    {
        const struct server *s = container_of(n, struct server, node);
        if (cfg->server_check_query.kind != SQL_SETTING_NONE && cfg->server_check_delay >= 0 &&
            now - s->state_since_ms >= (uint64_t)cfg->server_check_delay)
            v->sv_used++;
        else
            v->sv_idle++;
    }
    v->sv_total = pool_server_count(p);
    v->cl_active = p->active_clients.count;
    v->cl_waiting = p->waiting.count;
    v->cl_idle = p->idle_clients.count;
    if (!list_empty(&p->waiting)) {
        const struct client *head = container_of(list_first(&p->waiting), struct client, node);
        v->longest_wait_ms = now - head->state_since_ms;
    }
    v->down = pool_is_down(p);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Most servers first; equal counts in name order. */
static int cmp_app(const void *a, const void *b)
{
    const struct stats_app *x = a, *y = b;
    if (x->servers != y->servers)
        return x->servers > y->servers ? -1 : 1;
    return strcmp(x->name, y->name);
}

int stats_app_add(struct stats_app *list, int n, int cap, const char *name, int servers)
{
    int i = 0;
    while (i < n && strncmp(list[i].name, name, sizeof(list[i].name) - 1) != 0)
        i++;
    if (i == n) {
        if (n == cap)
            return n;
        snprintf(list[n].name, sizeof(list[n].name), "%s", name);
        list[n++].servers = 0;
    }
    list[i].servers += servers;
    qsort(list, (size_t)n, sizeof(*list), cmp_app);
    return n;
}

int stats_top_applications(const struct pool *p, struct stats_app *out, int max)
{
    if (p->active_clients.count == 0 || max <= 0)
        return 0;
    const char **names = malloc((size_t)p->active_clients.count * sizeof(*names));
    if (!names)
        return 0;
    int n = 0, nout = 0;
    struct list_node *node, *tmp;
    list_for_each(&p->active_clients, node, tmp)
    {
        const struct client *c = container_of(node, struct client, node);
        if (!c->server)
            continue;
        const char *a = params_get(&c->params, "application_name");
        names[n++] = a ? a : "";
    }
    /* Sorted, equal names are neighbours: each run is one application. */
    qsort(names, (size_t)n, sizeof(*names), cmp_str);
    for (int i = 0; i < n;) {
        int j = i;
        while (j < n && strcmp(names[j], names[i]) == 0)
            j++;
        /* a run longer than the last kept one replaces it; the list stays in order */
        if (nout < max || j - i > out[nout - 1].servers) {
            if (nout == max)
                nout--;
            nout = stats_app_add(out, nout, max, names[i], j - i);
        }
        i = j;
    }
    free(names); /* the names themselves belong to the clients */
    return nout;
}

void stats_add_pool(struct stats_totals *t, const struct pool *p)
{
    t->xact_count += p->xact_count;
    t->query_count += p->query_count;
    t->bytes_in += p->bytes_in;
    t->bytes_out += p->bytes_out;
    t->query_us += p->query_ms_total * 1000;
    t->xact_us += p->xact_us_total;
    t->wait_us += p->wait_us_total;
    t->wait_count += p->wait_count;
    /* The wait histogram's buckets above the one that ends at STATS_SLOW_WAIT_MS. */
    for (int i = 0; i < POOL_HIST_BUCKETS; i++)
        if (i == POOL_HIST_BUCKETS - 1 || pool_hist_bounds_ms[i] > STATS_SLOW_WAIT_MS)
            t->slow_waits += p->wait_hist[i];
}

static void add_totals(struct stats_totals *t, const struct stats_totals *more)
{
    t->xact_count += more->xact_count;
    t->query_count += more->query_count;
    t->bytes_in += more->bytes_in;
    t->bytes_out += more->bytes_out;
    t->query_us += more->query_us;
    t->xact_us += more->xact_us;
    t->wait_us += more->wait_us;
    t->wait_count += more->wait_count;
    t->slow_waits += more->slow_waits;
}

/* fn for each pool the other workers published at their last tick (tally.h, architecture.md
 * 5.6): worker reads its own pools live, the others' frames; with one worker, none. */
static void each_published_pool(const struct worker *worker, tally_pool_fn *fn, void *ctx)
{
    struct process *proc = worker->proc;
    for (int i = 0; i < proc->nworkers; i++) {
        struct worker *other = &proc->workers[i];
        if (other != worker && other->tally)
            tally_each_pool(other->tally, fn, ctx);
    }
}

struct db_totals {
    const char *db_name;
    struct stats_totals *out;
};

static void add_if_db(const struct tally_pool *tp, void *ctx)
{
    struct db_totals *d = ctx;
    if (strcmp(tp->db_name, d->db_name) == 0)
        add_totals(d->out, &tp->totals);
}

void stats_totals_for_db(const struct worker *worker, const char *db_name, struct stats_totals *out)
{
    memset(out, 0, sizeof(*out));
    struct list_node *n, *tmp;
    list_for_each(&worker->pools, n, tmp)
    {
        const struct pool *p = container_of(n, struct pool, node);
        if (strcmp(p->db_name, db_name) == 0)
            stats_add_pool(out, p);
    }
    each_published_pool(worker, add_if_db, &(struct db_totals){db_name, out});
}

static struct stats_db *find_db(struct stats *st, const char *name, bool create)
{
    for (int i = 0; i < st->n; i++) {
        if (strcmp(st->dbs[i].name, name) == 0) {
            st->dbs[i].seen |= create;
            return &st->dbs[i];
        }
    }
    if (!create)
        return NULL;
    if (st->n == st->cap) {
        int cap = st->cap ? st->cap * 2 : 8;
        struct stats_db *dbs = realloc(st->dbs, (size_t)cap * sizeof(*dbs));
        if (!dbs)
            return NULL;
        st->dbs = dbs;
        st->cap = cap;
    }
    struct stats_db *d = &st->dbs[st->n];
    memset(d, 0, sizeof(*d));
    d->name = strdup(name);
    if (!d->name)
        return NULL;
    d->seen = true;
    st->n++;
    return d;
}

/* A database no pool of which was summed at this snapshot is gone (autodb_idle_timeout): its
 * averages go with it, or every name a client ever chose would stay here. */
static void forget_unseen(struct stats *st)
{
    int kept = 0;
    for (int i = 0; i < st->n; i++) {
        if (st->dbs[i].seen)
            st->dbs[kept++] = st->dbs[i];
        else
            free(st->dbs[i].name);
    }
    st->n = kept;
}

/* A pool another worker published, into the period's sums of its database (stats_tick). */
static void add_published(const struct tally_pool *tp, void *ctx)
{
    struct stats_db *d = find_db(ctx, tp->db_name, true);
    if (d)
        add_totals(&d->cur, &tp->totals);
}

static uint64_t delta(uint64_t cur, uint64_t prev)
{
    return cur >= prev ? cur - prev : cur; /* a counter that restarted counts from zero */
}

static void compute_average(struct stats_db *d, uint64_t elapsed_ms)
{
    const struct stats_totals *c = &d->cur, *p = &d->prev;
    struct stats_totals *a = &d->avg;
    uint64_t ms = elapsed_ms ? elapsed_ms : 1;
    a->xact_count = delta(c->xact_count, p->xact_count) * 1000 / ms;
    a->query_count = delta(c->query_count, p->query_count) * 1000 / ms;
    a->bytes_in = delta(c->bytes_in, p->bytes_in) * 1000 / ms;
    a->bytes_out = delta(c->bytes_out, p->bytes_out) * 1000 / ms;
    uint64_t queries = delta(c->query_count, p->query_count);
    uint64_t waits = delta(c->wait_count, p->wait_count);
    a->query_us = queries ? delta(c->query_us, p->query_us) / queries : 0;
    a->wait_us = waits ? delta(c->wait_us, p->wait_us) / waits : 0;
    a->wait_count = waits * 1000 / ms;
    a->slow_waits = delta(c->slow_waits, p->slow_waits);
    uint64_t xacts = delta(c->xact_count, p->xact_count);
    a->xact_us = xacts ? delta(c->xact_us, p->xact_us) / xacts : 0;
    d->have_avg = true;
}

uint64_t stats_period_ms(const struct worker *worker)
{
    return worker->cfg->stats_period > 0 ? (uint64_t)worker->cfg->stats_period : DEFAULT_WINDOW_MS;
}

void stats_tick(struct worker *worker, uint64_t now_ms)
{
    struct stats *st = worker->stats;
    if (!st) {
        st = worker->stats = calloc(1, sizeof(*st));
        if (!st)
            return;
        st->last_ms = now_ms;
        return; /* every counter is zero at start: the first snapshot is all zeros */
    }
    if (now_ms - st->last_ms < stats_period_ms(worker))
        return;
    for (int i = 0; i < st->n; i++) {
        memset(&st->dbs[i].cur, 0, sizeof(st->dbs[i].cur));
        st->dbs[i].seen = false;
    }
    struct list_node *n, *tmp;
    list_for_each(&worker->pools, n, tmp)
    {
        const struct pool *p = container_of(n, struct pool, node);
        struct stats_db *d = find_db(st, p->db_name, true);
        if (d)
            stats_add_pool(&d->cur, p);
    }
    each_published_pool(worker, add_published, st);
    for (int i = 0; i < st->n; i++) {
        struct stats_db *d = &st->dbs[i];
        compute_average(d, now_ms - st->last_ms);
        d->prev = d->cur;
    }
    forget_unseen(st);
    st->last_ms = now_ms;
}

bool stats_averages(const struct worker *worker, const char *db_name, struct stats_totals *out)
{
    memset(out, 0, sizeof(*out));
    struct stats_db *d = worker->stats ? find_db(worker->stats, db_name, false) : NULL;
    if (!d || !d->have_avg)
        return false;
    *out = d->avg;
    return true;
}

void stats_free(struct worker *worker)
{
    struct stats *st = worker->stats;
    if (!st)
        return;
    for (int i = 0; i < st->n; i++)
        free(st->dbs[i].name);
    free(st->dbs);
    free(st);
    worker->stats = NULL;
}
