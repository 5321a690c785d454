/* codec: the Postgres v3 wire format, with no I/O.
 * Frames message headers in place (type byte + int32 length), parses the few messages sluice must
 * understand (startup, password, ParameterStatus, ReadyForQuery, ErrorResponse fields) and builds
 * the messages sluice itself sends. Sockets, buffers and state belong to the callers. */
#ifndef SLUICE_CODEC_H
#define SLUICE_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Protocol section 55.7: every message after startup is a type byte and an int32 length that
 * counts itself but not the type byte. */
#define CODEC_HEADER_LEN 5
/* Startup-phase packets have no type byte: int32 length, int32 code. */
#define CODEC_STARTUP_HEADER_LEN 8
/* The largest startup packet Postgres itself accepts, length word included: its
 * MAX_STARTUP_PACKET_LENGTH (10000) counts the bytes after the length word (ProcessStartupPacket
 * subtracts 4 before comparing). */
#define CODEC_MAX_STARTUP_LEN (4 + 10000)

#define CODEC_PROTOCOL_3_0 196608u   /* 3 << 16 */
#define CODEC_CANCEL_CODE 80877102u  /* 1234 << 16 | 5678 */
#define CODEC_SSL_CODE 80877103u     /* 1234 << 16 | 5679 */
#define CODEC_GSSENC_CODE 80877104u  /* 1234 << 16 | 5680 */

/* The one big-endian reader for the wire's int32 fields (lengths, codes). Inline: relay.c reads a
 * header per forwarded message. */
static inline uint32_t codec_get_u32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

enum frame_result {
    FRAME_NEED_MORE = 0, /* fewer than CODEC_HEADER_LEN bytes available */
    FRAME_OK,            /* header valid: type and body length filled in */
    FRAME_BAD_LENGTH,    /* length field below 4 or above the allowed maximum */
};

/* Read one message header at p. body_len is the length field minus 4. max_body bounds what a
 * peer may claim, so a hostile 0x7fffffff is refused before anything waits for it. */
enum frame_result codec_frame_header(const uint8_t *p, size_t avail, uint32_t max_body,
                                     uint8_t *type, uint32_t *body_len);

/* The frontend message types of protocol 3.0 that a client may send after startup (Bind, Close,
 * CopyData/Done/Fail, Describe, Execute, Flush, FunctionCall, Parse, Query, Sync, Terminate).
 * The one list: client.c checks a new request with it, relay.c every forwarded message. */
/* The largest length word Postgres reads for a client message of this (known) type
 * (postgres.c SocketBackend: 10000 for Sync, Flush, Close, Describe, Execute, Terminate, CopyDone
 * and CopyFail, 1 GB - 2 for the others); a longer one is a broken stream it closes on. */
uint32_t codec_frontend_max_len(uint8_t type);
bool codec_frontend_type_known(uint8_t type);

/* ---- reading a message body ---- */

/* A cursor over one message body. Any read past the end sets bad and returns zero/NULL, so a
 * parser checks once at the end instead of after every field. */
struct msg_reader {
    const uint8_t *pos;
    const uint8_t *end;
    bool bad;
};

void codec_reader_init(struct msg_reader *r, const uint8_t *body, size_t len);
uint8_t codec_read_u8(struct msg_reader *r);
int16_t codec_read_i16(struct msg_reader *r);
int32_t codec_read_i32(struct msg_reader *r);
/* A NUL-terminated string inside the body; NULL (and bad) when no NUL is found. */
const char *codec_read_cstring(struct msg_reader *r);
/* n raw bytes; NULL (and bad) when fewer remain. */
const uint8_t *codec_read_bytes(struct msg_reader *r, size_t n);
size_t codec_reader_left(const struct msg_reader *r);

/* ---- startup-phase packets (no type byte) ---- */

enum startup_kind {
    STARTUP_V3,           /* protocol 3.0 StartupMessage */
    STARTUP_SSL_REQUEST,  /* SSLRequest */
    STARTUP_GSSENC_REQUEST,
    STARTUP_CANCEL,       /* CancelRequest */
    STARTUP_BAD_PROTOCOL, /* a version sluice does not speak (2.0, 3.x with x > 0, ...) */
    STARTUP_MALFORMED,    /* wrong length for its kind, unterminated parameter list, ... */
};

/* One name/value pair of a StartupMessage, pointing into the packet: valid while its bytes are. */
struct startup_param {
    const char *name;
    const char *value;
};

struct startup_packet {
    enum startup_kind kind;
    uint32_t code; /* the protocol version or request code as sent */
    /* STARTUP_V3: the parameters stay where they are in the packet, as many as it holds (Postgres
     * takes any number within CODEC_MAX_STARTUP_LEN): no copy, no cap on the count. */
    int nparams;
    const char *first_param; /* the first pair's name (the list's terminator when none) */
    /* STARTUP_CANCEL */
    uint32_t cancel_pid;
    uint32_t cancel_key;
};

/* Header of a startup-phase packet: its total length (including the length word). */
enum frame_result codec_frame_startup(const uint8_t *p, size_t avail, uint32_t *total_len);
/* Whether the first bytes of a connection are a TLS handshake record (content type 22, version
 * 3.x) rather than a startup packet: a client that starts TLS without an SSLRequest (libpq 17's
 * sslnegotiation=direct), whose record header reads as a startup length far too large. */
bool codec_starts_tls_handshake(const uint8_t *p, size_t avail);
/* Parse a whole startup-phase packet of total_len bytes (as framed above). */
void codec_parse_startup(const uint8_t *p, uint32_t total_len, struct startup_packet *out);
/* The value of a startup parameter (the last, when the packet names it twice), or NULL. */
const char *codec_startup_get(const struct startup_packet *s, const char *name);
/* The parameters of a STARTUP_V3 packet in the order sent: start with *at zeroed; true while
 * *at holds the next pair. */
bool codec_startup_next(const struct startup_packet *s, struct startup_param *at);

/* ---- building messages sluice sends ---- */

/* A growable output buffer. Builders append; a failed allocation sets oom, and the caller drops
 * the connection instead of sending half a message. */
/* 32-bit offsets: a protocol message is at most 1 GB, and every client has one of these (an
 * idle client should be small). */
struct msg_out {
    uint8_t *data;
    uint32_t len;
    uint32_t cap;
    uint32_t msg_start; /* where the message being built starts (for its length word) */
    bool oom;
};

void codec_out_init(struct msg_out *o);
void codec_out_free(struct msg_out *o);
void codec_out_reset(struct msg_out *o);
/* Start a message of the given type (0 for the untyped startup-phase packets). */
void codec_begin(struct msg_out *o, uint8_t type);
void codec_put_u8(struct msg_out *o, uint8_t v);
void codec_put_i16(struct msg_out *o, int16_t v);
void codec_put_i32(struct msg_out *o, int32_t v);
void codec_put_cstring(struct msg_out *o, const char *s);
void codec_put_bytes(struct msg_out *o, const void *p, size_t n);
/* Fill in the length word of the message begun last. */
void codec_end(struct msg_out *o);

/* Whole messages. */
void codec_put_auth_request(struct msg_out *o, int32_t code, const void *extra, size_t extra_len);
void codec_put_parameter_status(struct msg_out *o, const char *name, const char *value);
void codec_put_backend_key(struct msg_out *o, uint32_t pid, uint32_t key);
void codec_put_ready(struct msg_out *o, char txn_status);
void codec_put_query(struct msg_out *o, const char *sql);
void codec_put_terminate(struct msg_out *o);
/* ErrorResponse ('E') or NoticeResponse ('N'); hint and detail may be NULL. */
void codec_put_error(struct msg_out *o, uint8_t type, const char *severity, const char *sqlstate,
                     const char *message, const char *detail, const char *hint);
/* The same with where Postgres raises it (F, R; NULL: none), for an error sluice says in
 * Postgres's place that drivers recognise by its routine (pgjdbc prepares again on 0A000 from
 * RevalidateCachedQuery). */
void codec_put_error_at(struct msg_out *o, uint8_t type, const char *severity,
                        const char *sqlstate, const char *message, const char *detail,
                        const char *hint, const char *file, const char *routine);
/* A client-side startup packet (used by tests and the health prober). */
void codec_put_startup(struct msg_out *o, const char *const *names, const char *const *values,
                       int n);

/* ---- parsing messages sluice reads ---- */

/* ErrorResponse/NoticeResponse fields of interest; pointers into the body. */
struct error_fields {
    const char *severity; /* 'V' (non-localized) if present, else 'S' */
    const char *sqlstate; /* 'C' */
    const char *message;  /* 'M' */
};
bool codec_parse_error(const uint8_t *body, size_t len, struct error_fields *out);

/* ParameterStatus: two strings. */
bool codec_parse_parameter_status(const uint8_t *body, size_t len, const char **name,
                                  const char **value);

#endif
