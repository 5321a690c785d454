/* params: session parameters as name/value pairs. A client keeps what it asked for (its startup
 * packet, and every ParameterStatus its own SETs produced); a server keeps what its backend
 * currently has. When a client gets a server whose values differ, params builds the SETs that
 * make the backend match, sent ahead of the client's own bytes. */
#ifndef SLUICE_PARAMS_H
#define SLUICE_PARAMS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec.h"

struct param {
    char *name;  /* a reported name: interned (static); else owns one block "name\0value\0" */
    char *value; /* for an interned name its own allocation; else inside name's block */
};

struct param_set {
    struct param *items;
    uint16_t n, cap;
    uint32_t generation; /* bumped on every change: lets a server skip the compare */
    /* Past a few names, a hash index (open addressing, item index + 1, 0 = empty) keeps each
     * lookup O(1): a client with hundreds of "-c" options would make every sync quadratic. */
    uint16_t *index;
    uint32_t index_cap; /* a power of two, at least twice n; 0 while there is no index */
    /* The value of client_encoding (NULL: none), kept by params_set: stmt_track.c reads it at
     * each named Parse, Bind and re-prepare, where a lookup by name would cost a scan. */
    const char *client_encoding;
};

void params_init(struct param_set *p);
void params_free(struct param_set *p);
const char *params_get(const struct param_set *p, const char *name);
/* 0 or -ENOMEM. A NULL value removes the name. */
int params_set(struct param_set *p, const char *name, const char *value)
    __attribute__((warn_unused_result));
int params_copy(struct param_set *dst, const struct param_set *src)
    __attribute__((warn_unused_result));

/* A server's value that sluice no longer knows: the client's own statement changed it (SET,
 * RESET, set_config), a reset query ran, or a sync failed. Stored as the value (compared by
 * address, never equal to a real one), so the next sync SETs or RESETs the name whatever the
 * next client wants. Only for names Postgres does not report: it reports the others itself. */
extern const char params_unknown[];
/* Mark one unreported name unknown (adding it when absent), or with name NULL every unreported
 * name the set holds. 0 or -ENOMEM. */
int params_forget(struct param_set *server, const char *name) __attribute__((warn_unused_result));

/* Parameters Postgres 15 reports with ParameterStatus (GUC_REPORT): the server tells us when they
 * change, so they are tracked without parsing SQL. */
bool params_is_reported(const char *name);
/* The i-th parameter Postgres reports with ParameterStatus, or NULL past the last. */
const char *params_reported_name(size_t i);
/* Which of them a client may have its own value for (the rest, like server_version, are the
 * server's facts). */
bool params_is_client_settable(const char *name);

/* Append to sql the statements that give `server` the session a client wants: the client's own
 * values (`own`: its startup parameters and what its SETs changed), and for every other
 * client-settable parameter the pool's login values (`base`). set_config (the value as text, as
 * a startup parameter gives it) for each differing value; a reset for a parameter sluice set on
 * the server earlier (not reported) that this client lacks. Each statement ends with its own
 * NUL, to be sent as a Query of its own: one that fails then undoes no other (a batch in one
 * Query is one transaction). Keeping only the client's own values makes an idle client small.
 * Returns the count. */
int params_build_sync(const struct param_set *base, const struct param_set *own,
                      const struct param_set *server, struct msg_out *sql);

/* Parameters whose client value acts on a backend while it idles in the pool, outside any
 * client's lease: Postgres 15's idle_session_timeout (a backend idle that long ends itself). The
 * next client's sync would set it back, but too late: the backend must not wait in the pool
 * under it. The others a client SETs act only while a client's statements run (or, as
 * idle_in_transaction_session_timeout, in a transaction, never open on a pooled backend), so
 * the next sync is soon enough for them. */
bool params_acts_while_idle(const char *name);

/* Mark each of them unknown in `server` (added when absent): the client's statements on it
 * were not followed (session mode), so it may have SET one, and the lease's end then gives it
 * back (params_build_release). 0 or -ENOMEM. */
int params_forget_acts_while_idle(struct param_set *server) __attribute__((warn_unused_result));

/* Append to sql the resets (each a Query of its own, as params_build_sync's) that give `server`
 * back its own value of each parameter that acts while idle where the record says a client may
 * have set one (any value of it in `server`, unknown included), and drop those names from the
 * record: the server holds its reset value, the one it logged in with. Where that value is a
 * client's (`startup`: the server was opened with its login parameters, session mode), it is
 * set to 0 instead, and recorded so. Run when a lease ends. Returns the count, or -ENOMEM. */
int params_build_release(const struct param_set *startup, struct param_set *server,
                         struct msg_out *sql) __attribute__((warn_unused_result));

/* The client's idle_session_timeout in `own` (its login value or what its SETs left), in
 * milliseconds, read as Postgres reads the value (an integer or a fraction, a unit among us,
 * ms, s, min, h, d; milliseconds without one): 0 when unset, off or not readable. */
int64_t params_idle_session_timeout_ms(const struct param_set *own);

/* Append to sql the statement that gives `server` the client's login values (`login`: those of
 * the names a request may have reset) where the backend holds its own reset value (a value SET
 * after the reset stays), session-wide or, `local`, for the transaction: one Query. Unreported
 * names become unknown in `server` (the backend reports the others). Returns the count (0 or 1),
 * or -ENOMEM. */
int params_build_restore(const struct param_set *login, bool local, struct param_set *server,
                         struct msg_out *sql) __attribute__((warn_unused_result));

/* One set_config of name to value, as params_build_sync writes it, whatever a server has: a
 * login's value Postgres must be seen to take or refuse though a later one replaces it. A valid
 * seed writes nothing: Postgres seeds nothing from a login's. */
void params_build_set(const char *name, const char *value, struct msg_out *sql);

/* Append to sql the statement that reads the backend's values of `names` (values unused): one
 * row per name (name; value, NULL when unknown or longer than max_value bytes; at its reset value
 * 't'/'f'; too long 't'/'f'), one Query. Returns the count (0 or 1), or -ENOMEM. login_reset.c
 * sends it after a client's SET of unreported names. */
int params_build_readback(const struct param_set *names, uint32_t max_value, struct msg_out *sql)
    __attribute__((warn_unused_result));

/* A GUC name safe to put into SQL unquoted: letters, digits, '_', '.', '-' ('-' only as
 * spelled in options, where it means '_'). */
bool params_valid_name(const char *s, size_t len);

/* A fingerprint of the session a client wants (base filled in by own), or that a server has
 * (base NULL, own = the server's set): equal fingerprints mean params_build_sync would produce
 * nothing, so the common case costs one comparison instead of string compares. */
uint64_t params_fingerprint(const struct param_set *base, const struct param_set *own);

/* After the SETs of params_build_sync were sent: record in `server` the values of names the
 * server does not report (it will report the others itself). */
int params_note_sync(struct param_set *server, const struct param_set *want)
    __attribute__((warn_unused_result));

/* May a login with these parameters skip asking a server whether it accepts them? Yes when each
 * is application_name (any value is accepted; one Postgres keeps as sent: printable ASCII, under
 * 64 bytes), or has the value in `base` (the pool's login values) or in `accepted` (values a
 * server accepted for an earlier login of the pool). */
/* How many bytes of v Postgres keeps of a name (GUC_IS_NAME: application_name) in a database
 * whose encoding is server_encoding (NULL: UTF8): pg_mbcliplen(v, len, 63), whole characters
 * in UTF8, 63 bytes in a single-byte encoding (other multibyte database encodings, EUC_* and
 * MULE_INTERNAL, are cut as bytes). Its check hook cleans what is kept, after the cut. */
size_t params_name_kept_len(const char *v, const char *server_encoding);

/* role, session_authorization: who the session runs as. No sync can put it back once a client
 * changed it (a full reset must), and whether a login may use a value depends on grants that
 * change at any time (REVOKE), so no earlier login vouches for it. */
bool params_is_identity(const char *name);
bool params_known_good(const struct param_set *own, const struct param_set *base,
                       const struct param_set *accepted);
/* A server accepted `own` at a login: remember the values, for at most max names. */
int params_note_accepted(struct param_set *accepted, const struct param_set *own, int max)
    __attribute__((warn_unused_result));

/* After a server applied `own` (a login's sync): take for each reported name the server's own
 * spelling of the value (DateStyle German is "German, DMY", client_encoding latin1 "LATIN1").
 * Postgres reports that spelling; no ParameterStatus comes for a value the server already had.
 * 0 or -ENOMEM. */
int params_take_reported_spelling(struct param_set *own, const struct param_set *server)
    __attribute__((warn_unused_result));

/* The startup parameters a backend is opened with (session mode: a client's own, so that
 * Postgres's reset values are that client's login values). Order does not matter, names compare
 * case-insensitively; an empty set (the pool's own parameters) is 0, and no other set is. */
uint64_t params_startup_fingerprint(const struct param_set *startup);
/* Does `startup` hold a setting Postgres takes only at connection start (PGC_BACKEND and
 * PGC_SU_BACKEND: ignore_system_indexes, post_auth_delay, log_connections, ...)? A backend
 * refuses it by SET or set_config (55P02), so only a backend opened with it has it: the one
 * answer to "does this client need servers opened with its own startup parameters in every
 * pool mode" (client_login.c). */
bool params_hold_start_only(const struct param_set *startup);
/* Append to out (NUL-terminated) a startup "options" value holding -c name=value for each of
 * `startup`'s names but application_name and client_encoding (libpq keywords of their own),
 * after `before` (the database entry's own options, or NULL): a space or backslash in a value
 * is escaped with a backslash, as Postgres's pg_split_opts reads it. Returns the count of -c. */
int params_build_startup_options(const struct param_set *startup, const char *before,
                                 struct msg_out *out);
/* The bytes `startup` takes in a backend's startup packet as params_build_startup_options and
 * the keywords spell it (a -c word is longer than the client's own pair). Postgres takes at most
 * 10000 after the length word: a server opened with more would be refused (session mode). */
size_t params_startup_size(const struct param_set *startup);
/* What of those 10000 a client's parameters may take: the rest is for the user and database
 * names, the database entry's own options and what libpq adds. */
#define PARAMS_STARTUP_ROOM 8000
/* A startup parameter passed as a libpq keyword of its own rather than in options:
 * application_name, and client_encoding unless its value is "auto", which libpq replaces with
 * the encoding of sluice's own locale where Postgres refuses it (22023). */
bool params_is_startup_keyword(const struct param *p);
/* set as "name=value, ..." for the log into buf (cut at its size): the values of the settings
 * drivers send that say nothing about anyone (application_name, client_encoding, DateStyle,
 * TimeZone, ...), the others' names only ("name=..."): a startup packet may carry a custom
 * setting or an option whose value is a secret. */
void params_describe_for_log(const struct param_set *set, char *buf, size_t size);
/* server holds a backend's parameters right after a reset that took every one back to its
 * reset value (DISCARD ALL, RESET ALL): for names Postgres does not report, those are the
 * startup values the backend was opened with; every other unreported name is at its default
 * (removed). Reported names are told by the backend itself. 0 or -ENOMEM. */
int params_reset_to_startup(struct param_set *server, const struct param_set *startup)
    __attribute__((warn_unused_result));
/* Does a backend opened with `startup` report, at login and after a reset, the same values as
 * one opened with the pool's own parameters (none of the names but application_name is
 * reported)? Only such a backend's login teaches the pool its welcome. */
bool params_startup_keeps_reports(const struct param_set *startup);


#endif
