/* server: one backend connection (see server.h).
 *
 * Login is libpq's: PQconnectStartParams + PQconnectPoll under the connection's one poll handle,
 * which brings SCRAM, TLS, several hosts and target_session_attrs. After CONNECTION_OK sluice
 * speaks the protocol itself on libpq's socket (through libpq's SSL object when TLS is on); the
 * PGconn lives as long as the server, for PQgetCancel and the final PQfinish.
 *
 *   CONNECTING --ok--> IDLE <--> ACTIVE (linked to a client)
 *        |              ^  \        |
 *        |              |   \       v  client left or released with work to do
 *        |              +---- RESETTING (sluice's own query: rollback, reset, parameter sync)
 *        |                          ^
 *        |                          |  the orphaned query is over
 *        |                      DRAINING <-- ACTIVE: the client left mid-query (link.c's
 *        |                               decision), which was cancelled (or, after its
 *        |                               Terminate, left to finish); its replies are dropped
 *        +--failed--> CLOSED <-- any state on error, timeout or shutdown
 *
 *   IDLE or released --closed to make room under a cap--> LEAVING --socket closed--> CLOSED
 *                         (Terminate sent; it counts against the caps until the backend is gone)
 */
#include "server.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "budget.h"
#include "cancel.h"
#include "client.h"
#include "link.h"
#include "log.h"
#include "passthrough.h"
#include "pool.h"
#include "pool_mode.h"
#include "resolver.h"
#include "server_login.h"
#include "sluice.h"

static const char *const state_names[] = {
    [SERVER_CONNECTING] = "connecting", [SERVER_IDLE] = "idle",
    [SERVER_ACTIVE] = "active",         [SERVER_RESETTING] = "resetting",
    [SERVER_DRAINING] = "draining",     [SERVER_LEAVING] = "leaving",
    [SERVER_CLOSED] = "closed",
};

#define SERVER_LEAVING_WAIT_MS 2000

static void close_now(struct server *s);

const char *server_state_name(enum server_state st)
{
    return state_names[st];
}

void log_server(enum log_level level, const struct server *s, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    char who[384];
    snprintf(who, sizeof(who), "S-%llu %s/%s", (unsigned long long)s->id, s->pool->db_name,
             s->pool->user_name);
    va_list ap;
    va_start(ap, fmt);
    log_msg_as(level, who, fmt, ap);
    va_end(ap);
}

static struct list *list_for(struct server *s, enum server_state st)
{
    struct pool *p = s->pool;
    switch (st) {
    case SERVER_CONNECTING:
        return &p->connecting;
    case SERVER_IDLE:
        return &p->idle;
    case SERVER_ACTIVE:
        return &p->active;
    case SERVER_RESETTING:
    case SERVER_DRAINING: /* on its way back: counted with the resetting ones */
        return &p->resetting;
    case SERVER_LEAVING:
        return &p->leaving;
    case SERVER_CLOSED:
        return &p->app->dead_servers;
    }
    return NULL;
}

/* Allowed transitions; anything else is a bug in sluice, not bad input. */
static bool transition_ok(enum server_state from, enum server_state to)
{
    if (to == SERVER_CLOSED)
        return from != SERVER_CLOSED;
    switch (from) {
    case SERVER_CONNECTING:
        return to == SERVER_IDLE || to == SERVER_ACTIVE;
    case SERVER_IDLE:
        return to == SERVER_ACTIVE || to == SERVER_RESETTING;
    case SERVER_ACTIVE:
        /* ACTIVE -> ACTIVE: released and handed straight to the next waiting client. */
        return to == SERVER_IDLE || to == SERVER_RESETTING || to == SERVER_ACTIVE ||
               to == SERVER_DRAINING;
    case SERVER_RESETTING:
        return to == SERVER_IDLE || to == SERVER_ACTIVE;
    case SERVER_DRAINING:
        return to == SERVER_RESETTING;
    case SERVER_LEAVING:
    case SERVER_CLOSED:
        return false;
    }
    return false;
}

void server_set_state(struct server *s, enum server_state next)
{
    if (!transition_ok(s->state, next)) {
        log_server(LOG_ERROR, s, "BUG: server state %s -> %s", server_state_name(s->state),
                   server_state_name(next));
        abort();
    }
    list_remove(list_for(s, s->state), &s->node);
    s->state = next;
    s->state_since_ms = sluice_now(s->pool->app);
    if (next == SERVER_IDLE && s->pool->app->cfg->server_round_robin)
        list_append(list_for(s, next), &s->node);
    else if (next == SERVER_IDLE)
        list_prepend(list_for(s, next), &s->node); /* LIFO: the warmest server first */
    else
        list_append(list_for(s, next), &s->node);
}


/* Keywords for PQconnectStartParams: the database entry's, with dbname, user and password
 * filled in where the entry leaves them to the client (room is left for resolver_apply). */
#define MAX_KEYWORDS 48
static int build_conninfo(struct pool *p, const struct db_entry *db, const char **kw,
                          const char **val, const char **user_out, bool *password_out)
{
    const struct config *cfg = p->app->cfg;
    int n = 0;
    bool has_dbname = false, has_password = false;
    const char *user = NULL;
    /* server_tls_* become libpq's keywords unless the database entry sets its own */
    const char *tls_kw[4] = {"sslmode", "sslrootcert", "sslcert", "sslkey"};
    const char *tls_val[4] = {sslmode_name(cfg->server_tls_sslmode), cfg->server_tls_ca_file,
                              cfg->server_tls_cert_file, cfg->server_tls_key_file};
    for (int i = 0; i < db->nkeys && n < MAX_KEYWORDS - 13; i++) {
        kw[n] = db->pq_keywords[i];
        val[n] = db->pq_values[i];
        has_dbname |= strcmp(kw[n], "dbname") == 0;
        has_password |= strcmp(kw[n], "password") == 0;
        if (strcmp(kw[n], "user") == 0)
            user = val[n];
        for (int t = 0; t < 4; t++) {
            if (strcmp(kw[n], tls_kw[t]) == 0)
                tls_val[t] = NULL;
        }
        n++;
    }
    for (int t = 0; t < 4; t++) {
        if (tls_val[t] && tls_val[t][0]) {
            kw[n] = tls_kw[t];
            val[n++] = tls_val[t];
        }
    }
    if (!has_dbname) {
        kw[n] = "dbname";
        val[n++] = p->target_db;
    }
    if (!user) {
        user = p->user_name;
        kw[n] = "user";
        val[n++] = user;
    }
    if (!has_password) {
        /* Log in upstream with the user's own password when sluice knows it in plain. */
        const struct auth_entry *a = config_find_auth(cfg, user);
        if (a && strncmp(a->secret, "md5", 3) != 0 && strncmp(a->secret, "SCRAM-SHA-256$", 14) != 0) {
            kw[n] = "password";
            val[n++] = a->secret;
            has_password = true;
        }
    }
    /* No application_name of sluice's own: it is the backend's reset value, and a client that
     * sent none must read '' after RESET ALL or DISCARD ALL, as it does from Postgres. */
    kw[n] = NULL;
    val[n] = NULL;
    *user_out = user;
    *password_out = has_password;
    return n;
}

/* FNV-1a over the keywords and values libpq is given: servers made from the same settings
 * have the same fingerprint, and a reload that changes any of them is seen. */
static uint64_t conninfo_fingerprint(const char *const *kw, const char *const *val)
{
    uint64_t h = 14695981039346656037ULL;
    for (int i = 0; kw[i]; i++) {
        const char *parts[] = {kw[i], val[i]};
        for (int j = 0; j < 2; j++) {
            for (const char *c = parts[j]; *c; c++)
                h = (h ^ (unsigned char)*c) * 1099511628211ULL;
            h = (h ^ 0xff) * 1099511628211ULL; /* a separator no keyword or value contains */
        }
    }
    return h;
}

void server_retire_changed(struct pool *p)
{
    const struct db_entry *db = config_find_db(p->app->cfg, p->db_name);
    if (!db || p->is_admin)
        return;
    const char *kw[MAX_KEYWORDS], *val[MAX_KEYWORDS];
    const char *user = NULL;
    bool has_password = false;
    build_conninfo(p, db, kw, val, &user, &has_password);
    uint64_t now_fp = conninfo_fingerprint(kw, val);
    const char *why = "connection settings changed by reload";
    struct list_node *n, *tmp;
    list_for_each(&p->idle, n, tmp)
    {
        struct server *s = container_of(n, struct server, node);
        if (s->conninfo_fp != now_fp)
            server_close(s, why);
    }
    int busy = 0;
    struct list *in_use[] = {&p->connecting, &p->active, &p->resetting};
    for (size_t i = 0; i < sizeof in_use / sizeof in_use[0]; i++) {
        list_for_each(in_use[i], n, tmp)
        {
            struct server *s = container_of(n, struct server, node);
            if (s->conninfo_fp != now_fp && !s->close_when_free) {
                s->close_when_free = true;
                busy++;
            }
        }
    }
    if (busy > 0)
        log_msg(LOG_INFO, "pool %s/%s: %d busy servers close when released (%s)", p->db_name,
                p->user_name, busy, why);
}

/* load_balance_hosts = round-robin (PgBouncer's default): libpq tries a host list in order and
 * goes past a host that fails, so starting each new connection one host further spreads the
 * servers over the list and still skips a host that is down. The host, hostaddr and port lists
 * move together (a single port serves every host and stays). */
#define HOST_LIST_MAX 1024

static int list_items(const char *v)
{
    int n = 1;
    for (; *v; v++)
        n += *v == ',';
    return n;
}

static int keyword_index(const char *const *kw, int n, const char *name)
{
    for (int i = n - 1; i >= 0; i--) { /* the last one wins, as in libpq */
        if (strcmp(kw[i], name) == 0)
            return i;
    }
    return -1;
}

/* v's items from the shift-th on, then the ones before it; false if out is too small. */
static bool rotate_list(const char *v, int shift, char *out, size_t outlen)
{
    const char *start = v;
    for (int i = 0; i < shift; i++)
        start = strchr(start, ',') + 1;
    size_t head = (size_t)(start - v) - 1, tail = strlen(start);
    if (tail + 1 + head + 1 > outlen)
        return false;
    memcpy(out, start, tail);
    out[tail] = ',';
    memcpy(out + tail + 1, v, head);
    out[tail + 1 + head] = '\0';
    return true;
}

static void rotate_hosts(struct pool *p, const struct db_entry *db, const char **kw,
                         const char **val, int n, char store[3][HOST_LIST_MAX])
{
    static const char *const lists[3] = {"host", "hostaddr", "port"};
    int at[3], hosts = 0;
    if (db->load_balance_hosts != LOAD_BALANCE_ROUND_ROBIN)
        return;
    for (int i = 0; i < 3; i++) {
        at[i] = keyword_index(kw, n, lists[i]);
        if (at[i] >= 0 && list_items(val[at[i]]) > hosts)
            hosts = list_items(val[at[i]]);
    }
    if (hosts < 2)
        return;
    for (int i = 0; i < 3; i++) {
        int items = at[i] >= 0 ? list_items(val[at[i]]) : hosts;
        if (items != hosts && !(i == 2 && items == 1))
            return; /* lists libpq itself will refuse: leave them for its message */
    }
    int shift = (int)(p->next_host++ % (unsigned)hosts);
    if (shift == 0)
        return;
    for (int i = 0; i < 3; i++) {
        if (at[i] < 0 || list_items(val[at[i]]) != hosts)
            continue;
        if (!rotate_list(val[at[i]], shift, store[i], HOST_LIST_MAX))
            return;
    }
    for (int i = 0; i < 3; i++) {
        if (at[i] >= 0 && list_items(val[at[i]]) == hosts)
            val[at[i]] = store[i];
    }
}

static bool md5_secret_in_auth_file(const struct config *cfg, const char *user,
                                    struct passthrough_keys *out)
{
    const struct auth_entry *a = config_find_auth(cfg, user);
    if (!a || strncmp(a->secret, "md5", 3) != 0 || strlen(a->secret) != 35)
        return false;
    memset(out, 0, sizeof(*out));
    out->kind = PASSTHROUGH_MD5;
    memcpy(out->md5, a->secret, 36);
    return true;
}

/* Log in, by libpq or by passthrough, with the entry's keywords and, when its host names were
 * resolved, their addresses (r). s may be CLOSED on return (failed at once, reported). */
static void start_login(struct server *s, const struct resolver *r)
{
    struct pool *p = s->pool;
    struct sluice *app = p->app;
    const struct db_entry *db = config_find_db(app->cfg, p->db_name);
    if (!db) {
        server_connect_failed(s, "the database is no longer configured");
        return;
    }
    const char *kw[MAX_KEYWORDS], *val[MAX_KEYWORDS];
    const char *user = NULL;
    bool has_password = false;
    int n = build_conninfo(p, db, kw, val, &user, &has_password);
    if (r)
        resolver_apply(r, kw, val, &n);
    char rotated[3][HOST_LIST_MAX]; /* libpq and the passthrough login copy what they keep */
    rotate_hosts(p, db, kw, val, n, rotated);
    /* No password for this user, but a client proved it with a SCRAM (or md5) secret: log in
     * with what it proved; libpq would need the password. */
    /* An md5 secret in auth_file needs no client at all: it is what answers an md5 challenge
     * (PgBouncer logs in with it too, e.g. for a [databases] entry's forced user=). */
    const struct passthrough_keys *keys = has_password ? NULL : passthrough_find(user);
    struct passthrough_keys from_file;
    if (!has_password && !keys && md5_secret_in_auth_file(app->cfg, user, &from_file))
        keys = &from_file;
    if (keys) {
        char why[256];
        int started = server_login_start(s, kw, val, keys, why, sizeof(why));
        OPENSSL_cleanse(&from_file, sizeof(from_file)); /* the login keeps its own copy */
        if (started < 0) {
            server_connect_failed(s, why);
            return;
        }
        if (s->state != SERVER_CLOSED) /* else it failed at once (connect refused, no socket) */
            log_server(LOG_DEBUG, s, "connecting (passthrough login as \"%s\")", user);
        return;
    }
    s->conn = PQconnectStartParams(kw, val, 0);
    if (!s->conn || PQstatus(s->conn) == CONNECTION_BAD) {
        char msg[512];
        snprintf(msg, sizeof(msg), "%s",
                 s->conn ? PQerrorMessage(s->conn) : "out of memory starting a connection");
        msg[strcspn(msg, "\n")] = '\0';
        server_connect_failed(s, msg);
        return;
    }
    /* The only way libpq tells a failed login's SQLSTATE: in the text (libpq_failed). */
    PQsetErrorVerbosity(s->conn, PQERRORS_VERBOSE);
    if (sockio_open(&s->io, app->loop, PQsocket(s->conn), s, server_on_io) < 0) {
        server_connect_failed(s, "cannot watch the server socket");
        return;
    }
    /* libpq: after PQconnectStart, wait until the socket is writable, then call PQconnectPoll. */
    sockio_want(&s->io, UV_WRITABLE);
    log_server(LOG_DEBUG, s, "connecting");
}

static void on_server_resolved(struct resolver *r, void *owner)
{
    struct server *s = owner;
    s->resolving = NULL;
    if (resolver_error(r))
        server_connect_failed(s, resolver_error(r));
    else
        start_login(s, r);
    resolver_free(r);
}

struct server *server_connect(struct pool *p)
{
    struct sluice *app = p->app;
    const struct db_entry *db = config_find_db(app->cfg, p->db_name);
    if (!db) {
        pool_connect_failed(p, "the database is no longer configured");
        return NULL;
    }
    struct server *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->pool = p;
    s->id = ++app->next_id;
    s->txn_status = 'I';
    s->connect_start_ms = sluice_now(app);
    s->state_since_ms = s->connect_start_ms;
    s->io.fd = -1;
    s->io.cb = server_on_io;
    params_init(&s->params);
    stmt_map_init(&s->stmts);
    codec_out_init(&s->out);
    list_node_init(&s->node);
    /* From here it counts against the caps, resolving its host name included. */
    s->state = SERVER_CONNECTING;
    list_append(&p->connecting, &s->node);
    app->nservers++;

    const char *kw[MAX_KEYWORDS], *val[MAX_KEYWORDS];
    const char *user = NULL;
    bool has_password = false;
    build_conninfo(p, db, kw, val, &user, &has_password);
    s->conninfo_fp = conninfo_fingerprint(kw, val);
    char why[300];
    int r =
        resolver_start(app->loop, kw, val, on_server_resolved, s, &s->resolving, why, sizeof(why));
    if (r < 0)
        server_connect_failed(s, why);
    else if (r == 0)
        log_server(LOG_DEBUG, s, "resolving the host name off the loop");
    else
        start_login(s, NULL);
    return s->state == SERVER_CLOSED ? NULL : s;
}

static void login_done(struct server *s)
{
    const char *name;
    for (size_t i = 0; (name = params_reported_name(i)) != NULL; i++) {
        const char *v = PQparameterStatus(s->conn, name);
        if (v && params_set(&s->params, name, v) < 0) {
            server_close(s, "out of memory");
            return;
        }
    }
    s->backend_pid = PQbackendPID(s->conn);
    if (PQsslInUse(s->conn)) {
        s->io.ssl = PQsslStruct(s->conn, "OpenSSL");
        /* sluice retries a partial write from a buffer that may have grown or moved. */
        SSL_set_mode(s->io.ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    }
    server_logged_in(s);
}

void server_logged_in(struct server *s)
{
    s->connect_ms = sluice_now(s->pool->app);
    pool_connect_succeeded(s->pool);
    log_server(LOG_INFO, s, "connected to backend pid %d%s in %llu ms", s->backend_pid,
               s->io.ssl ? " (TLS)" : "",
               (unsigned long long)(s->connect_ms - s->connect_start_ms));
    pool_server_ready(s);
}

/* Every pool reads its server's max_connections and reserved slots once (and again after a
 * reload) before its first server is handed out: NN% caps resolve against them and /health
 * reports the pool's share of them. One text value, "max_connections reserved", so both login
 * paths read it the same way; reserved_connections exists from Postgres 16 on. */
const char server_probe_sql[] =
    "SELECT current_setting('max_connections') || ' ' || "
    "(current_setting('superuser_reserved_connections')::int + "
    "coalesce(current_setting('reserved_connections', true)::int, 0))";

bool server_needs_probe(const struct server *s)
{
    return s->pool->server_usable <= 0 || s->pool->probe_again;
}

void server_probe_store(struct pool *p, const char *value)
{
    int max_connections = 0, reserved = 0;
    if (sscanf(value, "%d %d", &max_connections, &reserved) != 2 || max_connections <= 0 ||
        reserved < 0 || reserved >= max_connections)
        return;
    p->server_max_connections = max_connections;
    p->server_reserved = reserved;
    p->server_usable = max_connections - reserved;
}

static void probe_failed(struct server *s, const char *why)
{
    char msg[256];
    snprintf(msg, sizeof(msg), "cannot read max_connections for NN%% caps: %.200s", why);
    msg[strcspn(msg, "\n")] = '\0';
    server_connect_failed(s, msg);
}

bool server_probe_answered(struct server *s)
{
    struct pool *p = s->pool;
    p->probe_again = false;
    if (p->server_usable <= 0) {
        if (budget_has_percent_caps(p)) {
            probe_failed(s, "no value returned");
            return false;
        }
        /* Only /health misses it: serve anyway. */
        log_server(LOG_WARNING, s,
                   "cannot read the server's max_connections; /health leaves its share out");
        return true;
    }
    log_server(LOG_INFO, s,
               "server allows %d connections besides superuser_reserved_connections "
               "(max_connections %d, %d reserved)",
               p->server_usable, p->server_max_connections, p->server_reserved);
    budget_log_cap(p);
    return true;
}

const char *server_connect_query(const struct server *s)
{
    const struct db_entry *db = config_find_db(s->pool->app->cfg, s->pool->db_name);
    return db && db->connect_query ? db->connect_query : NULL;
}

/* PgBouncer runs connect_query as part of the login: a server whose connect_query fails never
 * serves, and the pool backs off as after any failed login. */
void server_connect_query_failed(struct server *s, const char *message)
{
    char why[512];
    snprintf(why, sizeof(why), "connect_query failed: %s", message);
    why[strcspn(why, "\n")] = '\0';
    server_connect_failed(s, why);
}

static void login_query_failed(struct server *s, const char *why)
{
    if (s->login_query == LOGIN_QUERY_PROBE)
        probe_failed(s, why);
    else
        server_connect_query_failed(s, why);
}

static void start_login_query(struct server *s, enum login_query q)
{
    s->login_query = q;
    const char *sql = q == LOGIN_QUERY_PROBE ? server_probe_sql : server_connect_query(s);
    if (PQsetnonblocking(s->conn, 1) != 0 || !PQsendQuery(s->conn, sql)) {
        login_query_failed(s, PQerrorMessage(s->conn));
        return;
    }
    sockio_want(&s->io, PQflush(s->conn) == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
}

/* libpq's login is over, or one of sluice's login queries: run the next one, or serve. */
static void login_query_next(struct server *s)
{
    if (s->login_query == LOGIN_QUERY_NONE && server_needs_probe(s)) {
        start_login_query(s, LOGIN_QUERY_PROBE);
        return;
    }
    if (s->login_query != LOGIN_QUERY_CONNECT && server_connect_query(s)) {
        start_login_query(s, LOGIN_QUERY_CONNECT);
        return;
    }
    s->login_query = LOGIN_QUERY_NONE;
    sockio_want(&s->io, 0);
    login_done(s);
}

static void login_query_step(struct server *s)
{
    int f = PQflush(s->conn);
    if (f < 0 || !PQconsumeInput(s->conn)) {
        login_query_failed(s, PQerrorMessage(s->conn));
        return;
    }
    while (!PQisBusy(s->conn)) {
        PGresult *res = PQgetResult(s->conn);
        if (!res) {
            if (s->login_query == LOGIN_QUERY_PROBE && !server_probe_answered(s))
                return;
            login_query_next(s);
            return;
        }
        ExecStatusType st = PQresultStatus(res);
        bool failed = st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE;
        if (s->login_query == LOGIN_QUERY_PROBE && st == PGRES_TUPLES_OK && PQntuples(res) == 1)
            server_probe_store(s->pool, PQgetvalue(res, 0, 0));
        /* (Without NN% caps a failed probe only costs /health the numbers: see
         * probe_answered.) */
        if (failed && (s->login_query == LOGIN_QUERY_CONNECT || budget_has_percent_caps(s->pool))) {
            /* The primary message alone, as the passthrough login reports it */
            const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
            char why[256];
            snprintf(why, sizeof(why), "%s", primary ? primary : PQresultErrorMessage(res));
            PQclear(res);
            login_query_failed(s, why);
            return;
        }
        PQclear(res);
    }
    sockio_want(&s->io, f == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
}

/* 28xxx: invalid authorization (wrong password, NOLOGIN role, pg_hba.conf reject); 3D000: no
 * such database; 42501: no CONNECT privilege. Not 53300 (too many clients) nor 57P03 (starting
 * up, shutting down): those pass, and the pool's backoff waits for them. */
static bool refusal_is_final(const char *sqlstate)
{
    return sqlstate && (strncmp(sqlstate, "28", 2) == 0 || strcmp(sqlstate, "3D000") == 0 ||
                        strcmp(sqlstate, "42501") == 0);
}

void server_login_error(struct server *s, const char *why, const char *sqlstate,
                        const char *message)
{
    if (!refusal_is_final(sqlstate)) {
        server_connect_failed(s, why);
        return;
    }
    /* sqlstate and message may point into the login's buffer, which server_close frees */
    char state[6], text[512];
    snprintf(state, sizeof(state), "%s", sqlstate);
    snprintf(text, sizeof(text), "%s", message);
    struct pool *p = s->pool;
    server_close(s, why);
    pool_login_refused(p, state, why, text);
}

/* libpq's text for a failed connection, made with PQERRORS_VERBOSE: "connection to server at
 * ... failed: FATAL:  28000: role \"x\" is not permitted to log in\nLOCATION: ...". A server's
 * error has its SQLSTATE after the severity; libpq's own failures (refused TCP connect, TLS,
 * timeouts) have none. The log keeps libpq's usual wording, without the SQLSTATE. */
static void libpq_failed(struct server *s)
{
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", PQerrorMessage(s->conn));
    msg[strcspn(msg, "\n")] = '\0';
    static const char *const severities[] = {"FATAL:  ", "ERROR:  ", "PANIC:  "};
    for (size_t i = 0; i < sizeof severities / sizeof severities[0]; i++) {
        const char *at = strstr(msg, severities[i]);
        if (!at)
            continue;
        const char *code = at + strlen(severities[i]);
        if (strspn(code, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") != 5 || strncmp(code + 5, ": ", 2))
            continue;
        char sqlstate[6], why[512];
        memcpy(sqlstate, code, 5);
        sqlstate[5] = '\0';
        snprintf(why, sizeof(why), "%.*s%s", (int)(code - msg), msg, code + 7);
        server_login_error(s, why, sqlstate, code + 7);
        return;
    }
    server_connect_failed(s, msg);
}

static void connect_step(struct server *s)
{
    PostgresPollingStatusType st = PQconnectPoll(s->conn);
    int fd = PQsocket(s->conn);
    if (st != PGRES_POLLING_FAILED && fd != s->io.fd) {
        /* libpq moved to another socket (next host, or a retry without TLS). */
        sockio_detach(&s->io);
        if (sockio_open(&s->io, s->pool->app->loop, fd, s, server_on_io) < 0) {
            server_connect_failed(s, "cannot watch the server socket");
            return;
        }
    } else if (st != PGRES_POLLING_FAILED && PQstatus(s->conn) == CONNECTION_STARTED) {
        /* A new socket under the old one's number: libpq closed the socket of a host that
         * refused and opened the next host's, which the kernel gave the lowest free number,
         * the same. Closing took the old one out of epoll; the poll handle, which does not
         * know, must register the new one, or no event ever comes (a host list would hang on
         * its first host that refuses). */
        sockio_want(&s->io, 0);
    }
    switch (st) {
    case PGRES_POLLING_READING:
        sockio_want(&s->io, UV_READABLE);
        return;
    case PGRES_POLLING_WRITING:
        sockio_want(&s->io, UV_WRITABLE);
        return;
    case PGRES_POLLING_OK:
        PQsetErrorVerbosity(s->conn, PQERRORS_DEFAULT);
        login_query_next(s);
        return;
    default:
        libpq_failed(s);
        return;
    }
}

/* The backend of a LEAVING server has exited once its end of the socket closes: Postgres
 * releases a backend's slot (and its pg_stat_activity row) on the way out, before the process
 * ends and the kernel closes the socket. Only then may another login take the slot. */
static void left(struct server *s)
{
    struct pool *p = s->pool, *room_for = s->room_for;
    close_now(s);
    pool_server_gone(p, room_for);
}

static void leaving_step(struct server *s, int status)
{
    char scratch[512];
    for (;;) {
        ssize_t n = status < 0 ? -1 : sockio_read(&s->io, scratch, sizeof(scratch));
        if (n == SOCKIO_AGAIN)
            return;
        if (n <= 0) {
            left(s);
            return;
        }
    }
}

void server_close_for(struct server *s, const char *reason, struct pool *room_for)
{
    static const char terminate[] = {'X', 0, 0, 0, 4}; /* protocol 55.7: Terminate */
    if (s->state == SERVER_CLOSED || s->state == SERVER_LEAVING)
        return;
    log_server(LOG_INFO, s, "closing: %s", reason);
    if (s->client)
        link_end(s->client, s, LINK_END_SERVER_CLOSING, NULL);
    /* Called on logged-in servers only (a fresh one is still CONNECTING as it is first handed
     * out); with output pending the Terminate could not be told apart, so that one just closes. */
    bool sent = s->out_pos >= s->out.len &&
                sockio_write(&s->io, terminate, sizeof(terminate)) == (ssize_t)sizeof(terminate);
    list_remove(list_for(s, s->state), &s->node);
    s->state = SERVER_LEAVING;
    s->state_since_ms = sluice_now(s->pool->app);
    s->room_for = room_for;
    if (room_for)
        room_for->rooms_awaited++;
    list_append(&s->pool->leaving, &s->node);
    if (!sent) {
        left(s);
        return;
    }
    sockio_want(&s->io, UV_READABLE);
}

void server_on_io(struct sockio *io, int status, int events)
{
    struct server *s = io->owner;
    if (s->state == SERVER_LEAVING) {
        leaving_step(s, status);
        return;
    }
    if (s->state == SERVER_CONNECTING && s->login) {
        server_login_step(s, status, events);
        return;
    }
    if (s->state == SERVER_CONNECTING) {
        if (s->login_query != LOGIN_QUERY_NONE)
            login_query_step(s);
        else
            connect_step(s);
        return;
    }
    link_server_io(s, status, events); /* logged in: the relay's, with a client or not */
}

void server_queue_internal(struct server *s, const char *sql)
{
    codec_put_query(&s->out, sql);
    s->swallow++;
}

/* The query of a server being drained will not be read by anyone: cancel it (once). */
static void cancel_drained_query(struct server *s)
{
    if (s->inflight == 0 || s->timeout_cancel_sent)
        return;
    s->timeout_cancel_sent = true;
    if (cancel_server(s->pool->app, s) < 0)
        log_server(LOG_WARNING, s, "could not send a cancel for the query of a client that left");
}

void server_drain(struct server *s, enum drain_query how)
{
    server_set_state(s, SERVER_DRAINING);
    if (how == DRAIN_CANCEL_QUERY)
        cancel_drained_query(s);
    log_server(LOG_DEBUG, s, "%s: draining",
               how == DRAIN_CANCEL_QUERY ? "client left mid-query"
                                         : "client sent Terminate mid-query, letting it finish");
    server_kick(s);
}

void server_want_io(struct server *s)
{
    if (s->state == SERVER_CONNECTING || s->state == SERVER_CLOSED)
        return;
    int ev = UV_READABLE;
    if (s->out_pos < s->out.len)
        ev |= UV_WRITABLE;
    sockio_want(&s->io, ev);
}

void server_pumped(struct server *s, enum relay_result r, const struct relay_outcome *o)
{
    if (r == RELAY_SERVER_LOST) {
        server_close(s, o->why);
        return;
    }
    if (s->state == SERVER_RESETTING || s->state == SERVER_DRAINING)
        server_maybe_done_resetting(s);
    else
        server_want_io(s);
}

void server_kick(struct server *s)
{
    struct relay_outcome o;
    enum relay_result r = relay_pump(s, &o);
    server_pumped(s, r, &o);
}

void server_maybe_done_resetting(struct server *s)
{
    if (s->state != SERVER_RESETTING && s->state != SERVER_DRAINING)
        return;
    if (s->swallow > 0 || s->inflight > 0 || s->cancels_in_flight > 0 ||
        s->out_pos < s->out.len || s->rx.remain > 0 || !buf_is_empty(&s->in)) {
        server_want_io(s);
        return;
    }
    if (s->state == SERVER_DRAINING) {
        /* The orphaned query is over: clean the server as at any release. */
        server_set_state(s, SERVER_RESETTING);
        if (pool_queue_cleanup(s)) {
            server_kick(s);
            return;
        }
    }
    if (s->txn_status != 'I') {
        server_close(s, "still in a transaction after sluice's rollback");
        return;
    }
    pool_server_ready(s);
}

void server_connect_failed(struct server *s, const char *why)
{
    struct pool *p = s->pool;
    server_close(s, why);
    pool_connect_failed(p, why);
}

void server_close(struct server *s, const char *reason)
{
    if (s->state == SERVER_CLOSED)
        return;
    log_server(s->state == SERVER_CONNECTING ? LOG_WARNING : LOG_INFO, s, "closing: %s",
               reason ? reason : "");
    close_now(s);
}

static void close_now(struct server *s)
{
    struct sluice *app = s->pool->app;
    if (s->state == SERVER_LEAVING && s->room_for)
        s->room_for->rooms_awaited--;
    if (s->client)
        link_end(s->client, s, LINK_END_SERVER_CLOSING, NULL);
    list_remove(list_for(s, s->state), &s->node);
    s->state = SERVER_CLOSED;
    list_append(&app->dead_servers, &s->node);
    app->nservers--;
    sockio_detach(&s->io);
    resolver_cancel(s->resolving);
    s->resolving = NULL;
    if (s->conn) {
        PQfinish(s->conn);
        s->conn = NULL;
    }
    server_login_free(s); /* a passthrough login's socket and TLS session are sluice's own */
    buf_release(&s->in);
    codec_out_free(&s->out);
    params_free(&s->params);
    stmt_map_free(&s->stmts);
    stmt_queue_free(&s->reqs);
}

/* server_fast_close (PgBouncer's): a session-mode server marked to close does not wait for its
 * client to leave, only for its transaction to end: then both close, so the client knows its
 * session is gone. Transaction and statement mode release (and so close) at that point anyway. */
static bool fast_close_due(const struct server *s)
{
    const struct config *cfg = s->pool->app->cfg;
    struct client *c = s->client;
    return cfg->server_fast_close && s->close_when_free && c && s->txn_status == 'I' &&
           s->swallow == 0 &&
           !pool_mode_ops(s->pool->mode, cfg->server_reset_query_always)->release_at_idle &&
           relay_at_boundary(s, c) && buf_pending(&c->in) == 0;
}

void server_check_timeouts(struct server *s, uint64_t now)
{
    const struct config *cfg = s->pool->app->cfg;
    switch (s->state) {
    case SERVER_CONNECTING:
        if (cfg->server_connect_timeout > 0 &&
            now - s->connect_start_ms >= (uint64_t)cfg->server_connect_timeout) {
            char msg[128];
            snprintf(msg, sizeof(msg), "connect and login not done within %lld ms (server_connect_timeout)",
                     (long long)cfg->server_connect_timeout);
            server_connect_failed(s, msg);
        }
        break;
    case SERVER_IDLE:
        if (s->pool->timeouts.server_lifetime > 0 &&
            now - s->connect_ms >= (uint64_t)s->pool->timeouts.server_lifetime) {
            server_close(s, "server_lifetime reached");
        } else if (cfg->server_idle_timeout > 0 &&
                   now - s->state_since_ms >= (uint64_t)cfg->server_idle_timeout &&
                   pool_server_count(s->pool) > s->pool->min_size) {
            server_close(s, "idle for server_idle_timeout");
        }
        break;
    case SERVER_ACTIVE:
        if (fast_close_due(s))
            link_end(s->client, s, LINK_END_SERVER_FAST_CLOSE, NULL);
        break;
    case SERVER_LEAVING:
        /* A backend that does not close its socket soon is stuck or gone unseen: stop waiting. */
        if (now - s->state_since_ms >= SERVER_LEAVING_WAIT_MS) {
            log_server(LOG_WARNING, s, "the backend did not end within %d ms of Terminate",
                       SERVER_LEAVING_WAIT_MS);
            left(s);
        }
        break;
    case SERVER_DRAINING:
        if (now - s->state_since_ms < (uint64_t)cfg->server_drain_timeout)
            break;
        if (s->inflight > 0 && !s->timeout_cancel_sent) {
            /* The query of a client that sent Terminate had server_drain_timeout to finish:
             * now it is cancelled like a vanished client's, and gets as long again. Closing
             * without a cancel would leave the backend running, uncounted by the caps. */
            log_server(LOG_WARNING, s, "query of a client that sent Terminate still running "
                                       "after server_drain_timeout: cancelling it");
            cancel_drained_query(s);
            s->state_since_ms = now;
            break;
        }
        server_close(s, "not drained within server_drain_timeout after its client left");
        break;
    default:
        break;
    }
}
