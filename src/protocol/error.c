/* error: the failure table (see error.h). Messages name the limit, the key that sets it and what
 * to do, so the person reading them does not need the source. */
#include "error.h"

#include <stdio.h>

static const char *const sqlstate_codes[] = {
#define SQLSTATE(sym, code) code,
#include "sqlstate.def"
#undef SQLSTATE
};

const char *sqlstate_code(enum sqlstate_id id)
{
    return sqlstate_codes[id];
}

#define F(sev, state, msg, hint) {SEVERITY_##sev, SQLSTATE_##state, msg, hint}
static const struct failure_info table[] = {
    [FAIL_PROTOCOL_VIOLATION] = F(FATAL, PROTOCOL_VIOLATION, "protocol violation: %s", NULL),
    /* Postgres's own words (postgres.c SocketBackend), the type byte in decimal as there */
    [FAIL_UNKNOWN_MESSAGE_TYPE] =
        F(FATAL, PROTOCOL_VIOLATION, "invalid frontend message type %s", NULL),
    [FAIL_BAD_STARTUP] = F(FATAL, PROTOCOL_VIOLATION, "invalid startup packet: %s", NULL),
    /* Postgres's own words (ProcessStartupPacket), as the two below */
    [FAIL_STARTUP_LAYOUT] = F(FATAL, PROTOCOL_VIOLATION,
                              "invalid startup packet layout: expected terminator as last "
                              "byte%s",
                              NULL),
    [FAIL_UNSUPPORTED_PROTOCOL] =
        F(FATAL, FEATURE_NOT_SUPPORTED, "unsupported frontend protocol %s",
          "sluice speaks protocol 3.0, which every current client library uses."),
    [FAIL_REPLICATION_UNSUPPORTED] =
        F(FATAL, FEATURE_NOT_SUPPORTED, "replication connections are not supported%s",
          "Connect replication clients to the database directly."),
    /* Postgres's own words (ProcessStartupPacket), for a value it cannot read as a boolean */
    [FAIL_BAD_REPLICATION_VALUE] =
        F(FATAL, INVALID_PARAMETER_VALUE, "invalid value for parameter \"replication\": \"%s\"",
          "Valid values are: \"false\", 0, \"true\", 1, \"database\"."),
    [FAIL_NO_USER] = F(FATAL, INVALID_AUTHORIZATION_SPECIFICATION,
                       "no PostgreSQL user name specified in startup packet%s", NULL),
    [FAIL_UNKNOWN_DATABASE] =
        F(FATAL, INVALID_CATALOG_NAME, "database \"%s\" is not configured in sluice",
          "Add it to [databases] (or a \"*\" entry), or connect to a database that is listed."),
    [FAIL_AUTH_FAILED] = F(FATAL, INVALID_PASSWORD, "password authentication failed for user \"%s\"",
                           NULL),
    [FAIL_AUTH_METHOD] = F(FATAL, PROTOCOL_VIOLATION, "authentication failed: %s", NULL),
    /* auth-scram.c read_client_first_message's, word for word */
    [FAIL_SCRAM_UNSUPPORTED] = F(FATAL, FEATURE_NOT_SUPPORTED, "%s", NULL),
    [FAIL_HBA_REJECT] = F(FATAL, INVALID_AUTHORIZATION_SPECIFICATION, "%s",
                          "auth_hba_file decides which logins are allowed and how."),
    [FAIL_TLS_REQUIRED] =
        F(FATAL, INVALID_AUTHORIZATION_SPECIFICATION, "TLS is required (client_tls_sslmode = %s)",
          "Connect with sslmode=require (or verify-full with the CA of sluice's certificate)."),
    /* Postgres's clientcert refusal (auth.c ClientAuthentication), word for word */
    [FAIL_CLIENT_CERT_REQUIRED] =
        F(FATAL, INVALID_AUTHORIZATION_SPECIFICATION,
          "connection requires a valid client certificate",
          "client_tls_sslmode is verify-ca or verify-full: connect with sslcert and sslkey, a "
          "certificate signed by the CA in sluice's client_tls_ca_file."),
    [FAIL_CERT_AUTH] =
        F(FATAL, INVALID_AUTHORIZATION_SPECIFICATION,
          "certificate authentication failed for user \"%s\"",
          "Connect over TLS with a client certificate signed by client_tls_ca_file whose CN is "
          "the user name."),
    /* PgBouncer's words, so scripts that match them keep working. */
    [FAIL_TRUST_UNKNOWN_USER] =
        F(FATAL, INVALID_AUTHORIZATION_SPECIFICATION, "\"trust\" authentication failed%s",
          "With auth_type = trust the user must still be listed in auth_file (or found by "
          "auth_query)."),
    [FAIL_ANY_WITHOUT_FORCED_USER] =
        F(FATAL, INVALID_AUTHORIZATION_SPECIFICATION,
          "auth_type \"any\" needs a forced user: the entry of database \"%s\" has no user=",
          "auth_type = any ignores the client's user name (as in PgBouncer), so each database "
          "entry must name the user= its servers log in as; add one, or choose another "
          "auth_type."),
    [FAIL_MAX_CLIENT_CONN] =
        F(FATAL, TOO_MANY_CONNECTIONS, "too many client connections: %s",
          "Raise max_client_conn, or close idle connections in the application."),
    [FAIL_TOO_MANY_LOGINS] =
        F(FATAL, TOO_MANY_CONNECTIONS, "too many logins in progress: %s",
          "A newer connection took this one's place: a login must finish promptly. Raise "
          "max_client_logins if real clients log in this slowly."),
    [FAIL_TOO_MANY_LONG_AUTH] =
        F(FATAL, TOO_MANY_CONNECTIONS, "too many logins in progress: %s",
          "Each login that sends a password or token longer than pkt_buf holds a buffer of its "
          "own until it is read; their number is capped to bound what strangers can hold before "
          "they log in. Retry shortly, or raise max_client_logins if this many clients send "
          "such passwords at once."),
    [FAIL_WAIT_TIMEOUT] = F(FATAL, TOO_MANY_CONNECTIONS, "%s", NULL),
    [FAIL_WAIT_TIMEOUT_RETRY] = F(ERROR, TOO_MANY_CONNECTIONS, "%s",
                                  "The connection is still usable: retry the query."),
    /* Postgres's code for a server that cannot take connections now (starting up, shutting
     * down, in recovery): try again later. 53300 stays "a limit is full". */
    [FAIL_DATABASE_DOWN] =
        F(FATAL, CANNOT_CONNECT_NOW, "%s",
          "sluice keeps probing the database and serves clients as soon as it answers: "
          "reconnect shortly."),
    [FAIL_DATABASE_DOWN_RETRY] =
        F(ERROR, CANNOT_CONNECT_NOW, "%s",
          "The request was not run and the connection is still usable: retry shortly."),
    /* Class 57, operator intervention: an administrator's PAUSE or KILL holds the request. */
    [FAIL_POOL_PAUSED] = F(FATAL, OPERATOR_INTERVENTION, "%s", NULL),
    [FAIL_POOL_PAUSED_RETRY] =
        F(ERROR, OPERATOR_INTERVENTION, "%s",
          "The request was not run and the connection is still usable: retry after RESUME."),
    [FAIL_BUDGET_CLIENTS] =
        F(FATAL, TOO_MANY_CONNECTIONS, "too many client connections: %s",
          "Raise max_clients of the budget, or close idle connections in the application."),
    [FAIL_LOGIN_TIMEOUT] =
        F(FATAL, PROTOCOL_VIOLATION, "login not completed within %s",
          "client_startup_timeout and client_login_timeout limit how long a login may take."),
    [FAIL_CLIENT_IDLE_TIMEOUT] =
        F(FATAL, IDLE_SESSION_TIMEOUT, "client idle for longer than client_idle_timeout (%s)",
          "Reconnect; the application should close connections it does not use."),
    /* ProcessInterrupts's, word for word: the client set idle_session_timeout, and sluice ends
     * its session as Postgres would have (client.c client_check_timeouts). */
    [FAIL_IDLE_SESSION_TIMEOUT] = F(FATAL, IDLE_SESSION_TIMEOUT,
                                    "terminating connection due to idle-session timeout%s", NULL),
    [FAIL_IDLE_TRANSACTION_TIMEOUT] =
        F(FATAL, IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
          "idle in transaction for longer than idle_transaction_timeout (%s); the transaction was "
          "rolled back",
          "Commit or roll back transactions promptly; they hold a server the whole time."),
    /* Postgres 17's code for its own transaction_timeout. */
    [FAIL_TRANSACTION_TIMEOUT] =
        F(FATAL, TRANSACTION_TIMEOUT,
          "transaction open for longer than transaction_timeout (%s); it was rolled back",
          "Keep transactions short; transaction_timeout limits how long one may hold a server."),
    [FAIL_SERVER_LOST] = F(FATAL, CONNECTION_FAILURE, "server connection lost: %s",
                           "The transaction in progress, if any, was rolled back by the server."),
    [FAIL_SERVER_LOGIN] = F(FATAL, CONNECTION_FAILURE, "%s", NULL),
    [FAIL_STATEMENT_MODE_TXN] =
        F(ERROR, FEATURE_NOT_SUPPORTED, "transaction blocks are not allowed in statement pooling mode%s",
          "Use pool_mode = transaction for this database or user, or run statements without BEGIN."),
    [FAIL_SHUTDOWN] = F(FATAL, ADMIN_SHUTDOWN, "sluice is shutting down%s", "Reconnect shortly."),
    [FAIL_OUT_OF_MEMORY] = F(FATAL, OUT_OF_MEMORY, "out of memory%s", NULL),
    [FAIL_PACKET_TOO_LARGE] =
        F(FATAL, PROTOCOL_VIOLATION, "invalid message length: %s",
          "max_packet_size limits the size of one client message."),
    [FAIL_ADMIN_DENIED] = F(FATAL, INSUFFICIENT_PRIVILEGE, "not allowed to use the admin console%s",
                            "Only users in admin_users or stats_users may connect to it."),
    [FAIL_ADMIN_KILLED] = F(FATAL, ADMIN_SHUTDOWN, "connection closed by the administrator%s", NULL),
    [FAIL_TOO_MANY_STATEMENTS] =
        F(FATAL, PROGRAM_LIMIT_EXCEEDED, "%s",
          "Close prepared statements the application no longer uses (DEALLOCATE), or raise "
          "the limit named above."),
    [FAIL_TOO_MANY_PENDING] =
        F(FATAL, PROGRAM_LIMIT_EXCEEDED,
          "one message queued more requests than fit in the %s kept ahead of the server's "
          "replies",
          "Split the message (a Query of many DEALLOCATE statements) into several."),
    [FAIL_SESSION_STATE] =
        F(ERROR, FEATURE_NOT_SUPPORTED,
          "%s is not supported in transaction pooling mode (session_state_policy = refuse)",
          "Its effect would be lost when the next transaction runs on another server: use "
          "session mode for this application, or session_state_policy = pin."),
    /* Postgres's own message for a cancel, so clients that match on it behave the same. */
    [FAIL_QUERY_CANCELED] = F(ERROR, QUERY_CANCELED, "canceling statement due to user request%s",
                              "The statement was still waiting for a server and was not run."),
    /* Postgres's code for holding a session idle in a transaction: the server was held the same
     * way, waiting for this client. */
    [FAIL_CLIENT_STALLED] =
        F(FATAL, IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
          "sent nothing for longer than idle_transaction_timeout (%s) while holding a server",
          "The server waited for the rest of a request; send each request whole (with its Sync) "
          "and promptly."),
    /* PgBouncer's messages, word for word up to the colon, so alerts written for it match. */
    [FAIL_DB_CLIENT_CAP] =
        F(FATAL, TOO_MANY_CONNECTIONS,
          "client connections exceeded (max_db_client_connections): %s",
          "Raise max_db_client_connections (main section or the database's entry), or close "
          "idle connections in the application."),
    [FAIL_USER_CLIENT_CAP] =
        F(FATAL, TOO_MANY_CONNECTIONS,
          "client connections exceeded (max_user_client_connections): %s",
          "Raise max_user_client_connections (main section or the user's [users] entry), or "
          "close idle connections in the application."),
    /* Postgres answers 55000 for a database that does not accept connections (datallowconn). */
    [FAIL_DATABASE_DISABLED] =
        F(FATAL, OBJECT_NOT_IN_PREREQUISITE_STATE, "database does not allow connections: %s",
          "An administrator ran DISABLE on it in the admin console; ENABLE lets new clients in "
          "again. Sessions already open are not affected."),
    /* Postgres's own refusals of startup options (process_postgres_switches, SetConfigOption),
     * word for word: the client must not be able to tell sluice read them. */
    [FAIL_OPTIONS_BAD_ARGUMENT] =
        F(FATAL, SYNTAX_ERROR, "invalid command-line argument for server process: %s",
          "Try \"postgres --help\" for more information."),
    [FAIL_OPTIONS_C_WITHOUT_VALUE] = F(FATAL, SYNTAX_ERROR, "-c %s requires a value", NULL),
    [FAIL_OPTIONS_LONG_WITHOUT_VALUE] = F(FATAL, SYNTAX_ERROR, "--%s requires a value", NULL),
    [FAIL_OPTIONS_UNKNOWN_PARAMETER] =
        F(FATAL, UNDEFINED_OBJECT, "unrecognized configuration parameter \"%s\"", NULL),
    [FAIL_OPTIONS_BAD_PARAMETER_NAME] =
        F(FATAL, INVALID_NAME, "invalid configuration parameter name \"%s\"", NULL),
    /* RevalidateCachedQuery's, word for word (stmt_track.c, in transaction mode, where a
     * statement is prepared again on another backend after DDL). */
    [FAIL_RESULT_TYPE_CHANGED] = {SEVERITY_ERROR, SQLSTATE_FEATURE_NOT_SUPPORTED,
                                  "cached plan must not change result type%s", NULL,
                                  "plancache.c", "RevalidateCachedQuery"},
    [FAIL_STATEMENT_UNTRANSLATABLE] =
        F(FATAL, UNTRANSLATABLE_CHARACTER,
          "prepared statement %s, which lacks a character of its text or which sluice does not "
          "convert to: it cannot be prepared again on this server",
          "Postgres converted the statement's text when it was prepared; sluice prepares it again "
          "on each server in the client_encoding of the moment. Keep one client_encoding for "
          "the session (set it at login), prepare the statement again after changing it, or "
          "use session mode."),
    [FAIL_SIMPLE_QUERY_DISABLED] =
        F(FATAL, FEATURE_NOT_SUPPORTED, "simple query protocol is disabled (disable_pqexec)%s",
          "Send statements with the extended query protocol (a prepared or parameterized "
          "statement), or turn disable_pqexec off."),
};
#undef F

static const char *const names[] = {
    [FAIL_PROTOCOL_VIOLATION] = "protocol_violation",
    [FAIL_UNKNOWN_MESSAGE_TYPE] = "unknown_message_type",
    [FAIL_BAD_STARTUP] = "bad_startup",
    [FAIL_STARTUP_LAYOUT] = "bad_startup_layout",
    [FAIL_UNSUPPORTED_PROTOCOL] = "unsupported_protocol",
    [FAIL_REPLICATION_UNSUPPORTED] = "replication_unsupported",
    [FAIL_BAD_REPLICATION_VALUE] = "bad_replication_value",
    [FAIL_NO_USER] = "no_user",
    [FAIL_UNKNOWN_DATABASE] = "unknown_database",
    [FAIL_AUTH_FAILED] = "auth_failed",
    [FAIL_AUTH_METHOD] = "auth_method",
    [FAIL_SCRAM_UNSUPPORTED] = "scram_unsupported",
    [FAIL_HBA_REJECT] = "hba_reject",
    [FAIL_TLS_REQUIRED] = "tls_required",
    [FAIL_CLIENT_CERT_REQUIRED] = "client_cert_required",
    [FAIL_CERT_AUTH] = "cert_auth_failed",
    [FAIL_TRUST_UNKNOWN_USER] = "trust_unknown_user",
    [FAIL_ANY_WITHOUT_FORCED_USER] = "any_without_forced_user",
    [FAIL_MAX_CLIENT_CONN] = "max_client_conn",
    [FAIL_TOO_MANY_LOGINS] = "max_client_logins",
    [FAIL_TOO_MANY_LONG_AUTH] = "max_client_logins_long_auth",
    [FAIL_WAIT_TIMEOUT] = "wait_timeout",
    [FAIL_WAIT_TIMEOUT_RETRY] = "wait_timeout",
    [FAIL_DATABASE_DOWN] = "database_down",
    [FAIL_DATABASE_DOWN_RETRY] = "database_down",
    [FAIL_POOL_PAUSED] = "pool_paused",
    [FAIL_POOL_PAUSED_RETRY] = "pool_paused",
    [FAIL_BUDGET_CLIENTS] = "budget_max_clients",
    [FAIL_LOGIN_TIMEOUT] = "login_timeout",
    [FAIL_CLIENT_IDLE_TIMEOUT] = "client_idle_timeout",
    [FAIL_IDLE_SESSION_TIMEOUT] = "idle_session_timeout",
    [FAIL_IDLE_TRANSACTION_TIMEOUT] = "idle_transaction_timeout",
    [FAIL_TRANSACTION_TIMEOUT] = "transaction_timeout",
    [FAIL_SERVER_LOST] = "server_lost",
    [FAIL_SERVER_LOGIN] = "server_login",
    [FAIL_STATEMENT_MODE_TXN] = "statement_mode_transaction",
    [FAIL_SHUTDOWN] = "shutdown",
    [FAIL_OUT_OF_MEMORY] = "out_of_memory",
    [FAIL_PACKET_TOO_LARGE] = "packet_too_large",
    [FAIL_ADMIN_DENIED] = "admin_denied",
    [FAIL_ADMIN_KILLED] = "admin_killed",
    [FAIL_SESSION_STATE] = "session_state",
    [FAIL_TOO_MANY_STATEMENTS] = "too_many_statements",
    [FAIL_TOO_MANY_PENDING] = "too_many_pending",
    [FAIL_QUERY_CANCELED] = "query_canceled",
    [FAIL_CLIENT_STALLED] = "client_stalled",
    [FAIL_DB_CLIENT_CAP] = "max_db_client_connections",
    [FAIL_USER_CLIENT_CAP] = "max_user_client_connections",
    [FAIL_DATABASE_DISABLED] = "database_disabled",
    [FAIL_OPTIONS_BAD_ARGUMENT] = "options_bad_argument",
    [FAIL_OPTIONS_C_WITHOUT_VALUE] = "options_without_value",
    [FAIL_OPTIONS_LONG_WITHOUT_VALUE] = "options_without_value",
    [FAIL_OPTIONS_UNKNOWN_PARAMETER] = "options_unknown_parameter",
    [FAIL_OPTIONS_BAD_PARAMETER_NAME] = "options_bad_parameter_name",
    [FAIL_RESULT_TYPE_CHANGED] = "result_type_changed",
    [FAIL_STATEMENT_UNTRANSLATABLE] = "statement_untranslatable",
    [FAIL_SIMPLE_QUERY_DISABLED] = "simple_query_disabled",
};

const struct failure_info *failure_info(enum failure f)
{
    return &table[f];
}

const char *failure_name(enum failure f)
{
    return names[f];
}

void failure_message(enum failure f, const char *detail, char *out, size_t n)
{
    snprintf(out, n, table[f].message, detail ? detail : "");
}

void error_build(struct msg_out *out, enum failure f, const char *detail,
                 const char *sqlstate_override)
{
    const struct failure_info *fi = &table[f];
    char message[1024];
    failure_message(f, detail, message, sizeof(message));
    codec_put_error_at(out, 'E', fi->severity == SEVERITY_FATAL ? "FATAL" : "ERROR",
                       sqlstate_override ? sqlstate_override : sqlstate_code(fi->sqlstate),
                       message, NULL, fi->hint, fi->file, fi->routine);
}
