/* http: the optional HTTP listener (http_listen_addr:http_listen_port) with GET /health (JSON:
 * per-pool and total servers, clients, usage, waits, plain-language warnings; 503 when a
 * database cannot be reached) and GET /metrics (Prometheus text format 0.0.4). Not the hot
 * path: a libuv TCP server, one short request per connection, answered from the live pools. */
#ifndef SLUICE_HTTP_H
#define SLUICE_HTTP_H

struct sluice;

#define HTTP_MAX_CONNECTIONS 64   /* more concurrent connections are closed at once */
#define HTTP_READ_TIMEOUT_MS 5000 /* the whole request head must arrive within this */

/* Start listening when http_listen_port > 0 (else nothing). 0 or a negative UV_E* (logged). */
int http_start(struct sluice *app) __attribute__((warn_unused_result));
/* Stop listening and close every HTTP connection (shutdown). */
void http_stop(struct sluice *app);
/* Once the loop has ended. */
void http_free(struct sluice *app);

#endif
