/* pool_breaker: the pool's circuit breaker, pool.c's side of it (the public part, the
 * failure reports and pool_is_down, is in pool.h). */
#ifndef SLUICE_POOL_BREAKER_H
#define SLUICE_POOL_BREAKER_H

#include <stdbool.h>
#include <stddef.h>

#include "pool.h"

/* The last attempt of p's key (any worker's) was refused for good by the server (28000, 3D000,
 * 42501): true, with its SQLSTATE and message, which a waiter gets as from Postgres. */
bool pool_down_refusal(const struct pool *p, char sqlstate[6], char *message, size_t len);
/* May a connection attempt start now? Not within the backoff, and after a failure only one at a
 * time. A probe that ended without a verdict leaves the breaker open. */
bool pool_may_try_connect(struct pool *p);
/* A reload changed p's connection settings (a corrected host or port): the failures were of
 * the old ones, so the next attempt starts now instead of after their backoff. */
void pool_breaker_settings_changed(struct pool *p);
/* Why a client that needs a server of a down pool fails: the database's reason and how long. */
void pool_describe_down(const struct pool *p, char *msg, size_t len);

#endif
