/* admin_show: the SHOW result sets about pools, counters, databases, users, the config and the
 * budgets (see admin_show.h); the ones about connections are admin_show_conns.c, the writer they
 * share is admin_table.c. */
#include "admin_show.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef HAVE_MALLINFO2
#include <malloc.h>
#endif

#include "admin_table.h"
#include "budget.h"
#include "client.h"
#include "config.h"
#include "console.h"
#include "disabled_dbs.h"
#include "error.h"
#include "pool.h"
#include "sluice.h"
#include "stats.h"
#include "view.h"

/* ---- SHOW ---- */

static void show_help(struct client *c)
{
    codec_put_error(&c->out, 'N', "NOTICE", sqlstate_code(SQLSTATE_SUCCESSFUL_COMPLETION),
                    "Console usage",
                    "SHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION\n"
                    "SHOW PEERS|PEER_POOLS\n"
                    "SHOW SOCKETS|ACTIVE_SOCKETS|LISTS|MEM\n"
                    "SHOW STATS|STATS_TOTALS|STATS_AVERAGES\n"
                    "SHOW BUDGETS\n"
                    "SET <key> = <value>\nRELOAD\n"
                    "PAUSE [<db>]\nRESUME [<db>]\nDISABLE <db>\nENABLE <db>\nRECONNECT [<db>]\n"
                    "KILL <db>\nKILL_CLIENT <id>\nSUSPEND (refused)\n"
                    "SHUTDOWN\nSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS\nWAIT_CLOSE [<db>]",
                    NULL);
}

/* One row of SHOW POOLS. */
static void pool_row(const struct view_pool *p, void *ctx)
{
    struct table *t = ctx;
    const struct stats_pool_view v = p->now;
    row_begin(t);
    cell_text(t, p->db_name);
    cell_text(t, p->user_name);
    /* PgBouncer's cl_active: clients linked to a server or idle with nothing waiting */
    cell_int(t, v.cl_active + v.cl_idle);
    cell_int(t, v.cl_waiting);
    cell_int(t, 0);
    cell_int(t, 0);
    cell_int(t, v.sv_active);
    cell_int(t, 0);
    cell_int(t, p->sv_being_canceled);
    cell_int(t, v.sv_idle);
    cell_int(t, v.sv_used);
    cell_int(t, v.sv_tested);
    cell_int(t, v.sv_login);
    cells_wait(t, v.longest_wait_ms * 1000);
    cell_text(t, p->console ? "statement" : pool_mode_name(p->mode));
    cell_text(t, NULL); /* PgBouncer: set only for a host list; sluice leaves those to libpq */
    cell_int(t, p->console ? 0 : p->size);
    cell_int(t, v.cl_idle);
    cell_int(t, p->paused ? 1 : 0);
    cell_text(t, breaker_state_name(p->breaker.state));
    row_end(t);
}

static void show_pools(struct client *c)
{
    static const struct col cols[] = {
        {"database", COL_TEXT},
        {"user", COL_TEXT},
        {"cl_active", COL_INT},
        {"cl_waiting", COL_INT},
        {"cl_active_cancel_req", COL_INT},
        {"cl_waiting_cancel_req", COL_INT},
        {"sv_active", COL_INT},
        {"sv_active_cancel", COL_INT},
        {"sv_being_canceled", COL_INT},
        {"sv_idle", COL_INT},
        {"sv_used", COL_INT},
        {"sv_tested", COL_INT},
        {"sv_login", COL_INT},
        {"maxwait", COL_INT},
        {"maxwait_us", COL_INT},
        {"pool_mode", COL_TEXT},
        {"load_balance_hosts", COL_TEXT},
        {"pool_size", COL_INT},
        {"cl_idle", COL_INT},
        {"paused", COL_INT},
        {"breaker", COL_TEXT}, /* sluice's own: closed, open (database down) or probing */
    };
    struct table t;
    table_begin(&t, &c->out, cols, NELEM(cols));
    view_pools_summed(c->worker, pool_row, &t);
}

/* sluice has no peering ([peers] is warned about and ignored): PgBouncer's columns, no rows, so
 * tools that read them work. */
static void show_peers(struct client *c)
{
    static const struct col cols[] = {
        {"peer_id", COL_INT}, {"host", COL_TEXT}, {"port", COL_INT}, {"pool_size", COL_INT}};
    struct table t;
    table_begin(&t, &c->out, cols, NELEM(cols));
}

static void show_peer_pools(struct client *c)
{
    static const struct col cols[] = {
        {"peer_id", COL_INT},
        {"cl_active_cancel_req", COL_INT},
        {"cl_waiting_cancel_req", COL_INT},
        {"sv_active_cancel", COL_INT},
        {"sv_login", COL_INT},
    };
    struct table t;
    table_begin(&t, &c->out, cols, NELEM(cols));
}

/* The distinct database names of the pools: the calling worker's in pool order, then those only
 * other workers have (5.6). names points into the live pools and into elsewhere. */
struct pool_dbs {
    const char **names;
    int n;
    struct view_remote_pool *elsewhere;
};

static void add_db_name(struct pool_dbs *d, const char *db)
{
    for (int i = 0; i < d->n; i++) {
        if (strcmp(d->names[i], db) == 0)
            return;
    }
    d->names[d->n++] = db;
}

/* d->n is 0 when out of memory; pool_databases_free releases it. */
static void pool_databases(struct worker *worker, struct pool_dbs *d)
{
    struct view_totals tot;
    view_totals(worker, &tot);
    int nelsewhere = view_pools_elsewhere(worker, &d->elsewhere);
    d->n = 0;
    d->names = calloc((size_t)tot.pools + (size_t)nelsewhere + 1, sizeof(*d->names));
    if (!d->names)
        return;
    view_for_each_pool(worker, pool)
    {
        struct view_pool p;
        view_pool_settings(pool, &p);
        add_db_name(d, p.db_name);
    }
    for (int i = 0; i < nelsewhere; i++)
        add_db_name(d, d->elsewhere[i].db_name);
}

static void pool_databases_free(struct pool_dbs *d)
{
    free(d->names);
    free(d->elsewhere);
}

enum stats_view { VIEW_STATS, VIEW_TOTALS, VIEW_AVERAGES };

static void cells_stats(struct table *t, const struct stats_totals *s)
{
    cell_uint(t, s->xact_count);
    cell_uint(t, s->query_count);
    cell_uint(t, s->bytes_in);
    cell_uint(t, s->bytes_out);
    cell_uint(t, s->xact_us);
    cell_uint(t, s->query_us);
    cell_uint(t, s->wait_us);
}

static void show_stats(struct client *c, enum stats_view view)
{
    static const struct col stats_cols[] = {
        {"database", COL_TEXT},         {"total_xact_count", COL_INT},
        {"total_query_count", COL_INT}, {"total_received", COL_INT},
        {"total_sent", COL_INT},        {"total_xact_time", COL_INT},
        {"total_query_time", COL_INT},  {"total_wait_time", COL_INT},
        {"avg_xact_count", COL_INT},    {"avg_query_count", COL_INT},
        {"avg_recv", COL_INT},          {"avg_sent", COL_INT},
        {"avg_xact_time", COL_INT},     {"avg_query_time", COL_INT},
        {"avg_wait_time", COL_INT},
    };
    static const struct col part_cols[] = {
        {"database", COL_TEXT},      {"xact_count", COL_INT}, {"query_count", COL_INT},
        {"bytes_received", COL_INT}, {"bytes_sent", COL_INT}, {"xact_time", COL_INT},
        {"query_time", COL_INT},     {"wait_time", COL_INT},
    };
    struct table t;
    if (view == VIEW_STATS)
        table_begin(&t, &c->out, stats_cols, NELEM(stats_cols));
    else
        table_begin(&t, &c->out, part_cols, NELEM(part_cols));
    struct pool_dbs pd;
    pool_databases(c->worker, &pd);
    const char **dbs = pd.names;
    for (int i = 0; i < pd.n; i++) {
        struct stats_totals total, avg;
        stats_totals_for_db(c->worker, dbs[i], &total);
        stats_averages(c->worker, dbs[i], &avg);
        row_begin(&t);
        cell_text(&t, dbs[i]);
        if (view != VIEW_AVERAGES)
            cells_stats(&t, &total);
        if (view != VIEW_TOTALS)
            cells_stats(&t, &avg);
        row_end(&t);
    }
    pool_databases_free(&pd);
}

static const char *db_keyword(const struct db_entry *d, const char *kw)
{
    for (int i = 0; i < d->nkeys; i++) {
        if (strcmp(d->pq_keywords[i], kw) == 0)
            return d->pq_values[i];
    }
    return NULL;
}

/* The usable connection count of the server behind a database, if a pool has learned it. */
static int db_server_usable(const struct worker *worker, const char *db)
{
    view_for_each_pool(worker, pool)
    {
        struct view_pool p;
        view_pool_settings(pool, &p);
        if (strcmp(p.db_name, db) == 0 && p.server_usable > 0)
            return p.server_usable;
    }
    return 0;
}

static void format_limit(struct limit l, char *out, size_t n)
{
    if (l.is_percent)
        snprintf(out, n, "%d%%", l.value);
    else
        snprintf(out, n, "%d", l.value);
}

static int db_client_cap(const struct config *cfg, const struct db_entry *d)
{
    return (int)(d->max_db_client_connections > 0 ? d->max_db_client_connections
                                                  : cfg->max_db_client_connections);
}

/* Console clients connected under one of the console's names. */
static int console_clients(const struct worker *worker, const char *name)
{
    int n = 0;
    uint64_t now = sluice_now(worker);
    view_for_each_pool(worker, pool)
    {
        struct view_pool p;
        view_pool(pool, now, &p);
        if (p.console && strcmp(p.db_name, name) == 0)
            n += p.now.cl_idle;
    }
    return n;
}

/* One row of SHOW DATABASES: d is its [databases] entry, or NULL for the admin console. */
static void database_row(struct table *t, struct worker *worker, const char *name,
                         const struct db_entry *d)
{
    const struct config *cfg = worker->cfg;
    row_begin(t);
    cell_text(t, name);
    if (!d) {
        /* PgBouncer lists its admin database too: no host, sluice's own port, no servers. */
        cell_text(t, NULL);
        cell_int(t, view_listen_port(worker));
        cell_text(t, name);
        cell_text(t, NULL);
        cell_int(t, 0);
        cell_int(t, 0);
        cell_int(t, 0);
        cell_int(t, cfg->server_lifetime / 1000);
        cell_text(t, "statement");
        cell_text(t, NULL);
        cell_int(t, 0);
        cell_int(t, 0);
        cell_int(t, 0);
        cell_int(t, console_clients(worker, name));
        cell_int(t, 0);
        cell_int(t, 0);
        cell_text(t, "0");
        row_end(t);
        return;
    }
    const char *port = db_keyword(d, "port");
    const char *dbname = db_keyword(d, "dbname");
    struct limit maxc =
        d->max_db_connections.value ? d->max_db_connections : cfg->max_db_connections;
    char limit_text[32];
    format_limit(maxc, limit_text, sizeof(limit_text));
    int npools = 0, npaused = 0;
    view_for_each_pool(worker, pool)
    {
        struct view_pool p;
        view_pool_settings(pool, &p);
        if (strcmp(p.db_name, name) == 0) {
            npools++;
            npaused += p.paused;
        }
    }
    cell_text(t, db_keyword(d, "host"));
    if (port)
        cell_int(t, atoi(port));
    else
        cell_text(t, NULL);
    cell_text(t, dbname ? dbname : strcmp(name, "*") == 0 ? NULL : name);
    cell_text(t, db_keyword(d, "user"));
    cell_int(t, d->pool_size >= 0 ? d->pool_size : cfg->default_pool_size);
    cell_int(t, d->min_pool_size >= 0 ? d->min_pool_size : cfg->min_pool_size);
    cell_int(t, d->reserve_pool >= 0 ? d->reserve_pool : cfg->reserve_pool_size);
    cell_int(
        t, (d->timeouts.server_lifetime >= 0 ? d->timeouts.server_lifetime : cfg->server_lifetime) /
               1000);
    /* PgBouncer: the entry's own pool_mode, NULL when the main section's applies. */
    cell_text(t, d->pool_mode != POOL_MODE_UNSET ? pool_mode_name(d->pool_mode) : NULL);
    cell_text(t, NULL); /* load_balance_hosts: only for a host list */
    cell_int(t, limit_resolve(maxc, db_server_usable(worker, name)));
    cell_int(t, view_db_servers(worker, name));
    cell_int(t, db_client_cap(cfg, d));
    cell_int(t, view_db_clients(worker, name));
    cell_int(t, npools > 0 && npaused == npools ? 1 : 0);
    cell_int(t, disabled_dbs_contains(worker->proc, name) ? 1 : 0);
    cell_text(t, limit_text);
    row_end(t);
}

/* Each database SHOW DATABASES lists, in order: the [databases] entries, one row for each name
 * reached through the "*" entry (they have no entry of their own), the console's names. fn is
 * called with d NULL for the console; returns the count. */
static int for_each_database(struct worker *worker, struct table *t,
                             void (*fn)(struct table *, struct worker *, const char *,
                                        const struct db_entry *))
{
    static const char *const console_names[] = {"pgbouncer", "sluice"};
    const struct config *cfg = worker->cfg;
    int count = 0;
    for (int i = 0; i < cfg->ndbs; i++, count++) {
        if (fn)
            fn(t, worker, cfg->dbs[i].name, &cfg->dbs[i]);
    }
    struct pool_dbs pd;
    pool_databases(worker, &pd);
    const char **dbs = pd.names;
    for (int i = 0; i < pd.n; i++) {
        if (console_is_db(worker, dbs[i]))
            continue;
        const struct db_entry *d = config_find_db(cfg, dbs[i]);
        if (d && strcmp(d->name, "*") == 0) {
            if (fn)
                fn(t, worker, dbs[i], d);
            count++;
        }
    }
    pool_databases_free(&pd);
    for (int i = 0; i < NELEM(console_names); i++, count++) {
        if (fn)
            fn(t, worker, console_names[i], NULL);
    }
    return count;
}

static void show_databases(struct client *c)
{
    static const struct col cols[] = {
        {"name", COL_TEXT},
        {"host", COL_TEXT},
        {"port", COL_INT},
        {"database", COL_TEXT},
        {"force_user", COL_TEXT},
        {"pool_size", COL_INT},
        {"min_pool_size", COL_INT},
        {"reserve_pool_size", COL_INT},
        {"server_lifetime", COL_INT},
        {"pool_mode", COL_TEXT},
        {"load_balance_hosts", COL_TEXT},
        {"max_connections", COL_INT},
        {"current_connections", COL_INT},
        {"max_client_connections", COL_INT},
        {"current_client_connections", COL_INT},
        {"paused", COL_INT},
        {"disabled", COL_INT},
        {"max_db_connections", COL_TEXT},
    };
    struct table t;
    table_begin(&t, &c->out, cols, NELEM(cols));
    for_each_database(c->worker, &t, database_row);
}

static bool name_listed(const char **names, int n, const char *name)
{
    for (int i = 0; i < n; i++) {
        if (strcmp(names[i], name) == 0)
            return true;
    }
    return false;
}

/* Names in first-seen order, at most cap - 1 of them. */
struct seen_names {
    const char **names;
    int n;
    size_t cap;
};

static void add_client_user(const struct view_conn *v, void *ctx)
{
    struct seen_names *l = ctx;
    if ((size_t)l->n + 1 < l->cap && !name_listed(l->names, l->n, v->user))
        l->names[l->n++] = v->user;
}

static void show_users(struct client *c)
{
    static const struct col cols[] = {
        {"name", COL_TEXT},
        {"pool_size", COL_INT},
        {"reserve_pool_size", COL_INT},
        {"pool_mode", COL_TEXT},
        {"max_user_connections", COL_INT},
        {"current_connections", COL_INT},
        {"max_user_client_connections", COL_INT},
        {"current_client_connections", COL_INT},
    };
    struct worker *worker = c->worker;
    const struct config *cfg = worker->cfg;
    struct table t;
    table_begin(&t, &c->out, cols, NELEM(cols));
    /* [users], then auth_file, then whoever has a pool or is connected (a client of a database
     * with a forced user= logs in under its own name, not its pool's); each name once. */
    struct view_totals tot;
    view_totals(worker, &tot);
    size_t cap =
        (size_t)cfg->nusers + (size_t)cfg->nauth + (size_t)tot.pools + (size_t)tot.clients + 1;
    const char **names = calloc(cap, sizeof(*names));
    if (!names) {
        c->out.oom = true;
        return;
    }
    int n = 0;
    for (int i = 0; i < cfg->nusers; i++) {
        if (!name_listed(names, n, cfg->users[i].name))
            names[n++] = cfg->users[i].name;
    }
    for (int i = 0; i < cfg->nauth; i++) {
        if (!name_listed(names, n, cfg->auth[i].user))
            names[n++] = cfg->auth[i].user;
    }
    struct seen_names users = {names, n, cap};
    view_for_each_pool(worker, pool)
    {
        struct view_pool p;
        view_pool_settings(pool, &p);
        if (p.console)
            continue;
        if (!name_listed(users.names, users.n, p.user_name))
            users.names[users.n++] = p.user_name;
        view_pool_clients(pool, add_client_user, &users);
    }
    n = users.n;
    for (int i = 0; i < n; i++) {
        const struct user_entry *u = config_find_user(cfg, names[i]);
        struct limit l = u && u->max_user_connections.value ? u->max_user_connections
                                                            : cfg->max_user_connections;
        row_begin(&t);
        cell_text(&t, names[i]);
        if (u && u->pool_size >= 0)
            cell_int(&t, u->pool_size);
        else
            cell_text(&t, NULL);
        if (u && u->reserve_pool >= 0)
            cell_int(&t, u->reserve_pool);
        else
            cell_text(&t, NULL);
        cell_text(&t, u && u->pool_mode != POOL_MODE_UNSET ? pool_mode_name(u->pool_mode) : NULL);
        cell_int(&t, limit_resolve(l, 0));
        cell_int(&t, view_user_servers(worker, names[i]));
        cell_int(&t, u && u->max_user_client_connections > 0 ? u->max_user_client_connections
                                                             : cfg->max_user_client_connections);
        cell_int(&t, view_user_clients(worker, names[i]));
        row_end(&t);
    }
    free(names);
}

static void show_config(struct client *c)
{
    static const struct col cols[] = {
        {"key", COL_TEXT},        {"value", COL_TEXT},  {"default", COL_TEXT},
        {"changeable", COL_TEXT}, {"source", COL_TEXT},
    };
    const struct config *cfg = c->worker->cfg;
    struct table t;
    table_begin(&t, &c->out, cols, NELEM(cols));
    for (int i = 0; i < config_nkeys; i++) {
        char value[1024];
        config_format_value(cfg, i, value, sizeof(value));
        row_begin(&t);
        cell_text(&t, config_keys[i].name);
        cell_text(&t, value);
        cell_text(&t, config_keys[i].def);
        cell_text(&t, config_keys[i].reloadable ? "yes" : "no");
        cell_text(&t, config_source_name(cfg->sources ? cfg->sources[i] : SRC_DEFAULT));
        row_end(&t);
    }
}

static void show_lists(struct client *c)
{
    static const struct col cols[] = {{"list", COL_TEXT}, {"items", COL_INT}};
    struct worker *worker = c->worker;
    const struct config *cfg = worker->cfg;
    struct view_totals tot;
    view_totals(worker, &tot);
    int pools = 0;
    view_for_each_pool(worker, pool)
    {
        struct view_pool p;
        view_pool_settings(pool, &p);
        pools += !p.console;
    }
    const struct {
        const char *name;
        long long items;
    } rows[] = {
        {"databases", for_each_database(worker, NULL, NULL)},
        {"users", cfg->nusers},
        {"peers", 0},
        {"pools", pools},
        {"peer_pools", 0},
        {"free_clients", 0},
        {"used_clients", tot.clients},
        {"login_clients", tot.login_clients},
        {"free_servers", 0},
        {"used_servers", tot.servers},
        {"dns_names", 0},
        {"dns_zones", 0},
        {"dns_queries", 0},
        {"dns_pending", 0},
    };
    struct table t;
    table_begin(&t, &c->out, cols, NELEM(cols));
    for (int i = 0; i < NELEM(rows); i++) {
        row_begin(&t);
        cell_text(&t, rows[i].name);
        cell_int(&t, rows[i].items);
        row_end(&t);
    }
}

static void show_version(struct client *c)
{
    static const struct col cols[] = {{"version", COL_TEXT}};
    struct table t;
    table_begin(&t, &c->out, cols, NELEM(cols));
    row_begin(&t);
    cell_text(&t, "sluice " SLUICE_VERSION);
    row_end(&t);
}

/* AddressSanitizer, ThreadSanitizer and MemorySanitizer replace malloc with their own
 * allocator: glibc's arenas then hold only what bypasses it, so mallinfo2 would describe
 * almost nothing of sluice's and the heap row is left out. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define MALLOC_REPLACED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) ||                         \
    __has_feature(memory_sanitizer)
#define MALLOC_REPLACED 1
#endif
#endif

/* SHOW MEM with PgBouncer's columns. PgBouncer lists its slab caches (items of one size, used
 * and free, memtotal their bytes); sluice has none, so a row per kind of object it allocates per
 * connection, pool or name: size is one struct's bytes, used how many are alive, free 0 (nothing
 * is kept for reuse: a freed object goes back to malloc), memtotal size x used. Then "heap": the
 * process's malloc heap, every thread's arena, as glibc's mallinfo2 counts it, in bytes (size
 * 1): used is what is allocated (uordblks + hblkhd, the mmapped chunks included), free what the
 * arenas hold unallocated (fordblks), memtotal the two together. Unlike RSS, used does not move
 * with fragmentation or with pages the allocator keeps: freed memory leaves it at once. */
static void show_mem(struct client *c)
{
    static const struct col cols[] = {
        {"name", COL_TEXT}, {"size", COL_INT},     {"used", COL_INT},
        {"free", COL_INT},  {"memtotal", COL_INT},
    };
    struct table t;
    table_begin(&t, &c->out, cols, NELEM(cols));
    struct view_objects objs[VIEW_OBJECT_KINDS];
    view_objects(c->worker, objs);
    for (int i = 0; i < VIEW_OBJECT_KINDS; i++) {
        row_begin(&t);
        cell_text(&t, objs[i].name);
        cell_uint(&t, objs[i].size);
        cell_int(&t, objs[i].alive);
        cell_int(&t, 0);
        cell_uint(&t, (uint64_t)objs[i].size * (uint64_t)objs[i].alive);
        row_end(&t);
    }
#if defined(HAVE_MALLINFO2) && !defined(MALLOC_REPLACED)
    struct mallinfo2 mi = mallinfo2();
    row_begin(&t);
    cell_text(&t, "heap");
    cell_int(&t, 1);
    cell_uint(&t, mi.uordblks + mi.hblkhd);
    cell_uint(&t, mi.fordblks);
    cell_uint(&t, mi.uordblks + mi.hblkhd + mi.fordblks);
    row_end(&t);
#endif
}

static void show_budgets(struct client *c)
{
    static const struct col cols[] = {
        {"name", COL_TEXT},       {"max_servers", COL_INT}, {"max_clients", COL_INT},
        {"min_servers", COL_INT}, {"cl_active", COL_INT},   {"sv_active", COL_INT},
        {"app", COL_TEXT},        {"user", COL_TEXT},       {"addr", COL_TEXT},
        {"retired", COL_INT},
    };
    struct worker *worker = c->worker;
    const struct config *cfg = worker->cfg;
    struct table t;
    table_begin(&t, &c->out, cols, NELEM(cols));
    const struct budget_rule *b;
    for (int i = 0; (b = view_budget(worker, i)) != NULL; i++) {
        const char *addr = NULL;
        for (int j = 0; j < cfg->nbudgets; j++) {
            if (strcmp(cfg->budgets[j].name, b->name) == 0)
                addr = cfg->budgets[j].addr.text;
        }
        row_begin(&t);
        cell_text(&t, b->name);
        cell_int(&t, b->max_servers);
        cell_int(&t, b->max_clients);
        cell_int(&t, b->min_servers);
        cell_int(&t, b->budget->clients);
        cell_int(&t, budget_leases(b->budget, SLUICE_MAX_WORKERS));
        cell_text(&t, b->app_pattern);
        cell_text(&t, b->user);
        cell_text(&t, addr);
        cell_int(&t, b->retired ? 1 : 0);
        row_end(&t);
    }
}

bool admin_show_reads_frames(enum admin_show what)
{
    switch (what) {
    case ADMIN_SHOW_POOLS:
    case ADMIN_SHOW_STATS:
    case ADMIN_SHOW_STATS_TOTALS:
    case ADMIN_SHOW_STATS_AVERAGES:
    case ADMIN_SHOW_DATABASES:
    case ADMIN_SHOW_USERS:
    case ADMIN_SHOW_LISTS:
    case ADMIN_SHOW_MEM:
        return true;
    default:
        return false;
    }
}

int admin_show(struct client *c, enum admin_show what, admin_rows_fn *arrived)
{
    switch (what) {
    case ADMIN_SHOW_HELP:
        show_help(c);
        break;
    case ADMIN_SHOW_POOLS:
        show_pools(c);
        break;
    case ADMIN_SHOW_CLIENTS:
        return admin_show_clients(c, arrived);
    case ADMIN_SHOW_SERVERS:
        return admin_show_servers(c, arrived);
    case ADMIN_SHOW_STATS:
        show_stats(c, VIEW_STATS);
        break;
    case ADMIN_SHOW_STATS_TOTALS:
        show_stats(c, VIEW_TOTALS);
        break;
    case ADMIN_SHOW_STATS_AVERAGES:
        show_stats(c, VIEW_AVERAGES);
        break;
    case ADMIN_SHOW_DATABASES:
        show_databases(c);
        break;
    case ADMIN_SHOW_USERS:
        show_users(c);
        break;
    case ADMIN_SHOW_CONFIG:
        show_config(c);
        break;
    case ADMIN_SHOW_LISTS:
        show_lists(c);
        break;
    case ADMIN_SHOW_VERSION:
        show_version(c);
        break;
    case ADMIN_SHOW_BUDGETS:
        show_budgets(c);
        break;
    case ADMIN_SHOW_SOCKETS:
        return admin_show_sockets(c, false, arrived);
    case ADMIN_SHOW_ACTIVE_SOCKETS:
        return admin_show_sockets(c, true, arrived);
    case ADMIN_SHOW_PEERS:
        show_peers(c);
        break;
    case ADMIN_SHOW_PEER_POOLS:
        show_peer_pools(c);
        break;
    case ADMIN_SHOW_MEM:
        show_mem(c);
        break;
    }
    return 0;
}
