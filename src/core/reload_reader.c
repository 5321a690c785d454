/* reload_reader: a reload's or a console SET's blocking file reads on a detached thread of its
 * own (see reload_reader.h); the loop only starts it, hears that it finished, warns while it
 * takes long, and may abandon it.
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
 * abandons it (reload_reader_abandon, reload_reader_close), after which the thread never
 * touches the reader. */
struct reload_job {
    pthread_mutex_t mu;
    int refs;
    bool finished;
    uv_async_t *notify; /* the reader's done handle; NULL once the loop abandoned the read */
    atomic_int step;    /* enum reload_step: what the thread reads now, for the slow warning */
    char *path;
    char *key; /* the SET's key (STEP_FILES from the start), or NULL: a reload's every file */
    char **env;
    const struct reload_files_ops *files;
    struct reload_result result; /* the thread's until finished, then the loop's */
};

static void job_free(struct reload_job *job)
{
    free(job->path);
    free(job->key);
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

/* Reads abandoned whose thread has not returned yet (it may never: a FIFO nobody writes): each
 * holds a thread. Changed under the job's mu, on either side, so that abandon and the thread's
 * end count a job once. */
static atomic_int abandoned_reading;

int reload_reader_abandoned(void)
{
    return atomic_load_explicit(&abandoned_reading, memory_order_relaxed);
}

/* Set by reload_reader_exiting, under exit_gate: from then on an abandoned read frees nothing.
 * A thread frees under the gate, so that once main holds it no thread is freeing either. */
static pthread_mutex_t exit_gate = PTHREAD_MUTEX_INITIALIZER;
static bool exit_started;

/* An abandoned job, freed by its thread: OpenSSL objects among its files (a TLS context) must
 * not be freed while exit's atexit handlers clean the library up. */
static void job_free_abandoned(struct reload_job *job)
{
    pthread_mutex_lock(&exit_gate);
    if (!exit_started)
        job_free(job);
    pthread_mutex_unlock(&exit_gate);
}

void reload_reader_exiting(void)
{
    pthread_mutex_lock(&exit_gate);
    exit_started = true;
    pthread_mutex_unlock(&exit_gate);
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
    /* a SET's read starts at STEP_FILES, with the config it made (result.next) */
    if (atomic_load_explicit(&job->step, memory_order_relaxed) == STEP_CONFIG)
        r->next = config_load(job->path, job->env, &r->diag);
    if (r->next) {
        atomic_store_explicit(&job->step, STEP_FILES, memory_order_relaxed);
        r->files = job->files->read(r->next, job->key, r->files_error, sizeof(r->files_error));
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
    else
        atomic_fetch_sub_explicit(&abandoned_reading, 1, memory_order_relaxed);
    bool last = --job->refs == 0;
    pthread_mutex_unlock(&job->mu);
    if (last)
        job_free_abandoned(job); /* nobody wants the result */
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
    if (reader->job->key) {
        log_msg(LOG_WARNING,
                "%s: still reading the files it names after %llu s (a file on a hung mount, or "
                "a FIFO nobody has written?); the running configuration stays in force and "
                "clients are served meanwhile; a RELOAD, SIGHUP or SET now runs once this one "
                "ends, and a cancel of the SET abandons it",
                reader->what, (unsigned long long)secs);
        return;
    }
    log_msg(LOG_WARNING,
            "reload: still reading %s after %llu s (a file on a hung mount, or a FIFO nobody "
            "has written?); the running configuration stays in force and clients are served "
            "meanwhile; a RELOAD, SIGHUP or SET now runs once this one ends",
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
    config_free(job->result.next); /* a SET's config: a failed read gives none back */
    job->result.next = NULL;
    job->finished = true;
    job->refs = 1; /* the loop's only */
    uv_async_send(&reader->done);
}

/* A job for the reader's next read, now its job; NULL (reported as a failed read) when out of
 * memory. */
static struct reload_job *new_job(struct reload_reader *reader, const char *what)
{
    struct reload_job *job = calloc(1, sizeof(*job));
    if (!job) {
        reader->start_failed = true; /* on_read_done reports it, as any failed read */
        uv_async_send(&reader->done);
        return NULL;
    }
    pthread_mutex_init(&job->mu, NULL);
    job->files = reader->files;
    job->notify = &reader->done;
    reader->job = job;
    reader->started_ms = uv_now(reader->done.loop);
    snprintf(reader->what, sizeof(reader->what), "%s", what);
    return job;
}

static void run_job(struct reload_reader *reader, struct reload_job *job);

void reload_reader_start(struct reload_reader *reader, const char *path, char *const *env)
{
    struct reload_job *job = new_job(reader, "reload");
    if (!job)
        return;
    job->env = copy_env(env);
    job->path = path ? strdup(path) : NULL;
    if (!job->env || (path && !job->path)) {
        fail_now(reader, job, "out of memory copying the environment for the reload");
        return;
    }
    run_job(reader, job);
}

void reload_reader_start_files(struct reload_reader *reader, struct config *next, const char *key,
                               const char *what)
{
    struct reload_job *job = new_job(reader, what);
    if (!job) {
        config_free(next);
        return;
    }
    job->result.next = next;
    atomic_init(&job->step, STEP_FILES);
    if (!(job->key = strdup(key))) {
        fail_now(reader, job, "out of memory starting the read");
        return;
    }
    run_job(reader, job);
}

static void run_job(struct reload_reader *reader, struct reload_job *job)
{
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
        snprintf(why, sizeof(why), "cannot start a thread to read the files: %s", strerror(rc));
        fail_now(reader, job, why);
    }
}

void reload_reader_abandon(struct reload_reader *reader)
{
    struct reload_job *job = reader->job;
    reader->start_failed = false; /* its report, still to come, finds nothing to say */
    if (!job)
        return;
    reader->job = NULL;
    uv_timer_stop(&reader->slow);
    pthread_mutex_lock(&job->mu);
    job->notify = NULL; /* the thread will not signal the reader, which may read again */
    if (!job->finished) /* its thread goes on, maybe for ever: counted until it returns */
        atomic_fetch_add_explicit(&abandoned_reading, 1, memory_order_relaxed);
    pthread_mutex_unlock(&job->mu);
    job_put(job); /* finished already: freed here, its result unused */
}

void reload_reader_close(struct reload_reader *reader)
{
    if (!reader->open)
        return;
    reader->open = false;
    reader->start_failed = false;
    if (reader->job) {
        log_msg(LOG_WARNING, "%s: still reading its files at exit; not waiting for it",
                reader->what);
        reload_reader_abandon(reader);
    }
    uv_close((uv_handle_t *)&reader->done, NULL);
    uv_close((uv_handle_t *)&reader->slow, NULL);
}
