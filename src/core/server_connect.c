/* server_connect: a new backend connection until it may serve (see server_connect.h).
 *
 *   server_connect ─► RESOLVING ─► LOGIN (libpq: PQconnectStartParams + PQconnectPoll)
 *                              └─► LOGIN_PASSTHROUGH (server_login.c, with a client's keys)
 *   logged in ─► PROBING (max_connections unknown) ─► CONNECT_QUERY (the entry has one)
 *             ─► pool_server_ready: IDLE or ACTIVE
 *   any of them ─failed or server_connect_timeout─► CLOSED, and the pool backs off
 *
 * Login is libpq's: PQconnectStartParams + PQconnectPoll under the connection's one poll handle,
 * which brings SCRAM, TLS, several hosts and target_session_attrs. A passthrough login (no
 * password, a client's keys) is server_login.c's and reports here through server_on_login. The
 * login queries (PROBING, CONNECT_QUERY) are decided here for both: libpq runs them with
 * PQsendQuery, the passthrough login with server_login_query. */
#include "server.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "budget.h"
#include "ledger.h"
#include "login_notice.h"
#include "passthrough.h"
#include "pool.h"
#include "pool_breaker.h"
#include "resolver.h"
#include "server_login.h"
#include "sluice.h"
#include "tcp_options.h"
#include "worker.h"

/* Keywords for PQconnectStartParams: the database entry's, with dbname, user and password
 * filled in where the entry leaves them to the client, and the TLS and TCP settings of the main
 * section it does not set: 24 slots are kept for those (12), resolver_apply (3), add_startup and
 * the NULL at the end. */
#define MAX_KEYWORDS 60

static int build_conninfo(struct pool *p, const struct db_entry *db, const char **kw,
                          const char **val, const char **user_out, bool *password_out,
                          struct tcp_keywords *tcp)
{
    const struct config *cfg = p->worker->cfg;
    int n = 0;
    bool has_dbname = false, has_password = false;
    const char *user = NULL;
    /* server_tls_* become libpq's keywords unless the database entry sets its own */
    const char *tls_kw[4] = {"sslmode", "sslrootcert", "sslcert", "sslkey"};
    const char *tls_val[4] = {sslmode_name(cfg->server_tls_sslmode), cfg->server_tls_ca_file,
                              cfg->server_tls_cert_file, cfg->server_tls_key_file};
    for (int i = 0; i < db->nkeys && n < MAX_KEYWORDS - 24; i++) {
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
    n = tcp_options_keywords(cfg, db, kw, val, n, tcp);
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
        if (a && strncmp(a->secret, "md5", 3) != 0 &&
            strncmp(a->secret, "SCRAM-SHA-256$", 14) != 0) {
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

bool server_conninfo_now(struct pool *p, uint64_t *fp)
{
    const struct db_entry *db = config_find_db(p->worker->cfg, p->db_name);
    if (!db || p->is_admin)
        return false;
    const char *kw[MAX_KEYWORDS], *val[MAX_KEYWORDS];
    const char *user = NULL;
    bool has_password = false;
    struct tcp_keywords tcp;
    build_conninfo(p, db, kw, val, &user, &has_password, &tcp);
    *fp = conninfo_fingerprint(kw, val);
    return true;
}

void server_retire_changed(struct pool *p)
{
    uint64_t now_fp;
    if (!server_conninfo_now(p, &now_fp))
        return;
    const char *why = "connection settings changed by reload";
    pool_forget_stale_welcome(p, now_fp);
    if (p->conninfo_fp != 0 && p->conninfo_fp != now_fp)
        pool_breaker_settings_changed(p);
    p->conninfo_fp = now_fp;
    struct list_node *n, *tmp;
    /* Idle servers, and those still connecting with the old settings (to an address the
     * operator may have just corrected: their failure says nothing of the database now, and
     * must not mark the pool down), close now; the pool opens new ones as it needs them. */
    struct list *unused[] = {&p->idle, &p->connecting};
    for (size_t i = 0; i < sizeof unused / sizeof unused[0]; i++) {
        list_for_each(unused[i], n, tmp)
        {
            struct server *s = container_of(n, struct server, node);
            if (s->conninfo_fp != now_fp)
                server_close(s, why);
        }
    }
    int busy = 0;
    struct list *in_use[] = {&p->active, &p->resetting};
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
static void on_connecting_io(struct sockio *io, int status, int events);
static void on_login_report(struct server *s, enum login_result result,
                            const struct login_report *r);
static const struct server_login_hooks login_hooks = {
    .reported = on_login_report,
    .on_io = on_connecting_io,
};

/* The keyword's index among kw[0, n), or n after appending it (with a NULL value). */
static int keyword_slot(const char **kw, const char **val, int *n, const char *name)
{
    for (int i = 0; i < *n; i++)
        if (strcmp(kw[i], name) == 0)
            return i;
    kw[*n] = name;
    val[*n] = NULL;
    kw[++*n] = NULL;
    return *n - 1;
}

/* A role's or database's idle_session_timeout (ALTER ROLE/DATABASE ... SET; postgresql.conf's
 * too) would end backends idling in the pool. The probe (server_probe_sql) reads it on each new
 * server until the pool has seen one that is not 0; from then on its servers log in with this
 * option, after the database entry's options: a startup option (PGC_S_CLIENT) outranks those
 * values, and RESET or DISCARD ALL give the backend 0. A client still gets the value: the
 * welcome carries it, and it becomes the client's login value (client_take_login_defaults),
 * which sluice enforces. Until then no server carries the option, so a session's pg_settings
 * shows what a direct one does. */
#define IDLE_OFF_OPTION "-c idle_session_timeout=0"

/* A server opened with a client's startup parameters (s->startup) logs in with them:
 * application_name and client_encoding as libpq keywords (the client's value over the database
 * entry's; not client_encoding=auto, see params_is_startup_keyword), the rest as -c in options
 * after the entry's own options and IDLE_OFF_OPTION (a later -c wins in Postgres: a client's
 * own idle_session_timeout, session mode, params_build_release). options owns the text until
 * the login has copied it. 0 or -ENOMEM. */
static int add_startup(struct server *s, const char **kw, const char **val, int *n,
                       struct msg_out *options)
{
    const struct param_set *startup = &s->startup;
    bool empty_encoding = false;
    for (int i = 0; i < startup->n; i++) {
        const struct param *p = &startup->items[i];
        if (!params_is_startup_keyword(p))
            continue;
        bool app = strcasecmp(p->name, "application_name") == 0;
        /* libpq drops a keyword whose value is empty (conninfo_array_parse): an empty
         * client_encoding would log in with the server's encoding where Postgres refuses it
         * (22023), so it goes in options instead, refused there in Postgres's words. */
        if (!app && p->value[0] == '\0') {
            empty_encoding = true;
            continue;
        }
        val[keyword_slot(kw, val, n, app ? "application_name" : "client_encoding")] = p->value;
    }
    int had = *n;
    int at = keyword_slot(kw, val, n, "options");
    struct msg_out before;
    codec_out_init(&before);
    if (val[at] && val[at][0]) {
        codec_put_bytes(&before, val[at], strlen(val[at]));
        if (s->pool->idle_off)
            codec_put_u8(&before, ' ');
    }
    if (s->pool->idle_off)
        codec_put_bytes(&before, IDLE_OFF_OPTION, strlen(IDLE_OFF_OPTION));
    codec_put_u8(&before, 0);
    if (!before.oom)
        (void)params_build_startup_options(startup, (const char *)before.data, options);
    bool oom = before.oom || options->oom;
    codec_out_free(&before);
    if (oom)
        return -ENOMEM;
    if (options->len <= 1 && !empty_encoding && at == had) {
        /* nothing to pass: the slot appended above goes again (the entry's own options='',
         * at any index, stays: dropping it would end the list there) */
        kw[at] = NULL;
        --*n;
        return 0;
    }
    if (empty_encoding) {
        static const char set_empty[] = "-c client_encoding=";
        options->len--; /* the builder's closing NUL */
        if (options->len > 0)
            codec_put_u8(options, ' ');
        codec_put_bytes(options, set_empty, sizeof(set_empty) - 1);
        codec_put_u8(options, 0);
    }
    if (options->oom)
        return -ENOMEM;
    val[at] = (const char *)options->data;
    return 0;
}

static void login_with(struct server *s, const struct db_entry *db, const char **kw,
                       const char **val, int n, const char *user, bool has_password,
                       const struct resolver *r);

/* A NOTICE during libpq's login (a client's startup parameter may bring one: "identifier ...
 * will be truncated"): into sluice's log, escaped, never raw on stderr as libpq's default. The
 * client gets its own from login_notice.c, which learns here where Postgres raises it. */
static void on_libpq_notice(void *owner, const PGresult *res)
{
    struct server *s = owner;
    login_notice_learn(
        &s->pool->worker->login_notice_src, PQresultErrorField(res, PG_DIAG_SQLSTATE),
        PQresultErrorField(res, PG_DIAG_SEVERITY), PQresultErrorField(res, PG_DIAG_SOURCE_FILE),
        PQresultErrorField(res, PG_DIAG_SOURCE_LINE),
        PQresultErrorField(res, PG_DIAG_SOURCE_FUNCTION));
    char line[512];
    int n = snprintf(line, sizeof(line), "%s", PQresultErrorMessage(res));
    if (n > 0 && (size_t)n < sizeof(line) && line[n - 1] == '\n')
        line[n - 1] = '\0'; /* libpq's own line end; the log escapes any other */
    log_server(LOG_DEBUG, s, "notice at login: %s", line);
}

static void start_login(struct server *s, const struct resolver *r)
{
    struct pool *p = s->pool;
    const struct db_entry *db = config_find_db(p->worker->cfg, p->db_name);
    if (!db) {
        server_connect_failed(s, "the database is no longer configured");
        return;
    }
    const char *kw[MAX_KEYWORDS], *val[MAX_KEYWORDS];
    const char *user = NULL;
    bool has_password = false;
    struct tcp_keywords tcp;
    int n = build_conninfo(p, db, kw, val, &user, &has_password, &tcp);
    struct msg_out options;
    codec_out_init(&options);
    if (s->startup.n > 0 && log_enabled(LOG_DEBUG)) {
        char shown[512];
        params_describe_for_log(&s->startup, shown, sizeof(shown));
        log_server(LOG_DEBUG, s, "opened with the client's startup parameters: %s", shown);
    }
    if (add_startup(s, kw, val, &n, &options) < 0)
        server_connect_failed(s, "out of memory");
    else
        login_with(s, db, kw, val, n, user, has_password, r);
    codec_out_free(&options); /* libpq and the passthrough login copied it */
}

static void login_with(struct server *s, const struct db_entry *db, const char **kw,
                       const char **val, int n, const char *user, bool has_password,
                       const struct resolver *r)
{
    struct pool *p = s->pool;
    struct worker *worker = p->worker;
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
    if (!has_password && !keys && md5_secret_in_auth_file(worker->cfg, user, &from_file))
        keys = &from_file;
    if (keys) {
        server_set_state(s, SERVER_LOGIN_PASSTHROUGH);
        char why[256];
        enum sslmode sslmode = config_server_sslmode(worker->cfg, db);
        int started = server_login_start(s, kw, val, sslmode, keys, &login_hooks, why, sizeof(why));
        OPENSSL_cleanse(&from_file, sizeof(from_file)); /* the login keeps its own copy */
        if (started < 0) {
            server_connect_failed(s, why);
            return;
        }
        if (s->state != SERVER_CLOSED) /* else it failed at once (connect refused, no socket) */
            log_server(LOG_DEBUG, s, "connecting (passthrough login as \"%s\")", user);
        return;
    }
    server_set_state(s, SERVER_LOGIN);
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
    PQsetNoticeReceiver(s->conn, on_libpq_notice, s);
    if (sockio_open(&s->io, worker->loop, PQsocket(s->conn), s, on_connecting_io) < 0) {
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

struct server *server_connect(struct pool *p, const struct param_set *startup, uint64_t startup_fp)
{
    struct worker *worker = p->worker;
    const struct db_entry *db = config_find_db(worker->cfg, p->db_name);
    if (!db) {
        /* no server holds the slot */
        worker_wake(worker,
                    ledger_give_server(&worker->proc->ledger, p->ledger_key, (int)worker->index));
        pool_connect_failed(p, "the database is no longer configured");
        return NULL;
    }
    struct server *s = calloc(1, sizeof(*s));
    if (!s) {
        worker_wake(worker,
                    ledger_give_server(&worker->proc->ledger, p->ledger_key, (int)worker->index));
        return NULL;
    }
    s->pool = p;
    s->mode = p->mode;
    s->id = ++worker->next_id;
    s->txn_status = 'I';
    s->connect_start_ms = sluice_now(worker);
    s->state_since_ms = s->connect_start_ms;
    s->io.fd = -1;
    s->io.cb = on_connecting_io;
    params_init(&s->params);
    params_init(&s->startup);
    params_init(&s->login_reports);
    stmt_map_init(&s->stmts);
    stmt_map_init(&s->sql_prepared);
    codec_out_init(&s->out);
    list_node_init(&s->node);
    /* From here it holds the ledger slot its pool took for it, resolving its host name
     * included: close_now gives it back. */
    s->state = SERVER_RESOLVING;
    list_append(&p->connecting, &s->node);
    worker->nservers++;
    if (startup && startup->n > 0) {
        s->startup_fp = startup_fp;
        if (params_copy(&s->startup, startup) < 0) {
            server_connect_failed(s, "out of memory");
            return NULL;
        }
    }

    const char *kw[MAX_KEYWORDS], *val[MAX_KEYWORDS];
    const char *user = NULL;
    bool has_password = false;
    struct tcp_keywords tcp;
    build_conninfo(p, db, kw, val, &user, &has_password, &tcp);
    s->conninfo_fp = conninfo_fingerprint(kw, val);
    p->conninfo_fp = s->conninfo_fp;
    char why[300];
    int r = resolver_start(worker->loop, kw, val, on_server_resolved, s, &s->resolving, why,
                           sizeof(why));
    if (r < 0)
        server_connect_failed(s, why);
    else if (r == 0)
        log_server(LOG_DEBUG, s, "resolving the host name off the loop");
    else
        start_login(s, NULL);
    return s->state == SERVER_CLOSED ? NULL : s;
}

/* ---- logged in: sluice's login queries (both login paths), then the pool ---- */

/* Every pool reads its server's max_connections and reserved slots once (and again after a
 * reload) before its first server is handed out: NN% caps resolve against them and /health
 * reports the pool's share of them. One text value, "max_connections reserved idle", so both
 * login paths read it the same way; reserved_connections exists from Postgres 16 on. idle is
 * the backend's idle_session_timeout as SHOW gives it (a role's, a database's, the server's
 * file's), "-" where a startup option set it (IDLE_OFF_OPTION, or a session-mode client's own):
 * not 0, it is turned off on this backend at once (set_config, after it was read: OFFSET 0
 * keeps the subquery apart), which Postgres would otherwise end once idle in the pool. Before
 * Postgres 14 there is no such parameter: the outer join still gives the one row (idle "0", so
 * no server is ever sent the option, which such a server would refuse). */
static const char server_probe_sql[] =
    "SELECT current_setting('max_connections') || ' ' || "
    "(current_setting('superuser_reserved_connections')::int + "
    "coalesce(current_setting('reserved_connections', true)::int, 0)) || ' ' || "
    "CASE WHEN i.source = 'client' THEN '-' WHEN i.v IS NULL OR i.v = '0' THEN '0' ELSE i.v || "
    "pg_catalog.left(pg_catalog.set_config('idle_session_timeout', '0', false), 0) END "
    "FROM (SELECT 1) one LEFT JOIN (SELECT pg_catalog.current_setting('idle_session_timeout') "
    "AS v, source FROM pg_catalog.pg_settings WHERE name = 'idle_session_timeout' OFFSET 0) i "
    "ON true";

/* The pool does not know its server's max_connections yet (or a reload asked again), or its
 * servers log in without IDLE_OFF_OPTION: each may have an idle_session_timeout that is not 0
 * (set since the last one logged in), and one that may teach the pool its welcome brings the
 * value the welcome carries (pool_learn_welcome). One round trip per server connect. */
static bool needs_probe(const struct server *s)
{
    return s->pool->server_usable <= 0 || s->pool->probe_again || !s->pool->idle_off ||
           !pool_knows_welcome(s->pool);
}

/* The database entry's connect_query for a new server of this pool, or NULL. */
static const char *connect_query(const struct server *s)
{
    const struct db_entry *db = config_find_db(s->pool->worker->cfg, s->pool->db_name);
    return db && db->connect_query ? db->connect_query : NULL;
}

/* The probe's idle_session_timeout: 0 is what a client gets anyway (none in the welcome); any
 * other value the pool's clients get from the welcome, this backend (whose own value it is:
 * a RESET would give it back) serves its one lease and closes, and the pool's next servers
 * log in with it off. "-": a startup option's, not the role's. */
static void probe_store_idle(struct server *s, const char *idle)
{
    struct pool *p = s->pool;
    if (strcmp(idle, "-") == 0)
        return;
    bool off = strcmp(idle, "0") == 0;
    if (strlen(idle) < sizeof(p->role_idle_session_timeout)) /* SHOW's form is short */
        snprintf(p->role_idle_session_timeout, sizeof(p->role_idle_session_timeout), "%s",
                 off ? "" : idle);
    if (!off) {
        s->close_when_free = true;
        if (!p->idle_off)
            log_server(LOG_INFO, s,
                       "a new session of this role gets idle_session_timeout = %s: servers log "
                       "in with it off, and sluice ends its clients idle that long",
                       idle);
        p->idle_off = true;
    }
    /* a value set while the pool runs reaches the clients that log in from now on, as it
     * reaches new Postgres sessions (the name is no base value a fingerprint counts) */
    const char *v = p->role_idle_session_timeout;
    if (p->have_welcome && params_set(&p->welcome, "idle_session_timeout", v[0] ? v : NULL) < 0)
        s->close_when_free = true;
}

static void probe_store(struct server *s, const char *value)
{
    struct pool *p = s->pool;
    int max_connections = 0, reserved = 0, end = 0;
    if (!value || sscanf(value, "%d %d%n", &max_connections, &reserved, &end) != 2 ||
        max_connections <= 0 || reserved < 0 || reserved >= max_connections)
        return;
    if (value[end] == ' ')
        probe_store_idle(s, value + end + 1);
    p->server_max_connections = max_connections;
    p->server_reserved = reserved;
    p->server_usable = max_connections - reserved;
    /* every worker's pools of the key */
    ledger_learn_usable(&p->worker->proc->ledger, p->ledger_key, p->server_usable);
}

static void probe_failed(struct server *s, const char *why)
{
    char msg[256];
    snprintf(msg, sizeof(msg), "cannot read max_connections for NN%% caps: %.200s", why);
    msg[strcspn(msg, "\n")] = '\0';
    server_connect_failed(s, msg);
}

/* The probe is over: false when NN% caps need the value and it gave nothing usable (s failed). */
static bool probe_answered(struct server *s)
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
    /* Every worker's first server of the key (and of a reload) reads it: the first to read a
     * new value logs it, once for the process (5.6). */
    char line[160];
    snprintf(line, sizeof(line),
             "server allows %d connections besides superuser_reserved_connections "
             "(max_connections %d, %d reserved)",
             p->server_usable, p->server_max_connections, p->server_reserved);
    if (ledger_key_line_is_new(&p->ledger_key->usable_line_logged, line))
        log_server(LOG_INFO, s, "%s", line);
    budget_log_cap(p);
    return true;
}

/* PgBouncer runs connect_query as part of the login: a server whose connect_query fails never
 * serves, and the pool backs off as after any failed login. */
static void connect_query_failed(struct server *s, const char *message)
{
    char why[512];
    snprintf(why, sizeof(why), "connect_query failed: %s", message);
    why[strcspn(why, "\n")] = '\0';
    server_connect_failed(s, why);
}

/* A login query could not run or failed in a way that ends the login. */
static void login_query_failed(struct server *s, const char *why)
{
    if (s->state == SERVER_PROBING)
        probe_failed(s, why);
    else
        connect_query_failed(s, why);
}

/* A backend opened with a client's startup parameters took them: its record holds the
 * unreported ones too (the backend has them), s->startup the backend's spelling of the
 * reported ones, and the pool knows the values are good for later logins. 0 or -ENOMEM. */
static int note_startup(struct server *s)
{
    const char *idle = s->pool->role_idle_session_timeout;
    if (params_copy(&s->login_reports, &s->params) < 0 ||
        (!params_get(&s->startup, "idle_session_timeout") &&
         params_set(&s->login_reports, "idle_session_timeout", idle[0] ? idle : NULL) < 0))
        return -ENOMEM;
    for (int i = 0; i < s->startup.n; i++) {
        const struct param *p = &s->startup.items[i];
        const char *spelled = params_get(&s->params, p->name);
        int rc = !params_is_reported(p->name) ? params_set(&s->params, p->name, p->value)
                 : spelled                    ? params_set(&s->startup, p->name, spelled)
                                              : 0;
        if (rc < 0)
            return rc;
    }
    /* As the backend spells them, as after a sync (client_login_synced): a client welcomed
     * without a server is told the values it asked for (params_known_good) */
    return params_note_accepted(&s->pool->accepted, &s->startup, 64);
}

/* Parameters and backend pid known: into the pool. */
static void logged_in(struct server *s)
{
    if (note_startup(s) < 0) {
        server_close(s, "out of memory");
        return;
    }
    s->connect_ms = sluice_now(s->pool->worker);
    pool_connect_succeeded(s->pool);
    log_server(LOG_INFO, s, "connected to backend pid %d%s in %llu ms", s->backend_pid,
               s->io.ssl ? " (TLS)" : "",
               (unsigned long long)(s->connect_ms - s->connect_start_ms));
    s->io.cb = server_on_io; /* server.c's from here: the relay, leaving, closing */
    pool_learn_welcome(s);
    pool_server_ready(s);
}

/* libpq's login is over: what a passthrough login reads from the messages, from the PGconn. */
static void libpq_logged_in(struct server *s)
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
        SSL_set_mode(s->io.ssl,
                     SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    }
    logged_in(s);
}

/* libpq's calls of this step are over (they ran with the socket lent: sockio_lend): watch its
 * socket again, whichever it is now, for events. false: s failed (closed). */
static bool watch_libpq_socket(struct server *s, int events)
{
    int fd = PQsocket(s->conn);
    if (sockio_take_back(&s->io, s->pool->worker->loop, fd) < 0) {
        server_connect_failed(s, "cannot watch the server socket");
        return false;
    }
    if (fd < 0) { /* libpq dropped the connection without reporting it to this step */
        char why[512];
        snprintf(why, sizeof(why), "%s", PQerrorMessage(s->conn));
        why[strcspn(why, "\n")] = '\0';
        server_connect_failed(s, why[0] ? why : "lost the server connection");
        return false;
    }
    sockio_want(&s->io, events);
    return true;
}

static void run_login_query(struct server *s, enum server_state query)
{
    server_set_state(s, query);
    const char *sql = query == SERVER_PROBING ? server_probe_sql : connect_query(s);
    if (s->login) {
        server_login_query(s, sql);
        return;
    }
    sockio_lend(&s->io); /* a failed send reads what is left, and may close the socket */
    if (PQsetnonblocking(s->conn, 1) != 0 || !PQsendQuery(s->conn, sql)) {
        login_query_failed(s, PQerrorMessage(s->conn));
        return;
    }
    watch_libpq_socket(s, PQflush(s->conn) == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
}

/* The login, or one of sluice's login queries, is over: run the next query, or serve. */
static void login_next(struct server *s)
{
    if ((s->state == SERVER_LOGIN || s->state == SERVER_LOGIN_PASSTHROUGH) && needs_probe(s)) {
        run_login_query(s, SERVER_PROBING);
        return;
    }
    if (s->state != SERVER_CONNECT_QUERY && connect_query(s)) {
        run_login_query(s, SERVER_CONNECT_QUERY);
        return;
    }
    if (!s->conn) {
        sockio_want(&s->io, 0);
        logged_in(s);
        return;
    }
    /* server.c watches the socket it is given from here: libpq's current one, still open */
    if (watch_libpq_socket(s, 0))
        libpq_logged_in(s);
}

/* A row of a login query: the probe's one value. */
static void login_query_row(struct server *s, const char *value)
{
    if (s->state == SERVER_PROBING)
        probe_store(s, value);
}

/* A login query answered with an error. connect_query's ends the login; so does the probe's when
 * NN% caps need its value; else only /health misses the numbers (probe_answered says so). */
static void login_query_error(struct server *s, const char *message)
{
    if (s->state == SERVER_PROBING && !budget_has_percent_caps(s->pool))
        return;
    login_query_failed(s, message);
}

/* ReadyForQuery after a login query. */
static void login_query_done(struct server *s)
{
    if (s->state == SERVER_PROBING && !probe_answered(s))
        return;
    login_next(s);
}

/* PROBING or CONNECT_QUERY over libpq: its results, one by one. */
static void login_query_step(struct server *s)
{
    sockio_lend(&s->io); /* a read of EOF or a failed write closes libpq's socket */
    int f = PQflush(s->conn);
    if (f < 0 || !PQconsumeInput(s->conn)) {
        login_query_failed(s, PQerrorMessage(s->conn));
        return;
    }
    while (!PQisBusy(s->conn)) {
        PGresult *res = PQgetResult(s->conn);
        if (!res) {
            login_query_done(s);
            return;
        }
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_TUPLES_OK && PQntuples(res) == 1 && PQnfields(res) == 1)
            login_query_row(s, PQgetvalue(res, 0, 0));
        if (st != PGRES_FATAL_ERROR && st != PGRES_BAD_RESPONSE) {
            PQclear(res);
            continue;
        }
        /* The primary message alone, as the passthrough login reports it */
        const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        char why[256];
        snprintf(why, sizeof(why), "%s", primary ? primary : PQresultErrorMessage(res));
        PQclear(res);
        login_query_error(s, why);
        if (s->state == SERVER_CLOSED)
            return;
    }
    watch_libpq_socket(s, f == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
}

/* ---- failed logins ---- */

/* 28xxx: invalid authorization (wrong password, NOLOGIN role, pg_hba.conf reject); 3D000: no
 * such database; 42501: no CONNECT privilege. Not 53300 (too many clients) nor 57P03 (starting
 * up, shutting down): those pass, and the pool's backoff waits for them. */
static bool refusal_is_final(const char *sqlstate)
{
    return sqlstate && (strncmp(sqlstate, "28", 2) == 0 || strcmp(sqlstate, "3D000") == 0 ||
                        strcmp(sqlstate, "42501") == 0);
}

/* The server answered the login with an ErrorResponse (sqlstate and message as it sent them;
 * NULL for a failure of sluice's or libpq's own): a refusal that retrying will not mend reaches
 * the pool's waiting clients as the server's own FATAL; anything else (too many clients,
 * starting up) is a failed connect. why is for the log. */
/* What Postgres answers a startup parameter it refuses (process_startup_options raises the
 * set_config error to FATAL): 42704 no such parameter, 22023 and the rest of class 22 a bad
 * value, 42501 not permitted, 55P02 not settable now, 0A000 not supported, class 25 a
 * transaction setting (transaction_isolation: 25001 "SET TRANSACTION ISOLATION LEVEL must be
 * called before any query"), 58P01 a library it cannot find (local_preload_libraries, loaded
 * at the backend's start). The backend's own reason, not the database's: it says nothing of
 * whether the database takes connections. */
static bool refusal_is_startup_option(const struct server *s, const char *sqlstate)
{
    return s->startup.n > 0 && sqlstate &&
           (strncmp(sqlstate, "22", 2) == 0 || strcmp(sqlstate, "42704") == 0 ||
            strcmp(sqlstate, "42501") == 0 || strncmp(sqlstate, "55", 2) == 0 ||
            strcmp(sqlstate, "0A000") == 0 || strncmp(sqlstate, "25", 2) == 0 ||
            strcmp(sqlstate, "58P01") == 0);
}

static void login_failed(struct server *s, const char *why, const char *sqlstate,
                         const char *message)
{
    if (refusal_is_startup_option(s, sqlstate)) {
        /* The clients that want these startup parameters get Postgres's FATAL; no backoff, no
         * breaker: the others are served as before. */
        char state[6], text[512];
        snprintf(state, sizeof(state), "%s", sqlstate);
        snprintf(text, sizeof(text), "%s", message);
        struct pool *p = s->pool;
        uint64_t fp = s->startup_fp;
        server_close(s, why);
        pool_startup_refused(p, fp, state, text);
        return;
    }
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
        login_failed(s, why, sqlstate, code + 7);
        return;
    }
    /* libpq's own "fe_sendauth: no password supplied" (or another answer it cannot make): the
     * server asked the user for a proof sluice has nothing for; nothing is down. */
    if (strstr(msg, "fe_sendauth: ")) {
        char told[256];
        server_login_unprovable_message(s->pool->user_name, told, sizeof(told));
        login_failed(s, msg, "28000", told);
        return;
    }
    server_connect_failed(s, msg);
}

/* libpq's login step. PQconnectPoll may close its socket: a refused connect, EOF or a failed
 * write during the login, the next address or host of a list (which opens another socket, under
 * the same number or not), a retry without TLS. The socket is lent to it for the call
 * (sockio_lend): once closed, its number may be another worker's at once, and sluice must not
 * touch it, not even to take it off this loop's epoll set. The socket after the call, a new one
 * under the old number included, is watched afresh (watch_libpq_socket). */
static void connect_step(struct server *s)
{
    sockio_lend(&s->io);
    PostgresPollingStatusType st = PQconnectPoll(s->conn);
    switch (st) {
    case PGRES_POLLING_READING:
        watch_libpq_socket(s, UV_READABLE);
        return;
    case PGRES_POLLING_WRITING:
        watch_libpq_socket(s, UV_WRITABLE);
        return;
    case PGRES_POLLING_OK:
        PQsetErrorVerbosity(s->conn, PQERRORS_DEFAULT);
        login_next(s);
        return;
    default:
        libpq_failed(s);
        return;
    }
}

/* ---- the passthrough login's reports, and the socket in every connecting state ---- */

static void on_login_report(struct server *s, enum login_result result,
                            const struct login_report *r)
{
    switch (result) {
    case LOGIN_RESULT_FAILED:
        login_failed(s, r->why, r->sqlstate, r->message);
        return;
    case LOGIN_RESULT_LOGGED_IN:
        login_next(s);
        return;
    case LOGIN_RESULT_ROW:
        login_query_row(s, r->value);
        return;
    case LOGIN_RESULT_QUERY_ERROR:
        login_query_error(s, r->message);
        return;
    case LOGIN_RESULT_QUERY_DONE:
        login_query_done(s);
        return;
    }
}

/* The socket callback of a server in a connecting state; logged_in hands the socket to
 * server.c (server_on_io). */
static void on_connecting_io(struct sockio *io, int status, int events)
{
    struct server *s = io->owner;
    switch (s->state) {
    case SERVER_LOGIN:
        connect_step(s);
        return;
    case SERVER_LOGIN_PASSTHROUGH:
        server_login_step(s, status, events);
        return;
    case SERVER_PROBING:
    case SERVER_CONNECT_QUERY:
        if (s->login)
            server_login_step(s, status, events);
        else
            login_query_step(s);
        return;
    default: /* RESOLVING has no socket yet; the others are server.c's */
        return;
    }
}

void server_connect_failed(struct server *s, const char *why)
{
    struct pool *p = s->pool;
    server_close(s, why);
    pool_connect_failed(p, why);
}
