/* fuzz_config: libFuzzer target for config.c. The input is INI text, loaded with an empty
 * environment; whatever it says, loading must neither crash nor leak, and the result must keep
 * config.h's contract: NULL exactly when errors were reported. Built and run by scripts/fuzz. */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Config files are small; longer inputs only slow the search down. */
    if (size > 64 * 1024)
        return 0;
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';

    char *env_with_nothing[] = {NULL};
    struct config_diag diag;
    memset(&diag, 0, sizeof(diag));
    struct config *c = config_load_string(text, env_with_nothing, &diag);
    if (c) {
        FUZZ_ASSERT(diag.nerrors == 0);
        config_free(c);
    } else {
        FUZZ_ASSERT(diag.nerrors > 0);
    }
    config_diag_free(&diag);
    free(text);
    return 0;
}
