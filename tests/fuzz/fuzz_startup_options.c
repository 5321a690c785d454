/* fuzz_startup_options: libFuzzer target for the startup packet's "options", read before the
 * client has authenticated (startup_options_parse). Invariants: a refusal is one of the enum's
 * and names a word no longer than the input (or argv[0], "postgres"); an accepted value sets
 * parameters with valid names. Built and run by scripts/fuzz. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"
#include "startup_options.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 10000)
        return 0;
    char *options = malloc(size + 1);
    if (!options)
        return 0;
    memcpy(options, data, size);
    options[size] = '\0';
    struct param_set p;
    params_init(&p);
    struct options_refusal *refusal = NULL;
    int rc = startup_options_parse(&p, options, &refusal);
    FUZZ_ASSERT(rc == 0);
    if (refusal) {
        FUZZ_ASSERT(refusal->fault >= OPTIONS_BAD_ARGUMENT &&
                    refusal->fault <= OPTIONS_BAD_PARAMETER_NAME);
        size_t n = strlen(refusal->word);
        FUZZ_ASSERT(n <= size || strcmp(refusal->word, "postgres") == 0);
    }
    for (int i = 0; i < p.n; i++)
        FUZZ_ASSERT(params_valid_name(p.items[i].name, strlen(p.items[i].name)));
    free(refusal);
    params_free(&p);
    free(options);
    return 0;
}
