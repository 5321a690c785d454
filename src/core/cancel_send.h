/* cancel_send: one CancelRequest to a postmaster, on the calling thread's libuv loop: a
 * non-blocking connect to the backend's address (TCP or unix socket), the 16 bytes, then a wait
 * for the postmaster to close the connection, all under one deadline. No thread, no TLS (the
 * postmaster reads a CancelRequest before any TLS or hba check; libpq sends it in the clear
 * too). Whom to cancel and why is cancel.c's. */
#ifndef SLUICE_CANCEL_SEND_H
#define SLUICE_CANCEL_SEND_H

#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

/* Where the backend's postmaster listens and the backend's BackendKeyData. */
struct cancel_target {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    uint32_t pid, key;
};

/* The outcome, once, with why (what failed or timed out, naming the address):
 * CONFIRMED: the postmaster closed the connection, so it has signalled the backend;
 * NOT_SENT: it ended (an error, the deadline, a shutdown) before the whole request was written:
 *   the postmaster will not act on it;
 * UNCONFIRMED: written, but it ended before the postmaster's close: the backend may still be
 *   signalled, at any time. */
enum cancel_outcome { CANCEL_CONFIRMED, CANCEL_NOT_SENT, CANCEL_UNCONFIRMED };
typedef void cancel_send_done_fn(void *arg, enum cancel_outcome outcome, const char *why);

/* Start sending; done(arg, ...) is called exactly once, later, from the loop (never from inside
 * this call). timeout_ms 0: no deadline of its own. 0, or a negative UV_E* and done is never
 * called. */
int cancel_send_start(uv_loop_t *loop, const struct cancel_target *t, uint64_t timeout_ms,
                      cancel_send_done_fn *done, void *arg) __attribute__((warn_unused_result));

/* A worker shutting down now: every send still in flight on this thread ends (done is called
 * before this returns, NOT_SENT or UNCONFIRMED) and closes its handles. */
void cancel_send_abort_all(void);

/* "host:port" or the unix socket's path, for log lines. */
void cancel_target_text(const struct cancel_target *t, char *out, size_t outlen);

#endif
