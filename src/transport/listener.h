/* listener: the listening sockets (TCP addresses and an optional unix socket). Accepts in
 * batches; stops accepting while the client count is far above max_client_conn (the excess get a
 * 53300 error at login) and resumes when it falls; when accept fails for want of descriptors or
 * memory, backs off and tries again on a timer; at shutdown accepts what is queued before it
 * closes, so that no client is reset without a word. */
#ifndef SLUICE_LISTENER_H
#define SLUICE_LISTENER_H

#include <stdbool.h>
#include <sys/socket.h>

struct process;
struct client;

/* What becomes of an accepted socket: the layer above's (sluice.c hands it a worker's
 * client_accept and client_read_first), so the listener knows sockets and counts, not clients
 * or workers. */
struct listener_ops {
    /* fd (non-blocking, options set) is the callee's now, whatever it returns. The new
     * connection, or NULL when it was refused or closed at once. */
    struct client *(*accepted)(struct process *proc, int fd, const struct sockaddr_storage *addr);
    /* Read a connection's first packet: called after the next accept4 (or the one that finds
     * none), which gives the packet time to arrive. */
    void (*read_first)(struct client *c);
    /* The sockets are Postgres clients': accepts pause at max_client_conn's accept limit,
     * tcp_keepalive and tcp_defer_accept apply, and the addresses are logged. Else (HTTP) every
     * connection is accepted (what to do with one is the callee's) and accepted() returns NULL. */
    bool clients;
};

/* A listener with no socket yet on proc's loop, listen(2)'s backlog given; accepted sockets go
 * to ops (kept; it must outlive the listener). NULL: out of memory. Freed with free() once
 * listener_close's handles have closed (after the loop ends). */
struct listener *listener_new(struct process *proc, const struct listener_ops *ops, int backlog);
/* One more listening address (port 0: the listener's port, picked by the first bind if none
 * yet). 0 or a negative UV_E* code. */
int listener_listen_tcp(struct listener *l, const char *host, int port)
    __attribute__((warn_unused_result));
/* Shutdown: accept what is queued, at most a backlog's worth per socket, hand it to ops like
 * any other connection (its owner tells it why it ends), then close the sockets. */
void listener_close(struct listener *l);
/* The process's client listener: every configured address. 0 or a negative UV_E* code
 * (logged). */
int listener_start(struct process *proc, const struct listener_ops *ops)
    __attribute__((warn_unused_result));
/* Shutdown (call it once the process has left PHASE_RUNNING): listener_close of the client
 * listener. Reload never calls it: the listening sockets live as long as the process. */
void listener_stop(struct process *proc);
/* A client went away: resume accepting if we had paused. */
void listener_maybe_resume(struct process *proc);
/* The TCP port actually bound (listen_port 0 picks one). */
int listener_port(const struct process *proc);

#endif
