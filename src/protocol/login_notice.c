/* login_notice: the NOTICEs Postgres sends a client at login (login_notice.h says which and
 * why sluice writes them itself). Builds messages and learns their source fields; no I/O. */
#include "login_notice.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define NAMEDATALEN 64 /* Postgres keeps a name in NAMEDATALEN - 1 bytes */

/* Startup parameters Postgres parses as names (GUC_IS_NAME) that a client may set at login. */
static const char *const name_params[] = {"application_name", "role", "session_authorization"};

/* client_min_messages above NOTICE (Postgres's levels: debug5..debug1, log, notice, warning,
 * error): Postgres then sends the client no NOTICE at all. */
static bool notices_quiet(const struct param_set *startup)
{
    const char *level = params_get(startup, "client_min_messages");
    return level && (strcasecmp(level, "warning") == 0 || strcasecmp(level, "error") == 0);
}

char *login_notice_plan(const struct param_set *startup)
{
    size_t need = 0;
    for (size_t i = 0; i < sizeof(name_params) / sizeof(name_params[0]); i++) {
        const char *v = params_get(startup, name_params[i]);
        if (v && v != params_unknown && strlen(v) >= NAMEDATALEN)
            need += strlen(v) + 1;
    }
    if (need == 0 || notices_quiet(startup))
        return NULL;
    char *plan = malloc(need + 1), *at = plan;
    if (!plan)
        return NULL; /* the notice is lost, the login is not */
    for (size_t i = 0; i < sizeof(name_params) / sizeof(name_params[0]); i++) {
        const char *v = params_get(startup, name_params[i]);
        if (v && v != params_unknown && strlen(v) >= NAMEDATALEN) {
            size_t n = strlen(v) + 1;
            memcpy(at, v, n);
            at += n;
        }
    }
    *at = '\0';
    return plan;
}

static void put_field(struct msg_out *o, uint8_t code, const char *value)
{
    if (!value[0])
        return;
    codec_put_u8(o, code);
    codec_put_cstring(o, value);
}

void login_notice_put(struct msg_out *o, const char *plan, const char *server_encoding,
                      const struct login_notice_source *src)
{
    for (const char *v = plan; v && *v; v += strlen(v) + 1) {
        size_t kept = params_name_kept_len(v, server_encoding);
        /* Postgres's errmsg, in its own words: "identifier \"%s\" will be truncated to
         * \"%.*s\"" (scansup.c truncate_identifier). */
        size_t n = strlen(v) * 2 + 64;
        char *text = malloc(n);
        if (!text)
            return;
        snprintf(text, n, "identifier \"%s\" will be truncated to \"%.*s\"", v, (int)kept, v);
        codec_begin(o, 'N');
        put_field(o, 'S', src->severity[0] ? src->severity : "NOTICE");
        put_field(o, 'V', "NOTICE");
        put_field(o, 'C', "42622");
        put_field(o, 'M', text);
        put_field(o, 'F', src->file);
        put_field(o, 'L', src->line);
        put_field(o, 'R', src->routine);
        codec_put_u8(o, 0);
        codec_end(o);
        free(text);
    }
}

static void copy_field(char *dst, size_t cap, const char *value)
{
    snprintf(dst, cap, "%s", value ? value : "");
}

void login_notice_learn(struct login_notice_source *src, const char *sqlstate, const char *severity,
                        const char *file, const char *line, const char *routine)
{
    if (!sqlstate || strcmp(sqlstate, "42622") != 0 || src->file[0])
        return;
    copy_field(src->severity, sizeof(src->severity), severity);
    copy_field(src->file, sizeof(src->file), file);
    copy_field(src->line, sizeof(src->line), line);
    copy_field(src->routine, sizeof(src->routine), routine);
}

void login_notice_learn_body(struct login_notice_source *src, const uint8_t *body, size_t len)
{
    const char *f[5] = {0}; /* C, S, F, L, R */
    static const char codes[] = "CSFLR";
    size_t i = 0;
    while (i < len && body[i]) {
        uint8_t code = body[i++];
        const char *value = (const char *)body + i;
        const uint8_t *end = memchr(body + i, 0, len - i);
        if (!end)
            return; /* a field without its end: learn nothing from it */
        const char *slot = strchr(codes, code);
        if (slot && code)
            f[slot - codes] = value;
        i = (size_t)(end - body) + 1;
    }
    login_notice_learn(src, f[0], f[1], f[2], f[3], f[4]);
}
