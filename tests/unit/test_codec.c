/* test_codec: the wire codec on its own. Every message of a mixed stream must come out whole
 * however the bytes are split; hostile lengths and malformed startup packets must be refused; the
 * builders must produce exactly the bytes the protocol docs (section 55.7) describe. Inputs are
 * copied into exact-size heap buffers so ASan catches any read past what a caller handed over. */
#include "codec.h"

#include "check.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ---- */

/* A copy of n bytes in a heap block of exactly n bytes (at least 1 so malloc never returns NULL
 * for a valid request): any over-read trips ASan. */
static uint8_t *exact_copy(const void *p, size_t n)
{
    uint8_t *d = malloc(n ? n : 1);
    if (!d) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    if (n)
        memcpy(d, p, n);
    return d;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* Append a hand-built typed message: type, int32 length (counting itself), body. */
static void raw_message(struct msg_out *o, uint8_t type, const void *body, size_t len)
{
    uint8_t hdr[5];
    hdr[0] = type;
    put_be32(hdr + 1, (uint32_t)(len + 4));
    codec_put_bytes(o, hdr, sizeof(hdr));
    codec_put_bytes(o, body, len);
}

/* Where each message of a built stream sits, recorded while building it, independently of the
 * length words the codec wrote. */
#define MAX_EXPECTED 64
struct expected {
    size_t start[MAX_EXPECTED];
    size_t end[MAX_EXPECTED];
    int n;
};

static void mark_start(struct expected *e, const struct msg_out *o)
{
    e->start[e->n] = o->len;
}

static void mark_end(struct expected *e, const struct msg_out *o)
{
    e->end[e->n] = o->len;
    e->n++;
}

/* The receiving side of a connection, cut down to framing: bytes arrive in arbitrary chunks,
 * whole messages come out. The pending bytes always sit in a block of exactly their size. */
#define MAX_GOT 64
struct framer {
    uint8_t *pending;
    size_t npending;
    uint32_t max_body;
    bool bad;
    int ngot;
    uint8_t got_type[MAX_GOT];
    uint8_t *got_body[MAX_GOT];
    uint32_t got_len[MAX_GOT];
};

static void framer_init(struct framer *f, uint32_t max_body)
{
    memset(f, 0, sizeof(*f));
    f->max_body = max_body;
}

static void framer_free(struct framer *f)
{
    free(f->pending);
    for (int i = 0; i < f->ngot; i++)
        free(f->got_body[i]);
    memset(f, 0, sizeof(*f));
}

static void framer_feed(struct framer *f, const uint8_t *p, size_t n)
{
    if (f->bad)
        return;
    uint8_t *buf = malloc(f->npending + n ? f->npending + n : 1);
    if (!buf)
        exit(2);
    if (f->npending)
        memcpy(buf, f->pending, f->npending);
    if (n)
        memcpy(buf + f->npending, p, n);
    free(f->pending);
    f->pending = buf;
    f->npending += n;

    size_t pos = 0;
    for (;;) {
        uint8_t type = 0;
        uint32_t body_len = 0;
        enum frame_result fr =
            codec_frame_header(f->pending + pos, f->npending - pos, f->max_body, &type, &body_len);
        if (fr == FRAME_NEED_MORE)
            break;
        if (fr == FRAME_BAD_LENGTH) {
            f->bad = true;
            break;
        }
        if (f->npending - pos < CODEC_HEADER_LEN + (size_t)body_len)
            break;
        if (f->ngot < MAX_GOT) {
            f->got_type[f->ngot] = type;
            f->got_body[f->ngot] = exact_copy(f->pending + pos + CODEC_HEADER_LEN, body_len);
            f->got_len[f->ngot] = body_len;
        }
        f->ngot++;
        pos += CODEC_HEADER_LEN + body_len;
    }
    /* Keep only the unconsumed tail, again in a block of exactly its size. */
    size_t left = f->npending - pos;
    uint8_t *rest = exact_copy(f->pending + pos, left);
    free(f->pending);
    f->pending = rest;
    f->npending = left;
}

/* Did the framer produce exactly the expected messages and nothing left over? */
static bool framer_matches(const struct framer *f, const uint8_t *stream, const struct expected *e)
{
    if (f->bad || f->ngot != e->n || f->npending != 0)
        return false;
    for (int i = 0; i < e->n; i++) {
        size_t len = e->end[i] - e->start[i] - CODEC_HEADER_LEN;
        if (f->got_type[i] != stream[e->start[i]] || f->got_len[i] != len)
            return false;
        if (len && memcmp(f->got_body[i], stream + e->start[i] + CODEC_HEADER_LEN, len) != 0)
            return false;
    }
    return true;
}

/* A stream with every message kind sluice builds plus hand-built client messages: empty bodies,
 * bodies full of zero and 0xff bytes, and one larger than the builder's first allocation. */
static void build_mixed_stream(struct msg_out *o, struct expected *e)
{
    memset(e, 0, sizeof(*e));

    mark_start(e, o);
    codec_put_auth_request(o, 0, NULL, 0); /* AuthenticationOk */
    mark_end(e, o);

    static const char sasl[] = "SCRAM-SHA-256\0"; /* mechanism list: name, then empty name */
    mark_start(e, o);
    codec_put_auth_request(o, 10, sasl, sizeof(sasl));
    mark_end(e, o);

    mark_start(e, o);
    codec_put_parameter_status(o, "server_version", "16.2");
    mark_end(e, o);

    mark_start(e, o);
    codec_put_parameter_status(o, "application_name", "");
    mark_end(e, o);

    mark_start(e, o);
    codec_put_backend_key(o, 0x80000001u, 0xdeadbeefu);
    mark_end(e, o);

    mark_start(e, o);
    codec_put_ready(o, 'I');
    mark_end(e, o);

    mark_start(e, o);
    codec_put_query(o, "select 1; select 'two'");
    mark_end(e, o);

    /* Parse: statement name, query, one parameter type (int4 = 23). */
    static const uint8_t parse[] = "s1\0select $1::int\0\0\x01\0\0\0\x17";
    mark_start(e, o);
    raw_message(o, 'P', parse, sizeof(parse) - 1);
    mark_end(e, o);

    /* Bind: portal "", statement s1, no formats, one parameter "42", no result formats. */
    static const uint8_t bind[] = "\0s1\0\0\0\0\x01\0\0\0\x02"
                                  "42\0\0";
    mark_start(e, o);
    raw_message(o, 'B', bind, sizeof(bind) - 1);
    mark_end(e, o);

    static const uint8_t describe[] = "P\0";
    mark_start(e, o);
    raw_message(o, 'D', describe, sizeof(describe) - 1);
    mark_end(e, o);

    static const uint8_t execute[] = "\0\0\0\0\0";
    mark_start(e, o);
    raw_message(o, 'E', execute, sizeof(execute) - 1);
    mark_end(e, o);

    mark_start(e, o); /* Sync: empty body */
    raw_message(o, 'S', NULL, 0);
    mark_end(e, o);

    mark_start(e, o); /* Flush: empty body */
    raw_message(o, 'H', NULL, 0);
    mark_end(e, o);

    uint8_t copy[300];
    for (size_t i = 0; i < sizeof(copy); i++)
        copy[i] = (uint8_t)(i % 3 == 0 ? 0 : i % 3 == 1 ? 0xff : i);
    mark_start(e, o);
    raw_message(o, 'd', copy, sizeof(copy));
    mark_end(e, o);

    mark_start(e, o);
    codec_put_error(o, 'E', "FATAL", "53300", "pool is full", "20 of 20 busy", NULL);
    mark_end(e, o);

    mark_start(e, o);
    codec_put_error(o, 'N', "NOTICE", "00000", "hello", NULL, "a hint");
    mark_end(e, o);

    mark_start(e, o);
    codec_put_ready(o, 'T');
    mark_end(e, o);

    mark_start(e, o);
    codec_put_terminate(o);
    mark_end(e, o);
}

static struct startup_packet parse_startup_copy(const void *p, uint32_t len)
{
    struct startup_packet s;
    uint8_t *copy = exact_copy(p, len);
    codec_parse_startup(copy, len, &s);
    free(copy);
    /* name/value pointers dangle now; callers here only look at kind, code and counts. */
    return s;
}

/* A startup-phase packet from a code and raw payload, length word filled in. */
static size_t startup_raw(uint8_t *buf, uint32_t code, const void *payload, size_t n)
{
    put_be32(buf, (uint32_t)(8 + n));
    put_be32(buf + 4, code);
    if (n)
        memcpy(buf + 8, payload, n);
    return 8 + n;
}

static enum startup_kind startup_kind_of(uint32_t code, const void *payload, size_t n)
{
    uint8_t buf[512];
    size_t len = startup_raw(buf, code, payload, n);
    return parse_startup_copy(buf, (uint32_t)len).kind;
}

/* ---- framing ---- */

static void frame_whole_stream_yields_every_message(void)
{
    struct msg_out o;
    struct expected e;
    codec_out_init(&o);
    build_mixed_stream(&o, &e);
    CHECK(!o.oom);
    CHECK(e.n > 15);

    struct framer f;
    framer_init(&f, 1024);
    framer_feed(&f, o.data, o.len);
    CHECK(framer_matches(&f, o.data, &e));
    CHECK_INT(f.ngot, e.n);
    CHECK_INT(f.got_type[0], 'R');
    CHECK_INT(f.got_type[e.n - 1], 'X');
    CHECK_INT(f.got_len[e.n - 1], 0);
    framer_free(&f);
    codec_out_free(&o);
}

static void frame_split_at_every_offset_yields_same_messages(void)
{
    struct msg_out o;
    struct expected e;
    codec_out_init(&o);
    build_mixed_stream(&o, &e);

    int mismatches = 0;
    for (size_t k = 0; k <= o.len; k++) {
        struct framer f;
        framer_init(&f, 1024);
        framer_feed(&f, o.data, k);
        framer_feed(&f, o.data + k, o.len - k);
        if (!framer_matches(&f, o.data, &e)) {
            if (mismatches++ < 5)
                fprintf(stderr, "  split at %zu: wrong messages\n", k);
        }
        framer_free(&f);
    }
    CHECK_INT(mismatches, 0);
    codec_out_free(&o);
}

static void frame_split_at_every_pair_of_offsets_yields_same_messages(void)
{
    struct msg_out o;
    struct expected e;
    codec_out_init(&o);
    build_mixed_stream(&o, &e);

    /* Three chunks, the first two cuts at every pair of offsets up to the first 64 bytes, which
     * covers cuts inside a header, between headers and across several messages at once. */
    int mismatches = 0;
    size_t lim = o.len < 64 ? o.len : 64;
    for (size_t a = 0; a <= lim; a++) {
        for (size_t b = a; b <= o.len; b += 7) {
            struct framer f;
            framer_init(&f, 1024);
            framer_feed(&f, o.data, a);
            framer_feed(&f, o.data + a, b - a);
            framer_feed(&f, o.data + b, o.len - b);
            if (!framer_matches(&f, o.data, &e) && mismatches++ < 5)
                fprintf(stderr, "  split at %zu,%zu: wrong messages\n", a, b);
            framer_free(&f);
        }
    }
    CHECK_INT(mismatches, 0);
    codec_out_free(&o);
}

static void frame_byte_by_byte_yields_same_messages(void)
{
    struct msg_out o;
    struct expected e;
    codec_out_init(&o);
    build_mixed_stream(&o, &e);

    struct framer f;
    framer_init(&f, 1024);
    int seen_before_last_byte = 0;
    for (size_t i = 0; i < o.len; i++) {
        framer_feed(&f, o.data + i, 1);
        if (i + 1 < o.len)
            seen_before_last_byte = f.ngot;
    }
    CHECK(framer_matches(&f, o.data, &e));
    /* The terminate message is complete only with the final byte. */
    CHECK_INT(seen_before_last_byte, e.n - 1);
    framer_free(&f);
    codec_out_free(&o);
}

static void frame_header_with_fewer_than_5_bytes_needs_more(void)
{
    /* Even bytes whose length field would be hostile: nothing is judged from a partial header. */
    static const uint8_t hdrs[][5] = {
        {'Q', 0, 0, 0, 9},
        {'Q', 0x7f, 0xff, 0xff, 0xff},
        {'Q', 0, 0, 0, 0},
    };
    for (size_t h = 0; h < sizeof(hdrs) / sizeof(hdrs[0]); h++) {
        for (size_t avail = 0; avail < CODEC_HEADER_LEN; avail++) {
            uint8_t *p = exact_copy(hdrs[h], avail);
            uint8_t type = 0;
            uint32_t body_len = 0;
            CHECK_INT(codec_frame_header(p, avail, 1024, &type, &body_len), FRAME_NEED_MORE);
            free(p);
        }
    }
}

static enum frame_result frame_len(uint32_t len, uint32_t max_body, uint32_t *body_len)
{
    uint8_t hdr[5] = {'d', 0, 0, 0, 0};
    put_be32(hdr + 1, len);
    uint8_t *p = exact_copy(hdr, sizeof(hdr));
    uint8_t type = 0;
    *body_len = 0xabababab;
    enum frame_result fr = codec_frame_header(p, sizeof(hdr), max_body, &type, body_len);
    if (fr == FRAME_OK)
        CHECK_INT(type, 'd');
    free(p);
    return fr;
}

static void frame_header_hostile_lengths_are_bad(void)
{
    uint32_t body_len;
    CHECK_INT(frame_len(0, 1024, &body_len), FRAME_BAD_LENGTH);
    CHECK_INT(frame_len(1, 1024, &body_len), FRAME_BAD_LENGTH);
    CHECK_INT(frame_len(3, 1024, &body_len), FRAME_BAD_LENGTH);
    CHECK_INT(frame_len(0x7fffffffu, 1024, &body_len), FRAME_BAD_LENGTH);
    CHECK_INT(frame_len(0x80000000u, 1024, &body_len), FRAME_BAD_LENGTH);
    CHECK_INT(frame_len(0xffffffffu, 1024, &body_len), FRAME_BAD_LENGTH);
    CHECK_INT(frame_len(1024 + 5, 1024, &body_len), FRAME_BAD_LENGTH);
    /* Even with the largest max_body, lengths below 4 are refused, not wrapped around. */
    CHECK_INT(frame_len(0, UINT32_MAX, &body_len), FRAME_BAD_LENGTH);
    CHECK_INT(frame_len(3, UINT32_MAX, &body_len), FRAME_BAD_LENGTH);
}

static void frame_header_lengths_at_the_limits_are_ok(void)
{
    uint32_t body_len;
    CHECK_INT(frame_len(4, 1024, &body_len), FRAME_OK);
    CHECK_INT(body_len, 0);
    CHECK_INT(frame_len(5, 1024, &body_len), FRAME_OK);
    CHECK_INT(body_len, 1);
    CHECK_INT(frame_len(1024 + 4, 1024, &body_len), FRAME_OK);
    CHECK_INT(body_len, 1024);
    CHECK_INT(frame_len(4, 0, &body_len), FRAME_OK);
    CHECK_INT(body_len, 0);
    CHECK_INT(frame_len(5, 0, &body_len), FRAME_BAD_LENGTH);
    CHECK_INT(frame_len(0xffffffffu, UINT32_MAX, &body_len), FRAME_OK);
    CHECK_INT(body_len, 0xfffffffbu);
}

static void frame_stream_stops_at_a_bad_length_after_good_messages(void)
{
    struct msg_out o;
    codec_out_init(&o);
    codec_put_query(&o, "select 1");
    codec_put_ready(&o, 'I');
    static const uint8_t hostile[] = {'Q', 0x7f, 0xff, 0xff, 0xff, 's', 'e'};
    codec_put_bytes(&o, hostile, sizeof(hostile));

    for (size_t k = 0; k <= o.len; k++) {
        struct framer f;
        framer_init(&f, 1 << 20);
        framer_feed(&f, o.data, k);
        framer_feed(&f, o.data + k, o.len - k);
        CHECK(f.bad);
        CHECK_INT(f.ngot, 2);
        framer_free(&f);
    }
    codec_out_free(&o);
}

static void frame_body_above_max_body_is_bad_before_it_arrives(void)
{
    /* A 2000-byte body against max_body 1000: refused from the header alone. */
    uint8_t hdr[5] = {'d'};
    put_be32(hdr + 1, 2004);
    struct framer f;
    framer_init(&f, 1000);
    framer_feed(&f, hdr, sizeof(hdr));
    CHECK(f.bad);
    CHECK_INT(f.ngot, 0);
    framer_free(&f);
}

/* ---- startup packets ---- */

static void startup_v3_params_are_found_by_name(void)
{
    static const char *const names[] = {"user", "database", "application_name", "options"};
    static const char *const values[] = {"alice", "orders", "", "-c search_path=app,public"};
    struct msg_out o;
    codec_out_init(&o);
    codec_put_startup(&o, names, values, 4);
    CHECK(!o.oom);

    uint32_t total = 0;
    CHECK_INT(codec_frame_startup(o.data, o.len, &total), FRAME_OK);
    CHECK_INT(total, o.len);

    uint8_t *p = exact_copy(o.data, o.len);
    struct startup_packet s;
    codec_parse_startup(p, total, &s);
    CHECK_INT(s.kind, STARTUP_V3);
    CHECK_INT(s.code, CODEC_PROTOCOL_3_0);
    CHECK_INT(s.nparams, 4);
    CHECK_STR(codec_startup_get(&s, "user"), "alice");
    CHECK_STR(codec_startup_get(&s, "database"), "orders");
    CHECK_STR(codec_startup_get(&s, "application_name"), "");
    CHECK_STR(codec_startup_get(&s, "options"), "-c search_path=app,public");
    CHECK(codec_startup_get(&s, "replication") == NULL);
    CHECK(codec_startup_get(&s, "USER") == NULL);
    /* Pointers are into the packet itself. */
    struct startup_param at = {0};
    int seen = 0;
    while (codec_startup_next(&s, &at)) {
        CHECK((const uint8_t *)at.name > p && (const uint8_t *)at.value < p + total);
        seen++;
    }
    CHECK_INT(seen, 4);
    free(p);
    codec_out_free(&o);
}

/* A TLS ClientHello where a startup packet was expected: a bad length, told apart by its record
 * header; a startup packet (length word first, under 10005) never starts 0x16 0x03. */
static void tls_client_hello_is_told_apart_from_a_startup_packet(void)
{
    static const uint8_t hello[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01};
    uint32_t total = 0;
    CHECK_INT(codec_frame_startup(hello, sizeof(hello), &total), FRAME_BAD_LENGTH);
    CHECK(codec_starts_tls_handshake(hello, sizeof(hello)));
    CHECK(!codec_starts_tls_handshake(hello, 1));
    static const uint8_t ssl_request[] = {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f};
    CHECK(!codec_starts_tls_handshake(ssl_request, sizeof(ssl_request)));
}

static void startup_v3_hand_built_bytes_parse(void)
{
    static const uint8_t pkt[] = "\0\0\0\x1e"
                                 "\0\x03\0\0"
                                 "user\0bob\0database\0db\0\0";
    uint32_t total = 0;
    CHECK_INT(codec_frame_startup(pkt, sizeof(pkt) - 1, &total), FRAME_OK);
    CHECK_INT(total, sizeof(pkt) - 1);
    uint8_t *p = exact_copy(pkt, total);
    struct startup_packet s;
    codec_parse_startup(p, total, &s);
    CHECK_INT(s.kind, STARTUP_V3);
    CHECK_INT(s.nparams, 2);
    CHECK_STR(codec_startup_get(&s, "user"), "bob");
    CHECK_STR(codec_startup_get(&s, "database"), "db");
    free(p);
}

static void startup_v3_without_params_is_v3(void)
{
    CHECK_INT(startup_kind_of(CODEC_PROTOCOL_3_0, "", 1), STARTUP_V3);
    uint8_t buf[16];
    size_t len = startup_raw(buf, CODEC_PROTOCOL_3_0, "", 1);
    struct startup_packet s = parse_startup_copy(buf, (uint32_t)len);
    CHECK_INT(s.nparams, 0);
}

static void startup_ssl_request_is_recognised(void)
{
    static const uint8_t pkt[] = {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f};
    uint32_t total = 0;
    CHECK_INT(codec_frame_startup(pkt, sizeof(pkt), &total), FRAME_OK);
    CHECK_INT(total, 8);
    struct startup_packet s = parse_startup_copy(pkt, total);
    CHECK_INT(s.kind, STARTUP_SSL_REQUEST);
    CHECK_INT(s.code, CODEC_SSL_CODE);
    CHECK_INT(s.nparams, 0);
}

static void startup_gssenc_request_is_recognised(void)
{
    static const uint8_t pkt[] = {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30};
    struct startup_packet s = parse_startup_copy(pkt, sizeof(pkt));
    CHECK_INT(s.kind, STARTUP_GSSENC_REQUEST);
    CHECK_INT(s.code, CODEC_GSSENC_CODE);
}

static void startup_cancel_request_carries_pid_and_key(void)
{
    static const uint8_t pkt[] = {0,    0,    0,    16,   0x04, 0xd2, 0x16, 0x2e,
                                  0x80, 0x00, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef};
    uint32_t total = 0;
    CHECK_INT(codec_frame_startup(pkt, sizeof(pkt), &total), FRAME_OK);
    CHECK_INT(total, 16);
    struct startup_packet s = parse_startup_copy(pkt, total);
    CHECK_INT(s.kind, STARTUP_CANCEL);
    CHECK_INT(s.code, CODEC_CANCEL_CODE);
    CHECK_INT(s.cancel_pid, 0x80000001u);
    CHECK_INT(s.cancel_key, 0xdeadbeefu);
}

static void startup_protocol_2_and_4_are_bad_protocol_3_1_is_3(void)
{
    static const char params[] = "user\0bob\0";
    struct startup_packet s;
    uint8_t buf[64];
    size_t len = startup_raw(buf, 0x00020000u, params, sizeof(params));
    s = parse_startup_copy(buf, (uint32_t)len);
    CHECK_INT(s.kind, STARTUP_BAD_PROTOCOL);
    CHECK_INT(s.code, 0x00020000u);

    /* 3.1, 3.2: read as 3.0, which the login answers with NegotiateProtocolVersion */
    len = startup_raw(buf, 0x00030001u, params, sizeof(params));
    s = parse_startup_copy(buf, (uint32_t)len);
    CHECK_INT(s.kind, STARTUP_V3);
    CHECK_INT(s.code, 0x00030001u);
    CHECK_INT(s.nparams, 1);
    CHECK_INT(startup_kind_of(0x00030002u, params, sizeof(params)), STARTUP_V3);

    CHECK_INT(startup_kind_of(0x00040000u, params, sizeof(params)), STARTUP_BAD_PROTOCOL);
    CHECK_INT(startup_kind_of(0, NULL, 0), STARTUP_BAD_PROTOCOL);
    /* A neighbour of the special request codes is not one of them. */
    CHECK_INT(startup_kind_of(CODEC_GSSENC_CODE + 1, NULL, 0), STARTUP_BAD_PROTOCOL);
    CHECK_INT(startup_kind_of(CODEC_CANCEL_CODE - 1, NULL, 0), STARTUP_BAD_PROTOCOL);
}

static void startup_requests_are_known_by_code_and_a_cancel_by_its_length(void)
{
    static const uint8_t extra[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    /* Postgres answers an SSLRequest or GSSENCRequest by its code alone, whatever follows it;
     * only a CancelRequest must have its length. */
    CHECK_INT(startup_kind_of(CODEC_SSL_CODE, extra, 4), STARTUP_SSL_REQUEST);
    CHECK_INT(startup_kind_of(CODEC_SSL_CODE, extra, 1), STARTUP_SSL_REQUEST);
    CHECK_INT(startup_kind_of(CODEC_GSSENC_CODE, extra, 4), STARTUP_GSSENC_REQUEST);
    CHECK_INT(startup_kind_of(CODEC_CANCEL_CODE, NULL, 0), STARTUP_MALFORMED);
    CHECK_INT(startup_kind_of(CODEC_CANCEL_CODE, extra, 4), STARTUP_MALFORMED);
    CHECK_INT(startup_kind_of(CODEC_CANCEL_CODE, extra, 7), STARTUP_MALFORMED);
    uint8_t longer[12] = {0};
    CHECK_INT(startup_kind_of(CODEC_CANCEL_CODE, longer, sizeof(longer)), STARTUP_MALFORMED);
    CHECK_INT(startup_kind_of(CODEC_CANCEL_CODE, extra, 8), STARTUP_CANCEL);
}

static void startup_unterminated_or_unfinished_lists_are_malformed(void)
{
    /* Name without NUL. */
    CHECK_INT(startup_kind_of(CODEC_PROTOCOL_3_0, "user", 4), STARTUP_MALFORMED);
    /* Value without NUL. */
    CHECK_INT(startup_kind_of(CODEC_PROTOCOL_3_0, "user\0bo", 7), STARTUP_MALFORMED);
    /* Name with no value at all. */
    CHECK_INT(startup_kind_of(CODEC_PROTOCOL_3_0, "user\0", 5), STARTUP_MALFORMED);
    /* Complete pair but no final NUL. */
    CHECK_INT(startup_kind_of(CODEC_PROTOCOL_3_0, "user\0bob\0", 9), STARTUP_MALFORMED);
    /* Nothing after the version at all. */
    CHECK_INT(startup_kind_of(CODEC_PROTOCOL_3_0, NULL, 0), STARTUP_MALFORMED);
}

static void startup_trailing_bytes_after_final_nul_are_malformed(void)
{
    CHECK_INT(startup_kind_of(CODEC_PROTOCOL_3_0, "user\0bob\0\0X", 11), STARTUP_MALFORMED);
    CHECK_INT(startup_kind_of(CODEC_PROTOCOL_3_0, "user\0bob\0\0\0", 11), STARTUP_MALFORMED);
    CHECK_INT(startup_kind_of(CODEC_PROTOCOL_3_0, "\0\0", 2), STARTUP_MALFORMED);
}

static void startup_truncated_at_any_length_is_malformed(void)
{
    static const char *const names[] = {"user", "database"};
    static const char *const values[] = {"alice", "orders"};
    struct msg_out o;
    codec_out_init(&o);
    codec_put_startup(&o, names, values, 2);
    int wrong = 0;
    for (uint32_t n = 0; n < o.len; n++) {
        /* The length word claims n as the caller would after framing a shorter packet. */
        uint8_t *p = exact_copy(o.data, n);
        if (n >= 4)
            put_be32(p, n);
        struct startup_packet s;
        codec_parse_startup(p, n, &s);
        if (s.kind != STARTUP_MALFORMED && wrong++ < 5)
            fprintf(stderr, "  truncated to %u: kind %d\n", n, (int)s.kind);
        free(p);
    }
    CHECK_INT(wrong, 0);
    codec_out_free(&o);
}

/* Postgres takes any number of parameters within MAX_STARTUP_PACKET_LENGTH (10000 bytes): the
 * most that fit, each name and value one byte, all kept in order. */
static void startup_params_as_many_as_the_packet_holds_are_kept(void)
{
    enum { MOST = (CODEC_MAX_STARTUP_LEN - 9) / 4 };
    static char names[MOST][8];
    static const char *np[MOST];
    for (int i = 0; i < MOST; i++) {
        names[i][0] = (char)('a' + i % 26);
        names[i][1] = '\0';
        np[i] = names[i];
    }
    struct msg_out o;
    codec_out_init(&o);
    codec_put_startup(&o, np, np, MOST);
    CHECK(o.len <= CODEC_MAX_STARTUP_LEN);
    uint8_t *p = exact_copy(o.data, o.len);
    struct startup_packet s;
    codec_parse_startup(p, (uint32_t)o.len, &s);
    CHECK_INT(s.kind, STARTUP_V3);
    CHECK_INT(s.nparams, MOST);
    struct startup_param at = {0};
    int i = 0;
    while (codec_startup_next(&s, &at)) {
        CHECK(i < MOST && strcmp(at.name, names[i]) == 0 && strcmp(at.value, names[i]) == 0);
        i++;
    }
    CHECK_INT(i, MOST);
    CHECK_STR(codec_startup_get(&s, "z"), "z");
    free(p);
    codec_out_free(&o);
}

static enum frame_result frame_startup_len(uint32_t len, uint32_t *total)
{
    uint8_t hdr[4];
    put_be32(hdr, len);
    uint8_t *p = exact_copy(hdr, sizeof(hdr));
    *total = 0;
    enum frame_result fr = codec_frame_startup(p, sizeof(hdr), total);
    free(p);
    return fr;
}

static void frame_startup_enforces_length_limits(void)
{
    uint32_t total;
    CHECK_INT(frame_startup_len(0, &total), FRAME_BAD_LENGTH);
    CHECK_INT(frame_startup_len(4, &total), FRAME_BAD_LENGTH);
    CHECK_INT(frame_startup_len(7, &total), FRAME_BAD_LENGTH);
    CHECK_INT(frame_startup_len(8, &total), FRAME_OK);
    CHECK_INT(total, 8);
    CHECK_INT(frame_startup_len(CODEC_MAX_STARTUP_LEN, &total), FRAME_OK);
    CHECK_INT(total, CODEC_MAX_STARTUP_LEN);
    CHECK_INT(frame_startup_len(CODEC_MAX_STARTUP_LEN + 1, &total), FRAME_BAD_LENGTH);
    CHECK_INT(frame_startup_len(0x7fffffffu, &total), FRAME_BAD_LENGTH);
    CHECK_INT(frame_startup_len(0xffffffffu, &total), FRAME_BAD_LENGTH);
    /* An HTTP request sent to the pooler port: "GET " is a huge length. */
    CHECK_INT(frame_startup_len(get_be32((const uint8_t *)"GET "), &total), FRAME_BAD_LENGTH);
}

static void frame_startup_with_fewer_than_4_bytes_needs_more(void)
{
    static const uint8_t pkt[] = {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f};
    for (size_t avail = 0; avail < 4; avail++) {
        uint8_t *p = exact_copy(pkt, avail);
        uint32_t total = 0;
        CHECK_INT(codec_frame_startup(p, avail, &total), FRAME_NEED_MORE);
        free(p);
    }
}

static void parse_startup_below_header_length_is_malformed(void)
{
    static const uint8_t pkt[] = {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f};
    for (uint32_t n = 0; n < CODEC_STARTUP_HEADER_LEN; n++) {
        struct startup_packet s = parse_startup_copy(pkt, n);
        CHECK_INT(s.kind, STARTUP_MALFORMED);
    }
}

/* ---- msg_reader ---- */

static void reader_reads_big_endian_fields_in_order(void)
{
    static const uint8_t body[] = {0x7f, 0xff, 0xfe, 0x80, 0x00, 0x00, 0x00,
                                   'h',  'i',  0,    0,    0xaa, 0xbb};
    uint8_t *p = exact_copy(body, sizeof(body));
    struct msg_reader r;
    codec_reader_init(&r, p, sizeof(body));
    CHECK_INT(codec_reader_left(&r), sizeof(body));
    CHECK_INT(codec_read_u8(&r), 0x7f);
    CHECK_INT(codec_read_i16(&r), -2);
    CHECK_INT(codec_read_i32(&r), INT32_MIN);
    CHECK_STR(codec_read_cstring(&r), "hi");
    CHECK_STR(codec_read_cstring(&r), "");
    const uint8_t *b = codec_read_bytes(&r, 2);
    CHECK(b == p + 11);
    CHECK_INT(codec_reader_left(&r), 0);
    CHECK(!r.bad);
    free(p);
}

static void reader_past_end_sets_bad_and_returns_zero(void)
{
    static const uint8_t body[] = {1, 2, 3};
    uint8_t *p = exact_copy(body, sizeof(body));
    struct msg_reader r;

    codec_reader_init(&r, p, sizeof(body));
    CHECK_INT(codec_read_i32(&r), 0);
    CHECK(r.bad);

    codec_reader_init(&r, p, sizeof(body));
    CHECK_INT(codec_read_i16(&r), 0x0102);
    CHECK_INT(codec_read_i16(&r), 0);
    CHECK(r.bad);
    /* bad stays set: a parser checks once at the end. */
    codec_read_u8(&r);
    CHECK(r.bad);

    codec_reader_init(&r, p, sizeof(body));
    CHECK(codec_read_bytes(&r, 4) == NULL);
    CHECK(r.bad);

    codec_reader_init(&r, p, sizeof(body));
    CHECK(codec_read_bytes(&r, 3) == p);
    CHECK_INT(codec_read_u8(&r), 0);
    CHECK(r.bad);

    codec_reader_init(&r, p, 0);
    CHECK_INT(codec_read_u8(&r), 0);
    CHECK(r.bad);
    codec_reader_init(&r, p, 0);
    CHECK(codec_read_cstring(&r) == NULL);
    CHECK(r.bad);
    codec_reader_init(&r, p, 0);
    CHECK(codec_read_bytes(&r, SIZE_MAX) == NULL);
    CHECK(r.bad);
    free(p);
}

static void reader_cstring_without_nul_is_null_and_bad(void)
{
    static const uint8_t body[] = {'a', 'b', 'c'};
    uint8_t *p = exact_copy(body, sizeof(body));
    struct msg_reader r;
    codec_reader_init(&r, p, sizeof(body));
    CHECK(codec_read_cstring(&r) == NULL);
    CHECK(r.bad);
    free(p);

    /* A NUL just past the reader's end does not count. */
    static const uint8_t body2[] = {'a', 'b', 0};
    p = exact_copy(body2, sizeof(body2));
    codec_reader_init(&r, p, 2);
    CHECK(codec_read_cstring(&r) == NULL);
    CHECK(r.bad);
    free(p);

    /* After one good string, the unterminated second one fails. */
    static const uint8_t body3[] = {'x', 0, 'y', 'z'};
    p = exact_copy(body3, sizeof(body3));
    codec_reader_init(&r, p, sizeof(body3));
    CHECK_STR(codec_read_cstring(&r), "x");
    CHECK(!r.bad);
    CHECK(codec_read_cstring(&r) == NULL);
    CHECK(r.bad);
    free(p);
}

/* ---- builders ---- */

static bool bytes_equal(const struct msg_out *o, const void *want, size_t n)
{
    if (o->oom || o->len != n || memcmp(o->data, want, n) != 0) {
        fprintf(stderr, "  got %u bytes:", o->len);
        for (size_t i = 0; i < o->len && i < 64; i++)
            fprintf(stderr, " %02x", o->data[i]);
        fprintf(stderr, "\n");
        return false;
    }
    return true;
}

static void ready_for_query_bytes_are_exact(void)
{
    struct msg_out o;
    codec_out_init(&o);
    codec_put_ready(&o, 'I');
    CHECK(bytes_equal(&o, "Z\0\0\0\x05I", 6));
    codec_out_reset(&o);
    codec_put_ready(&o, 'E');
    CHECK(bytes_equal(&o, "Z\0\0\0\x05"
                          "E",
                      6));
    codec_out_free(&o);
}

static void backend_key_data_bytes_are_exact(void)
{
    struct msg_out o;
    codec_out_init(&o);
    codec_put_backend_key(&o, 0x80000001u, 0xdeadbeefu);
    static const uint8_t want[] = {'K',  0,    0,    0,    12,   0x80, 0x00,
                                   0x00, 0x01, 0xde, 0xad, 0xbe, 0xef};
    CHECK(bytes_equal(&o, want, sizeof(want)));
    codec_out_free(&o);
}

static void query_and_terminate_bytes_are_exact(void)
{
    struct msg_out o;
    codec_out_init(&o);
    codec_put_query(&o, "select 1");
    CHECK(bytes_equal(&o, "Q\0\0\0\x0dselect 1\0", 14));
    codec_out_reset(&o);
    codec_put_terminate(&o);
    CHECK(bytes_equal(&o, "X\0\0\0\x04", 5));
    codec_out_reset(&o);
    codec_put_query(&o, "");
    CHECK(bytes_equal(&o, "Q\0\0\0\x05\0", 6));
    codec_out_free(&o);
}

static void auth_request_bytes_are_exact(void)
{
    struct msg_out o;
    codec_out_init(&o);
    codec_put_auth_request(&o, 0, NULL, 0);
    CHECK(bytes_equal(&o, "R\0\0\0\x08\0\0\0\0", 9));
    codec_out_reset(&o);
    static const uint8_t salt[4] = {0x01, 0x02, 0x03, 0xff};
    codec_put_auth_request(&o, 5, salt, sizeof(salt)); /* AuthenticationMD5Password */
    CHECK(bytes_equal(&o, "R\0\0\0\x0c\0\0\0\x05\x01\x02\x03\xff", 13));
    codec_out_free(&o);
}

static void parameter_status_round_trips(void)
{
    struct msg_out o;
    codec_out_init(&o);
    codec_put_parameter_status(&o, "client_encoding", "UTF8");
    CHECK(bytes_equal(&o, "S\0\0\0\x19"
                          "client_encoding\0UTF8\0",
                      26));

    uint8_t type = 0;
    uint32_t body_len = 0;
    CHECK_INT(codec_frame_header(o.data, o.len, 1024, &type, &body_len), FRAME_OK);
    CHECK_INT(type, 'S');
    uint8_t *body = exact_copy(o.data + 5, body_len);
    const char *name = NULL, *value = NULL;
    CHECK(codec_parse_parameter_status(body, body_len, &name, &value));
    CHECK_STR(name, "client_encoding");
    CHECK_STR(value, "UTF8");
    free(body);

    codec_out_reset(&o);
    codec_put_parameter_status(&o, "search_path", "");
    CHECK_INT(codec_frame_header(o.data, o.len, 1024, &type, &body_len), FRAME_OK);
    body = exact_copy(o.data + 5, body_len);
    CHECK(codec_parse_parameter_status(body, body_len, &name, &value));
    CHECK_STR(name, "search_path");
    CHECK_STR(value, "");
    free(body);
    codec_out_free(&o);
}

static void error_response_round_trips_through_parse_error(void)
{
    struct msg_out o;
    codec_out_init(&o);
    codec_put_error(&o, 'E', "FATAL", "53300", "pool \"orders/app\" is full", "20 of 20 busy",
                    "raise pool_size");
    uint8_t type = 0;
    uint32_t body_len = 0;
    CHECK_INT(codec_frame_header(o.data, o.len, 4096, &type, &body_len), FRAME_OK);
    CHECK_INT(type, 'E');
    CHECK_INT(body_len + 5, o.len);
    CHECK_INT(o.data[o.len - 1], 0);

    uint8_t *body = exact_copy(o.data + 5, body_len);
    struct error_fields ef;
    CHECK(codec_parse_error(body, body_len, &ef));
    CHECK_STR(ef.severity, "FATAL");
    CHECK_STR(ef.sqlstate, "53300");
    CHECK_STR(ef.message, "pool \"orders/app\" is full");
    free(body);

    /* The body is exactly S, V, C, M, D, H fields and the terminator. */
    static const char want[] = "SFATAL\0VFATAL\0C53300\0Mpool \"orders/app\" is full\0"
                               "D20 of 20 busy\0Hraise pool_size\0";
    CHECK_INT(body_len, sizeof(want));
    CHECK(memcmp(o.data + 5, want, sizeof(want)) == 0);
    codec_out_free(&o);
}

static void notice_without_detail_or_hint_omits_those_fields(void)
{
    struct msg_out o;
    codec_out_init(&o);
    codec_put_error(&o, 'N', "WARNING", "01000", "careful", NULL, NULL);
    static const char want[] = "N\0\0\0\x27SWARNING\0VWARNING\0C01000\0Mcareful\0";
    CHECK(bytes_equal(&o, want, sizeof(want)));

    uint8_t *body = exact_copy(o.data + 5, o.len - 5);
    struct error_fields ef;
    CHECK(codec_parse_error(body, o.len - 5, &ef));
    CHECK_STR(ef.severity, "WARNING");
    CHECK_STR(ef.sqlstate, "01000");
    CHECK_STR(ef.message, "careful");
    free(body);
    codec_out_free(&o);
}

static struct error_fields parse_error_copy(const void *body, size_t len, bool *ok)
{
    uint8_t *p = exact_copy(body, len);
    struct error_fields ef;
    *ok = codec_parse_error(p, len, &ef);
    /* The copy is freed before returning, so the strings are copied out (valid until the next
     * call). */
    static char sev[64], state[64], msg[64];
    struct error_fields out = {0};
    if (*ok) {
        if (ef.severity) {
            snprintf(sev, sizeof(sev), "%s", ef.severity);
            out.severity = sev;
        }
        if (ef.sqlstate) {
            snprintf(state, sizeof(state), "%s", ef.sqlstate);
            out.sqlstate = state;
        }
        if (ef.message) {
            snprintf(msg, sizeof(msg), "%s", ef.message);
            out.message = msg;
        }
    }
    free(p);
    return out;
}

static void parse_error_prefers_v_severity_over_s(void)
{
    bool ok;
    /* Server sends localized S first, then V. */
    static const char s_then_v[] = "SFEHLER\0VERROR\0C42P01\0Mrelation does not exist\0";
    struct error_fields ef = parse_error_copy(s_then_v, sizeof(s_then_v), &ok);
    CHECK(ok);
    CHECK_STR(ef.severity, "ERROR");
    CHECK_STR(ef.sqlstate, "42P01");
    CHECK_STR(ef.message, "relation does not exist");

    /* V first: a later S must not replace it. */
    static const char v_then_s[] = "VERROR\0SFEHLER\0\0";
    ef = parse_error_copy(v_then_s, sizeof(v_then_s), &ok);
    CHECK(ok);
    CHECK_STR(ef.severity, "ERROR");

    /* Only S (servers before 9.6): it is used. */
    static const char s_only[] = "SPANIC\0CXX000\0";
    ef = parse_error_copy(s_only, sizeof(s_only), &ok);
    CHECK(ok);
    CHECK_STR(ef.severity, "PANIC");
    CHECK(ef.message == NULL);
}

static void parse_error_skips_unknown_fields_and_allows_missing_ones(void)
{
    bool ok;
    static const char body[] = "Pfoo\0Wwhere\0Zfuture\0Mmsg\0";
    struct error_fields ef = parse_error_copy(body, sizeof(body), &ok);
    CHECK(ok);
    CHECK(ef.severity == NULL);
    CHECK(ef.sqlstate == NULL);
    CHECK_STR(ef.message, "msg");

    ef = parse_error_copy("", 1, &ok); /* just the terminator */
    CHECK(ok);
    CHECK(ef.severity == NULL && ef.sqlstate == NULL && ef.message == NULL);
}

static void parse_error_on_every_truncation_is_false(void)
{
    struct msg_out o;
    codec_out_init(&o);
    codec_put_error(&o, 'E', "ERROR", "08P01", "bad message", "d", "h");
    const uint8_t *body = o.data + 5;
    size_t len = o.len - 5;
    int wrong = 0;
    for (size_t n = 0; n < len; n++) {
        uint8_t *p = exact_copy(body, n);
        struct error_fields ef;
        if (codec_parse_error(p, n, &ef) && wrong++ < 5)
            fprintf(stderr, "  truncated to %zu parsed as complete\n", n);
        free(p);
    }
    CHECK_INT(wrong, 0);
    codec_out_free(&o);
}

static void parse_error_unterminated_field_is_false(void)
{
    bool ok;
    parse_error_copy("Mno nul", 7, &ok);
    CHECK(!ok);
    parse_error_copy("M", 1, &ok);
    CHECK(!ok);
    parse_error_copy("Mmsg\0", 5, &ok); /* field fine, terminator missing */
    CHECK(!ok);
    parse_error_copy("", 0, &ok);
    CHECK(!ok);
}

static void parse_parameter_status_rejects_bad_bodies(void)
{
    const char *name, *value;
    struct {
        const char *bytes;
        size_t len;
    } bad[] = {
        {"", 0},
        {"a", 1},
        {"a\0", 2},              /* name only */
        {"a\0b", 3},             /* value unterminated */
        {"a\0b\0junk", 8},       /* trailing bytes */
        {"a\0b\0\0", 5},         /* a stray third string */
        {"client_encoding", 15}, /* no NUL anywhere */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint8_t *p = exact_copy(bad[i].bytes, bad[i].len);
        bool ok = codec_parse_parameter_status(p, bad[i].len, &name, &value);
        if (ok)
            fprintf(stderr, "  bad body %zu accepted\n", i);
        CHECK(!ok);
        free(p);
    }

    uint8_t *p = exact_copy("\0\0", 2); /* empty name and value: well-formed */
    CHECK(codec_parse_parameter_status(p, 2, &name, &value));
    CHECK_STR(name, "");
    CHECK_STR(value, "");
    free(p);
}

/* xorshift32: deterministic garbage, same every run. */
static uint32_t rng_next(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *s = x;
    return x;
}

static bool within(const char *s, const uint8_t *body, size_t len)
{
    if (!s)
        return true;
    const uint8_t *u = (const uint8_t *)s;
    return u >= body && u < body + len && memchr(u, 0, (size_t)(body + len - u)) != NULL;
}

static void parsers_on_random_garbage_never_crash_and_point_inside(void)
{
    uint32_t seed = 0x5eed1234u;
    int outside = 0;
    for (int iter = 0; iter < 20000; iter++) {
        size_t len = rng_next(&seed) % 48;
        uint8_t tmp[48];
        for (size_t i = 0; i < len; i++) {
            uint32_t r = rng_next(&seed);
            /* Favour NULs and field codes so some bodies get far into the parsers. */
            if ((r & 3) == 0)
                tmp[i] = 0;
            else if ((r & 3) == 1)
                tmp[i] = (uint8_t)"SVCM"[(r >> 8) & 3];
            else
                tmp[i] = (uint8_t)(r >> 8);
        }
        uint8_t *p = exact_copy(tmp, len);

        struct error_fields ef;
        if (codec_parse_error(p, len, &ef)) {
            if (!within(ef.severity, p, len) || !within(ef.sqlstate, p, len) ||
                !within(ef.message, p, len))
                outside++;
        }
        const char *name = NULL, *value = NULL;
        if (codec_parse_parameter_status(p, len, &name, &value)) {
            if (!name || !value || !within(name, p, len) || !within(value, p, len))
                outside++;
        }
        uint32_t total;
        if (len >= 4) {
            put_be32(p, (uint32_t)len); /* make it frame as a startup packet of its own size */
            if (len >= 8 && (rng_next(&seed) & 1))
                put_be32(p + 4, CODEC_PROTOCOL_3_0);
        }
        if (codec_frame_startup(p, len, &total) == FRAME_OK && total <= len) {
            struct startup_packet s;
            codec_parse_startup(p, total, &s);
            if (s.nparams < 0 || (uint32_t)s.nparams > total / 4)
                outside++;
            for (struct startup_param at = {0}; codec_startup_next(&s, &at);)
                if (!within(at.name, p, total) || !within(at.value, p, total))
                    outside++;
        }
        free(p);
    }
    CHECK_INT(outside, 0);
}

static void codec_end_writes_big_endian_length_counting_itself(void)
{
    struct msg_out o;
    codec_out_init(&o);
    codec_put_query(&o, "first");
    size_t second = o.len;
    codec_begin(&o, 'd');
    uint8_t big[70000];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (uint8_t)i;
    codec_put_bytes(&o, big, sizeof(big));
    codec_put_i16(&o, -2);
    codec_put_i32(&o, -1);
    codec_end(&o);
    CHECK(!o.oom);
    CHECK_INT(o.len, second + 1 + 4 + sizeof(big) + 2 + 4);
    CHECK_INT(o.data[second], 'd');
    /* 70000 + 6 + 4 = 70010 = 0x0001117a */
    CHECK_INT(get_be32(o.data + second + 1), 70010);
    CHECK_INT(o.data[second + 1], 0x00);
    CHECK_INT(o.data[second + 2], 0x01);
    CHECK_INT(o.data[second + 3], 0x11);
    CHECK_INT(o.data[second + 4], 0x7a);
    CHECK(memcmp(o.data + second + 5, big, sizeof(big)) == 0);
    static const uint8_t tail[] = {0xff, 0xfe, 0xff, 0xff, 0xff, 0xff};
    CHECK(memcmp(o.data + o.len - 6, tail, 6) == 0);
    /* The first message's length word is untouched by ending the second. */
    CHECK_INT(get_be32(o.data + 1), 4 + 6);

    /* An empty typed message has length 4. */
    codec_out_reset(&o);
    CHECK_INT(o.len, 0);
    codec_begin(&o, 'S');
    codec_end(&o);
    CHECK(bytes_equal(&o, "S\0\0\0\x04", 5));
    codec_out_free(&o);
    CHECK(o.data == NULL && o.len == 0);
}

static void untyped_startup_builder_parses_back(void)
{
    static const char *const names[] = {"user", "database"};
    static const char *const values[] = {"u", "d"};
    struct msg_out o;
    codec_out_init(&o);
    codec_put_startup(&o, names, values, 2);
    static const uint8_t want[] = "\0\0\0\x1b\0\x03\0\0user\0u\0database\0d\0\0";
    CHECK(bytes_equal(&o, want, sizeof(want) - 1));

    uint32_t total = 0;
    CHECK_INT(codec_frame_startup(o.data, o.len, &total), FRAME_OK);
    CHECK_INT(total, o.len);
    uint8_t *p = exact_copy(o.data, total);
    struct startup_packet s;
    codec_parse_startup(p, total, &s);
    CHECK_INT(s.kind, STARTUP_V3);
    CHECK_INT(s.nparams, 2);
    struct startup_param at = {0};
    CHECK(codec_startup_next(&s, &at));
    CHECK_STR(at.name, "user");
    CHECK_STR(at.value, "u");
    CHECK(codec_startup_next(&s, &at));
    CHECK_STR(at.name, "database");
    CHECK_STR(at.value, "d");
    CHECK(!codec_startup_next(&s, &at));
    free(p);

    /* With no parameters: length, version, final NUL. */
    codec_out_reset(&o);
    codec_put_startup(&o, NULL, NULL, 0);
    CHECK(bytes_equal(&o, "\0\0\0\x09\0\x03\0\0\0", 9));
    p = exact_copy(o.data, o.len);
    codec_parse_startup(p, (uint32_t)o.len, &s);
    CHECK_INT(s.kind, STARTUP_V3);
    CHECK_INT(s.nparams, 0);
    free(p);
    codec_out_free(&o);
}

static void frontend_types_are_exactly_the_protocol_3_list(void)
{
    const char *known = "BCdcfDEHFPQSX";
    for (int t = 0; t < 256; t++)
        CHECK_INT(codec_frontend_type_known((uint8_t)t), t != 0 && strchr(known, t) != NULL);
}

static void get_u32_is_big_endian(void)
{
    const uint8_t p[4] = {0x80, 0x01, 0x02, 0xff};
    CHECK_INT(codec_get_u32(p) == 0x800102ffu, 1);
}

int main(void)
{
    RUN(frame_whole_stream_yields_every_message);
    RUN(frame_split_at_every_offset_yields_same_messages);
    RUN(frame_split_at_every_pair_of_offsets_yields_same_messages);
    RUN(frame_byte_by_byte_yields_same_messages);
    RUN(frame_header_with_fewer_than_5_bytes_needs_more);
    RUN(frame_header_hostile_lengths_are_bad);
    RUN(frame_header_lengths_at_the_limits_are_ok);
    RUN(frame_stream_stops_at_a_bad_length_after_good_messages);
    RUN(frame_body_above_max_body_is_bad_before_it_arrives);

    RUN(startup_v3_params_are_found_by_name);
    RUN(startup_v3_hand_built_bytes_parse);
    RUN(startup_v3_without_params_is_v3);
    RUN(startup_ssl_request_is_recognised);
    RUN(startup_gssenc_request_is_recognised);
    RUN(startup_cancel_request_carries_pid_and_key);
    RUN(startup_protocol_2_and_4_are_bad_protocol_3_1_is_3);
    RUN(startup_requests_are_known_by_code_and_a_cancel_by_its_length);
    RUN(startup_unterminated_or_unfinished_lists_are_malformed);
    RUN(startup_trailing_bytes_after_final_nul_are_malformed);
    RUN(startup_truncated_at_any_length_is_malformed);
    RUN(startup_params_as_many_as_the_packet_holds_are_kept);
    RUN(frame_startup_enforces_length_limits);
    RUN(frame_startup_with_fewer_than_4_bytes_needs_more);
    RUN(parse_startup_below_header_length_is_malformed);

    RUN(reader_reads_big_endian_fields_in_order);
    RUN(reader_past_end_sets_bad_and_returns_zero);
    RUN(reader_cstring_without_nul_is_null_and_bad);

    RUN(ready_for_query_bytes_are_exact);
    RUN(backend_key_data_bytes_are_exact);
    RUN(query_and_terminate_bytes_are_exact);
    RUN(auth_request_bytes_are_exact);
    RUN(parameter_status_round_trips);
    RUN(error_response_round_trips_through_parse_error);
    RUN(notice_without_detail_or_hint_omits_those_fields);
    RUN(parse_error_prefers_v_severity_over_s);
    RUN(parse_error_skips_unknown_fields_and_allows_missing_ones);
    RUN(parse_error_on_every_truncation_is_false);
    RUN(parse_error_unterminated_field_is_false);
    RUN(parse_parameter_status_rejects_bad_bodies);
    RUN(parsers_on_random_garbage_never_crash_and_point_inside);
    RUN(codec_end_writes_big_endian_length_counting_itself);
    RUN(untyped_startup_builder_parses_back);
    RUN(frontend_types_are_exactly_the_protocol_3_list);
    RUN(get_u32_is_big_endian);
    RUN(tls_client_hello_is_told_apart_from_a_startup_packet);
    return CHECK_DONE();
}
