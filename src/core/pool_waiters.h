/* pool_waiters: which waiting client of a pool may have a server now, and which server fits it
 * (pool_waiters.c). Internal to the pool: pool.c's dispatch, connect and release ask it; it
 * changes nothing (no server is opened, closed or handed out here).
 *
 * Eligible: the waiter's budget has room for one more lease. A budget spans pools, so its room
 * goes to its clients in the order they began to wait, whichever pool they are in. A server fits
 * a waiter only when it was opened with the startup parameters the waiter wants
 * (pool_startup_wanted, pool.h): in session mode its own; in other modes the pool's (every
 * server fits every waiter), but for a login holding a setting only a login gives. */
#ifndef SLUICE_POOL_WAITERS_H
#define SLUICE_POOL_WAITERS_H

#include <stdbool.h>
#include <stdint.h>

#include "pool.h"

/* When c began to wait, on the clock comparable across workers (ledger_now_ms; never 0). */
uint64_t pool_waiter_arrival(const struct client *c);
/* The same for the order of a budget's leases (ledger_lease_limit_since); 0 when no budget's
 * leases are checked. */
uint64_t pool_waiter_since(const struct client *c);
/* c left its pool's queue (served, or gone; client_set_state), or its pool was paused: its
 * worker's oldest waiter of c's budget held by a lease limit, as the ledger keeps it for the
 * other workers, is the next one (c and paused pools' waiters passed over) now. One load, no
 * lock, unless c's budget has such a waiter noted on c's worker. */
void pool_lease_waiter_gone(const struct client *c);
/* The first waiter of p, in FIFO order, that may have a server now, or NULL. */
struct client *pool_first_eligible(const struct pool *p);
/* How many waiters of p could use a new server: at most `enough`, and for each budget no more
 * than the servers it may still hold. */
int pool_count_eligible(const struct pool *p, int enough);
/* The eligible waiters in FIFO order (at most `enough`) that no server still logging in will
 * serve: each one connecting for a startup fingerprint goes to the first waiter that wants it.
 * Their count; *first: the first of them (NULL: none). */
int pool_count_unprovided(const struct pool *p, int enough, struct client **first);
/* Of those, the one after the first `skip` (the rooms being made go to the first ones), or
 * NULL: every eligible waiter has a server coming. */
struct client *pool_first_unprovided_after(const struct pool *p, int skip);
/* The first eligible waiter, FIFO, with an idle server opened with the startup parameters it
 * wants (*s), or NULL. */
struct client *pool_first_served_by_idle(const struct pool *p, struct server **s);
/* The first eligible waiter, FIFO, that wants a server opened as s was, or NULL. */
struct client *pool_first_fitting(const struct pool *p, const struct server *s);
/* Session mode, a cap full: is an eligible waiter ahead of c still without a server (none
 * logging in for it, no room being made for it, here or by another worker)? Then the caller
 * closes the server that fits c to make that room (pool.c's dispatch, pool_server_ready): with
 * workers, true has noted that close in the ledger's entry already (ledger_wait_room_here). */
bool pool_room_owed_to_older(struct pool *p, const struct client *c);

#endif
