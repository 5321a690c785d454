/* client_login: a client's way in (see client_login.h): the startup packet (SSLRequest, the TLS
 * handshake, CancelRequest, the startup parameters), the authentication messages handed to
 * auth.c, the checks once the password is proven (max_client_conn, DISABLE, the per-database and
 * per-user client caps, budgets) and the welcome. What happens once the client is linked to a
 * server for its welcome is client.c's. */
#include "client_login.h"

#include <errno.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "console.h"
#include "disabled_dbs.h"
#include "auth.h"
#include "budget.h"
#include "cancel.h"
#include "client.h"
#include "log.h"
#include "login_notice.h"
#include "pool.h"
#include "pool_mode.h"
#include "sluice.h"
#include "startup_options.h"
#include "tls.h"

/* ---- the authentication exchange: auth.c decides, the client acts ---- */

struct long_auth_message;
static void free_long_auth(struct long_auth_message *m);

bool client_login_waits_on_sluice(const struct client *c)
{
    /* a lookup held back behind other addresses' waits on its own address's flood of lookups,
     * not on sluice: such a login gives its place up like a stalled one (auth_query.c) */
    return c->state == CLIENT_AUTH && c->auth && !auth_awaits_message(c->auth) &&
           !auth_lookup_held_back(c->auth);
}

void client_auth_end(struct client *c)
{
    auth_end(c->auth);
    c->auth = NULL;
    if (c->long_auth) {
        free_long_auth(c->long_auth);
        c->long_auth = NULL;
    }
}

static void act_on_auth(struct client *c, const struct auth_result *r)
{
    switch (r->verdict) {
    case AUTH_GOES_ON:
        if (c->out_pos < c->out.len)
            client_send(c); /* the challenge (nothing while the secret is looked up) */
        return;
    case AUTH_PROVEN:
        client_auth_end(c);
        client_login_ok(c);
        return;
    case AUTH_REFUSED:
        client_auth_end(c);
        client_fail(c, r->failure, r->detail);
        return;
    }
}

static void on_auth_resumed(void *owner, const struct auth_result *r)
{
    struct client *c = owner;
    if (c->state != CLIENT_AUTH)
        return; /* failed meanwhile (a timeout): the exchange ends when the client closes */
    /* Asked only now: the client's time to answer starts here, not when sluice began to look
     * its secret up (a login gives way only once it has kept sluice waiting, gives_way). */
    c->state_since_ms = sluice_now(c->worker);
    act_on_auth(c, r);
    client_login_on_auth_bytes(c); /* an answer the client sent before it was asked */
    /* Such an answer may have filled the read buffer, which stopped the reading; taken now (a
     * long one is being gathered), its rest is read here: no poll event is due for bytes that
     * came while the buffer was full. */
    if (c->state == CLIENT_AUTH)
        client_read_and_handle(c);
}

static void on_auth_log(void *owner, enum log_level level, const char *fmt, va_list ap)
{
    log_client_v(level, owner, fmt, ap);
}

static const struct auth_hooks auth_hooks = {.resumed = on_auth_resumed, .log = on_auth_log};

static void start_auth(struct client *c)
{
    struct auth_login l = {.worker = c->worker,
                           .user = c->user,
                           .database = c->database,
                           .addr = &c->addr,
                           .ssl = c->io.ssl,
                           .admin = c->admin,
                           .out = &c->out,
                           .hooks = &auth_hooks,
                           .owner = c};
    struct auth_result r;
    c->auth = auth_start(&l, &r);
    act_on_auth(c, &r);
}

/* ---- the startup packet ---- */

static bool param_is_protocol_level(const char *name)
{
    return strcmp(name, "user") == 0 || strcmp(name, "database") == 0 ||
           strcmp(name, "options") == 0 || strcmp(name, "replication") == 0;
}

/* name=value after the settings before it in c->settings_in_order. 0 or -ENOMEM. */
static int put_in_order(struct client *c, const char *name, const char *value)
{
    codec_put_cstring(c->settings_in_order, name);
    codec_put_cstring(c->settings_in_order, value);
    return c->settings_in_order->oom ? -ENOMEM : 0;
}

/* Set name to value in c's parameters. Once a name comes a second time with another value,
 * every setting is kept in order in c->settings_in_order (client.h), those before it too, to be
 * tried on the server as Postgres tries them: the first it refuses names the login's error,
 * and the last of each name is the one that stands. A value a name already has adds nothing:
 * it was tried where it came first. 0 or -ENOMEM. */
static int take_setting(struct client *c, const char *name, const char *value)
{
    const char *had = params_get(&c->params, name);
    if (had && strcmp(had, value) == 0)
        return 0;
    if (had && !c->settings_in_order) {
        c->settings_in_order = malloc(sizeof(*c->settings_in_order));
        if (!c->settings_in_order)
            return -ENOMEM;
        codec_out_init(c->settings_in_order);
        /* no name has come twice yet: each holds the value it came with, in the order taken */
        for (int i = 0; i < c->params.n; i++)
            if (put_in_order(c, c->params.items[i].name, c->params.items[i].value) < 0)
                return -ENOMEM;
    }
    if (c->settings_in_order && put_in_order(c, name, value) < 0)
        return -ENOMEM;
    return params_set(&c->params, name, value) < 0 ? -ENOMEM : 0;
}

void client_forget_settings_in_order(struct client *c)
{
    if (!c->settings_in_order)
        return;
    codec_out_free(c->settings_in_order);
    free(c->settings_in_order);
    c->settings_in_order = NULL;
}

static int take_option(void *arg, const char *name, const char *value)
{
    struct client *c = arg;
    if (config_list_contains(&c->worker->cfg->ignore_startup_parameters, name))
        return 0;
    return take_setting(c, name, value);
}

/* The "options" startup parameter's settings, except those that ignore_startup_parameters
 * names (as a parameter of their own they would be ignored too). Options Postgres would refuse
 * are kept in c->options_refusal, told after authentication (client_login_ok). 0 or -ENOMEM. */
static int take_options(struct client *c, const char *options)
{
    struct setting_sink sink = {.take = take_option, .arg = c};
    return startup_options_each(&sink, options, &c->options_refusal);
}

/* application_name_add_host (PgBouncer's): the client's address after its application_name,
 * "app - 10.1.2.3:51234", so that pg_stat_activity on the server that runs its transaction
 * shows who holds it. The client reads it back as its own (as from PgBouncer); a SET later
 * replaces it. Postgres cuts an application_name at 63 bytes. 0 or -ENOMEM. */
static int add_host_to_application_name(struct client *c)
{
    char where[64];
    peer_addr_text(&c->addr, where, sizeof(where));
    const char *app = params_get(&c->params, "application_name");
    char value[128];
    snprintf(value, sizeof(value), "%s - %s", app ? app : "", where);
    return params_set(&c->params, "application_name", value);
}

/* Every refusal of an authenticated client: Postgres sends AuthenticationOk before what
 * InitPostgres refuses (an unknown database 3D000, a role's or database's CONNECTION LIMIT 53300,
 * options it cannot take), so the client sees the same sequence from sluice. */
static void refuse_after_authentication(struct client *c, enum failure f, const char *detail)
{
    codec_put_auth_request(&c->out, 0, NULL, 0); /* AuthenticationOk */
    client_fail(c, f, detail);
}

/* Postgres refuses options it cannot take in InitPostgres, once the password and the database
 * are checked: so does sluice, in its words. True when c was refused. */
static bool refuse_options(struct client *c)
{
    const struct options_refusal *r = c->options_refusal;
    if (!r)
        return false;
    static const enum failure failure_of[] = {
        [OPTIONS_BAD_ARGUMENT] = FAIL_OPTIONS_BAD_ARGUMENT,
        [OPTIONS_C_WITHOUT_VALUE] = FAIL_OPTIONS_C_WITHOUT_VALUE,
        [OPTIONS_LONG_WITHOUT_VALUE] = FAIL_OPTIONS_LONG_WITHOUT_VALUE,
        [OPTIONS_UNKNOWN_PARAMETER] = FAIL_OPTIONS_UNKNOWN_PARAMETER,
        [OPTIONS_BAD_PARAMETER_NAME] = FAIL_OPTIONS_BAD_PARAMETER_NAME,
    };
    refuse_after_authentication(c, failure_of[r->fault], r->word);
    return true;
}

/* The database a StartupMessage names: "database", else the user's name (as Postgres). */
static const char *login_database(const struct startup_packet *sp)
{
    const char *database = codec_startup_get(sp, "database");
    return database && database[0] ? database : codec_startup_get(sp, "user");
}

/* A console login runs on worker 0 (architecture.md 5.6): moved there before anything of it
 * is taken here. */
static bool moved_to_console(struct client *c, const struct startup_packet *sp,
                             const uint8_t *packet, uint32_t len)
{
    const char *database = login_database(sp);
    return database && console_is_db(c->worker, database) &&
           client_move_console_login(c, packet, len);
}

/* A startup parameter "_pq_.name" asks for a protocol extension; sluice knows none. */
static bool param_is_protocol_option(const char *name)
{
    return strncmp(name, "_pq_.", 5) == 0;
}

/* Protocol section 55.2.1: a client asking for a newer 3.x minor version, or for protocol
 * options, is told what it gets (3.0, none of the options) with NegotiateProtocolVersion,
 * before authentication, as Postgres tells it; it then speaks 3.0 or gives up. */
static void negotiate_protocol(struct client *c, const struct startup_packet *sp)
{
    int32_t unknown = 0;
    struct startup_param at = {0};
    while (codec_startup_next(sp, &at))
        unknown += param_is_protocol_option(at.name);
    if (sp->code == CODEC_PROTOCOL_3_0 && unknown == 0)
        return;
    codec_begin(&c->out, 'v');
    codec_put_i32(&c->out, (int32_t)CODEC_PROTOCOL_3_0);
    codec_put_i32(&c->out, unknown);
    for (at = (struct startup_param){0}; codec_startup_next(sp, &at);)
        if (param_is_protocol_option(at.name))
            codec_put_cstring(&c->out, at.name);
    codec_end(&c->out);
}

/* What a "replication" startup parameter asks for, read as Postgres reads it: "database"
 * (case matters), or a boolean as parse_bool takes one (any case, any prefix of true, false,
 * yes, no; on, off from two letters; 1, 0). */
enum replication_ask { REPLICATION_NOT_ASKED, REPLICATION_ASKED, REPLICATION_VALUE_INVALID };

static enum replication_ask replication_asked(const char *value)
{
    if (!value)
        return REPLICATION_NOT_ASKED;
    if (strcmp(value, "database") == 0)
        return REPLICATION_ASKED;
    static const struct {
        const char *word;
        size_t min_len;
        enum replication_ask means;
    } words[] = {
        {"true", 1, REPLICATION_ASKED}, {"false", 1, REPLICATION_NOT_ASKED},
        {"yes", 1, REPLICATION_ASKED},  {"no", 1, REPLICATION_NOT_ASKED},
        {"on", 2, REPLICATION_ASKED},   {"off", 2, REPLICATION_NOT_ASKED},
        {"1", 1, REPLICATION_ASKED},    {"0", 1, REPLICATION_NOT_ASKED},
    };
    size_t len = strlen(value);
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
        if (len >= words[i].min_len && len <= strlen(words[i].word) &&
            strncasecmp(value, words[i].word, len) == 0)
            return words[i].means;
    return REPLICATION_VALUE_INVALID;
}

/* Postgres's NAMEDATALEN - 1: ProcessStartupPacket cuts the user and database names there, byte
 * by byte (a multibyte character may be split, as there). */
#define PG_NAME_MAX 63

static void handle_login(struct client *c, const struct startup_packet *sp)
{
    struct worker *worker = c->worker;
    const struct config *cfg = worker->cfg;
    negotiate_protocol(c, sp);
    const char *user = codec_startup_get(sp, "user");
    const char *database = codec_startup_get(sp, "database");
    enum replication_ask replication = replication_asked(codec_startup_get(sp, "replication"));
    if (!user || !user[0]) {
        client_fail(c, FAIL_NO_USER, "");
        return;
    }
    if (!database || !database[0])
        database = user;
    /* One block holds both names: user owns it (an idle client should be small). Each is cut
     * at PG_NAME_MAX bytes, as Postgres cuts them before it looks them up: a longer name
     * reaches the same role and database there, so here it must find the same auth_file entry,
     * pool and caps, not a pool of its own beside them. */
    size_t ulen = strnlen(user, PG_NAME_MAX), dlen = strnlen(database, PG_NAME_MAX);
    c->user = malloc(ulen + 1 + dlen + 1);
    if (!c->user) {
        client_fail(c, FAIL_OUT_OF_MEMORY, "");
        return;
    }
    memcpy(c->user, user, ulen);
    c->user[ulen] = '\0';
    c->database = c->user + ulen + 1;
    memcpy(c->database, database, dlen);
    c->database[dlen] = '\0';
    /* Either kind of walsender session needs a server of its own for the client's whole
     * life, and its COPY BOTH stream and replication commands are not something a pool can
     * share (README, "Moving from PgBouncer"). A value Postgres cannot read gets its error. */
    if (replication == REPLICATION_VALUE_INVALID) {
        client_fail(c, FAIL_BAD_REPLICATION_VALUE, codec_startup_get(sp, "replication"));
        return;
    }
    if (replication == REPLICATION_ASKED) {
        client_fail(c, FAIL_REPLICATION_UNSUPPORTED, "");
        return;
    }
    if (worker->proc->phase != PHASE_RUNNING) {
        client_fail(c, FAIL_SHUTDOWN, "");
        return;
    }
    /* Who may use the admin console is checked only once the password is (client_login_ok):
     * refusing other names here, at once, would tell a stranger which names are admins. */
    c->admin = console_is_db(worker, c->database);
    /* An unknown database is told only after authentication (client_login_ok): before it, a
     * client without credentials could probe which database names exist. The settings in
     * "options" come first and a parameter given on its own overrides them, as Postgres
     * applies them (process_startup_options: the command line, then the other parameters). */
    const char *options = codec_startup_get(sp, "options");
    if (options && !config_list_contains(&cfg->ignore_startup_parameters, "options")) {
        if (take_options(c, options) < 0) {
            client_fail(c, FAIL_OUT_OF_MEMORY, "");
            return;
        }
    }
    for (struct startup_param at = {0}; codec_startup_next(sp, &at);) {
        const char *name = at.name;
        if (param_is_protocol_level(name) || param_is_protocol_option(name) ||
            config_list_contains(&cfg->ignore_startup_parameters, name))
            continue;
        if (!params_valid_name(name, strlen(name)) || strchr(name, '-')) {
            /* Postgres takes the packet and refuses the name once the password is checked
             * (42704, or 42602 for a custom name), after what "options" refused, if anything */
            if (!c->options_refusal && startup_options_refuse_name(&c->options_refusal, name) < 0) {
                client_fail(c, FAIL_OUT_OF_MEMORY, "");
                return;
            }
            continue;
        }
        if (take_setting(c, name, at.value) < 0) {
            client_fail(c, FAIL_OUT_OF_MEMORY, "");
            return;
        }
    }
    if (cfg->application_name_add_host && !c->admin && add_host_to_application_name(c) < 0) {
        client_fail(c, FAIL_OUT_OF_MEMORY, "");
        return;
    }
    /* Session mode opens the client's backends with its parameters, when they fit a server's
     * startup packet; else with the pool's, and SETs them after, as in transaction mode (so too
     * when a setting was given twice: a startup packet carries one value of a name). */
    c->startup_fp = params_startup_size(&c->params) <= PARAMS_STARTUP_ROOM && !c->settings_in_order
                        ? params_startup_fingerprint(&c->params)
                        : 0;
    /* A setting Postgres takes only at connection start cannot be SET on a pooled backend
     * (55P02): such a client's servers are opened with its startup parameters in every mode
     * and serve only clients that sent the same ones. Where they do not fit a startup packet
     * (startup_fp 0) it is SET as before, and Postgres refuses it. */
    c->startup_scope = !c->admin && c->startup_fp != 0 && params_hold_start_only(&c->params)
                           ? STARTUP_SCOPE_EVERY_MODE
                           : STARTUP_SCOPE_SESSION;
    if (!c->admin)
        c->login_notices = login_notice_plan(&c->params);
    client_set_state(c, CLIENT_AUTH);
    start_auth(c);
}

void client_send_welcome(struct client *c, const struct param_set *server_params)
{
    /* Postgres's login NOTICEs come after AuthenticationOk, before the first ParameterStatus:
     * nothing is written to the client between the two. */
    login_notice_put(&c->out, c->login_notices, params_get(server_params, "server_encoding"),
                     &c->worker->login_notice_src);
    free(c->login_notices);
    c->login_notices = NULL;
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

/* The names a client is counted under in the ledger's logged-in counts: an admin console
 * client only globally (PgBouncer does not count its sessions against the per-database and
 * per-user client caps). */
static const char *slot_db(const struct client *c)
{
    return c->admin ? NULL : c->database;
}

static const char *slot_user(const struct client *c)
{
    return c->admin ? NULL : c->user;
}

/* max_client_conn, and for a database's client max_db_client_connections and
 * max_user_client_connections (PgBouncer's per-database and per-user client caps): checked and
 * counted in one step once the password is, so a stranger learns nothing of a database from
 * them. True when c holds its slot; else it was refused. */
static bool take_login_slot(struct client *c, const struct db_entry *db)
{
    const struct config *cfg = c->worker->cfg;
    struct ledger *l = &c->worker->proc->ledger;
    struct ledger_login_caps caps = {.global = (int)cfg->max_client_conn};
    if (db) {
        const struct user_entry *u = config_find_user(cfg, c->user);
        caps.db = (int)(db->max_db_client_connections > 0 ? db->max_db_client_connections
                                                          : cfg->max_db_client_connections);
        caps.user =
            (int)(u && u->max_user_client_connections > 0 ? u->max_user_client_connections
                                                          : cfg->max_user_client_connections);
    }
    char detail[320];
    switch (ledger_take_login(l, (int)c->worker->index, slot_db(c), slot_user(c), &caps)) {
    case LOGIN_COUNTED:
        c->login_slot = LOGIN_SLOT_HELD;
        return true;
    case LOGIN_OVER_CLIENT_CONN:
        snprintf(detail, sizeof(detail), "max_client_conn (%d) reached", caps.global);
        refuse_after_authentication(c, FAIL_MAX_CLIENT_CONN, detail);
        return false;
    case LOGIN_OVER_DB_CLIENTS:
        snprintf(detail, sizeof(detail),
                 "database \"%s\" has %d clients, max_db_client_connections = %d", c->database,
                 ledger_db_clients(l, c->database), caps.db);
        refuse_after_authentication(c, FAIL_DB_CLIENT_CAP, detail);
        return false;
    case LOGIN_OVER_USER_CLIENTS:
        snprintf(detail, sizeof(detail),
                 "user \"%s\" has %d clients, max_user_client_connections = %d", c->user,
                 ledger_user_clients(l, c->user), caps.user);
        refuse_after_authentication(c, FAIL_USER_CLIENT_CAP, detail);
        return false;
    case LOGIN_OUT_OF_MEMORY:
        break;
    }
    client_fail(c, FAIL_OUT_OF_MEMORY, "");
    return false;
}

void client_login_give_slot(struct client *c)
{
    if (c->login_slot != LOGIN_SLOT_HELD)
        return;
    ledger_give_login(&c->worker->proc->ledger, (int)c->worker->index, slot_db(c), slot_user(c));
    c->login_slot = LOGIN_SLOT_NONE;
}

/* A request the client sent behind its login is in the buffer already (read with the startup
 * packet or the password, or moved to worker 0 with a console login, architecture.md 5.6): no
 * poll event will announce it. */
static void handle_buffered(struct client *c)
{
    if (c->state == CLIENT_IDLE && buf_unframed(&c->in) >= CODEC_HEADER_LEN)
        client_on_data(c);
}

void client_login_ok(struct client *c)
{
    struct worker *worker = c->worker;
    /* Counted here, once the password is checked: logins in progress have their own cap
     * (make_room_for_a_login), so strangers who never finish cannot fill max_client_conn. Asked
     * first, as before every other refusal; take_login_slot counts it below. */
    if (ledger_db_clients(&worker->proc->ledger, NULL) >= worker->cfg->max_client_conn) {
        char detail[96];
        snprintf(detail, sizeof(detail), "max_client_conn (%lld) reached",
                 (long long)worker->cfg->max_client_conn);
        refuse_after_authentication(c, FAIL_MAX_CLIENT_CONN, detail);
        return;
    }
    if (c->admin) {
        if (!config_list_contains(&worker->cfg->admin_users, c->user) &&
            !config_list_contains(&worker->cfg->stats_users, c->user)) {
            char detail[160]; /* the cause, for the client and for the operator's log line */
            snprintf(detail, sizeof(detail),
                     ": user \"%.64s\" is in neither admin_users nor stats_users", c->user);
            refuse_after_authentication(c, FAIL_ADMIN_DENIED, detail);
            return;
        }
        if (!take_login_slot(c, NULL) || refuse_options(c))
            return;
        c->pool = pool_get(worker, NULL, c->user, c->database);
        if (!c->pool || cancel_register(worker->cancel_map, c) < 0) {
            client_fail(c, FAIL_OUT_OF_MEMORY, "");
            return;
        }
        codec_put_auth_request(&c->out, 0, NULL, 0); /* AuthenticationOk */
        log_client(LOG_INFO, c, "admin console login");
        console_welcome(c);
        client_set_state(c, CLIENT_IDLE);
        client_send(c);
        handle_buffered(c);
        return;
    }
    const struct db_entry *db = config_find_db(worker->cfg, c->database);
    if (!db) {
        refuse_after_authentication(c, FAIL_UNKNOWN_DATABASE, c->database);
        return;
    }
    if (disabled_dbs_contains(worker->proc, c->database)) {
        refuse_after_authentication(c, FAIL_DATABASE_DISABLED, c->database);
        return;
    }
    if (!take_login_slot(c, db) || refuse_options(c))
        return;
    const struct budget_rule *b;
    if (!budget_join(worker, params_get(&c->params, "application_name"), c->user, &c->addr, &b)) {
        char detail[160];
        snprintf(detail, sizeof(detail), "budget \"%s\" has max_clients (%d) connected", b->name,
                 b->max_clients);
        refuse_after_authentication(c, FAIL_BUDGET_CLIENTS, detail);
        return;
    }
    c->budget = b ? b->budget
                  : NULL; /* its client slot: client_close gives it back, whatever happens next */
    c->pool = pool_get(worker, db, c->user, c->database);
    if (!c->pool || cancel_register(worker->cancel_map, c) < 0) {
        client_fail(c, FAIL_OUT_OF_MEMORY, "");
        return;
    }
    c->mode = c->pool->mode;
    codec_put_auth_request(&c->out, 0, NULL, 0); /* AuthenticationOk */
    if (worker->cfg->log_connections)
        log_client(LOG_INFO, c, "login ok (%s mode)", pool_mode_name(c->mode));
    if (pool_knows_welcome(c->pool) && !c->settings_in_order &&
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
int client_keep_login_params(struct client *c)
{
    if (c->params.n == 0 || c->login_params)
        return 0;
    c->login_params = malloc(sizeof(*c->login_params));
    if (!c->login_params)
        return -ENOMEM;
    params_init(c->login_params);
    return params_copy(c->login_params, &c->params);
}

int client_take_login_defaults(struct client *c, const struct param_set *defaults)
{
    const char *name = "idle_session_timeout";
    const char *v = params_get(defaults, name);
    if (c->admin || !v || params_get(&c->params, name))
        return 0; /* a startup option outranks the role's value, in Postgres too */
    if (params_set(&c->params, name, v) < 0)
        return -ENOMEM;
    return c->login_params && params_set(c->login_params, name, v) < 0 ? -ENOMEM : 0;
}

void client_keep_welcome(struct client *c, const struct param_set *told)
{
    for (int i = 0; i < told->n; i++) {
        const struct param *it = &told->items[i];
        /* Only what a session may SET: server_version, is_superuser or session_authorization
         * of another upstream are the server's, and a SET of them would fail or be refused. */
        if (!params_is_client_settable(it->name) || params_get(&c->params, it->name))
            continue;
        if (params_set(&c->params, it->name, it->value) < 0) {
            client_fail(c, FAIL_OUT_OF_MEMORY, "");
            return;
        }
    }
}

void client_welcome_from_pool(struct client *c)
{
    if (client_take_login_defaults(c, &c->pool->welcome) < 0 || client_keep_login_params(c) < 0) {
        client_fail(c, FAIL_OUT_OF_MEMORY, "");
        return;
    }
    client_send_welcome(c, &c->pool->welcome);
    client_set_state(c, CLIENT_IDLE);
    client_send(c);
    handle_buffered(c);
}

/* The handshake goes on whenever the socket is ready the way OpenSSL asked for. */
void client_login_tls_step(struct client *c)
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
        client_read_and_handle(c);
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
    client_login_tls_step(c);
}

/* Bits of c->encryption_answered. */
enum encryption_request { ASKED_SSL = 1, ASKED_GSSENC = 2 };

/* An SSLRequest or GSSENCRequest: TLS starts, or 'N' and the client goes on unencrypted
 * (protocol section 55.2.10) or gives up. False when the client is failed or TLS starts. */
static bool answer_encryption_request(struct client *c, const struct startup_packet *sp)
{
    unsigned asked = sp->kind == STARTUP_SSL_REQUEST ? ASKED_SSL : ASKED_GSSENC;
    /* Postgres answers each once (TLS started answers both): a second is read as a startup
     * packet of an unknown protocol version, 1234.5679 or 1234.5680, and refused so. */
    if ((c->encryption_answered & asked) || c->io.ssl) {
        char version[32];
        snprintf(version, sizeof(version), "%u.%u", sp->code >> 16, sp->code & 0xffff);
        client_fail(c, FAIL_UNSUPPORTED_PROTOCOL, version);
        return false;
    }
    c->encryption_answered |= (uint8_t)asked;
    if (sp->kind == STARTUP_SSL_REQUEST && tls_client_mode() != SSLMODE_DISABLE &&
        c->addr.sa.sa_family != AF_UNIX) {
        start_tls(c);
        return false;
    }
    codec_put_u8(&c->out, 'N');
    client_send(c);
    if (c->state != CLIENT_STARTUP)
        return false;
    /* Postgres refuses bytes sent behind the request whatever it answered: the client was to
     * wait for the answer before it goes on (ProcessStartupPacket, pq_buffer_has_data). */
    if (!buf_is_empty(&c->in)) {
        client_fail(c, FAIL_PROTOCOL_VIOLATION,
                    asked == ASKED_SSL ? "received unencrypted data after SSL request"
                                       : "received unencrypted data after GSSAPI encryption "
                                         "request");
        return false;
    }
    return true;
}

/* Postgres closes a connection whose startup length is out of range without a word: it only
 * logs "invalid length of startup packet" (ProcessStartupPacket, COMMERROR), since what came is
 * no Postgres client's and may read nothing. The log line says it here too. */
static void refuse_startup_length(struct client *c, uint32_t len)
{
    if (c->worker->cfg->log_pooler_errors)
        log_client(LOG_WARNING, c,
                   "%s: closing without an answer, as Postgres does: invalid length of startup "
                   "packet (%u, outside 8..%u bytes)",
                   failure_name(FAIL_BAD_STARTUP), len, (unsigned)CODEC_MAX_STARTUP_LEN);
    client_close(c, "invalid length of startup packet");
}

void client_login_on_startup_bytes(struct client *c)
{
    for (;;) {
        struct buf *b = &c->in;
        uint32_t total;
        enum frame_result fr = codec_frame_startup(b->data + b->scan, buf_unframed(b), &total);
        if (fr == FRAME_NEED_MORE)
            return;
        if (fr == FRAME_BAD_LENGTH) {
            /* Postgres 15 refuses direct TLS too (its record header as a startup length) */
            if (codec_starts_tls_handshake(b->data + b->scan, buf_unframed(b))) {
                client_fail(c, FAIL_BAD_STARTUP,
                            "a TLS handshake without an SSLRequest first (direct TLS, libpq's "
                            "sslnegotiation=direct) is not supported: connect with "
                            "sslnegotiation=postgres");
                return;
            }
            refuse_startup_length(c, codec_get_u32(b->data + b->scan));
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
            if (!answer_encryption_request(c, &sp))
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
            /* A CancelRequest of the wrong length: Postgres only logs it and closes, since a
             * cancelling client reads no answer (ProcessStartupPacket, COMMERROR). */
            if (sp.code == CODEC_CANCEL_CODE) {
                client_close(c, "CancelRequest of the wrong length");
                return;
            }
            /* A 3.x packet whose name/value pairs do not end in one zero byte, the last */
            if (sp.code >> 16 == CODEC_PROTOCOL_3_0 >> 16) {
                client_fail(c, FAIL_STARTUP_LAYOUT, "");
                return;
            }
            client_fail(c, FAIL_BAD_STARTUP, "malformed packet");
            return;
        case STARTUP_V3:
            if (moved_to_console(c, &sp, packet, total))
                return;
            handle_login(c, &sp);
            /* A password message sent with the startup packet: no poll event will announce it */
            client_login_on_auth_bytes(c);
            return;
        }
    }
}

/* ---- authentication messages longer than the read buffer ---- */

/* A message longer than the read buffer holds (pkt_buf - 5 bytes: a long cleartext password, a
 * cloud provider's token used as one, which Postgres takes up to 65535 bytes) is gathered into a
 * block of its own as it arrives, freed once auth.c has it or the exchange ends (client_auth_end).
 * What strangers can make sluice hold before they log in stays bounded: at most
 * max_client_logins such blocks in the whole process (one count for every worker, as
 * max_client_logins is one cap), each at most 64 kB; a login past that is refused (53300) and
 * may retry. One that stalls while sending gives way like any stalled login
 * (make_room_for_a_login), and its block goes with it. */
struct long_auth_message {
    uint8_t type;
    uint32_t len, have; /* the body's length, and how much of it has arrived */
    uint8_t body[];
};

static atomic_int long_auth_messages; /* being gathered now, every worker's */

static bool take_long_auth_place(const struct config *cfg)
{
    int n = atomic_load_explicit(&long_auth_messages, memory_order_relaxed);
    do {
        if (n >= cfg->max_client_logins)
            return false;
    } while (!atomic_compare_exchange_weak_explicit(&long_auth_messages, &n, n + 1,
                                                    memory_order_relaxed, memory_order_relaxed));
    return true;
}

static void free_long_auth(struct long_auth_message *m)
{
    OPENSSL_cleanse(m->body, m->have); /* a password */
    free(m);
    atomic_fetch_sub_explicit(&long_auth_messages, 1, memory_order_relaxed);
}

/* The message whose header is at c->in's scan, a body of body_len bytes, is gathered from now
 * on. False when c was refused. */
static bool start_long_auth(struct client *c, uint8_t type, uint32_t body_len)
{
    const struct config *cfg = c->worker->cfg;
    if (!take_long_auth_place(cfg)) {
        char detail[160];
        snprintf(detail, sizeof(detail),
                 "max_client_logins (%lld) logins are sending authentication messages longer "
                 "than pkt_buf",
                 (long long)cfg->max_client_logins);
        client_fail(c, FAIL_TOO_MANY_LONG_AUTH, detail);
        return false;
    }
    struct long_auth_message *m = malloc(sizeof(*m) + body_len);
    if (!m) {
        atomic_fetch_sub_explicit(&long_auth_messages, 1, memory_order_relaxed);
        client_fail(c, FAIL_OUT_OF_MEMORY, "");
        return false;
    }
    *m = (struct long_auth_message){.type = type, .len = body_len};
    c->long_auth = m;
    c->in.scan += CODEC_HEADER_LEN;
    buf_consume(&c->in, CODEC_HEADER_LEN);
    return true;
}

/* Move what has arrived of c's long message out of the read buffer, which has room again for
 * the rest. True once it is whole. */
static bool gather_long_auth(struct client *c)
{
    struct long_auth_message *m = c->long_auth;
    struct buf *b = &c->in;
    uint32_t n = buf_unframed(b);
    if (n > m->len - m->have)
        n = m->len - m->have;
    if (n > 0) {
        memcpy(m->body + m->have, b->data + b->scan, n);
        m->have += n;
        b->scan += n;
        buf_consume(b, n);
    }
    return m->have == m->len;
}

static void answer_auth(struct client *c, uint8_t type, const uint8_t *body, uint32_t len)
{
    struct auth_result r;
    auth_on_message(c->auth, type, body, len, &r);
    act_on_auth(c, &r); /* r may point into body */
}

/* The client's answers to the Authentication requests, each read once it is asked for, as
 * Postgres reads them: one the client sent ahead (with its startup packet, or while its secret was
 * looked up) waits in the buffer until then; several in one read are taken in turn. Each may be
 * as long as Postgres takes it (auth_message_max): one longer than the read buffer is gathered
 * (start_long_auth). */
void client_login_on_auth_bytes(struct client *c)
{
    struct buf *b = &c->in;
    while (c->state == CLIENT_AUTH && auth_awaits_message(c->auth)) {
        if (c->long_auth) {
            if (!gather_long_auth(c))
                return;
            struct long_auth_message *m = c->long_auth;
            c->long_auth = NULL; /* the answer may end the exchange: m is freed here, after */
            answer_auth(c, m->type, m->body, m->len);
            free_long_auth(m);
            continue;
        }
        uint8_t type;
        uint32_t body_len;
        enum frame_result fr = codec_frame_header(b->data + b->scan, buf_unframed(b),
                                                  UINT32_MAX - 4, &type, &body_len);
        if (fr == FRAME_NEED_MORE)
            return;
        if (fr == FRAME_BAD_LENGTH) {
            client_fail(c, FAIL_PROTOCOL_VIOLATION, "bad length in authentication message");
            return;
        }
        if (body_len > auth_message_max(c->auth)) {
            struct auth_result r;
            auth_on_oversized(c->auth, type, body_len, &r);
            act_on_auth(c, &r);
            return;
        }
        uint32_t whole = CODEC_HEADER_LEN + body_len;
        if (whole > buf_block_size()) {
            if (type != 'p') { /* refused for its type, as Postgres does before it reads on */
                answer_auth(c, type, NULL, 0);
                return;
            }
            if (!start_long_auth(c, type, body_len))
                return;
            continue;
        }
        if (buf_unframed(b) < whole)
            return;
        /* A copy, taken before the message is consumed: the login it answers may read the
         * client's next message from the same buffer. */
        uint8_t small[8192];
        uint8_t *body = body_len <= sizeof(small) ? small : malloc(body_len);
        if (!body) {
            client_fail(c, FAIL_OUT_OF_MEMORY, "");
            return;
        }
        memcpy(body, b->data + b->scan + CODEC_HEADER_LEN, body_len);
        b->scan += whole;
        buf_consume(b, whole);
        answer_auth(c, type, body, body_len);
        OPENSSL_cleanse(body, body_len); /* a password */
        if (body != small)
            free(body);
    }
}
