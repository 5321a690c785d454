/* log: one line per event, carrying the identity of the connection it concerns
 * (C-<id> db/user@addr, S-<id> db/user), as text or JSON, to stderr and optionally a file. */
#ifndef SLUICE_LOG_H
#define SLUICE_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>

#include "config.h" /* enum log_level: log_level is parsed with the other keys */

/* Any thread may log at any time; log_configure (start, reload) may run while others log: a
 * line goes whole to the old file or the new one, never to a closed one. */
void log_configure(enum log_level level, bool json, const char *logfile);
/* The same with the logfile already open (NULL: none), as a reload opens it off the loop
 * (reload_reader.h); fp is taken. */
void log_configure_file(enum log_level level, bool json, FILE *fp);
void log_close(void);
bool log_enabled(enum log_level level);

void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* One line carrying who, a connection's identity as its owner formats it (log_client in
 * client.h, log_server in server.h). */
void log_msg_as(enum log_level level, const char *who, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warning(...) log_msg(LOG_WARNING, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_enabled(LOG_DEBUG))                                                                \
            log_msg(LOG_DEBUG, __VA_ARGS__);                                                       \
    } while (0)

#endif
