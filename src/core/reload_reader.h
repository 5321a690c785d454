/* reload_reader: the one place where files are read off the loop, on a thread of its own, so
 * that a file that blocks (a FIFO nobody writes, a hung NFS mount) never holds the process's
 * loop. Two kinds of read: a reload's (the config file, its %include files, auth_file and the
 * *_FILE environment values: config_load; then the files the new config names) and a console
 * SET's (only the files the config given names for its key). The files the config names are
 * read by a function the caller gives (sluice.c's: TLS certificates, hba and ident files,
 * logfile), which it then puts in force without reading them again. The finished config and
 * files come back to the loop once, whole, through an async handle; what to do with them is
 * sluice.c's. One read at a time: sluice.c orders the reloads and SETs asked for meanwhile. */
#ifndef SLUICE_RELOAD_READER_H
#define SLUICE_RELOAD_READER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"

/* What a read found, handed to the loop. */
struct reload_result {
    struct config *next;     /* the new config, valid and its files usable; NULL when not */
    void *files;             /* with next: what the files reader made of the files it names */
    struct config_diag diag; /* config_load's warnings, and its errors when next is NULL */
    /* when config_load succeeded but a file it names cannot be used (the files reader's err) */
    char files_error[1024];
};

/* Read the files cfg names, on the reading thread: what the loop will put in force, or NULL
 * with what is wrong in err. key: NULL for a reload (every file), else the SET's key (the
 * files it puts in force). */
struct reload_files_ops {
    void *(*read)(const struct config *cfg, const char *key, char *err, size_t errlen);
    void (*free)(void *files); /* a read nobody took (abandoned at exit, or the loop's) */
};
struct reload_reader;
/* On the loop: the read is over; the callee owns r->next, r->files and r->diag. */
typedef void (*reload_read_done)(struct reload_reader *reader, struct reload_result *r);

struct reload_job;

struct reload_reader {
    uv_async_t done;        /* the reading thread's "finished" */
    uv_timer_t slow;        /* warns, every few seconds, while the read has not finished */
    bool open;              /* its handles are initialised and not yet closed */
    struct reload_job *job; /* the read in flight, or NULL */
    bool start_failed;      /* out of memory for a job: reported as a failed read */
    uint64_t started_ms;
    char what[160]; /* the read in flight, for the slow warning: "reload", "SET key = 'value'" */
    const struct reload_files_ops *files;
    reload_read_done on_done;
};

/* Set up the handles on loop (unref'd: a reader never keeps the loop alive). 0 or UV_E*. */
int reload_reader_init(struct reload_reader *reader, uv_loop_t *loop,
                       const struct reload_files_ops *files, reload_read_done on_done)
    __attribute__((warn_unused_result));
/* Read the config at path (NULL: the environment only) with a snapshot of env. Only when not
 * reload_reader_busy. on_done always follows, on a later loop iteration (a thread that cannot
 * be started is a failed read, with its error in diag). */
void reload_reader_start(struct reload_reader *reader, const char *path, char *const *env);
/* A console SET's read: the files next (a validated config, taken) names for key, on the
 * reading thread; on_done gets next back with them, or NULL and files_error. what names the
 * SET in the slow warning. Only when not reload_reader_busy. */
void reload_reader_start_files(struct reload_reader *reader, struct config *next, const char *key,
                               const char *what);
bool reload_reader_busy(const struct reload_reader *reader);
/* The loop no longer wants the read in flight (a cancelled SET): the reader is free for the
 * next read at once; the abandoned thread frees what it made when its read returns (it may sit
 * in open() or read() for ever), touching nothing of the reader's, and on_done never comes for
 * it. Nothing in flight: nothing happens. */
void reload_reader_abandon(struct reload_reader *reader);
/* How many abandoned reads' threads have not returned yet (process-wide, any thread): each
 * is a thread that may sit in open() or read() for ever. */
int reload_reader_abandoned(void);
/* Close the handles; a read still in flight is abandoned, never waited for. Idempotent. */
void reload_reader_close(struct reload_reader *reader);
/* The process is about to exit (main, after the loop's end): a thread whose abandoned read
 * returns from here on frees nothing (a TLS context among it), since exit's handlers may run
 * at that moment; the process's end takes the memory back. Waits for a thread that is freeing
 * now. (main.c also keeps OpenSSL from cleaning itself up at exit: OPENSSL_INIT_NO_ATEXIT.) */
void reload_reader_exiting(void);

#endif
