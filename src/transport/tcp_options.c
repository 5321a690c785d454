/* tcp_options: see tcp_options.h. */
#include "tcp_options.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* Each setting: its libpq keyword and socket option, in the order they are set. Keepalive
 * (first) gates the three timings after it, as in libpq. */
enum { KEEPALIVE, KEEPIDLE, KEEPINTVL, KEEPCNT, USER_TIMEOUT, NSETTINGS };
static const struct tcp_setting {
    const char *keyword;
    int level;
    int name;
} settings[NSETTINGS] = {
    [KEEPALIVE] = {"keepalives", SOL_SOCKET, SO_KEEPALIVE},
    [KEEPIDLE] = {"keepalives_idle", IPPROTO_TCP, TCP_KEEPIDLE},
    [KEEPINTVL] = {"keepalives_interval", IPPROTO_TCP, TCP_KEEPINTVL},
    [KEEPCNT] = {"keepalives_count", IPPROTO_TCP, TCP_KEEPCNT},
    [USER_TIMEOUT] = {"tcp_user_timeout", IPPROTO_TCP, TCP_USER_TIMEOUT},
};

static const char *entry_keyword(const struct db_entry *db, const char *keyword)
{
    for (int i = 0; db && i < db->nkeys; i++) {
        if (strcmp(db->pq_keywords[i], keyword) == 0)
            return db->pq_values[i];
    }
    return NULL;
}

/* The config's value of each setting (0: the OS's; keepalive 0 or 1). */
static void config_values(const struct config *cfg, int out[NSETTINGS])
{
    out[KEEPALIVE] = cfg->tcp_keepalive ? 1 : 0;
    out[KEEPIDLE] = (int)cfg->tcp_keepidle;
    out[KEEPINTVL] = (int)cfg->tcp_keepintvl;
    out[KEEPCNT] = (int)cfg->tcp_keepcnt;
    out[USER_TIMEOUT] = (int)cfg->tcp_user_timeout;
}

/* The values for a socket: the config's, each overridden by db's keyword where it has one. */
static void values_for(const struct config *cfg, const struct db_entry *db, int out[NSETTINGS])
{
    config_values(cfg, out);
    for (int i = 0; i < NSETTINGS; i++) {
        const char *own = entry_keyword(db, settings[i].keyword);
        if (own)
            out[i] = atoi(own);
    }
}

static bool wanted(const int values[NSETTINGS], int i)
{
    bool timing = i == KEEPIDLE || i == KEEPINTVL || i == KEEPCNT;
    return values[i] != 0 && (!timing || values[KEEPALIVE]);
}

int tcp_options_apply(int fd, const struct config *cfg, const struct db_entry *db)
{
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
        return -errno;
    int values[NSETTINGS];
    values_for(cfg, db, values);
    for (int i = 0; i < NSETTINGS; i++) {
        if (wanted(values, i) &&
            setsockopt(fd, settings[i].level, settings[i].name, &values[i], sizeof(int)) < 0)
            return -errno;
    }
    return 0;
}

bool tcp_options_present(int fd, const struct config *cfg)
{
    int got = 0;
    socklen_t len = sizeof(got);
    if (getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &got, &len) < 0 || !got)
        return false;
    int values[NSETTINGS];
    config_values(cfg, values);
    for (int i = 0; i < NSETTINGS; i++) {
        if (!wanted(values, i))
            continue;
        got = 0;
        len = sizeof(got);
        if (getsockopt(fd, settings[i].level, settings[i].name, &got, &len) < 0)
            return false;
        /* SO_KEEPALIVE reads back as any non-zero value */
        if (i == KEEPALIVE ? !got : got != values[i])
            return false;
    }
    return true;
}

int tcp_options_keywords(const struct config *cfg, const struct db_entry *db, const char **kw,
                         const char **val, int n, struct tcp_keywords *text)
{
    int values[NSETTINGS];
    config_values(cfg, values);
    for (int i = 0; i < NSETTINGS; i++) {
        /* the entry's own keyword wins; keepalive is always said (libpq's default is on),
         * the others only when set (0 leaves the OS's) and keepalive is on */
        if (entry_keyword(db, settings[i].keyword) || (i != KEEPALIVE && !wanted(values, i)))
            continue;
        snprintf(text->text[i], sizeof text->text[i], "%d", values[i]);
        kw[n] = settings[i].keyword;
        val[n++] = text->text[i];
    }
    return n;
}
