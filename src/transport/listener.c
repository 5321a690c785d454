/* listener: listening sockets and accept (see listener.h). */
#include "listener.h"

#include <errno.h>
#include <grp.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "sluice.h"
#include "tcp_options.h"

#define MAX_LISTEN_SOCKETS 16
#define ACCEPT_BATCH 64

/* What an accepted TCP socket still needs from us. Its TCP options (tcp_options.c: TCP_NODELAY,
 * keepalive, user timeout) are set on the listening socket, and Linux copies them to every socket
 * it accepts; the first accepted socket is checked, and only if it did not inherit them are they
 * set on each (up to six system calls per connection saved in a connection storm). */
enum accepted_opts { OPTS_UNCHECKED, OPTS_INHERITED, OPTS_SET_EACH };

struct listen_socket {
    uv_poll_t poll;
    int fd;
    struct process *proc;
    struct listener *owner;
    enum accepted_opts opts;
    char path[108]; /* unix socket path, to unlink */
};

static void prepare_accepted(struct listen_socket *ls, int fd)
{
    if (ls->path[0])
        return; /* unix socket: no TCP options */
    if (ls->opts == OPTS_UNCHECKED) {
        ls->opts = tcp_options_present(fd, ls->proc->cfg) ? OPTS_INHERITED : OPTS_SET_EACH;
        if (ls->opts == OPTS_SET_EACH)
            log_msg(LOG_DEBUG, "accepted sockets do not inherit their TCP options: "
                               "setting them on each");
    }
    if (ls->opts == OPTS_SET_EACH)
        tcp_options_apply(fd, ls->proc->cfg, NULL);
}

/* Whether the listening sockets are polled. AT_CAP ends when clients leave; BACKING_OFF (accept
 * failed for want of a resource: descriptors, memory) ends on a timer, because what is short may
 * come back from anywhere (an HTTP connection or a server socket closing), not only from a
 * client leaving. RETRYING polls again but the shortage is not known to be over until an accept
 * succeeds: failing again then is the same shortage, and is not logged again. */
enum listener_state {
    LISTENER_ACCEPTING,
    LISTENER_AT_CAP,
    LISTENER_BACKING_OFF,
    LISTENER_RETRYING,
    LISTENER_DRAINING, /* shutdown: accepting what the kernel queued, whatever the cap */
    LISTENER_CLOSED,
};

#define ACCEPT_RETRY_MS 250 /* while accept fails for want of a resource */

struct listener {
    struct listen_socket socks[MAX_LISTEN_SOCKETS];
    int nsocks;
    int port;
    enum listener_state state;
    int backlog; /* listen(2)'s, as the sockets were opened with (listen_backlog needs a restart) */
    struct process *proc;
    const struct listener_ops *ops; /* where accepted sockets go */
    uv_timer_t retry;       /* armed in BACKING_OFF */
    uint64_t failing_since; /* loop time of the first failed accept of a shortage */
};

/* max_client_conn logged-in clients and max_client_logins logins in progress; excess
 * connections are still accepted (to be told why they are refused) up to a margin; beyond it
 * sluice stops accepting until clients leave. */
static int accept_limit(const struct process *proc)
{
    int max = (int)proc->cfg->max_client_conn;
    int margin = max / 10 > 100 ? max / 10 : 100;
    return max + (int)proc->cfg->max_client_logins + margin;
}

static void set_state(struct listener *l, enum listener_state next);

/* accept4 failed with err (not EAGAIN/EINTR/ECONNABORTED): EMFILE/ENFILE, ENOBUFS, ENOMEM. The
 * connection stays in the backlog; polling again at once would spin on it, so back off and try
 * again on a timer. The shortage is logged when it starts and when it ends, not at every try. */
static void accept_failed(struct listener *l, int err)
{
    if (l->state == LISTENER_DRAINING) {
        log_msg(LOG_ERROR, "shutdown: accept failed: %s; connections still queued are reset",
                strerror(err));
        return;
    }
    if (l->state != LISTENER_RETRYING) {
        l->failing_since = uv_now(l->proc->loop);
        log_msg(LOG_ERROR,
                "accept failed: %s; not accepting, trying again every %d ms%s", strerror(err),
                ACCEPT_RETRY_MS,
                err == EMFILE || err == ENFILE
                    ? " (out of file descriptors: raise ulimit -n, or lower max_client_conn)"
                    : "");
    }
    set_state(l, LISTENER_BACKING_OFF);
}

static void accept_succeeded(struct listener *l)
{
    if (l->state != LISTENER_RETRYING)
        return;
    log_msg(LOG_INFO, "accepting again after %llu ms of failed accepts",
            (unsigned long long)(uv_now(l->proc->loop) - l->failing_since));
    set_state(l, LISTENER_ACCEPTING);
}

/* Up to max accept4 calls on ls; stops early when none is left, when accept fails, and, unless
 * draining, at the accept limit. How many connections were accepted. */
static int accept_from(struct listen_socket *ls, int max)
{
    struct process *proc = ls->proc;
    struct listener *l = ls->owner;
    /* A client's first packet is read after the next accept4 (or the one that finds none), which
     * gives it the time to arrive: see listener_ops.read_first. */
    const struct listener_ops *ops = l->ops;
    struct client *unread = NULL;
    int accepted = 0;
    for (int tries = 0; tries < max; tries++) {
        if (l->ops->clients && l->state != LISTENER_DRAINING &&
            sluice_nclients(proc) >= accept_limit(proc)) {
            set_state(l, LISTENER_AT_CAP);
            log_msg(LOG_WARNING,
                    "%d client connections: not accepting more until some leave "
                    "(max_client_conn = %lld)",
                    sluice_nclients(proc), (long long)proc->cfg->max_client_conn);
            break;
        }
        struct sockaddr_storage addr;
        socklen_t alen = sizeof(addr);
        int fd = accept4(ls->fd, (struct sockaddr *)&addr, &alen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            bool transient = errno == EINTR || errno == ECONNABORTED;
            if (transient && l->state == LISTENER_DRAINING)
                continue; /* no poll event will come back for the ones queued behind it */
            if (!transient && errno != EAGAIN && errno != EWOULDBLOCK)
                accept_failed(l, errno);
            break;
        }
        accepted++;
        accept_succeeded(l);
        if (unread)
            ops->read_first(unread);
        if (l->ops->clients)
            prepare_accepted(ls, fd);
        if (ls->path[0])
            addr.ss_family = AF_UNIX;
        unread = ops->accepted(proc, fd, &addr);
    }
    if (unread)
        ops->read_first(unread);
    return accepted;
}

static void on_listen_readable(uv_poll_t *p, int status, int events)
{
    (void)events;
    if (status < 0)
        return;
    accept_from(p->data, ACCEPT_BATCH);
}

static void on_retry_timer(uv_timer_t *t)
{
    struct listener *l = t->data;
    if (l->state == LISTENER_BACKING_OFF && l->proc->phase == PHASE_RUNNING)
        set_state(l, LISTENER_RETRYING);
}

static bool polls(enum listener_state s)
{
    return s == LISTENER_ACCEPTING || s == LISTENER_RETRYING;
}

static void set_state(struct listener *l, enum listener_state next)
{
    enum listener_state prev = l->state;
    l->state = next;
    if (next == LISTENER_BACKING_OFF)
        uv_timer_start(&l->retry, on_retry_timer, ACCEPT_RETRY_MS, 0);
    else
        uv_timer_stop(&l->retry);
    if (polls(prev) == polls(next))
        return;
    for (int i = 0; i < l->nsocks; i++) {
        if (polls(next))
            uv_poll_start(&l->socks[i].poll, UV_READABLE, on_listen_readable);
        else
            uv_poll_stop(&l->socks[i].poll);
    }
}

void listener_maybe_resume(struct process *proc)
{
    struct listener *l = proc->listener;
    if (l && l->state == LISTENER_AT_CAP && proc->phase == PHASE_RUNNING &&
        sluice_nclients(proc) < accept_limit(proc) * 9 / 10)
        set_state(l, LISTENER_ACCEPTING);
}

static int add_socket(struct listener *l, int fd, const char *path)
{
    struct process *proc = l->proc;
    if (l->nsocks == MAX_LISTEN_SOCKETS) {
        close(fd);
        return UV_EMFILE;
    }
    struct listen_socket *ls = &l->socks[l->nsocks];
    ls->fd = fd;
    ls->proc = proc;
    ls->owner = l;
    ls->opts = OPTS_UNCHECKED;
    snprintf(ls->path, sizeof(ls->path), "%s", path ? path : "");
    int rc = uv_poll_init(proc->loop, &ls->poll, fd);
    if (rc < 0) {
        close(fd);
        return rc;
    }
    ls->poll.data = ls;
    l->nsocks++;
    return uv_poll_start(&ls->poll, UV_READABLE, on_listen_readable);
}

int listener_listen_tcp(struct listener *l, const char *host, int port)
{
    struct process *proc = l->proc;
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char portstr[16];
    snprintf(portstr, sizeof(portstr), "%d", port);
    int gai = getaddrinfo(strcmp(host, "*") == 0 ? NULL : host, portstr, &hints, &res);
    if (gai != 0) {
        log_msg(LOG_ERROR, "cannot resolve listen_addr %s: %s", host, gai_strerror(gai));
        return UV_EINVAL;
    }
    int opened = 0, rc = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (ai->ai_family == AF_INET6)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        int defer = (int)proc->cfg->tcp_defer_accept;
        if (l->ops->clients) {
            tcp_options_apply(fd, proc->cfg, NULL); /* for the accepted sockets to inherit */
            if (defer > 0 &&
                setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer, sizeof(defer)) < 0)
                log_msg(LOG_WARNING, "tcp_defer_accept: %s", strerror(errno));
        }
        /* With port 0 the first socket picks the port and the others use the same one. */
        if (l->port > 0) {
            if (ai->ai_family == AF_INET)
                ((struct sockaddr_in *)ai->ai_addr)->sin_port = htons((uint16_t)l->port);
            else if (ai->ai_family == AF_INET6)
                ((struct sockaddr_in6 *)ai->ai_addr)->sin6_port = htons((uint16_t)l->port);
        }
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, l->backlog) < 0) {
            rc = -errno;
            if (l->ops->clients)
                log_msg(LOG_ERROR, "cannot listen on %s:%d: %s", host, port, strerror(errno));
            close(fd);
            continue;
        }
        struct sockaddr_storage bound;
        socklen_t blen = sizeof(bound);
        getsockname(fd, (struct sockaddr *)&bound, &blen);
        int bport = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                                : ntohs(((struct sockaddr_in *)&bound)->sin_port);
        l->port = bport;
        char ip[INET6_ADDRSTRLEN] = "?";
        if (bound.ss_family == AF_INET6)
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&bound)->sin6_addr, ip, sizeof(ip));
        else
            inet_ntop(AF_INET, &((struct sockaddr_in *)&bound)->sin_addr, ip, sizeof(ip));
        rc = add_socket(l, fd, NULL);
        if (rc < 0)
            break;
        if (l->ops->clients) /* the tests read the port from this line */
            log_msg(LOG_INFO, bound.ss_family == AF_INET6 ? "listening on [%s]:%d" : "listening on %s:%d",
                ip, bport);
        opened++;
    }
    freeaddrinfo(res);
    return opened > 0 ? 0 : (rc ? rc : UV_EADDRNOTAVAIL);
}

/* unix_socket_mode and unix_socket_group on the bound socket's file, before listen(): no client
 * can connect while it still has the mode the umask gave it. 0 or -errno, logged. */
static int restrict_unix_socket(const char *path, const struct config *cfg)
{
    if (chmod(path, (mode_t)cfg->unix_socket_mode) < 0) {
        int err = errno;
        log_msg(LOG_ERROR, "unix_socket_mode %04o on %s: %s", cfg->unix_socket_mode, path,
                strerror(err));
        return -err;
    }
    if (!cfg->unix_socket_group[0])
        return 0;
    /* A group's entry holds its member list: an LDAP or sssd group of hundreds of members
     * needs more room than a fixed buffer gives, so it grows while the lookup says ERANGE. */
    struct group grp, *found = NULL;
    char *buf = NULL;
    int rc = ERANGE;
    for (size_t size = 4096; rc == ERANGE && size <= (64u << 20); size *= 4) {
        char *grown = realloc(buf, size);
        if (!grown) {
            rc = ENOMEM;
            break;
        }
        buf = grown;
        rc = getgrnam_r(cfg->unix_socket_group, &grp, buf, size, &found);
    }
    gid_t gid = found ? found->gr_gid : (gid_t)-1;
    free(buf);
    if (!found) {
        log_msg(LOG_ERROR, "unix_socket_group %s: %s", cfg->unix_socket_group,
                rc ? strerror(rc) : "no such group");
        return rc ? -rc : -ENOENT;
    }
    if (chown(path, (uid_t)-1, gid) < 0) {
        int err = errno;
        log_msg(LOG_ERROR, "unix_socket_group %s on %s: %s", cfg->unix_socket_group, path,
                strerror(err));
        return -err;
    }
    return 0;
}

static int listen_unix(struct listener *l, const char *dir, int port)
{
    struct sockaddr_un sa = {0};
    sa.sun_family = AF_UNIX;
    int n = snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/.s.PGSQL.%d", dir, port);
    if (n < 0 || (size_t)n >= sizeof(sa.sun_path)) {
        log_msg(LOG_ERROR, "unix_socket_dir %s is too long", dir);
        return UV_ENAMETOOLONG;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    unlink(sa.sun_path);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int err = errno;
        log_msg(LOG_ERROR, "cannot listen on %s: %s", sa.sun_path, strerror(err));
        close(fd);
        return -err;
    }
    int rc = restrict_unix_socket(sa.sun_path, l->proc->cfg);
    if (rc == 0 && listen(fd, l->backlog) < 0) {
        rc = -errno;
        log_msg(LOG_ERROR, "cannot listen on %s: %s", sa.sun_path, strerror(-rc));
    }
    if (rc < 0) {
        close(fd);
        unlink(sa.sun_path);
        return rc;
    }
    log_msg(LOG_INFO, "listening on unix socket %s", sa.sun_path);
    return add_socket(l, fd, sa.sun_path);
}

struct listener *listener_new(struct process *proc, const struct listener_ops *ops, int backlog)
{
    struct listener *l = calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    l->backlog = backlog;
    l->proc = proc;
    l->ops = ops;
    uv_timer_init(proc->loop, &l->retry);
    l->retry.data = l;
    uv_unref((uv_handle_t *)&l->retry);
    return l;
}

int listener_start(struct process *proc, const struct listener_ops *ops)
{
    const struct config *cfg = proc->cfg;
    proc->listener = listener_new(proc, ops, (int)cfg->listen_backlog);
    if (!proc->listener)
        return UV_ENOMEM;
    proc->listener->port = (int)cfg->listen_port;
    int rc = 0;
    for (int i = 0; i < cfg->listen_addr.n && rc == 0; i++)
        rc = listener_listen_tcp(proc->listener, cfg->listen_addr.names[i], proc->listener->port);
    if (rc == 0 && cfg->unix_socket_dir[0])
        rc = listen_unix(proc->listener, cfg->unix_socket_dir, proc->listener->port);
    if (rc == 0 && proc->listener->nsocks == 0) {
        log_msg(LOG_ERROR, "nothing to listen on: set listen_addr or unix_socket_dir");
        rc = UV_EINVAL;
    }
    return rc;
}

static void on_listen_closed(uv_handle_t *h)
{
    (void)h;
}

/* Closing a listening socket resets every connection still in its accept queue: the client's
 * connect succeeded, and it learns nothing but ECONNRESET. So what is queued is accepted first and
 * handed on as usual; the process is no longer RUNNING, so each is told FATAL 57P01 ("sluice is
 * shutting down", FAIL_SHUTDOWN) by the code that tells any login in progress (client_login.c,
 * worker_close_all). A queue holds at most backlog connections (+1 on Linux): the bound keeps a
 * storm that goes on arriving from holding the shutdown, and what arrives between the last accept
 * and the close is still reset. */
void listener_close(struct listener *l)
{
    if (!l || l->state == LISTENER_CLOSED)
        return;
    set_state(l, LISTENER_DRAINING);
    int drained = 0;
    for (int i = 0; i < l->nsocks; i++)
        drained += accept_from(&l->socks[i], l->backlog + 1);
    if (drained > 0)
        log_msg(LOG_INFO, "shutdown: accepted %d queued connections to tell them so%s", drained,
                l->ops->clients ? "" : " (HTTP)");
    set_state(l, LISTENER_CLOSED);
    uv_close((uv_handle_t *)&l->retry, NULL);
    for (int i = 0; i < l->nsocks; i++) {
        struct listen_socket *ls = &l->socks[i];
        uv_close((uv_handle_t *)&ls->poll, on_listen_closed);
        close(ls->fd);
        if (ls->path[0])
            unlink(ls->path);
    }
    l->nsocks = 0;
}

void listener_stop(struct process *proc)
{
    listener_close(proc->listener);
}

int listener_port(const struct process *proc)
{
    return proc->listener ? proc->listener->port : 0;
}
