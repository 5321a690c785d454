/* conn_id: the ids of clients and servers (C-<id>, S-<id>), the only code that knows how one is
 * built and how it is written. An id is unique in the process: its worker's index in the top byte
 * and that worker's own counter below (docs/architecture.md 5.1), so KILL_CLIENT and the logs
 * route by it without asking anyone. As a number that reads 72057594037927943 on worker 1, so
 * logs, SHOW's ptr/link and KILL_CLIENT write it as "<worker>:<n>" ("1:7"), and worker 0's (all
 * of a one-worker process's) as plain "<n>", which is also its number: "7". The SHOW id column
 * stays the number (PgBouncer's integer column); cancel keys are not ids (cancel.c). */
#ifndef SLUICE_CONN_ID_H
#define SLUICE_CONN_ID_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "decimal.h"

#define CONN_ID_WORKER_SHIFT 56
#define CONN_ID_MAX_WORKER 255u
#define CONN_ID_COUNTER_MASK ((UINT64_C(1) << CONN_ID_WORKER_SHIFT) - 1)
/* "255:72057594037927935" and its NUL */
#define CONN_ID_TEXT_LEN 24

/* The id just below worker's first: its counter starts here. */
static inline uint64_t conn_id_base(unsigned worker)
{
    return (uint64_t)worker << CONN_ID_WORKER_SHIFT;
}

static inline unsigned conn_id_worker(uint64_t id)
{
    return (unsigned)(id >> CONN_ID_WORKER_SHIFT);
}

/* id as an operator reads it ("1:7", or "7" on worker 0); returns buf. */
static inline const char *conn_id_text(uint64_t id, char buf[CONN_ID_TEXT_LEN])
{
    unsigned worker = conn_id_worker(id);
    unsigned long long n = (unsigned long long)(id & CONN_ID_COUNTER_MASK);
    if (worker == 0)
        snprintf(buf, CONN_ID_TEXT_LEN, "%llu", n);
    else
        snprintf(buf, CONN_ID_TEXT_LEN, "%u:%llu", worker, n);
    return buf;
}

/* conn_id_text into a buffer that lives as long as the enclosing block: for a log call's
 * argument list. */
#define CONN_ID_TEXT(id) conn_id_text((id), (char[CONN_ID_TEXT_LEN]){0})

/* Either way of writing an id: conn_id_text's "<worker>:<n>" or the number (SHOW's id column).
 * false when s is neither. */
static inline bool conn_id_parse(const char *s, size_t len, uint64_t *id)
{
    const char *colon = memchr(s, ':', len);
    if (!colon)
        return decimal_parse(s, len, DECIMAL_MAX_DIGITS, id);
    uint64_t worker, n;
    size_t wlen = (size_t)(colon - s);
    if (!decimal_parse(s, wlen, DECIMAL_MAX_DIGITS, &worker) ||
        !decimal_parse(colon + 1, len - wlen - 1, DECIMAL_MAX_DIGITS, &n) ||
        worker > CONN_ID_MAX_WORKER || n > CONN_ID_COUNTER_MASK)
        return false;
    *id = conn_id_base((unsigned)worker) | n;
    return true;
}

#endif
