/* http_request: the head of one HTTP/1.x request — request line and header lines — checked and
 * cut into what /health and /metrics need (method and path). No I/O, no allocation: http.c
 * feeds it the bytes read so far, and the fuzz target feeds it anything. */
#ifndef SLUICE_HTTP_REQUEST_H
#define SLUICE_HTTP_REQUEST_H

#include <stddef.h>

#define HTTP_MAX_HEAD 8192 /* request line + headers; more is refused (431) */
#define HTTP_MAX_PATH 256

enum http_parse {
    HTTP_PARSE_INCOMPLETE = 0, /* no blank line yet, and nothing wrong so far */
    HTTP_PARSE_OK,             /* a whole, well-formed head */
    HTTP_PARSE_BAD,            /* malformed: answer 400 */
    HTTP_PARSE_TOO_LARGE,      /* HTTP_MAX_HEAD bytes without the end of the head: 431 */
};

enum http_method { HTTP_METHOD_GET, HTTP_METHOD_HEAD, HTTP_METHOD_OTHER };

struct http_request {
    enum http_method method;
    char path[HTTP_MAX_PATH]; /* the target without ?query or #fragment; "" when too long */
    int version_minor;        /* HTTP/1.0 or HTTP/1.1 */
    size_t head_len;          /* bytes up to and including the blank line */
};

/* Parse the bytes received so far (buf need not be NUL-terminated). */
enum http_parse http_parse_request(const char *buf, size_t len, struct http_request *out);
const char *http_parse_name(enum http_parse r);

#endif
