/* session_state: SQL that leaves state behind on the backend beyond the transaction (LISTEN,
 * session advisory locks, WITH HOLD cursors, temporary tables, SET of parameters Postgres does not
 * report). In transaction and statement mode the client's next transaction may run on another
 * backend, so such state silently goes missing; session_state_policy says what to do instead:
 * warn (log it, naming the application), pin (keep the client on its backend until it
 * disconnects) or refuse (an error naming the feature). Pure text inspection, no I/O. */
#ifndef SLUICE_SESSION_STATE_H
#define SLUICE_SESSION_STATE_H

#include <stdbool.h>
#include <stddef.h>

enum session_feature {
    SESSION_FEATURE_NONE = 0,
    SESSION_FEATURE_LISTEN,
    SESSION_FEATURE_ADVISORY_LOCK,
    SESSION_FEATURE_HOLD_CURSOR,
    SESSION_FEATURE_TEMP_TABLE,
    SESSION_FEATURE_SET,
    SESSION_FEATURE_SQL_PREPARE,
};
/* Features whose objects Postgres drops only when the session ends (all but SET, whose
 * parameters sluice's records follow where it can name them). */
bool session_feature_leaves_objects(enum session_feature f);

enum session_policy { SESSION_POLICY_WARN, SESSION_POLICY_PIN, SESSION_POLICY_REFUSE };

/* Parameters Postgres does not report that a text may change for the whole session: SET or
 * RESET of a name, RESET ALL, DISCARD ALL, set_config(name, value, false). sluice cannot see
 * their new values, so the server's record of them becomes unknown (params_forget). */
#define PARAM_TOUCH_NAMES 4
struct param_touch {
    bool all; /* RESET ALL, DISCARD ALL, or any of what makes `unnamed` */
    /* A change no record of sluice's can follow: SET ROLE, SET SESSION AUTHORIZATION, a name
     * that is an expression or not a plain literal, too many names. Only a full reset undoes it
     * (server.h, SERVER_SESSION_UNKNOWN). */
    bool unnamed;
    int n;
    char names[PARAM_TOUCH_NAMES][64];
};

/* The first session-level feature the SQL text uses (one that leaves objects before a SET) (len bytes, need not be NUL-terminated);
 * touch (may be NULL) gets the unreported parameters the whole text may change. */
enum session_feature session_state_detect(const char *sql, size_t len, struct param_touch *touch);
const char *session_feature_name(enum session_feature f);
/* "warn", "pin", "refuse"; -1 when the text is none of them. */
int session_policy_parse(const char *text);

#endif
