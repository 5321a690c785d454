/* log: formatting and output of log lines (see log.h). Identity prefixes come from the client
 * and server structs, so every line about a connection says which one it was. */
#include "log.h"

#include "client.h"
#include "pool.h"
#include "server.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static enum log_level current_level = LOG_INFO;
static bool as_json;
static FILE *logfile_fp;

static const char *level_names[] = {"ERROR", "WARNING", "LOG", "DEBUG"};

int log_level_parse(const char *s, enum log_level *out)
{
    static const struct {
        const char *name;
        enum log_level level;
    } names[] = {{"error", LOG_ERROR},     {"warning", LOG_WARNING}, {"warn", LOG_WARNING},
                 {"info", LOG_INFO},       {"log", LOG_INFO},        {"debug", LOG_DEBUG},
                 {"noise", LOG_DEBUG}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcasecmp(s, names[i].name) == 0) {
            *out = names[i].level;
            return 0;
        }
    }
    return -1;
}

void log_configure(enum log_level level, bool json, const char *logfile)
{
    current_level = level;
    as_json = json;
    if (logfile_fp) {
        fclose(logfile_fp);
        logfile_fp = NULL;
    }
    if (logfile && logfile[0]) {
        logfile_fp = fopen(logfile, "a");
        if (logfile_fp)
            setvbuf(logfile_fp, NULL, _IOLBF, 0);
        else
            fprintf(stderr, "sluice: cannot open logfile %s\n", logfile);
    }
}

void log_close(void)
{
    if (logfile_fp)
        fclose(logfile_fp);
    logfile_fp = NULL;
}

bool log_enabled(enum log_level level)
{
    return level <= current_level;
}

static void json_escape(char *out, size_t outlen, const char *in)
{
    size_t o = 0;
    for (; *in && o + 7 < outlen; in++) {
        unsigned char ch = (unsigned char)*in;
        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (ch < 0x20) {
            o += (size_t)snprintf(out + o, outlen - o, "\\u%04x", ch);
        } else {
            out[o++] = (char)ch;
        }
    }
    out[o] = '\0';
}

static void emit(enum log_level level, const char *who, const char *fmt, va_list ap)
{
    char msg[2048];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[64];
    size_t n = strftime(ts, sizeof(ts), "%Y-%m-%d %H:%M:%S", &tm);
    snprintf(ts + n, sizeof(ts) - n, ".%03d UTC", (int)(tv.tv_usec / 1000));

    char line[8192];
    if (as_json) {
        char emsg[2048 * 2], ewho[512];
        json_escape(emsg, sizeof(emsg), msg);
        json_escape(ewho, sizeof(ewho), who ? who : "");
        snprintf(line, sizeof(line), "{\"ts\":\"%s\",\"pid\":%d,\"level\":\"%s\",\"conn\":\"%s\",\"msg\":\"%s\"}\n",
                 ts, (int)getpid(), level_names[level], ewho, emsg);
    } else {
        snprintf(line, sizeof(line), "%s [%d] %s %s%s%s\n", ts, (int)getpid(), level_names[level],
                 who ? who : "", who ? " " : "", msg);
    }
    fputs(line, stderr);
    if (logfile_fp)
        fputs(line, logfile_fp);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    va_list ap;
    va_start(ap, fmt);
    emit(level, NULL, fmt, ap);
    va_end(ap);
}

void log_client(enum log_level level, const struct client *c, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    char who[384], addr[64];
    peer_addr_text(&c->addr, addr, sizeof(addr));
    snprintf(who, sizeof(who), "C-%llu %s/%s@%s", (unsigned long long)c->id,
             c->database ? c->database : "?", c->user ? c->user : "?", addr);
    va_list ap;
    va_start(ap, fmt);
    emit(level, who, fmt, ap);
    va_end(ap);
}

void log_server(enum log_level level, const struct server *s, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    char who[384];
    snprintf(who, sizeof(who), "S-%llu %s/%s", (unsigned long long)s->id, s->pool->db_name,
             s->pool->user_name);
    va_list ap;
    va_start(ap, fmt);
    emit(level, who, fmt, ap);
    va_end(ap);
}
