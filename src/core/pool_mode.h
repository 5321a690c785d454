/* pool_mode: session / transaction / statement, as a small table of when a server goes back
 * to the pool and what is run on it first. */
#ifndef SLUICE_POOL_MODE_H
#define SLUICE_POOL_MODE_H

#include <stdbool.h>

#include "config.h"

struct pool_mode_ops {
    /* The server goes back when the client's transaction has ended (ReadyForQuery 'I'). */
    bool release_at_idle;
    /* A transaction block is an error (statement mode). */
    bool forbid_transaction;
    /* Run server_reset_query before the next client gets the server. */
    bool reset_on_release;
};

const struct pool_mode_ops *pool_mode_ops(enum pool_mode m, bool reset_query_always);

#endif
