/* listener: the listening sockets (TCP addresses and an optional unix socket). Accepts in
 * batches; stops accepting while the client count is far above max_client_conn (the excess get a
 * 53300 error at login) and resumes when it falls; when accept fails for want of descriptors or
 * memory, backs off and tries again on a timer; at shutdown accepts what is queued before it
 * closes, so that no client is reset without a word. */
#ifndef SLUICE_LISTENER_H
#define SLUICE_LISTENER_H

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
};

/* Open every configured address; accepted sockets go to ops (kept; it must outlive the
 * listener). 0 or a negative UV_E* code (logged). */
int listener_start(struct process *proc, const struct listener_ops *ops)
    __attribute__((warn_unused_result));
/* Shutdown (call it once the process has left PHASE_RUNNING): accept the connections still
 * queued, at most a backlog's worth per socket, and hand them on like any other, then close the
 * sockets. Reload never calls it: the listening sockets live as long as the process. */
void listener_stop(struct process *proc);
/* A client went away: resume accepting if we had paused. */
void listener_maybe_resume(struct process *proc);
/* The TCP port actually bound (listen_port 0 picks one). */
int listener_port(const struct process *proc);

#endif
