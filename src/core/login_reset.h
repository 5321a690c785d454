/* login_reset: a client's reset of the parameters it set at login (RESET name, RESET ALL,
 * DISCARD ALL, SET [LOCAL] name TO DEFAULT, set_config(name, NULL, ...)). Postgres's reset value
 * of such a parameter is the client's login value; a pooled backend's is its own. So after the
 * request that may have reset one is answered, sluice gives the backend the login value again
 * where the backend holds its reset value (pg_settings.source is not 'session': a later SET in
 * the same request stays), in the client's transaction (a ROLLBACK undoes both, as it undoes the
 * reset in Postgres), and tells the client the ParameterStatus messages Postgres would have sent,
 * in its order, before that request's ReadyForQuery. The restore is conditional, so a request
 * that only may reset (a text too long to look at, a set_config whose value may be NULL) costs a
 * round trip and nothing else.
 *
 * The same hold serves a client's SET of a parameter Postgres does not report (search_path,
 * statement_timeout, a custom app.x, ...): at the ReadyForQuery 'I' that ends the request (or
 * the transaction block it ran in), sluice reads the names' values back (current_setting) into
 * c->params and s->params before the client gets that ReadyForQuery, and the link's sync gives
 * them to the next server the client gets (docs/pool-modes.md). One hold, one place: a request
 * that both resets a login parameter and SETs one runs the restore, then the read, then the
 * client is answered.
 *
 * Per request: the request that may reset is tracked from its first message to its ReadyForQuery
 * (earlier requests pipelined ahead of it are answered as they are); the client's next requests
 * wait until the restore is done, so they see the login values as they would on Postgres.
 * Statements after the reset inside the same Query or extended batch (up to its Sync) see the
 * backend's value (docs/pool-modes.md). */
#ifndef SLUICE_LOGIN_RESET_H
#define SLUICE_LOGIN_RESET_H

#include <stdbool.h>
#include <stdint.h>

#include "params.h"
#include "session_state.h"

enum login_reset_state {
    LOGIN_RESET_NONE,
    LOGIN_RESET_IN_REQUEST,     /* the request being sent (a Query; an extended batch up to its
                                   Sync) may reset a login parameter; or the last one did in a
                                   transaction that failed: the next request settles it */
    LOGIN_RESET_AWAITING_REPLY, /* that request is sent: the client's next requests wait; the
                                   server's reports for it are held back */
    LOGIN_RESET_RESTORING,      /* its ReadyForQuery came and is held: sluice's queries run,
                                   giving back the login values (restore), then reading the
                                   values of the parameters it SET (readback) */
};

/* The unreported parameters the client's requests SET, to read back at the ReadyForQuery 'I'
 * that ends them. */
enum set_readback_state {
    SET_READBACK_NONE,
    SET_READBACK_PENDING, /* names[] (or every name, `all`) wait for the transaction's end */
    SET_READBACK_READING, /* sluice's SELECT of their values runs: its rows are taken */
    SET_READBACK_RETRY_DUE,     /* that SELECT failed (a cancel meant for the client's request,
                                   which had completed, landed on it): at its ReadyForQuery it
                                   runs once more */
    SET_READBACK_READING_AGAIN, /* the second SELECT runs; should it fail too, the values that
                                   request SET are not carried (logged) */
};

/* At most this many parameters Postgres does not report are followed per client (its SETs
 * beyond them meet session_state_policy, as before sluice followed any): each one a lease
 * may have to give the next server costs a statement there. */
#define SET_TRACKED_MAX 64

/* A Query or Parse longer than the buffer streams through: its bytes are looked at as they pass,
 * for a word a reset needs (RESET, DEFAULT, DISCARD, set_config); one such word makes the request
 * a reset (a false alarm costs a round trip, nothing else). */
enum login_reset_watch {
    LOGIN_RESET_WATCH_NONE,
    LOGIN_RESET_WATCH_QUERY, /* the client's message now streaming is such a Query (already
                                counted as a request sent) */
    LOGIN_RESET_WATCH_PARSE, /* ... such a Parse (its request ends at a Sync to come) */
};
#define LOGIN_RESET_CARRY 9 /* the longest word less one: a word split across two reads */

/* Transaction mode: the same streaming text is looked at for what its start (which the
 * inspector saw) does not show and would outlive the transaction: a statement that begins with
 * SET, DO, LISTEN, PREPARE or DECLARE (after a ';' or a comment), a set_config or a session
 * advisory lock function anywhere, TEMP or TEMPORARY after CREATE, INTO, LOCAL, GLOBAL or
 * REPLACE, the pg_temp schema (or a U&"..." name, whose escapes may spell it), and pg_settings
 * after UPDATE, ONLY or PG_CATALOG (its rule runs set_config). sluice cannot read or follow it, and
 * another client must never get it: the server gets a full reset before it serves again (a word
 * inside a literal is a false alarm: it costs that reset, nothing else). A statement that begins
 * with LOAD leaves a library no reset unloads: the server is closed when released instead. */
enum set_watch {
    SET_WATCH_NONE,
    SET_WATCH_ON,              /* watching; word[] holds the identifier now passing */
    SET_WATCH_IN_LINE_COMMENT, /* inside a -- comment: nothing counts up to its newline */
};
/* "pg_try_advisory_lock_shared" and its NUL: a longer word is none of them */
#define SET_WATCH_WORD 28

struct login_reset {
    enum login_reset_state state;
    enum login_reset_watch watch;
    enum set_watch set_watch;
    uint8_t word_len;          /* SET_WATCH_ON: bytes of the identifier passing (up to the max) */
    char word[SET_WATCH_WORD]; /* its first bytes, lower case */
    char before_word;          /* the last byte before it that is not a space: ';', '/' (a
                                  comment's end), 'a' for any identifier, or another */
    bool temp_may_follow;      /* the word before was CREATE, INTO, LOCAL, GLOBAL or REPLACE */
    bool settings_may_follow;  /* the word before was UPDATE, ONLY or PG_CATALOG */
    char last_seen;            /* the last byte that passed that is not a space */
    char before_dash;          /* last_seen before a '-' (a "--" comment does not count) */
    unsigned char prev_byte;   /* the byte that passed last */
    uint8_t carry_len;
    char carry[LOGIN_RESET_CARRY]; /* watching: the last bytes that passed */
    int ahead;     /* AWAITING_REPLY: ReadyForQuery of requests sent before it, still due */
    uint16_t held; /* reported names (bit: index in params_reported_name) the server reported
                      while held back, and not told the client yet */
    struct param_reset which; /* what the request may reset */
    struct param_reset last;  /* the reset noted last (a Parse's own, for login_reset_on_parse:
                                 a Bind of its statement resets that again, no more) */
    bool restoring;           /* RESTORING: the restore of login values runs (the read back
                                 may run alone) */
    enum set_readback_state readback;
    bool readback_all;      /* a RESET ALL, DISCARD ALL: every name the client or server has */
    struct param_set names; /* the names to read back (values unused) */
};

struct client;
struct server;

/* Does sluice follow c's resets of its login parameters on s? Not when s was opened with c's
 * startup parameters (session mode, server.h startup): Postgres's own reset values are then
 * c's login values, and Postgres does all of it itself. */
bool login_reset_follows(const struct server *s, const struct client *c);

/* The statement inspector found that the request being framed may reset r: followed when it
 * covers a parameter the client set at login. */
void login_reset_note(struct server *s, const struct client *c, const struct param_reset *r);
/* A text the inspector cannot see at all: it may reset anything. */
void login_reset_note_unseen(struct server *s, const struct client *c);
/* A Query or Parse longer than the buffer starts: `shown` is what is here of it (the rest comes
 * through login_reset_watch_chunk). */
void login_reset_watch_text(struct server *s, const struct client *c, uint8_t type,
                            const char *shown, size_t n);
/* The next bytes of the client's message streaming through; ends: the message is whole now. */
void login_reset_watch_chunk(struct server *s, const struct client *c, const uint8_t *chunk,
                             uint32_t n, bool ends);
/* The client's Query, Sync or FunctionCall that ends a request is being forwarded (before
 * s->inflight counts it). True when that request may reset: the client's next requests wait. */
bool login_reset_request_sent(struct server *s);
/* Do the client's next requests wait for a reset's reply and the restore after it? (Not while
 * the server is in COPY FROM STDIN: the request's own data must reach it.) The pump frames the
 * client's bytes again when this turns false while it frames the server's. */
bool login_reset_client_waits(const struct server *s);
/* A ParameterStatus of the server (a reported name) for the client: held back (recorded in
 * s->params by the caller, told the client later) rather than forwarded? */
bool login_reset_holds_report(struct server *s, const uint8_t *body, uint32_t len);
/* Will the client's ReadyForQuery now coming make login_reset write to the client (so what the
 * server sent before it must go out first)? */
bool login_reset_settles(const struct server *s);
/* The client's ReadyForQuery (status), already counted out of s->inflight. True when it is held
 * (the caller consumes it): the restore was queued and login_reset_on_restored answers the
 * client. Otherwise what the client is told comes before the ReadyForQuery in c->out. */
bool login_reset_on_ready(struct server *s, struct client *c, char status);
/* The ReadyForQuery of sluice's own queries came, none left: a restore's end is told the
 * client (reports, then its held ReadyForQuery with the server's status). */
void login_reset_on_internal_ready(struct server *s, struct client *c, char status);
/* An ErrorResponse (body, len) to sluice's own queries: true when it is the restore's, which
 * failed the client's transaction; it is then passed on to the client before its held
 * ReadyForQuery. */
bool login_reset_on_internal_error(struct server *s, struct client *c, const uint8_t *body,
                                   uint32_t len);
/* A new client got the server, or its client left: nothing of a former one is followed. */
void login_reset_clear(struct server *s);

/* May sluice follow the SET (touch: its names; whole text, not one that streams) the client c is
 * sending on s: named, and within SET_TRACKED_MAX for the client? Then session_state_policy has
 * nothing to say about it: login_reset_note_set notes it. */
bool login_reset_can_track(const struct server *s, const struct client *c,
                           const struct param_touch *touch);
/* Note the unreported parameters touch names (or, touch->all, every one) for the read back at
 * the end of the request's transaction. */
void login_reset_note_set(struct server *s, const struct client *c, const struct param_touch *t);
/* Is the server's DataRow now coming a row of the read back (login_reset_on_row takes it)? */
bool login_reset_reads_row(const struct server *s);
/* A row of the read back (body, len: the DataRow's body; NULL when too long to look at): the
 * name's value, now the client's and the server's. */
void login_reset_on_row(struct server *s, struct client *c, const uint8_t *body, uint32_t len);

/* Statements a client prepared whose text may reset a login parameter (names; "" the unnamed
 * one): a Bind of one, in any later request, is a reset again. Kept per client, in both modes. */
struct login_reset_statements;
/* How many resets the request being framed has noted so far: a Parse that raised it resets. */
int login_reset_count(const struct server *s);
/* The client's Parse (body, avail bytes of it here) passes; count_before: login_reset_count
 * before it was inspected. */
void login_reset_on_parse(struct client *c, const struct server *s, const uint8_t *body,
                          uint32_t avail, int count_before);
/* The client's Bind (body, avail bytes of it here) passes: one of a statement that resets is
 * noted as a reset of its own, the one its Parse noted (a transaction-local reset stays
 * transaction-local); one of a statement not known resets anything. */
void login_reset_on_bind(struct server *s, const struct client *c, const uint8_t *body,
                         uint32_t avail);
void login_reset_free_statements(struct client *c);

#endif
