/* error: every failure a client can see, as one enum. Each reason maps, in one table, to a
 * severity, a SQLSTATE, a message template and a hint; client_fail() is the only place that
 * turns one into an ErrorResponse. */
#ifndef SLUICE_ERROR_H
#define SLUICE_ERROR_H

#include "codec.h"

enum sqlstate_id {
#define SQLSTATE(sym, code) SQLSTATE_##sym,
#include "sqlstate.def"
#undef SQLSTATE
};
const char *sqlstate_code(enum sqlstate_id id);

enum failure {
    FAIL_PROTOCOL_VIOLATION,   /* detail: what was wrong */
    FAIL_UNKNOWN_MESSAGE_TYPE, /* detail: the type byte, in decimal */
    FAIL_BAD_STARTUP,          /* detail: what was wrong */
    FAIL_STARTUP_LAYOUT,       /* a 3.x StartupMessage whose pairs do not end in one zero byte */
    FAIL_UNSUPPORTED_PROTOCOL, /* detail: the version */
    FAIL_REPLICATION_UNSUPPORTED,
    FAIL_BAD_REPLICATION_VALUE, /* detail: the value */
    FAIL_NO_USER,
    FAIL_UNKNOWN_DATABASE,     /* detail: the name */
    FAIL_AUTH_FAILED,          /* detail: user name */
    FAIL_AUTH_METHOD,          /* detail: what the client sent */
    FAIL_SCRAM_UNSUPPORTED,    /* detail: Postgres's message for what the client asked for */
    FAIL_HBA_REJECT,           /* detail: the whole message (rule, host, user, database, TLS) */
    FAIL_TLS_REQUIRED,         /* detail: client_tls_sslmode */
    FAIL_CLIENT_CERT_REQUIRED, /* client_tls_sslmode verify-*, TLS without a certificate */
    FAIL_CERT_AUTH,            /* detail: user name */
    FAIL_TRUST_UNKNOWN_USER,   /* trust, but the user is in neither auth_file nor auth_query */
    FAIL_ANY_WITHOUT_FORCED_USER, /* detail: the database, whose entry has no user= */
    FAIL_MAX_CLIENT_CONN,      /* detail: the limit */
    FAIL_TOO_MANY_LOGINS,      /* detail: the limit */
    FAIL_TOO_MANY_LONG_AUTH,   /* detail: the limit; logins sending long passwords at once */
    FAIL_WAIT_TIMEOUT,         /* detail: pool, limit that was full */
    FAIL_WAIT_TIMEOUT_RETRY,   /* the same, but the session goes on */
    FAIL_DATABASE_DOWN,        /* detail: pool, how long, the database's reason (breaker open) */
    FAIL_DATABASE_DOWN_RETRY,  /* the same, but the session goes on */
    FAIL_POOL_PAUSED,          /* detail: pool, PAUSE or KILL, how long */
    FAIL_POOL_PAUSED_RETRY,    /* the same, but the session goes on */
    FAIL_BUDGET_CLIENTS,       /* detail: budget and its max_clients */
    FAIL_LOGIN_TIMEOUT,
    FAIL_CLIENT_IDLE_TIMEOUT,
    FAIL_IDLE_SESSION_TIMEOUT, /* the client's own idle_session_timeout, in Postgres's words */
    FAIL_IDLE_TRANSACTION_TIMEOUT,
    FAIL_TRANSACTION_TIMEOUT,  /* detail: the limit */
    FAIL_SERVER_LOST,          /* detail: why */
    FAIL_SERVER_LOGIN,         /* detail: the server's message; sqlstate passed separately */
    FAIL_STATEMENT_MODE_TXN,
    FAIL_SHUTDOWN,
    FAIL_OUT_OF_MEMORY,
    FAIL_PACKET_TOO_LARGE,     /* detail: size and limit */
    FAIL_ADMIN_DENIED,
    FAIL_ADMIN_KILLED,
    FAIL_SESSION_STATE,        /* detail: the feature */
    FAIL_TOO_MANY_STATEMENTS,  /* detail: the limit */
    FAIL_TOO_MANY_PENDING,     /* detail: the limit */
    FAIL_QUERY_CANCELED,       /* a CancelRequest for a request still waiting for a server */
    FAIL_CLIENT_STALLED,       /* detail: how long, and what the server waited for */
    FAIL_DB_CLIENT_CAP,        /* detail: database, count and limit */
    FAIL_USER_CLIENT_CAP,      /* detail: user, count and limit */
    FAIL_DATABASE_DISABLED,    /* detail: the database (DISABLE in the admin console) */
    /* Startup options Postgres refuses, in its words (startup_options.h), after authentication */
    FAIL_OPTIONS_BAD_ARGUMENT,       /* detail: the word */
    FAIL_OPTIONS_C_WITHOUT_VALUE,    /* detail: the word after -c */
    FAIL_OPTIONS_LONG_WITHOUT_VALUE, /* detail: the word after -- */
    FAIL_OPTIONS_UNKNOWN_PARAMETER,  /* detail: the name */
    FAIL_OPTIONS_BAD_PARAMETER_NAME, /* detail: the name */
    /* Postgres's own error for a prepared statement whose result type DDL changed */
    FAIL_RESULT_TYPE_CHANGED,
    /* A statement prepared again after its client changed client_encoding to one that lacks
     * a character of its text (stmt_track.c) */
    FAIL_STATEMENT_UNTRANSLATABLE, /* detail: the statement and both encodings */
    FAIL_SIMPLE_QUERY_DISABLED,    /* a Query message while disable_pqexec is on */
};

enum severity { SEVERITY_ERROR, SEVERITY_FATAL };

struct failure_info {
    enum severity severity;
    enum sqlstate_id sqlstate;
    const char *message; /* printf template with one %s for the detail */
    const char *hint;    /* NULL or a sentence saying what to do */
    const char *file, *routine; /* where Postgres raises it, for one it raises itself */
};
const struct failure_info *failure_info(enum failure f);
const char *failure_name(enum failure f);

/* The message a client gets for f with this detail (cut to fit n), for the log line that says
 * why sluice closed or failed it: a failure whose detail is empty is named by its message. */
void failure_message(enum failure f, const char *detail, char *out, size_t n);
/* Append an ErrorResponse for f to out. sqlstate_override (may be NULL) replaces the table's
 * SQLSTATE, for errors relayed from the server at login. */
void error_build(struct msg_out *out, enum failure f, const char *detail,
                 const char *sqlstate_override);

#endif
