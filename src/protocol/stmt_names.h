/* stmt_names: the names servers know the clients' named prepared statements by, in transaction
 * mode (see prepared.h): which name, written into a client's message on its way to the server,
 * and the client's own names put back into the server's errors. Bytes only; when to rename is
 * request_track.c's decision.
 *
 * A server name is the definition's server_name ("sluice_<hash>"). A client name cut at its key
 * (STMT_NAME_CUT: of STMT_KEY_MAX bytes or more, which may be longer than the buffer, or a
 * LATIN1 one that grows past them in UTF-8) gets that name padded with '_' to STMT_KEY_MAX bytes
 * instead, written over the name's key (in place when the key is STMT_KEY_MAX bytes): Postgres keys a statement by
 * that much of its name, so the rest of the client's name, left as it is, changes nothing. A
 * UTF-8 name whose key ends inside a character gets that character's head again after the padded
 * name, so that its rest is text to the server and its errors spell the name whole. Both
 * spellings name a statement on a server; the server's map holds each under its own. */
#ifndef SLUICE_STMT_NAMES_H
#define SLUICE_STMT_NAMES_H

#include <stdbool.h>
#include <stdint.h>

#include "buf.h"
#include "codec.h"
#include "prepared.h"
#include "relay.h"

struct stmt_server_name {
    char name[STMT_KEY_MAX + 1];
};

/* Is `key` a name sluice gives statements on servers ("sluice_" and 8 lower-case hex digits,
 * or "sluice_s" and a count; padded with '_' to STMT_KEY_MAX bytes)? A client that names one it
 * does not hold names no statement of its own, whatever the server holds under it. */
bool stmt_names_is_servers(const char *key);

/* Does a client's statement name end with its key, or go on after it (Postgres keys it by
 * STMT_KEY_MAX bytes in the server's encoding: a name of that many bytes or more as sent, or a
 * shorter one that grows past them when converted, see stmt_track.c protocol_key)? */
enum stmt_name_extent { STMT_NAME_WHOLE, STMT_NAME_CUT };

/* The name a server knows d by: a cut client name's is padded to STMT_KEY_MAX bytes, so that
 * the server keys it by sluice's name alone, whatever of the client's name follows. */
void stmt_names_for_server(struct stmt_server_name *sn, const struct stmt_def *d,
                           enum stmt_name_extent extent);

/* The name a statement whose result type changed goes to the server under (STMT_CHANGED_NAME,
 * padded as stmt_names_for_server pads a cut name). */
void stmt_names_changed(struct stmt_server_name *sn, enum stmt_name_extent extent);
/* Is the server's ErrorResponse msg its refusal of that name (26000)? */
bool stmt_names_changed_in_error(const uint8_t *msg, uint32_t whole);

/* May old_len bytes of the message at b->scan become new_len bytes now? In place when the buffer
 * has room on one side of them; otherwise only when nothing framed waits before the message (its
 * start then goes out first, from the server's output). Asked before anything changes: when
 * false the caller flushes and looks at the message again. */
bool stmt_names_can_rewrite(const struct buf *b, uint32_t old_len, uint32_t new_len);
/* The same for a client statement name whose key is key_len bytes becoming sn. */
bool stmt_names_can_rename(const struct buf *b, uint32_t key_len,
                           const struct stmt_server_name *sn);

enum stmt_rewrite {
    STMT_REWRITTEN_IN_PLACE, /* the message moved or changed length in b: look at it again */
    STMT_START_SENT,         /* its start went to out rewritten and left b; rx->remain is the
                                rest of the message, still to frame from b */
};
/* Replace old_len bytes at body offset `at` of the message at b->scan (in b through them) by
 * repl, and its length word with them (stmt_names_can_rewrite said yes). In place, the bytes on
 * the shorter side of the change move: one memmove, of the header and what is framed before
 * it, or of what follows. */
enum stmt_rewrite stmt_names_rewrite(struct buf *b, struct framer *rx, struct msg_out *out,
                                     uint32_t at, uint32_t old_len, const char *repl);
/* The client's statement name at body offset `at`, whose key is key_len bytes, becomes sn. */
enum stmt_rewrite stmt_names_rename(struct buf *b, struct framer *rx, struct msg_out *out,
                                    uint32_t at, uint32_t key_len,
                                    const struct stmt_server_name *sn);

/* Does the server's ErrorResponse or NoticeResponse msg (`whole` bytes) name one of client_map's
 * statements by its server name ("prepared statement "sluice_1a2b3c4d" already exists", "bind
 * message supplies 1 parameters, but prepared statement ... requires 2", "identifier ... will be
 * truncated to ..."), or one that a DEALLOCATE ALL / DISCARD
 * ALL in pending (the server's queue, not answered yet) took from it? stmt_names_put_error then
 * appends it to out with the client's names in their place, as Postgres would have said it. */
bool stmt_names_in_error(const struct stmt_map *client_map, const struct stmt_queue *pending,
                         const uint8_t *msg, uint32_t whole);
void stmt_names_put_error(const struct stmt_map *client_map, const struct stmt_queue *pending,
                          const uint8_t *msg, uint32_t whole, struct msg_out *out);

#endif
