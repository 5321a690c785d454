/* client: one client connection, its state machine and its handlers (see client.h).
 *
 *   STARTUP --startup packet--> AUTH --password ok--> LOGIN_WAIT --server--> ACTIVE
 *      |   (SSLRequest: 'N')      |                       |     \  parameters to try: SET
 *      |   (CancelRequest: gone)  |                       |    LOGIN_SYNC --accepted--> ACTIVE
 *      |                          |                       |        \--refused--> LOGIN_REFUSED
 *      |                          |                       |  (pool already knows the welcome
 *      |                          +--trust / known params-+---> IDLE <-- and the parameters)
 *      |                                                       |  ^               |
 *      |                                         a message --->|  | released      |
 *      |                                                       v  |               |
 *      |                                                  WAITING --server--> ACTIVE
 *      |                       Terminate, then EOF, queued: |                    ^
 *      |                                                    v                    |
 *      |                                              WAITING_LAST --server------+
 *      |                                    (the relay closes it at the Terminate)
 *      +-- any state: FATAL error --> CLOSING (flush) --> CLOSED; EOF/error --> CLOSED
 *
 *   STARTUP --SSLRequest, TLS on: 'S'--> TLS_HANDSHAKE --SSL_accept done--> STARTUP (encrypted)
 *
 * Each state has its own list (login list, the pool's waiting FIFO, idle, active), so the
 * background timer and SHOW commands walk only the clients they are about. */
#include "client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "admin.h"
#include "auth.h"
#include "budget.h"
#include "cancel.h"
#include "listener.h"
#include "log.h"
#include "pool.h"
#include "pool_mode.h"
#include "server.h"
#include "sluice.h"
#include "tls.h"

static const char *const state_names[] = {
    [CLIENT_STARTUP] = "startup", [CLIENT_AUTH] = "auth",       [CLIENT_LOGIN_WAIT] = "login_wait",
    [CLIENT_LOGIN_SYNC] = "login_sync", [CLIENT_LOGIN_REFUSED] = "login_refused",
    [CLIENT_TLS_HANDSHAKE] = "tls_handshake",
    [CLIENT_CANCEL_WAIT] = "cancel_wait",
    [CLIENT_IDLE] = "idle",       [CLIENT_WAITING] = "waiting", [CLIENT_ACTIVE] = "active",
    [CLIENT_WAITING_LAST] = "waiting_last",
    [CLIENT_CLOSING] = "closing", [CLIENT_CLOSED] = "closed",
};

const char *client_state_name(enum client_state s)
{
    return state_names[s];
}

static struct list *list_for(struct client *c, enum client_state st)
{
    switch (st) {
    case CLIENT_STARTUP:
    case CLIENT_TLS_HANDSHAKE:
    case CLIENT_AUTH:
        return &c->app->login_clients;
    case CLIENT_LOGIN_WAIT:
    case CLIENT_WAITING:
    case CLIENT_WAITING_LAST:
        return &c->pool->waiting;
    case CLIENT_IDLE:
        return &c->pool->idle_clients;
    case CLIENT_ACTIVE:
    case CLIENT_LOGIN_SYNC:
    case CLIENT_LOGIN_REFUSED:
        return &c->pool->active_clients;
    case CLIENT_CANCEL_WAIT:
    case CLIENT_CLOSING:
        return &c->app->closing_clients;
    case CLIENT_CLOSED:
        return &c->app->dead_clients;
    }
    return NULL;
}

static bool transition_ok(enum client_state from, enum client_state to)
{
    if (to == CLIENT_CLOSED)
        return from != CLIENT_CLOSED;
    if (to == CLIENT_CLOSING)
        return from != CLIENT_CLOSED && from != CLIENT_CLOSING;
    switch (from) {
    case CLIENT_STARTUP:
        return to == CLIENT_AUTH || to == CLIENT_TLS_HANDSHAKE || to == CLIENT_CANCEL_WAIT;
    case CLIENT_TLS_HANDSHAKE:
        return to == CLIENT_STARTUP;
    case CLIENT_AUTH:
        return to == CLIENT_LOGIN_WAIT || to == CLIENT_IDLE;
    case CLIENT_LOGIN_WAIT:
        /* -> IDLE: another login's server told the pool its welcome first; -> LOGIN_SYNC: its
         * startup parameters are being tried on the server it was given */
        return to == CLIENT_ACTIVE || to == CLIENT_IDLE || to == CLIENT_LOGIN_SYNC;
    case CLIENT_LOGIN_SYNC:
        return to == CLIENT_ACTIVE || to == CLIENT_LOGIN_REFUSED;
    case CLIENT_IDLE:
        return to == CLIENT_WAITING;
    case CLIENT_WAITING:
        /* -> IDLE: query_wait_timeout answered with an ERROR, the session goes on */
        return to == CLIENT_ACTIVE || to == CLIENT_IDLE || to == CLIENT_WAITING_LAST;
    case CLIENT_WAITING_LAST:
        return to == CLIENT_ACTIVE;
    case CLIENT_ACTIVE:
        return to == CLIENT_IDLE;
    default:
        return false;
    }
}

/* An idle client keeps no output buffer: with thousands of idle clients the welcome's few
 * hundred bytes each would add up. The rare message sluice writes to a client allocates it
 * again. */
static void release_idle_output(struct client *c)
{
    if (c->state == CLIENT_IDLE && c->out.data && c->out_pos >= c->out.len) {
        codec_out_free(&c->out);
        c->out_pos = 0;
    }
}

void client_set_state(struct client *c, enum client_state next)
{
    if (!transition_ok(c->state, next)) {
        log_client(LOG_ERROR, c, "BUG: client state %s -> %s", client_state_name(c->state),
                   client_state_name(next));
        abort();
    }
    struct list *from = list_for(c, c->state), *to = list_for(c, next);
    if (from != to) { /* the same list (WAITING -> WAITING_LAST): keep the FIFO place */
        list_remove(from, &c->node);
        list_append(to, &c->node);
    }
    c->state = next;
    c->state_since_ms = sluice_now(c->app);
    release_idle_output(c);
}

static void on_client_io(struct sockio *io, int status, int events);

/* Logins in progress have their own cap (max_client_logins): a stranger can open connections
 * and never finish logging in, at no cost to himself. Past the cap, the oldest login in progress
 * gives its place up: first among those that have not sent a whole startup packet, then among
 * the rest, and never one younger than LOGIN_GRACE_MS, whose bytes may still be on the way (a
 * real client's SSLRequest round trip; a storm of real logins). A real login finishes in
 * milliseconds, so it is the stalled ones that reach the head of the list and a flood cannot lock
 * out new logins. Until logins are old enough to give way the cap may be passed; the listener's
 * accept limit still bounds the whole. */
#define LOGIN_GRACE_MS 1000

static bool gives_way(const struct client *c, enum client_state tier, uint64_t now)
{
    bool in_tier = tier == CLIENT_STARTUP ? c->state == CLIENT_STARTUP : c->state != CLIENT_STARTUP;
    return in_tier && now - c->state_since_ms >= LOGIN_GRACE_MS;
}

static void evict_login(struct client *c)
{
    char detail[96];
    snprintf(detail, sizeof(detail), "max_client_logins (%lld) reached",
             (long long)c->app->cfg->max_client_logins);
    client_fail(c, FAIL_TOO_MANY_LOGINS, detail);
}

static bool logins_over_cap(const struct sluice *app)
{
    return app->login_clients.count > app->cfg->max_client_logins;
}

static void make_room_for_a_login(struct sluice *app)
{
    uint64_t now = sluice_now(app);
    const enum client_state tiers[] = {CLIENT_STARTUP, CLIENT_AUTH};
    for (size_t t = 0; t < sizeof(tiers) / sizeof(tiers[0]); t++) {
        struct list_node *n, *tmp;
        list_for_each(&app->login_clients, n, tmp)
        {
            if (!logins_over_cap(app))
                return;
            struct client *c = container_of(n, struct client, node);
            if (gives_way(c, tiers[t], now))
                evict_login(c);
        }
    }
}

/* Clients that count against max_client_conn: logged in, not leaving. */
static int logged_in_clients(const struct sluice *app)
{
    return app->nclients - app->login_clients.count - app->closing_clients.count;
}

struct client *client_accept(struct sluice *app, int fd, const struct sockaddr_storage *addr)
{
    struct client *c = calloc(1, sizeof(*c));
    if (!c) {
        close(fd);
        return NULL;
    }
    c->app = app;
    c->id = ++app->next_id;
    peer_addr_from(&c->addr, addr);
    c->connect_ms = sluice_now(app);
    c->state_since_ms = c->connect_ms;
    c->state = CLIENT_STARTUP;
    codec_out_init(&c->out);
    params_init(&c->params);
    list_append(&app->login_clients, &c->node);
    app->nclients++;
    if (logins_over_cap(app))
        make_room_for_a_login(app);
    if (sockio_open(&c->io, app->loop, fd, c, on_client_io) < 0) {
        c->io.fd = fd;
        client_close(c, "cannot watch the socket");
        return NULL;
    }
    sockio_want(&c->io, UV_READABLE);
    return c;
}

void client_read_first(struct client *c)
{
    on_client_io(&c->io, 0, UV_READABLE);
}

static bool queued_terminate(const struct client *c);

int client_read(struct client *c)
{
    if (!buf_attach(&c->in)) {
        client_fail(c, FAIL_OUT_OF_MEMORY, "");
        return -1;
    }
    uint32_t room = buf_make_room(&c->in);
    if (room == 0)
        return 0;
    ssize_t n = sockio_read(&c->io, c->in.data + c->in.wpos, room);
    if (n > 0) {
        c->in.wpos += (uint32_t)n;
        return (int)n;
    }
    if (n == SOCKIO_AGAIN) {
        buf_detach_if_empty(&c->in);
        return 0;
    }
    if (n == 0 && c->state == CLIENT_WAITING && queued_terminate(c)) {
        /* libpq's PQfinish after PQsendQuery while the pool is full: Query, Terminate, then the
         * socket closes. Postgres would run the query, so the client stays queued; its socket
         * is no longer watched, and the relay closes it at the Terminate. */
        uint64_t queued_since = c->state_since_ms; /* the same wait goes on */
        client_set_state(c, CLIENT_WAITING_LAST);
        c->state_since_ms = queued_since;
        sockio_want(&c->io, 0);
        return 0;
    }
    client_close(c, n == 0 ? "client closed the connection" : strerror((int)-n));
    return -1;
}

/* ---- logging ---- */

void log_client(enum log_level level, const struct client *c, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    char who[384], addr[64];
    peer_addr_text(&c->addr, addr, sizeof(addr));
    snprintf(who, sizeof(who), "C-%llu %s/%s@%s", (unsigned long long)c->id,
             c->database ? c->database : "?", c->user ? c->user : "?", addr);
    va_list ap;
    va_start(ap, fmt);
    log_msg_as(level, who, fmt, ap);
    va_end(ap);
}

/* ---- sending ---- */

void client_send(struct client *c)
{
    if (c->out_pos < c->out.len && c->state != CLIENT_CLOSED) {
        if (c->out.oom) {
            client_close(c, "out of memory building a message");
            return;
        }
        ssize_t n = sockio_write(&c->io, c->out.data + c->out_pos, c->out.len - c->out_pos);
        if (n < 0) {
            client_close(c, "write to client failed");
            return;
        }
        c->out_pos += (uint32_t)n;
        if (c->out_pos >= c->out.len) {
            codec_out_reset(&c->out);
            c->out_pos = 0;
            release_idle_output(c);
        }
    }
    if (c->state == CLIENT_CLOSING && c->out_pos >= c->out.len) {
        client_close(c, NULL);
        return;
    }
    if (c->server)
        return; /* the relay sets a linked pair's interest */
    relay_client_interest(c);
}

void client_fail_with_state(struct client *c, enum failure f, const char *detail,
                            const char *sqlstate)
{
    if (c->state == CLIENT_CLOSING || c->state == CLIENT_CLOSED)
        return;
    if (c->state == CLIENT_TLS_HANDSHAKE) {
        /* no channel to say it on: half a TLS handshake cannot carry an ErrorResponse */
        client_close(c, failure_name(f));
        return;
    }
    const struct failure_info *fi = failure_info(f);
    if (c->app->cfg->log_pooler_errors)
        log_client(LOG_WARNING, c, "%s: %s%s", failure_name(f),
                   fi->severity == SEVERITY_FATAL ? "closing: " : "", detail ? detail : "");
    error_build(&c->out, f, detail, sqlstate);
    if (fi->severity != SEVERITY_FATAL) {
        client_send(c);
        return;
    }
    if (c->server)
        server_client_gone(c->server);
    client_set_state(c, CLIENT_CLOSING);
    buf_release(&c->in);
    client_send(c);
}

void client_fail_request_and_close(struct client *c, enum failure f, const char *detail)
{
    if (c->state == CLIENT_CLOSING || c->state == CLIENT_CLOSED)
        return;
    if (c->app->cfg->log_pooler_errors)
        log_client(LOG_WARNING, c, "%s: closing: %s", failure_name(f), detail ? detail : "");
    error_build(&c->out, f, detail, NULL);
    codec_put_ready(&c->out, 'I');
    if (c->server)
        server_client_gone(c->server);
    client_set_state(c, CLIENT_CLOSING);
    buf_release(&c->in);
    client_send(c);
}

void client_fail(struct client *c, enum failure f, const char *detail)
{
    client_fail_with_state(c, f, detail, NULL);
}

void client_close(struct client *c, const char *reason)
{
    if (c->state == CLIENT_CLOSED)
        return;
    struct sluice *app = c->app;
    if (reason && c->state >= CLIENT_LOGIN_WAIT && app->cfg->log_disconnections)
        log_client(LOG_INFO, c, "closing: %s", reason);
    else if (reason)
        log_client(LOG_DEBUG, c, "closing: %s", reason);
    if (c->server)
        server_client_gone(c->server);
    if (c->cancel_pid)
        cancel_unregister(app->cancel_map, c);
    if (c->state == CLIENT_CANCEL_WAIT)
        cancel_requester_gone(c);
    if (c->budget)
        c->budget->clients--;
    c->budget = NULL;
    list_remove(list_for(c, c->state), &c->node);
    c->state = CLIENT_CLOSED;
    list_append(&app->dead_clients, &c->node);
    auth_client_gone(c);
    sockio_detach(&c->io);
    tls_client_close(c->io.ssl); /* before the fd closes: it may send close_notify */
    c->io.ssl = NULL;
    if (c->io.fd >= 0)
        close(c->io.fd);
    c->io.fd = -1;
    buf_release(&c->in);
    codec_out_free(&c->out);
    params_free(&c->params);
    if (c->login_params) {
        params_free(c->login_params);
        free(c->login_params);
        c->login_params = NULL;
    }
    stmt_map_delete(c->stmts);
    c->stmts = NULL;
    login_reset_free_statements(c);
    app->nclients--;
    listener_maybe_resume(app);
}

/* ---- login ---- */

static bool param_is_protocol_level(const char *name)
{
    return strcmp(name, "user") == 0 || strcmp(name, "database") == 0 ||
           strcmp(name, "options") == 0 || strcmp(name, "replication") == 0;
}

/* The "options" startup parameter's -c name=value settings, except those that
 * ignore_startup_parameters names (as a parameter of their own they would be ignored too).
 * 0, -EINVAL or -ENOMEM. */
static int take_options(struct client *c, const char *options)
{
    struct param_set parsed;
    params_init(&parsed);
    int rc = params_parse_options(&parsed, options);
    for (int i = 0; rc == 0 && i < parsed.n; i++) {
        const struct param *p = &parsed.items[i];
        if (!config_list_contains(c->app->cfg->ignore_startup_parameters, p->name) &&
            params_set(&c->params, p->name, p->value) < 0)
            rc = -ENOMEM;
    }
    params_free(&parsed);
    return rc;
}

static void handle_login(struct client *c, const struct startup_packet *sp)
{
    struct sluice *app = c->app;
    const struct config *cfg = app->cfg;
    const char *user = codec_startup_get(sp, "user");
    const char *database = codec_startup_get(sp, "database");
    const char *replication = codec_startup_get(sp, "replication");
    if (!user || !user[0]) {
        client_fail(c, FAIL_NO_USER, "");
        return;
    }
    if (!database || !database[0])
        database = user;
    /* One block holds both names: user owns it (an idle client should be small). */
    size_t ulen = strlen(user) + 1, dlen = strlen(database) + 1;
    c->user = malloc(ulen + dlen);
    if (!c->user) {
        client_fail(c, FAIL_OUT_OF_MEMORY, "");
        return;
    }
    c->database = memcpy(c->user + ulen, database, dlen);
    memcpy(c->user, user, ulen);
    /* Postgres reads it as a boolean (any case) or "database": either kind of walsender
     * session needs a server of its own for the client's whole life, and its COPY BOTH stream
     * and replication commands are not something a pool can share (README, "Moving from
     * PgBouncer"). */
    if (replication && strcasecmp(replication, "false") != 0 && strcmp(replication, "0") != 0 &&
        strcasecmp(replication, "off") != 0 && strcasecmp(replication, "no") != 0) {
        client_fail(c, FAIL_REPLICATION_UNSUPPORTED, "");
        return;
    }
    if (app->phase != PHASE_RUNNING) {
        client_fail(c, FAIL_SHUTDOWN, "");
        return;
    }
    /* Who may use the admin console is checked only once the password is (client_login_ok):
     * refusing other names here, at once, would tell a stranger which names are admins. */
    c->admin = admin_is_console_db(database);
    /* An unknown database is told only after authentication (client_login_ok): before it, a
     * client without credentials could probe which database names exist. */
    for (int i = 0; i < sp->nparams; i++) {
        const char *name = sp->params[i].name;
        if (param_is_protocol_level(name) ||
            config_list_contains(cfg->ignore_startup_parameters, name))
            continue;
        if (!params_valid_name(name, strlen(name)) || strchr(name, '-')) {
            client_fail(c, FAIL_BAD_STARTUP, "invalid parameter name");
            return;
        }
        if (params_set(&c->params, name, sp->params[i].value) < 0) {
            client_fail(c, FAIL_OUT_OF_MEMORY, "");
            return;
        }
    }
    const char *options = codec_startup_get(sp, "options");
    if (options && !config_list_contains(cfg->ignore_startup_parameters, "options")) {
        int rc = take_options(c, options);
        if (rc < 0) {
            client_fail(c, rc == -ENOMEM ? FAIL_OUT_OF_MEMORY : FAIL_BAD_STARTUP,
                        rc == -ENOMEM ? "" : "cannot parse \"options\": use -c name=value pairs");
            return;
        }
    }
    client_set_state(c, CLIENT_AUTH);
    auth_start(c);
}

void client_send_welcome(struct client *c, const struct param_set *server_params)
{
    for (int i = 0; i < server_params->n; i++) {
        const struct param *p = &server_params->items[i];
        if (!params_is_reported(p->name))
            continue; /* a server's record also holds what sluice SET */
        const char *mine = params_get(&c->params, p->name);
        codec_put_parameter_status(&c->out, p->name, mine ? mine : p->value);
    }
    codec_put_backend_key(&c->out, c->cancel_pid, c->cancel_key);
    codec_put_ready(&c->out, 'I');
}

int client_count_for_db(const struct sluice *app, const char *database)
{
    int n = 0;
    struct list_node *node, *tmp;
    list_for_each(&app->pools, node, tmp)
    {
        const struct pool *p = container_of(node, struct pool, node);
        if (!p->is_admin && strcmp(p->db_name, database) == 0)
            n += p->waiting.count + p->idle_clients.count + p->active_clients.count;
    }
    return n;
}

int client_count_for_user(const struct sluice *app, const char *user)
{
    int n = 0;
    struct list_node *node, *tmp, *cn, *ctmp;
    list_for_each(&app->pools, node, tmp)
    {
        const struct pool *p = container_of(node, struct pool, node);
        const struct list *lists[] = {&p->waiting, &p->idle_clients, &p->active_clients};
        for (int i = 0; i < 3 && !p->is_admin; i++) {
            /* By each client's own name: a pool's user may be a database's forced user=. */
            list_for_each(lists[i], cn, ctmp)
                n += strcmp(container_of(cn, struct client, node)->user, user) == 0;
        }
    }
    return n;
}

/* DISABLE, max_db_client_connections and max_user_client_connections: PgBouncer's per-database
 * and per-user client caps. Checked once the password is (as max_client_conn), so a stranger
 * learns nothing of a database from them. True when c was refused. */
static bool login_refused_by_database_or_user(struct client *c, const struct db_entry *db)
{
    const struct config *cfg = c->app->cfg;
    char detail[320];
    if (admin_db_disabled(c->app, c->database)) {
        client_fail(c, FAIL_DATABASE_DISABLED, c->database);
        return true;
    }
    int64_t db_cap = db->max_db_client_connections > 0 ? db->max_db_client_connections
                                                       : cfg->max_db_client_connections;
    int db_clients = db_cap > 0 ? client_count_for_db(c->app, c->database) : 0;
    if (db_cap > 0 && db_clients >= db_cap) {
        snprintf(detail, sizeof(detail),
                 "database \"%s\" has %d clients, max_db_client_connections = %lld", c->database,
                 db_clients, (long long)db_cap);
        client_fail(c, FAIL_DB_CLIENT_CAP, detail);
        return true;
    }
    const struct user_entry *u = config_find_user(cfg, c->user);
    int64_t user_cap = u && u->max_user_client_connections > 0 ? u->max_user_client_connections
                                                               : cfg->max_user_client_connections;
    int user_clients = user_cap > 0 ? client_count_for_user(c->app, c->user) : 0;
    if (user_cap > 0 && user_clients >= user_cap) {
        snprintf(detail, sizeof(detail),
                 "user \"%s\" has %d clients, max_user_client_connections = %lld", c->user,
                 user_clients, (long long)user_cap);
        client_fail(c, FAIL_USER_CLIENT_CAP, detail);
        return true;
    }
    return false;
}

void client_login_ok(struct client *c)
{
    struct sluice *app = c->app;
    /* Counted here, once the password is checked: logins in progress have their own cap
     * (make_room_for_a_login), so strangers who never finish cannot fill max_client_conn. */
    if (logged_in_clients(app) >= app->cfg->max_client_conn) {
        char detail[96];
        snprintf(detail, sizeof(detail), "max_client_conn (%lld) reached",
                 (long long)app->cfg->max_client_conn);
        client_fail(c, FAIL_MAX_CLIENT_CONN, detail);
        return;
    }
    if (c->admin) {
        if (!config_list_contains(app->cfg->admin_users, c->user) &&
            !config_list_contains(app->cfg->stats_users, c->user)) {
            client_fail(c, FAIL_ADMIN_DENIED, "");
            return;
        }
        c->pool = pool_get(app, NULL, c->user, c->database);
        if (!c->pool || cancel_register(app->cancel_map, c) < 0) {
            client_fail(c, FAIL_OUT_OF_MEMORY, "");
            return;
        }
        codec_put_auth_request(&c->out, 0, NULL, 0); /* AuthenticationOk */
        log_client(LOG_INFO, c, "admin console login");
        admin_send_welcome(c);
        client_set_state(c, CLIENT_IDLE);
        client_send(c);
        return;
    }
    const struct db_entry *db = config_find_db(app->cfg, c->database);
    if (!db) {
        client_fail(c, FAIL_UNKNOWN_DATABASE, c->database);
        return;
    }
    if (login_refused_by_database_or_user(c, db))
        return;
    struct budget *b = budget_match(app, params_get(&c->params, "application_name"), c->user,
                                    &c->addr);
    if (b && b->max_clients > 0 && b->clients >= b->max_clients) {
        char detail[160];
        snprintf(detail, sizeof(detail), "budget \"%s\" has max_clients (%d) connected", b->name,
                 b->max_clients);
        client_fail(c, FAIL_BUDGET_CLIENTS, detail);
        return;
    }
    c->pool = pool_get(app, db, c->user, c->database);
    if (!c->pool || cancel_register(app->cancel_map, c) < 0) {
        client_fail(c, FAIL_OUT_OF_MEMORY, "");
        return;
    }
    c->budget = b;
    if (b)
        b->clients++;
    codec_put_auth_request(&c->out, 0, NULL, 0); /* AuthenticationOk */
    if (app->cfg->log_connections)
        log_client(LOG_INFO, c, "login ok (%s mode)", pool_mode_name(c->pool->mode));
    if (c->pool->have_welcome &&
        params_known_good(&c->params, &c->pool->welcome, &c->pool->accepted)) {
        client_welcome_from_pool(c);
        return;
    }
    /* The first client of a pool waits for a server to learn what to report (server_version,
     * encodings, ...), as every later client gets it from the pool. So does a client with
     * startup parameters no server has accepted yet: Postgres refuses a bad one at login
     * (42704 for an unknown name, 22023 for a bad value), and so must sluice, before the client
     * is told it is in. */
    client_set_state(c, CLIENT_LOGIN_WAIT);
    client_send(c);
    if (c->state == CLIENT_LOGIN_WAIT)
        pool_lease(c->pool, c);
}

/* Logged in: what it has now is what Postgres would reset its parameters to. 0 or -ENOMEM. */
static int keep_login_params(struct client *c)
{
    if (c->params.n == 0 || c->login_params)
        return 0;
    c->login_params = malloc(sizeof(*c->login_params));
    if (!c->login_params)
        return -ENOMEM;
    params_init(c->login_params);
    return params_copy(c->login_params, &c->params);
}

void client_welcome_from_pool(struct client *c)
{
    if (keep_login_params(c) < 0) {
        client_fail(c, FAIL_OUT_OF_MEMORY, "");
        return;
    }
    client_send_welcome(c, &c->pool->welcome);
    client_set_state(c, CLIENT_IDLE);
    client_send(c);
    if (c->state == CLIENT_IDLE && buf_unframed(&c->in) >= CODEC_HEADER_LEN)
        client_on_data(c);
}

/* Fingerprints are recomputed only when the parameters changed (their generation moved). */
static uint64_t want_fingerprint(struct client *c)
{
    uint32_t gen = c->params.generation + 1; /* +1: generation 0 must compute too */
    if (c->params_fp_gen != gen) {
        c->params_fp = params_fingerprint(&c->pool->welcome, &c->params);
        c->params_fp_gen = gen;
    }
    return c->params_fp;
}

static uint64_t have_fingerprint(struct server *s)
{
    uint32_t gen = s->params.generation + 1;
    if (s->params_fp_gen != gen) {
        s->params_fp = params_fingerprint(NULL, &s->params);
        s->params_fp_gen = gen;
    }
    return s->params_fp;
}

/* Queue the statements that give s the session c wants: each a Query of its own, so that one
 * that fails undoes no other. The count, or -1 when c was failed (out of memory). */
static int queue_sync(struct client *c, struct server *s)
{
    if (want_fingerprint(c) == have_fingerprint(s))
        return 0;
    struct msg_out sql;
    codec_out_init(&sql);
    int n = params_build_sync(&c->pool->welcome, &c->params, &s->params, &sql);
    if (sql.oom || params_note_sync(&s->params, &c->params) < 0) {
        codec_out_free(&sql);
        client_fail(c, FAIL_OUT_OF_MEMORY, "");
        return -1;
    }
    for (uint32_t at = 0; at < sql.len;) {
        const char *stmt = (const char *)sql.data + at;
        log_client(LOG_DEBUG, c, "S-%llu: %s", (unsigned long long)s->id, stmt);
        server_queue_internal(s, stmt);
        at += (uint32_t)strlen(stmt) + 1;
    }
    codec_out_free(&sql);
    return n;
}

void client_on_linked(struct client *c, struct server *s)
{
    bool login = c->state == CLIENT_LOGIN_WAIT;
    if (c->state == CLIENT_WAITING || c->state == CLIENT_WAITING_LAST)
        pool_record_wait(c->pool, sluice_now(c->app) - c->state_since_ms);
    s->last_bytes_ms = sluice_now(c->app); /* idle_transaction_timeout counts from the link */
    login_reset_clear(s); /* a former client's, if it left mid-reset */
    /* The first client of a pool is linked for its welcome: it too gets its own parameters
     * applied (in session mode it keeps this server for good). A login's role is SET even on a
     * server that has it, so that Postgres checks this login's right to it. (session_authorization
     * is reported, so never forgotten: whether it may be set depends on the pool's own login
     * user, a superuser, not on grants to the client.) */
    for (int i = 0; login && i < c->params.n; i++) {
        if (params_is_identity(c->params.items[i].name) &&
            params_forget(&s->params, c->params.items[i].name) < 0) {
            client_fail(c, FAIL_OUT_OF_MEMORY, "");
            return;
        }
    }
    int n = queue_sync(c, s);
    if (n < 0)
        return;
    if (login && n > 0) {
        client_set_state(c, CLIENT_LOGIN_SYNC); /* the welcome waits for the server's answer */
    } else {
        if (login && keep_login_params(c) < 0) {
            client_fail(c, FAIL_OUT_OF_MEMORY, "");
            return;
        }
        client_set_state(c, CLIENT_ACTIVE);
        if (login)
            client_send_welcome(c, c->pool->have_welcome ? &c->pool->welcome : &s->params);
    }
    relay_kick(s);
}

void client_login_refused(struct client *c, const char *sqlstate, const char *message)
{
    if (c->state != CLIENT_LOGIN_SYNC)
        return; /* the first refusal is the one Postgres would have given */
    if (c->app->cfg->log_pooler_errors)
        log_client(LOG_WARNING, c, "login refused by the server: %s (%s)", message, sqlstate);
    error_build(&c->out, FAIL_SERVER_LOGIN, message, sqlstate);
    client_set_state(c, CLIENT_LOGIN_REFUSED);
}

void client_login_synced(struct client *c, struct server *s)
{
    if (c->state == CLIENT_LOGIN_REFUSED) {
        /* the server is clean again (each SET was its own transaction); it goes back */
        server_client_gone(s);
        client_set_state(c, CLIENT_CLOSING);
        buf_release(&c->in);
        client_send(c);
        return;
    }
    /* The client is told what the server reports, and later syncs compare like with like. */
    if (params_take_reported_spelling(&c->params, &s->params) < 0 ||
        params_note_accepted(&c->pool->accepted, &c->params, 64) < 0 || keep_login_params(c) < 0) {
        client_fail(c, FAIL_OUT_OF_MEMORY, "");
        return;
    }
    client_set_state(c, CLIENT_ACTIVE);
    client_send_welcome(c, c->pool->have_welcome ? &c->pool->welcome : &s->params);
}

/* ---- messages by state ---- */

static void read_and_handle(struct client *c);

/* The handshake goes on whenever the socket is ready the way OpenSSL asked for. */
static void tls_step(struct client *c)
{
    char why[400];
    switch (tls_handshake(c->io.ssl, "client", why, sizeof(why))) {
    case TLS_STEP_WANT_READ:
        sockio_want(&c->io, UV_READABLE);
        return;
    case TLS_STEP_WANT_WRITE:
        sockio_want(&c->io, UV_WRITABLE);
        return;
    case TLS_STEP_FAILED:
        log_client(LOG_INFO, c, "%s", why);
        client_close(c, NULL);
        return;
    case TLS_STEP_DONE:
        break;
    }
    if (log_enabled(LOG_DEBUG)) {
        char desc[128];
        tls_describe(c->io.ssl, desc, sizeof(desc));
        log_client(LOG_DEBUG, c, "TLS established: %s", desc);
    }
    client_set_state(c, CLIENT_STARTUP);
    relay_client_interest(c);
    if (sockio_pending(&c->io) > 0)
        read_and_handle(c);
}

/* Protocol section 55.2.10: answer 'S', then the TLS handshake runs on the same socket. Bytes
 * that arrived after the SSLRequest came in the clear before TLS: taking them as part of the
 * encrypted session would let a man in the middle inject them (CVE-2021-23214), so they end
 * the connection. */
static void start_tls(struct client *c)
{
    if (!buf_is_empty(&c->in)) {
        client_fail(c, FAIL_PROTOCOL_VIOLATION, "received unencrypted data after SSL request");
        return;
    }
    SSL *ssl = tls_client_new(c->io.fd);
    if (!ssl) {
        client_close(c, "cannot start a TLS session");
        return;
    }
    codec_put_u8(&c->out, 'S');
    client_send(c);
    if (c->state != CLIENT_STARTUP || c->out_pos < c->out.len) {
        /* one byte on a fresh socket: not written means the connection is gone */
        SSL_free(ssl);
        client_close(c, "cannot answer the SSLRequest");
        return;
    }
    c->io.ssl = ssl;
    buf_release(&c->in);
    client_set_state(c, CLIENT_TLS_HANDSHAKE);
    tls_step(c);
}

static void handle_startup_bytes(struct client *c)
{
    for (;;) {
        struct buf *b = &c->in;
        uint32_t total;
        enum frame_result fr = codec_frame_startup(b->data + b->scan, buf_unframed(b), &total);
        if (fr == FRAME_NEED_MORE)
            return;
        if (fr == FRAME_BAD_LENGTH) {
            client_fail(c, FAIL_BAD_STARTUP, "length outside 8..10000 bytes");
            return;
        }
        if (buf_unframed(b) < total)
            return;
        /* Parse a copy and consume the packet first: the login it starts may go on to read the
         * client's next message from the same buffer. */
        uint8_t packet[CODEC_MAX_STARTUP_LEN];
        memcpy(packet, b->data + b->scan, total);
        b->scan += total;
        buf_consume(b, total);
        struct startup_packet sp;
        codec_parse_startup(packet, total, &sp);
        switch (sp.kind) {
        case STARTUP_SSL_REQUEST:
        case STARTUP_GSSENC_REQUEST:
            if (sp.kind == STARTUP_SSL_REQUEST && c->io.ssl) {
                client_fail(c, FAIL_PROTOCOL_VIOLATION, "SSLRequest on an encrypted connection");
                return;
            }
            if (sp.kind == STARTUP_SSL_REQUEST && tls_client_mode() != SSLMODE_DISABLE &&
                c->addr.sa.sa_family != AF_UNIX) {
                start_tls(c);
                return;
            }
            /* Protocol section 55.2.10: 'N' and the client goes on unencrypted (or gives up). */
            codec_put_u8(&c->out, 'N');
            client_send(c);
            if (c->state != CLIENT_STARTUP)
                return;
            continue;
        case STARTUP_CANCEL:
            /* Closed once the cancel is handled (at once unless passed on to a backend). */
            cancel_request(c, sp.cancel_pid, sp.cancel_key);
            return;
        case STARTUP_BAD_PROTOCOL: {
            char version[32];
            snprintf(version, sizeof(version), "%u.%u", sp.code >> 16, sp.code & 0xffff);
            client_fail(c, FAIL_UNSUPPORTED_PROTOCOL, version);
            return;
        }
        case STARTUP_MALFORMED:
            client_fail(c, FAIL_BAD_STARTUP, "malformed packet");
            return;
        case STARTUP_V3:
            handle_login(c, &sp);
            return;
        }
    }
}

static void handle_auth_bytes(struct client *c)
{
    struct buf *b = &c->in;
    uint8_t type;
    uint32_t body_len;
    enum frame_result fr =
        codec_frame_header(b->data + b->scan, buf_unframed(b), 8192, &type, &body_len);
    if (fr == FRAME_NEED_MORE)
        return;
    if (fr == FRAME_BAD_LENGTH) {
        client_fail(c, FAIL_PROTOCOL_VIOLATION, "bad length in authentication message");
        return;
    }
    uint32_t whole = CODEC_HEADER_LEN + body_len;
    if (buf_unframed(b) < whole)
        return;
    uint8_t body[8192];
    memcpy(body, b->data + b->scan + CODEC_HEADER_LEN, body_len);
    b->scan += whole;
    buf_consume(b, whole);
    auth_on_message(c, type, body, body_len);
}

void client_on_data(struct client *c)
{
    switch (c->state) {
    case CLIENT_STARTUP:
        handle_startup_bytes(c);
        break;
    case CLIENT_AUTH:
        handle_auth_bytes(c);
        break;
    case CLIENT_IDLE: {
        if (buf_unframed(&c->in) < CODEC_HEADER_LEN)
            break;
        uint8_t type = c->in.data[c->in.scan];
        if (type == 'X') {
            client_close(c, NULL);
            return;
        }
        if (c->admin) {
            admin_on_data(c);
            return;
        }
        if (!codec_frontend_type_known(type)) {
            char detail[64];
            snprintf(detail, sizeof(detail), "unexpected message type 0x%02x", type);
            client_fail(c, FAIL_PROTOCOL_VIOLATION, detail);
            return;
        }
        if (!sluice_serving(c->app)) {
            client_fail(c, FAIL_SHUTDOWN, ""); /* a new request during shutdown */
            return;
        }
        client_set_state(c, CLIENT_WAITING);
        c->wait_notified = false;
        pool_lease(c->pool, c);
        return;
    }
    default:
        break;
    }
    /* (a TLS handshake sets its own interest: what OpenSSL asked for) */
    if (c->state != CLIENT_CLOSED && c->state != CLIENT_ACTIVE &&
        c->state != CLIENT_TLS_HANDSHAKE)
        relay_client_interest(c);
}

/* Read and handle what a client outside the relay sent. With TLS one socket event can leave
 * decrypted bytes inside OpenSSL (SSL_pending) that no later event announces (the poll is
 * level-triggered on the socket, not on OpenSSL's buffer): read on while there are some and the
 * client is still in a state that reads here. */
static void read_and_handle(struct client *c)
{
    for (;;) {
        int n = client_read(c);
        if (n < 0)
            return;
        client_on_data(c);
        /* A client that said all it had (a startup packet, a password) holds no read buffer
         * while it waits: an idle client must cost a few hundred bytes, not a 16 kB block. */
        buf_detach_if_empty(&c->in);
        if (n == 0 || !c->io.ssl || sockio_pending(&c->io) <= 0)
            return;
        if (c->state != CLIENT_STARTUP && c->state != CLIENT_AUTH && c->state != CLIENT_IDLE)
            return;
    }
}

static void on_client_io(struct sockio *io, int status, int events)
{
    struct client *c = io->owner;
    if (status < 0) {
        client_close(c, sockio_poll_error(io, status));
        return;
    }
    if (c->state == CLIENT_TLS_HANDSHAKE) {
        tls_step(c);
        return;
    }
    if (events & UV_WRITABLE) {
        relay_client_writable(c);
        if (c->state == CLIENT_CLOSED)
            return;
    }
    if (!(events & (UV_READABLE | UV_DISCONNECT)))
        return;
    switch (c->state) {
    case CLIENT_ACTIVE:
    case CLIENT_LOGIN_SYNC:
    case CLIENT_LOGIN_REFUSED:
        relay_client_readable(c);
        return;
    case CLIENT_CANCEL_WAIT: /* not read: Postgres reads nothing after a CancelRequest */
    case CLIENT_CLOSING:
    case CLIENT_CLOSED:
        return;
    default:
        read_and_handle(c);
        return;
    }
}

/* Step over the whole message at *pos of a queued client's buffer (nothing of it is framed yet).
 * False when no whole message is there. */
static bool next_queued_message(const struct buf *b, uint32_t *pos, uint8_t *type)
{
    uint32_t body_len;
    if (!b->data || codec_frame_header(b->data + *pos, b->wpos - *pos, UINT32_MAX, type,
                                       &body_len) != FRAME_OK)
        return false;
    if (b->wpos - *pos - CODEC_HEADER_LEN < body_len)
        return false;
    *pos += CODEC_HEADER_LEN + body_len;
    return true;
}

/* A queued client sent Terminate after its request: nothing more may come (protocol 55.2.4). */
static bool queued_terminate(const struct client *c)
{
    uint32_t pos = c->in.scan;
    uint8_t type;
    while (next_queued_message(&c->in, &pos, &type))
        if (type == 'X')
            return true;
    return false;
}

/* Drop the first request of a queued client (it ends with a Query, Sync or FunctionCall) and
 * answer it with f and ReadyForQuery, as the server would have; the session goes on. False,
 * changing nothing, when that request is not whole yet. */
static bool answer_queued_request(struct client *c, enum failure f, const char *detail)
{
    struct buf *b = &c->in;
    uint32_t pos = b->scan;
    uint8_t type;
    bool complete = false;
    while (!complete && next_queued_message(b, &pos, &type))
        complete = type == 'Q' || type == 'S' || type == 'F';
    if (!complete)
        return false;
    uint32_t n = pos - b->scan;
    b->scan += n;
    buf_consume(b, n);
    if (c->app->cfg->log_pooler_errors)
        log_client(LOG_WARNING, c, "%s: %s", failure_name(f), detail);
    error_build(&c->out, f, detail, NULL);
    codec_put_ready(&c->out, 'I');
    client_set_state(c, CLIENT_IDLE);
    client_send(c);
    if (c->state == CLIENT_IDLE && buf_unframed(&c->in) >= CODEC_HEADER_LEN)
        client_on_data(c);
    return true;
}

void client_wait_timed_out(struct client *c, enum failure ends_request,
                           enum failure ends_session, const char *message)
{
    if (c->state != CLIENT_WAITING || !answer_queued_request(c, ends_request, message))
        client_fail(c, ends_session, message);
}

void client_cancel_queued(struct client *c)
{
    /* A request not yet whole is being read, and Postgres ignores a cancel then (postgres.c:
     * DoingCommandRead). */
    if (!answer_queued_request(c, FAIL_QUERY_CANCELED, ""))
        log_client(LOG_DEBUG, c, "cancel request while its request is not whole yet: ignored");
}

/* idle_transaction_timeout: a client that holds a server which waits for it and sends nothing.
 * PgBouncer applies it to every client linked to a server; here the server must be waiting for
 * the client: idle in a transaction, or in the middle of a request (part of a message,
 * extended-protocol messages without their Sync, COPY data). A request the server is still
 * working on is query_timeout's. */
static void check_server_held_idle(struct client *c, struct server *s, uint64_t now,
                                   uint64_t limit)
{
    enum pair_wait w = relay_pair_wait(c, s);
    if (w == PAIR_NO_WAIT || now - s->last_bytes_ms < limit)
        return;
    char detail[96];
    if (w == PAIR_WAIT_TRANSACTION) {
        snprintf(detail, sizeof(detail), "%.1f s", (double)limit / 1000);
        client_fail(c, FAIL_IDLE_TRANSACTION_TIMEOUT, detail);
        return;
    }
    snprintf(detail, sizeof(detail), "%.1f s, %s", (double)limit / 1000,
             w == PAIR_WAIT_MESSAGE ? "in the middle of a message"
             : w == PAIR_WAIT_SYNC  ? "after extended-protocol messages without a Sync"
                                    : "during COPY FROM STDIN");
    client_fail(c, FAIL_CLIENT_STALLED, detail);
}

void client_check_timeouts(struct client *c, uint64_t now)
{
    const struct config *cfg = c->app->cfg;
    char detail[64];
    switch (c->state) {
    case CLIENT_STARTUP:
    case CLIENT_TLS_HANDSHAKE:
        /* Stalled before its startup packet while logins are over their cap: no newcomer needs
         * to arrive for it to give way. */
        if (logins_over_cap(c->app) && gives_way(c, CLIENT_STARTUP, now)) {
            evict_login(c);
            break;
        }
        if (cfg->client_startup_timeout > 0 &&
            now - c->connect_ms >= (uint64_t)cfg->client_startup_timeout) {
            snprintf(detail, sizeof(detail), "%.1f s (client_startup_timeout)",
                     (double)cfg->client_startup_timeout / 1000);
            client_fail(c, FAIL_LOGIN_TIMEOUT, detail);
            break;
        }
        /* fall through */
    case CLIENT_AUTH:
        if (cfg->client_login_timeout > 0 &&
            now - c->connect_ms >= (uint64_t)cfg->client_login_timeout) {
            snprintf(detail, sizeof(detail), "%.1f s", (double)cfg->client_login_timeout / 1000);
            client_fail(c, FAIL_LOGIN_TIMEOUT, detail);
        }
        break;
    case CLIENT_IDLE: {
        /* The pool's timeouts: [users] over [databases] over the main section. */
        int64_t idle_limit = c->pool->timeouts.client_idle_timeout;
        if (idle_limit > 0 && now - c->state_since_ms >= (uint64_t)idle_limit) {
            snprintf(detail, sizeof(detail), "%.1f s", (double)idle_limit / 1000);
            client_fail(c, FAIL_CLIENT_IDLE_TIMEOUT, detail);
        }
        break;
    }
    case CLIENT_ACTIVE: {
        struct server *s = c->server;
        const struct entry_timeouts *t = &c->pool->timeouts;
        if (t->query_timeout > 0 && s && s->inflight > 0 && !s->timeout_cancel_sent &&
            now - s->query_start_ms >= (uint64_t)t->query_timeout) {
            /* Cancel rather than disconnect: the client gets 57014 from Postgres and keeps its
             * session. */
            s->timeout_cancel_sent = true;
            if (cancel_server(c->app, s) == 0)
                log_client(LOG_WARNING, c, "query running longer than query_timeout (%lld ms): "
                                           "cancelled",
                           (long long)t->query_timeout);
            break;
        }
        /* transaction_timeout: the whole transaction, busy or idle, from its first request (a
         * statement outside a transaction block is one); as PgBouncer's, and Postgres 17's. */
        if (t->transaction_timeout > 0 && s && (s->txn_status != 'I' || s->inflight > 0) &&
            now - s->xact_start_ms >= (uint64_t)t->transaction_timeout) {
            snprintf(detail, sizeof(detail), "%.1f s", (double)t->transaction_timeout / 1000);
            client_fail(c, FAIL_TRANSACTION_TIMEOUT, detail);
            break;
        }
        if (t->idle_transaction_timeout > 0 && s)
            check_server_held_idle(c, s, now, (uint64_t)t->idle_transaction_timeout);
        break;
    }
    case CLIENT_CLOSING:
        /* A client that does not read its last error does not get to keep the socket. */
        if (now - c->state_since_ms >= 5000)
            client_close(c, "did not read its error message");
        break;
    default:
        break;
    }
}
