/* admin_show: SHOW result sets (see admin_show.h).
 *
 * Rows are written straight into the client's output as DataRows; every value is text on the
 * wire, typed text (OID 25) or int8 (OID 20) in the RowDescription as PgBouncer does. A small
 * table writer counts the cells of each row against the columns, so a row that disagrees with
 * its header is a bug caught at once rather than a client reading garbage. */
#include "admin_show.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "console.h"
#include "disabled_dbs.h"
#include "budget.h"
#include "client.h"
#include "config.h"
#include "error.h"
#include "listener.h"
#include "log.h"
#include "pool.h"
#include "server.h"
#include "server_login.h"
#include "sluice.h"
#include "stats.h"
#include "tls.h"
#include "utf8.h"

#define TYPE_TEXT 25 /* pg_type OIDs */
#define TYPE_INT8 20

#define NELEM(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* ---- result sets ---- */

enum col_type { COL_TEXT, COL_INT };

struct col {
    const char *name;
    enum col_type type;
};

/* Writes one result set; counts cells so a row with the wrong number of them is caught. */
struct table {
    struct msg_out *o;
    int ncols;
    int cells;
};

/* A result set of the columns picked (pointers into a column table). */
static void table_begin_picked(struct table *t, struct msg_out *o, const struct col *const *cols,
                               int n)
{
    t->o = o;
    t->ncols = n;
    t->cells = 0;
    /* RowDescription: name, table OID, column number, type OID, type size, typmod, format. */
    codec_begin(o, 'T');
    codec_put_i16(o, (int16_t)n);
    for (int i = 0; i < n; i++) {
        codec_put_cstring(o, cols[i]->name);
        codec_put_i32(o, 0);
        codec_put_i16(o, 0);
        codec_put_i32(o, cols[i]->type == COL_INT ? TYPE_INT8 : TYPE_TEXT);
        codec_put_i16(o, cols[i]->type == COL_INT ? 8 : -1);
        codec_put_i32(o, -1);
        codec_put_i16(o, 0);
    }
    codec_end(o);
}

#define MAX_COLS 32

static void table_begin(struct table *t, struct msg_out *o, const struct col *cols, int n)
{
    const struct col *picked[MAX_COLS];
    if (n > MAX_COLS) {
        log_msg(LOG_ERROR, "BUG: admin result set of %d columns", n);
        abort();
    }
    for (int i = 0; i < n; i++)
        picked[i] = &cols[i];
    table_begin_picked(t, o, picked, n);
}

static void row_begin(struct table *t)
{
    t->cells = 0;
    codec_begin(t->o, 'D');
    codec_put_i16(t->o, (int16_t)t->ncols);
}

static void row_end(struct table *t)
{
    if (t->cells != t->ncols) {
        log_msg(LOG_ERROR, "BUG: admin row with %d of %d cells", t->cells, t->ncols);
        abort();
    }
    codec_end(t->o);
}

/* NULL is SQL NULL. Text that is not UTF-8 (a client's application_name can be anything)
 * has each bad byte replaced by U+FFFD, so drivers decoding UTF8 do not fail on the row. */
static void cell_text(struct table *t, const char *s)
{
    t->cells++;
    if (!s) {
        codec_put_i32(t->o, -1);
        return;
    }
    size_t len = 0, n;
    bool valid = true;
    for (const unsigned char *p = (const unsigned char *)s; *p; p += n ? n : 1) {
        n = utf8_seq_len(p);
        len += n ? n : 3;
        valid &= n != 0;
    }
    codec_put_i32(t->o, (int32_t)len);
    if (valid) {
        codec_put_bytes(t->o, s, len);
        return;
    }
    for (const unsigned char *p = (const unsigned char *)s; *p; p += n ? n : 1) {
        n = utf8_seq_len(p);
        if (n)
            codec_put_bytes(t->o, p, n);
        else
            codec_put_bytes(t->o, "\xef\xbf\xbd", 3);
    }
}

static void cell_fmt(struct table *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void cell_fmt(struct table *t, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    cell_text(t, buf);
}

static void cell_int(struct table *t, long long v)
{
    cell_fmt(t, "%lld", v);
}

static void cell_uint(struct table *t, uint64_t v)
{
    cell_fmt(t, "%llu", (unsigned long long)v);
}

static uint64_t wall_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A loop timestamp (ms) as wall-clock time; 0 is NULL. */
static void cell_time(struct table *t, const struct sluice *app, uint64_t loop_ms)
{
    if (loop_ms == 0) {
        cell_text(t, NULL);
        return;
    }
    uint64_t now = sluice_now(app);
    uint64_t wall = wall_now_ms() - (now > loop_ms ? now - loop_ms : 0);
    time_t secs = (time_t)(wall / 1000);
    struct tm tm;
    char buf[64];
    gmtime_r(&secs, &tm);
    strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S UTC", &tm);
    cell_text(t, buf);
}

static void cell_ptr(struct table *t, const void *p)
{
    if (p)
        cell_fmt(t, "%p", p);
    else
        cell_text(t, "");
}

/* Address and port cells of a socket address. */
static void cells_addr(struct table *t, const union peer_addr *a, int unix_port)
{
    char ip[INET6_ADDRSTRLEN];
    int port;
    if (peer_addr_ip(a, ip, sizeof(ip), &port)) {
        cell_text(t, ip);
        cell_int(t, port);
    } else if (a->sa.sa_family == AF_UNIX) {
        cell_text(t, "unix");
        cell_int(t, unix_port);
    } else {
        cell_text(t, NULL);
        cell_text(t, NULL);
    }
}

static void cells_local_addr(struct table *t, int fd, int unix_port)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    memset(&ss, 0, sizeof(ss));
    if (fd < 0 || getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        ss.ss_family = AF_UNSPEC;
    union peer_addr a;
    peer_addr_from(&a, &ss);
    cells_addr(t, &a, unix_port);
}

static void cell_tls(struct table *t, SSL *ssl)
{
    char desc[128] = "";
    if (ssl)
        tls_describe(ssl, desc, sizeof(desc));
    cell_text(t, desc);
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

/* ---- SHOW ---- */

static void show_help(struct client *c)
{
    codec_put_error(&c->out, 'N', "NOTICE", sqlstate_code(SQLSTATE_SUCCESSFUL_COMPLETION),
                    "Console usage",
                    "SHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION\n"
                    "SHOW PEERS|PEER_POOLS\n"
                    "SHOW SOCKETS|ACTIVE_SOCKETS|LISTS\n"
                    "SHOW STATS|STATS_TOTALS|STATS_AVERAGES\n"
                    "SHOW BUDGETS\n"
                    "SET <key> = <value>\nRELOAD\n"
                    "PAUSE [<db>]\nRESUME [<db>]\nDISABLE <db>\nENABLE <db>\nRECONNECT [<db>]\n"
                    "KILL <db>\nKILL_CLIENT <id>\nSUSPEND (refused)\n"
                    "SHUTDOWN\nSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS\nWAIT_CLOSE [<db>]",
                    NULL);
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
    struct sluice *app = c->app;
    uint64_t now = sluice_now(app);
    struct table t;
    table_begin(&t, &c->out, cols, NELEM(cols));
    struct list_node *n, *tmp;
    list_for_each(&app->pools, n, tmp)
    {
        struct pool *p = container_of(n, struct pool, node);
        struct stats_pool_view v;
        stats_view_pool(p, now, &v);
        uint64_t waited_us = v.longest_wait_ms * 1000;
        row_begin(&t);
        cell_text(&t, p->db_name);
        cell_text(&t, p->user_name);
        /* PgBouncer's cl_active: clients linked to a server or idle with nothing waiting */
        cell_int(&t, v.cl_active + v.cl_idle);
        cell_int(&t, v.cl_waiting);
        cell_int(&t, 0);
        cell_int(&t, 0);
        cell_int(&t, v.sv_active);
        cell_int(&t, 0);
        cell_int(&t, count_being_canceled(&p->active) + count_being_canceled(&p->resetting));
        cell_int(&t, v.sv_idle);
        cell_int(&t, v.sv_used);
        cell_int(&t, v.sv_tested);
        cell_int(&t, v.sv_login);
        cell_uint(&t, waited_us / 1000000);
        cell_uint(&t, waited_us % 1000000);
        cell_text(&t, p->is_admin ? "statement" : pool_mode_name(p->mode));
        cell_text(&t, NULL); /* PgBouncer: set only for a host list; sluice leaves those to libpq */
        cell_int(&t, p->is_admin ? 0 : p->size);
        cell_int(&t, v.cl_idle);
        cell_int(&t, p->paused ? 1 : 0);
        cell_text(&t, breaker_state_name(p->breaker.state));
        row_end(&t);
    }
}

/* PgBouncer's columns of SHOW CLIENTS, SERVERS and SOCKETS, in its order; SOCKETS adds the
 * buffer columns, then sluice's held_ms closes every row. */
static const struct col conn_cols[] = {
    {"type", COL_TEXT},
    {"user", COL_TEXT},
    {"database", COL_TEXT},
    {"replication", COL_TEXT},
    {"state", COL_TEXT},
    {"addr", COL_TEXT},
    {"port", COL_INT},
    {"local_addr", COL_TEXT},
    {"local_port", COL_INT},
    {"connect_time", COL_TEXT},
    {"request_time", COL_TEXT},
    {"wait", COL_INT},
    {"wait_us", COL_INT},
    {"close_needed", COL_INT},
    {"ptr", COL_TEXT},
    {"link", COL_TEXT},
    {"remote_pid", COL_INT},
    {"tls", COL_TEXT},
    {"application_name", COL_TEXT},
    {"prepared_statements", COL_INT},
    {"id", COL_INT},
    /* SHOW SOCKETS only: */
    {"recv_pos", COL_INT},
    {"pkt_pos", COL_INT},
    {"pkt_remain", COL_INT},
    {"send_pos", COL_INT},
    {"send_remain", COL_INT},
    {"pkt_avail", COL_INT},
    {"send_avail", COL_INT},
    /* sluice's own: */
    {"held_ms", COL_INT},
};
#define CONN_FIRST_SOCKET_COL 21 /* recv_pos */
#define CONN_SOCKET_COLS 7       /* recv_pos .. send_avail */

/* Which columns a listing has. */
enum conn_view { VIEW_CONNECTIONS, VIEW_SOCKETS };

static void conn_table_begin(struct table *t, struct msg_out *o, enum conn_view view)
{
    const struct col *picked[NELEM(conn_cols)];
    int n = 0;
    for (int i = 0; i < NELEM(conn_cols); i++) {
        bool socket_col =
            i >= CONN_FIRST_SOCKET_COL && i < CONN_FIRST_SOCKET_COL + CONN_SOCKET_COLS;
        if (view == VIEW_SOCKETS || !socket_col)
            picked[n++] = &conn_cols[i];
    }
    table_begin_picked(t, o, picked, n);
}

/* Buffer positions of a connection (PgBouncer's sbuf/iobuf columns, in sluice's terms): bytes
 * received into the input buffer, framed, sent on; what is framed but not sent, and what is
 * unframed; sluice's own output still to write. */
static void cells_socket(struct table *t, const struct buf *in, const struct msg_out *out,
                         uint32_t out_pos)
{
    cell_uint(t, in->data ? in->wpos : 0);
    cell_uint(t, in->data ? in->scan : 0);
    cell_uint(t, in->data ? buf_pending(in) : 0);
    cell_uint(t, in->data ? in->rpos : 0);
    cell_uint(t, out->len - out_pos);
    cell_uint(t, in->data ? buf_unframed(in) : 0);
    cell_uint(t, out->len - out_pos + (in->data ? buf_pending(in) : 0));
}

static bool socket_busy(const struct buf *in, const struct msg_out *out, uint32_t out_pos)
{
    return (in->data && !buf_is_empty(in)) || out->len > out_pos;
}

/* state: NULL for the client's own state name, or SHOW SOCKETS' list name (cl_active, ...). */
static void client_row(struct table *t, struct client *c, const char *state)
{
    struct sluice *app = c->app;
    uint64_t now = sluice_now(app);
    int port = listener_port(app);
    uint64_t wait_us = 0;
    if (c->state == CLIENT_WAITING || c->state == CLIENT_WAITING_LAST ||
        c->state == CLIENT_LOGIN_WAIT)
        wait_us = (now - c->state_since_ms) * 1000;
    int remote_pid = 0;
    if (c->addr.sa.sa_family == AF_UNIX && c->io.fd >= 0) {
        struct ucred cred;
        socklen_t len = sizeof(cred);
        if (getsockopt(c->io.fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0)
            remote_pid = cred.pid;
    }
    const char *app_name = params_get(&c->params, "application_name");
    row_begin(t);
    cell_text(t, "C");
    cell_text(t, c->user);
    cell_text(t, c->database);
    cell_text(t, "none"); /* replication connections are refused */
    cell_text(t, state ? state : client_state_name(c->state));
    cells_addr(t, &c->addr, port);
    cells_local_addr(t, c->io.fd, port);
    cell_time(t, app, c->connect_ms);
    cell_time(t, app, c->state_since_ms);
    cell_uint(t, wait_us / 1000000);
    cell_uint(t, wait_us % 1000000);
    cell_int(t, 0);
    cell_ptr(t, c);
    cell_ptr(t, c->server);
    cell_int(t, remote_pid);
    cell_tls(t, c->io.ssl);
    cell_text(t, app_name ? app_name : "");
    cell_int(t, c->stmts ? stmt_map_count(c->stmts) : 0);
    cell_uint(t, c->id);
    if (state)
        cells_socket(t, &c->in, &c->out, c->out_pos);
    cell_uint(t, c->state == CLIENT_ACTIVE ? now - c->state_since_ms : 0);
    row_end(t);
}

static void show_clients(struct client *me)
{
    struct sluice *app = me->app;
    struct table t;
    conn_table_begin(&t, &me->out, VIEW_CONNECTIONS);
    struct list_node *n, *tmp, *cn, *ctmp;
    list_for_each(&app->login_clients, cn, ctmp)
        client_row(&t, container_of(cn, struct client, node), NULL);
    list_for_each(&app->pools, n, tmp)
    {
        struct pool *p = container_of(n, struct pool, node);
        struct list *lists[] = {&p->active_clients, &p->waiting, &p->idle_clients};
        for (int i = 0; i < NELEM(lists); i++) {
            list_for_each(lists[i], cn, ctmp)
            {
                client_row(&t, container_of(cn, struct client, node), NULL);
            }
        }
    }
}

static void server_row(struct table *t, struct server *s, const char *state)
{
    struct pool *p = s->pool;
    struct sluice *app = p->app;
    uint64_t now = sluice_now(app);
    const char *host = s->conn ? PQhost(s->conn) : server_login_host(s);
    const char *port = s->conn ? PQport(s->conn) : server_login_port(s);
    const char *app_name = params_get(&s->params, "application_name");
    row_begin(t);
    cell_text(t, "S");
    cell_text(t, p->user_name);
    cell_text(t, p->db_name);
    cell_text(t, "none");
    cell_text(t, state ? state : server_state_name(s->state));
    cell_text(t, host && host[0] ? host : NULL);
    if (port && port[0])
        cell_int(t, atoi(port));
    else
        cell_text(t, NULL);
    cells_local_addr(t, s->io.fd, 0);
    cell_time(t, app, s->connect_ms ? s->connect_ms : s->connect_start_ms);
    cell_time(t, app, s->state_since_ms);
    cell_int(t, 0);
    cell_int(t, 0);
    cell_int(t, s->close_when_free ? 1 : 0);
    cell_ptr(t, s);
    cell_ptr(t, s->client);
    cell_int(t, s->backend_pid);
    cell_tls(t, s->io.ssl);
    cell_text(t, app_name ? app_name : "");
    cell_int(t, stmt_map_count(&s->stmts));
    cell_uint(t, s->id);
    if (state)
        cells_socket(t, &s->in, &s->out, s->out_pos);
    cell_uint(t, s->state == SERVER_ACTIVE ? now - s->state_since_ms : 0);
    row_end(t);
}

static void show_servers(struct client *me)
{
    struct sluice *app = me->app;
    struct table t;
    conn_table_begin(&t, &me->out, VIEW_CONNECTIONS);
    struct list_node *n, *tmp, *sn, *stmp;
    list_for_each(&app->pools, n, tmp)
    {
        struct pool *p = container_of(n, struct pool, node);
        struct list *lists[] = {&p->active, &p->idle, &p->resetting, &p->connecting};
        for (int i = 0; i < NELEM(lists); i++) {
            list_for_each(lists[i], sn, stmp)
            {
                server_row(&t, container_of(sn, struct server, node), NULL);
            }
        }
    }
}

/* PgBouncer's SHOW SOCKETS: clients and servers together, each with its list's name and its
 * buffer positions; SHOW ACTIVE_SOCKETS only those with bytes buffered or output pending. */
static void show_sockets(struct client *me, bool only_busy)
{
    struct sluice *app = me->app;
    struct table t;
    conn_table_begin(&t, &me->out, VIEW_SOCKETS);
    struct list_node *n, *tmp, *x, *xtmp;
    list_for_each(&app->pools, n, tmp)
    {
        struct pool *p = container_of(n, struct pool, node);
        const struct {
            struct list *l;
            const char *state;
        } clients[] = {{&p->active_clients, "cl_active"},
                       {&p->idle_clients, "cl_active"}, /* PgBouncer's active list holds both */
                       {&p->waiting, "cl_waiting"}},
          servers[] = {{&p->active, "sv_active"},
                       {&p->idle, "sv_idle"},
                       {&p->resetting, "sv_tested"},
                       {&p->connecting, "sv_login"},
                       {&p->leaving, "sv_leaving"}};
        for (int i = 0; i < NELEM(clients); i++) {
            list_for_each(clients[i].l, x, xtmp)
            {
                struct client *c = container_of(x, struct client, node);
                if (!only_busy || socket_busy(&c->in, &c->out, c->out_pos))
                    client_row(&t, c, clients[i].state);
            }
        }
        for (int i = 0; i < NELEM(servers); i++) {
            list_for_each(servers[i].l, x, xtmp)
            {
                struct server *s = container_of(x, struct server, node);
                if (!only_busy || socket_busy(&s->in, &s->out, s->out_pos))
                    server_row(&t, s, servers[i].state);
            }
        }
    }
    list_for_each(&app->login_clients, x, xtmp)
    {
        struct client *c = container_of(x, struct client, node);
        if (!only_busy || socket_busy(&c->in, &c->out, c->out_pos))
            client_row(&t, c, "cl_login");
    }
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

/* The distinct database names of the pools, in pool order (a small array the caller frees). */
static const char **pool_databases(struct sluice *app, int *count)
{
    const char **names = calloc((size_t)app->pools.count + 1, sizeof(*names));
    int n = 0;
    struct list_node *node, *tmp;
    if (!names) {
        *count = 0;
        return NULL;
    }
    list_for_each(&app->pools, node, tmp)
    {
        const char *db = container_of(node, struct pool, node)->db_name;
        bool seen = false;
        for (int i = 0; i < n && !seen; i++)
            seen = strcmp(names[i], db) == 0;
        if (!seen)
            names[n++] = db;
    }
    *count = n;
    return names;
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
    int n;
    const char **dbs = pool_databases(c->app, &n);
    for (int i = 0; i < n; i++) {
        struct stats_totals total, avg;
        stats_totals_for_db(c->app, dbs[i], &total);
        stats_averages(c->app, dbs[i], &avg);
        row_begin(&t);
        cell_text(&t, dbs[i]);
        if (view != VIEW_AVERAGES)
            cells_stats(&t, &total);
        if (view != VIEW_TOTALS)
            cells_stats(&t, &avg);
        row_end(&t);
    }
    free(dbs);
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
static int db_server_usable(const struct sluice *app, const char *db)
{
    struct list_node *n, *tmp;
    list_for_each(&app->pools, n, tmp)
    {
        const struct pool *p = container_of(n, struct pool, node);
        if (strcmp(p->db_name, db) == 0 && p->server_usable > 0)
            return p->server_usable;
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
static int console_clients(const struct sluice *app, const char *name)
{
    int n = 0;
    struct list_node *node, *tmp;
    list_for_each(&app->pools, node, tmp)
    {
        const struct pool *p = container_of(node, struct pool, node);
        if (p->is_admin && strcmp(p->db_name, name) == 0)
            n += p->idle_clients.count;
    }
    return n;
}

/* One row of SHOW DATABASES: d is its [databases] entry, or NULL for the admin console. */
static void database_row(struct table *t, struct sluice *app, const char *name,
                         const struct db_entry *d)
{
    const struct config *cfg = app->cfg;
    row_begin(t);
    cell_text(t, name);
    if (!d) {
        /* PgBouncer lists its admin database too: no host, sluice's own port, no servers. */
        cell_text(t, NULL);
        cell_int(t, listener_port(app));
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
        cell_int(t, console_clients(app, name));
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
    struct list_node *n, *tmp;
    list_for_each(&app->pools, n, tmp)
    {
        const struct pool *p = container_of(n, struct pool, node);
        if (strcmp(p->db_name, name) == 0) {
            npools++;
            npaused += p->paused;
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
    cell_int(t, (d->timeouts.server_lifetime >= 0 ? d->timeouts.server_lifetime
                                                  : cfg->server_lifetime) / 1000);
    /* PgBouncer: the entry's own pool_mode, NULL when the main section's applies. */
    cell_text(t, d->pool_mode != POOL_MODE_UNSET ? pool_mode_name(d->pool_mode) : NULL);
    cell_text(t, NULL); /* load_balance_hosts: only for a host list */
    cell_int(t, limit_resolve(maxc, db_server_usable(app, name)));
    cell_int(t, budget_db_servers(app, name));
    cell_int(t, db_client_cap(cfg, d));
    cell_int(t, client_count_for_db(app, name));
    cell_int(t, npools > 0 && npaused == npools ? 1 : 0);
    cell_int(t, disabled_dbs_contains(app, name) ? 1 : 0);
    cell_text(t, limit_text);
    row_end(t);
}

/* Each database SHOW DATABASES lists, in order: the [databases] entries, one row for each name
 * reached through the "*" entry (they have no entry of their own), the console's names. fn is
 * called with d NULL for the console; returns the count. */
static int for_each_database(struct sluice *app, struct table *t,
                             void (*fn)(struct table *, struct sluice *, const char *,
                                        const struct db_entry *))
{
    static const char *const console_names[] = {"pgbouncer", "sluice"};
    const struct config *cfg = app->cfg;
    int count = 0;
    for (int i = 0; i < cfg->ndbs; i++, count++) {
        if (fn)
            fn(t, app, cfg->dbs[i].name, &cfg->dbs[i]);
    }
    int n;
    const char **dbs = pool_databases(app, &n);
    for (int i = 0; i < n; i++) {
        if (console_is_db(app, dbs[i]))
            continue;
        const struct db_entry *d = config_find_db(cfg, dbs[i]);
        if (d && strcmp(d->name, "*") == 0) {
            if (fn)
                fn(t, app, dbs[i], d);
            count++;
        }
    }
    free(dbs);
    for (int i = 0; i < NELEM(console_names); i++, count++) {
        if (fn)
            fn(t, app, console_names[i], NULL);
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
    for_each_database(c->app, &t, database_row);
}

static bool name_listed(const char **names, int n, const char *name)
{
    for (int i = 0; i < n; i++) {
        if (strcmp(names[i], name) == 0)
            return true;
    }
    return false;
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
    struct sluice *app = c->app;
    const struct config *cfg = app->cfg;
    struct table t;
    table_begin(&t, &c->out, cols, NELEM(cols));
    /* [users], then auth_file, then whoever has a pool or is connected (a client of a database
     * with a forced user= logs in under its own name, not its pool's); each name once. */
    size_t cap = (size_t)cfg->nusers + (size_t)cfg->nauth + (size_t)app->pools.count +
                 (size_t)app->nclients + 1;
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
    struct list_node *node, *tmp;
    list_for_each(&app->pools, node, tmp)
    {
        const struct pool *p = container_of(node, struct pool, node);
        if (p->is_admin)
            continue;
        if (!name_listed(names, n, p->user_name))
            names[n++] = p->user_name;
        const struct list *clients[] = {&p->waiting, &p->idle_clients, &p->active_clients};
        struct list_node *cn, *ctmp;
        for (int i = 0; i < NELEM(clients); i++) {
            list_for_each(clients[i], cn, ctmp)
            {
                const char *user = container_of(cn, struct client, node)->user;
                if ((size_t)n + 1 < cap && !name_listed(names, n, user))
                    names[n++] = user;
            }
        }
    }
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
        cell_int(&t, budget_user_servers(app, names[i]));
        cell_int(&t, u && u->max_user_client_connections > 0 ? u->max_user_client_connections
                                                             : cfg->max_user_client_connections);
        cell_int(&t, client_count_for_user(app, names[i]));
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
    const struct config *cfg = c->app->cfg;
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
    struct sluice *app = c->app;
    const struct config *cfg = app->cfg;
    int pools = 0;
    struct list_node *n, *tmp;
    list_for_each(&app->pools, n, tmp)
    {
        pools += !container_of(n, struct pool, node)->is_admin;
    }
    const struct {
        const char *name;
        long long items;
    } rows[] = {
        {"databases", for_each_database(app, NULL, NULL)},
        {"users", cfg->nusers},
        {"peers", 0},
        {"pools", pools},
        {"peer_pools", 0},
        {"free_clients", 0},
        {"used_clients", app->nclients},
        {"login_clients", app->login_clients.count},
        {"free_servers", 0},
        {"used_servers", app->nservers},
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

static void show_budgets(struct client *c)
{
    static const struct col cols[] = {
        {"name", COL_TEXT},       {"max_servers", COL_INT}, {"max_clients", COL_INT},
        {"min_servers", COL_INT}, {"cl_active", COL_INT},   {"sv_active", COL_INT},
        {"app", COL_TEXT},        {"user", COL_TEXT},       {"addr", COL_TEXT},
        {"retired", COL_INT},
    };
    struct sluice *app = c->app;
    const struct config *cfg = app->cfg;
    struct table t;
    table_begin(&t, &c->out, cols, NELEM(cols));
    for (int i = 0; i < app->budgets.n; i++) {
        const struct budget *b = app->budgets.items[i];
        const char *addr = NULL;
        for (int j = 0; j < cfg->nbudgets; j++) {
            if (strcmp(cfg->budgets[j].name, b->name) == 0)
                addr = cfg->budgets[j].addr_cidr;
        }
        row_begin(&t);
        cell_text(&t, b->name);
        cell_int(&t, b->max_servers);
        cell_int(&t, b->max_clients);
        cell_int(&t, b->min_servers);
        cell_int(&t, b->clients);
        cell_int(&t, b->leases);
        cell_text(&t, b->app_pattern);
        cell_text(&t, b->user);
        cell_text(&t, addr);
        cell_int(&t, b->retired ? 1 : 0);
        row_end(&t);
    }
}

void admin_show(struct client *c, enum admin_show what)
{
    switch (what) {
    case ADMIN_SHOW_HELP:
        show_help(c);
        break;
    case ADMIN_SHOW_POOLS:
        show_pools(c);
        break;
    case ADMIN_SHOW_CLIENTS:
        show_clients(c);
        break;
    case ADMIN_SHOW_SERVERS:
        show_servers(c);
        break;
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
        show_sockets(c, false);
        break;
    case ADMIN_SHOW_ACTIVE_SOCKETS:
        show_sockets(c, true);
        break;
    case ADMIN_SHOW_PEERS:
        show_peers(c);
        break;
    case ADMIN_SHOW_PEER_POOLS:
        show_peer_pools(c);
        break;
    }
}
