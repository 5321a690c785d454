/* report: the bodies behind GET /health and GET /metrics (see report.h), built on the loop
 * thread from the same pool views as SHOW POOLS.
 *
 * /health says in plain words what is wrong and which key to raise: a pool above 80% of its
 * servers, clients queued for one, a database that cannot be reached, client connections near
 * max_client_conn. /metrics follows the Prometheus text exposition format 0.0.4: each family's
 * HELP and TYPE, then its samples together; label values escaped and kept UTF-8. */
#include "report.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "budget.h"
#include "config.h"
#include "list.h"
#include "pool.h"
#include "sluice.h"
#include "stats.h"
#include "utf8.h"

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

/* Which key to raise for more servers in this pool. */
static void raise_hint(const struct pool *p, char *out, size_t n)
{
    const struct config *cfg = p->app->cfg;
    enum limit_kind k = budget_connect_limit(p, false);
    if (k == LIMIT_DB || k == LIMIT_USER || k == LIMIT_GLOBAL) {
        snprintf(out, n, "raise %s (now %d; it is full before pool_size)", limit_kind_key(k),
                 budget_limit_value(p, NULL, k));
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

static void json_view(struct text *t, const struct stats_pool_view *v, int pool_size,
                      long long max_client_conn, int clients_total)
{
    text_printf(t,
                "\"servers\":{\"total\":%d,\"active\":%d,\"idle\":%d,\"used\":%d,\"tested\":%d,"
                "\"login\":%d},"
                "\"clients\":{\"active\":%d,\"waiting\":%d,\"idle\":%d},"
                "\"pool_size\":%d,\"max_client_conn\":%lld,\"usage_pct\":%.1f,"
                "\"client_usage_pct\":%.1f,\"longest_wait_ms\":%llu",
                v->sv_total, v->sv_active, v->sv_idle, v->sv_used, v->sv_tested, v->sv_login,
                v->cl_active, v->cl_waiting, v->cl_idle, pool_size, max_client_conn,
                pct(v->sv_active, pool_size), pct(clients_total, (double)max_client_conn),
                (unsigned long long)v->longest_wait_ms);
}

bool report_health(struct sluice *app, char **body, size_t *len, int *status)
{
    const struct config *cfg = app->cfg;
    uint64_t now = sluice_now(app);
    struct text t = {0}, pools = {0}, warnings = {0};
    struct stats_pool_view total;
    memset(&total, 0, sizeof(total));
    int total_size = 0, nwarn = 0, ndown = 0;
    char hint[300], holder[200];

    bool first = true;
    struct list_node *n, *tmp;
    list_for_each(&app->pools, n, tmp)
    {
        const struct pool *p = container_of(n, struct pool, node);
        if (p->is_admin)
            continue;
        struct stats_pool_view v;
        stats_view_pool(p, now, &v);
        int top_servers;
        const char *top_app = stats_top_application(p, &top_servers);
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
        ndown += v.down;

        text_printf(&pools, "%s{\"database\":", first ? "" : ",");
        first = false;
        text_json_str(&pools, p->db_name);
        text_cstr(&pools, ",\"user\":");
        text_json_str(&pools, p->user_name);
        text_printf(&pools, ",\"status\":\"%s\",\"pool_mode\":\"%s\",\"paused\":%s,",
                    v.down ? "down" : "ok", pool_mode_name(p->mode), p->paused ? "true" : "false");
        json_view(&pools, &v, p->size, (long long)cfg->max_client_conn, clients);
        text_cstr(&pools, ",\"top_application\":");
        if (top_app) {
            text_cstr(&pools, "{\"name\":");
            text_json_str(&pools, top_app);
            text_printf(&pools, ",\"servers\":%d}", top_servers);
        } else {
            text_cstr(&pools, "null");
        }
        text_cstr(&pools, ",\"last_connect_error\":");
        text_json_str(&pools, v.down ? p->last_connect_error : NULL);
        text_cstr(&pools, "}");

        /* Warnings: what is wrong and what to do, in one sentence each. */
        char line[1024];
        if (v.down) {
            snprintf(line, sizeof(line),
                     "pool %s/%s cannot reach the database (%d failed connection attempts): %s",
                     p->db_name, p->user_name, p->connect_failures,
                     p->last_connect_error ? p->last_connect_error : "unknown error");
            text_printf(&warnings, "%s", nwarn++ ? "," : "");
            text_json_str(&warnings, line);
        }
        raise_hint(p, hint, sizeof(hint));
        holder_hint(top_app, top_servers, holder, sizeof(holder));
        if (v.cl_waiting > 0) {
            snprintf(line, sizeof(line),
                     "pool %s/%s: %d client%s waiting for a server, the longest for %llu ms: %s%s",
                     p->db_name, p->user_name, v.cl_waiting, v.cl_waiting == 1 ? "" : "s",
                     (unsigned long long)v.longest_wait_ms, hint, holder);
            text_printf(&warnings, "%s", nwarn++ ? "," : "");
            text_json_str(&warnings, line);
        } else if (p->size > 0 && v.sv_active * 100 > p->size * 80) {
            snprintf(line, sizeof(line), "pool %s/%s uses %d of %d servers (%.0f%%): %s%s",
                     p->db_name, p->user_name, v.sv_active, p->size, pct(v.sv_active, p->size),
                     hint, holder);
            text_printf(&warnings, "%s", nwarn++ ? "," : "");
            text_json_str(&warnings, line);
        }
    }
    long long max_clients = (long long)cfg->max_client_conn;
    if (max_clients > 0 && (long long)app->nclients * 100 > max_clients * 80) {
        char line[256];
        snprintf(line, sizeof(line),
                 "%d of %lld client connections in use (%.0f%%): raise max_client_conn",
                 app->nclients, max_clients, pct(app->nclients, (double)max_clients));
        text_printf(&warnings, "%s", nwarn++ ? "," : "");
        text_json_str(&warnings, line);
    }
    bool ok = ndown == 0 && app->phase == PHASE_RUNNING;
    *status = ok ? 200 : 503;
    text_printf(&t, "{\"status\":\"%s\",\"version\":\"%s\",\"total\":{",
                app->phase != PHASE_RUNNING ? "shutting_down"
                : ok                        ? "ok"
                                            : "down",
                SLUICE_VERSION);
    json_view(&t, &total, total_size, max_clients, app->nclients);
    text_printf(&t, ",\"client_connections\":%d,\"server_connections\":%d},\"pools\":[",
                app->nclients, app->nservers);
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

static void pool_labels(struct text *t, const struct pool *p)
{
    text_cstr(t, "database=");
    text_label(t, p->db_name);
    text_cstr(t, ",user=");
    text_label(t, p->user_name);
}

enum pool_counter { PC_XACT, PC_QUERY, PC_BYTES_IN, PC_BYTES_OUT };

static uint64_t counter_of(const struct pool *p, enum pool_counter k)
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

enum pool_gauge_kind { PG_SIZE, PG_PAUSED };

/* One gauge with a line per pool (the admin console's pseudo-pool left out). */
static void pool_gauge(struct text *t, struct sluice *app, const char *name, const char *help,
                       enum pool_gauge_kind k)
{
    metric_head(t, name, "gauge", help);
    struct list_node *n, *tmp;
    list_for_each(&app->pools, n, tmp)
    {
        const struct pool *p = container_of(n, struct pool, node);
        if (p->is_admin)
            continue;
        text_cstr(t, name);
        text_cstr(t, "{");
        pool_labels(t, p);
        text_printf(t, "} %d\n", k == PG_SIZE ? p->size : p->paused ? 1 : 0);
    }
}

static void histogram(struct text *t, struct sluice *app, const char *name, bool wait)
{
    struct list_node *n, *tmp;
    list_for_each(&app->pools, n, tmp)
    {
        const struct pool *p = container_of(n, struct pool, node);
        if (p->is_admin)
            continue;
        const uint64_t *hist = wait ? p->wait_hist : p->query_hist;
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

bool report_metrics(struct sluice *app, char **body, size_t *len)
{
    const struct config *cfg = app->cfg;
    uint64_t now = sluice_now(app);
    struct text t = {0};
    struct list_node *n, *tmp;
    int ndown = 0;
    list_for_each(&app->pools, n, tmp)
    {
        const struct pool *p = container_of(n, struct pool, node);
        if (p->is_admin)
            continue;
        struct stats_pool_view v;
        stats_view_pool(p, now, &v);
        ndown += v.down;
    }
    metric_head(&t, "sluice_up", "gauge",
                "1 while sluice serves and every pool can reach its database, else 0.");
    text_printf(&t, "sluice_up %d\n", ndown == 0 && app->phase == PHASE_RUNNING ? 1 : 0);

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
        list_for_each(&app->pools, n, tmp)
        {
            const struct pool *p = container_of(n, struct pool, node);
            if (p->is_admin)
                continue;
            text_printf(&t, "%s{", counters[i].name);
            pool_labels(&t, p);
            text_printf(&t, "} %llu\n", (unsigned long long)counter_of(p, counters[i].k));
        }
    }
    metric_head(&t, "sluice_client_wait_seconds_total", "counter",
                "Time clients spent waiting for a server, in seconds.");
    list_for_each(&app->pools, n, tmp)
    {
        const struct pool *p = container_of(n, struct pool, node);
        if (p->is_admin)
            continue;
        text_cstr(&t, "sluice_client_wait_seconds_total{");
        pool_labels(&t, p);
        text_printf(&t, "} %.6f\n", (double)p->wait_us_total / 1e6);
    }

    metric_head(&t, "sluice_clients", "gauge", "Client connections by state.");
    list_for_each(&app->pools, n, tmp)
    {
        const struct pool *p = container_of(n, struct pool, node);
        if (p->is_admin)
            continue;
        const struct {
            const char *state;
            int count;
        } states[] = {{"active", p->active_clients.count},
                      {"waiting", p->waiting.count},
                      {"idle", p->idle_clients.count}};
        for (size_t i = 0; i < sizeof(states) / sizeof(states[0]); i++) {
            text_cstr(&t, "sluice_clients{");
            pool_labels(&t, p);
            text_printf(&t, ",state=\"%s\"} %d\n", states[i].state, states[i].count);
        }
    }
    metric_head(&t, "sluice_servers", "gauge",
                "Server connections by state (used: idle past server_check_delay).");
    list_for_each(&app->pools, n, tmp)
    {
        const struct pool *p = container_of(n, struct pool, node);
        if (p->is_admin)
            continue;
        struct stats_pool_view v;
        stats_view_pool(p, now, &v);
        const struct {
            const char *state;
            int count;
        } states[] = {{"active", v.sv_active},
                      {"idle", v.sv_idle},
                      {"used", v.sv_used},
                      {"tested", v.sv_tested},
                      {"login", v.sv_login}};
        for (size_t i = 0; i < sizeof(states) / sizeof(states[0]); i++) {
            text_cstr(&t, "sluice_servers{");
            pool_labels(&t, p);
            text_printf(&t, ",state=\"%s\"} %d\n", states[i].state, states[i].count);
        }
    }
    pool_gauge(&t, app, "sluice_pool_size", "Servers a pool may open (pool_size).", PG_SIZE);
    pool_gauge(&t, app, "sluice_pool_paused", "1 while a pool is paused (PAUSE).", PG_PAUSED);
    metric_head(&t, "sluice_max_client_conn", "gauge", "Client connections allowed in total.");
    text_printf(&t, "sluice_max_client_conn %lld\n", (long long)cfg->max_client_conn);
    metric_head(&t, "sluice_client_connections", "gauge",
                "Client connections in any state, the admin console's included.");
    text_printf(&t, "sluice_client_connections %d\n", app->nclients);
    metric_head(&t, "sluice_server_connections", "gauge", "Server connections in any state.");
    text_printf(&t, "sluice_server_connections %d\n", app->nservers);

    metric_head(&t, "sluice_query_duration_seconds", "histogram",
                "Time from a client request to its ReadyForQuery.");
    histogram(&t, app, "sluice_query_duration_seconds", false);
    metric_head(&t, "sluice_client_wait_duration_seconds", "histogram",
                "Time a client waited for a server.");
    histogram(&t, app, "sluice_client_wait_duration_seconds", true);

    if (t.oom) {
        free(t.data);
        return false;
    }
    *body = t.data;
    *len = t.len;
    return true;
}
