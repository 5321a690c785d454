/* hba: pg_hba.conf-style rules (see hba.h). Tokens follow Postgres's hba.c: fields are separated
 * by blanks, a field may be a comma list ("a, b" and "a,b" alike), double quotes keep blanks,
 * commas and keywords literal ("all" quoted is a database called all), # starts a comment. */
#include "hba.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_FIELDS 8
#define MAX_ITEMS 256

struct item {
    char *text;
    bool quoted;
};

struct field {
    struct item items[MAX_ITEMS];
    int n;
};

struct parser {
    const char *origin;
    int line;
    char *err;
    size_t errlen;
};

static int fail(struct parser *P, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(struct parser *P, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(P->err, P->errlen, "%sline %d: %s", P->origin, P->line, msg);
    return -1;
}

const char *hba_method_name(enum hba_method m)
{
    switch (m) {
    case HBA_TRUST:
        return "trust";
    case HBA_REJECT:
        return "reject";
    case HBA_MD5:
        return "md5";
    case HBA_SCRAM:
        return "scram-sha-256";
    case HBA_PASSWORD:
        return "password";
    case HBA_CERT:
        return "cert";
    }
    return "?";
}

static void free_fields(struct field *f, int nf)
{
    for (int i = 0; i < nf; i++) {
        for (int k = 0; k < f[i].n; k++)
            free(f[i].items[k].text);
        f[i].n = 0;
    }
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

/* Split one line (NUL-terminated, no newline) into fields. Returns the number of fields or -1. */
static int split_line(struct parser *P, const char *s, struct field *fields)
{
    int nf = 0;
    const char *p = s;
    for (;;) {
        while (is_blank(*p))
            p++;
        if (!*p || *p == '#')
            break;
        if (nf == MAX_FIELDS)
            return fail(P, "too many fields");
        struct field *f = &fields[nf++];
        f->n = 0;
        for (;;) {
            /* one item */
            char buf[512];
            size_t len = 0;
            bool quoted = false, in_quote = false;
            while (*p && (in_quote || (!is_blank(*p) && *p != ',' && *p != '#'))) {
                if (*p == '"') {
                    in_quote = !in_quote;
                    quoted = true;
                    p++;
                    continue;
                }
                if (len + 1 >= sizeof(buf))
                    return fail(P, "token too long");
                buf[len++] = *p++;
            }
            if (in_quote)
                return fail(P, "unterminated quoted string");
            buf[len] = '\0';
            if (len == 0 && !quoted)
                return fail(P, "empty item in a comma-separated list");
            if (f->n == MAX_ITEMS)
                return fail(P, "too many items in one field");
            f->items[f->n].text = strdup(buf);
            f->items[f->n].quoted = quoted;
            if (!f->items[f->n].text)
                return fail(P, "out of memory");
            f->n++;
            if (*p != ',')
                break;
            p++;
            while (is_blank(*p))
                p++;
            if (!*p || *p == '#')
                return fail(P, "a list may not end with a comma");
        }
    }
    return nf;
}

static bool keyword(const struct item *it, const char *word)
{
    return !it->quoted && strcmp(it->text, word) == 0;
}

/* The items of a field that are names, not keywords (keywords became flags). */
static char **names_of(const struct field *f, const char *const *keywords)
{
    char **v = calloc((size_t)f->n + 1, sizeof(*v));
    if (!v)
        return NULL;
    int n = 0;
    for (int i = 0; i < f->n; i++) {
        bool kw = false;
        for (const char *const *k = keywords; *k && !kw; k++)
            kw = keyword(&f->items[i], *k);
        if (kw)
            continue;
        v[n] = strdup(f->items[i].text);
        if (!v[n]) {
            for (int k = 0; k < n; k++)
                free(v[k]);
            free(v);
            return NULL;
        }
        n++;
    }
    return v;
}

static void free_names(char **v)
{
    if (!v)
        return;
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

static int parse_databases(struct parser *P, const struct field *f, struct hba_rule *r)
{
    for (int i = 0; i < f->n; i++) {
        const struct item *it = &f->items[i];
        if (keyword(it, "all"))
            r->all_dbs = true;
        else if (keyword(it, "sameuser"))
            r->sameuser = true;
        else if (keyword(it, "samerole") || keyword(it, "samegroup"))
            return fail(P, "database \"%s\" is not supported by sluice (it has no roles)",
                        it->text);
        else if (!it->quoted && it->text[0] == '@')
            return fail(P, "database \"%s\": @file inclusion is not supported", it->text);
        /* "replication" matches nothing: sluice refuses replication connections before hba */
    }
    static const char *const kws[] = {"all", "sameuser", "replication", NULL};
    r->dbs = names_of(f, kws);
    return r->dbs ? 0 : fail(P, "out of memory");
}

static int parse_users(struct parser *P, const struct field *f, struct hba_rule *r)
{
    for (int i = 0; i < f->n; i++) {
        const struct item *it = &f->items[i];
        if (keyword(it, "all"))
            r->all_users = true;
        else if (!it->quoted && (it->text[0] == '+' || it->text[0] == '@'))
            return fail(P, "user \"%s\": group membership (+) and @file are not supported",
                        it->text);
    }
    static const char *const kws[] = {"all", NULL};
    r->users = names_of(f, kws);
    return r->users ? 0 : fail(P, "out of memory");
}

/* A netmask such as 255.255.255.0 or ffff:ffff:: to a prefix length; -1 if not contiguous. */
static int mask_prefix(const char *text, int family)
{
    uint8_t m[16];
    if (inet_pton(family, text, m) != 1)
        return -1;
    int bytes = family == AF_INET ? 4 : 16, prefix = 0;
    bool ended = false;
    for (int i = 0; i < bytes; i++) {
        for (int b = 7; b >= 0; b--) {
            bool bit = (m[i] >> b) & 1;
            if (bit && ended)
                return -1;
            if (bit)
                prefix++;
            else
                ended = true;
        }
    }
    return prefix;
}

static int parse_address(struct parser *P, const struct field *f, const struct field *mask,
                         struct hba_rule *r, bool *used_mask)
{
    *used_mask = false;
    if (f->n != 1)
        return fail(P, "one address expected, not a list");
    const struct item *it = &f->items[0];
    if (keyword(it, "all")) {
        r->all_addrs = true;
        return 0;
    }
    if (keyword(it, "samehost") || keyword(it, "samenet"))
        return fail(P, "address \"%s\" is not supported; write the network as a CIDR", it->text);
    if (strchr(it->text, '/')) {
        if (cidr_parse(it->text, &r->addr) != 0)
            return fail(P, "invalid CIDR address \"%s\"", it->text);
        return 0;
    }
    if (cidr_parse(it->text, &r->addr) != 0)
        return fail(P, "\"%s\" is not an IP address (host names are not supported)", it->text);
    /* an address, then a netmask field (a method name is not a netmask) */
    if (mask && mask->n == 1 && !mask->items[0].quoted &&
        (strchr(mask->items[0].text, '.') || strchr(mask->items[0].text, ':'))) {
        int prefix = mask_prefix(mask->items[0].text, r->addr.family);
        if (prefix < 0)
            return fail(P, "invalid netmask \"%s\"", mask->items[0].text);
        char cidr[128];
        snprintf(cidr, sizeof(cidr), "%s/%d", it->text, prefix);
        if (cidr_parse(cidr, &r->addr) != 0)
            return fail(P, "invalid address \"%s\" with netmask", it->text);
        *used_mask = true;
        return 0;
    }
    return fail(P, "address \"%s\" needs a /prefix or a netmask field", it->text);
}

static int parse_method(struct parser *P, const struct field *f, enum hba_method *out)
{
    static const struct {
        const char *name;
        enum hba_method m;
    } methods[] = {{"trust", HBA_TRUST},         {"reject", HBA_REJECT},     {"md5", HBA_MD5},
                   {"scram-sha-256", HBA_SCRAM}, {"password", HBA_PASSWORD}, {"cert", HBA_CERT}};
    if (f->n != 1)
        return fail(P, "one authentication method expected");
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        if (keyword(&f->items[0], methods[i].name)) {
            *out = methods[i].m;
            return 0;
        }
    }
    return fail(P,
                "authentication method \"%s\" is not supported (use trust, reject, md5, "
                "scram-sha-256, password or cert)",
                f->items[0].text);
}

static void rule_free(struct hba_rule *r)
{
    free_names(r->dbs);
    free_names(r->users);
    free(r->map);
    r->dbs = r->users = NULL;
    r->map = NULL;
}

static int parse_rule(struct parser *P, struct field *fields, int nf, struct hba_rule *r)
{
    memset(r, 0, sizeof(*r));
    r->line = P->line;
    const struct item *type = &fields[0].items[0];
    if (fields[0].n != 1)
        return fail(P, "connection type expected");
    if (keyword(type, "local"))
        r->conn = HBA_LOCAL;
    else if (keyword(type, "host"))
        r->conn = HBA_HOST;
    else if (keyword(type, "hostssl"))
        r->conn = HBA_HOSTSSL;
    else if (keyword(type, "hostnossl"))
        r->conn = HBA_HOSTNOSSL;
    else if (keyword(type, "hostgssenc") || keyword(type, "hostnogssenc"))
        return fail(P, "connection type \"%s\" is not supported (no GSSAPI)", type->text);
    else
        return fail(P, "invalid connection type \"%s\"", type->text);
    int want = r->conn == HBA_LOCAL ? 4 : 5;
    if (nf < want)
        return fail(P, "missing fields: expected TYPE DATABASE USER%s METHOD",
                    r->conn == HBA_LOCAL ? "" : " ADDRESS");
    if (parse_databases(P, &fields[1], r) != 0 || parse_users(P, &fields[2], r) != 0)
        return -1;
    int next = 3;
    if (r->conn != HBA_LOCAL) {
        bool used_mask;
        if (parse_address(P, &fields[3], nf > 4 ? &fields[4] : NULL, r, &used_mask) != 0)
            return -1;
        next = used_mask ? 5 : 4;
    }
    if (next >= nf)
        return fail(P, "authentication method missing");
    if (parse_method(P, &fields[next], &r->method) != 0)
        return -1;
    for (int i = next + 1; i < nf; i++) {
        const struct field *o = &fields[i];
        if (r->method == HBA_CERT && o->n == 1 && strncmp(o->items[0].text, "map=", 4) == 0 &&
            o->items[0].text[4] && !r->map) {
            if (!(r->map = strdup(o->items[0].text + 4)))
                return fail(P, "out of memory");
            continue;
        }
        return fail(P,
                    "option \"%s\" after the method is not supported (only map=NAME, once, "
                    "after cert)",
                    o->items[0].text);
    }
    return 0;
}

void hba_free(struct hba *h)
{
    if (!h)
        return;
    for (int i = 0; i < h->nrules; i++)
        rule_free(&h->rules[i]);
    free(h->rules);
    free(h);
}

/* Split text into lines and each line into fields; on_line gets every line that has any. */
typedef int (*line_fn)(struct parser *P, struct field *fields, int nf, void *ctx);

static int parse_lines(struct parser *P, const char *text, size_t len, line_fn on_line, void *ctx)
{
    struct field *fields = calloc(MAX_FIELDS, sizeof(*fields));
    char *line = malloc(len + 1);
    int rc = 0;
    if (!fields || !line) {
        snprintf(P->err, P->errlen, "%sout of memory", P->origin);
        rc = -1;
    }
    size_t pos = 0;
    while (rc == 0 && pos < len) {
        size_t end = pos;
        while (end < len && text[end] != '\n')
            end++;
        P->line++;
        if (memchr(text + pos, '\0', end - pos)) {
            rc = fail(P, "NUL byte in the file");
            break;
        }
        memcpy(line, text + pos, end - pos);
        line[end - pos] = '\0';
        pos = end + 1;
        int nf = split_line(P, line, fields);
        if (nf < 0) {
            free_fields(fields, MAX_FIELDS);
            rc = -1;
        } else if (nf > 0) {
            rc = on_line(P, fields, nf, ctx);
            free_fields(fields, nf);
        }
    }
    free(fields);
    free(line);
    return rc;
}

static int add_rule(struct parser *P, struct field *fields, int nf, void *ctx)
{
    struct hba *h = ctx;
    struct hba_rule r;
    if (parse_rule(P, fields, nf, &r) != 0) {
        rule_free(&r);
        return -1;
    }
    struct hba_rule *grown = realloc(h->rules, (size_t)(h->nrules + 1) * sizeof(*grown));
    if (!grown) {
        rule_free(&r);
        return fail(P, "out of memory");
    }
    h->rules = grown;
    h->rules[h->nrules++] = r;
    return 0;
}

struct hba *hba_parse(const char *text, size_t len, const char *origin, char *err, size_t errlen)
{
    struct parser P = {.origin = origin ? origin : "", .line = 0, .err = err, .errlen = errlen};
    struct hba *h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(err, errlen, "%sout of memory", P.origin);
        return NULL;
    }
    if (parse_lines(&P, text, len, add_rule, h) != 0) {
        hba_free(h);
        return NULL;
    }
    return h;
}

/* The whole file (blocking: start-up and reload only), NULL with err filled; key names the
 * setting in messages. */
static char *read_file(const char *path, const char *key, size_t *out_len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s %s: %s", key, path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, len = 0;
    char *text = malloc(cap);
    while (text) {
        if (len == cap) {
            if (cap >= (16u << 20)) {
                snprintf(err, errlen, "%s %s: larger than 16 MB", key, path);
                free(text);
                fclose(f);
                return NULL;
            }
            char *grown = realloc(text, cap * 2);
            if (!grown) {
                free(text);
                text = NULL;
                break;
            }
            text = grown;
            cap *= 2;
        }
        size_t n = fread(text + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    bool read_error = ferror(f);
    fclose(f);
    if (!text) {
        snprintf(err, errlen, "%s %s: out of memory", key, path);
        return NULL;
    }
    if (read_error) {
        snprintf(err, errlen, "%s %s: read error", key, path);
        free(text);
        return NULL;
    }
    *out_len = len;
    return text;
}

struct hba *hba_load(const char *path, char *err, size_t errlen)
{
    size_t len;
    char *text = read_file(path, "auth_hba_file", &len, err, errlen);
    if (!text)
        return NULL;
    char origin[600];
    snprintf(origin, sizeof(origin), "auth_hba_file %s: ", path);
    struct hba *h = hba_parse(text, len, origin, err, errlen);
    free(text);
    return h;
}

static bool name_in(char *const *names, const char *name)
{
    for (char *const *p = names; p && *p; p++) {
        if (strcmp(*p, name) == 0)
            return true;
    }
    return false;
}

const struct hba_rule *hba_match(const struct hba *h, const struct hba_login *login)
{
    if (!h)
        return NULL;
    bool local = !login->addr || login->addr->sa.sa_family == AF_UNIX;
    for (int i = 0; i < h->nrules; i++) {
        const struct hba_rule *r = &h->rules[i];
        switch (r->conn) {
        case HBA_LOCAL:
            if (!local)
                continue;
            break;
        case HBA_HOST:
            if (local)
                continue;
            break;
        case HBA_HOSTSSL:
            if (local || !login->tls)
                continue;
            break;
        case HBA_HOSTNOSSL:
            if (local || login->tls)
                continue;
            break;
        }
        /* keywords became flags; a quoted "all" is a name like any other */
        if (!r->all_dbs && !(r->sameuser && strcmp(login->database, login->user) == 0) &&
            !name_in(r->dbs, login->database))
            continue;
        if (!r->all_users && !name_in(r->users, login->user))
            continue;
        if (r->conn != HBA_LOCAL && !r->all_addrs && !cidr_contains(&r->addr, login->addr))
            continue;
        return r;
    }
    return NULL;
}

/* ---- auth_ident_file ---- */

struct ident_line {
    char *map;
    char *system_user; /* the name, or the regular expression without its / */
    bool is_regex;
    regex_t re;
    char *user; /* may hold \1; NULL: all */
};

struct hba_ident {
    struct ident_line *lines;
    int n;
};

void hba_ident_free(struct hba_ident *m)
{
    if (!m)
        return;
    for (int i = 0; i < m->n; i++) {
        struct ident_line *l = &m->lines[i];
        if (l->is_regex)
            regfree(&l->re);
        free(l->map);
        free(l->system_user);
        free(l->user);
    }
    free(m->lines);
    free(m);
}

int hba_ident_count(const struct hba_ident *m)
{
    return m ? m->n : 0;
}

static int add_ident_line(struct parser *P, struct field *fields, int nf, void *ctx)
{
    struct hba_ident *m = ctx;
    if (nf != 3)
        return fail(P, "expected MAPNAME SYSTEM-USERNAME PG-USERNAME");
    for (int i = 0; i < 3; i++) {
        if (fields[i].n != 1)
            return fail(P, "a list is not allowed here (quote a name with a comma)");
    }
    const struct item *sys = &fields[1].items[0], *user = &fields[2].items[0];
    if (!user->quoted && (user->text[0] == '+' || user->text[0] == '@'))
        return fail(P, "PG-USERNAME \"%s\": +group and @file are not supported", user->text);
    struct ident_line l = {0};
    l.is_regex = sys->text[0] == '/';
    if (l.is_regex) {
        int rc = regcomp(&l.re, sys->text + 1, REG_EXTENDED);
        if (rc != 0) {
            char why[200];
            regerror(rc, &l.re, why, sizeof(why));
            return fail(P, "invalid regular expression \"%s\": %s", sys->text + 1, why);
        }
    }
    l.map = strdup(fields[0].items[0].text);
    l.system_user = strdup(l.is_regex ? sys->text + 1 : sys->text);
    bool all = !user->quoted && strcmp(user->text, "all") == 0;
    l.user = all ? NULL : strdup(user->text);
    struct ident_line *grown = realloc(m->lines, (size_t)(m->n + 1) * sizeof(*grown));
    if (!l.map || !l.system_user || (!all && !l.user) || !grown) {
        if (grown)
            m->lines = grown;
        if (l.is_regex)
            regfree(&l.re);
        free(l.map);
        free(l.system_user);
        free(l.user);
        return fail(P, "out of memory");
    }
    m->lines = grown;
    m->lines[m->n++] = l;
    return 0;
}

struct hba_ident *hba_ident_parse(const char *text, size_t len, const char *origin, char *err,
                                  size_t errlen)
{
    struct parser P = {.origin = origin ? origin : "", .line = 0, .err = err, .errlen = errlen};
    struct hba_ident *m = calloc(1, sizeof(*m));
    if (!m) {
        snprintf(err, errlen, "%sout of memory", P.origin);
        return NULL;
    }
    if (parse_lines(&P, text, len, add_ident_line, m) != 0) {
        hba_ident_free(m);
        return NULL;
    }
    return m;
}

struct hba_ident *hba_ident_load(const char *path, char *err, size_t errlen)
{
    size_t len;
    char *text = read_file(path, "auth_ident_file", &len, err, errlen);
    if (!text)
        return NULL;
    char origin[600];
    snprintf(origin, sizeof(origin), "auth_ident_file %s: ", path);
    struct hba_ident *m = hba_ident_parse(text, len, origin, err, errlen);
    free(text);
    return m;
}

/* A regex line: its PG-USERNAME with \1 replaced by the first parenthesized match, as in
 * Postgres's check_ident_usermap. */
static bool regex_line_matches(const struct ident_line *l, const char *system_user,
                               const char *user)
{
    regmatch_t match[2];
    if (regexec(&l->re, system_user, 2, match, 0) != 0)
        return false;
    if (!l->user)
        return true;
    const char *ref = strstr(l->user, "\\1");
    if (!ref)
        return strcmp(l->user, user) == 0;
    if (match[1].rm_so < 0)
        return false; /* \1 without a parenthesized match: Postgres refuses the login too */
    size_t before = (size_t)(ref - l->user), got = (size_t)(match[1].rm_eo - match[1].rm_so);
    const char *after = ref + 2;
    return strlen(user) == before + got + strlen(after) && strncmp(user, l->user, before) == 0 &&
           strncmp(user + before, system_user + match[1].rm_so, got) == 0 &&
           strcmp(user + before + got, after) == 0;
}

bool hba_ident_match(const struct hba_ident *m, const char *map, const char *system_user,
                     const char *user)
{
    for (int i = 0; m && i < m->n; i++) {
        const struct ident_line *l = &m->lines[i];
        if (strcmp(l->map, map) != 0)
            continue;
        if (l->is_regex ? regex_line_matches(l, system_user, user)
                        : strcmp(l->system_user, system_user) == 0 &&
                              (!l->user || strcmp(l->user, user) == 0))
            return true;
    }
    return false;
}
