/* text_encoding: a statement text sent in one client_encoding, as the same characters in
 * another (iconv), for a statement prepared again after its client changed client_encoding.
 * Which encodings are converted is this file's; when to convert is prepared.c's. */
#ifndef SLUICE_TEXT_ENCODING_H
#define SLUICE_TEXT_ENCODING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The n bytes at `in`, read in Postgres's client encoding `from`, written in `to` into a new
 * buffer (*out, *out_len; the caller frees it). 0, or -EINVAL: an encoding not converted here
 * (a multi-byte one whose Postgres tables may differ from iconv's, SQL_ASCII, MULE_INTERNAL) or
 * a character `to` lacks; -ENOMEM. */
int text_encoding_convert(const char *from, const char *to, const uint8_t *in, size_t n,
                          uint8_t **out, size_t *out_len) __attribute__((warn_unused_result));

/* What running a SQL text may do to client_encoding (bits; 0: nothing, the server reads what
 * follows it in the client_encoding it had before). */
enum text_encoding_effect {
    /* a word that may set it (case aside): client_encoding and SET NAMES ("encoding",
     * "names"), RESET, DISCARD, set_config, EXECUTE (of a prepared SET, or dynamic SQL in a DO
     * block), or a U& escape that may spell one of them */
    TEXT_ENCODING_MAY_SET = 1,
    /* a word that may end a transaction or roll back to a savepoint (COMMIT, ROLLBACK, ABORT,
     * END, PREPARE TRANSACTION), which undoes a SET LOCAL of it, or any SET of it rolled back */
    TEXT_ENCODING_MAY_UNDO = 2,
};
/* The effects of the SQL text sql (len bytes, need not end in a NUL). What no text shows (a
 * function that sets it when called) is not seen (docs/pool-modes.md). */
unsigned text_encoding_effect_of(const char *sql, size_t len);

#endif
