/* test_config: config.c on its own, with no sockets and no process environment (env arrays are
 * built here). Covers every value type and its error message with line numbers, PgBouncer
 * compatibility (section name, [databases] syntax, unsupported keys, userlist.txt), URLs,
 * DATABASE_URL and SLUICE_* overrides with their precedence, and whole-config validation. */
#include "config.h"
#include "config_value.h"
#include "cpus.h"

#include "check.h"
#include "cidr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MINIMAL_DBS "[databases]\napp = host=127.0.0.1\n"

static struct config_diag diag;

/* Load text with env (NULL-terminated, may be NULL); diag holds this load's messages. */
static struct config *load(const char *text, char *const *env)
{
    config_diag_free(&diag);
    return config_load_string(text, env, &diag);
}

static bool list_has(char **list, int n, const char *needle)
{
    for (int i = 0; i < n; i++) {
        if (strstr(list[i], needle))
            return true;
    }
    return false;
}

static bool list_has_anywhere(const char *needle)
{
    return list_has(diag.errors, diag.nerrors, needle) ||
           list_has(diag.warnings, diag.nwarnings, needle);
}

#define CHECK_ERROR(needle)                                                                        \
    do {                                                                                           \
        CHECK(list_has(diag.errors, diag.nerrors, needle));                                        \
        if (!list_has(diag.errors, diag.nerrors, needle))                                          \
            dump_diag(needle);                                                                     \
    } while (0)
#define CHECK_WARNING(needle)                                                                      \
    do {                                                                                           \
        CHECK(list_has(diag.warnings, diag.nwarnings, needle));                                    \
        if (!list_has(diag.warnings, diag.nwarnings, needle))                                      \
            dump_diag(needle);                                                                     \
    } while (0)

static void dump_diag(const char *wanted)
{
    fprintf(stderr, "  wanted: %s\n", wanted);
    for (int i = 0; i < diag.nerrors; i++)
        fprintf(stderr, "  error: %s\n", diag.errors[i]);
    for (int i = 0; i < diag.nwarnings; i++)
        fprintf(stderr, "  warning: %s\n", diag.warnings[i]);
}

/* Whether c, from load(), loaded; when not, a failed check and all that load said. */
static bool loaded(const struct config *c)
{
    CHECK(c != NULL);
    if (!c)
        dump_diag("(none)");
    return c != NULL;
}

static int key_index(const char *name)
{
    for (int i = 0; i < config_nkeys; i++) {
        if (strcmp(config_keys[i].name, name) == 0)
            return i;
    }
    return -1;
}

static const char *keyword(const struct db_entry *db, const char *key)
{
    for (int i = 0; i < db->nkeys; i++) {
        if (strcmp(db->pq_keywords[i], key) == 0)
            return db->pq_values[i];
    }
    return NULL;
}

/* Load one main-section line after a [sluice] header, expecting it to fail. */
static void check_main_value_rejected(const char *line, const char *message)
{
    char text[512];
    snprintf(text, sizeof text, MINIMAL_DBS "[sluice]\n%s\n", line);
    struct config *c = load(text, NULL);
    CHECK(c == NULL);
    CHECK_ERROR(message);
    config_free(c);
}

static int64_t time_of(const char *value)
{
    char text[256];
    snprintf(text, sizeof text, MINIMAL_DBS "[sluice]\nquery_wait_timeout = %s\n", value);
    struct config *c = load(text, NULL);
    int64_t ms = c ? c->query_wait_timeout : -1;
    config_free(c);
    return ms;
}

/* ---- defaults and the key table ---- */

static void defaults_come_from_config_keys_def(void)
{
    struct config *c = load(MINIMAL_DBS, NULL);
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK_STR(c->listen_addr.text, "127.0.0.1");
    CHECK_INT(c->listen_port, 6432);
    CHECK_STR(c->unix_socket_dir, "");
    CHECK_INT(c->auth_type, AUTH_MD5);
    CHECK_INT(c->pool_mode, POOL_SESSION);
    CHECK_INT(c->default_pool_size, 20);
    CHECK_INT(c->reserve_pool_timeout, 5000);
    CHECK_INT(c->max_client_conn, 100);
    CHECK_INT(c->max_db_connections.value, 0);
    CHECK(!c->max_db_connections.is_percent);
    CHECK_STR(c->server_reset_query.text, "DISCARD ALL");
    CHECK(!c->server_reset_query_always);
    CHECK_INT(c->query_wait_timeout, 120000);
    CHECK_INT(c->pkt_buf, 16384);
    CHECK_INT(c->max_packet_size, 1073741823);
    CHECK(c->tcp_keepalive);
    CHECK_INT(c->log_level, LOG_INFO);
    CHECK_INT(c->session_state_policy, SESSION_POLICY_WARN);
    CHECK_INT(c->client_tls_sslmode, SSLMODE_DISABLE);
    CHECK_INT(c->server_tls_sslmode, SSLMODE_UNSET);
    CHECK_INT(c->log_format, LOG_FORMAT_TEXT);
    CHECK_INT(c->http_listen_port, 0);
    CHECK(c->path == NULL);
    for (int i = 0; i < config_nkeys; i++)
        CHECK_INT(c->sources[i], SRC_DEFAULT);
    config_free(c);
}

static void key_table_describes_every_key(void)
{
    CHECK(config_nkeys > 40);
    CHECK_STR(config_keys[0].name, "listen_addr");
    int port = key_index("listen_port"), mode = key_index("pool_mode");
    CHECK(port >= 0 && mode >= 0);
    if (port < 0 || mode < 0)
        return;
    CHECK_STR(config_keys[port].type, "INT");
    CHECK_STR(config_keys[port].def, "6432");
    CHECK(!config_keys[port].reloadable);
    CHECK(config_keys[mode].reloadable);
    for (int i = 0; i < config_nkeys; i++)
        CHECK(config_keys[i].doc && config_keys[i].doc[0]);
}

static void every_formatted_default_reads_back_unchanged(void)
{
    struct config *c = load(MINIMAL_DBS, NULL);
    CHECK(c != NULL);
    for (int i = 0; c && i < config_nkeys; i++) {
        char before[256], after[256], err[256];
        config_format_value(c, i, before, sizeof before);
        CHECK_INT(config_set_key(c, config_keys[i].name, before, SRC_ADMIN_SET, err, sizeof err),
                  0);
        config_format_value(c, i, after, sizeof after);
        CHECK_STR(after, before);
    }
    config_free(c);
}

/* ---- value types ---- */

static void int_keys_reject_non_numbers_and_out_of_range_with_line(void)
{
    check_main_value_rejected("listen_port = 70000",
                              "line 4: listen_port = '70000': expected a number from 0 to 65535");
    check_main_value_rejected("default_pool_size = 2x",
                              "line 4: default_pool_size = '2x': expected an integer");
    check_main_value_rejected("default_pool_size = -1", "expected a number from 0 to");
    check_main_value_rejected("pkt_buf = 1024", "pkt_buf = '1024': expected a number from 4096");
    check_main_value_rejected("pkt_buf = 2000000", "to 1048576");
    check_main_value_rejected("max_client_conn = 0", "max_client_conn = '0'");
    check_main_value_rejected("listen_port = 99999999999999999999", "listen_port");
}

static void file_mode_is_octal_with_or_without_its_zero(void)
{
    const char *ok[][2] = {{"0770", "0770"}, {"770", "0770"}, {"0600", "0600"}, {"07777", "07777"}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char text[128];
        snprintf(text, sizeof text, MINIMAL_DBS "[sluice]\nunix_socket_mode = %s\n", ok[i][0]);
        struct config *c = load(text, NULL);
        CHECK(c != NULL);
        char out[32] = "";
        if (c)
            config_format_value(c, key_index("unix_socket_mode"), out, sizeof out);
        CHECK_STR(out, ok[i][1]);
        config_free(c);
    }
    struct config *c = load(MINIMAL_DBS, NULL);
    CHECK(c && c->unix_socket_mode == 0777);
    config_free(c);
    check_main_value_rejected(
        "unix_socket_mode = 0778",
        "line 4: unix_socket_mode = '0778': expected permission bits in octal");
    check_main_value_rejected("unix_socket_mode = 17777",
                              "line 4: unix_socket_mode = '17777': expected permission bits");
    check_main_value_rejected("unix_socket_mode = rwx", "expected permission bits in octal");
}

static void bool_accepts_pgbouncer_and_common_spellings(void)
{
    const char *yes[] = {"1", "yes", "on", "true", "TRUE", "Yes"};
    const char *no[] = {"0", "no", "off", "false", "OFF"};
    char text[256];
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        snprintf(text, sizeof text, MINIMAL_DBS "[sluice]\nserver_round_robin = %s\n", yes[i]);
        struct config *c = load(text, NULL);
        CHECK(c && c->server_round_robin);
        config_free(c);
    }
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
        snprintf(text, sizeof text, MINIMAL_DBS "[sluice]\ntcp_keepalive = %s\n", no[i]);
        struct config *c = load(text, NULL);
        CHECK(c && !c->tcp_keepalive);
        config_free(c);
    }
    check_main_value_rejected("tcp_keepalive = maybe",
                              "line 4: tcp_keepalive = 'maybe': expected 1, 0, yes, no");
}

static void time_is_seconds_when_bare_and_accepts_fractions_and_suffixes(void)
{
    CHECK_INT(time_of("30"), 30000);
    CHECK_INT(time_of("1.5"), 1500);
    CHECK_INT(time_of("0.25"), 250);
    CHECK_INT(time_of("0"), 0);
    CHECK_INT(time_of("250ms"), 250);
    CHECK_INT(time_of("10s"), 10000);
    CHECK_INT(time_of("5min"), 300000);
    CHECK_INT(time_of("5 min"), 300000);
    CHECK_INT(time_of("2h"), 7200000);
    CHECK_INT(time_of("1d"), 86400000);
    CHECK_INT(time_of("1.5h"), 5400000);
    CHECK_INT(time_of("1500us"), 2); /* rounded up: never to 0 */
    CHECK_INT(time_of("1us"), 1);
    CHECK_INT(time_of("0.0001"), 1);
}

static void time_rejects_negatives_garbage_and_unknown_units(void)
{
    check_main_value_rejected("query_wait_timeout = -1",
                              "line 4: query_wait_timeout = '-1': expected a duration");
    check_main_value_rejected("query_wait_timeout = abc", "expected a duration");
    check_main_value_rejected("query_wait_timeout = 1e3", "expected a duration");
    check_main_value_rejected("query_wait_timeout = 5 parsecs", "expected a duration");
    check_main_value_rejected("query_wait_timeout = .", "expected a duration");
    check_main_value_rejected("query_wait_timeout = 99999999999999999d", "too large");
}

static void limit_is_a_count_or_a_percentage_from_1_to_100(void)
{
    struct config *c = load(MINIMAL_DBS "[sluice]\nmax_db_connections = 80%\n"
                                        "max_server_connections = 40\n",
                            NULL);
    CHECK(c != NULL);
    if (c) {
        CHECK_INT(c->max_db_connections.value, 80);
        CHECK(c->max_db_connections.is_percent);
        CHECK_INT(c->max_server_connections.value, 40);
        CHECK(!c->max_server_connections.is_percent);
    }
    config_free(c);
    check_main_value_rejected("max_db_connections = 150%",
                              "line 4: max_db_connections = '150%': expected a count");
    check_main_value_rejected("max_db_connections = 0%", "from 1% to 100%");
    check_main_value_rejected("max_db_connections = -5", "max_db_connections = '-5'");
    check_main_value_rejected("max_db_connections = 80 %", "max_db_connections");
    check_main_value_rejected("max_db_connections = %", "max_db_connections");
}

static void limit_resolve_takes_a_share_of_usable_server_connections(void)
{
    /* 25 on the server, 3 reserved for superusers: 22 usable; 80% of 22 is 17.6 -> 17. */
    CHECK_INT(limit_resolve((struct limit){80, true}, 25 - 3), 17);
    CHECK_INT(limit_resolve((struct limit){100, true}, 22), 22);
    CHECK_INT(limit_resolve((struct limit){20, false}, 22), 20);
    CHECK_INT(limit_resolve((struct limit){20, false}, 0), 20);
    CHECK_INT(limit_resolve((struct limit){0, false}, 22), 0);
    CHECK_INT(limit_resolve((struct limit){80, true}, 0), 0); /* server not known yet */
    CHECK_INT(limit_resolve((struct limit){80, true}, -1), 0);
    CHECK_INT(limit_resolve((struct limit){1, true}, 10), 1); /* never rounds to "no limit" */
}

static void enums_parse_their_names_and_reject_others(void)
{
    struct config *c = load(MINIMAL_DBS "[sluice]\npool_mode = transaction\n"
                                        "auth_type = scram-sha-256\nlog_format = json\n",
                            NULL);
    CHECK(c != NULL);
    if (c) {
        CHECK_INT(c->pool_mode, POOL_TRANSACTION);
        CHECK_INT(c->auth_type, AUTH_SCRAM);
        CHECK_INT(c->log_format, LOG_FORMAT_JSON);
    }
    config_free(c);
    const char *auths[] = {"trust", "any", "plain", "md5", "scram-sha-256"};
    for (int i = 0; i < 5; i++) {
        char text[256];
        snprintf(text, sizeof text, MINIMAL_DBS "[sluice]\nauth_type = %s\n", auths[i]);
        c = load(text, NULL);
        CHECK(c && (int)c->auth_type == i);
        config_free(c);
    }
    check_main_value_rejected("pool_mode = sessions",
                              "line 4: pool_mode = 'sessions': expected session, transaction or "
                              "statement");
    check_main_value_rejected("log_format = xml", "expected text or json");
    check_main_value_rejected("auth_type = kerberos", "expected trust, any, plain, md5");
    check_main_value_rejected("log_level = verbose", "log_level = 'verbose': expected error");
}

/* log.c used to accept warn and log while config.c refused them: one list now, parsed at load
 * into the enum log.c is configured with. */
static void log_level_accepts_one_list_of_spellings(void)
{
    static const struct {
        const char *text;
        enum log_level level;
    } ok[] = {{"error", LOG_ERROR},    {"warning", LOG_WARNING}, {"warn", LOG_WARNING},
              {"info", LOG_INFO},      {"log", LOG_INFO},        {"debug", LOG_DEBUG},
              {"WARNING", LOG_WARNING}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char text[256];
        snprintf(text, sizeof text, MINIMAL_DBS "[sluice]\nlog_level = %s\n", ok[i].text);
        struct config *c = load(text, NULL);
        CHECK(c != NULL);
        if (!c) {
            dump_diag(ok[i].text);
            continue;
        }
        CHECK_INT(c->log_level, ok[i].level);
        char shown[64];
        config_format_value(c, key_index("log_level"), shown, sizeof shown);
        CHECK_STR(shown, log_level_name(ok[i].level)); /* SHOW CONFIG: the canonical name */
        config_free(c);
    }
    check_main_value_rejected("log_level = noise",
                              "log_level = 'noise': expected error, warning, warn, info, log or "
                              "debug");
}

/* Enum keys are parsed once, at load (and SET), into the enums their readers use. */
static void enum_keys_hold_their_parsed_values(void)
{
    struct config *c = load(MINIMAL_DBS "[sluice]\nsession_state_policy = PIN\n"
                                        "server_tls_sslmode = Verify-Full\n",
                            NULL);
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK_INT(c->session_state_policy, SESSION_POLICY_PIN);
    CHECK_INT(c->server_tls_sslmode, SSLMODE_VERIFY_FULL);
    CHECK_STR(sslmode_name(c->server_tls_sslmode), "verify-full"); /* what libpq gets */
    char err[256];
    CHECK_INT(config_set_key(c, "session_state_policy", "refuse", SRC_ADMIN_SET, err, sizeof err),
              0);
    CHECK_INT(c->session_state_policy, SESSION_POLICY_REFUSE);
    CHECK(config_set_key(c, "session_state_policy", "maybe", SRC_ADMIN_SET, err, sizeof err) < 0);
    CHECK(strstr(err, "expected warn, pin or refuse") != NULL);
    CHECK_INT(c->session_state_policy, SESSION_POLICY_REFUSE); /* unchanged */
    CHECK_INT(config_set_key(c, "server_tls_sslmode", "", SRC_ADMIN_SET, err, sizeof err), 0);
    CHECK_INT(c->server_tls_sslmode, SSLMODE_UNSET);
    CHECK_STR(sslmode_name(c->server_tls_sslmode), ""); /* libpq is given no sslmode */
    CHECK(config_set_key(c, "client_tls_sslmode", "", SRC_ADMIN_SET, err, sizeof err) < 0);
    CHECK(strstr(err, "expected disable, allow, prefer, require, verify-ca or verify-full"));
    config_free(c);

    /* One sslmode parser, for the main keys and a [databases] entry's sslmode= alike. */
    enum sslmode m = SSLMODE_UNSET;
    char why[128];
    CHECK_INT(config_value_parse_SSLMODE("verify-ca", &m, why, sizeof why), 0);
    CHECK_INT(m, SSLMODE_VERIFY_CA);
    CHECK_INT(config_value_parse_SSLMODE("", &m, why, sizeof why), 0);
    CHECK_INT(m, SSLMODE_UNSET);
    CHECK(config_value_parse_SSLMODE("always", &m, why, sizeof why) < 0);
    CHECK_INT(m, SSLMODE_UNSET);
    CHECK_STR(session_policy_name(SESSION_POLICY_WARN), "warn");
    CHECK_STR(log_level_name(LOG_INFO), "info");
    int k = key_index("log_level");
    CHECK(k >= 0 && strcmp(config_keys[k].type, "LOG_LEVEL") == 0);
}

static void auth_type_hba_cert_and_password_parse_and_need_their_keys(void)
{
    struct config *c = load(MINIMAL_DBS "[sluice]\nauth_type = password\n", NULL);
    CHECK(c && c->auth_type == AUTH_PLAIN);
    config_free(c);
    c = load(MINIMAL_DBS "[sluice]\nauth_type = hba\nauth_hba_file = /etc/hba.conf\n", NULL);
    CHECK(c && c->auth_type == AUTH_HBA);
    config_free(c);
    check_main_value_rejected("auth_type = hba", "auth_type = hba needs auth_hba_file");
    check_main_value_rejected("auth_type = cert", "auth_type = cert needs client TLS");
    check_main_value_rejected("auth_type = pam", "line 4: auth_type = 'pam': auth_type pam is "
                                                 "not supported");
    check_main_value_rejected("client_tls_sslmode = require",
                              "client_tls_sslmode = require needs client_tls_cert_file");
    check_main_value_rejected("client_tls_sslmode = always", "expected disable, allow, prefer");
    check_main_value_rejected("server_tls_sslmode = yes", "expected disable, allow, prefer");
}

static void names_of_enums_are_stable(void)
{
    CHECK_STR(pool_mode_name(POOL_SESSION), "session");
    CHECK_STR(pool_mode_name(POOL_TRANSACTION), "transaction");
    CHECK_STR(pool_mode_name(POOL_STATEMENT), "statement");
    CHECK_STR(pool_mode_name(POOL_MODE_UNSET), "unset");
    CHECK_STR(auth_type_name(AUTH_SCRAM), "scram-sha-256");
    CHECK_STR(auth_type_name(AUTH_TRUST), "trust");
    CHECK_STR(log_format_name(LOG_FORMAT_JSON), "json");
    CHECK_STR(config_source_name(SRC_DEFAULT), "default");
    CHECK_STR(config_source_name(SRC_FILE), "file");
    CHECK_STR(config_source_name(SRC_ENV), "env");
    CHECK_STR(config_source_name(SRC_ADMIN_SET), "admin");
}

/* ---- the INI file ---- */

static void pgbouncer_section_name_is_the_main_section(void)
{
    struct config *c = load("[pgbouncer]\nlisten_port = 6543\npool_mode = transaction\n"
                            "[databases]\napp = host=localhost\n",
                            NULL);
    CHECK(c != NULL);
    if (c) {
        CHECK_INT(c->listen_port, 6543);
        CHECK_INT(c->pool_mode, POOL_TRANSACTION);
        CHECK_INT(c->sources[key_index("listen_port")], SRC_FILE);
    }
    config_free(c);
}

static void pool_timeout_is_an_alias_of_query_wait_timeout(void)
{
    struct config *c = load(MINIMAL_DBS "[sluice]\npool_timeout = 7\n", NULL);
    CHECK(c && c->query_wait_timeout == 7000);
    config_free(c);
}

static void keys_and_sections_are_case_insensitive(void)
{
    struct config *c = load("[SLUICE]\nPool_Mode = Statement\n[Databases]\napp = host=x\n", NULL);
    CHECK(c && c->pool_mode == POOL_STATEMENT && c->ndbs == 1);
    config_free(c);
}

static void unknown_key_is_an_error_naming_its_line_and_section(void)
{
    struct config *c =
        load("[pgbouncer]\nlisten_port = 6432\npoool_mode = session\n" MINIMAL_DBS, NULL);
    CHECK(c == NULL);
    CHECK_ERROR("line 3: unknown key 'poool_mode' in [pgbouncer]");
    config_free(c);
}

static void a_comment_after_a_value_is_part_of_it_and_the_error_says_so(void)
{
    struct config *c = load("[pgbouncer]\nmax_db_connections = 80%   ; of 22\n" MINIMAL_DBS, NULL);
    CHECK(c == NULL);
    CHECK_ERROR("line 2: max_db_connections = '80%   ; of 22'");
    CHECK_ERROR("after a value is not a comment");
    config_free(c);
}

static void pgbouncer_keys_sluice_lacks_are_warnings_naming_the_line(void)
{
    struct config *c = load("[pgbouncer]\nsyslog = 1\nuser = postgres\nclient_tls_dheparams = "
                            "auto\nserver_tls_protocols = secure\nsbuf_loopcnt = 5\n"
                            "verbose = 1\nconffile = /etc/pgbouncer/other.ini\n" MINIMAL_DBS,
                            NULL);
    CHECK(c != NULL);
    CHECK_INT(diag.nerrors, 0);
    CHECK_WARNING("line 2: PgBouncer key 'syslog' is not supported by sluice; ignored");
    CHECK_WARNING("line 3: PgBouncer key 'user' is not supported by sluice; ignored");
    CHECK_WARNING("line 4: PgBouncer key 'client_tls_dheparams' is not supported by sluice; "
                  "ignored");
    CHECK_WARNING("line 5: PgBouncer key 'server_tls_protocols' is not supported by sluice; "
                  "ignored: set sslmode");
    CHECK_WARNING("line 6: PgBouncer key 'sbuf_loopcnt' is not supported by sluice; ignored");
    /* where sluice does something else, the warning says what */
    CHECK_WARNING("line 3: PgBouncer key 'user' is not supported by sluice; ignored: start "
                  "sluice as the user it should run as");
    CHECK_WARNING("line 7: PgBouncer key 'verbose'");
    /* PgBouncer's conffile is the file the next RELOAD reads, on every platform */
    CHECK_WARNING("line 8: PgBouncer key 'conffile' is not supported by sluice; ignored: RELOAD "
                  "and SIGHUP read the file sluice was started with");
    config_free(c);
}

static void a_real_pgbouncer_ini_loads_unchanged(void)
{
    const char *ini = "; PgBouncer sample\n"
                      "[databases]\n"
                      "template1 = host=localhost dbname=template1 auth_user=someuser\n"
                      "forcedb = host=localhost port=300 user=baz password=foo "
                      "client_encoding=UNICODE datestyle=ISO connect_query='SELECT 1'\n"
                      "* = host=testserver\n"
                      "\n"
                      "[users]\n"
                      "user1 = pool_mode=session\n"
                      "\n"
                      "[pgbouncer]\n"
                      "logfile = /var/log/pgbouncer/pgbouncer.log\n"
                      "pidfile = /var/run/pgbouncer/pgbouncer.pid\n"
                      "listen_addr = *\n"
                      "listen_port = 6432\n"
                      "unix_socket_dir = /tmp\n"
                      "auth_type = trust\n"
                      "admin_users = user2, someadmin, otheradmin\n"
                      "stats_users = stats, root\n"
                      "pool_mode = session\n"
                      "server_reset_query = DISCARD ALL\n"
                      "ignore_startup_parameters = extra_float_digits\n"
                      "server_check_query = select 1\n"
                      "server_check_delay = 30\n"
                      "max_client_conn = 100\n"
                      "default_pool_size = 20\n"
                      "reserve_pool_size = 5\n"
                      "reserve_pool_timeout = 3\n"
                      "server_lifetime = 3600\n"
                      "server_idle_timeout = 600\n"
                      "server_connect_timeout = 15\n"
                      "server_login_retry = 15\n"
                      "query_wait_timeout = 120\n"
                      "client_idle_timeout = 0\n"
                      "client_login_timeout = 60\n"
                      "autodb_idle_timeout = 3600\n"
                      "syslog = 0\n"
                      "log_connections = 1\n"
                      "log_disconnections = 1\n"
                      "log_pooler_errors = 1\n"
                      "stats_period = 60\n"
                      "pkt_buf = 4096\n"
                      "max_packet_size = 2147483647\n"
                      "listen_backlog = 128\n"
                      "tcp_keepalive = 1\n"
                      "dns_max_ttl = 15\n";
    struct config *c = load(ini, NULL);
    if (!loaded(c))
        return;
    CHECK_INT(c->ndbs, 3);
    CHECK_INT(c->reserve_pool_timeout, 3000);
    CHECK(config_list_contains(&c->admin_users, "someadmin"));
    const struct db_entry *forcedb = config_find_db(c, "forcedb");
    CHECK(forcedb != NULL);
    if (forcedb) {
        CHECK_STR(keyword(forcedb, "options"), "-c DateStyle=ISO");
        CHECK_STR(keyword(forcedb, "client_encoding"), "UNICODE");
        CHECK_STR(keyword(forcedb, "dbname"), "forcedb");
        CHECK_STR(forcedb->connect_query, "SELECT 1");
    }
    CHECK_INT(c->autodb_idle_timeout, 3600000); /* acted on since: no warning */
    CHECK_WARNING("'syslog'");
    CHECK_WARNING("'dns_max_ttl'");
    config_free(c);
}

static void syntax_problems_name_their_line(void)
{
    struct config *c = load(MINIMAL_DBS "[sluice]\nthis line has no equals sign\n", NULL);
    CHECK(c == NULL);
    CHECK_ERROR("line 4: expected 'key = value' or '[section]'");
    config_free(c);

    c = load(MINIMAL_DBS "[sluice\nlisten_port = 1\n", NULL);
    CHECK(c == NULL);
    CHECK_ERROR("line 3: syntax error");
    config_free(c);

    c = load("listen_port = 1\n" MINIMAL_DBS, NULL);
    CHECK(c == NULL);
    CHECK_ERROR("line 1: 'listen_port' is outside any section");
    config_free(c);

    c = load(MINIMAL_DBS "[extras]\na = 1\nb = 2\n", NULL);
    CHECK(c == NULL);
    CHECK_ERROR("line 4: unknown section [extras]");
    CHECK_INT(diag.nerrors, 1); /* once per section, not once per key */
    config_free(c);

    c = load(MINIMAL_DBS "[peers]\n1 = host=x\n", NULL);
    CHECK(c != NULL);
    CHECK_WARNING("line 4: section [peers] is not supported by sluice; ignored");
    config_free(c);
}

static void comments_blank_lines_crlf_and_indentation_keep_line_numbers_right(void)
{
    const char *ini = "; comment\r\n# another\r\n\r\n[sluice]\r\n  listen_port = 7000\r\n"
                      "\tpool_mode = bad\r\n" MINIMAL_DBS;
    struct config *c = load(ini, NULL);
    CHECK(c == NULL);
    CHECK_ERROR("line 6: pool_mode = 'bad'");
    config_free(c);
    c = load("[sluice]\r\n  listen_port = 7000\r\n" MINIMAL_DBS, NULL);
    CHECK(c && c->listen_port == 7000);
    config_free(c);
}

static void semicolon_inside_a_value_is_not_a_comment(void)
{
    struct config *c = load("[databases]\napp = host=x password='a ; b' ; c\n", NULL);
    CHECK(c == NULL); /* "; c" is not a comment: ";" and "c" are not key=value pairs */
    config_free(c);
    c = load("[databases]\napp = host=x password='a ; b'\n", NULL);
    CHECK(c != NULL);
    if (c)
        CHECK_STR(keyword(&c->dbs[0], "password"), "a ; b");
    config_free(c);
}

static void lines_of_any_length_parse_whole_and_keep_line_numbers(void)
{
    const size_t sizes[] = {1200, 3 * 1024 * 1024}; /* past inih's 200-byte default, and 1 MiB */
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        char *name = malloc(sizes[i] + 1);
        CHECK(name != NULL);
        if (!name)
            return;
        memset(name, 'x', sizes[i]);
        name[sizes[i]] = '\0';
        char *text;
        CHECK(asprintf(&text,
                       "[databases]\napp = host=h application_name=%s pool_size=3\n"
                       "[sluice]\nlisten_port = 1\nbogus = 1\n",
                       name) > 0);
        struct config *c = load(text, NULL);
        CHECK(c == NULL);
        CHECK_ERROR("line 5: unknown key 'bogus'");
        CHECK_INT(diag.nerrors, 1);
        config_free(c);
        text[strlen(text) - strlen("bogus = 1\n")] = '\0';
        c = load(text, NULL);
        CHECK(c != NULL);
        if (c) {
            CHECK_INT(strlen(keyword(&c->dbs[0], "application_name")), sizes[i]);
            CHECK_INT(c->dbs[0].pool_size, 3);
        }
        config_free(c);
        free(text);
        free(name);
    }
}

/* ---- [databases] ---- */

static void database_pairs_split_sluice_keys_from_libpq_keywords(void)
{
    struct config *c =
        load("[databases]\n"
             "app = host=db.internal port = 5433 user=app password='it''s secret' "
             "dbname=appdb pool_size=5 min_pool_size=1 reserve_pool=2 pool_mode=transaction "
             "max_db_connections=50% auth_user=pgb application_name='my app' sslmode=require\n",
             NULL);
    if (!loaded(c))
        return;
    const struct db_entry *db = &c->dbs[0];
    CHECK_STR(db->name, "app");
    CHECK_STR(keyword(db, "host"), "db.internal");
    CHECK_STR(keyword(db, "port"), "5433");
    CHECK_STR(keyword(db, "user"), "app");
    CHECK_STR(keyword(db, "password"), "it's secret");
    CHECK_STR(keyword(db, "dbname"), "appdb");
    CHECK_STR(keyword(db, "application_name"), "my app");
    CHECK_STR(keyword(db, "sslmode"), "require");
    CHECK(keyword(db, "pool_size") == NULL);
    CHECK(keyword(db, "auth_user") == NULL);
    CHECK_INT(db->nkeys, 7);
    CHECK(db->pq_keywords[db->nkeys] == NULL);
    CHECK(db->pq_values[db->nkeys] == NULL);
    CHECK_INT(db->pool_size, 5);
    CHECK_INT(db->min_pool_size, 1);
    CHECK_INT(db->reserve_pool, 2);
    CHECK_INT(db->pool_mode, POOL_TRANSACTION);
    CHECK_INT(db->max_db_connections.value, 50);
    CHECK(db->max_db_connections.is_percent);
    CHECK_STR(db->auth_user, "pgb");
    CHECK_INT(db->line, 2);
    config_free(c);
}

static void client_caps_are_main_keys_and_per_entry_keys(void)
{
    struct config *c = load("[databases]\napp = host=x max_db_client_connections=2\nb = host=y\n"
                            "[users]\nu = max_user_client_connections=3\n"
                            "[sluice]\nmax_db_client_connections = 10\n"
                            "max_user_client_connections = 20\n",
                            NULL);
    if (!loaded(c))
        return;
    /* sluice keys now, not PgBouncer keys it ignores */
    CHECK(!list_has(diag.warnings, diag.nwarnings, "client_connections"));
    CHECK_INT(c->max_db_client_connections, 10);
    CHECK_INT(c->max_user_client_connections, 20);
    CHECK_INT(c->dbs[0].max_db_client_connections, 2);
    CHECK_INT(c->dbs[1].max_db_client_connections, 0); /* 0: the main section's */
    CHECK_INT(c->users[0].max_user_client_connections, 3);
    config_free(c);
    CHECK(load("[databases]\napp = host=x max_db_client_connections=-1\n", NULL) == NULL);
    CHECK_ERROR("max_db_client_connections = '-1'");
    CHECK(load("[databases]\napp = host=x\n[users]\nu = max_user_client_connections=many\n",
               NULL) == NULL);
    CHECK_ERROR("max_user_client_connections = 'many'");
}

static void per_entry_timeouts_and_user_reserve_parse_as_durations(void)
{
    struct config *c = load("[databases]\napp = host=x server_lifetime=60 query_timeout=1.5\n"
                            "b = host=y\n"
                            "[users]\nu = reserve_pool_size=2 client_idle_timeout=500ms "
                            "idle_transaction_timeout=0\nv = pool_size=1\n",
                            NULL);
    if (!loaded(c))
        return;
    CHECK(!list_has(diag.warnings, diag.nwarnings, "not supported"));
    CHECK_INT(c->dbs[0].timeouts.server_lifetime, 60000);
    CHECK_INT(c->dbs[0].timeouts.query_timeout, 1500);
    CHECK_INT(c->dbs[0].timeouts.client_idle_timeout, -1); /* -1: not set here */
    CHECK_INT(c->dbs[1].timeouts.server_lifetime, -1);
    CHECK_INT(c->users[0].reserve_pool, 2);
    CHECK_INT(c->users[0].timeouts.client_idle_timeout, 500);
    CHECK_INT(c->users[0].timeouts.idle_transaction_timeout, 0); /* set: 0 disables */
    CHECK_INT(c->users[1].reserve_pool, -1);
    CHECK_INT(c->users[1].timeouts.query_timeout, -1);
    config_free(c);
    CHECK(load("[databases]\napp = host=x query_timeout=soon\n", NULL) == NULL);
    CHECK_ERROR("query_timeout = 'soon'");
    CHECK(load("[databases]\napp = host=x\n[users]\nu = server_lifetime=-1\n", NULL) == NULL);
    CHECK_ERROR("server_lifetime = '-1'");
    /* transaction_timeout (PgBouncer 1.25) is one of them, in both sections */
    c = load("[databases]\napp = host=x transaction_timeout=5\n"
             "[users]\nu = transaction_timeout=250ms\n",
             NULL);
    CHECK(c != NULL);
    if (c) {
        CHECK(!list_has(diag.warnings, diag.nwarnings, "transaction_timeout"));
        CHECK_INT(c->dbs[0].timeouts.transaction_timeout, 5000);
        CHECK_INT(c->users[0].timeouts.transaction_timeout, 250);
        config_free(c);
    }
    /* auth_dbname per database entry (PgBouncer's): kept for secret.c, not warned about */
    c = load("[databases]\napp = host=x auth_dbname=authdb\nauthdb = host=y\n", NULL);
    CHECK(c != NULL);
    if (c) {
        CHECK(!list_has(diag.warnings, diag.nwarnings, "auth_dbname"));
        CHECK(c->dbs[0].auth_dbname && strcmp(c->dbs[0].auth_dbname, "authdb") == 0);
        CHECK(c->dbs[1].auth_dbname == NULL);
        config_free(c);
    }
}

static void database_without_overrides_inherits_with_minus_one_and_unset(void)
{
    struct config *c = load("[databases]\napp = host=x reserve_pool_size=4\n", NULL);
    CHECK(c != NULL);
    if (c) {
        CHECK_INT(c->dbs[0].pool_size, -1);
        CHECK_INT(c->dbs[0].min_pool_size, -1);
        CHECK_INT(c->dbs[0].reserve_pool, 4); /* reserve_pool_size is accepted too */
        CHECK_INT(c->dbs[0].pool_mode, POOL_MODE_UNSET);
        CHECK_INT(c->dbs[0].max_db_connections.value, 0);
        CHECK(c->dbs[0].auth_user == NULL);
    }
    config_free(c);
}

static void database_without_dbname_connects_to_its_own_name_but_star_does_not(void)
{
    struct config *c = load("[databases]\norders = host=x\nempty =\n* = host=fallback\n", NULL);
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK_INT(c->ndbs, 3);
    CHECK_STR(keyword(&c->dbs[0], "dbname"), "orders");
    CHECK_STR(keyword(&c->dbs[1], "dbname"), "empty");
    CHECK_INT(c->dbs[1].nkeys, 1);
    CHECK(keyword(&c->dbs[2], "dbname") == NULL);
    CHECK_STR(c->dbs[2].name, "*");
    config_free(c);
}

static void find_db_tries_the_exact_name_then_the_star_entry(void)
{
    struct config *c = load("[databases]\n* = host=fallback\norders = host=x\n", NULL);
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK_STR(config_find_db(c, "orders")->name, "orders");
    CHECK_STR(config_find_db(c, "anything")->name, "*");
    CHECK(config_find_db(c, NULL) == NULL);
    config_free(c);
    c = load("[databases]\norders = host=x\n", NULL);
    CHECK(c && config_find_db(c, "anything") == NULL);
    config_free(c);
}

static void database_url_form_decodes_and_pulls_out_sluice_keys(void)
{
    struct config *c = load("[databases]\norders = postgres://u%40corp:p%26ss%20w@h1:5433/"
                            "ord%2Fdb?sslmode=require&pool_size=5&pool_mode=transaction&"
                            "application_name=my%20app&max_db_connections=25%25\n",
                            NULL);
    if (!loaded(c))
        return;
    const struct db_entry *db = &c->dbs[0];
    CHECK_STR(keyword(db, "user"), "u@corp");
    CHECK_STR(keyword(db, "password"), "p&ss w");
    CHECK_STR(keyword(db, "host"), "h1");
    CHECK_STR(keyword(db, "port"), "5433");
    CHECK_STR(keyword(db, "dbname"), "ord/db");
    CHECK_STR(keyword(db, "sslmode"), "require");
    CHECK_STR(keyword(db, "application_name"), "my app");
    CHECK(keyword(db, "pool_size") == NULL);
    CHECK_INT(db->pool_size, 5);
    CHECK_INT(db->pool_mode, POOL_TRANSACTION);
    CHECK_INT(db->max_db_connections.value, 25);
    CHECK(db->max_db_connections.is_percent);
    config_free(c);
}

static void database_url_handles_question_mark_in_password_and_missing_path(void)
{
    struct config *c = load("[databases]\nshop = postgresql://u:pa?ss@h/?pool_size=3\n"
                            "multi = postgres://h1:5432,h2:5433/x?target_session_attrs=read-write"
                            "\n",
                            NULL);
    if (!loaded(c))
        return;
    CHECK_STR(keyword(&c->dbs[0], "password"), "pa?ss");
    CHECK_STR(keyword(&c->dbs[0], "dbname"), "shop");
    CHECK_INT(c->dbs[0].pool_size, 3);
    CHECK_STR(keyword(&c->dbs[1], "host"), "h1,h2");
    CHECK_STR(keyword(&c->dbs[1], "port"), "5432,5433");
    CHECK_STR(keyword(&c->dbs[1], "target_session_attrs"), "read-write");
    config_free(c);
}

static void database_url_errors_never_quote_the_password(void)
{
    struct config *c = load("[databases]\napp = postgres://u:hunter2%zz@h/db\n", NULL);
    CHECK(c == NULL);
    CHECK_ERROR("line 2: database 'app': bad percent-encoding");
    CHECK(!list_has_anywhere("hunter2"));
    config_free(c);
    c = load("[databases]\napp = postgres://u:hunter2@h/db?nosuchparam=1\n", NULL);
    CHECK(c == NULL);
    CHECK_ERROR("line 2: database 'app': bad URL");
    CHECK(!list_has_anywhere("hunter2"));
    config_free(c);
    c = load("[databases]\napp = postgres://u:p@h/db?pool_size=many\n", NULL);
    CHECK(c == NULL);
    CHECK_ERROR("line 2: database 'app': pool_size = 'many'");
    config_free(c);
}

static void database_keyword_typo_is_an_error_that_hides_the_value(void)
{
    struct config *c = load("[databases]\napp = host=x\nother = host=y passwrod=hunter2\n", NULL);
    CHECK(c == NULL);
    CHECK_ERROR("line 3: database 'other': unknown connection keyword 'passwrod'");
    CHECK(!list_has_anywhere("hunter2"));
    config_free(c);
}

static void database_values_are_checked(void)
{
    struct config *c = load("[databases]\na = host=x pool_size=-1\nb = host=x pool_mode=fast\n"
                            "c = host=x max_db_connections=200%\nd = host='unterminated\n"
                            "e = host=x junk\nf = host='x'y\n",
                            NULL);
    CHECK(c == NULL);
    CHECK_ERROR("line 2: database 'a': pool_size = '-1': expected a number from 0");
    CHECK_ERROR("line 3: database 'b': pool_mode = 'fast': expected session");
    CHECK_ERROR("line 4: database 'c': max_db_connections = '200%'");
    CHECK_ERROR("line 5: database 'd': a quoted value has no closing quote");
    CHECK_ERROR("line 6: database 'e': expected key=value pairs");
    CHECK_ERROR("line 7: database 'f': expected a space after a quoted value");
    config_free(c);
}

static void database_defined_twice_is_an_error(void)
{
    struct config *c = load("[databases]\napp = host=x\napp = host=y\n", NULL);
    CHECK(c == NULL);
    CHECK_ERROR("line 3: database 'app' is defined twice (first at line 2)");
    config_free(c);
}

static void datestyle_and_timezone_become_server_options(void)
{
    struct config *c = load("[databases]\napp = host=x options='-c work_mem=64MB' "
                            "timezone='America/New York' datestyle=ISO\n",
                            NULL);
    CHECK(c != NULL);
    if (c)
        CHECK_STR(keyword(&c->dbs[0], "options"),
                  "-c work_mem=64MB -c TimeZone=America/New\\ York -c DateStyle=ISO");
    config_free(c);
}

static void no_databases_is_an_error_that_says_what_to_do(void)
{
    struct config *c = load("[sluice]\nlisten_port = 6432\n", NULL);
    CHECK(c == NULL);
    CHECK_ERROR("no databases: add a [databases] section or set DATABASE_URL");
    config_free(c);
    c = load(NULL, NULL);
    CHECK(c == NULL);
    CHECK_ERROR("no databases");
    config_free(c);
}

/* ---- [users] and [budgets] ---- */

static void users_section_overrides_pool_settings_per_user(void)
{
    struct config *c = load(MINIMAL_DBS "[users]\nreporting = pool_mode=statement pool_size=2 "
                                        "max_user_connections=10%\nplain =\n",
                            NULL);
    CHECK(c != NULL);
    if (!c)
        return;
    const struct user_entry *u = config_find_user(c, "reporting");
    CHECK(u != NULL);
    if (u) {
        CHECK_INT(u->pool_mode, POOL_STATEMENT);
        CHECK_INT(u->pool_size, 2);
        CHECK_INT(u->max_user_connections.value, 10);
        CHECK(u->max_user_connections.is_percent);
        CHECK_INT(u->line, 4);
    }
    u = config_find_user(c, "plain");
    CHECK(u && u->pool_mode == POOL_MODE_UNSET && u->pool_size == -1);
    CHECK(config_find_user(c, "nobody") == NULL);
    config_free(c);
    c = load(MINIMAL_DBS "[users]\nbob = pool_mode=turbo\nann = colour=red\nbob2 = pool_size=x\n",
             NULL);
    CHECK(c == NULL);
    CHECK_ERROR("line 4: user 'bob': pool_mode = 'turbo'");
    CHECK_ERROR("line 5: user 'ann': unknown key 'colour'");
    CHECK_ERROR("line 6: user 'bob2': pool_size = 'x'");
    config_free(c);
}

static void budgets_parse_matchers_and_limits(void)
{
    struct config *c =
        load(MINIMAL_DBS "[budgets]\napi = app=web-* user=api addr=10.0.0.0/8 max_servers=10 "
                         "max_clients=200 min_servers=2\nseed = app=seed* max_servers=2\n"
                         "local = addr=::1/128\nhost = addr=192.168.1.5\n",
             NULL);
    if (!loaded(c))
        return;
    CHECK_INT(c->nbudgets, 4);
    const struct budget_entry *b = &c->budgets[0];
    CHECK_STR(b->name, "api");
    CHECK_STR(b->app_pattern, "web-*");
    CHECK_STR(b->user, "api");
    CHECK_STR(b->addr.text, "10.0.0.0/8");
    CHECK_INT(b->max_servers, 10);
    CHECK_INT(b->max_clients, 200);
    CHECK_INT(b->min_servers, 2);
    CHECK_INT(b->line, 4);
    CHECK(c->budgets[1].user == NULL && c->budgets[1].addr.text == NULL);
    CHECK_INT(c->budgets[1].max_clients, 0);
    CHECK_STR(c->budgets[2].addr.text, "::1/128");
    CHECK_INT(c->budgets[2].addr.net.family, AF_INET6);
    CHECK_INT(c->budgets[2].addr.net.prefix, 128);
    CHECK_INT(c->budgets[3].addr.net.family, AF_INET);
    CHECK_INT(c->budgets[3].addr.net.prefix, 32);
    CHECK_INT(c->budgets[1].addr.net.family, AF_UNSPEC);
    config_free(c);
}

/* auth_query's share per client address: an IPv6 client holds a /64, so each of its addresses
 * must count as the same holder, and an IPv4-mapped one as its IPv4 address. */
static void holder_of_an_address_is_its_ip_or_its_ipv6_64(void)
{
    struct {
        int family;
        const char *ip, *holder;
    } cases[] = {
        {AF_INET, "127.0.0.2", "127.0.0.2"},
        {AF_INET6, "2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"},
        {AF_INET6, "2001:db8:1:2:ffff:ffff:ffff:fffe", "2001:db8:1:2::/64"},
        {AF_INET6, "2001:db8:1:3::1", "2001:db8:1:3::/64"},
        {AF_INET6, "::1", "::/64"},
        {AF_INET6, "::ffff:10.1.2.3", "10.1.2.3"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        union peer_addr a;
        memset(&a, 0, sizeof(a));
        a.sa.sa_family = (sa_family_t)cases[i].family;
        void *dst = cases[i].family == AF_INET ? (void *)&a.in.sin_addr : (void *)&a.in6.sin6_addr;
        CHECK(inet_pton(cases[i].family, cases[i].ip, dst) == 1);
        char out[INET6_ADDRSTRLEN + 3];
        peer_addr_holder(&a, out, sizeof(out));
        CHECK_STR(out, cases[i].holder);
    }
    union peer_addr unix_peer;
    memset(&unix_peer, 0, sizeof(unix_peer));
    unix_peer.sa.sa_family = AF_UNIX;
    char out[INET6_ADDRSTRLEN + 3];
    peer_addr_holder(&unix_peer, out, sizeof(out));
    CHECK_STR(out, "");
}

static void budgets_reject_bad_cidr_numbers_duplicates_and_unknown_keys(void)
{
    struct config *c = load(MINIMAL_DBS "[budgets]\n"
                                        "a = addr=10.0.0.0/33\n"
                                        "b = addr=300.1.1.1\n"
                                        "c = addr=::1/129\n"
                                        "d = addr=10.0.0.0/\n"
                                        "e = max_servers=lots\n"
                                        "f = colour=red\n"
                                        "g = max_servers=2 min_servers=5\n"
                                        "h = max_servers=1\n"
                                        "h = max_servers=2\n"
                                        "i = addr=10.0.0.0/0008\n"
                                        "j = app=api*, max_clients=5\n"
                                        "k = user=app, max_servers=2\n",
                            NULL);
    CHECK(c == NULL);
    CHECK_ERROR("line 4: budget 'a': addr = '10.0.0.0/33': expected an IPv4 or IPv6 address");
    CHECK_ERROR("line 5: budget 'b': addr = '300.1.1.1'");
    CHECK_ERROR("line 6: budget 'c': addr = '::1/129'");
    CHECK_ERROR("line 7: budget 'd': addr = '10.0.0.0/'");
    CHECK_ERROR("line 8: budget 'e': max_servers = 'lots'");
    CHECK_ERROR("line 9: budget 'f': unknown key 'colour'");
    CHECK_ERROR("line 10: budget 'g': min_servers 5 is above max_servers 2");
    CHECK_ERROR("line 12: budget 'h' is defined twice (first at line 11)");
    /* Once accepted here and then dropped by the matcher's parser: the budget matched everyone */
    CHECK_ERROR("line 13: budget 'i': addr = '10.0.0.0/0008'");
    /* Pairs written with commas: the matcher took the comma and matched no one */
    CHECK_ERROR("line 14: budget 'j': app = 'api*,' ends in a comma: separate a budget's pairs "
                "with blanks");
    CHECK_ERROR("line 15: budget 'k': user = 'app,' ends in a comma");
    config_free(c);
}

/* ---- auth_file ---- */

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void remove_files(const char *dir, const char *const *names)
{
    char path[256];
    for (; *names; names++) {
        snprintf(path, sizeof path, "%s/%s", dir, *names);
        unlink(path);
    }
    rmdir(dir);
}

static void auth_file_is_read_relative_to_the_config_file(void)
{
    char dir[] = "/tmp/sluice-test-config-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    write_file(dir, "sluice.ini", "[sluice]\nauth_file = users.txt\n[databases]\napp = host=x\n");
    write_file(dir, "users.txt",
               "; comment\n"
               "# another comment\n"
               "\n"
               "\"alice\" \"md5a3556571e93b0d20722ba62be61e8c2d\"\n"
               "\"bob \"\"the builder\"\"\"   \"pa ss\" trailing words are ignored\n"
               "\"carol\" \"SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy\"\n"
               "\"alice\" \"second wins\"\n");
    char path[256];
    snprintf(path, sizeof path, "%s/sluice.ini", dir);
    config_diag_free(&diag);
    struct config *c = config_load(path, NULL, &diag);
    CHECK(c != NULL);
    if (c) {
        CHECK_STR(c->path, path);
        CHECK_INT(c->nauth, 3);
        const struct auth_entry *a = config_find_auth(c, "alice");
        CHECK(a && strcmp(a->secret, "second wins") == 0);
        a = config_find_auth(c, "bob \"the builder\"");
        CHECK(a && strcmp(a->secret, "pa ss") == 0);
        a = config_find_auth(c, "carol");
        CHECK(a && strncmp(a->secret, "SCRAM-SHA-256$4096:", 19) == 0);
        CHECK(config_find_auth(c, "dave") == NULL);
        CHECK_INT(c->sources[key_index("auth_file")], SRC_FILE);
    } else {
        dump_diag("(none)");
    }
    config_free(c);

    write_file(dir, "users.txt", "\"alice\" \"ok\"\n\"bob\" unquoted\n\"carol\n\"\" \"x\"\n");
    config_diag_free(&diag);
    c = config_load(path, NULL, &diag);
    CHECK(c == NULL);
    CHECK_ERROR("users.txt line 2: expected \"user\" \"password\"");
    CHECK_ERROR("users.txt line 3:");
    CHECK_ERROR("users.txt line 4:"); /* an empty user name */
    config_free(c);

    unlink(strcat(strcpy(path, dir), "/users.txt"));
    snprintf(path, sizeof path, "%s/sluice.ini", dir);
    config_diag_free(&diag);
    c = config_load(path, NULL, &diag);
    CHECK(c == NULL);
    CHECK_ERROR("users.txt: cannot read it: No such file or directory");
    config_free(c);

    const char *names[] = {"sluice.ini", "users.txt", NULL};
    remove_files(dir, names);
}

static void config_file_errors_name_the_file(void)
{
    char dir[] = "/tmp/sluice-test-config-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    write_file(dir, "bad.ini", "[sluice]\nlisten_port = x\n" MINIMAL_DBS);
    char path[256];
    snprintf(path, sizeof path, "%s/bad.ini", dir);
    config_diag_free(&diag);
    struct config *c = config_load(path, NULL, &diag);
    CHECK(c == NULL);
    char expected[320];
    snprintf(expected, sizeof expected, "%s: line 2: listen_port = 'x'", path);
    CHECK_ERROR(expected);
    config_free(c);

    snprintf(path, sizeof path, "%s/missing.ini", dir);
    config_diag_free(&diag);
    c = config_load(path, NULL, &diag);
    CHECK(c == NULL);
    CHECK_ERROR("missing.ini: cannot read the config file: No such file or directory");
    const char *names[] = {"bad.ini", NULL};
    remove_files(dir, names);
}

/* ---- %include ---- */

/* Load the file at path, its diagnostics in diag (as load does for text). */
static struct config *load_path(const char *path)
{
    config_diag_free(&diag);
    return config_load(path, NULL, &diag);
}

static void include_reads_the_named_file_where_it_stands(void)
{
    char dir[] = "/tmp/sluice-test-config-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char sub[300];
    snprintf(sub, sizeof sub, "%s/sub", dir);
    CHECK(mkdir(sub, 0700) == 0);
    /* relative to the including file's directory; a section goes on into an included file
     * and out of it; a line without a final newline ends its file */
    write_file(dir, "main.ini",
               "[pgbouncer]\n%include sub/keys.ini\npool_mode = transaction\n"
               "  %include   sub/dbs.ini  \n[users]\nalice = pool_size=3\n");
    write_file(dir, "sub/keys.ini", "listen_port = 6001\n%include deeper.ini");
    write_file(dir, "sub/deeper.ini", "default_pool_size = 7\n");
    write_file(dir, "sub/dbs.ini", "[databases]\napp = host=x\nother = host=y\n");
    char path[300];
    snprintf(path, sizeof path, "%s/main.ini", dir);
    struct config *c = load_path(path);
    CHECK(c != NULL);
    if (c) {
        CHECK_INT(c->listen_port, 6001);
        CHECK_INT(c->default_pool_size, 7);
        CHECK_INT(c->pool_mode, POOL_TRANSACTION);
        CHECK_INT(c->ndbs, 2);
        CHECK(config_find_db(c, "other") != NULL);
        CHECK(config_find_user(c, "alice") != NULL);
    } else {
        dump_diag("(none)");
    }
    config_free(c);

    /* every message names the file and line a thing stands at, the main file's lines included */
    write_file(dir, "main.ini",
               "[databases]\n%include sub/dbs.ini\napp = host=z\n%include sub/broken.ini\n"
               "[sluice]\nlisten_port = x\n%include sub/none.ini\n%include\n");
    write_file(dir, "sub/broken.ini", "[sluice]\n\n[unterminated\nlisten_addr = *\n");
    c = load_path(path);
    CHECK(c == NULL);
    char expected[700];
    snprintf(expected, sizeof expected,
             "%s: line 3: database 'app' is defined twice (first at %s/sub/dbs.ini: line 2)", path,
             dir);
    CHECK_ERROR(expected);
    snprintf(expected, sizeof expected, "%s/sub/broken.ini: line 3: syntax error", dir);
    CHECK_ERROR(expected);
    snprintf(expected, sizeof expected, "%s: line 6: listen_port = 'x'", path);
    CHECK_ERROR(expected);
    snprintf(expected, sizeof expected,
             "%s: line 7: %%include %s/sub/none.ini: cannot read it: No such file or directory",
             path, dir);
    CHECK_ERROR(expected);
    snprintf(expected, sizeof expected, "%s: line 8: %%include names no file", path);
    CHECK_ERROR(expected);
    config_free(c);

    /* an included file's last line, without a final newline, that fills inih's buffer to its
     * last byte (511: its first size less the NUL): inih asks for more of that line, and gets
     * none of the including file's next line */
    char last[600];
    int pad = 511 - (int)strlen("app = host=x dbname=");
    snprintf(last, sizeof last, "app = host=x dbname=%0*d", pad, 7);
    CHECK_INT((int)strlen(last), 511);
    write_file(dir, "sub/dbs.ini", last);
    write_file(dir, "main.ini", "[databases]\n%include sub/dbs.ini\nother = host=y\n");
    c = load_path(path);
    CHECK(c != NULL);
    if (c) {
        CHECK_INT(c->ndbs, 2);
        CHECK(config_find_db(c, "other") != NULL);
    } else {
        dump_diag("(none)");
    }
    config_free(c);

    /* a config given as text has no directory: a relative name is the working directory's */
    c = load(MINIMAL_DBS "%include\tsluice-no-such-include.ini\n", NULL);
    CHECK(c == NULL);
    CHECK_ERROR("line 3: %include sluice-no-such-include.ini: cannot read it: No such file");
    config_free(c);

    /* a file that includes itself: an error, not a loop */
    write_file(dir, "main.ini", "[databases]\napp = host=x\n%include main.ini\n");
    c = load_path(path);
    CHECK(c == NULL);
    CHECK_ERROR("%include nested more than 10 deep (does a file include itself?)");
    config_free(c);

    const char *names[] = {"main.ini",    "sub/keys.ini",   "sub/deeper.ini",
                           "sub/dbs.ini", "sub/broken.ini", NULL};
    for (const char *const *n = names; *n; n++) {
        char p[300];
        snprintf(p, sizeof p, "%s/%s", dir, *n);
        unlink(p);
    }
    rmdir(sub);
    rmdir(dir);
}

static void password_auth_without_any_user_warns(void)
{
    struct config *c = load(MINIMAL_DBS, NULL);
    CHECK(c != NULL);
    CHECK_WARNING("auth_type is md5 but there are no users");
    config_free(c);
    /* an entry's auth_user looks its clients up with auth_query: users there are */
    c = load("[databases]\napp = host=127.0.0.1 auth_user=lookup\n", NULL);
    CHECK(c != NULL);
    CHECK(!list_has(diag.warnings, diag.nwarnings, "there are no users"));
    config_free(c);
    c = load(MINIMAL_DBS "[sluice]\nauth_type = trust\n", NULL);
    CHECK(c != NULL);
    CHECK_INT(diag.nwarnings, 0);
    config_free(c);
}

/* ---- the environment ---- */

static void database_url_alone_configures_a_database_and_its_login(void)
{
    char *env[] = {"HOME=/root",
                   "DATABASE_URL=postgresql://shop_user:s%3Acret@db.example.com:"
                   "6543/shop?sslmode=require",
                   NULL};
    config_diag_free(&diag);
    struct config *c = config_load(NULL, env, &diag);
    if (!loaded(c))
        return;
    CHECK_INT(c->ndbs, 1);
    const struct db_entry *db = config_find_db(c, "shop");
    CHECK(db != NULL);
    if (db) {
        CHECK_STR(keyword(db, "host"), "db.example.com");
        CHECK_STR(keyword(db, "port"), "6543");
        CHECK_STR(keyword(db, "user"), "shop_user");
        CHECK_STR(keyword(db, "password"), "s:cret");
        CHECK_STR(keyword(db, "sslmode"), "require");
        CHECK_STR(keyword(db, "dbname"), "shop");
        CHECK_INT(db->line, 0);
    }
    const struct auth_entry *a = config_find_auth(c, "shop_user");
    CHECK(a && strcmp(a->secret, "s:cret") == 0);
    CHECK(c->path == NULL);
    CHECK_INT(diag.nwarnings, 0);
    config_free(c);
}

static void database_url_without_dbname_is_called_postgres(void)
{
    char *env[] = {"DATABASE_URL=postgres://u:p@h", NULL};
    struct config *c = load(NULL, env);
    CHECK(c != NULL);
    if (c) {
        CHECK_STR(c->dbs[0].name, "postgres");
        CHECK_STR(keyword(&c->dbs[0], "dbname"), "postgres");
    }
    config_free(c);
}

/* An env file written on Windows ends every value in a CR, a secret made with `echo` in a
 * newline: read as the ini file reads its values, without surrounding blanks. */
static void environment_values_lose_surrounding_blanks_and_a_trailing_crlf(void)
{
    char *env[] = {"DATABASE_URL=  postgres://u:p@h/app\r\n", "SLUICE_DEFAULT_POOL_SIZE= 7\r",
                   NULL};
    struct config *c = load(NULL, env);
    CHECK(c != NULL);
    if (c) {
        CHECK_STR(c->dbs[0].name, "app");
        CHECK_STR(keyword(&c->dbs[0], "dbname"), "app");
        CHECK_INT(c->default_pool_size, 7);
    }
    config_free(c);
}

static void database_url_loses_to_the_file_entry_of_the_same_name_with_a_warning(void)
{
    char *env[] = {"DATABASE_URL=postgres://u:p@urlhost/app", NULL};
    struct config *c = load(MINIMAL_DBS, env);
    CHECK(c != NULL);
    if (c) {
        CHECK_INT(c->ndbs, 1);
        CHECK_STR(keyword(&c->dbs[0], "host"), "127.0.0.1");
    }
    CHECK_WARNING("DATABASE_URL: database 'app' is also defined at line 2 of the config file; "
                  "the file's entry is used");
    config_free(c);
    char *other[] = {"DATABASE_URL=postgres://u:p@urlhost/other", NULL};
    c = load(MINIMAL_DBS, other);
    CHECK(c && c->ndbs == 2 && config_find_db(c, "other") && config_find_db(c, "app"));
    config_free(c);
}

static void database_url_with_prisma_parameters_warns_and_ignores_them(void)
{
    char *env[] = {"DATABASE_URL=postgresql://u:p@h:5432/db?schema=public&connection_limit=20&"
                   "pool_timeout=30&pool_size=4",
                   NULL};
    struct config *c = load(NULL, env);
    CHECK(c != NULL);
    if (c) {
        CHECK_INT(c->dbs[0].pool_size, 4);
        CHECK(keyword(&c->dbs[0], "schema") == NULL);
    }
    CHECK_WARNING("URL parameter 'schema' belongs to a client library");
    CHECK_WARNING("URL parameter 'connection_limit'");
    config_free(c);
}

static void database_url_that_is_not_a_postgres_url_is_an_error_without_echo(void)
{
    char *env[] = {"DATABASE_URL=mysql://u:hunter2@h/db", NULL};
    struct config *c = load(NULL, env);
    CHECK(c == NULL);
    CHECK_ERROR("DATABASE_URL: expected postgres://");
    CHECK(!list_has_anywhere("hunter2"));
    config_free(c);
}

static void sluice_env_overrides_the_file_and_records_its_source(void)
{
    char *env[] = {"SLUICE_POOL_MODE=transaction",
                   "SLUICE_MAX_DB_CONNECTIONS=80%",
                   "SLUICE_POOL_TIMEOUT=2.5",
                   "SLUICE_BIN=/usr/bin/sluice",
                   "SLUICE_CONFIG=/etc/sluice.ini",
                   "SLUICE_TEST_PORT=1",
                   "PATH=/bin",
                   NULL};
    struct config *c =
        load(MINIMAL_DBS "[sluice]\npool_mode = session\ndefault_pool_size = 5\n", env);
    if (!loaded(c))
        return;
    CHECK_INT(c->pool_mode, POOL_TRANSACTION);
    CHECK_INT(c->max_db_connections.value, 80);
    CHECK(c->max_db_connections.is_percent);
    CHECK_INT(c->query_wait_timeout, 2500);
    CHECK_INT(c->default_pool_size, 5);
    CHECK_INT(c->sources[key_index("pool_mode")], SRC_ENV);
    CHECK_INT(c->sources[key_index("max_db_connections")], SRC_ENV);
    CHECK_INT(c->sources[key_index("query_wait_timeout")], SRC_ENV);
    CHECK_INT(c->sources[key_index("default_pool_size")], SRC_FILE);
    CHECK_INT(c->sources[key_index("listen_port")], SRC_DEFAULT);
    CHECK_INT(diag.nerrors, 0);
    config_free(c);
}

static void sluice_env_errors_name_the_variable(void)
{
    char *env[] = {"SLUICE_POOL_SIZ=5", "SLUICE_DEFAULT_POOL_SIZE=five", "SLUICE_SYSLOG=1", NULL};
    struct config *c = load(MINIMAL_DBS, env);
    CHECK(c == NULL);
    CHECK_ERROR("environment: unknown variable SLUICE_POOL_SIZ");
    CHECK_ERROR("environment: SLUICE_DEFAULT_POOL_SIZE: default_pool_size = 'five': expected an "
                "integer");
    CHECK_WARNING("SLUICE_SYSLOG: PgBouncer key 'syslog' is not supported by sluice; ignored");
    config_free(c);
}

static void environment_alone_with_database_url_and_sluice_keys_is_a_full_config(void)
{
    char *env[] = {"DATABASE_URL=postgres://app:pw@db:5432/app", "SLUICE_LISTEN_ADDR=*",
                   "SLUICE_DEFAULT_POOL_SIZE=5", "SLUICE_AUTH_TYPE=scram-sha-256", NULL};
    config_diag_free(&diag);
    struct config *c = config_load(NULL, env, &diag);
    CHECK(c != NULL);
    if (c) {
        CHECK_STR(c->listen_addr.text, "*");
        CHECK_INT(c->default_pool_size, 5);
        CHECK_INT(c->auth_type, AUTH_SCRAM);
        CHECK(config_find_auth(c, "app") != NULL);
    }
    CHECK_INT(diag.nwarnings, 0);
    config_free(c);
}

/* ---- whole-config validation ---- */

static void validation_checks_relations_between_keys(void)
{
    struct config *c =
        load(MINIMAL_DBS "[sluice]\nmin_pool_size = 30\ndefault_pool_size = 20\n", NULL);
    CHECK(c == NULL);
    CHECK_ERROR("min_pool_size 30 is above default_pool_size 20");
    config_free(c);

    c = load("[databases]\nsmall = host=x pool_size=2\n[sluice]\nmin_pool_size = 3\n", NULL);
    CHECK(c == NULL);
    CHECK_ERROR("line 2: database 'small': min_pool_size 3 (the main section's) is above its "
                "pool_size 2");
    config_free(c);

    c = load("[databases]\nsmall = host=x min_pool_size=25\n", NULL);
    CHECK(c == NULL);
    CHECK_ERROR("min_pool_size 25 is above its pool_size 20 (default_pool_size)");
    config_free(c);

    c = load(MINIMAL_DBS "[sluice]\nlisten_addr =\nunix_socket_dir =\n", NULL);
    CHECK(c == NULL);
    CHECK_ERROR("nothing to listen on");
    config_free(c);

    /* The order of keys in the file does not matter: checked once everything is read. */
    c = load(MINIMAL_DBS "[sluice]\nmin_pool_size = 30\ndefault_pool_size = 40\n", NULL);
    CHECK(c != NULL);
    config_free(c);
}

/* workers: auto by default, the CPUs the process may use (resolved at load, shown as
 * "auto (N)"), from the file or SLUICE_WORKERS; any count in 1..64 loads; 0, 65 and words
 * other than auto are refused, naming what is expected. */
static void workers_key_loads_auto_and_its_range(void)
{
    int cpus = cpus_usable() < 64 ? cpus_usable() : 64;
    char shown[64], expected[64];
    snprintf(expected, sizeof expected, "auto (%d)", cpus);
    struct config *c = load(MINIMAL_DBS, NULL);
    CHECK(c != NULL);
    if (c) {
        CHECK_INT(c->workers.n, cpus);
        CHECK(c->workers.automatic);
        config_format_value(c, key_index("workers"), shown, sizeof shown);
        CHECK_STR(shown, expected);
    }
    config_free(c);

    c = load(MINIMAL_DBS "[sluice]\nworkers = 1\n", NULL);
    CHECK(c != NULL);
    if (c) {
        CHECK(!c->workers.automatic && c->workers.n == 1);
        config_format_value(c, key_index("workers"), shown, sizeof shown);
        CHECK_STR(shown, "1");
    }
    config_free(c);

    c = load(MINIMAL_DBS "[sluice]\nworkers = auto\n", NULL);
    CHECK(c != NULL);
    if (c) {
        CHECK_INT(c->workers.n, cpus);
        CHECK(c->workers.automatic);
        config_format_value(c, key_index("workers"), shown, sizeof shown);
        CHECK_STR(shown, expected);
    }
    config_free(c);

    char *env_auto[] = {"SLUICE_WORKERS=AUTO", NULL};
    c = load(MINIMAL_DBS "[sluice]\nworkers = 3\n", env_auto); /* the environment wins */
    CHECK(c != NULL);
    if (c)
        CHECK(c->workers.automatic && c->workers.n == cpus);
    config_free(c);

    char *env_four[] = {"SLUICE_WORKERS=4", NULL};
    c = load(MINIMAL_DBS "[sluice]\nworkers = auto\n", env_four);
    CHECK(c != NULL);
    if (c) {
        CHECK(!c->workers.automatic);
        CHECK_INT(c->workers.n, 4);
        config_format_value(c, key_index("workers"), shown, sizeof shown);
        CHECK_STR(shown, "4");
    }
    config_free(c);

    c = load(MINIMAL_DBS "[sluice]\nworkers = 64\n", NULL);
    CHECK(c != NULL);
    config_free(c);

    c = load(MINIMAL_DBS "[sluice]\nworkers = 65\n", NULL);
    CHECK(c == NULL);
    CHECK_ERROR("expected auto or a number from 1 to 64");
    config_free(c);

    c = load(MINIMAL_DBS "[sluice]\nworkers = 0\n", NULL);
    CHECK(c == NULL);
    config_free(c);

    c = load(MINIMAL_DBS "[sluice]\nworkers = many\n", NULL);
    CHECK(c == NULL);
    CHECK_ERROR("expected auto or a number from 1 to 64");
    config_free(c);
}

/* ---- run-time access ---- */

static void set_key_changes_one_value_and_refuses_bad_ones_unchanged(void)
{
    struct config *c = load(MINIMAL_DBS, NULL);
    CHECK(c != NULL);
    if (!c)
        return;
    char err[256];
    CHECK_INT(config_set_key(c, "default_pool_size", "30", SRC_ADMIN_SET, err, sizeof err), 0);
    CHECK_INT(c->default_pool_size, 30);
    CHECK_INT(c->sources[key_index("default_pool_size")], SRC_ADMIN_SET);

    CHECK_INT(config_set_key(c, "server_reset_query", "RESET ALL", SRC_ADMIN_SET, err, sizeof err),
              0);
    CHECK_STR(c->server_reset_query.text, "RESET ALL");

    CHECK_INT(config_set_key(c, "pool_mode", "bogus", SRC_ADMIN_SET, err, sizeof err), -EINVAL);
    CHECK_STR(err, "pool_mode = 'bogus': expected session, transaction or statement");
    CHECK_INT(c->pool_mode, POOL_SESSION);
    CHECK_INT(c->sources[key_index("pool_mode")], SRC_DEFAULT);

    CHECK_INT(config_set_key(c, "min_pool_size", "31", SRC_ADMIN_SET, err, sizeof err), -EINVAL);
    CHECK(strstr(err, "min_pool_size 31 is above default_pool_size 30") != NULL);
    CHECK_INT(c->min_pool_size, 0);

    CHECK_INT(config_set_key(c, "log_level", "loud", SRC_ADMIN_SET, err, sizeof err), -EINVAL);
    CHECK_INT(c->log_level, LOG_INFO);

    CHECK_INT(config_set_key(c, "no_such_key", "1", SRC_ADMIN_SET, err, sizeof err), -ENOENT);
    CHECK_STR(err, "unknown key 'no_such_key'");

    CHECK_INT(config_set_key(c, "pool_timeout", "250ms", SRC_ENV, err, sizeof err), 0);
    CHECK_INT(c->query_wait_timeout, 250);
    config_free(c);
}

static void format_value_prints_what_set_key_reads(void)
{
    struct config *c = load(MINIMAL_DBS "[sluice]\nquery_wait_timeout = 1.5\nstats_period = 2min\n"
                                        "max_db_connections = 80%\nlog_format = json\n"
                                        "auth_type = scram-sha-256\ntcp_keepalive = off\n",
                            NULL);
    CHECK(c != NULL);
    if (!c)
        return;
    char out[128];
    config_format_value(c, key_index("query_wait_timeout"), out, sizeof out);
    CHECK_STR(out, "1500ms");
    config_format_value(c, key_index("stats_period"), out, sizeof out);
    CHECK_STR(out, "120");
    config_format_value(c, key_index("max_db_connections"), out, sizeof out);
    CHECK_STR(out, "80%");
    config_format_value(c, key_index("log_format"), out, sizeof out);
    CHECK_STR(out, "json");
    config_format_value(c, key_index("auth_type"), out, sizeof out);
    CHECK_STR(out, "scram-sha-256");
    config_format_value(c, key_index("tcp_keepalive"), out, sizeof out);
    CHECK_STR(out, "0");
    config_format_value(c, key_index("listen_port"), out, sizeof out);
    CHECK_STR(out, "6432");
    config_format_value(c, key_index("server_reset_query"), out, sizeof out);
    CHECK_STR(out, "DISCARD ALL");
    config_format_value(c, -1, out, sizeof out);
    CHECK_STR(out, "");
    config_format_value(c, config_nkeys, out, sizeof out);
    CHECK_STR(out, "");
    char tiny[4];
    config_format_value(c, key_index("server_reset_query"), tiny, sizeof tiny);
    CHECK_STR(tiny, "DIS");
    config_free(c);
}

static void format_value_never_shows_a_secret(void)
{
    char *env[] = {"DATABASE_URL=postgres://u:hunter2@h/db", NULL};
    struct config *c = load("[databases]\napp = host=x password=hunter2\n", env);
    CHECK(c != NULL);
    for (int i = 0; c && i < config_nkeys; i++) {
        char out[512];
        config_format_value(c, i, out, sizeof out);
        CHECK(strstr(out, "hunter2") == NULL);
    }
    config_free(c);
}

/* contains(text, name): split text as a LIST key is split at load, then look name up. */
static bool list_text_contains(const char *text, const char *name)
{
    struct name_list list;
    char why[64];
    CHECK_INT(config_value_parse_LIST(text, &list, why, sizeof why), 0);
    bool found = config_list_contains(&list, name);
    config_value_free_LIST(&list);
    return found;
}

static void list_contains_matches_whole_names_in_comma_or_space_lists(void)
{
    const char *list = " alice, bob,carol  dave ,";
    CHECK(list_text_contains(list, "alice"));
    CHECK(list_text_contains(list, "bob"));
    CHECK(list_text_contains(list, "carol"));
    CHECK(list_text_contains(list, "dave"));
    CHECK(!list_text_contains(list, "al"));
    CHECK(!list_text_contains(list, "alice,"));
    CHECK(!list_text_contains(list, ""));
    CHECK(!list_text_contains("", "alice"));
    CHECK(!config_list_contains(NULL, "alice"));
    CHECK(!list_text_contains(list, NULL));
    CHECK(list_text_contains("extra_float_digits", "extra_float_digits"));
}

/* sslmode is read once, at load, for the logins sluice makes itself (issue 20): a mode libpq
 * does not have is refused there, naming its line, instead of at each server login. */
static void database_sslmode_is_parsed_at_load_and_wins_over_server_tls_sslmode(void)
{
    struct config *c = load("[databases]\na = host=x sslmode=bogus\n"
                            "b = postgres://u@x/b?sslmode=sometimes\n",
                            NULL);
    CHECK(c == NULL);
    CHECK_ERROR("line 2: database 'a': sslmode = 'bogus': expected disable, allow, prefer, "
                "require, verify-ca or verify-full");
    CHECK_ERROR("line 3: database 'b': sslmode = 'sometimes'");
    c = load("[databases]\na = host=x sslmode=Require\nb = host=x\n"
             "[sluice]\nserver_tls_sslmode = verify-full\n",
             NULL);
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK_INT(c->dbs[0].sslmode, SSLMODE_REQUIRE);
    CHECK_INT(c->dbs[1].sslmode, SSLMODE_UNSET);
    CHECK_INT(config_server_sslmode(c, &c->dbs[0]), SSLMODE_REQUIRE);
    CHECK_INT(config_server_sslmode(c, &c->dbs[1]), SSLMODE_VERIFY_FULL);
    config_free(c);
}

/* LIST and SQL keys are split and classified once, at load: nothing compares their text again. */
static void list_and_sql_keys_are_typed_at_load(void)
{
    struct config *c = load(MINIMAL_DBS "[sluice]\nadmin_users = ann,  bob carl\n"
                                        "listen_addr = 127.0.0.1, ::1\n"
                                        "server_reset_query = discard all\n"
                                        "server_check_query =\n",
                            NULL);
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK_INT(c->admin_users.n, 3);
    CHECK(config_list_contains(&c->admin_users, "carl"));
    CHECK_STR(c->admin_users.text, "ann,  bob carl"); /* SHOW CONFIG shows it as written */
    CHECK_INT(c->listen_addr.n, 2);
    CHECK_STR(c->listen_addr.names[1], "::1");
    CHECK_INT(c->stats_users.n, 0);
    CHECK_INT(c->server_reset_query.kind, SQL_SETTING_DISCARD_ALL);
    CHECK_STR(c->server_reset_query.text, "discard all");
    CHECK_INT(c->server_check_query.kind, SQL_SETTING_NONE);
    char err[256];
    CHECK_INT(config_set_key(c, "server_check_query", "<empty>", SRC_ADMIN_SET, err, sizeof err),
              0);
    CHECK_INT(c->server_check_query.kind, SQL_SETTING_EMPTY_QUERY);
    CHECK_INT(config_set_key(c, "server_check_query", "SELECT 1", SRC_ADMIN_SET, err, sizeof err),
              0);
    CHECK_INT(c->server_check_query.kind, SQL_SETTING_OTHER);
    CHECK_INT(config_set_key(c, "admin_users", "", SRC_ADMIN_SET, err, sizeof err), 0);
    CHECK_INT(c->admin_users.n, 0);
    config_free(c);
}

/* The keys an error lists as accepted come from config_entry_keys.def, aliases left out. */
static void entry_key_errors_list_the_keys_of_their_section(void)
{
    struct config *c = load("[databases]\na = host=x colour=red\n"
                            "[users]\nann = colour=red\n"
                            "[budgets]\nb = colour=red\n",
                            NULL);
    CHECK(c == NULL);
    CHECK_ERROR(
        "line 2: database 'a': unknown connection keyword 'colour' (libpq connection "
        "parameters and pool_size, min_pool_size, reserve_pool, pool_mode, "
        "max_db_connections, max_db_client_connections, auth_user, auth_dbname, "
        "auth_query, server_lifetime, query_timeout, idle_transaction_timeout, "
        "transaction_timeout, client_idle_timeout, connect_query and load_balance_hosts are "
        "accepted)");
    CHECK_ERROR("line 4: user 'ann': unknown key 'colour' (pool_mode, pool_size, "
                "reserve_pool_size, server_lifetime, query_timeout, idle_transaction_timeout, "
                "transaction_timeout, client_idle_timeout, max_user_connections and "
                "max_user_client_connections are accepted)");
    CHECK_ERROR("line 6: budget 'b': unknown key 'colour' (app, user, addr, max_servers, "
                "max_clients and min_servers are accepted)");
    c = load("[databases]\na = host=x load_balance_hosts=sometimes\n", NULL);
    CHECK(c == NULL);
    CHECK_ERROR("line 2: database 'a': load_balance_hosts = 'sometimes': expected round-robin or "
                "disable");
    config_free(c);
}

static void diag_free_resets_it_for_reuse(void)
{
    struct config *c = load("[sluice]\nbogus = 1\n", NULL);
    CHECK(c == NULL);
    CHECK(diag.nerrors >= 2);
    config_diag_free(&diag);
    CHECK(diag.errors == NULL && diag.nerrors == 0 && diag.warnings == NULL);
    config_diag_free(&diag);
    config_diag_free(NULL);
    config_free(NULL);
    /* A NULL diag is allowed: the caller only learns that it failed. */
    CHECK(config_load_string("[sluice]\nbogus = 1\n", NULL, NULL) == NULL);
}

/* admin SET's new generation: a copy equal to the live config in every key and section, with
 * memory of its own (changing or freeing one leaves the other whole) and a later generation. */
static void copy_is_an_equal_generation_of_its_own(void)
{
    struct config *c = load("[databases]\nappdb = host=127.0.0.1 port=5432 dbname=app "
                            "user=app password=pw pool_size=4 connect_query='SELECT 1'\n"
                            "* = host=127.0.0.1\n"
                            "[users]\napp = pool_size=3\n"
                            "[budgets]\nbatch = app=batch* user=app addr=10.0.0.0/8 "
                            "max_servers=2\n"
                            "[sluice]\nadmin_users = a, b\nserver_reset_query = DISCARD ALL\n"
                            "auth_query = SELECT usename, passwd FROM pg_shadow WHERE usename=$1\n",
                            NULL);
    CHECK(c != NULL);
    if (!c)
        return;
    struct config *copy = config_copy(c);
    CHECK(copy != NULL);
    if (!copy) {
        config_free(c);
        return;
    }
    CHECK(copy->generation > c->generation);
    for (int i = 0; i < config_nkeys; i++) {
        char a[1024], b[1024];
        config_format_value(c, i, a, sizeof(a));
        config_format_value(copy, i, b, sizeof(b));
        CHECK_STR(b, a);
        CHECK_INT(copy->sources[i], c->sources[i]);
    }
    CHECK_INT(copy->ndbs, c->ndbs);
    CHECK(copy->dbs != c->dbs && copy->dbs[0].name != c->dbs[0].name);
    CHECK_STR(copy->dbs[0].name, c->dbs[0].name);
    CHECK_INT(copy->dbs[0].nkeys, c->dbs[0].nkeys);
    CHECK_STR(keyword(&copy->dbs[0], "password"), "pw");
    CHECK(copy->dbs[0].pq_keywords[copy->dbs[0].nkeys] == NULL); /* still NULL-terminated */
    CHECK_STR(copy->dbs[0].connect_query, "SELECT 1");
    CHECK_INT(copy->dbs[0].pool_size, 4);
    CHECK_INT(copy->nusers, 1);
    CHECK_STR(copy->users[0].name, "app");
    CHECK_INT(copy->users[0].pool_size, 3);
    CHECK_INT(copy->nbudgets, c->nbudgets);
    CHECK_STR(copy->budgets[0].app_pattern, "batch*");
    CHECK_STR(copy->budgets[0].addr.text, c->budgets[0].addr.text);
    CHECK_INT(copy->admin_users.n, 2);
    CHECK(copy->admin_users.names[1] != c->admin_users.names[1]);
    char err[256];
    CHECK_INT(config_set_key(copy, "default_pool_size", "9", SRC_ADMIN_SET, err, sizeof err), 0);
    CHECK_INT(c->default_pool_size, 20); /* the live one is untouched */
    CHECK_INT(c->sources[key_index("default_pool_size")], SRC_DEFAULT);
    config_free(c); /* the copy outlives it whole */
    CHECK_STR(keyword(&copy->dbs[0], "host"), "127.0.0.1");
    CHECK_STR(copy->admin_users.names[0], "a");
    CHECK_INT(copy->default_pool_size, 9);
    config_free(copy);
}

int main(void)
{
    RUN(defaults_come_from_config_keys_def);
    RUN(key_table_describes_every_key);
    RUN(every_formatted_default_reads_back_unchanged);
    RUN(int_keys_reject_non_numbers_and_out_of_range_with_line);
    RUN(bool_accepts_pgbouncer_and_common_spellings);
    RUN(file_mode_is_octal_with_or_without_its_zero);
    RUN(time_is_seconds_when_bare_and_accepts_fractions_and_suffixes);
    RUN(time_rejects_negatives_garbage_and_unknown_units);
    RUN(limit_is_a_count_or_a_percentage_from_1_to_100);
    RUN(limit_resolve_takes_a_share_of_usable_server_connections);
    RUN(enums_parse_their_names_and_reject_others);
    RUN(auth_type_hba_cert_and_password_parse_and_need_their_keys);
    RUN(names_of_enums_are_stable);
    RUN(log_level_accepts_one_list_of_spellings);
    RUN(enum_keys_hold_their_parsed_values);
    RUN(database_sslmode_is_parsed_at_load_and_wins_over_server_tls_sslmode);
    RUN(list_and_sql_keys_are_typed_at_load);
    RUN(entry_key_errors_list_the_keys_of_their_section);
    RUN(pgbouncer_section_name_is_the_main_section);
    RUN(pool_timeout_is_an_alias_of_query_wait_timeout);
    RUN(keys_and_sections_are_case_insensitive);
    RUN(unknown_key_is_an_error_naming_its_line_and_section);
    RUN(a_comment_after_a_value_is_part_of_it_and_the_error_says_so);
    RUN(pgbouncer_keys_sluice_lacks_are_warnings_naming_the_line);
    RUN(per_entry_timeouts_and_user_reserve_parse_as_durations);
    RUN(a_real_pgbouncer_ini_loads_unchanged);
    RUN(syntax_problems_name_their_line);
    RUN(comments_blank_lines_crlf_and_indentation_keep_line_numbers_right);
    RUN(semicolon_inside_a_value_is_not_a_comment);
    RUN(lines_of_any_length_parse_whole_and_keep_line_numbers);
    RUN(database_pairs_split_sluice_keys_from_libpq_keywords);
    RUN(client_caps_are_main_keys_and_per_entry_keys);
    RUN(database_without_overrides_inherits_with_minus_one_and_unset);
    RUN(database_without_dbname_connects_to_its_own_name_but_star_does_not);
    RUN(find_db_tries_the_exact_name_then_the_star_entry);
    RUN(database_url_form_decodes_and_pulls_out_sluice_keys);
    RUN(database_url_handles_question_mark_in_password_and_missing_path);
    RUN(database_url_errors_never_quote_the_password);
    RUN(database_keyword_typo_is_an_error_that_hides_the_value);
    RUN(database_values_are_checked);
    RUN(database_defined_twice_is_an_error);
    RUN(datestyle_and_timezone_become_server_options);
    RUN(no_databases_is_an_error_that_says_what_to_do);
    RUN(users_section_overrides_pool_settings_per_user);
    RUN(budgets_parse_matchers_and_limits);
    RUN(budgets_reject_bad_cidr_numbers_duplicates_and_unknown_keys);
    RUN(holder_of_an_address_is_its_ip_or_its_ipv6_64);
    RUN(auth_file_is_read_relative_to_the_config_file);
    RUN(include_reads_the_named_file_where_it_stands);
    RUN(config_file_errors_name_the_file);
    RUN(password_auth_without_any_user_warns);
    RUN(database_url_alone_configures_a_database_and_its_login);
    RUN(database_url_without_dbname_is_called_postgres);
    RUN(environment_values_lose_surrounding_blanks_and_a_trailing_crlf);
    RUN(database_url_loses_to_the_file_entry_of_the_same_name_with_a_warning);
    RUN(database_url_with_prisma_parameters_warns_and_ignores_them);
    RUN(database_url_that_is_not_a_postgres_url_is_an_error_without_echo);
    RUN(sluice_env_overrides_the_file_and_records_its_source);
    RUN(sluice_env_errors_name_the_variable);
    RUN(environment_alone_with_database_url_and_sluice_keys_is_a_full_config);
    RUN(validation_checks_relations_between_keys);
    RUN(workers_key_loads_auto_and_its_range);
    RUN(set_key_changes_one_value_and_refuses_bad_ones_unchanged);
    RUN(copy_is_an_equal_generation_of_its_own);
    RUN(format_value_prints_what_set_key_reads);
    RUN(format_value_never_shows_a_secret);
    RUN(list_contains_matches_whole_names_in_comma_or_space_lists);
    RUN(diag_free_resets_it_for_reuse);
    config_diag_free(&diag);
    return CHECK_DONE();
}
