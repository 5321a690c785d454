/* admin: the admin console — a virtual database ("sluice", or "pgbouncer" so existing tools
 * work) that answers SHOW commands and PAUSE/RESUME/RELOAD/... over the simple query protocol.
 * Clients of it never get a server: their messages are answered here. */
#ifndef SLUICE_ADMIN_H
#define SLUICE_ADMIN_H

#include <stdbool.h>
#include <stdint.h>

struct client;
struct sluice;

/* Is this database name the admin console? */
bool admin_is_console_db(const char *database);
/* After AuthenticationOk: ParameterStatus, BackendKeyData and ReadyForQuery for a console
 * session (appended to c->out; the caller sends). */
void admin_send_welcome(struct client *c);
/* An idle console client has at least a message header buffered in c->in (unframed region):
 * frame whole messages, answer Query ('Q'), close on Terminate ('X'), refuse anything else with
 * an ERROR + ReadyForQuery. Consumes what it handles and sends the replies. */
void admin_on_data(struct client *c);
/* Background timer: answer console commands that wait (PAUSE until the paused pools have no
 * active server, WAIT_CLOSE until the servers marked for closing are gone). */
void admin_tick(struct sluice *app, uint64_t now);
/* A CancelRequest for a console client: a PAUSE or WAIT_CLOSE still waiting is answered with
 * ERROR 57014 (the pause itself stays; RESUME ends it). Nothing else runs long enough. */
void admin_cancel(struct client *c);
/* Has DISABLE (and no ENABLE since) closed this database to new logins? */
bool admin_db_disabled(const struct sluice *app, const char *database);
/* Shutdown: drop what still waits. */
void admin_free(struct sluice *app);

#endif
