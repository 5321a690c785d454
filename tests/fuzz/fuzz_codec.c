/* fuzz_codec: libFuzzer target for codec.c. The input is read two ways: as a stream of typed
 * messages (each body parsed as ErrorResponse fields and as ParameterStatus), and as one
 * startup-phase packet. Beyond "no crash", it checks that every pointer a parser returns lies
 * inside what it was given, and that whatever parses cleanly is rebuilt byte for byte by the
 * matching builder. Built and run by scripts/fuzz. */
#include "codec.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fuzz_check.h"

/* Small, so hostile lengths are hit often and bodies stay cheap. */
#define FUZZ_MAX_BODY 256

/* A copy in a block of exactly n bytes, so reading one byte past it trips ASan. */
static uint8_t *exact_copy(const uint8_t *p, size_t n)
{
    uint8_t *d = malloc(n ? n : 1);
    if (!d)
        abort();
    if (n)
        memcpy(d, p, n);
    return d;
}

/* s is NULL or a NUL-terminated string wholly inside [base, base + len). */
static int inside(const char *s, const uint8_t *base, size_t len)
{
    if (!s)
        return 1;
    const uint8_t *u = (const uint8_t *)s;
    return u >= base && u < base + len && memchr(u, 0, (size_t)(base + len - u)) != NULL;
}

static int same_str(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

static void check_error_body(const uint8_t *body, size_t len)
{
    struct error_fields ef;
    if (!codec_parse_error(body, len, &ef))
        return;
    FUZZ_ASSERT(inside(ef.severity, body, len));
    FUZZ_ASSERT(inside(ef.sqlstate, body, len));
    FUZZ_ASSERT(inside(ef.message, body, len));

    /* What we parse out must survive our own builder and parser unchanged. */
    struct msg_out o;
    codec_out_init(&o);
    codec_put_error(&o, 'E', ef.severity, ef.sqlstate, ef.message, NULL, NULL);
    if (!o.oom) {
        uint8_t t;
        uint32_t blen;
        FUZZ_ASSERT(codec_frame_header(o.data, o.len, UINT32_MAX - 4, &t, &blen) == FRAME_OK);
        FUZZ_ASSERT(t == 'E' && blen + CODEC_HEADER_LEN == o.len);
        struct error_fields again;
        FUZZ_ASSERT(codec_parse_error(o.data + CODEC_HEADER_LEN, blen, &again));
        FUZZ_ASSERT(same_str(again.severity, ef.severity));
        FUZZ_ASSERT(same_str(again.sqlstate, ef.sqlstate));
        FUZZ_ASSERT(same_str(again.message, ef.message));
    }
    codec_out_free(&o);
}

static void check_parameter_status_body(const uint8_t *body, size_t len)
{
    const char *name, *value;
    if (!codec_parse_parameter_status(body, len, &name, &value))
        return;
    FUZZ_ASSERT(name && value);
    FUZZ_ASSERT(inside(name, body, len) && inside(value, body, len));

    /* Two strings and nothing else: the builder reproduces the body exactly. */
    struct msg_out o;
    codec_out_init(&o);
    codec_put_parameter_status(&o, name, value);
    if (!o.oom) {
        FUZZ_ASSERT(o.len == CODEC_HEADER_LEN + len);
        FUZZ_ASSERT(memcmp(o.data + CODEC_HEADER_LEN, body, len) == 0);
    }
    codec_out_free(&o);
}

static void fuzz_message_stream(const uint8_t *data, size_t size)
{
    size_t pos = 0;
    for (;;) {
        uint8_t type = 0;
        uint32_t body_len = 0;
        enum frame_result fr =
            codec_frame_header(data + pos, size - pos, FUZZ_MAX_BODY, &type, &body_len);
        if (fr != FRAME_OK) {
            FUZZ_ASSERT(fr == FRAME_BAD_LENGTH || size - pos < CODEC_HEADER_LEN);
            return;
        }
        FUZZ_ASSERT(body_len <= FUZZ_MAX_BODY);
        if (size - pos - CODEC_HEADER_LEN < body_len)
            return; /* the rest has not "arrived" */
        uint8_t *body = exact_copy(data + pos + CODEC_HEADER_LEN, body_len);
        check_error_body(body, body_len);
        check_parameter_status_body(body, body_len);
        free(body);
        pos += CODEC_HEADER_LEN + body_len;
    }
}

static void check_startup(const uint8_t *p, uint32_t total)
{
    struct startup_packet s;
    codec_parse_startup(p, total, &s);
    /* each pair takes at least three bytes: a one-byte name, its NUL, the value's NUL */
    FUZZ_ASSERT(s.nparams >= 0 && (uint32_t)s.nparams <= total / 3);
    switch (s.kind) {
    case STARTUP_SSL_REQUEST:
    case STARTUP_GSSENC_REQUEST:
        /* known by its code alone, whatever follows it, as Postgres knows it */
        FUZZ_ASSERT(total >= CODEC_STARTUP_HEADER_LEN);
        break;
    case STARTUP_CANCEL:
        FUZZ_ASSERT(total == 16 && s.code == CODEC_CANCEL_CODE);
        break;
    case STARTUP_V3: {
        FUZZ_ASSERT(s.code >> 16 == CODEC_PROTOCOL_3_0 >> 16); /* 3.x: the login negotiates 3.0 */
        static const char *names[CODEC_MAX_STARTUP_LEN / 3];
        static const char *values[CODEC_MAX_STARTUP_LEN / 3];
        int n = 0;
        for (struct startup_param at = {0}; codec_startup_next(&s, &at); n++) {
            FUZZ_ASSERT(n < s.nparams);
            FUZZ_ASSERT(inside(at.name, p, total));
            FUZZ_ASSERT(inside(at.value, p, total));
            FUZZ_ASSERT(at.name[0] != '\0');
            names[n] = at.name;
            values[n] = at.value;
        }
        FUZZ_ASSERT(n == s.nparams);
        if (n > 0)
            FUZZ_ASSERT(codec_startup_get(&s, names[0]) != NULL);
        /* A v3 packet that parses is exactly what the client-side builder makes from its
         * parameters, apart from the length word, which the caller framed (not us), and the
         * minor version (the builder's is 0). */
        struct msg_out o;
        codec_out_init(&o);
        codec_put_startup(&o, names, values, s.nparams);
        if (!o.oom) {
            FUZZ_ASSERT(o.len == total);
            FUZZ_ASSERT(memcmp(o.data + 8, p + 8, total - 8) == 0);
        }
        codec_out_free(&o);
        break;
    }
    case STARTUP_BAD_PROTOCOL:
    case STARTUP_MALFORMED:
        break;
    default:
        FUZZ_ASSERT(!"unknown startup kind");
    }
}

static void fuzz_startup(const uint8_t *data, size_t size)
{
    uint32_t total = 0;
    enum frame_result fr = codec_frame_startup(data, size, &total);
    if (fr == FRAME_OK) {
        FUZZ_ASSERT(total >= CODEC_STARTUP_HEADER_LEN && total <= CODEC_MAX_STARTUP_LEN);
        if (total <= size)
            check_startup(data, total);
    }
    /* Also the whole input as one packet whatever its length word says: the parser must rely on
     * total_len alone. */
    if (size <= CODEC_MAX_STARTUP_LEN)
        check_startup(data, (uint32_t)size);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* libFuzzer's buffer is exactly size bytes, so over-reads of the input are caught too. */
    fuzz_message_stream(data, size);
    fuzz_startup(data, size);
    return 0;
}
