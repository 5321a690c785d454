/* test_query_positions: a position in the text sluice sent (its statement names in place of the
 * client's) back in the client's text, in characters of the client's encoding. */
#include "query_positions.h"

#include "check.h"
#include "decimal.h"

#include <stdlib.h>
#include <string.h>

/* An ErrorResponse whose P field is `position`, into buf: its length. */
static uint32_t error_at(uint8_t *buf, const char *position)
{
    struct msg_out out;
    codec_out_init(&out);
    codec_begin(&out, 'E');
    codec_put_cstring(&out, "C42601");
    codec_put_bytes(&out, "P", 1);
    codec_put_cstring(&out, position);
    codec_put_u8(&out, 0);
    codec_end(&out);
    uint32_t n = out.len;
    memcpy(buf, out.data, n);
    codec_out_free(&out);
    return n;
}

/* The one reader of digits, for a server's positions (at most 9) and KILL_CLIENT's ids (19). */
static void positions_and_ids_read_their_digits_alike(void)
{
    uint64_t v = 7;
    CHECK(decimal_parse("0", 1, 9, &v) && v == 0);
    CHECK(decimal_parse("999999999", 9, 9, &v) && v == 999999999);
    CHECK(!decimal_parse("1000000000", 10, 9, &v) && v == 999999999); /* past its bound */
    CHECK(decimal_parse("9999999999999999999", 19, DECIMAL_MAX_DIGITS, &v) &&
          v == 9999999999999999999ull);
    CHECK(!decimal_parse("99999999999999999999", 20, 20, &v)); /* would wrap: never */
    CHECK(!decimal_parse("", 0, 9, &v));
    CHECK(!decimal_parse("-1", 2, 9, &v));
    CHECK(!decimal_parse("+1", 2, 9, &v));
    CHECK(!decimal_parse(" 1", 2, 9, &v));
    CHECK(!decimal_parse("1a", 2, 9, &v));

    struct query_positions *qp = NULL;
    CHECK(query_positions_add(&qp, 0, 1, 15)); /* every later position moves back 14 */
    uint8_t msg[64];
    uint32_t mapped = 0;
    CHECK(query_positions_moves(qp, msg, error_at(msg, "20"), &mapped) && mapped == 6);
    CHECK(!query_positions_moves(qp, msg, error_at(msg, "1000000000"), &mapped));
    CHECK(!query_positions_moves(qp, msg, error_at(msg, "2x"), &mapped));
    CHECK(!query_positions_moves(qp, msg, error_at(msg, ""), &mapped));
    free(qp);
}

int main(void)
{
    positions_and_ids_read_their_digits_alike();
    struct query_positions *qp = NULL;
    /* "EXECUTE a; EXECUTE bb; x": a (at 8) became 15 characters, bb (at 19) 15 */
    CHECK(query_positions_add(&qp, 8, 1, 15));
    CHECK(query_positions_add(&qp, 19, 2, 15));
    CHECK_INT(query_positions_map(qp, 1), 1);
    CHECK_INT(query_positions_map(qp, 8), 8);   /* the blank before a */
    CHECK_INT(query_positions_map(qp, 9), 9);   /* a's first character */
    CHECK_INT(query_positions_map(qp, 20), 9);  /* inside sluice's name: the client's start */
    CHECK_INT(query_positions_map(qp, 24), 10); /* the ';' after it */
    CHECK_INT(query_positions_map(qp, 34), 20); /* bb */
    CHECK_INT(query_positions_map(qp, 48), 20);
    CHECK_INT(query_positions_map(qp, 49), 22); /* the ';' after bb */
    CHECK_INT(query_positions_map(qp, 51), 24);
    CHECK_INT(query_positions_map(NULL, 7), 7);
    free(qp);

    /* a client name longer than sluice's */
    qp = NULL;
    CHECK(query_positions_add(&qp, 8, 40, 15));
    CHECK_INT(query_positions_map(qp, 24), 49);
    free(qp);

    /* "EXECUTE a" sent as 22 characters: the end of input (23) is in it, 24 on is not (an
     * EXECUTE planned again gives a position in the prepared statement's own text) */
    qp = NULL;
    CHECK(query_positions_add(&qp, 8, 1, 14));
    CHECK_INT(query_positions_map(qp, 23), 10);
    query_positions_bound(qp, 22);
    CHECK_INT(query_positions_map(qp, 23), 10);
    CHECK_INT(query_positions_map(qp, 24), 24);
    CHECK_INT(query_positions_map(qp, 26), 26);
    free(qp);

    struct query_chars qc;
    query_chars_init(&qc, NULL);
    CHECK_INT(query_chars_count(&qc, "caf\xc3\xa9!", 6), 5);
    query_chars_init(&qc, "latin1");
    CHECK_INT(query_chars_count(&qc, "caf\xc3\xa9!", 6), 6);
    query_chars_init(&qc, "SJIS");
    CHECK_INT(query_chars_count(&qc, "\x83\x41\xb1x", 4), 3); /* a kanji-row char, a kana, x */
    query_chars_init(&qc, "GB18030");
    CHECK_INT(query_chars_count(&qc, "\x81\x30\x81\x30\xb0\xa1", 6), 2);

    /* the P field of an ErrorResponse, moved */
    static const uint8_t msg[] = "E\0\0\0\x19"
                                 "SERROR\0C42P01\0P40\0Mx\0";
    uint32_t mapped = 0;
    qp = NULL;
    CHECK(query_positions_add(&qp, 8, 1, 15));
    CHECK(query_positions_moves(qp, msg, sizeof(msg) - 1, &mapped));
    CHECK_INT(mapped, 26);
    struct msg_out out;
    codec_out_init(&out);
    query_positions_put(&out, msg, sizeof(msg) - 1, mapped);
    static const uint8_t want[] = "E\0\0\0\x19"
                                  "SERROR\0C42P01\0P26\0Mx\0";
    CHECK_INT(out.len, sizeof(want) - 1);
    CHECK(out.len == sizeof(want) - 1 && memcmp(out.data, want, out.len) == 0);
    codec_out_free(&out);
    free(qp);
    return CHECK_DONE();
}
