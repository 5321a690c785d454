/* view: snapshots of the core for the services (see view.h). Each snapshot is filled from one
 * object at the moment it is walked; nothing is kept. */
#include "view.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "client.h"
#include "control.h"
#include "listener.h"
#include "server.h"
#include "server_login.h"
#include "sluice.h"
#include "tally.h"

#define NELEM(a) ((int)(sizeof(a) / sizeof((a)[0])))

static void fill_socket(struct view_socket *v, const struct buf *in, const struct msg_out *out,
                        uint32_t out_pos)
{
    bool have = in->data != NULL;
    v->recv_pos = have ? in->wpos : 0;
    v->pkt_pos = have ? in->scan : 0;
    v->pkt_remain = have ? buf_pending(in) : 0;
    v->send_pos = have ? in->rpos : 0;
    v->pkt_avail = have ? buf_unframed(in) : 0;
    v->out = out;
    v->out_pos = out_pos;
    v->busy = (have && !buf_is_empty(in)) || out->len > out_pos;
}

static void fill_client(struct view_conn *v, const struct client *c, const char *list_name)
{
    uint64_t now = sluice_now(c->worker);
    memset(v, 0, sizeof(*v));
    v->type = VIEW_CLIENT;
    v->id = c->id;
    v->link_id = c->server ? c->server->id : 0;
    v->user = c->user;
    v->database = c->database;
    v->state = list_name ? list_name : client_state_name(c->state);
    v->addr = &c->addr;
    v->fd = c->io.fd;
    v->ssl = c->io.ssl;
    v->connect_ms = c->connect_ms;
    v->state_since_ms = c->state_since_ms;
    if (c->state == CLIENT_WAITING || c->state == CLIENT_WAITING_LAST ||
        c->state == CLIENT_LOGIN_WAIT)
        v->wait_us = (now - c->state_since_ms) * 1000;
    if (c->addr.sa.sa_family == AF_UNIX && c->io.fd >= 0) {
        struct ucred cred;
        socklen_t len = sizeof(cred);
        if (getsockopt(c->io.fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0)
            v->remote_pid = cred.pid;
    }
    const char *app_name = params_get(&c->params, "application_name");
    v->app_name = app_name ? app_name : "";
    v->prepared_statements = c->stmts ? stmt_map_count(c->stmts) : 0;
    v->held_ms = c->state == CLIENT_ACTIVE ? now - c->state_since_ms : 0;
    fill_socket(&v->sock, &c->in, &c->out, c->out_pos);
}

static void fill_server(struct view_conn *v, const struct server *s, const char *list_name)
{
    const struct pool *p = s->pool;
    uint64_t now = sluice_now(p->worker);
    memset(v, 0, sizeof(*v));
    v->type = VIEW_SERVER;
    v->id = s->id;
    v->link_id = s->client ? s->client->id : 0;
    v->user = p->user_name;
    v->database = p->db_name;
    v->state = list_name ? list_name : server_state_shown(s->state);
    v->host = s->conn ? PQhost(s->conn) : server_login_host(s);
    v->port = s->conn ? PQport(s->conn) : server_login_port(s);
    v->fd = s->io.fd;
    v->ssl = s->io.ssl;
    v->connect_ms = s->connect_ms ? s->connect_ms : s->connect_start_ms;
    v->state_since_ms = s->state_since_ms;
    v->close_needed = s->close_when_free;
    v->remote_pid = s->backend_pid;
    const char *app_name = params_get(&s->params, "application_name");
    v->app_name = app_name ? app_name : "";
    v->prepared_statements = stmt_map_count(&s->stmts);
    v->held_ms = s->state == SERVER_ACTIVE ? now - s->state_since_ms : 0;
    fill_socket(&v->sock, &s->in, &s->out, s->out_pos);
}

/* Hand fn a snapshot of each connection on l, a list of clients or of servers; list_name, when
 * given, is the state shown (SHOW SOCKETS names the list a connection is on). */
static void walk(const struct list *l, enum view_conn_type type, const char *list_name,
                 view_conn_fn *fn, void *ctx)
{
    struct view_conn v;
    struct list_node *n, *tmp;
    list_for_each(l, n, tmp)
    {
        if (type == VIEW_CLIENT)
            fill_client(&v, container_of(n, struct client, node), list_name);
        else
            fill_server(&v, container_of(n, struct server, node), list_name);
        fn(&v, ctx);
    }
}

void view_clients(const struct worker *worker, view_conn_fn *fn, void *ctx)
{
    walk(&worker->login_clients, VIEW_CLIENT, NULL, fn, ctx);
    view_for_each_pool(worker, p)
    {
        walk(&p->active_clients, VIEW_CLIENT, NULL, fn, ctx);
        walk(&p->waiting, VIEW_CLIENT, NULL, fn, ctx);
        walk(&p->idle_clients, VIEW_CLIENT, NULL, fn, ctx);
    }
}

void view_pool_clients(const struct pool *p, view_conn_fn *fn, void *ctx)
{
    walk(&p->waiting, VIEW_CLIENT, NULL, fn, ctx);
    walk(&p->idle_clients, VIEW_CLIENT, NULL, fn, ctx);
    walk(&p->active_clients, VIEW_CLIENT, NULL, fn, ctx);
}

void view_servers(const struct worker *worker, view_conn_fn *fn, void *ctx)
{
    view_for_each_pool(worker, p)
    {
        walk(&p->active, VIEW_SERVER, NULL, fn, ctx);
        walk(&p->idle, VIEW_SERVER, NULL, fn, ctx);
        walk(&p->resetting, VIEW_SERVER, NULL, fn, ctx);
        walk(&p->connecting, VIEW_SERVER, NULL, fn, ctx);
    }
}

void view_sockets(const struct worker *worker, view_conn_fn *fn, void *ctx)
{
    view_for_each_pool(worker, p)
    {
        walk(&p->active_clients, VIEW_CLIENT, "cl_active", fn, ctx);
        /* PgBouncer's active list holds both */
        walk(&p->idle_clients, VIEW_CLIENT, "cl_active", fn, ctx);
        walk(&p->waiting, VIEW_CLIENT, "cl_waiting", fn, ctx);
        walk(&p->active, VIEW_SERVER, "sv_active", fn, ctx);
        walk(&p->idle, VIEW_SERVER, "sv_idle", fn, ctx);
        walk(&p->resetting, VIEW_SERVER, "sv_tested", fn, ctx);
        walk(&p->connecting, VIEW_SERVER, "sv_login", fn, ctx);
        walk(&p->leaving, VIEW_SERVER, "sv_leaving", fn, ctx);
    }
    walk(&worker->login_clients, VIEW_CLIENT, "cl_login", fn, ctx);
}

const struct pool *view_next_pool(const struct worker *worker, const struct pool *prev)
{
    const struct list_node *n = prev ? prev->node.next : worker->pools.head.next;
    return n == &worker->pools.head ? NULL : container_of(n, struct pool, node);
}

static int count_being_canceled(const struct list *l)
{
    int n = 0;
    struct list_node *node, *tmp;
    list_for_each(l, node, tmp)
    {
        if (container_of(node, struct server, node)->cancels_in_flight > 0)
            n++;
    }
    return n;
}

void view_pool_settings(const struct pool *p, struct view_pool *v)
{
    memset(v, 0, sizeof(*v));
    v->pool = p;
    v->db_name = p->db_name;
    v->user_name = p->user_name;
    v->console = p->is_admin;
    v->user_forced = p->user_forced;
    v->mode = p->mode;
    v->size = p->size;
    v->paused = p->paused;
    v->have_welcome = p->have_welcome;
    v->server_usable = p->server_usable;
    v->server_max_connections = p->server_max_connections;
    v->server_reserved = p->server_reserved;
    v->breaker = p->breaker;
    v->servers = pool_server_count(p);
    v->xact_count = p->xact_count;
    v->query_count = p->query_count;
    v->bytes_in = p->bytes_in;
    v->bytes_out = p->bytes_out;
    v->wait_us_total = p->wait_us_total;
    v->query_ms_total = p->query_ms_total;
    memcpy(v->cleanups, p->cleanups, sizeof(v->cleanups));
    v->wait_hist = p->wait_hist;
    v->query_hist = p->query_hist;
}

/* What the pool's own lists say (view_pool but the cap, which reads the budgets and the other
 * pools: a worker publishing its pools leaves it out, tally.h). */
static void pool_own(const struct pool *p, uint64_t now_ms, struct view_pool *v)
{
    view_pool_settings(p, v);
    v->sv_being_canceled = count_being_canceled(&p->active) + count_being_canceled(&p->resetting);
    stats_view_pool(p, now_ms, &v->now);
}

void view_pool(const struct pool *p, uint64_t now_ms, struct view_pool *v)
{
    pool_own(p, now_ms, v);
    if (!p->is_admin)
        budget_pool_cap(p, &v->cap);
}

int view_db_servers(const struct worker *worker, const char *db_name)
{
    return ledger_db_servers(&worker->proc->ledger, db_name);
}

int view_user_servers(const struct worker *worker, const char *user_name)
{
    return ledger_user_servers(&worker->proc->ledger, user_name);
}

int view_db_clients(const struct worker *worker, const char *db_name)
{
    return ledger_db_clients(&worker->proc->ledger, db_name);
}

int view_user_clients(const struct worker *worker, const char *user_name)
{
    return ledger_user_clients(&worker->proc->ledger, user_name);
}

int view_listen_port(const struct worker *worker)
{
    return listener_port(worker->proc);
}

const struct budget_rule *view_budget(const struct worker *worker, int i)
{
    const struct budget_set *set = worker->budgets;
    return set && i >= 0 && i < set->n ? &set->rules[i] : NULL;
}

void view_publish(struct worker *worker)
{
    struct tally_frame *back = tally_back(worker->tally, worker->pools.count);
    if (!back)
        return;
    uint64_t now = sluice_now(worker);
    int n = 0;
    view_for_each_pool(worker, pool)
    {
        struct tally_pool *tp = &back->pools[n++];
        pool_own(pool, now, &tp->v);
        memset(&tp->totals, 0, sizeof(tp->totals));
        stats_add_pool(&tp->totals, pool);
        memcpy(tp->wait_hist, pool->wait_hist, sizeof(tp->wait_hist));
        memcpy(tp->query_hist, pool->query_hist, sizeof(tp->query_hist));
        tp->close_pending = control_close_pending(pool);
        tp->napps = stats_top_applications(pool, tp->apps, STATS_TOP_APPS);
        snprintf(tp->db_name, sizeof(tp->db_name), "%s", pool->db_name);
        snprintf(tp->user_name, sizeof(tp->user_name), "%s", pool->user_name);
        tp->v.pool = NULL;
        tp->v.db_name = tp->v.user_name = NULL;
        tp->v.wait_hist = tp->v.query_hist = NULL;
    }
    back->npools = n;
    back->login_clients = worker->login_clients.count;
    back->marks = (struct tally_marks){
        .controls_applied = worker->controls_applied,
        .reload_applied = atomic_load_explicit(&worker->reload_applied, memory_order_relaxed),
        .publish_answered = worker->tally->publish_answered,
    };
    tally_swap(worker->tally);
}

void view_publish_now(struct worker *worker, unsigned ask)
{
    if (!worker->tally)
        return; /* the control worker's lists are read live */
    worker->tally->publish_answered = ask;
    view_publish(worker);
}

bool view_frames_answered(const struct worker *worker, unsigned ask)
{
    const struct process *proc = worker->proc;
    for (int i = 0; i < proc->nworkers; i++) {
        const struct worker *other = &proc->workers[i];
        if (other == worker || !other->tally)
            continue;
        /* asks only grow (wrapping): a frame answering a later one is newer still */
        if ((int)(tally_marks(other->tally).publish_answered - ask) < 0)
            return false;
    }
    return true;
}

static void count_pool(const struct tally_pool *tp, void *ctx)
{
    (void)tp;
    ++*(int *)ctx;
}

void view_totals(const struct worker *worker, struct view_totals *out)
{
    out->clients = worker->nclients;
    out->login_clients = worker->login_clients.count;
    out->servers = worker->nservers;
    out->pools = worker->pools.count;
    out->running = worker->proc->phase == PHASE_RUNNING;
    /* The other workers: their atomic counts now, their lists as last published (5.6). */
    struct process *proc = worker->proc;
    for (int i = 0; i < proc->nworkers; i++) {
        struct worker *other = &proc->workers[i];
        if (other == worker || !other->tally)
            continue;
        out->clients += atomic_load_explicit(&other->nclients, memory_order_relaxed);
        out->servers += atomic_load_explicit(&other->nservers, memory_order_relaxed);
        out->login_clients += tally_each_pool(other->tally, count_pool, &out->pools);
    }
}

void view_objects(const struct worker *worker, struct view_objects out[VIEW_OBJECT_KINDS])
{
    struct view_totals tot;
    view_totals(worker, &tot);
    struct ledger *l = &worker->proc->ledger;
    long long keys = 0, dbs = 0, users = 0;
    ledger_lock(l);
    for (const struct ledger_key *k = l->keys; k; k = k->next)
        keys++;
    for (const struct ledger_scope *s = l->dbs; s; s = s->next)
        dbs++;
    for (const struct ledger_scope *s = l->users; s; s = s->next)
        users++;
    ledger_unlock(l);
    const struct view_objects kinds[VIEW_OBJECT_KINDS] = {
        {"client", sizeof(struct client), tot.clients},
        {"server", sizeof(struct server), tot.servers},
        {"pool", sizeof(struct pool), tot.pools},
        {"ledger_key", sizeof(struct ledger_key), keys},
        {"ledger_db", sizeof(struct ledger_scope), dbs},
        {"ledger_user", sizeof(struct ledger_scope), users},
    };
    memcpy(out, kinds, sizeof(kinds));
}

/* Add from's counts (servers and clients by state, counters) to into's; the settings stay. */
static void add_pool_counts(struct view_pool *into, const struct view_pool *from)
{
    struct stats_pool_view *a = &into->now;
    const struct stats_pool_view *b = &from->now;
    a->sv_active += b->sv_active;
    a->sv_idle += b->sv_idle;
    a->sv_used += b->sv_used;
    a->sv_tested += b->sv_tested;
    a->sv_login += b->sv_login;
    a->sv_total += b->sv_total;
    a->cl_active += b->cl_active;
    a->cl_waiting += b->cl_waiting;
    a->cl_idle += b->cl_idle;
    if (b->longest_wait_ms > a->longest_wait_ms)
        a->longest_wait_ms = b->longest_wait_ms;
    into->servers += from->servers;
    into->sv_being_canceled += from->sv_being_canceled;
    into->xact_count += from->xact_count;
    into->query_count += from->query_count;
    into->bytes_in += from->bytes_in;
    into->bytes_out += from->bytes_out;
    into->wait_us_total += from->wait_us_total;
    into->query_ms_total += from->query_ms_total;
    for (int k = 0; k < POOL_CLEANUP_KINDS; k++)
        into->cleanups[k] += from->cleanups[k];
}

static bool same_key(const struct view_pool *a, const char *db, const char *user)
{
    return strcmp(a->db_name, db) == 0 && strcmp(a->user_name, user) == 0;
}

static void add_if_same_key(const struct tally_pool *tp, void *ctx)
{
    struct view_pool *into = ctx;
    if (same_key(&tp->v, into->db_name, into->user_name))
        add_pool_counts(into, &tp->v);
}

void view_pool_add_workers(const struct worker *worker, struct view_pool *v)
{
    struct process *proc = worker->proc;
    for (int i = 0; i < proc->nworkers; i++) {
        struct worker *other = &proc->workers[i];
        if (other != worker && other->tally)
            tally_each_pool(other->tally, add_if_same_key, v);
    }
}

struct hists {
    const struct view_pool *key;
    uint64_t *wait, *query;
};

static void add_hists_if_same_key(const struct tally_pool *tp, void *ctx)
{
    struct hists *h = ctx;
    if (!same_key(&tp->v, h->key->db_name, h->key->user_name))
        return;
    for (int i = 0; i < POOL_HIST_BUCKETS; i++) {
        h->wait[i] += tp->wait_hist[i];
        h->query[i] += tp->query_hist[i];
    }
}

void view_pool_hists(const struct worker *worker, const struct view_pool *v, uint64_t *wait,
                     uint64_t *query)
{
    for (int i = 0; i < POOL_HIST_BUCKETS; i++) {
        wait[i] = v->wait_hist ? v->wait_hist[i] : 0;
        query[i] = v->query_hist ? v->query_hist[i] : 0;
    }
    struct hists h = {v, wait, query};
    struct process *proc = worker->proc;
    for (int i = 0; i < proc->nworkers; i++) {
        struct worker *other = &proc->workers[i];
        if (other != worker && other->tally)
            tally_each_pool(other->tally, add_hists_if_same_key, &h);
    }
}

/* Linked servers of the rows a cap of key covers (rows are one per key, summed over workers). */
static int linked_under(const struct view_pool *rows, int n, const struct view_pool *key,
                        enum limit_kind cap)
{
    int in_use = 0;
    for (int i = 0; i < n; i++) {
        const struct view_pool *r = &rows[i];
        if (r->console)
            continue;
        bool covered = cap == LIMIT_GLOBAL ||
                       (cap == LIMIT_DB && strcmp(r->db_name, key->db_name) == 0) ||
                       (cap == LIMIT_USER && strcmp(r->user_name, key->user_name) == 0) ||
                       (cap == LIMIT_POOL && r == key);
        in_use += covered ? r->now.sv_active : 0;
    }
    return in_use;
}

void view_pool_caps(const struct worker *worker, struct view_pool *rows, int n)
{
    struct ledger *l = &worker->proc->ledger;
    for (int i = 0; i < n; i++) {
        struct view_pool *v = &rows[i];
        if (v->console)
            continue;
        int learnt = ledger_usable_of(l, v->db_name, v->user_name);
        struct budget_key k = {.db_name = v->db_name,
                               .user_name = v->user_name,
                               .pool_size = v->size,
                               .server_usable = learnt > 0 ? learnt : v->server_usable,
                               .user_forced = v->user_forced};
        budget_key_cap(worker, &k, &v->cap);
        v->cap.in_use = v->cap.key == LIMIT_BUDGET
                            ? budget_leases(v->cap.budget, worker->proc->nworkers)
                            : linked_under(rows, n, v, v->cap.key);
    }
}

struct top_apps {
    const struct view_pool *key;
    struct stats_app *list;
    int n, cap;
};

static void add_apps_if_same_key(const struct tally_pool *tp, void *ctx)
{
    struct top_apps *t = ctx;
    if (!same_key(&tp->v, t->key->db_name, t->key->user_name))
        return;
    for (int i = 0; i < tp->napps; i++)
        t->n = stats_app_add(t->list, t->n, t->cap, tp->apps[i].name, tp->apps[i].servers);
}

int view_pool_top_apps(const struct worker *worker, const struct view_pool *v,
                       struct stats_app *out, int max)
{
    /* every worker's top STATS_TOP_APPS fit: no name is dropped before the sums are made */
    struct stats_app all[STATS_TOP_APPS * SLUICE_MAX_WORKERS];
    struct top_apps t = {.key = v, .list = all, .cap = STATS_TOP_APPS * SLUICE_MAX_WORKERS};
    if (v->pool)
        t.n = stats_top_applications(v->pool, all, STATS_TOP_APPS);
    struct process *proc = worker->proc;
    for (int i = 0; i < proc->nworkers; i++) {
        struct worker *other = &proc->workers[i];
        if (other != worker && other->tally)
            tally_each_pool(other->tally, add_apps_if_same_key, &t);
    }
    int n = t.n < max ? t.n : max;
    memcpy(out, all, (size_t)n * sizeof(*out));
    return n;
}

struct elsewhere {
    const struct worker *worker;
    struct view_remote_pool *pools;
    int n, cap;
    bool out_of_memory;
};

static void collect_elsewhere(const struct tally_pool *tp, void *ctx)
{
    struct elsewhere *e = ctx;
    view_for_each_pool(e->worker, p)
    {
        if (strcmp(p->db_name, tp->db_name) == 0 && strcmp(p->user_name, tp->user_name) == 0)
            return; /* listed with the worker's own, summed there */
    }
    for (int i = 0; i < e->n; i++) {
        if (strcmp(e->pools[i].db_name, tp->db_name) == 0 &&
            strcmp(e->pools[i].user_name, tp->user_name) == 0) {
            add_pool_counts(&e->pools[i].v, &tp->v);
            return;
        }
    }
    if (e->n == e->cap) {
        int cap = e->cap ? 2 * e->cap : 8;
        struct view_remote_pool *more = realloc(e->pools, (size_t)cap * sizeof(*more));
        if (!more) {
            e->out_of_memory = true;
            return;
        }
        e->pools = more;
        e->cap = cap;
    }
    struct view_remote_pool *r = &e->pools[e->n++];
    r->v = tp->v;
    r->v.wait_hist = r->v.query_hist = NULL; /* the frame's, valid under its lock only */
    memcpy(r->db_name, tp->db_name, sizeof(r->db_name));
    memcpy(r->user_name, tp->user_name, sizeof(r->user_name));
    r->v.db_name = r->db_name;
    r->v.user_name = r->user_name;
}

int view_pools_elsewhere(const struct worker *worker, struct view_remote_pool **out)
{
    struct elsewhere e = {.worker = worker};
    struct process *proc = worker->proc;
    for (int i = 0; i < proc->nworkers; i++) {
        struct worker *other = &proc->workers[i];
        if (other != worker && other->tally)
            tally_each_pool(other->tally, collect_elsewhere, &e);
    }
    /* the names point into the array: fixed once it no longer moves */
    for (int i = 0; i < e.n; i++) {
        e.pools[i].v.db_name = e.pools[i].db_name;
        e.pools[i].v.user_name = e.pools[i].user_name;
    }
    *out = e.pools;
    return e.n;
}

bool view_pools_collect(const struct worker *worker, struct view_pools *out)
{
    uint64_t now = sluice_now(worker);
    int nelsewhere = view_pools_elsewhere(worker, &out->elsewhere), nown = 0;
    view_for_each_pool(worker, pool)
    {
        nown++;
    }
    out->n = 0;
    out->v = malloc(((size_t)nown + (size_t)nelsewhere + 1) * sizeof(*out->v));
    if (!out->v) {
        free(out->elsewhere);
        out->elsewhere = NULL;
        return false;
    }
    view_for_each_pool(worker, pool)
    {
        struct view_pool *v = &out->v[out->n++];
        view_pool(pool, now, v);
        view_pool_add_workers(worker, v); /* the same pool on the other workers (5.6) */
    }
    for (int i = 0; i < nelsewhere; i++)
        out->v[out->n++] = out->elsewhere[i].v;
    return true;
}

void view_pools_free(struct view_pools *pools)
{
    free(pools->v);
    free(pools->elsewhere);
}

void view_pools_summed(const struct worker *worker, view_pool_fn *fn, void *ctx)
{
    struct view_pools pools;
    if (!view_pools_collect(worker, &pools))
        return; /* out of memory: no rows */
    for (int i = 0; i < pools.n; i++)
        fn(&pools.v[i], ctx);
    view_pools_free(&pools);
}
