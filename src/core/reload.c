/* reload: the config generations after start (see reload.h): a reload (SIGHUP, the console's
 * RELOAD) or a console SET becomes the process's next generation on the control thread, with
 * the files it names put in force as read. What is read off the loop is read by the reload
 * reader (reload_reader.c), which this file gives to reloads and SETs one at a time, in the
 * order asked (read_next). */
#include "reload.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "budget.h"
#include "control.h"
#include "disabled_dbs.h"
#include "log.h"
#include "pool.h"
#include "tls.h"
#include "worker.h"

extern char **environ;

/* next becomes the process's config; the old one, still referenced, is returned. The control
 * worker runs under the new one from here: what a reload's steps close or log read it, as with
 * one loop. The others swap when their message comes (publish_generation). */
static struct config *swap_config(struct process *proc, struct config *next)
{
    struct config *old = proc->cfg;
    proc->cfg = next;
    sluice_control_worker(proc)->cfg = next;
    return old;
}

/* A database the new generation no longer has (no entry of its own, no "*" entry) is forgotten
 * as PgBouncer forgets it: its PAUSE, KILL or DISABLE ends, so adding it back gives one that
 * serves. Posted after the reload messages, which close its clients first (control.h). */
static void forget_removed_dbs(struct process *proc, const struct config *old)
{
    for (int i = 0; i < old->ndbs; i++) {
        const char *name = old->dbs[i].name;
        if (strcmp(name, "*") == 0 || config_find_db(proc->cfg, name))
            continue;
        disabled_dbs_remove(proc, name);
        control_resume(sluice_control_worker(proc), name);
    }
}

/* The budgets of proc->cfg, then every worker told to apply it; old released. */
static void publish_generation(struct process *proc, struct config *old)
{
    struct config *next = proc->cfg;
    if (budget_sync(proc) < 0)
        log_msg(LOG_ERROR, "reload: out of memory updating budgets; the old ones stay");
    proc->reload_seq++;
    for (int i = 0; i < proc->nworkers; i++)
        worker_post_reload(&proc->workers[i], next);
    forget_removed_dbs(proc, old);
    config_free(old);
    pool_dispatch_all(sluice_control_worker(proc)); /* the others in their reload message */
}

/* next (a validated config whose reference the caller gives up) becomes the process's, as a
 * reload's does after loading: budgets synced, every worker told to swap to it
 * (sluice_reload_done says when all have), the old generation released. */
static void apply_generation(struct process *proc, struct config *next)
{
    publish_generation(proc, swap_config(proc, next));
}

static void report_restart_key(const char *key, const char *running, const char *wanted)
{
    log_msg(LOG_WARNING, "reload: %s = '%s' takes effect only at a restart; '%s' stays in use", key,
            wanted, running);
}

/* The files besides the config's own that a reload, or a console SET of a key of theirs, puts
 * in force, read on the reader's thread (reload_reader.h) and put in force on the loop as they
 * were read: never opened twice, so a file that blocks blocks only the reading thread, and one
 * that changes between the two cannot be half used. */
struct named_files {
    struct tls_context *tls;
    struct auth_files *auth;
    FILE *logfile; /* NULL: cfg names none */
};

/* Which of them a key puts in force (NULL: a reload, every one). */
enum named_file_kind {
    FILES_NONE = 0,
    FILES_LOG = 1 << 0,  /* logfile, opened again under log_level/log_format too */
    FILES_TLS = 1 << 1,  /* the client TLS context: certificate, key, CA */
    FILES_AUTH = 1 << 2, /* auth_hba_file, auth_ident_file (auth_file is the config's own) */
    FILES_ALL = FILES_LOG | FILES_TLS | FILES_AUTH,
};

static unsigned files_of_key(const char *key)
{
    if (!key)
        return FILES_ALL;
    if (strcmp(key, "log_level") == 0 || strcmp(key, "log_format") == 0 ||
        strcmp(key, "logfile") == 0)
        return FILES_LOG;
    /* "client_tls", not "client_tls_": client_tls13_ciphers builds the context too */
    if (strncmp(key, "client_tls", 10) == 0)
        return FILES_TLS;
    if (strncmp(key, "auth_", 5) == 0)
        return FILES_AUTH;
    return FILES_NONE;
}

static void named_files_free(void *arg)
{
    struct named_files *f = arg;
    tls_context_free(f->tls);
    auth_files_free(f->auth);
    if (f->logfile)
        fclose(f->logfile);
    free(f);
}

/* A logfile that cannot be opened would leave stderr the only log while SHOW CONFIG names it. */
static void *named_files_read(const struct config *cfg, const char *key, char *err, size_t errlen)
{
    unsigned kinds = files_of_key(key);
    struct named_files *f = calloc(1, sizeof(*f));
    if (!f) {
        snprintf(err, errlen, "out of memory reading the files the configuration names");
        return NULL;
    }
    if (((kinds & FILES_TLS) && !(f->tls = tls_context_build(cfg, err, errlen))) ||
        ((kinds & FILES_AUTH) && !(f->auth = auth_files_read(cfg, err, errlen)))) {
        named_files_free(f);
        return NULL;
    }
    if ((kinds & FILES_LOG) && cfg->logfile && cfg->logfile[0] &&
        !(f->logfile = fopen(cfg->logfile, "a"))) {
        snprintf(err, errlen, "logfile %s: cannot open it: %s", cfg->logfile, strerror(errno));
        named_files_free(f);
        return NULL;
    }
    return f;
}

/* Put in force the files as read, under cfg (now the process's): all of them after a reload
 * (key NULL), or those a SET of key touches; files is freed. */
static void named_files_put_in_force(const struct config *cfg, struct named_files *files,
                                     const char *key)
{
    unsigned kinds = files_of_key(key);
    if (kinds & FILES_LOG) {
        log_configure_file(cfg->log_level, cfg->log_format == LOG_FORMAT_JSON, files->logfile);
        files->logfile = NULL;
    }
    if (kinds & FILES_TLS) {
        tls_reload_built(cfg, files->tls);
        files->tls = NULL;
    }
    if (kinds & FILES_AUTH) {
        auth_reload_read(cfg, files->auth);
        files->auth = NULL;
    }
    named_files_free(files);
}

static const struct reload_files_ops named_files_ops = {
    .read = named_files_read,
    .free = named_files_free,
};

/* Apply what a reload's read found (reload_reader.c), on the loop: the checks and the swap
 * that need the running config. true when next is now the process's config. */
static bool apply_reloaded(struct process *proc, struct reload_result *r)
{
    struct config *next = r->next;
    for (int i = 0; i < r->diag.nwarnings; i++)
        log_msg(LOG_WARNING, "reload: %s", r->diag.warnings[i]);
    if (!next) {
        for (int i = 0; i < r->diag.nerrors; i++)
            log_msg(LOG_ERROR, "reload: %s", r->diag.errors[i]);
        if (r->files_error[0]) /* config_load was fine; a file it names is not */
            log_msg(LOG_ERROR, "reload: %s", r->files_error);
        log_msg(LOG_ERROR, "reload: the new configuration is invalid; keeping the old one");
        config_diag_free(&r->diag);
        return false;
    }
    config_diag_free(&r->diag);
    if (config_keep_restart_keys(next, proc->cfg, report_restart_key) != 0) {
        config_free(next);
        named_files_free(r->files);
        log_msg(LOG_ERROR, "reload: out of memory; keeping the old configuration");
        return false;
    }
    struct config *old = swap_config(proc, next);
    named_files_put_in_force(next, r->files, NULL);
    publish_generation(proc, old);
    log_msg(LOG_INFO, "configuration reloaded");
    return true;
}

/* ---- the reader's turns: reloads and console SETs, one read at a time, in the order asked ---- */

/* A console SET not yet answered (proc->sets). */
struct pending_set {
    struct list_node node;
    unsigned id;
    /* proc->reload_asked when it was asked: the reloads up to it are read before it */
    unsigned after_reload;
    char *key; /* as config_keys spells it */
    char *value;
};

static struct pending_set *first_set(struct process *proc)
{
    struct list_node *n = list_first(&proc->sets);
    return n ? container_of(n, struct pending_set, node) : NULL;
}

static void pending_set_free(struct pending_set *set)
{
    free(set->key);
    free(set->value);
    free(set);
}

/* The running config with key = value, checked with the other keys; NULL with err. */
static struct config *config_with_set(struct process *proc, const char *key, const char *value,
                                      char *err, size_t errlen)
{
    struct config *next = config_copy(proc->cfg);
    if (!next) {
        snprintf(err, errlen, "out of memory copying the configuration");
        return NULL;
    }
    if (config_set_key(next, key, value, SRC_ADMIN_SET, err, errlen) < 0) {
        config_free(next);
        return NULL;
    }
    return next;
}

/* At most this many cancelled SETs' reads may still hold their thread (each sits in open() or
 * read() of a file that blocks, maybe for ever): past it a SET that names files is refused
 * (54000) until one returns, so that cancelling SETs of a FIFO again and again cannot pile up
 * threads without end. A reload's read is never abandoned but at exit. */
#define SET_READS_ABANDONED_MAX 8

/* err says why the files next names for key cannot be read now, when too many abandoned reads
 * are stuck. log_level and log_format with no logfile read nothing: never refused, so that an
 * operator can still turn the log up to see what is stuck. */
static bool too_many_stuck(const struct config *next, const char *key, char *err, size_t errlen)
{
    int stuck = reload_reader_abandoned();
    unsigned kinds = files_of_key(key);
    if (kinds == FILES_NONE || (kinds == FILES_LOG && !(next->logfile && next->logfile[0])) ||
        stuck < SET_READS_ABANDONED_MAX)
        return false;
    snprintf(err, errlen,
             "%d cancelled SETs' reads of their files have not returned yet (a FIFO nobody "
             "writes, a hung mount?), each holding a thread: no more reads until one returns",
             stuck);
    return true;
}

/* A SET's end: answered through set_ended (how SLUICE_SET_APPLIED, error NULL: in force),
 * and forgotten. */
static void end_set(struct process *proc, struct pending_set *set, enum sluice_set_result how,
                    const char *error)
{
    list_remove(&proc->sets, &set->node);
    unsigned id = set->id;
    if (error)
        log_msg(LOG_ERROR, "admin: SET %s = '%s' refused: %s", set->key, set->value, error);
    pending_set_free(set);
    for (int i = 0; i < proc->services_started; i++) {
        if (proc->services[i]->set_ended)
            proc->services[i]->set_ended(proc, id, how, error);
    }
}

static void start_reading(struct process *proc, unsigned upto)
{
    proc->reading = SLUICE_READ_RELOAD;
    proc->reload_reading = upto;
    const char *path = proc->cfg->path;
    log_msg(LOG_INFO, "reload: reading %s%s", path ? path : "the environment",
            path ? " and the files it names" : "");
    reload_reader_start(&proc->reload, path, environ);
}

/* The first SET's files read on the reader's thread; next (the config it makes) is taken. */
static void start_set_read(struct process *proc, struct pending_set *set, struct config *next)
{
    char what[160];
    snprintf(what, sizeof(what), "admin: SET %s = '%s'", set->key, set->value);
    proc->reading = SLUICE_READ_SET;
    log_msg(LOG_INFO, "%s: reading the files it names", what);
    reload_reader_start_files(&proc->reload, next, set->key, what);
}

/* The reader is free: start what comes next in the order asked, the first SET once every
 * reload asked before it is read, else the reloads asked for (up to the first SET's). A SET
 * with no file to read, or refused now, ends here and the next one is looked at. From the
 * reader's callback and a cancel, never from inside a console command: set_ended answers
 * consoles, and the console's caller may be walking its waits. */
static void read_next(struct process *proc)
{
    if (proc->phase == PHASE_SHUTDOWN_NOW) {
        /* Everything is being closed, the consoles that asked among it (their SETs are dropped
         * as they close): a read begun now would only be abandoned at the exit, and logged as
         * one stuck there. */
        if (proc->reload_asked != proc->reload_reading && !reload_reader_busy(&proc->reload)) {
            log_msg(LOG_INFO, "reload: the queued reload is not read: sluice is shutting down");
            proc->reload_reading = proc->reload_asked;
        }
        return;
    }
    while (proc->reload.open && !reload_reader_busy(&proc->reload)) {
        struct pending_set *set = first_set(proc);
        if (set && set->after_reload == proc->reload_reading) {
            char err[1024];
            struct config *next = config_with_set(proc, set->key, set->value, err, sizeof(err));
            if (!next) {
                end_set(proc, set, SLUICE_SET_REFUSED, err);
                continue;
            }
            if (files_of_key(set->key) == FILES_NONE) {
                apply_generation(proc, next);
                end_set(proc, set, SLUICE_SET_APPLIED, NULL);
                continue;
            }
            if (too_many_stuck(next, set->key, err, sizeof(err))) {
                config_free(next);
                end_set(proc, set, SLUICE_SET_TOO_MANY_STUCK, err);
                continue;
            }
            start_set_read(proc, set, next);
            return;
        }
        if (proc->reload_asked == proc->reload_reading)
            return;
        start_reading(proc, set ? set->after_reload : proc->reload_asked);
        return;
    }
}

/* A SET's read ended: its generation in force with its files as read, or its error. */
static void apply_set_read(struct process *proc, struct reload_result *r)
{
    struct pending_set *set = first_set(proc);
    config_diag_free(&r->diag); /* a SET's read loads no config: nothing in it */
    if (!r->next) {
        end_set(proc, set, SLUICE_SET_REFUSED,
                r->files_error[0] ? r->files_error : "its files cannot be read");
        return;
    }
    apply_generation(proc, r->next);
    named_files_put_in_force(proc->cfg, r->files, set->key);
    end_set(proc, set, SLUICE_SET_APPLIED, NULL);
}

static void on_reload_read(struct reload_reader *reader, struct reload_result *r)
{
    struct process *proc = container_of(reader, struct process, reload);
    enum sluice_read was = proc->reading;
    proc->reading = SLUICE_READ_NONE;
    if (was == SLUICE_READ_SET) {
        apply_set_read(proc, r);
    } else {
        unsigned answered = proc->reload_reading;
        bool applied = apply_reloaded(proc, r);
        for (int i = 0; i < proc->services_started; i++) {
            if (proc->services[i]->reload_ended)
                proc->services[i]->reload_ended(proc, answered, applied);
        }
    }
    /* Asked for while this one read: the next read, of the files as they are now. */
    read_next(proc);
}

unsigned sluice_reload(struct process *proc)
{
    unsigned asked = ++proc->reload_asked;
    if (!proc->reload.open || proc->phase == PHASE_SHUTDOWN_NOW) {
        log_msg(LOG_WARNING, "reload ignored: sluice is exiting");
        return asked;
    }
    if (reload_reader_busy(&proc->reload) || !list_empty(&proc->sets)) {
        log_msg(LOG_INFO, "reload: %s; one more read follows it",
                proc->reading == SLUICE_READ_SET ? "a console SET is still reading its files"
                : proc->reading == SLUICE_READ_RELOAD
                    ? "the previous reload is still reading its files"
                    : "a console SET waits before it");
        return asked;
    }
    start_reading(proc, asked);
    return asked;
}

bool sluice_reload_reading(const struct process *proc)
{
    return reload_reader_busy(&proc->reload) || proc->reload_asked != proc->reload_reading;
}

enum sluice_set_result sluice_set(struct process *proc, const char *key, const char *value,
                                  unsigned *id, char *err, size_t errlen)
{
    /* As for a reload: a read begun now would only be abandoned at the exit (read_next). */
    if (!proc->reload.open || proc->phase == PHASE_SHUTDOWN_NOW) {
        snprintf(err, errlen,
                 "SET %s refused: sluice is shutting down, and puts no configuration in force "
                 "any more",
                 key);
        log_msg(LOG_WARNING, "admin: SET %s = '%s' refused: sluice is shutting down", key, value);
        return SLUICE_SET_SHUTTING_DOWN;
    }
    /* Checked now, against the running config, so that a value that cannot be is refused at
     * once; at its turn it is applied to the config then running, and checked again. */
    struct config *next = config_with_set(proc, key, value, err, errlen);
    if (!next)
        return SLUICE_SET_REFUSED;
    if (too_many_stuck(next, key, err, errlen)) {
        config_free(next);
        log_msg(LOG_ERROR, "admin: SET %s = '%s' refused: %s", key, value, err);
        return SLUICE_SET_TOO_MANY_STUCK;
    }
    bool first = !sluice_reload_reading(proc) && list_empty(&proc->sets);
    if (first && files_of_key(key) == FILES_NONE) {
        apply_generation(proc, next);
        return SLUICE_SET_APPLIED;
    }
    struct pending_set *set = calloc(1, sizeof(*set));
    if (!set || !(set->key = strdup(key)) || !(set->value = strdup(value))) {
        if (set)
            pending_set_free(set);
        config_free(next);
        snprintf(err, errlen, "out of memory");
        return SLUICE_SET_REFUSED;
    }
    set->id = *id = ++proc->sets_asked;
    set->after_reload = proc->reload_asked;
    list_append(&proc->sets, &set->node);
    if (first) {
        start_set_read(proc, set, next); /* its answer comes from the loop, never from here */
        return SLUICE_SET_PENDING;
    }
    config_free(next);
    log_msg(LOG_INFO, "admin: SET %s = '%s' waits for the %s before it", key, value,
            proc->reading == SLUICE_READ_SET ? "console SET" : "reload");
    return SLUICE_SET_PENDING;
}

void sluice_set_cancel(struct process *proc, unsigned id)
{
    struct list_node *n, *tmp;
    list_for_each(&proc->sets, n, tmp)
    {
        struct pending_set *set = container_of(n, struct pending_set, node);
        if (set->id != id)
            continue;
        bool reading = proc->reading == SLUICE_READ_SET && set == first_set(proc);
        log_msg(LOG_INFO, "admin: SET %s = '%s' cancelled%s; nothing changed", set->key, set->value,
                reading ? " while reading its files: the read is abandoned" : "");
        list_remove(&proc->sets, n);
        pending_set_free(set);
        if (reading) {
            reload_reader_abandon(&proc->reload);
            proc->reading = SLUICE_READ_NONE;
            read_next(proc);
        }
        return;
    }
}

bool sluice_reload_done(const struct process *proc)
{
    for (int i = 0; i < proc->nworkers; i++)
        if (atomic_load_explicit(&proc->workers[i].reload_applied, memory_order_acquire) !=
            proc->reload_seq)
            return false;
    return true;
}

int reload_init(struct process *proc, uv_loop_t *loop)
{
    return reload_reader_init(&proc->reload, loop, &named_files_ops, on_reload_read);
}

void reload_free(struct process *proc)
{
    struct list_node *n, *tmp;
    list_for_each(&proc->sets, n, tmp)
    {
        list_remove(&proc->sets, n); /* unanswered: the consoles that asked are gone */
        pending_set_free(container_of(n, struct pending_set, node));
    }
}
