/* reload_reader: a reload's blocking file reads on a detached thread of its own (see
 * reload_reader.h); the loop only starts it, hears that it finished, and warns while it takes
 * long.
 *
 * Why not uv_queue_work: libuv's thread pool also runs SCRAM's key derivation (secret.c), DNS
 * (uv_getaddrinfo, resolver.c) and PQcancel (cancel.c). A read stuck on a FIFO would hold one
 * of its threads for ever, and libuv joins its pool's threads when the process exits
 * (uv_library_shutdown), so the exit would hang too; a queued work request also keeps the loop
 * from closing. A detached thread of our own is abandoned at shutdown instead: the process
 * exits while it still sits in read(). */
#include "reload_reader.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "list.h"
#include "log.h"

/* How often the loop says the read still has not finished. */
#define RELOAD_SLOW_WARN_MS 5000

enum reload_step { STEP_CONFIG, STEP_FILES };

/* One read, shared by its thread and the loop: each holds a reference (refs, under mu); the
 * last to let go frees it. The loop lets go when the read finished (on_read_done) or when it
 * abandons it (reload_reader_close), after which the thread never touches the reader. */
struct reload_job {
    pthread_mutex_t mu;
    int refs;
    bool finished;
    uv_async_t *notify; /* the reader's done handle; NULL once the loop abandoned the read */
    atomic_int step;    /* enum reload_step: what the thread reads now, for the slow warning */
    char *path;
    char **env;
    const struct reload_files_ops *files;
    struct reload_result result; /* the thread's until finished, then the loop's */
};

static void job_free(struct reload_job *job)
{
    free(job->path);
    for (char **e = job->env; e && *e; e++)
        free(*e);
    free(job->env);
    config_free(job->result.next);
    if (job->result.files)
        job->files->free(job->result.files);
    config_diag_free(&job->result.diag);
    pthread_mutex_destroy(&job->mu);
    free(job);
}

/* Drop one reference; the last frees the job. */
static void job_put(struct reload_job *job)
{
    pthread_mutex_lock(&job->mu);
    bool last = --job->refs == 0;
    pthread_mutex_unlock(&job->mu);
    if (last)
        job_free(job);
}

/* environ may change on the loop's thread (setenv) while the reader reads it: a copy. */
static char **copy_env(char *const *env)
{
    size_t n = 0;
    while (env && env[n])
        n++;
    char **copy = calloc(n + 1, sizeof(*copy));
    if (!copy)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (!(copy[i] = strdup(env[i]))) {
            for (size_t j = 0; j < i; j++)
                free(copy[j]);
            free(copy);
            return NULL;
        }
    }
    return copy;
}

static void *read_files(void *arg)
{
    struct reload_job *job = arg;
    struct reload_result *r = &job->result;
    r->next = config_load(job->path, job->env, &r->diag);
    if (r->next) {
        atomic_store_explicit(&job->step, STEP_FILES, memory_order_relaxed);
        r->files = job->files->read(r->next, r->files_error, sizeof(r->files_error));
        if (!r->files) {
            config_free(r->next);
            r->next = NULL;
        }
    }
    /* The result is complete before finished is set under mu: the loop reads it only after
     * taking mu and seeing finished, so it gets the whole of it, once. */
    pthread_mutex_lock(&job->mu);
    job->finished = true;
    if (job->notify)
        uv_async_send(job->notify);
    bool last = --job->refs == 0;
    pthread_mutex_unlock(&job->mu);
    if (last)
        job_free(job); /* abandoned: nobody wants the result */
    return NULL;
}

static void on_read_done(uv_async_t *h)
{
    struct reload_reader *reader = container_of(h, struct reload_reader, done);
    struct reload_job *job = reader->job;
    if (!job && reader->start_failed) {
        reader->start_failed = false;
        struct reload_result r = {.next = NULL};
        snprintf(r.files_error, sizeof(r.files_error), "out of memory starting the read");
        reader->on_done(reader, &r);
        return;
    }
    if (!job)
        return;
    pthread_mutex_lock(&job->mu);
    bool finished = job->finished;
    pthread_mutex_unlock(&job->mu);
    if (!finished)
        return;
    reader->job = NULL;
    uv_timer_stop(&reader->slow);
    struct reload_result r = job->result;
    job->result = (struct reload_result){0};
    job_put(job);
    reader->on_done(reader, &r);
}

static void on_slow_timer(uv_timer_t *t)
{
    struct reload_reader *reader = container_of(t, struct reload_reader, slow);
    if (!reader->job)
        return;
    uint64_t secs = (uv_now(t->loop) - reader->started_ms) / 1000;
    int step = atomic_load_explicit(&reader->job->step, memory_order_relaxed);
    log_msg(LOG_WARNING,
            "reload: still reading %s after %llu s (a file on a hung mount, or a FIFO nobody "
            "has written?); the running configuration stays in force and clients are served "
            "meanwhile; a RELOAD or SIGHUP now runs once this one ends",
            step == STEP_CONFIG ? "the configuration (the config file, its %include files, "
                                  "auth_file, DATABASE_URL_FILE and the other *_FILE values)"
                                : "the files the new configuration names (client TLS "
                                  "certificate, key and CA, auth_hba_file, auth_ident_file, "
                                  "logfile)",
            (unsigned long long)secs);
}

int reload_reader_init(struct reload_reader *reader, uv_loop_t *loop,
                       const struct reload_files_ops *files, reload_read_done on_done)
{
    *reader = (struct reload_reader){.files = files, .on_done = on_done};
    int rc = uv_async_init(loop, &reader->done, on_read_done);
    if (rc < 0)
        return rc;
    uv_unref((uv_handle_t *)&reader->done);
    uv_timer_init(loop, &reader->slow);
    uv_unref((uv_handle_t *)&reader->slow);
    reader->open = true;
    return 0;
}

bool reload_reader_busy(const struct reload_reader *reader)
{
    return reader->job != NULL || reader->start_failed;
}

/* A read that could not start: finished at once, reported on the next loop iteration as
 * every read is. */
static void fail_now(struct reload_reader *reader, struct reload_job *job, const char *why)
{
    snprintf(job->result.files_error, sizeof(job->result.files_error), "%s", why);
    job->finished = true;
    job->refs = 1; /* the loop's only */
    uv_async_send(&reader->done);
}

void reload_reader_start(struct reload_reader *reader, const char *path, char *const *env)
{
    struct reload_job *job = calloc(1, sizeof(*job));
    if (!job) {
        reader->start_failed = true; /* on_read_done reports it, as any failed read */
        uv_async_send(&reader->done);
        return;
    }
    pthread_mutex_init(&job->mu, NULL);
    job->files = reader->files;
    job->notify = &reader->done;
    reader->job = job;
    reader->started_ms = uv_now(reader->done.loop);
    job->env = copy_env(env);
    job->path = path ? strdup(path) : NULL;
    if (!job->env || (path && !job->path)) {
        fail_now(reader, job, "out of memory copying the environment for the reload");
        return;
    }
    uv_timer_start(&reader->slow, on_slow_timer, RELOAD_SLOW_WARN_MS, RELOAD_SLOW_WARN_MS);
    job->refs = 2; /* the thread's and the loop's */
    pthread_attr_t attr;
    pthread_t thread;
    int rc = pthread_attr_init(&attr);
    if (rc == 0) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        rc = pthread_create(&thread, &attr, read_files, job);
        pthread_attr_destroy(&attr);
    }
    if (rc != 0) {
        char why[256];
        snprintf(why, sizeof(why), "cannot start a thread to read the configuration: %s",
                 strerror(rc));
        fail_now(reader, job, why);
    }
}

void reload_reader_close(struct reload_reader *reader)
{
    if (!reader->open)
        return;
    reader->open = false;
    struct reload_job *job = reader->job;
    reader->job = NULL;
    reader->start_failed = false;
    if (job) {
        pthread_mutex_lock(&job->mu);
        job->notify = NULL; /* before the handle closes: the thread will not signal it */
        pthread_mutex_unlock(&job->mu);
        log_msg(LOG_WARNING, "reload: still reading its files at exit; not waiting for it");
        job_put(job);
    }
    uv_close((uv_handle_t *)&reader->done, NULL);
    uv_close((uv_handle_t *)&reader->slow, NULL);
}
