/* pool_wait: what a client waiting for a server is told (pool_wait.c); pool.c's tick calls it. */
#ifndef SLUICE_POOL_WAIT_H
#define SLUICE_POOL_WAIT_H

#include <stdint.h>

#include "pool.h"

/* How long a client may wait for a server (0: no limit): query_wait_timeout, or the shorter
 * server_down_wait while the breaker says the database is down. */
uint64_t pool_wait_limit(const struct pool *p);
/* query_wait_notify: each logged-in client queued this long gets one NOTICE per wait. */
void pool_notify_long_waits(struct pool *p, uint64_t now);
/* c, of p, waited waited_ms and its time is up: it is told why (paused 57000, database down
 * 57P03, a full pool or cap 53300), by pool_events->waiter_timed_out. */
void pool_fail_waiter(struct pool *p, struct client *c, uint64_t waited_ms);

#endif
