/* log: formatting and output of log lines (see log.h). The identity prefix of a line about a
 * connection is formatted by that connection's owner (log_client in client.c, log_server in
 * server.c); this file knows no clients, pools or servers. */
#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* Shared by every thread. The level and format are read on every line and changed only by a
 * reload: relaxed atomics (a line racing the reload may use either setting). The file is
 * reopened by a reload while other threads write lines: file_mu orders the two, so no line is
 * written to a closed FILE and none is lost. Lines to stderr need no lock of ours: stdio locks
 * the stream for each fputs, so lines never interleave. */
static atomic_int current_level = LOG_INFO;
static atomic_bool as_json;
static pthread_mutex_t file_mu = PTHREAD_MUTEX_INITIALIZER;
static FILE *logfile_fp; /* under file_mu */

static const char *level_names[] = {"ERROR", "WARNING", "LOG", "DEBUG"};

void log_configure(enum log_level level, bool json, const char *logfile)
{
    FILE *fp = NULL;
    if (logfile && logfile[0]) {
        fp = fopen(logfile, "a");
        if (!fp)
            fprintf(stderr, "sluice: cannot open logfile %s\n", logfile);
    }
    log_configure_file(level, json, fp);
}

void log_configure_file(enum log_level level, bool json, FILE *fp)
{
    atomic_store_explicit(&current_level, (int)level, memory_order_relaxed);
    atomic_store_explicit(&as_json, json, memory_order_relaxed);
    if (fp)
        setvbuf(fp, NULL, _IOLBF, 0);
    pthread_mutex_lock(&file_mu);
    FILE *old = logfile_fp;
    logfile_fp = fp;
    pthread_mutex_unlock(&file_mu);
    if (old)
        fclose(old);
}

void log_close(void)
{
    pthread_mutex_lock(&file_mu);
    FILE *old = logfile_fp;
    logfile_fp = NULL;
    pthread_mutex_unlock(&file_mu);
    if (old)
        fclose(old);
}

bool log_enabled(enum log_level level)
{
    return (int)level <= atomic_load_explicit(&current_level, memory_order_relaxed);
}

/* Client-supplied text (user, database, application_name, options, a server's error echoing
 * them) is logged before anything is authenticated: a newline in it would start a line of its
 * own, a forged "login ok", and an escape sequence would rewrite the operator's terminal. Every
 * line goes through here, so no caller has to remember: control characters (and DEL) become
 * \n, \r, \t or \xNN in text, \u00NN in JSON, where '"' and '\' are escaped too. */
enum escape_for { ESCAPE_FOR_TEXT, ESCAPE_FOR_JSON };

static void escape_controls(char *out, size_t outlen, const char *in, enum escape_for form)
{
    size_t o = 0;
    for (; *in && o + 7 < outlen; in++) {
        unsigned char ch = (unsigned char)*in;
        bool control = ch < 0x20 || ch == 0x7f;
        if (form == ESCAPE_FOR_JSON && (ch == '"' || ch == '\\')) {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (control && form == ESCAPE_FOR_JSON) {
            o += (size_t)snprintf(out + o, outlen - o, "\\u%04x", ch);
        } else if (control) {
            const char *named = ch == '\n' ? "\\n" : ch == '\r' ? "\\r" : ch == '\t' ? "\\t" : NULL;
            if (named)
                o += (size_t)snprintf(out + o, outlen - o, "%s", named);
            else
                o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", ch);
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

    /* An escaped byte takes up to 6 (\u00NN); the line holds both whole, so it always ends in
     * its newline. */
    char emsg[sizeof msg * 6], ewho[384 * 6], line[sizeof emsg + sizeof ewho + 256];
    if (atomic_load_explicit(&as_json, memory_order_relaxed)) {
        escape_controls(emsg, sizeof(emsg), msg, ESCAPE_FOR_JSON);
        escape_controls(ewho, sizeof(ewho), who ? who : "", ESCAPE_FOR_JSON);
        snprintf(line, sizeof(line), "{\"ts\":\"%s\",\"pid\":%d,\"level\":\"%s\",\"conn\":\"%s\",\"msg\":\"%s\"}\n",
                 ts, (int)getpid(), level_names[level], ewho, emsg);
    } else {
        escape_controls(emsg, sizeof(emsg), msg, ESCAPE_FOR_TEXT);
        escape_controls(ewho, sizeof(ewho), who ? who : "", ESCAPE_FOR_TEXT);
        snprintf(line, sizeof(line), "%s [%d] %s %s%s%s\n", ts, (int)getpid(), level_names[level],
                 ewho, who ? " " : "", emsg);
    }
    fputs(line, stderr);
    pthread_mutex_lock(&file_mu);
    if (logfile_fp)
        fputs(line, logfile_fp);
    pthread_mutex_unlock(&file_mu);
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

void log_msg_as(enum log_level level, const char *who, const char *fmt, va_list ap)
{
    if (log_enabled(level))
        emit(level, who, fmt, ap);
}
