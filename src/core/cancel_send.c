/* cancel_send: one CancelRequest on the loop (see cancel_send.h).
 *
 *   CONNECTING ─writable, connected─► WRITING ─16 bytes out─► AWAITING_CLOSE ─EOF─► CONFIRMED
 *   any of them ─error, deadline or shutdown─► NOT_SENT before AWAITING_CLOSE, else UNCONFIRMED
 *
 * A raw non-blocking socket under one uv_poll_t, not a uv_tcp_t or uv_pipe_t: the same few lines
 * serve AF_INET, AF_INET6 and AF_UNIX from the sockaddr we already hold (uv_pipe_connect wants a
 * path and reports connect errors its own way), and the exchange is 16 bytes out and an EOF in,
 * with no read buffer to hand out. The deadline is its own uv_timer_t. Both handles live in the
 * struct, which is freed when the second one's close callback runs. The old way, PQcancel or a
 * blocking socket on libuv's thread pool, held one of its 4 threads per cancel for as long as the
 * kernel kept trying to connect (about 2 minutes for a host that drops SYNs), and SCRAM
 * derivations and DNS queued behind them. */
#include "cancel_send.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "list.h"

enum send_step { STEP_CONNECTING, STEP_WRITING, STEP_AWAITING_CLOSE, STEP_DONE };

struct cancel_send {
    uv_poll_t poll;
    uv_timer_t deadline;
    int open_handles;
    int fd;
    bool polling; /* poll initialised (after the socket exists) */
    enum send_step step;
    size_t written;
    uint8_t packet[16];
    struct cancel_target target;
    uint64_t timeout_ms;
    cancel_send_done_fn *done;
    void *arg;
    /* A failure found inside cancel_send_start, reported from the loop (done is never called
     * from inside the start); "" when none. */
    char why[256];
    struct list_node node; /* on this thread's in_flight, for the shutdown */
};

/* Each worker's loop runs on its own thread, so each thread's list is its loop's. */
static _Thread_local struct list in_flight;

static const char *step_name(enum send_step step)
{
    switch (step) {
    case STEP_CONNECTING:
        return "connecting";
    case STEP_WRITING:
        return "sending the request";
    case STEP_AWAITING_CLOSE:
        return "waiting for the postmaster to close the connection";
    case STEP_DONE:
        break;
    }
    return "done";
}

void cancel_target_text(const struct cancel_target *t, char *out, size_t outlen)
{
    char host[INET6_ADDRSTRLEN] = "?";
    switch (t->addr.ss_family) {
    case AF_INET: {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&t->addr;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        snprintf(out, outlen, "%s:%u", host, ntohs(a->sin_port));
        return;
    }
    case AF_INET6: {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&t->addr;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        snprintf(out, outlen, "[%s]:%u", host, ntohs(a->sin6_port));
        return;
    }
    case AF_UNIX: {
        const struct sockaddr_un *a = (const struct sockaddr_un *)&t->addr;
        size_t n = t->addrlen > offsetof(struct sockaddr_un, sun_path)
                       ? t->addrlen - offsetof(struct sockaddr_un, sun_path)
                       : 0;
        if (n > sizeof(a->sun_path))
            n = sizeof(a->sun_path);
        snprintf(out, outlen, "%.*s", (int)strnlen(a->sun_path, n), a->sun_path);
        return;
    }
    default:
        snprintf(out, outlen, "(address family %d)", t->addr.ss_family);
    }
}

static void on_handle_closed(uv_handle_t *h)
{
    struct cancel_send *cs = h->data;
    if (--cs->open_handles == 0) {
        OPENSSL_cleanse(cs, sizeof(*cs)); /* the backend's cancel key */
        free(cs);
    }
}

enum send_end { END_CLOSED_BY_POSTMASTER, END_FAILED };

/* The one end: report, then close the handles and the socket (the struct goes with the last
 * close callback; done may free whatever it likes, it no longer touches this). */
static void finish(struct cancel_send *cs, enum send_end end, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void finish(struct cancel_send *cs, enum send_end end, const char *fmt, ...)
{
    if (cs->step == STEP_DONE)
        return;
    enum cancel_outcome outcome = end == END_CLOSED_BY_POSTMASTER   ? CANCEL_CONFIRMED
                                  : cs->step == STEP_AWAITING_CLOSE ? CANCEL_UNCONFIRMED
                                                                    : CANCEL_NOT_SENT;
    char where[128];
    cancel_target_text(&cs->target, where, sizeof(where));
    char what[192] = "";
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(what, sizeof(what), fmt, ap);
        va_end(ap);
    }
    char why[400];
    snprintf(why, sizeof(why), "cancel to %s for backend pid %u: %s", where, cs->target.pid, what);
    cs->step = STEP_DONE;
    list_remove(list_ready(&in_flight), &cs->node);
    if (cs->polling) {
        uv_poll_stop(&cs->poll);
        uv_close((uv_handle_t *)&cs->poll, on_handle_closed);
    }
    uv_timer_stop(&cs->deadline);
    uv_close((uv_handle_t *)&cs->deadline, on_handle_closed);
    if (cs->fd >= 0) /* after uv_close of the poll: libuv's docs say close the fd after */
        close(cs->fd);
    cs->fd = -1;
    cs->done(cs->arg, outcome, why);
}

static void want(struct cancel_send *cs, int events);

/* What is left of the 16 bytes, without waiting: 0 when all are out (AWAITING_CLOSE now),
 * UV_EAGAIN when the socket is full, or a negative errno. */
static int write_request(struct cancel_send *cs)
{
    while (cs->written < sizeof(cs->packet)) {
        ssize_t n =
            send(cs->fd, cs->packet + cs->written, sizeof(cs->packet) - cs->written, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return UV_EAGAIN;
        if (n < 0)
            return -errno;
        cs->written += (size_t)n;
    }
    cs->step = STEP_AWAITING_CLOSE;
    return 0;
}

static void on_socket(uv_poll_t *h, int status, int events)
{
    struct cancel_send *cs = h->data;
    if (status < 0) {
        finish(cs, END_FAILED, "%s: %s", step_name(cs->step), uv_strerror(status));
        return;
    }
    if (cs->step == STEP_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(cs->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        if (err == EINPROGRESS || err == EALREADY)
            return;
        if (err != 0) {
            finish(cs, END_FAILED, "connecting: %s", strerror(err));
            return;
        }
        cs->step = STEP_WRITING;
    }
    if (cs->step == STEP_WRITING) {
        int rc = write_request(cs);
        if (rc == UV_EAGAIN)
            want(cs, UV_WRITABLE);
        else if (rc < 0)
            finish(cs, END_FAILED, "sending the request: %s", uv_strerror(rc));
        else
            want(cs, UV_READABLE | UV_DISCONNECT);
        return;
    }
    if (!(events & (UV_READABLE | UV_DISCONNECT)))
        return;
    /* The postmaster sends nothing back: EOF (or a reset) is its "done". */
    uint8_t b[64];
    for (;;) {
        ssize_t n = recv(cs->fd, b, sizeof(b), 0);
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        finish(cs, END_CLOSED_BY_POSTMASTER, "%s",
               n == 0 ? "closed by the postmaster" : strerror(errno));
        return;
    }
}

static void want(struct cancel_send *cs, int events)
{
    int rc = uv_poll_start(&cs->poll, events, on_socket);
    if (rc < 0)
        finish(cs, END_FAILED, "%s: cannot watch the socket: %s", step_name(cs->step),
               uv_strerror(rc));
}

static void on_deadline(uv_timer_t *t)
{
    struct cancel_send *cs = t->data;
    if (cs->why[0]) { /* a failure found in cancel_send_start */
        finish(cs, END_FAILED, "%s", cs->why);
        return;
    }
    finish(cs, END_FAILED, "no answer within %llu ms (server_connect_timeout) while %s",
           (unsigned long long)cs->timeout_ms, step_name(cs->step));
}

/* A failure inside cancel_send_start: reported from the loop, at once. */
static void fail_soon(struct cancel_send *cs, const char *what, int err)
{
    snprintf(cs->why, sizeof(cs->why), "%s: %s", what, strerror(err));
    uv_timer_stop(&cs->deadline);
    uv_timer_start(&cs->deadline, on_deadline, 0, 0);
}

int cancel_send_start(uv_loop_t *loop, const struct cancel_target *t, uint64_t timeout_ms,
                      cancel_send_done_fn *done, void *arg)
{
    struct cancel_send *cs = calloc(1, sizeof(*cs));
    if (!cs)
        return UV_ENOMEM;
    cs->fd = -1;
    cs->target = *t;
    cs->timeout_ms = timeout_ms;
    cs->done = done;
    cs->arg = arg;
    uint32_t words[4] = {htonl(16), htonl(80877102), htonl(t->pid), htonl(t->key)};
    memcpy(cs->packet, words, sizeof(cs->packet));
    int rc = uv_timer_init(loop, &cs->deadline);
    if (rc < 0) {
        free(cs);
        return rc;
    }
    cs->deadline.data = cs;
    cs->open_handles = 1;
    list_prepend(list_ready(&in_flight), &cs->node);
    if (timeout_ms > 0)
        uv_timer_start(&cs->deadline, on_deadline, timeout_ms, 0);

    cs->fd = socket(t->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (cs->fd < 0) {
        fail_soon(cs, "socket", errno);
        return 0;
    }
    rc = uv_poll_init(loop, &cs->poll, cs->fd);
    if (rc < 0) {
        fail_soon(cs, "cannot watch the socket", -rc);
        return 0;
    }
    cs->poll.data = cs;
    cs->polling = true;
    cs->open_handles++;
    int c;
    do
        c = connect(cs->fd, (const struct sockaddr *)&t->addr, t->addrlen);
    while (c < 0 && errno == EINTR);
    if (c < 0 && errno != EINPROGRESS) {
        /* A unix socket whose listen queue is full says EAGAIN: the postmaster is not taking
         * connections, and a CancelRequest cannot wait in its queue. */
        fail_soon(cs, "connecting", errno);
        return 0;
    }
    int events = UV_WRITABLE;
    if (c == 0) { /* a unix socket connects at once: write now, not one loop turn later */
        cs->step = STEP_WRITING;
        int w = write_request(cs);
        if (w < 0 && w != UV_EAGAIN) {
            fail_soon(cs, "sending the request", -w);
            return 0;
        }
        if (w == 0)
            events = UV_READABLE | UV_DISCONNECT;
    }
    rc = uv_poll_start(&cs->poll, events, on_socket);
    if (rc < 0)
        fail_soon(cs, "cannot watch the socket", -rc);
    return 0;
}

void cancel_send_abort_all(void)
{
    struct list_node *node;
    while ((node = list_first(list_ready(&in_flight)))) {
        struct cancel_send *cs = container_of(node, struct cancel_send, node);
        finish(cs, END_FAILED, "ended by the worker shutting down, while %s", step_name(cs->step));
    }
}
