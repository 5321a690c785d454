/* report: the /health JSON document and the /metrics Prometheus text, from the live pools and
 * their counters. No I/O: http.c sends what these build. */
#ifndef SLUICE_REPORT_H
#define SLUICE_REPORT_H

#include <stdbool.h>
#include <stddef.h>

struct worker;

/* GET /health: the JSON body (the caller frees it) and the status, 200 when sluice can serve,
 * 503 when a pool cannot reach its database or sluice is shutting down. false: out of memory. */
bool report_health(struct worker *worker, char **body, size_t *len, int *status);
/* GET /metrics: text exposition format 0.0.4 (the caller frees it). false: out of memory. */
bool report_metrics(struct worker *worker, char **body, size_t *len);

#endif
