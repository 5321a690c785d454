/* sockio: one non-blocking socket, plain or TLS, watched by one uv_poll_t. Reads into and writes
 * from memory the caller owns; keeps the poll interest mask and touches epoll only when it
 * changes. Used for both sides: clients (accepted sockets) and servers (libpq's socket after
 * login, through libpq's SSL object when TLS is on). */
#ifndef SLUICE_SOCKIO_H
#define SLUICE_SOCKIO_H

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stddef.h>
#include <sys/types.h>
#include <uv.h>

struct sockio;
typedef void (*sockio_cb)(struct sockio *io, int status, int events);

struct sockio {
    uv_poll_t *poll; /* separately allocated: closing it never waits on the owner */
    int fd;
    int events;      /* the interest currently registered with the loop */
    SSL *ssl;        /* NULL: plain */
    void *owner;
    sockio_cb cb;
};

/* Start watching fd (no events yet). The fd must be non-blocking already (accept4 and socket with
 * SOCK_NONBLOCK; libpq's sockets are): a reused poll handle does not set it again. 0 or a
 * negative UV_E* code. */
int sockio_open(struct sockio *io, uv_loop_t *loop, int fd, void *owner, sockio_cb cb)
    __attribute__((warn_unused_result));
/* Stop watching; the fd is left to the caller. The poll handle is kept for the next socket that
 * gets the same descriptor number (see sockio.c). A handle stopped already (no events wanted)
 * goes without touching the number, which may have been closed (sockio_lend). Idempotent. */
void sockio_detach(struct sockio *io);
/* Stop watching an fd that goes on to another thread's loop: the poll handle is closed, not
 * kept, since this thread will not see that descriptor number again until that thread closes
 * it (a kept handle would touch the number at exit, racing the other thread's use). */
void sockio_hand_off(struct sockio *io);
/* Before a call into a library that owns the socket and may close it inside the call (libpq:
 * PQconnectPoll, PQconsumeInput, PQflush), or close it and open another: stop watching now,
 * while the number is still this socket's. Once the library has closed it, the kernel may give
 * the number to another thread's socket at once, and no later call here may touch it (not even
 * to take it off this loop's epoll set). Then sockio_take_back; sockio_want re-arms. */
void sockio_lend(struct sockio *io);
/* After the call of a sockio_lend: fd is the library's socket now (-1: none). The same number is
 * this thread's socket still (maybe a new one the kernel gave the old number: the stopped
 * handle registers it afresh when re-armed). Another number or none: the handle goes without
 * touching the old number, and fd, if any, is watched by a handle of its own (no events yet),
 * with the same owner and callback. 0 or a negative UV_E* code (io then watches nothing). */
int sockio_take_back(struct sockio *io, uv_loop_t *loop, int fd)
    __attribute__((warn_unused_result));
/* Close the calling thread's kept poll handles (the table is per thread, like its loop); at
 * exit, after the loop has stopped and before a last run of it (their close callbacks) and
 * uv_loop_close. */
void sockio_release_spares(void);
/* Set the interest (UV_READABLE | UV_WRITABLE | UV_DISCONNECT). */
void sockio_want(struct sockio *io, int events);
/* Shut the socket's write side (TCP FIN, also under TLS: the peer reads end-of-file). */
void sockio_shut_write(struct sockio *io);

/* > 0 bytes read; 0 at end of stream; SOCKIO_AGAIN when nothing is ready; other negatives are
 * errors (-errno). With TLS, a read may need the socket writable: it then returns SOCKIO_AGAIN
 * and sets *want_write. */
#define SOCKIO_AGAIN (-11)
ssize_t sockio_read(struct sockio *io, void *buf, size_t len);
/* Read what io has into b's free room, taking a block for b first (buf.h). As sockio_read, and
 * SOCKIO_AGAIN also when b has no room; SOCKIO_NO_BLOCK when no block could be had. */
#define SOCKIO_NO_BLOCK (-5000) /* no errno is this large */
struct buf;
ssize_t sockio_read_into(struct sockio *io, struct buf *b);
/* >= 0 bytes written (possibly fewer than len); negative errno on a broken connection. */
ssize_t sockio_write(struct sockio *io, const void *buf, size_t len);
/* Bytes TLS has decrypted and buffered: readable without the socket becoming readable. */
int sockio_pending(const struct sockio *io);
/* Words for a failed poll (status < 0). libuv reports a socket error (an RST, say) as UV_EBADF;
 * the socket's own SO_ERROR says what really happened. */
const char *sockio_poll_error(const struct sockio *io, int status);

#endif
