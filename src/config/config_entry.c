/* config_entry: what the entries of [databases], [users] and [budgets] share: the key=value
 * syntax of their values (PgBouncer's), and sluice's own keys of each section
 * (config_entry_keys.def), each parsed by its kind's config_value.c parser into its field. */
#include "config_load.h"
#include "config_value.h"

#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the key=value syntax ---- */

/* One key=value pair of a [databases]/[users]/[budgets] value, in PgBouncer's syntax: pairs
 * separated by spaces, spaces allowed around '=', a value either bare (up to the next space) or
 * in single quotes with '' standing for one quote. Returns 1 with *key and *val allocated, 0 at the
 * end, -EINVAL with *why set, -ENOMEM. */
int config_entry_next_pair(const char **sp, char **key, char **val, const char **why)
{
    const char *p = *sp;
    while (isspace((unsigned char)*p))
        p++;
    if (!*p)
        return 0;
    const char *k = p;
    while (isalnum((unsigned char)*p) || *p == '_')
        p++;
    size_t klen = (size_t)(p - k);
    while (isspace((unsigned char)*p))
        p++;
    if (klen == 0 || *p != '=') {
        *why = "expected key=value pairs separated by spaces";
        return -EINVAL;
    }
    p++;
    while (isspace((unsigned char)*p))
        p++;
    char *v = malloc(strlen(p) + 1);
    if (!v)
        return -ENOMEM;
    size_t vlen = 0;
    if (*p == '\'') {
        for (p++;; p++) {
            if (!*p) {
                v[vlen] = '\0';
                config_free_secret(v);
                *why = "a quoted value has no closing quote";
                return -EINVAL;
            }
            if (*p == '\'') {
                if (p[1] != '\'')
                    break;
                p++;
            }
            v[vlen++] = *p;
        }
        p++;
        if (*p && !isspace((unsigned char)*p)) {
            v[vlen] = '\0';
            config_free_secret(v);
            *why = "expected a space after a quoted value";
            return -EINVAL;
        }
    } else {
        while (*p && !isspace((unsigned char)*p))
            v[vlen++] = *p++;
    }
    v[vlen] = '\0';
    *key = strndup(k, klen);
    if (!*key) {
        config_free_secret(v);
        return -ENOMEM;
    }
    *val = v;
    *sp = p;
    return 1;
}

/* ---- the key table ---- */

enum entry_kind {
    ENTRY_KIND_COUNT,
    ENTRY_KIND_TIME,
    ENTRY_KIND_LIMIT,
    ENTRY_KIND_POOL_MODE,
    ENTRY_KIND_LOAD_BALANCE_HOSTS,
    ENTRY_KIND_STR,
    ENTRY_KIND_OPTIONAL_STR,
    ENTRY_KIND_CIDR,
};

/* The C type of each kind's field, and the struct of each section's entry. */
#define ENTRY_CTYPE_COUNT int
#define ENTRY_CTYPE_TIME int64_t
#define ENTRY_CTYPE_LIMIT struct limit
#define ENTRY_CTYPE_POOL_MODE enum pool_mode
#define ENTRY_CTYPE_LOAD_BALANCE_HOSTS enum load_balance_hosts
#define ENTRY_CTYPE_STR char *
#define ENTRY_CTYPE_OPTIONAL_STR char *
#define ENTRY_CTYPE_CIDR struct cidr_setting
#define ENTRY_STRUCT_DB struct db_entry
#define ENTRY_STRUCT_USER struct user_entry
#define ENTRY_STRUCT_BUDGET struct budget_entry

/* The table below reaches fields by offset: check at compile time that each key's field has its
 * kind's type. */
#define ENTRY_KEY(section, name, kind, field)                                                      \
    _Static_assert(                                                                                \
        _Generic(((ENTRY_STRUCT_##section *)0)->field, ENTRY_CTYPE_##kind : 1, default : 0),       \
        #name " is not a " #kind " field");
#include "config_entry_keys.def"
#undef ENTRY_KEY

static const struct entry_key {
    enum entry_section section;
    const char *name;
    enum entry_kind kind;
    size_t offset;
} entry_keys[] = {
#define ENTRY_KEY(section, name, kind, field)                                                      \
    {ENTRY_##section, #name, ENTRY_KIND_##kind, offsetof(ENTRY_STRUCT_##section, field)},
#include "config_entry_keys.def"
#undef ENTRY_KEY
};
#define N_ENTRY_KEYS (sizeof entry_keys / sizeof entry_keys[0])

/* Parse text into the field of kind k; the field's old value is freed only once the new one is
 * in hand, so a bad value leaves the entry as it was. */
static int set_field(enum entry_kind k, void *field, const char *text, char *why, size_t n)
{
    int rc = -EINVAL;
    switch (k) {
#define SET_KIND(kind)                                                                             \
    case ENTRY_KIND_##kind: {                                                                      \
        ENTRY_CTYPE_##kind value;                                                                  \
        rc = config_value_parse_##kind(text, &value, why, n);                                      \
        if (rc == 0) {                                                                             \
            config_value_free_##kind(field);                                                       \
            *(ENTRY_CTYPE_##kind *)field = value;                                                  \
        }                                                                                          \
        break;                                                                                     \
    }
        SET_KIND(COUNT)
        SET_KIND(TIME)
        SET_KIND(LIMIT)
        SET_KIND(POOL_MODE)
        SET_KIND(LOAD_BALANCE_HOSTS)
        SET_KIND(STR)
        SET_KIND(OPTIONAL_STR)
        SET_KIND(CIDR)
#undef SET_KIND
    }
    return rc;
}

int config_entry_set(struct loader *L, enum entry_section section, void *entry, const char *where,
                     const char *key, const char *val)
{
    for (size_t i = 0; i < N_ENTRY_KEYS; i++) {
        const struct entry_key *k = &entry_keys[i];
        if (k->section != section || strcmp(k->name, key) != 0)
            continue;
        char why[160];
        int rc = set_field(k->kind, (char *)entry + k->offset, val, why, sizeof why);
        if (rc == -ENOMEM) {
            L->oom = true;
        } else if (rc != 0) {
            load_error(L, "%s: %s = '%s': %s", where, key, val, why);
            return -EINVAL;
        }
        return 1;
    }
    return 0;
}

void config_entry_accepted(enum entry_section section, char *out, size_t n)
{
    const struct entry_key *keys[N_ENTRY_KEYS];
    size_t count = 0;
    for (size_t i = 0; i < N_ENTRY_KEYS; i++) {
        bool alias = entry_keys[i].section != section;
        for (size_t j = 0; j < count && !alias; j++)
            alias = keys[j]->offset == entry_keys[i].offset;
        if (!alias)
            keys[count++] = &entry_keys[i];
    }
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < count && used < n; i++) {
        const char *sep = i == 0 ? "" : i + 1 == count ? " and " : ", ";
        used += (size_t)snprintf(out + used, n - used, "%s%s", sep, keys[i]->name);
    }
}

int config_entry_parse(struct loader *L, enum entry_section section, void *entry, const char *where,
                       const char *value)
{
    const char *p = value, *why = NULL;
    char *key, *val;
    int rc, failed = 0;
    while ((rc = config_entry_next_pair(&p, &key, &val, &why)) == 1) {
        int set = config_entry_set(L, section, entry, where, key, val);
        if (set == 0) {
            char accepted[512];
            config_entry_accepted(section, accepted, sizeof accepted);
            load_error(L, "%s: unknown key '%s' (%s are accepted)", where, key, accepted);
        }
        failed |= set <= 0;
        free(key);
        config_free_secret(val);
    }
    if (rc == -EINVAL) {
        load_error(L, "%s: %s", where, why);
        failed = 1;
    } else if (rc == -ENOMEM) {
        L->oom = true;
    }
    return failed ? -EINVAL : 0;
}
