/* admin_show: the result sets of the console's SHOW commands, built from the live pools,
 * clients, servers, budgets, counters and config. Column names and order are PgBouncer's where
 * the meaning is the same, sluice's own columns after them. */
#ifndef SLUICE_ADMIN_SHOW_H
#define SLUICE_ADMIN_SHOW_H

#include "admin_command.h"

struct client;

/* Append RowDescription and DataRows (SHOW HELP: a NoticeResponse) to c->out; the caller adds
 * CommandComplete and ReadyForQuery. */
void admin_show(struct client *c, enum admin_show what);

#endif
