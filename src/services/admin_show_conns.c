/* admin_show_conns: SHOW CLIENTS, SERVERS, SOCKETS and ACTIVE_SOCKETS — one row per
 * connection, from the snapshots view.h hands out (the console never walks the core's lists). */
#include <stdbool.h>
#include <stdlib.h>

#include "admin_table.h"
#include "client.h"
#include "view.h"
#include "worker.h"

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

struct listing {
    struct table t;
    const struct worker *worker;
    int unix_port; /* a unix-socket client's "port": the listener's */
    enum conn_view view;
    bool only_busy;
};

static void cells_socket(struct table *t, const struct view_socket *s)
{
    cell_uint(t, s->recv_pos);
    cell_uint(t, s->pkt_pos);
    cell_uint(t, s->pkt_remain);
    cell_uint(t, s->send_pos);
    cell_uint(t, s->out->len - s->out_pos);
    cell_uint(t, s->pkt_avail);
    cell_uint(t, s->out->len - s->out_pos + s->pkt_remain);
}

static void conn_row(const struct view_conn *v, void *ctx)
{
    struct listing *l = ctx;
    struct table *t = &l->t;
    if (l->only_busy && !v->sock.busy)
        return;
    row_begin(t);
    cell_text(t, v->type == VIEW_CLIENT ? "C" : "S");
    cell_text(t, v->user);
    cell_text(t, v->database);
    cell_text(t, "none"); /* replication connections are refused */
    cell_text(t, v->state);
    if (v->type == VIEW_CLIENT) {
        cells_addr(t, v->addr, l->unix_port);
        cells_local_addr(t, v->fd, l->unix_port);
    } else {
        cell_text(t, v->host && v->host[0] ? v->host : NULL);
        if (v->port && v->port[0])
            cell_int(t, atoi(v->port));
        else
            cell_text(t, NULL);
        cells_local_addr(t, v->fd, 0);
    }
    cell_time(t, l->worker, v->connect_ms);
    cell_time(t, l->worker, v->state_since_ms);
    cells_wait(t, v->wait_us);
    cell_int(t, v->close_needed ? 1 : 0);
    cell_conn_id(t, v->id);
    cell_conn_id(t, v->link_id);
    cell_int(t, v->remote_pid);
    cell_tls(t, v->ssl);
    cell_text(t, v->app_name);
    cell_int(t, v->prepared_statements);
    cell_uint(t, v->id);
    if (l->view == VIEW_SOCKETS)
        cells_socket(t, &v->sock);
    cell_uint(t, v->held_ms);
    row_end(t);
}

static void listing_begin(struct listing *l, struct client *me, enum conn_view view, bool only_busy)
{
    l->worker = me->worker;
    l->unix_port = view_listen_port(me->worker);
    l->view = view;
    l->only_busy = only_busy;
    conn_table_begin(&l->t, &me->out, view);
}

/* ---- the other workers' rows (docs/architecture.md 5.6) ----
 * A worker's connections are read only on its own thread: the console asks each other worker by
 * message, the worker formats its rows there into a result set of its own, and sends it back;
 * the console appends its DataRows (what follows the RowDescription) to its answer. */

enum rows_of { ROWS_CLIENTS, ROWS_SERVERS, ROWS_SOCKETS };

struct rows_job {
    struct worker *console_worker;
    uint64_t console_id;
    admin_rows_fn *arrived;
    enum rows_of of;
    bool only_busy;
    struct msg_out rows;
    uint32_t header_len; /* the RowDescription's bytes at the start of rows */
    /* The answer's message, made when the job is: the asked worker's answer cannot then be lost
     * to an allocation failing there, which would leave the SHOW waiting for it. NULL once
     * posted (the mailbox's then). */
    struct worker_msg *answer;
};

static void free_job(struct rows_job *job)
{
    if (job->answer)
        worker_free_made_call(job->answer);
    codec_out_free(&job->rows);
    free(job);
}

static void on_rows_back(struct worker *worker, void *arg, bool delivered)
{
    struct rows_job *job = arg;
    if (delivered) {
        bool have = !job->rows.oom && job->rows.len > job->header_len;
        job->arrived(worker, job->console_id, have ? job->rows.data + job->header_len : NULL,
                     have ? job->rows.len - job->header_len : 0);
    }
    free_job(job);
}

static void on_rows_asked(struct worker *worker, void *arg, bool delivered)
{
    struct rows_job *job = arg;
    if (delivered) { /* else: its mailbox closed, its connections are going; no rows */
        struct listing l = {.worker = worker,
                            .unix_port = view_listen_port(worker),
                            .view = job->of == ROWS_SOCKETS ? VIEW_SOCKETS : VIEW_CONNECTIONS,
                            .only_busy = job->only_busy};
        conn_table_begin(&l.t, &job->rows, l.view);
        job->header_len = job->rows.len;
        if (job->of == ROWS_CLIENTS)
            view_clients(worker, conn_row, &l);
        else if (job->of == ROWS_SERVERS)
            view_servers(worker, conn_row, &l);
        else
            view_sockets(worker, conn_row, &l);
    }
    struct worker_msg *answer = job->answer;
    job->answer = NULL; /* posted or freed: the mailbox's either way */
    if (worker_post_made_call(job->console_worker, answer) < 0)
        free_job(job); /* the console's worker is closing: nobody waits */
}

/* Ask every other worker for its rows; how many were asked (each answers arrived once). */
static int ask_workers(struct client *me, enum rows_of of, bool only_busy, admin_rows_fn *arrived)
{
    struct process *proc = me->worker->proc;
    int asked = 0;
    for (int i = 0; arrived && i < proc->nworkers; i++) {
        struct worker *other = &proc->workers[i];
        if (other == me->worker)
            continue;
        struct rows_job *job = calloc(1, sizeof(*job));
        if (!job)
            break;
        *job = (struct rows_job){.console_worker = me->worker,
                                 .console_id = me->id,
                                 .arrived = arrived,
                                 .of = of,
                                 .only_busy = only_busy};
        codec_out_init(&job->rows);
        job->answer = worker_make_call(on_rows_back, job);
        if (!job->answer || worker_post_call(other, on_rows_asked, job) < 0) {
            free_job(job);
            continue;
        }
        asked++;
    }
    return asked;
}

int admin_show_clients(struct client *me, admin_rows_fn *arrived)
{
    struct listing l;
    listing_begin(&l, me, VIEW_CONNECTIONS, false);
    view_clients(me->worker, conn_row, &l);
    return ask_workers(me, ROWS_CLIENTS, false, arrived);
}

int admin_show_servers(struct client *me, admin_rows_fn *arrived)
{
    struct listing l;
    listing_begin(&l, me, VIEW_CONNECTIONS, false);
    view_servers(me->worker, conn_row, &l);
    return ask_workers(me, ROWS_SERVERS, false, arrived);
}

/* PgBouncer's SHOW SOCKETS: clients and servers together, each with its list's name and its
 * buffer positions; SHOW ACTIVE_SOCKETS only those with bytes buffered or output pending. */
int admin_show_sockets(struct client *me, bool only_busy, admin_rows_fn *arrived)
{
    struct listing l;
    listing_begin(&l, me, VIEW_SOCKETS, only_busy);
    view_sockets(me->worker, conn_row, &l);
    return ask_workers(me, ROWS_SOCKETS, only_busy, arrived);
}
