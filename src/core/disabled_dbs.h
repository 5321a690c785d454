/* disabled_dbs: the databases DISABLE has closed to new logins (PgBouncer's DISABLE/ENABLE).
 * The list lives in proc->disabled_dbs and is kept across RELOAD, as the database is (a reload
 * that removes the database forgets its name, as PgBouncer does: sluice.c); sessions
 * already open go on. client.c asks at login (after the password), on whichever worker's thread
 * the login runs; the console changes it through control.h. Its mutex makes each question and
 * change one step (taken once per login, never per query). A leaf: it knows only names. */
#ifndef SLUICE_DISABLED_DBS_H
#define SLUICE_DISABLED_DBS_H

#include <pthread.h>
#include <stdbool.h>

#include "list.h"

struct process;

struct disabled_dbs {
    pthread_mutex_t mu; /* guards names */
    struct list names;
};

/* Before any thread asks. */
void disabled_dbs_init(struct disabled_dbs *d);

/* Has DISABLE (and no ENABLE since) closed this database to new logins? */
bool disabled_dbs_contains(struct process *proc, const char *database);
/* 0, or -ENOMEM. Adding a name already there changes nothing. */
int disabled_dbs_add(struct process *proc, const char *database);
void disabled_dbs_remove(struct process *proc, const char *database);
/* Shutdown. */
void disabled_dbs_free(struct process *proc);

#endif
