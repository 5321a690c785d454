/* request_track: the client's side of the relay. relay.c frames what the client sent through
 * request_track_frame, which checks each header, keeps the counts that say when the server can go
 * back (s->inflight, batch_open, executes_unanswered, copy_in), and, in transaction mode, follows
 * what each request does to state sluice keeps (stmt_track.c, session_effects.c):
 *   - named prepared statements: the client's map and the server's (prepared.h), a statement
 *     prepared again on a server that lacks it, each request whose reply must be matched queued
 *     in s->reqs; the client's names in Parse/Bind/Describe/Close, and in a SQL EXECUTE or
 *     DEALLOCATE of its own statement, become the server's (stmt_names.h), in c->in in place;
 *   - SQL whose effect outlives the transaction (session_state.h): session_state_policy;
 *   - the parameters a statement changes (forgotten in the server's record) and a Query that
 *     resets the client's login parameters (relay.h's struct login_reset; relay.c settles it).
 * Session mode queues only what tells the replies apart (stmt_track_count: nameless requests,
 * the mark before a Query inside an extended batch), statement names passing as sent.
 * It advances c->in.scan over what may be forwarded and never writes to a socket: sluice's own
 * messages go to s->out, the client's bytes are written by relay.c. A request sluice answers
 * itself is consumed from c->in; so is the start of a renamed message that had no room in c->in,
 * which goes to s->out instead (the rest follows from c->in). */
#ifndef SLUICE_REQUEST_TRACK_H
#define SLUICE_REQUEST_TRACK_H

#include <stdbool.h>

#include "error.h"

struct client;
struct server;

/* How much of the client a failure found while framing ends. */
enum client_failure_ends {
    CLIENT_FAILURE_ENDS_SESSION,             /* client_fail: the error, and FATAL ones close */
    CLIENT_FAILURE_ENDS_REQUEST_AND_SESSION, /* client_fail_request_and_close: an error and a
                                                ReadyForQuery the client can read, then close */
};
/* What framing fails the client with (CLIENT_FRAME_FAILED). Framing only reports it: the link
 * fails the client once the relay has returned, so nothing is torn down mid-pump. */
struct client_failure {
    enum failure reason;
    enum client_failure_ends ends;
    char detail[200];
};

/* Why framing the client's bytes stopped. */
enum client_frame {
    CLIENT_FRAME_NEED_DATA,  /* framed everything that is complete */
    CLIENT_FRAME_TERMINATE,  /* client sent Terminate: forward what is before it, answer what
                                it sent before, then close (during COPY FROM STDIN the Terminate
                                itself goes to the server, which answers it and closes; so does
                                what else Postgres refuses there: an unknown type, a length past
                                its bound; and, anywhere, an unknown type after requests still to
                                answer, which Postgres answers first) */
    CLIENT_FRAME_NEED_FLUSH, /* sluice must send something first: write what is framed, call
                                again */
    CLIENT_FRAME_FAILED,     /* the client must be failed: *fail says with what */
};

/* Frame what c sent to its server s, from c->in.scan on (see above). CLIENT_FRAME_FAILED: *fail
 * is filled. */
enum client_frame request_track_frame(struct client *c, struct server *s,
                                      struct client_failure *fail);

/* Does s's pool mode follow requests (transaction and statement mode: the server goes back
 * between transactions)? Session mode forwards statements untouched. */
bool request_track_on(const struct server *s);

/* Does the client's next request wait, framed no further until the server answers? For the
 * reply of one that may reset its login parameters and the restore after it (login_reset.h), or
 * for the outcome of its Close, DEALLOCATE or DISCARD ALL in a batch it ended: whether the
 * statements they name are still the client's (stmt_queue_drop_undecided); or for replies to
 * drain a queue of requests sent far ahead of them (request_track_backlogged). */
bool request_track_client_waits(const struct server *s);

/* Transaction and statement mode: is the client read no further (relay.c) and framed no further
 * until the server's replies drain the requests queued for them (stmt_queue_backlogged)? The
 * client's flow control, as Postgres's own when its output blocks: a client that pipelines
 * requests and reads the answers late waits in its writes instead of being ended. Session mode
 * stops matching replies instead (prepared.h, paused). */
bool request_track_backlogged(const struct server *s);

/* The client ended a COPY FROM STDIN (CopyDone or CopyFail; sluice's CopyFail for a client that
 * left): the Syncs that arrived during it are not answered. */
void request_track_copy_in_ended(struct server *s);

#endif
