/* session_effects: what a statement does to the server's session beyond its transaction, in
 * transaction mode: SQL whose effect outlives it meets session_state_policy (pin, refuse or
 * warn), and what the server is then left with is noted for its reset (s->session, s->params).
 * stmt_track.c brings each statement text here before it follows the prepared statements. */
#ifndef SLUICE_SESSION_EFFECTS_H
#define SLUICE_SESSION_EFFECTS_H

#include <stddef.h>
#include <stdint.h>

#include "prepared.h"
#include "session_state.h"
#include "track_result.h"

struct client;
struct server;

/* SQL whose effect outlives the transaction (see session_state.h) in the statement text sql
 * (len bytes, of a message of this type whose body is body_len): the policy decides, but for a
 * SET of unreported parameters sluice follows (noted for login_reset.h's read back), and a server
 * that got such objects is noted for a reset. TRACK_PASS, TRACK_FLUSH, TRACK_FAILED (*fail is
 * filled), TRACK_CONSUMED (refused: sluice answered it) or TRACK_REPLACED (refused: the server
 * answers a failing statement put in its place, session_effects_refused_in_error). *touch: the
 * parameters it changes. */
enum track_result session_effects_police(struct client *c, struct server *s, uint8_t type,
                                         const char *sql, size_t len, uint32_t body_len,
                                         struct param_touch *touch, struct client_failure *fail);

/* The server's ErrorResponse msg (whole bytes here): the failure of the statement sluice sent in
 * place of a refused one? The feature refused, else SESSION_FEATURE_NONE. (A client that sends
 * that statement itself gets the refusal too.) */
enum session_feature session_effects_refused_in_error(const uint8_t *msg, uint32_t whole);

/* The client gets the refusal of f: ERROR 0A000 saying what to do instead. */
void session_effects_put_refusal(struct client *c, enum session_feature f);

/* The parameters a statement may change (touch) become unknown in the server's record; a change
 * sluice cannot name asks for a full reset. */
void session_effects_forget_params(struct server *s, const struct param_touch *touch);

/* c got s for a transaction (link_pair): a client whose search_path names pg_temp (set at login,
 * or a SET sluice follows and gives each server the client gets) makes a temporary object with a
 * plain CREATE: s gets DISCARD TEMP before it serves again. */
void session_effects_on_lease(const struct client *c, struct server *s);

/* How the client's SQL text sql (len bytes) reads (enum sql_reading, for session_state_detect):
 * its standard_conforming_strings and client_encoding as the client or else its server has
 * them; SQL_READ_STANDARD for a text without a backslash, which every reading splits alike. */
unsigned session_effects_reading(const struct client *c, const struct server *s, const char *sql,
                                 size_t len);

/* What running the statement text sql (len bytes) does past its transaction, for a named
 * statement to carry to each of its runs (session_effects_run_unread). */
enum stmt_effect session_effects_of_text(const char *sql, size_t len);

/* The server ran code whose text sluice did not read as it passed: a FunctionCall message, or
 * a named statement whose text (read at its Parse) outlives the transaction. Whatever it left
 * (a role, parameters, LISTEN, advisory locks, temporary tables) ends with a full reset before
 * the server serves again, as Postgres ends it with the session. */
void session_effects_run_unread(struct server *s);

/* A Bind or SQL EXECUTE of the client's named statement def, whose text (read at its Parse)
 * outlives the transaction, runs it again on s. A SET or RESET of unreported parameters sluice
 * can follow (psycopg prepares a set_config(name, %s, false) run often) is read back at the end
 * of its transaction as a Query's would be; anything else: session_effects_run_unread. */
void session_effects_run_statement(struct client *c, struct server *s,
                                   const struct stmt_def *def);

#endif
