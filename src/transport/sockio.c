/* sockio: non-blocking socket I/O for both sides (see sockio.h). */
#include "sockio.h"

#include "buf.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void on_poll_closed(uv_handle_t *h)
{
    free(h);
}

static void on_poll_event(uv_poll_t *p, int status, int events)
{
    struct sockio *io = p->data;
    /* libuv reports a failed socket (POLLERR: a reset) as a status and stops the handle: nothing
     * is registered any more, so that the next sockio_want starts it again. */
    if (status < 0)
        io->events = 0;
    io->cb(io, status, events);
}

/* Spare poll handles, by descriptor number. uv_poll_init costs three system calls per socket (an
 * epoll ADD and DEL to check that the descriptor can be polled, then FIONBIO), an eighth of what a
 * short-lived client connection costs sluice in system calls. The kernel hands out the lowest
 * free descriptor, so in a connection storm the same numbers come back again and again: a
 * detached handle is stopped (which removes the descriptor from epoll at once, as closing it
 * would) and kept under its number, and the next socket with that number starts it again. A
 * stopped handle is inactive: it neither keeps the loop running nor sees events. One table per
 * thread: a handle belongs to its loop, and a worker's loop runs on one thread, so a handle
 * parked by one worker is never started by another (the loop check in spare_take stays as a
 * guard for a thread that runs more than one loop). */
static _Thread_local uv_poll_t **spare_polls;
static _Thread_local int spare_polls_len;

static uv_poll_t *spare_take(uv_loop_t *loop, int fd)
{
    if (fd < 0 || fd >= spare_polls_len || !spare_polls[fd] || spare_polls[fd]->loop != loop)
        return NULL;
    uv_poll_t *p = spare_polls[fd];
    spare_polls[fd] = NULL;
    return p;
}

static bool spare_keep(uv_poll_t *p, int fd)
{
    if (fd < 0)
        return false;
    if (fd >= spare_polls_len) {
        int len = spare_polls_len ? spare_polls_len : 64;
        while (len <= fd)
            len *= 2;
        uv_poll_t **grown = realloc(spare_polls, (size_t)len * sizeof(*grown));
        if (!grown)
            return false;
        memset(grown + spare_polls_len, 0, (size_t)(len - spare_polls_len) * sizeof(*grown));
        spare_polls = grown;
        spare_polls_len = len;
    }
    if (spare_polls[fd])
        return false; /* cannot happen: a number is detached once before it is reused */
    if (uv_is_active((uv_handle_t *)p))
        uv_poll_stop(p); /* else stopped already: off epoll, and the number maybe not ours */
    spare_polls[fd] = p;
    return true;
}

/* Close a poll handle. An active one is watching its socket, still open and this thread's:
 * closing removes the number from this loop's epoll set, so the caller may close the socket
 * next. An inactive one was taken off the epoll set when it stopped, and its socket may be
 * closed by now (a parked spare's, one libpq closed after sockio_lend), its number another
 * thread's (a worker's socket, a PQcancel connection on the thread pool). Closing would
 * remove that number from this loop's epoll set again (uv__platform_invalidate_fd): no effect
 * on that socket (not in this set), yet a use of another thread's descriptor, which
 * ThreadSanitizer reports. So it is pointed at the loop's own epoll descriptor first, which only
 * this thread uses, and the close touches nobody else's. */
static void poll_close(uv_poll_t *p)
{
    if (!uv_is_active((uv_handle_t *)p))
        p->io_watcher.fd = uv_backend_fd(p->loop);
    uv_close((uv_handle_t *)p, on_poll_closed);
}

void sockio_release_spares(void)
{
    for (int fd = 0; fd < spare_polls_len; fd++) {
        uv_poll_t *p = spare_polls[fd];
        /* stopped, its socket closed when it was parked: the number may be another thread's
         * by now (test_workers_shutdown's SIGTERM during cancels) */
        if (p)
            poll_close(p);
    }
    free(spare_polls);
    spare_polls = NULL;
    spare_polls_len = 0;
}

int sockio_open(struct sockio *io, uv_loop_t *loop, int fd, void *owner, sockio_cb cb)
{
    io->poll = spare_take(loop, fd);
    if (!io->poll) {
        io->poll = malloc(sizeof(*io->poll));
        if (!io->poll)
            return UV_ENOMEM;
        int rc = uv_poll_init(loop, io->poll, fd);
        if (rc < 0) {
            free(io->poll);
            io->poll = NULL;
            return rc;
        }
    }
    io->poll->data = io;
    io->fd = fd;
    io->events = 0;
    io->owner = owner;
    io->cb = cb;
    return 0;
}

void sockio_detach(struct sockio *io)
{
    if (!io->poll)
        return;
    /* Stopping or closing removes the fd from epoll at once (uv__platform_invalidate_fd), and
     * drops its events still waiting in this loop iteration, so the caller may close the fd
     * right after this returns; a closed handle's memory waits for the callback. */
    io->poll->data = NULL;
    if (!spare_keep(io->poll, io->fd))
        poll_close(io->poll);
    io->poll = NULL;
    io->events = 0;
}

void sockio_lend(struct sockio *io)
{
    sockio_want(io, 0); /* off epoll now, while the number is still this socket's */
}

int sockio_take_back(struct sockio *io, uv_loop_t *loop, int fd)
{
    if (fd == io->fd && (io->poll || fd < 0))
        return 0; /* the same number: this thread's socket still (libpq's new one, maybe) */
    void *owner = io->owner;
    sockio_cb cb = io->cb;
    sockio_detach(io); /* stopped by sockio_lend: parked or closed without touching io->fd */
    io->fd = -1;
    return fd < 0 ? 0 : sockio_open(io, loop, fd, owner, cb);
}

void sockio_hand_off(struct sockio *io)
{
    if (!io->poll)
        return;
    io->poll->data = NULL;
    poll_close(io->poll); /* off this epoll at once, as detach */
    io->poll = NULL;
    io->events = 0;
}

void sockio_want(struct sockio *io, int events)
{
    if (!io->poll || events == io->events)
        return;
    io->events = events;
    if (events)
        uv_poll_start(io->poll, events, on_poll_event);
    else
        uv_poll_stop(io->poll);
}

static ssize_t ssl_result(struct sockio *io, int n)
{
    int err = SSL_get_error(io->ssl, n);
    switch (err) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        return SOCKIO_AGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        ERR_clear_error();
        return errno ? -errno : -ECONNRESET;
    default:
        ERR_clear_error();
        return -EPROTO;
    }
}

ssize_t sockio_read(struct sockio *io, void *buf, size_t len)
{
    if (io->ssl) {
        ERR_clear_error();
        int n = SSL_read(io->ssl, buf, (int)(len > 0x7fffffff ? 0x7fffffff : len));
        return n > 0 ? n : ssl_result(io, n);
    }
    for (;;) {
        ssize_t n = recv(io->fd, buf, len, 0);
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return SOCKIO_AGAIN;
        return -errno;
    }
}

ssize_t sockio_write(struct sockio *io, const void *buf, size_t len)
{
    if (len == 0)
        return 0;
    if (io->ssl) {
        ERR_clear_error();
        int n = SSL_write(io->ssl, buf, (int)(len > 0x7fffffff ? 0x7fffffff : len));
        if (n > 0)
            return n;
        ssize_t r = ssl_result(io, n);
        return r == SOCKIO_AGAIN ? 0 : (r == 0 ? -EPIPE : r);
    }
    for (;;) {
        ssize_t n = send(io->fd, buf, len, MSG_NOSIGNAL);
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        return -errno;
    }
}

int sockio_pending(const struct sockio *io)
{
    return io->ssl ? SSL_pending(io->ssl) : 0;
}

const char *sockio_poll_error(const struct sockio *io, int status)
{
    if (status == UV_EBADF && io->fd >= 0) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(io->fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0)
            return err ? strerror(err) : "connection reset";
    }
    return uv_strerror(status);
}

ssize_t sockio_read_into(struct sockio *io, struct buf *b)
{
    if (!buf_attach(b))
        return SOCKIO_NO_BLOCK;
    uint32_t room = buf_make_room(b);
    if (room == 0)
        return SOCKIO_AGAIN;
    ssize_t n = sockio_read(io, b->data + b->wpos, room);
    if (n > 0)
        b->wpos += (uint32_t)n;
    return n;
}

void sockio_shut_write(struct sockio *io)
{
    if (io->fd >= 0)
        (void)shutdown(io->fd, SHUT_WR);
}
