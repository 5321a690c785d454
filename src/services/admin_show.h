/* admin_show: the result sets of the console's SHOW commands, built from the live pools,
 * clients, servers, budgets, counters and config. Column names and order are PgBouncer's where
 * the meaning is the same, sluice's own columns after them. */
#ifndef SLUICE_ADMIN_SHOW_H
#define SLUICE_ADMIN_SHOW_H

#include "admin_command.h"
#include "admin_table.h"

struct client;

/* Append RowDescription and DataRows (SHOW HELP: a NoticeResponse) to c->out; the caller adds
 * CommandComplete and ReadyForQuery, at once when this returns 0; otherwise that many other
 * workers were asked for their rows (SHOW CLIENTS, SERVERS, SOCKETS: admin_table.h), and
 * arrived appends each one's, after which the caller completes the answer. */
int admin_show(struct client *c, enum admin_show what, admin_rows_fn *arrived);
/* Does it read the other workers' pools from their published frames (POOLS, STATS*, DATABASES,
 * USERS, LISTS, MEM: view.h)? The console then has every worker publish first
 * (view_publish_now). */
bool admin_show_reads_frames(enum admin_show what);

#endif
