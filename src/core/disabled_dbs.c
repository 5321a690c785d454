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

static struct disabled_db *find(const struct process *proc, const char *database)
{
    struct list_node *n, *tmp;
    list_for_each(&proc->disabled_dbs, n, tmp)
    {
        struct disabled_db *d = container_of(n, struct disabled_db, node);
        if (strcmp(d->name, database) == 0)
            return d;
    }
    return NULL;
}

bool disabled_dbs_contains(const struct process *proc, const char *database)
{
    return find(proc, database) != NULL;
}

int disabled_dbs_add(struct process *proc, const char *database)
{
    if (find(proc, database))
        return 0;
    size_t len = strlen(database) + 1;
    struct disabled_db *d = calloc(1, sizeof(*d) + len);
    if (!d)
        return -ENOMEM;
    memcpy(d->name, database, len);
    list_append(&proc->disabled_dbs, &d->node);
    return 0;
}

void disabled_dbs_remove(struct process *proc, const char *database)
{
    struct disabled_db *d = find(proc, database);
    if (d) {
        list_remove(&proc->disabled_dbs, &d->node);
        free(d);
    }
}

void disabled_dbs_free(struct process *proc)
{
    struct list_node *n, *tmp;
    list_for_each(&proc->disabled_dbs, n, tmp)
    {
        list_remove(&proc->disabled_dbs, n);
        free(container_of(n, struct disabled_db, node));
    }
}
