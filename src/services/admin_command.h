/* admin_command: the admin console's command language — one query string in, one parsed
 * command out. No I/O and no state, so it can be fuzzed and unit-tested alone; admin.c runs the
 * command. Keywords are case-insensitive, names are kept as written ("quoted" ones too), one
 * command per query, an optional trailing semicolon. */
#ifndef SLUICE_ADMIN_COMMAND_H
#define SLUICE_ADMIN_COMMAND_H

#include <stdbool.h>
#include <stdint.h>

#define ADMIN_NAME_MAX 128   /* a database name or a config key, with its NUL */
#define ADMIN_VALUE_MAX 2048 /* a SET value, with its NUL */
#define ADMIN_QUERY_MAX 8192 /* longer query strings are refused before parsing */

enum admin_verb {
    ADMIN_INVALID = 0, /* error[] says why */
    ADMIN_EMPTY,       /* nothing but blanks and semicolons */
    ADMIN_SHOW,
    ADMIN_PAUSE,       /* [db] */
    ADMIN_RESUME,      /* [db] */
    ADMIN_RECONNECT,   /* [db] */
    ADMIN_WAIT_CLOSE,  /* [db] */
    ADMIN_KILL,        /* db */
    ADMIN_KILL_CLIENT, /* id */
    ADMIN_RELOAD,
    ADMIN_SHUTDOWN, /* [WAIT_FOR_SERVERS | WAIT_FOR_CLIENTS] */
    ADMIN_SET,      /* key = value */
    ADMIN_DISABLE,  /* db */
    ADMIN_ENABLE,   /* db */
    ADMIN_SUSPEND,  /* refused: sluice has no online restart to hand sockets to */
    ADMIN_VERB_LAST = ADMIN_SUSPEND, /* for range checks (the fuzz target's) */
};

enum admin_show {
    ADMIN_SHOW_HELP = 0,
    ADMIN_SHOW_POOLS,
    ADMIN_SHOW_CLIENTS,
    ADMIN_SHOW_SERVERS,
    ADMIN_SHOW_STATS,
    ADMIN_SHOW_STATS_TOTALS,
    ADMIN_SHOW_STATS_AVERAGES,
    ADMIN_SHOW_DATABASES,
    ADMIN_SHOW_USERS,
    ADMIN_SHOW_CONFIG,
    ADMIN_SHOW_LISTS,
    ADMIN_SHOW_VERSION,
    ADMIN_SHOW_BUDGETS,
    ADMIN_SHOW_SOCKETS,
    ADMIN_SHOW_ACTIVE_SOCKETS,
    ADMIN_SHOW_PEERS,
    ADMIN_SHOW_PEER_POOLS,
    ADMIN_SHOW_MEM,
};

enum admin_shutdown_mode {
    ADMIN_SHUTDOWN_NOW = 0,
    ADMIN_SHUTDOWN_WAIT_FOR_SERVERS, /* graceful: transactions finish (SIGINT) */
    ADMIN_SHUTDOWN_WAIT_FOR_CLIENTS, /* no new clients; exit once the last one has left */
};

/* Why a query did not parse; decides the SQLSTATE of the answer. */
enum admin_error {
    ADMIN_ERR_NONE = 0,
    ADMIN_ERR_SYNTAX,         /* 42601 */
    ADMIN_ERR_UNKNOWN_OBJECT, /* 42704: SHOW of something that does not exist */
};

struct admin_command {
    enum admin_verb verb;
    enum admin_show show;
    enum admin_shutdown_mode shutdown;
    bool has_name;
    char name[ADMIN_NAME_MAX];   /* the database (PAUSE, DISABLE, ...) or the key (SET) */
    char value[ADMIN_VALUE_MAX]; /* SET */
    uint64_t client_id;          /* KILL_CLIENT */
    enum admin_error error;
    char message[256]; /* ADMIN_INVALID: a sentence for the ErrorResponse */
};

/* Parse one query string (NUL-terminated). Returns out->verb. Never reads past the NUL, never
 * fails on any input: what it does not understand is ADMIN_INVALID with a message. */
enum admin_verb admin_parse_command(const char *sql, struct admin_command *out);

/* The CommandComplete tag of a verb ("SHOW", "PAUSE", ...). */
const char *admin_verb_tag(enum admin_verb v);
/* "POOLS", "STATS_TOTALS", ... */
const char *admin_show_name(enum admin_show s);
/* Is this verb allowed to stats_users (read-only)? */
bool admin_verb_read_only(enum admin_verb v);

#endif
