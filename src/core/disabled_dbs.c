/* disabled_dbs: the databases closed to new logins (see disabled_dbs.h). A short list of names:
 * DISABLE is an operator's command, so a linear search is plenty. */
#include "disabled_dbs.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "sluice.h"

struct disabled_db {
    struct list_node node;
    char name[]; /* NUL-terminated */
};

void disabled_dbs_init(struct disabled_dbs *d)
{
    pthread_mutex_init(&d->mu, NULL);
    list_init(&d->names);
}

/* Under d->mu. */
static struct disabled_db *find(struct disabled_dbs *d, const char *database)
{
    struct list_node *n, *tmp;
    list_for_each(&d->names, n, tmp)
    {
        struct disabled_db *db = container_of(n, struct disabled_db, node);
        if (strcmp(db->name, database) == 0)
            return db;
    }
    return NULL;
}

bool disabled_dbs_contains(struct process *proc, const char *database)
{
    struct disabled_dbs *d = &proc->disabled_dbs;
    pthread_mutex_lock(&d->mu);
    bool found = find(d, database) != NULL;
    pthread_mutex_unlock(&d->mu);
    return found;
}

int disabled_dbs_add(struct process *proc, const char *database)
{
    struct disabled_dbs *d = &proc->disabled_dbs;
    size_t len = strlen(database) + 1;
    struct disabled_db *fresh = calloc(1, sizeof(*fresh) + len); /* outside the lock */
    if (!fresh)
        return -ENOMEM;
    memcpy(fresh->name, database, len);
    pthread_mutex_lock(&d->mu);
    if (!find(d, database)) {
        list_append(&d->names, &fresh->node);
        fresh = NULL;
    }
    pthread_mutex_unlock(&d->mu);
    free(fresh); /* already there */
    return 0;
}

void disabled_dbs_remove(struct process *proc, const char *database)
{
    struct disabled_dbs *d = &proc->disabled_dbs;
    pthread_mutex_lock(&d->mu);
    struct disabled_db *db = find(d, database);
    if (db)
        list_remove(&d->names, &db->node);
    pthread_mutex_unlock(&d->mu);
    free(db);
}

void disabled_dbs_free(struct process *proc)
{
    struct disabled_dbs *d = &proc->disabled_dbs;
    struct list_node *n, *tmp;
    list_for_each(&d->names, n, tmp)
    {
        list_remove(&d->names, n);
        free(container_of(n, struct disabled_db, node));
    }
    pthread_mutex_destroy(&d->mu);
}
