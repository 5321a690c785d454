/* console: how the core serves a database that is not Postgres (the admin console). The core
 * knows only this table of callbacks: a service registers one at start-up (proc->console) and the
 * core calls it for that database's clients — is a name the console, the welcome after
 * AuthenticationOk, an idle client's messages, a CancelRequest — never the service's own
 * functions. With none registered no database name is a console. A console client is a client
 * like any other to the core (it logs in, has a pool of no servers, sits on its IDLE list); only
 * what it says is answered by the service. */
#ifndef SLUICE_CONSOLE_H
#define SLUICE_CONSOLE_H

#include <stdbool.h>
#include <stddef.h>

#include "client.h"
#include "sluice.h"

struct console_ops {
    /* Is this database name the console's? (database may be NULL: no.) */
    bool (*is_console_db)(const char *database);
    /* After AuthenticationOk: append ParameterStatus..., BackendKeyData and ReadyForQuery to
     * c->out (the caller sends). */
    void (*welcome)(struct client *c);
    /* An IDLE console client has at least a message header in c->in: answer what is whole,
     * consume it, send the replies (it may close c). */
    void (*on_data)(struct client *c);
    /* A CancelRequest with this console client's key. */
    void (*cancel)(struct client *c);
};

static inline bool console_is_db(const struct worker *worker, const char *database)
{
    return worker->proc->console != NULL && worker->proc->console->is_console_db(database);
}

static inline void console_welcome(struct client *c)
{
    c->worker->proc->console->welcome(c);
}

static inline void console_on_data(struct client *c)
{
    c->worker->proc->console->on_data(c);
}

static inline void console_cancel(struct client *c)
{
    c->worker->proc->console->cancel(c);
}

#endif
