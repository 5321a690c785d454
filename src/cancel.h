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
/* A CancelRequest arrived on its own connection. */
void cancel_request(struct sluice *app, uint32_t pid, uint32_t key);

#endif
