/* query_positions: where the client's SQL text and the text sluice sent in its place (its
 * statement names renamed, stmt_track.c) differ, so that the position an ErrorResponse or
 * NoticeResponse gives (field P: characters of the text the server ran, from 1) points into the
 * client's text, as Postgres direct would. Only a text sluice rewrote has any (most have none,
 * and nothing is kept for them); positions are counted in characters of the client's encoding,
 * as Postgres counts them. Bytes only: which reply belongs to which text is prepared.c's queue. */
#ifndef SLUICE_QUERY_POSITIONS_H
#define SLUICE_QUERY_POSITIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec.h"

/* One rewrite: the client's name at client_at (characters, from 0) became server_len
 * characters at server_at in the text sent. */
struct query_edit {
    uint32_t client_at, client_len, server_at, server_len;
};

struct query_positions {
    uint32_t n, cap;
    /* Characters of the text sent (UINT32_MAX: not known, the head of a longer Query). A
     * position past its end is not in it: an EXECUTE whose prepared statement is planned again
     * (its table altered) fails with a position in that statement's own text. */
    uint32_t sent_chars;
    struct query_edit edits[]; /* in text order */
};

/* Counts characters of a text as the server will (client_encoding, NULL: UTF8). */
struct query_chars {
    unsigned width; /* enum in query_positions.c: how a byte of 0x80 or more starts a character */
};
void query_chars_init(struct query_chars *qc, const char *client_encoding);
uint32_t query_chars_count(const struct query_chars *qc, const char *s, size_t n);

/* Adds one rewrite to *qp (allocated on first use): the client's name at client_at characters,
 * client_len characters long, became server_len characters. Edits come in text order. False
 * when out of memory (*qp is kept). */
bool query_positions_add(struct query_positions **qp, uint32_t client_at, uint32_t client_len,
                         uint32_t server_len);

/* The text sent is sent_chars characters long (see struct query_positions). */
void query_positions_bound(struct query_positions *qp, uint32_t sent_chars);

/* Where position `pos` (from 1) of the text sent is in the client's text: a position inside a
 * renamed name is the client's name's first character; one past the end of the text sent (and
 * past the character after it, where "at end of input" points) is not in it and stays. */
uint32_t query_positions_map(const struct query_positions *qp, uint32_t pos);

/* Does ErrorResponse/NoticeResponse msg (`whole` bytes, header included) give a position (P)
 * that qp moves? Then *mapped is the client's. */
bool query_positions_moves(const struct query_positions *qp, const uint8_t *msg, uint32_t whole,
                           uint32_t *mapped);
/* msg with its P field's value `mapped`, appended to out. */
void query_positions_put(struct msg_out *out, const uint8_t *msg, uint32_t whole, uint32_t mapped);

#endif
