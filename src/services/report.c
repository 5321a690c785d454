/* report: the bodies behind GET /health and GET /metrics (see report.h), built on the loop
 * thread from the same pool views as SHOW POOLS.
 *
 * /health says in plain words what is wrong and which key to raise: a pool above 80% of its
 * effective server cap (budget_pool_cap: the key that binds), clients queued for one, a database
 * that cannot be reached, client connections near max_client_conn; and each pool's share of its
 * server's own max_connections. It is readiness (503 while a pool is down); /livez, in http.c, is
 * liveness. /metrics follows the Prometheus text exposition format 0.0.4: each family's
 * HELP and TYPE, then its samples together; label values escaped and kept UTF-8. */
#include "report.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "budget.h"
#include "config.h"
#include "sluice.h"
#include "stats.h"
#include "utf8.h"
#include "view.h"

/* ---- text building ---- */

struct text {
    char *data;
    size_t len, cap;
    bool oom;
};

static void text_reserve(struct text *t, size_t more)
{
    if (t->oom || t->len + more + 1 <= t->cap)
        return;
    size_t cap = t->cap ? t->cap : 4096;
    while (cap < t->len + more + 1)
        cap *= 2;
    char *d = realloc(t->data, cap);
    if (!d) {
        t->oom = true;
        return;
    }
    t->data = d;
    t->cap = cap;
}

static void text_add(struct text *t, const char *s, size_t n)
{
    text_reserve(t, n);
    if (t->oom)
        return;
    memcpy(t->data + t->len, s, n);
    t->len += n;
    t->data[t->len] = '\0';
}

static void text_cstr(struct text *t, const char *s)
{
    text_add(t, s, strlen(s));
}

static void text_printf(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void text_printf(struct text *t, const char *fmt, ...)
{
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof(small)) {
        text_add(t, small, (size_t)n);
        return;
    }
    text_reserve(t, (size_t)n);
    if (t->oom)
        return;
    va_start(ap, fmt);
    vsnprintf(t->data + t->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    t->len += (size_t)n;
}

/* A JSON string literal (RFC 8259 section 7); NULL is null. */
static void text_json_str(struct text *t, const char *s)
{
    if (!s) {
        text_cstr(t, "null");
        return;
    }
    text_cstr(t, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        size_t n = utf8_seq_len(p);
        if (n == 0) {
            text_cstr(t, "\\ufffd"); /* not UTF-8: the replacement character */
            p++;
        } else if (*p == '"' || *p == '\\') {
            char esc[2] = {'\\', (char)*p};
            text_add(t, esc, 2);
            p++;
        } else if (*p < 0x20 || *p == 0x7f) {
            text_printf(t, "\\u%04x", *p);
            p++;
        } else {
            text_add(t, (const char *)p, n);
            p += n;
        }
    }
    text_cstr(t, "\"");
}

/* A Prometheus label value (exposition format 0.0.4: UTF-8, with \\, \" and \n escaped). */
static void text_label(struct text *t, const char *s)
{
    text_cstr(t, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        size_t n = utf8_seq_len(p);
        if (n == 0) {
            text_cstr(t, "\xef\xbf\xbd"); /* U+FFFD for a byte that is not UTF-8 */
            p++;
            continue;
        }
        if (*p == '\\')
            text_cstr(t, "\\\\");
        else if (*p == '"')
            text_cstr(t, "\\\"");
        else if (*p == '\n')
            text_cstr(t, "\\n");
        else
            text_add(t, (const char *)p, n);
        p += n;
    }
    text_cstr(t, "\"");
}

static double pct(double part, double whole)
{
    return whole > 0 ? part * 100.0 / whole : 0.0;
}

/* What a pool can tell about itself: "unknown" until a server of it has logged in once (a
 * wrong address is only found by trying), "down" while its connection attempts fail and it has
 * no server, else "ok". */
enum pool_health { POOL_HEALTH_UNKNOWN, POOL_HEALTH_OK, POOL_HEALTH_DOWN };

static const char *pool_health_name(enum pool_health h)
{
    switch (h) {
    case POOL_HEALTH_UNKNOWN:
        return "unknown";
    case POOL_HEALTH_OK:
        return "ok";
    case POOL_HEALTH_DOWN:
        return "down";
    }
    return "?";
}

static enum pool_health pool_health_of(const struct view_pool *p)
{
    if (p->now.down)
        return POOL_HEALTH_DOWN;
    return p->have_welcome ? POOL_HEALTH_OK : POOL_HEALTH_UNKNOWN;
}

/* Which key to raise for more servers in this pool, from the cap that binds. */
static void raise_hint(const struct config *cfg, const struct view_pool *p,
                       const struct pool_cap *cap, char *out, size_t n)
{
    if (cap->key == LIMIT_BUDGET) {
        snprintf(out, n, "raise max_servers of [budgets] %s (now %d)", cap->budget->name,
                 cap->servers);
        return;
    }
    if (cap->key != LIMIT_POOL) {
        snprintf(out, n, "raise %s (now %d; it is reached before pool_size %d)",
                 limit_kind_key(cap->key), cap->servers, p->size);
        return;
    }
    const struct db_entry *db = config_find_db(cfg, p->db_name);
    const struct user_entry *u = config_find_user(cfg, p->user_name);
    if (u && u->pool_size >= 0)
        snprintf(out, n, "raise pool_size of [users] %s (now %d)", p->user_name, p->size);
    else if (db && db->pool_size >= 0)
        snprintf(out, n, "raise pool_size of [databases] %s (now %d)", db->name, p->size);
    else
        snprintf(out, n, "raise default_pool_size (now %d) or set pool_size for [databases] %s",
                 p->size, p->db_name);
}

static void holder_hint(const char *top_app, int servers, char *out, size_t n)
{
    out[0] = '\0';
    if (top_app && servers > 0)
        snprintf(out, n, "; application_name \"%s\" holds the most servers (%d)", top_app, servers);
}

/* The server a pool connects to, as its [databases] entry names it ("" parts: libpq's default),
 * so that pools on one server are counted together against its max_connections. */
static void upstream_address(const struct config *cfg, const struct view_pool *p, char *out,
                             size_t n)
{
    const struct db_entry *db = config_find_db(cfg, p->db_name);
    const char *host = "", *port = "";
    for (int i = 0; db && i < db->nkeys; i++) {
        if (strcmp(db->pq_keywords[i], "host") == 0)
            host = db->pq_values[i];
        else if (strcmp(db->pq_keywords[i], "port") == 0)
            port = db->pq_values[i];
    }
    snprintf(out, n, "%s:%s", host, port[0] ? port : "5432");
}

/* Servers sluice holds on one upstream, across its pools and every worker's (rows), not only the
 * calling worker's. */
static int upstream_servers(struct worker *worker, const struct view_pools *rows,
                            const char *address)
{
    int n = 0;
    char other[300];
    for (int i = 0; i < rows->n; i++) {
        const struct view_pool *p = &rows->v[i];
        if (p->console)
            continue;
        upstream_address(worker->cfg, p, other, sizeof(other));
        if (strcmp(other, address) == 0)
            n += p->servers;
    }
    return n;
}

static void json_cap(struct text *t, const struct pool_cap *cap, const char *key)
{
    text_printf(t, "\"cap\":{\"servers\":%d,\"key\":", cap->servers);
    text_json_str(t, key);
    text_printf(t, ",\"in_use\":%d,\"usage_pct\":%.1f", cap->in_use,
                pct(cap->in_use, cap->servers));
    if (cap->key == LIMIT_BUDGET) {
        text_cstr(t, ",\"budget\":");
        text_json_str(t, cap->budget->name);
    }
    text_cstr(t, "}");
}

static void json_view(struct text *t, const struct stats_pool_view *v, int pool_size,
                      double usage_pct, long long max_client_conn, int clients_total)
{
    text_printf(t,
                "\"servers\":{\"total\":%d,\"active\":%d,\"idle\":%d,\"used\":%d,\"tested\":%d,"
                "\"login\":%d},"
                "\"clients\":{\"active\":%d,\"waiting\":%d,\"idle\":%d},"
                "\"pool_size\":%d,\"max_client_conn\":%lld,\"usage_pct\":%.1f,"
                "\"client_usage_pct\":%.1f,\"longest_wait_ms\":%llu",
                v->sv_total, v->sv_active, v->sv_idle, v->sv_used, v->sv_tested, v->sv_login,
                v->cl_active, v->cl_waiting, v->cl_idle, pool_size, max_client_conn, usage_pct,
                pct(clients_total, (double)max_client_conn),
                (unsigned long long)v->longest_wait_ms);
}

/* The pool's server as the server itself counts connections: null until sluice has read it. */
static void json_pool_server(struct text *t, struct worker *worker, const struct view_pools *rows,
                             const struct view_pool *p, const struct pool_cap *cap,
                             int pool_servers)
{
    char address[300];
    upstream_address(worker->cfg, p, address, sizeof(address));
    text_cstr(t, ",\"server\":");
    if (p->server_max_connections <= 0) {
        text_cstr(t, "null");
        return;
    }
    int on_server = upstream_servers(worker, rows, address);
    text_cstr(t, "{\"address\":");
    text_json_str(t, address);
    text_printf(t,
                ",\"max_connections\":%d,\"reserved_connections\":%d,\"sluice_servers\":%d,"
                "\"sluice_share_pct\":%.1f,\"pool_share_pct\":%.1f,\"cap_share_pct\":%.1f}",
                p->server_max_connections, p->server_reserved, on_server,
                pct(on_server, p->server_max_connections),
                pct(pool_servers, p->server_max_connections),
                pct(cap->servers, p->server_max_connections));
}

/* One entry per server sluice connects to (total section), over every worker's pools (rows). */
static void json_upstreams(struct text *t, struct worker *worker, const struct view_pools *rows)
{
    char address[300], seen_addr[300];
    bool first = true;
    text_cstr(t, ",\"upstreams\":[");
    for (int i = 0; i < rows->n; i++) {
        const struct view_pool *p = &rows->v[i];
        if (p->console || p->server_max_connections <= 0)
            continue;
        upstream_address(worker->cfg, p, address, sizeof(address));
        bool listed = false; /* by an earlier pool */
        for (int j = 0; j < i && !listed; j++) {
            const struct view_pool *q = &rows->v[j];
            if (q->console || q->server_max_connections <= 0)
                continue;
            upstream_address(worker->cfg, q, seen_addr, sizeof(seen_addr));
            listed = strcmp(seen_addr, address) == 0;
        }
        if (listed)
            continue;
        int on_server = upstream_servers(worker, rows, address);
        text_printf(t, "%s{\"address\":", first ? "" : ",");
        first = false;
        text_json_str(t, address);
        text_printf(t,
                    ",\"max_connections\":%d,\"reserved_connections\":%d,\"sluice_servers\":%d,"
                    "\"sluice_share_pct\":%.1f}",
                    p->server_max_connections, p->server_reserved, on_server,
                    pct(on_server, p->server_max_connections));
    }
    text_cstr(t, "]");
}

static void add_warning(struct text *warnings, int *nwarn, const char *line)
{
    text_printf(warnings, "%s", (*nwarn)++ ? "," : "");
    text_json_str(warnings, line);
}


/* Every pool key of the process (architecture.md 5.6): the calling worker's pools read live, each
 * with the same key's counts on the other workers added, then the keys only other workers have
 * (no pool here: pool NULL). Every key's binding cap is the process's (view_pool_caps), so a key
 * reports the same cap whichever worker has its pools. */
static bool pool_rows_collect(struct worker *worker, struct view_pools *r)
{
    if (!view_pools_collect(worker, r))
        return false;
    view_pool_caps(worker, r->v, r->n);
    return true;
}

/* Clients of p's database that waited long for a server in the last complete stats period, once
 * per database (its first pool): nobody may be queued now, but they were. */
static bool waited_recently(struct worker *worker, const struct view_pool *p, char *line, size_t n)
{
    view_for_each_pool(worker, other)
    {
        struct view_pool q;
        view_pool_settings(other, &q);
        if (other == p->pool)
            break;
        if (!q.console && strcmp(q.db_name, p->db_name) == 0)
            return false; /* said at that pool */
    }
    struct stats_totals avg;
    if (!stats_averages(worker, p->db_name, &avg) || avg.slow_waits == 0)
        return false;
    snprintf(line, n,
             "database %s: %llu client%s waited over %d ms for a server in the last %llu s",
             p->db_name, (unsigned long long)avg.slow_waits, avg.slow_waits == 1 ? "" : "s",
             STATS_SLOW_WAIT_MS, (unsigned long long)(stats_period_ms(worker) / 1000));
    return true;
}

bool report_health(struct worker *worker, char **body, size_t *len, int *status)
{
    const struct config *cfg = worker->cfg;
    uint64_t now = sluice_now(worker);
    struct view_totals tot;
    view_totals(worker, &tot);
    struct text t = {0}, pools = {0}, warnings = {0};
    struct stats_pool_view total;
    memset(&total, 0, sizeof(total));
    int total_size = 0, total_cap = 0, nwarn = 0, ndown = 0, nunknown = 0, npools = 0,
        max_usable = 0;
    char hint[300], holder[200];

    bool first = true;
    struct view_pools rows;
    if (!pool_rows_collect(worker, &rows))
        return false;
    for (int i = 0; i < rows.n; i++) {
        const struct view_pool *p = &rows.v[i];
        if (p->console)
            continue;
        const struct stats_pool_view v = p->now;
        const struct pool_cap cap = p->cap;
        enum pool_health health = pool_health_of(p);
        struct stats_app top; /* over every worker (5.6) */
        bool have_top = view_pool_top_apps(worker, p, &top, 1) == 1;
        const char *top_app = have_top ? top.name : NULL;
        int top_servers = have_top ? top.servers : 0;
        int clients = v.cl_active + v.cl_waiting + v.cl_idle;
        total.sv_active += v.sv_active;
        total.sv_idle += v.sv_idle;
        total.sv_used += v.sv_used;
        total.sv_tested += v.sv_tested;
        total.sv_login += v.sv_login;
        total.sv_total += v.sv_total;
        total.cl_active += v.cl_active;
        total.cl_waiting += v.cl_waiting;
        total.cl_idle += v.cl_idle;
        if (v.longest_wait_ms > total.longest_wait_ms)
            total.longest_wait_ms = v.longest_wait_ms;
        total_size += p->size;
        total_cap += cap.servers;
        if (p->server_usable > max_usable)
            max_usable = p->server_usable;
        npools++;
        ndown += health == POOL_HEALTH_DOWN;
        nunknown += health == POOL_HEALTH_UNKNOWN;

        text_printf(&pools, "%s{\"database\":", first ? "" : ",");
        first = false;
        text_json_str(&pools, p->db_name);
        text_cstr(&pools, ",\"user\":");
        text_json_str(&pools, p->user_name);
        text_printf(&pools, ",\"status\":\"%s\",\"pool_mode\":\"%s\",\"paused\":%s,",
                    pool_health_name(health), pool_mode_name(p->mode),
                    p->paused ? "true" : "false");
        json_view(&pools, &v, p->size, pct(cap.in_use, cap.servers),
                  (long long)cfg->max_client_conn, clients);
        text_cstr(&pools, ",");
        json_cap(&pools, &cap, limit_kind_key(cap.key));
        json_pool_server(&pools, worker, &rows, p, &cap, v.sv_total);
        text_cstr(&pools, ",\"top_application\":");
        if (top_app) {
            text_cstr(&pools, "{\"name\":");
            text_json_str(&pools, top_app);
            text_printf(&pools, ",\"servers\":%d}", top_servers);
        } else {
            text_cstr(&pools, "null");
        }
        text_cstr(&pools, ",\"last_connect_error\":");
        text_json_str(&pools, v.down ? p->breaker.last_error : NULL);
        text_printf(&pools, ",\"breaker\":\"%s\"", breaker_state_name(p->breaker.state));
        if (v.down)
            text_printf(&pools, ",\"down_for_s\":%.1f",
                        (double)(now - p->breaker.down_since_ms) / 1000.0);
        else
            text_cstr(&pools, ",\"down_for_s\":null");
        text_cstr(&pools, "}");

        /* Warnings: what is wrong and what to do, in one sentence each. */
        char line[1024];
        if (health == POOL_HEALTH_DOWN) {
            snprintf(line, sizeof(line),
                     "pool %s/%s cannot reach the database for %.1f s (%d failed connection "
                     "attempts): %s",
                     p->db_name, p->user_name, (double)(now - p->breaker.down_since_ms) / 1000.0,
                     p->breaker.failures,
                     p->breaker.last_error ? p->breaker.last_error : "unknown error");
            add_warning(&warnings, &nwarn, line);
        }
        raise_hint(cfg, p, &cap, hint, sizeof(hint));
        holder_hint(top_app, top_servers, holder, sizeof(holder));
        if (v.cl_waiting > 0 && p->paused) {
            /* they wait for RESUME, not for a server a bigger cap would give them */
            snprintf(line, sizeof(line),
                     "pool %s/%s: %d client%s waiting, the longest for %llu ms, because the "
                     "database is paused (PAUSE, KILL or SIGUSR1): RESUME releases them",
                     p->db_name, p->user_name, v.cl_waiting, v.cl_waiting == 1 ? "" : "s",
                     (unsigned long long)v.longest_wait_ms);
            add_warning(&warnings, &nwarn, line);
        } else if (v.cl_waiting > 0) {
            snprintf(line, sizeof(line),
                     "pool %s/%s: %d client%s waiting for a server, the longest for %llu ms: %s%s",
                     p->db_name, p->user_name, v.cl_waiting, v.cl_waiting == 1 ? "" : "s",
                     (unsigned long long)v.longest_wait_ms, hint, holder);
            add_warning(&warnings, &nwarn, line);
        } else if (waited_recently(worker, p, line, sizeof(line))) {
            size_t used = strlen(line);
            snprintf(line + used, sizeof(line) - used, ": %s%s", hint, holder);
            add_warning(&warnings, &nwarn, line);
        }
        if (v.cl_waiting == 0 && cap.servers > 0 && cap.in_use * 100 > cap.servers * 80) {
            char of_server[96] = "";
            if (p->server_max_connections > 0)
                snprintf(of_server, sizeof(of_server),
                         ", a cap of %.0f%% of the server's max_connections %d",
                         pct(cap.servers, p->server_max_connections), p->server_max_connections);
            snprintf(line, sizeof(line),
                     "pool %s/%s uses %d of %d servers that %s allows (%.0f%%%s): %s%s", p->db_name,
                     p->user_name, cap.in_use, cap.servers, limit_kind_key(cap.key),
                     pct(cap.in_use, cap.servers), of_server, hint, holder);
            add_warning(&warnings, &nwarn, line);
        }
    }
    long long max_clients = (long long)cfg->max_client_conn;
    if (max_clients > 0 && (long long)tot.clients * 100 > max_clients * 80) {
        char line[256];
        snprintf(line, sizeof(line),
                 "%d of %lld client connections in use (%.0f%%): raise max_client_conn",
                 tot.clients, max_clients, pct(tot.clients, (double)max_clients));
        add_warning(&warnings, &nwarn, line);
    }
    /* The whole: max_server_connections where it is below the pools' caps added up. */
    struct pool_cap all = {.key = LIMIT_POOL, .servers = total_cap, .in_use = total.sv_active};
    int global = limit_resolve(cfg->max_server_connections, max_usable);
    const char *all_key = "pools";
    if (global > 0 && (global < total_cap || npools == 0)) {
        all.servers = global;
        all_key = limit_kind_key(LIMIT_GLOBAL);
    }
    const char *overall;
    if (!tot.running)
        overall = "shutting_down";
    else if (ndown > 0)
        overall = "down";
    else if (nunknown > 0 || npools == 0)
        overall = "unknown"; /* ready, but no server has been reached yet to prove it */
    else
        overall = "ok";
    *status = tot.running && ndown == 0 ? 200 : 503;
    text_printf(&t, "{\"status\":\"%s\",\"version\":\"%s\",\"total\":{", overall, SLUICE_VERSION);
    json_view(&t, &total, total_size, pct(all.in_use, all.servers), max_clients, tot.clients);
    text_cstr(&t, ",");
    json_cap(&t, &all, all_key);
    json_upstreams(&t, worker, &rows);
    view_pools_free(&rows);
    text_printf(&t, ",\"client_connections\":%d,\"server_connections\":%d},\"pools\":[",
                tot.clients, tot.servers);
    if (pools.len)
        text_add(&t, pools.data, pools.len);
    text_cstr(&t, "],\"warnings\":[");
    if (warnings.len)
        text_add(&t, warnings.data, warnings.len);
    text_cstr(&t, "]}\n");
    bool oom = t.oom || pools.oom || warnings.oom;
    free(pools.data);
    free(warnings.data);
    if (oom) {
        free(t.data);
        return false;
    }
    *body = t.data;
    *len = t.len;
    return true;
}

/* ---- /metrics ---- */

static void metric_head(struct text *t, const char *name, const char *type, const char *help)
{
    text_printf(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void pool_labels(struct text *t, const struct view_pool *p)
{
    text_cstr(t, "database=");
    text_label(t, p->db_name);
    text_cstr(t, ",user=");
    text_label(t, p->user_name);
}

enum pool_counter { PC_XACT, PC_QUERY, PC_BYTES_IN, PC_BYTES_OUT };

static uint64_t counter_of(const struct view_pool *p, enum pool_counter k)
{
    switch (k) {
    case PC_XACT:
        return p->xact_count;
    case PC_QUERY:
        return p->query_count;
    case PC_BYTES_IN:
        return p->bytes_in;
    case PC_BYTES_OUT:
        return p->bytes_out;
    }
    return 0;
}

enum pool_gauge_kind {
    PG_SIZE,
    PG_PAUSED,
    PG_CAP,
    PG_CAP_IN_USE,
    PG_DOWN,
    PG_UNKNOWN,
    PG_SERVER_MAX_CONNECTIONS,
    PG_SERVER_RESERVED
};

/* One gauge with a line per pool (the admin console's pseudo-pool left out; the server's own
 * numbers only once sluice has read them). */
static void pool_gauge(struct text *t, const struct view_pools *rows, const char *name,
                       const char *help, enum pool_gauge_kind k)
{
    metric_head(t, name, "gauge", help);
    for (int i = 0; i < rows->n; i++) {
        const struct view_pool *p = &rows->v[i];
        if (p->console)
            continue;
        if ((k == PG_SERVER_MAX_CONNECTIONS || k == PG_SERVER_RESERVED) &&
            p->server_max_connections <= 0)
            continue;
        const struct pool_cap cap = p->cap;
        int value = 0;
        switch (k) {
        case PG_SIZE:
            value = p->size;
            break;
        case PG_PAUSED:
            value = p->paused ? 1 : 0;
            break;
        case PG_CAP:
            value = cap.servers;
            break;
        case PG_CAP_IN_USE:
            value = cap.in_use;
            break;
        case PG_DOWN:
            value = pool_health_of(p) == POOL_HEALTH_DOWN;
            break;
        case PG_UNKNOWN:
            value = pool_health_of(p) == POOL_HEALTH_UNKNOWN;
            break;
        case PG_SERVER_MAX_CONNECTIONS:
            value = p->server_max_connections;
            break;
        case PG_SERVER_RESERVED:
            value = p->server_reserved;
            break;
        }
        text_cstr(t, name);
        text_cstr(t, "{");
        pool_labels(t, p);
        if (k == PG_CAP) {
            text_cstr(t, ",key=");
            text_label(t, limit_kind_key(cap.key));
        }
        text_printf(t, "} %d\n", value);
    }
}

enum pool_states_of { STATES_OF_CLIENTS, STATES_OF_SERVERS };

/* A pool's clients, or its servers, by state: a line a state and pool, labelled state=. */
static void pool_states(struct text *t, const struct view_pools *rows, const char *name,
                        enum pool_states_of which)
{
    struct state_count {
        const char *state;
        int count;
    };
    for (int r = 0; r < rows->n; r++) {
        const struct view_pool *p = &rows->v[r];
        if (p->console)
            continue;
        const struct stats_pool_view v = p->now;
        const struct state_count clients[] = {
            {"active", v.cl_active}, {"waiting", v.cl_waiting}, {"idle", v.cl_idle}};
        const struct state_count servers[] = {{"active", v.sv_active},
                                              {"idle", v.sv_idle},
                                              {"used", v.sv_used},
                                              {"tested", v.sv_tested},
                                              {"login", v.sv_login}};
        const struct state_count *states = which == STATES_OF_CLIENTS ? clients : servers;
        size_t n = which == STATES_OF_CLIENTS ? sizeof(clients) / sizeof(clients[0])
                                              : sizeof(servers) / sizeof(servers[0]);
        for (size_t i = 0; i < n; i++) {
            text_printf(t, "%s{", name);
            pool_labels(t, p);
            text_printf(t, ",state=\"%s\"} %d\n", states[i].state, states[i].count);
        }
    }
}

static void histogram(struct text *t, struct worker *worker, const struct view_pools *rows,
                      const char *name, bool wait)
{
    for (int r = 0; r < rows->n; r++) {
        const struct view_pool *p = &rows->v[r];
        if (p->console)
            continue;
        uint64_t waits[POOL_HIST_BUCKETS], queries[POOL_HIST_BUCKETS];
        view_pool_hists(worker, p, waits, queries); /* every worker's (5.6) */
        const uint64_t *hist = wait ? waits : queries;
        uint64_t cumulative = 0;
        for (int i = 0; i < POOL_HIST_BUCKETS; i++) {
            cumulative += hist[i];
            text_printf(t, "%s_bucket{", name);
            pool_labels(t, p);
            if (i < POOL_HIST_BUCKETS - 1)
                text_printf(t, ",le=\"%g\"} %llu\n", (double)pool_hist_bounds_ms[i] / 1000.0,
                            (unsigned long long)cumulative);
            else
                text_printf(t, ",le=\"+Inf\"} %llu\n", (unsigned long long)cumulative);
        }
        text_printf(t, "%s_sum{", name);
        pool_labels(t, p);
        if (wait)
            text_printf(t, "} %.6f\n", (double)p->wait_us_total / 1e6);
        else
            text_printf(t, "} %.3f\n", (double)p->query_ms_total / 1e3);
        text_printf(t, "%s_count{", name);
        pool_labels(t, p);
        text_printf(t, "} %llu\n", (unsigned long long)cumulative);
    }
}

bool report_metrics(struct worker *worker, char **body, size_t *len)
{
    const struct config *cfg = worker->cfg;
    struct view_totals tot;
    view_totals(worker, &tot);
    struct text t = {0};
    struct view_pools rows;
    if (!pool_rows_collect(worker, &rows))
        return false;
    int ndown = 0;
    for (int r = 0; r < rows.n; r++)
        ndown += !rows.v[r].console && rows.v[r].now.down;
    metric_head(&t, "sluice_up", "gauge",
                "1 while sluice serves and every pool can reach its database, else 0.");
    text_printf(&t, "sluice_up %d\n", ndown == 0 && tot.running ? 1 : 0);

    static const struct {
        const char *name;
        const char *help;
        enum pool_counter k;
    } counters[] = {
        {"sluice_transactions_total", "Transactions that ended with the server idle again.",
         PC_XACT},
        {"sluice_queries_total",
         "Client requests answered (a simple Query, an extended batch up to Sync, a "
         "FunctionCall).",
         PC_QUERY},
        {"sluice_bytes_received_total", "Bytes received from clients and sent to servers.",
         PC_BYTES_IN},
        {"sluice_bytes_sent_total", "Bytes received from servers and sent to clients.",
         PC_BYTES_OUT},
    };
    for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++) {
        metric_head(&t, counters[i].name, "counter", counters[i].help);
        for (int r = 0; r < rows.n; r++) {
            const struct view_pool *p = &rows.v[r];
            if (p->console)
                continue;
            text_printf(&t, "%s{", counters[i].name);
            pool_labels(&t, p);
            text_printf(&t, "} %llu\n", (unsigned long long)counter_of(p, counters[i].k));
        }
    }
    metric_head(&t, "sluice_server_cleanups_total", "counter",
                "Statements sluice ran on a server before it served again, by kind: rollback "
                "(a client left inside a transaction), server_reset_query, discard_all (a "
                "client left session state sluice cannot undo piecemeal), discard_temp "
                "(temporary objects alone).");
    for (int r = 0; r < rows.n; r++) {
        const struct view_pool *p = &rows.v[r];
        if (p->console)
            continue;
        for (int k = 0; k < POOL_CLEANUP_KINDS; k++) {
            text_cstr(&t, "sluice_server_cleanups_total{");
            pool_labels(&t, p);
            text_printf(&t, ",kind=\"%s\"} %llu\n", pool_cleanup_name((enum pool_cleanup)k),
                        (unsigned long long)p->cleanups[k]);
        }
    }
    metric_head(&t, "sluice_client_wait_seconds_total", "counter",
                "Time clients spent waiting for a server, in seconds.");
    for (int r = 0; r < rows.n; r++) {
        const struct view_pool *p = &rows.v[r];
        if (p->console)
            continue;
        text_cstr(&t, "sluice_client_wait_seconds_total{");
        pool_labels(&t, p);
        text_printf(&t, "} %.6f\n", (double)p->wait_us_total / 1e6);
    }

    metric_head(&t, "sluice_clients", "gauge", "Client connections by state.");
    pool_states(&t, &rows, "sluice_clients", STATES_OF_CLIENTS);
    metric_head(&t, "sluice_servers", "gauge",
                "Server connections by state (used: idle past server_check_delay).");
    pool_states(&t, &rows, "sluice_servers", STATES_OF_SERVERS);
    pool_gauge(&t, &rows, "sluice_pool_size", "Servers a pool may open (pool_size).", PG_SIZE);
    pool_gauge(&t, &rows, "sluice_pool_paused", "1 while a pool is paused (PAUSE).", PG_PAUSED);
    pool_gauge(&t, &rows, "sluice_pool_cap",
               "The most servers a pool can have in use: the smallest of pool_size, "
               "max_db/user/server_connections and its budget's max_servers (key: which).",
               PG_CAP);
    pool_gauge(&t, &rows, "sluice_pool_cap_in_use",
               "Servers in use that count against the pool's cap (for a shared cap: in every "
               "pool it covers).",
               PG_CAP_IN_USE);
    pool_gauge(&t, &rows, "sluice_pool_down",
               "1 while a pool's circuit breaker is open (or probing): it has no server and its "
               "connection attempts fail, so clients get 57P03 after server_down_wait.",
               PG_DOWN);
    pool_gauge(&t, &rows, "sluice_pool_unknown", "1 until a server of the pool has logged in once.",
               PG_UNKNOWN);
    pool_gauge(&t, &rows, "sluice_server_max_connections",
               "The server's max_connections, as the pool's server reported it.",
               PG_SERVER_MAX_CONNECTIONS);
    pool_gauge(&t, &rows, "sluice_server_reserved_connections",
               "The server's superuser_reserved_connections (+ reserved_connections).",
               PG_SERVER_RESERVED);
    metric_head(&t, "sluice_max_client_conn", "gauge", "Client connections allowed in total.");
    text_printf(&t, "sluice_max_client_conn %lld\n", (long long)cfg->max_client_conn);
    metric_head(&t, "sluice_client_connections", "gauge",
                "Client connections in any state, the admin console's included.");
    text_printf(&t, "sluice_client_connections %d\n", tot.clients);
    metric_head(&t, "sluice_server_connections", "gauge", "Server connections in any state.");
    text_printf(&t, "sluice_server_connections %d\n", tot.servers);

    metric_head(&t, "sluice_query_duration_seconds", "histogram",
                "Time from a client request to its ReadyForQuery.");
    histogram(&t, worker, &rows, "sluice_query_duration_seconds", false);
    metric_head(&t, "sluice_client_wait_duration_seconds", "histogram",
                "Time a client waited for a server.");
    histogram(&t, worker, &rows, "sluice_client_wait_duration_seconds", true);
    view_pools_free(&rows);

    if (t.oom) {
        free(t.data);
        return false;
    }
    *body = t.data;
    *len = t.len;
    return true;
}
