/* http: the optional HTTP listener (http_listen_addr:http_listen_port) with GET /health (JSON:
 * per-pool and total servers, clients, usage, waits, plain-language warnings; 503 when a
 * database cannot be reached) and GET /metrics (Prometheus text format 0.0.4). Not the hot
 * path: a libuv TCP server, one short request per connection, answered from the live pools. */
#ifndef SLUICE_HTTP_H
#define SLUICE_HTTP_H

#include "sluice.h"

#define HTTP_MAX_CONNECTIONS 64   /* more concurrent connections are closed at once */
#define HTTP_READ_TIMEOUT_MS 5000 /* the whole request head must arrive within this */

/* start: listen when http_listen_port > 0 (else nothing; a failure to listen is logged and
 * stops start-up); stop: stop listening and close every HTTP connection (shutdown); free: once
 * the loop has ended. */
extern const struct sluice_service http_service;

#endif
