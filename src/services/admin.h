/* admin: the admin console — a virtual database ("sluice", or "pgbouncer" so existing tools
 * work) that answers SHOW commands and PAUSE/RESUME/RELOAD/... over the simple query protocol.
 * Clients of it never get a server: their messages are answered here. The core reaches the
 * console only through the callbacks it registers at start (console.h); it reads state through
 * the stats/view headers and changes it through control.h and disabled_dbs.h. */
#ifndef SLUICE_ADMIN_H
#define SLUICE_ADMIN_H

#include "sluice.h"

/* Registers the console (proc->console) at start; its tick answers the commands that wait
 * (PAUSE until the paused pools have no active server, WAIT_CLOSE until the servers marked for
 * closing are gone, output backlogs). */
extern const struct sluice_service admin_service;

#endif
