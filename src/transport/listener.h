/* listener: the listening sockets (TCP addresses and an optional unix socket). Accepts in
 * batches; stops accepting while the client count is far above max_client_conn (the excess get a
 * 53300 error at login) and resumes when it falls; when accept fails for want of descriptors or
 * memory, backs off and tries again on a timer. */
#ifndef SLUICE_LISTENER_H
#define SLUICE_LISTENER_H

struct sluice;

/* Open every configured address. 0 or a negative UV_E* code (logged). */
int listener_start(struct sluice *app) __attribute__((warn_unused_result));
void listener_stop(struct sluice *app);
/* A client went away: resume accepting if we had paused. */
void listener_maybe_resume(struct sluice *app);
/* The TCP port actually bound (listen_port 0 picks one). */
int listener_port(const struct sluice *app);

#endif
