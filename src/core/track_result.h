/* track_result: what following one client message in transaction mode (stmt_track.c, and the
 * session_state_policy session_effects.c applies) tells request_track.c's framing to do with it,
 * and how each of them fills the client's failure (request_track.h's struct client_failure).
 * Definitions only: request_track_frame acts on the result. */
#ifndef SLUICE_TRACK_RESULT_H
#define SLUICE_TRACK_RESULT_H

#include <stdio.h>

#include "request_track.h"

enum track_result {
    TRACK_PASS,     /* forward the message as it is */
    TRACK_WAIT,     /* need more of the message in the buffer first */
    TRACK_FLUSH,    /* sluice must send something first: flush the client's earlier bytes */
    TRACK_FAILED,   /* the client is to be failed (fail_session, fail_request_and_session) */
    TRACK_CONSUMED, /* sluice answered the message itself; it is gone from the buffer */
    TRACK_REPLACED, /* sluice put other bytes in its place in the buffer: frame them instead */
    TRACK_STARTED,  /* its start went to s->out renamed; the rest (c->rx.remain) follows */
};

/* The client is failed (CLIENT_FRAME_FAILED): what with goes back to the relay's caller, which
 * fails it once the relay has returned (the relay and its framing close nothing). */
static inline void fail_as(struct client_failure *fail, enum failure reason,
                           enum client_failure_ends ends, const char *detail)
{
    fail->reason = reason;
    fail->ends = ends;
    snprintf(fail->detail, sizeof(fail->detail), "%s", detail ? detail : "");
}

static inline void fail_session(struct client_failure *fail, enum failure reason,
                                const char *detail)
{
    fail_as(fail, reason, CLIENT_FAILURE_ENDS_SESSION, detail);
}

static inline void fail_request_and_session(struct client_failure *fail, enum failure reason,
                                            const char *detail)
{
    fail_as(fail, reason, CLIENT_FAILURE_ENDS_REQUEST_AND_SESSION, detail);
}

#endif
