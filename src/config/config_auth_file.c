/* config_auth_file: PgBouncer's userlist.txt (auth_file), read at load, into config->auth. */
#include "config_load.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* "text" with "" for a quote; advances *sp past it. NULL when malformed. */
static char *userlist_quoted(const char **sp)
{
    const char *p = *sp;
    if (*p != '"')
        return NULL;
    char *out = malloc(strlen(p) + 1);
    size_t n = 0;
    if (!out)
        return NULL;
    for (p++;; p++) {
        if (!*p || *p == '\n') {
            out[n] = '\0';
            config_free_secret(out);
            return NULL;
        }
        if (*p == '"') {
            if (p[1] != '"')
                break;
            p++;
        }
        out[n++] = *p;
    }
    out[n] = '\0';
    *sp = p + 1;
    return out;
}

void config_auth_add(struct loader *L, const char *user, const char *secret)
{
    struct config *c = L->c;
    char *u = strdup(user), *s = strdup(secret);
    struct auth_entry *grown = realloc(c->auth, (size_t)(c->nauth + 1) * sizeof *grown);
    if (!u || !s || !grown) {
        free(u);
        config_free_secret(s);
        if (grown)
            c->auth = grown;
        L->oom = true;
        return;
    }
    c->auth = grown;
    c->auth[c->nauth++] = (struct auth_entry){.user = u, .secret = s};
}

void config_auth_file_load(struct loader *L)
{
    const char *file = L->c->auth_file;
    if (!file || !file[0])
        return;
    char *path = NULL;
    const char *slash = L->c->path ? strrchr(L->c->path, '/') : NULL;
    if (file[0] != '/' && slash) { /* relative to the config file's directory */
        if (asprintf(&path, "%.*s/%s", (int)(slash - L->c->path), L->c->path, file) < 0) {
            L->oom = true;
            return;
        }
    } else if (!(path = load_strdup(L, file))) {
        return;
    }
    char *text;
    int rc = config_read_text_file(path, &text);
    if (rc != 0) {
        load_error(L, "auth_file %s: cannot read it: %s", path,
                   rc == -EINVAL ? "it contains a NUL byte" : strerror(-rc));
        free(path);
        return;
    }
    int line = 0;
    for (const char *p = text; *p;) {
        const char *eol = strchr(p, '\n');
        line++;
        while (*p == ' ' || *p == '\t' || *p == '\r')
            p++;
        if (*p && *p != '\n' && *p != ';' && *p != '#') {
            char *user = userlist_quoted(&p);
            while (user && (*p == ' ' || *p == '\t'))
                p++;
            char *secret = user ? userlist_quoted(&p) : NULL;
            if (!user || !secret || !user[0])
                load_error(L,
                           "auth_file %s line %d: expected \"user\" \"password\" (double "
                           "quotes, \"\" for a quote inside)",
                           path, line);
            else
                config_auth_add(L, user, secret);
            free(user);
            config_free_secret(secret);
        }
        if (!eol)
            break;
        p = eol + 1;
    }
    config_free_secret(text);
    free(path);
}

/* PgBouncer: a user listed again replaces the earlier line. Keep the last, in file order. */
void config_auth_file_drop_repeated(struct config *c)
{
    int kept = 0;
    for (int i = 0; i < c->nauth; i++) {
        bool later = false;
        for (int j = i + 1; j < c->nauth && !later; j++)
            later = strcmp(c->auth[i].user, c->auth[j].user) == 0;
        if (later) {
            free(c->auth[i].user);
            config_free_secret(c->auth[i].secret);
        } else {
            c->auth[kept++] = c->auth[i];
        }
    }
    c->nauth = kept;
}
