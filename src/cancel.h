/* cancel: the keys sluice hands clients in BackendKeyData, and CancelRequests that use them.
 * A cancel reaches the backend the client is linked to at that moment and no other: PQcancel runs
 * on a worker thread, and the server is kept out of the pool until it has finished. */
#ifndef SLUICE_CANCEL_H
#define SLUICE_CANCEL_H

#include <stdint.h>

struct sluice;
struct client;
struct server;

struct cancel_map *cancel_map_new(void);
void cancel_map_free(struct cancel_map *m);
/* Give the client a fresh (pid, key) and remember it. 0 or -ENOMEM. */
int cancel_register(struct cancel_map *m, struct client *c) __attribute__((warn_unused_result));
void cancel_unregister(struct cancel_map *m, struct client *c);
/* Send a cancel to the backend of s (CancelRequest, query_timeout). 0 or a negative errno. */
int cancel_server(struct sluice *app, struct server *s);
/* A CancelRequest arrived on requester's connection. The connection is closed once the request
 * is handled: at once, or when a cancel passed on to a backend has reached it (CANCEL_WAIT). */
void cancel_request(struct client *requester, uint32_t pid, uint32_t key);
/* A requester in CANCEL_WAIT is closing before its cancel is done: the job forgets it. */
void cancel_requester_gone(struct client *requester);

#endif
