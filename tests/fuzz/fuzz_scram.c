/* fuzz_scram: libFuzzer target for scram.c — everything a client (or a userlist line) can feed
 * it. The first byte picks the connection's shape (TLS offered -PLUS or not, the mechanism the
 * client names, an unknown user's doomed exchange); the rest, split at the first newline, is the
 * client-first-message and the client-final-message. The same bytes are also parsed as a stored
 * secret and as base64. Invariants: a parsed secret formats back to text that parses to the same
 * secret; base64 that decodes re-encodes to what decodes the same; an exchange never succeeds
 * when doomed, and returns a message exactly when it succeeds. The same two parts also feed the
 * client side (auth passthrough: what an upstream server sends back) as the server-first and
 * server-final messages; it answers exactly when it accepts, and a forged server-final never
 * verifies. Built and run by scripts/fuzz. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scram.h"
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct scram_secret secret;
static bool have_secret;

static void check_secret_text(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return;
    memcpy(text, data, size);
    text[size] = '\0';
    struct scram_secret s, again;
    if (scram_parse_secret(text, &s) == 0) {
        char back[400];
        FUZZ_ASSERT(scram_format_secret(&s, back, sizeof back) == 0);
        FUZZ_ASSERT(scram_parse_secret(back, &again) == 0);
        FUZZ_ASSERT(memcmp(&s, &again, sizeof s) == 0);
    }
    free(text);
}

static void check_base64(const uint8_t *data, size_t size)
{
    uint8_t out[512], again[512];
    char text[800];
    if (size > 600)
        return;
    int n = scram_b64_decode((const char *)data, size, out, sizeof out);
    if (n < 0)
        return;
    int t = scram_b64_encode(out, (size_t)n, text, sizeof text);
    FUZZ_ASSERT(t >= 0);
    FUZZ_ASSERT(scram_b64_decode(text, (size_t)t, again, sizeof again) == n);
    FUZZ_ASSERT(memcmp(out, again, (size_t)n) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 16384)
        return 0;
    if (!have_secret) {
        /* one PBKDF2 round: the fuzzer is after the parsing, not the key schedule */
        const uint8_t salt[16] = "fuzz-salt-16byte";
        FUZZ_ASSERT(scram_make_secret("pencil", salt, sizeof salt, 1, &secret) == 0);
        have_secret = true;
    }
    check_secret_text(data, size);
    check_base64(data, size);
    if (size < 1)
        return 0;
    uint8_t shape = data[0];
    const char *msg = (const char *)data + 1;
    size_t len = size - 1;
    const char *nl = memchr(msg, '\n', len);
    size_t first_len = nl ? (size_t)(nl - msg) : len;
    const char *final = nl ? nl + 1 : NULL;
    size_t final_len = nl ? len - first_len - 1 : 0;

    uint8_t cb[32];
    for (int i = 0; i < 32; i++)
        cb[i] = (uint8_t)i;
    bool offer_plus = shape & 1, choose_plus = shape & 2, doomed = shape & 4;
    struct scram_server x;
    scram_server_init(&x, &secret, doomed, offer_plus ? cb : NULL, offer_plus ? sizeof cb : 0);
    char *out = NULL;
    const char *why = NULL;
    enum scram_result rc = scram_server_first(&x, choose_plus, msg, first_len,
                                              (shape & 8) ? "fixed" : NULL, &out, &why);
    FUZZ_ASSERT((rc == SCRAM_OK) == (out != NULL));
    if (rc == SCRAM_OK && final) {
        free(out);
        out = NULL;
        rc = scram_server_final(&x, final, final_len, &out, &why);
        FUZZ_ASSERT((rc == SCRAM_OK) == (out != NULL));
        FUZZ_ASSERT(!(doomed && rc == SCRAM_OK));
        if (rc == SCRAM_OK)
            FUZZ_ASSERT(strncmp(out, "v=", 2) == 0);
    }
    free(out);
    scram_server_free(&x);

    /* the client side: the server's messages are the fuzzer's */
    const uint8_t client_key[SCRAM_KEY_LEN] = {7};
    struct scram_client cx;
    scram_client_init(&cx, &secret, client_key);
    char *first = NULL, *cfinal = NULL;
    FUZZ_ASSERT(scram_client_first(&cx, (shape & 16) ? "fuzznonce" : NULL, &first) == SCRAM_OK);
    rc = scram_client_final(&cx, msg, first_len, &cfinal, &why);
    FUZZ_ASSERT((rc == SCRAM_OK) == (cfinal != NULL));
    if (rc == SCRAM_OK) {
        FUZZ_ASSERT(strncmp(cfinal, "c=biws,r=", 9) == 0 && strstr(cfinal, ",p="));
        if (final) {
            /* the fuzzer cannot produce HMAC(ServerKey, AuthMessage): no forgery verifies */
            FUZZ_ASSERT(scram_client_verify(&cx, final, final_len, &why) != SCRAM_OK);
        }
    }
    free(first);
    free(cfinal);
    scram_client_free(&cx);
    return 0;
}
