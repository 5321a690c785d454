/* reload_reader: a reload's files read on a thread of its own, so that a file that blocks (a
 * FIFO nobody writes, a hung NFS mount) never holds the process's loop: the config file, its
 * %include files, auth_file and the *_FILE environment values (config_load), then the files the
 * new config names, read by a function the caller gives (sluice.c's: TLS certificates, hba and
 * ident files, logfile), which it then puts in force without reading them again. The finished
 * config and files come back to the loop once, whole, through an async handle; what to do with
 * them is sluice.c's. One read at a time: sluice.c coalesces the reloads asked for meanwhile. */
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
 * with what is wrong in err. */
struct reload_files_ops {
    void *(*read)(const struct config *cfg, char *err, size_t errlen);
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
bool reload_reader_busy(const struct reload_reader *reader);
/* Close the handles; a read still in flight is abandoned, never waited for (its thread may
 * sit in open() or read() for ever): the thread frees what it made when it returns, touching
 * nothing of the reader's. Idempotent. */
void reload_reader_close(struct reload_reader *reader);

#endif
