/* pool_room: a server of one pool given up for a waiter elsewhere (pool_room.c). Internal to
 * the pool: pool.c asks when a connect finds a cap full, when a server comes back free and on
 * its tick; each answer closes or offers the server itself (pool_events) and says whether it
 * did. Whose room it is: a waiter of the same pool wanting other startup parameters, another
 * pool's waiter under a shared cap, another worker's older waiter, or nobody's (a cap a reload
 * lowered). pool_evict_idle, also auth_query's, stays in pool.h. */
#ifndef SLUICE_POOL_ROOM_H
#define SLUICE_POOL_ROOM_H

#include <stdbool.h>

#include "budget.h"
#include "pool.h"

/* A cap is full and c (NULL: no waiter) wants a server opened with its startup parameters:
 * close p's longest-idle server opened with other ones for it. false: none. With workers, that
 * server goes first to another worker's waiter older than c by more than the slack (moved, or
 * closed for its slot); true then too, c still waiting. */
bool pool_close_idle_unwanted(struct pool *p, const struct client *c);
/* The cap k is full: close the longest-idle server of another pool of this worker in its
 * scope, room_for p (pool_evict_idle); first offered, as above, to another worker's waiter
 * older than p's first. false: none was idle. */
bool pool_evict_idle_elsewhere(struct pool *p, enum limit_kind k);
/* s came back free above a cap a reload lowered: closed (true), or false. */
bool pool_close_if_over_limit(struct server *s);
/* The pool of this worker whose first waiter waited longer than p's and that only a shared
 * cap holds back, to close a free server of p for; NULL: p keeps it. */
struct pool *pool_longer_waiter_elsewhere(struct pool *p);
/* s is free with c waiting in its pool (NULL: none fits it): offered to another worker whose
 * waiter of the key is older (true: s left, or is closing, for it; the caller then registers
 * its own waiters' need). Workers > 1 only; false otherwise. */
bool pool_pass_to_older_elsewhere(struct server *s, const struct client *c);

#endif
