/* stmt_track: in transaction mode, what each client message does to the statements sluice keeps
 * for the server (prepared.h's maps, s->reqs), and the client's statement names turned into the
 * server's (stmt_names.h) in c->in in place. request_track_frame calls it for each message it
 * frames; sluice's own messages (a Parse of the client's statement, a Close) go to s->out. */
#ifndef SLUICE_STMT_TRACK_H
#define SLUICE_STMT_TRACK_H

#include <stdint.h>

#include "track_result.h"

struct client;
struct framer;
struct server;

/* Follow the client's message of this type (body: its first avail_body of len bytes, in c->in at
 * c->in.scan + CODEC_HEADER_LEN) on its way to s: a Parse kept in the client's map and prepared
 * under sluice's name; a Bind, Describe or Close of a named statement, which names it near the
 * start of its body, made sure of on the server and renamed; a Query's and Parse's statement
 * text through session_effects.c, and its EXECUTE or DEALLOCATE of the client's statement; each
 * request whose reply must be matched queued in s->reqs. TRACK_FAILED: *fail is filled. */
enum track_result stmt_track_message(struct client *c, struct server *s, uint8_t type,
                                     const uint8_t *body, uint32_t len, uint32_t avail_body,
                                     struct client_failure *fail);

/* Session mode's share of it: each request whose reply must be matched queued in s->reqs,
 * nameless, and a mark before a Query or FunctionCall framed inside an extended batch (statement
 * names untouched). TRACK_PASS, TRACK_FLUSH (the batch's bytes go before the mark) or
 * TRACK_FAILED (*fail filled: the queue is full). */
enum track_result stmt_track_count(struct client *c, struct server *s, uint8_t type,
                                   struct client_failure *fail);

/* A Parse larger than the buffer streams through (rx->keep: the definition it is kept in):
 * copy the n bytes of it just framed from chunk, and seal it once the message is whole. */
void stmt_track_keep_parse_tail(struct framer *rx, const uint8_t *chunk, uint32_t n);
/* The same for a Query larger than the buffer whose rest is watched (rx->drops_watch): a
 * DEALLOCATE or DISCARD in it, which sluice cannot follow, makes what s holds unknown. */
void stmt_track_watch_query_tail(struct server *s, struct framer *rx, const uint8_t *chunk,
                                 uint32_t n);

#endif
