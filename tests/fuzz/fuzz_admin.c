/* fuzz_admin: libFuzzer target for admin_command.c — any bytes as an admin console query (the
 * body of a Query message up to its NUL). Parsing must neither crash nor read past the NUL; an
 * invalid command always carries a message, a valid one names only what the grammar allows, and
 * parsing the same text twice gives the same command. Built and run by scripts/fuzz. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin_command.h"
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 2 * ADMIN_QUERY_MAX)
        return 0;
    /* Exactly the bytes, then a NUL: ASan catches any read beyond it. */
    char *sql = malloc(size + 1);
    if (!sql)
        return 0;
    memcpy(sql, data, size);
    sql[size] = '\0';
    static struct admin_command a, b;
    enum admin_verb v = admin_parse_command(sql, &a);
    FUZZ_ASSERT(v == a.verb);
    FUZZ_ASSERT(memchr(a.message, '\0', sizeof(a.message)) != NULL);
    FUZZ_ASSERT(memchr(a.name, '\0', sizeof(a.name)) != NULL);
    FUZZ_ASSERT(memchr(a.value, '\0', sizeof(a.value)) != NULL);
    if (v == ADMIN_INVALID) {
        FUZZ_ASSERT(a.message[0] != '\0');
        FUZZ_ASSERT(a.error != ADMIN_ERR_NONE);
    } else {
        FUZZ_ASSERT(a.error == ADMIN_ERR_NONE);
        FUZZ_ASSERT(v >= ADMIN_EMPTY && v <= ADMIN_VERB_LAST);
        if (v == ADMIN_KILL || v == ADMIN_SET || v == ADMIN_DISABLE || v == ADMIN_ENABLE)
            FUZZ_ASSERT(a.has_name && a.name[0] != '\0');
        if (a.has_name)
            FUZZ_ASSERT(a.name[0] != '\0');
        FUZZ_ASSERT(strcmp(admin_verb_tag(v), "?") != 0);
        if (v == ADMIN_SHOW)
            FUZZ_ASSERT(strcmp(admin_show_name(a.show), "?") != 0);
    }
    /* No state between calls. */
    FUZZ_ASSERT(admin_parse_command(sql, &b) == v);
    FUZZ_ASSERT(memcmp(&a, &b, sizeof(a)) == 0);
    free(sql);
    return 0;
}
