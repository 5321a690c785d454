/* session_state: SQL that leaves state behind on the backend beyond the transaction (LISTEN,
 * session advisory locks, WITH HOLD cursors, temporary tables, SET of parameters Postgres does not
 * report, a LOADed library). In transaction and statement mode the client's next transaction may
 * run on another backend, so such state silently goes missing (but for a SET whose names sluice
 * reads: those it follows, login_reset.h); session_state_policy says what to do instead: warn (log
 * it, naming the application), pin (keep the client on its backend until it disconnects) or refuse
 * (an error naming the feature). Pure text inspection, no I/O. */
#ifndef SLUICE_SESSION_STATE_H
#define SLUICE_SESSION_STATE_H

#include <stdbool.h>
#include <stddef.h>

#include "sql_lex.h"

enum session_feature {
    SESSION_FEATURE_NONE = 0,
    SESSION_FEATURE_LISTEN,
    SESSION_FEATURE_ADVISORY_LOCK,
    SESSION_FEATURE_HOLD_CURSOR,
    SESSION_FEATURE_TEMP_TABLE,
    SESSION_FEATURE_SET,
    SESSION_FEATURE_SQL_PREPARE,
    SESSION_FEATURE_LOAD, /* LOAD 'library': loaded for the backend's life */
    /* setseed(x): random() then gives the sequence x fixes, for the backend's life */
    SESSION_FEATURE_RANDOM_SEED,
    SESSION_FEATURE_LAST = SESSION_FEATURE_RANDOM_SEED, /* for range checks */
};
/* Features whose objects Postgres drops only when the session ends (all but SET, whose
 * parameters sluice's records follow where it can name them). */
bool session_feature_leaves_objects(enum session_feature f);
/* Features no reset undoes, DISCARD ALL included: a LOADed library (its hooks, its parameters)
 * stays in the backend until it exits, and so does setseed's seed (a new backend seeds random()
 * from a strong random source; the next client would otherwise get numbers the first one can
 * predict). Only closing the server ends them. */
bool session_feature_outlives_reset(enum session_feature f);

/* Parameters Postgres does not report that a text may change for the whole session: SET or
 * RESET of a name, RESET ALL, DISCARD ALL, set_config(name, value, false). sluice cannot see
 * their new values, so the server's record of them becomes unknown (params_forget). */
#define PARAM_TOUCH_NAMES 4
/* The unreported names one text may SET and sluice still follow by name (a connection's setup
 * often SETs several at once: search_path, statement_timeout, lock_timeout, work_mem, an app.x or
 * two); past them the text is "unnamed". */
#define PARAM_TOUCH_SET_NAMES 16

/* Parameters a text returns to their reset values: RESET name, RESET ALL, DISCARD ALL, SET name
 * TO DEFAULT, SET LOCAL name TO DEFAULT, set_config(name, NULL, ...) (any value that is not a
 * plain literal may be NULL). Postgres's reset value of a parameter the client set at login is
 * that login value; a pooled backend's is its own, so sluice sets the client's again afterwards
 * (login_reset.h). */
enum param_reset_kind {
    PARAM_RESET_NONE,   /* the text resets nothing */
    PARAM_RESET_NAMES,  /* names[], and the text's last statement is a reset */
    PARAM_RESET_ALL,    /* every parameter, and the text's last statement is a reset */
    PARAM_RESET_UNSURE, /* a reset, then other statements (which may see or change the values),
                           or more names than fit: what the text leaves cannot be told */
};
struct param_reset {
    enum param_reset_kind kind;
    bool session_level; /* some reset lasts past the transaction (all but SET LOCAL name TO
                           DEFAULT and set_config(name, NULL, true)) */
    int n;
    int statements; /* reset statements seen (session_state_detect's own count) */
    char names[PARAM_TOUCH_NAMES][64]; /* lower case */
};
/* Add the resets of r to into (a reset that cannot be told covers every name). */
void param_reset_merge(struct param_reset *into, const struct param_reset *r);
/* Does the reset cover name (any case)? */
bool param_reset_covers(const struct param_reset *r, const char *name);

struct param_touch {
    bool all; /* RESET ALL, DISCARD ALL, or any of what makes `unnamed` */
    /* A change no record of sluice's can follow: SET ROLE, SET SESSION AUTHORIZATION, a name
     * that is an expression or not a plain literal, too many names. Only a full reset undoes it
     * (server.h, SERVER_SESSION_UNKNOWN). */
    bool unnamed;
    int n;
    char names[PARAM_TOUCH_SET_NAMES][64];
    struct param_reset reset; /* reported parameters too */
    /* search_path set (SET, SET LOCAL, SET SCHEMA, set_config) to a value that names pg_temp,
     * or that cannot be read: a plain CREATE may then make a temporary object, which only a
     * full reset drops. The value itself is followed as any SET's. */
    bool temp_schema;
};

/* The first session-level feature the SQL text uses (one that leaves objects before a SET) (len
 * bytes, need not be NUL-terminated); touch (may be NULL) gets the unreported parameters the
 * whole text may change. reading: how the client's backslashes read (enum sql_reading: its
 * standard_conforming_strings and client_encoding as sluice knows them). A text with a
 * backslash another reading of one of the two takes otherwise (a SET of it may be in flight)
 * is read that way too; where it differs, the parameters are unnamed. */
enum session_feature session_state_detect(const char *sql, size_t len, struct param_touch *touch,
                                          unsigned reading);
/* Can the text change anything session_state_detect looks for? False only when none of the
 * words every such feature, parameter change and reset needs is in its bytes (SET, RESET,
 * set_config and pg_settings hold "set"; LISTEN, LOAD, PREPARE, DISCARD, DECLARE, DO, TEMP
 * and pg_temp, the advisory lock functions, a U&"..." name whose escapes may spell any of
 * them): then the text changes nothing, whatever its literals, comments and readings, and
 * session_state_detect reads no further. */
bool session_state_may_touch(const char *sql, size_t len);
/* session_state_detect without that first test: what the fuzz target checks it against. */
enum session_feature session_state_detect_fully(const char *sql, size_t len,
                                                struct param_touch *touch, unsigned reading);
/* Where the first statement that uses a session-level feature starts in the SQL text (len bytes,
 * statements split on ';' outside quotes), so that what comes before it can run as it would in
 * Postgres; 0 when it is the first, or when the text has what could hide a ';' from that split
 * (dollar quotes, backslashes, comments). */
size_t session_state_feature_start(const char *sql, size_t len);
const char *session_feature_name(enum session_feature f);

#endif
