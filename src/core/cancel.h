/* cancel: the keys sluice hands clients in BackendKeyData, and CancelRequests that use them.
 * A cancel reaches the backend the client is linked to at that moment and no other: it is sent
 * from the worker's loop (cancel_send.c), and the server is kept out of the pool until it is
 * done. */
#ifndef SLUICE_CANCEL_H
#define SLUICE_CANCEL_H

#include <stdint.h>

struct worker;
struct client;
struct server;

/* One map per worker (a map is used by its owner's thread only), which registers that worker's
 * clients. The owner index (0..CANCEL_OWNER_MAX) is in every pid the map hands out, so a
 * CancelRequest that reached any worker can be passed to the one that holds the key
 * (docs/architecture.md 5.5); pids are unique across the maps. */
#define CANCEL_OWNER_MAX 63u          /* the pid's low 6 bits */
#define CANCEL_PID_RANDOM 0x3fffffc0u /* the pid's random bits */
/* What routing a CancelRequest and a cancel's end ask of the layers above (link.c's
 * link_cancel_events, installed by sluice.c as worker->cancel_events): cancel.c keys, routes and
 * sends; it closes no client and kicks no server itself. */
struct cancel_events {
    /* requester's CancelRequest is handled (at once, or its cancel has reached the backend):
     * its connection closes. */
    void (*request_handled)(struct client *requester);
    /* requester waits for its cancel to reach the backend (CLIENT_CANCEL_WAIT, not read). */
    void (*request_waits)(struct client *requester);
    /* The CancelRequest is for c, queued for a server: its request is answered without one. */
    void (*queued_cancelled)(struct client *c);
    /* A cancel sent to s is over (cancels_in_flight counts it out), s not closed: its client's
     * next bytes, or its cleanup between clients, may go on. */
    void (*server_done)(struct server *s);
};

struct cancel_map *cancel_map_new(unsigned owner);
void cancel_map_free(struct cancel_map *m);
/* Give the client a fresh (pid, key) and remember it. 0, or -EIO (no randomness). The random
 * bits come from a reserve per thread: no lock. */
int cancel_register(struct cancel_map *m, struct client *c) __attribute__((warn_unused_result));
void cancel_unregister(struct cancel_map *m, struct client *c);
/* The worker whose map holds pid. */
unsigned cancel_pid_owner(uint32_t pid);
/* The client registered under (pid, key) in m, or NULL (unknown pid, or the key does not match:
 * compared in constant time). */
struct client *cancel_map_lookup(const struct cancel_map *m, uint32_t pid, uint32_t key);
/* Send a cancel to the backend of s (CancelRequest, query_timeout). 0 or a negative errno. */
int cancel_server(struct worker *worker, struct server *s);
/* The cancels asked for s while sluice's own statements ran (cancel.c, "a cancel behind sluice's
 * own statements"): called by the relay once they are answered (s->swallow back to 0), each is
 * sent if the client's request runs, else answered unsent. Neither kicks s: the caller goes on. */
void cancel_release_deferred(struct server *s);
/* The relay forwarded the ReadyForQuery of a client's request on s: a deferred cancel waiting to
 * see whether that request ends (resend_if_ignored) is over now, answered and counted out, so
 * that the client's next request does not wait for its timer. Does not kick s: the caller goes
 * on. */
void cancel_request_answered(struct server *s);
/* s is closing: its deferred cancels are answered unsent (their requesters closed, their counts
 * in cancels_in_flight taken back), so that none is left pointing at it. */
void cancel_forget_deferred(struct server *s);
/* A worker shutting down now: the cancels it is still sending end (their requesters are
 * answered, their servers count them out), so its loop can close. */
void cancel_abort_all(void);
/* A CancelRequest arrived on requester's connection. The connection is closed once the request
 * is handled: at once, or when a cancel passed on to a backend has reached it (CANCEL_WAIT). */
void cancel_request(struct client *requester, uint32_t pid, uint32_t key);
/* A requester in CANCEL_WAIT is closing before its cancel is done: the job forgets it. */
void cancel_requester_gone(struct client *requester);

/* Across workers (5.5): a CancelRequest whose pid another worker owns is passed to it with a
 * ticket of the requester's worker; the owner routes it (cancel_remote_request, on the owner's
 * thread) and sends the ticket back once the cancel reached the backend, or at once when there
 * is nothing to cancel; cancel_remote_done (on the requester's thread) closes the requester, if
 * it has not gone meanwhile, and frees the ticket. */
struct cancel_job;
struct worker_msg;
/* answer: the ticket's way back to reply_to, made with the request (worker_post_cancel). */
void cancel_remote_request(struct worker *worker, uint32_t pid, uint32_t key,
                           struct worker *reply_to, struct worker_msg *answer);
void cancel_remote_done(struct cancel_job *ticket);

#endif
