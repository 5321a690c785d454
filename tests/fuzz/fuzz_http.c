/* fuzz_http: libFuzzer target for http_request.c — any bytes as the start of an HTTP request
 * on the /health and /metrics port. The parser must neither crash nor read beyond the length it
 * is given (the input is not NUL-terminated), a parsed head never ends past the input, the path
 * is a NUL-terminated string starting with '/' (or empty when too long), and a prefix of a
 * complete head is never itself reported malformed when the whole is fine. Built and run by
 * scripts/fuzz. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_request.h"
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 2 * HTTP_MAX_HEAD)
        return 0;
    /* A copy of exactly size bytes, so ASan sees any read past the end. */
    char *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    struct http_request req;
    enum http_parse r = http_parse_request(buf, size, &req);
    FUZZ_ASSERT(r == HTTP_PARSE_INCOMPLETE || r == HTTP_PARSE_OK || r == HTTP_PARSE_BAD ||
                r == HTTP_PARSE_TOO_LARGE);
    FUZZ_ASSERT(memchr(req.path, '\0', sizeof(req.path)) != NULL);
    if (r == HTTP_PARSE_TOO_LARGE)
        FUZZ_ASSERT(size >= HTTP_MAX_HEAD);
    if (r == HTTP_PARSE_OK) {
        FUZZ_ASSERT(req.head_len > 0 && req.head_len <= size && req.head_len <= HTTP_MAX_HEAD);
        FUZZ_ASSERT(req.path[0] == '/' || req.path[0] == '\0');
        FUZZ_ASSERT(req.version_minor == 0 || req.version_minor == 1);
        /* The head alone parses the same way, and every shorter prefix is still incomplete
         * (a client sending byte by byte never sees a 400 for a good request). */
        struct http_request again;
        FUZZ_ASSERT(http_parse_request(buf, req.head_len, &again) == HTTP_PARSE_OK);
        FUZZ_ASSERT(again.method == req.method && strcmp(again.path, req.path) == 0);
        for (size_t cut = 0; cut < req.head_len; cut += 1 + cut / 8)
            FUZZ_ASSERT(http_parse_request(buf, cut, &again) == HTTP_PARSE_INCOMPLETE);
    }
    free(buf);
    return 0;
}
