/* admin: the admin console (see admin.h). admin_command.c parses a query and admin_show*.c
 * build SHOW result sets; this file frames the console client's messages, checks who may run
 * what (admin_users: everything, stats_users: SHOW), and runs PAUSE, RESUME, RECONNECT,
 * WAIT_CLOSE, KILL, KILL_CLIENT, RELOAD, SHUTDOWN and SET through control.h, DISABLE and ENABLE
 * through disabled_dbs.h (SUSPEND is refused).
 *
 * Answers follow the simple query protocol (protocol section 55.2.2): RowDescription, DataRows,
 * CommandComplete, ReadyForQuery; errors are ERROR + ReadyForQuery and the session goes on.
 *
 * PAUSE and WAIT_CLOSE answer only once what they wait for has happened. A console client stays
 * IDLE the whole time, so the wait is a record on proc->admin_waits that the service's tick
 * checks every maintenance pass (a SHOW over frames also as each worker publishes for it); while
 * a record exists, the client's further messages stay buffered. */
#include "admin.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "admin_command.h"
#include "admin_show.h"
#include "buf.h"
#include "client.h"
#include "config.h"
#include "conn_id.h"
#include "console.h"
#include "control.h"
#include "disabled_dbs.h"
#include "error.h"
#include "log.h"
#include "sluice.h"
#include "view.h"
#include "worker.h"

/* Stop answering (the queries stay buffered) while this much output waits for the client. */
#define OUT_HIGH_WATER (256 * 1024)

#define NELEM(a) ((int)(sizeof(a) / sizeof((a)[0])))

static bool is_console_db(const char *database)
{
    return database && (strcmp(database, "sluice") == 0 || strcmp(database, "pgbouncer") == 0);
}

static void send_welcome(struct client *c)
{
    const char *app_name = params_get(&c->params, "application_name");
    codec_put_parameter_status(&c->out, "server_version", "15.0 (sluice " SLUICE_VERSION ")");
    codec_put_parameter_status(&c->out, "client_encoding", "UTF8");
    codec_put_parameter_status(&c->out, "server_encoding", "UTF8");
    codec_put_parameter_status(&c->out, "DateStyle", "ISO");
    codec_put_parameter_status(&c->out, "integer_datetimes", "on");
    codec_put_parameter_status(&c->out, "standard_conforming_strings", "on");
    codec_put_parameter_status(&c->out, "application_name", app_name ? app_name : "");
    codec_put_backend_key(&c->out, c->cancel_pid, c->cancel_key);
    codec_put_ready(&c->out, 'I');
}

/* ---- answering ---- */

static void put_command_complete(struct msg_out *o, const char *tag)
{
    codec_begin(o, 'C');
    codec_put_cstring(o, tag);
    codec_end(o);
}

static void put_error(struct client *c, enum sqlstate_id state, const char *hint, const char *fmt,
                      ...) __attribute__((format(printf, 4, 5)));
static void put_error(struct client *c, enum sqlstate_id state, const char *hint, const char *fmt,
                      ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    codec_put_error(&c->out, 'E', "ERROR", sqlstate_code(state), msg, NULL, hint);
}

/* What running a command left to do. */
enum outcome {
    OUT_DONE,     /* CommandComplete with the verb's tag, then ReadyForQuery */
    OUT_ERROR,    /* an ErrorResponse is written: ReadyForQuery */
    OUT_ANSWERED, /* CommandComplete and ReadyForQuery are written already */
    OUT_WAITING,  /* tick answers later */
    OUT_CLOSED,   /* the client is closing: nothing more */
};

/* ---- lookups ---- */

/* A named database must be a real one (configured or with pools), never the console. */
static bool check_target(struct client *c, const struct admin_command *cmd)
{
    if (!cmd->has_name)
        return true;
    if (is_console_db(cmd->name)) {
        put_error(c, SQLSTATE_INVALID_CATALOG_NAME, NULL,
                  "\"%s\" is the admin console, not a database with servers", cmd->name);
        return false;
    }
    if (!control_db_known(c->worker, cmd->name)) {
        put_error(c, SQLSTATE_INVALID_CATALOG_NAME, "SHOW DATABASES lists the databases.",
                  "no database \"%s\" in sluice", cmd->name);
        return false;
    }
    return true;
}

/* A console client (they are always IDLE) by id. */
static struct client *find_console_client(struct worker *worker, uint64_t id)
{
    struct client *c = control_find_client(worker, id);
    return c && c->admin ? c : NULL;
}

/* ---- waiting commands ---- */

static const char *target_db(const struct admin_command *cmd);

enum wait_kind {
    WAIT_PAUSE,         /* paused pools have no server left (connect attempts aside) */
    WAIT_PAUSE_RESUMED, /* a RESUME undid the PAUSE before it was done: answered with 57014 */
    WAIT_CLOSE_DONE,    /* no server marked close_when_free is left */
    WAIT_OUTPUT,        /* the client has read most of its pending output */
    WAIT_ROWS,          /* SHOW CLIENTS/SERVERS/SOCKETS: the other workers' rows (5.6) */
    WAIT_FRAMES,        /* SHOW POOLS, STATS...: every other worker published since asked (5.6) */
    WAIT_RELOAD,        /* its reload's read ended, and every worker applied the new config */
    WAIT_SET,           /* SET's turn and files' read ended, and every worker applied it */
    WAIT_KILL_CLIENT,   /* another worker's KILL_CLIENT: its owner says whether it was there */
};

/* How a RELOAD's reload ended (reload_ended), WAIT_RELOAD. */
enum reload_answer {
    RELOAD_READING, /* its files are still being read */
    RELOAD_APPLIED, /* the new config is the process's: answered once every worker has it */
    RELOAD_INVALID, /* errors (logged); the previous config stays */
};

/* How a SET stands (WAIT_SET). */
enum set_answer {
    SET_PENDING,  /* its turn, or its files' read, has not come yet (sluice_set) */
    SET_IN_FORCE, /* its generation is the process's: answered once every worker has it */
    SET_FAILED,   /* refused at its turn or by its files (set_error): nothing changed */
};

/* What the owner of a KILL_CLIENT's id said (WAIT_KILL_CLIENT). */
enum kill_answer {
    KILL_ASKED,     /* no answer yet */
    KILL_DONE,      /* the client was there and is closed */
    KILL_NO_CLIENT, /* no client has that id (left, or never was): 42704, as on worker 0 */
};

struct admin_wait {
    struct list_node node;
    uint64_t client_id;
    enum wait_kind kind;
    struct admin_command target; /* only has_name and name are used */
    int rows_pending;            /* WAIT_ROWS: workers asked that have not answered */
    enum kill_answer kill;       /* WAIT_KILL_CLIENT: the owner's answer about kill_id */
    uint64_t kill_id;
    unsigned reload_asked;     /* WAIT_RELOAD: its number (control_reload) */
    enum reload_answer reload; /* WAIT_RELOAD: how it ended */
    unsigned set_id;           /* WAIT_SET: its number (control_set), while SET_PENDING */
    enum set_answer set;
    char set_error[512];                /* SET_FAILED: the file and what is wrong with it */
    enum sluice_set_result set_refused; /* SET_FAILED: why (the SQLSTATE put_set_error gives) */
    /* WAIT_FRAMES: the SHOW to answer, the ask its frames answer, and when to answer with the
     * frames there are (a worker that is closing never publishes again). */
    enum admin_show show;
    unsigned publish_ask;
    uint64_t deadline_ms;
};

static struct admin_wait *find_wait(struct worker *worker, uint64_t client_id)
{
    struct list_node *n, *tmp;
    list_for_each(&worker->proc->admin_waits, n, tmp)
    {
        struct admin_wait *w = container_of(n, struct admin_wait, node);
        if (w->client_id == client_id)
            return w;
    }
    return NULL;
}

static bool add_wait(struct client *c, enum wait_kind kind, const struct admin_command *cmd)
{
    struct admin_wait *w = calloc(1, sizeof(*w));
    if (!w)
        return false;
    w->client_id = c->id;
    w->kind = kind;
    if (cmd && cmd->has_name) {
        w->target.has_name = true;
        memcpy(w->target.name, cmd->name, sizeof(w->target.name));
    }
    list_append(&c->worker->proc->admin_waits, &w->node);
    return true;
}

static bool output_backlogged(const struct client *c)
{
    return c->out.len - c->out_pos > OUT_HIGH_WATER;
}

static bool wait_done(struct worker *worker, struct client *c, const struct admin_wait *w)
{
    switch (w->kind) {
    case WAIT_PAUSE:
        return control_pause_done(worker, target_db(&w->target));
    case WAIT_PAUSE_RESUMED:
        return true;
    case WAIT_CLOSE_DONE:
        return control_close_done(worker, target_db(&w->target));
    case WAIT_OUTPUT:
        return c->out.len - c->out_pos <= OUT_HIGH_WATER / 4;
    case WAIT_ROWS:
        return w->rows_pending == 0;
    case WAIT_FRAMES:
        return view_frames_answered(worker, w->publish_ask) || sluice_now(worker) >= w->deadline_ms;
    case WAIT_RELOAD:
        return w->reload == RELOAD_INVALID ||
               (w->reload == RELOAD_APPLIED && control_reload_done(worker));
    case WAIT_SET:
        return w->set == SET_FAILED || (w->set == SET_IN_FORCE && control_reload_done(worker));
    case WAIT_KILL_CLIENT:
        return w->kill != KILL_ASKED;
    }
    return true;
}

static void settle_waits(struct process *proc);
static void end_pauses_resumed(struct client *resumer, const struct admin_command *resume);

/* A worker's rows for a console client's SHOW (admin_show's arrived), on the console's thread:
 * the last worker's answer it now, not at the next tick. */
static void rows_arrived(struct worker *worker, uint64_t console_id, const uint8_t *rows,
                         size_t len)
{
    struct admin_wait *w = find_wait(worker, console_id);
    if (!w || w->kind != WAIT_ROWS)
        return; /* the client left: its wait went with it */
    struct client *c = find_console_client(worker, console_id);
    if (c && rows)
        codec_put_bytes(&c->out, rows, len);
    if (--w->rows_pending == 0)
        settle_waits(worker->proc);
}

/* A worker published as asked, on the console's (control) thread: a SHOW may answer now. */
static void frame_published(struct worker *worker, void *arg, bool delivered)
{
    (void)arg;
    if (delivered)
        settle_waits(worker->proc);
}

static void publish_asked(struct worker *worker, void *arg, bool delivered)
{
    if (!delivered)
        return; /* its mailbox closed: the console's deadline answers */
    view_publish_now(worker, (unsigned)(uintptr_t)arg);
    if (worker_post_call(sluice_control_worker(worker->proc), frame_published, NULL) < 0)
        return; /* the control worker is closing: nobody waits */
}

/* Have every other worker publish its frame now; false when none was asked (one worker). */
static bool ask_publish(struct worker *worker, unsigned ask)
{
    struct process *proc = worker->proc;
    bool asked = false;
    for (int i = 0; i < proc->nworkers; i++) {
        struct worker *other = &proc->workers[i];
        if (other != worker && other->tally &&
            worker_post_call(other, publish_asked, (void *)(uintptr_t)ask) == 0)
            asked = true;
    }
    return asked;
}

/* A SHOW over published frames, answered once every worker published after the command came
 * (PgBouncer's SHOW is exact when it answers; a frame from the last tick may miss a login
 * since): within a second, else with the frames there are. */
#define FRAMES_WAIT_MS 1000

static enum outcome show_fresh_frames(struct client *c, const struct admin_command *cmd)
{
    struct process *proc = c->worker->proc;
    unsigned ask = ++proc->publish_asks;
    if (!ask_publish(c->worker, ask) || !add_wait(c, WAIT_FRAMES, NULL)) {
        admin_show(c, cmd->show, NULL);
        return OUT_DONE;
    }
    struct admin_wait *w = find_wait(c->worker, c->id);
    w->show = cmd->show;
    w->publish_ask = ask;
    w->deadline_ms = sluice_now(c->worker) + FRAMES_WAIT_MS;
    return OUT_WAITING;
}

static enum outcome run_show(struct client *c, const struct admin_command *cmd)
{
    /* The other workers' rows are asked for only by a console on the control thread, whose
     * admin_waits it is (the console's hand-off to it is 5.6's). */
    bool control = c->worker == sluice_control_worker(c->worker->proc);
    if (control && admin_show_reads_frames(cmd->show))
        return show_fresh_frames(c, cmd);
    int asked = admin_show(c, cmd->show, control ? rows_arrived : NULL);
    if (asked == 0)
        return OUT_DONE;
    if (!add_wait(c, WAIT_ROWS, NULL)) {
        client_fail(c, FAIL_OUT_OF_MEMORY, ""); /* the rows on their way find no wait */
        return OUT_CLOSED;
    }
    find_wait(c->worker, c->id)->rows_pending = asked;
    return OUT_WAITING;
}

/* ---- actions ---- */

/* The database a command names, or NULL for every database. */
static const char *target_db(const struct admin_command *cmd)
{
    return cmd->has_name ? cmd->name : NULL;
}

static const char *target_text(const struct admin_command *cmd)
{
    return cmd->has_name ? cmd->name : "(all databases)";
}

static void put_no_client(struct client *c, uint64_t id)
{
    put_error(c, SQLSTATE_UNDEFINED_OBJECT, "The id column of SHOW CLIENTS names clients.",
              "no client with id %s", CONN_ID_TEXT(id));
}

/* KILL_CLIENT of another worker's client (5.6), asked of its owner on the console's (control)
 * thread: the console answers once the owner has said whether the client was still there, so
 * an id that names no client (it left, or never was) gets 42704 on every worker, as on the
 * console's own, and a killed client is gone when KILL_CLIENT is answered. */
struct kill_ask {
    uint64_t console_id;
    uint64_t victim_id;
    enum kill_answer answer;
};

/* The owner's answer, on the console's thread. */
static void kill_answered(struct worker *worker, void *arg, bool delivered)
{
    struct kill_ask *ask = arg;
    struct admin_wait *w = delivered ? find_wait(worker, ask->console_id) : NULL;
    if (w && w->kind == WAIT_KILL_CLIENT) { /* else the console left: nobody waits */
        w->kill = ask->answer;
        settle_waits(worker->proc);
    }
    free(ask);
}

/* On the owner's thread: close the client if it is still there, and say so. */
static void kill_on_owner(struct worker *worker, void *arg, bool delivered)
{
    struct kill_ask *ask = arg;
    ask->answer =
        delivered && control_kill_client_here(worker, ask->victim_id) ? KILL_DONE : KILL_NO_CLIENT;
    if (worker_post_call(sluice_control_worker(worker->proc), kill_answered, ask) < 0)
        free(ask); /* the console's thread is closing: shutdown ends its wait */
}

static enum outcome kill_client_elsewhere(struct client *c, struct worker *owner, uint64_t id)
{
    log_client(LOG_INFO, c, "admin: KILL_CLIENT %s (on worker %u)", CONN_ID_TEXT(id), owner->index);
    if (c->worker != sluice_control_worker(c->worker->proc)) {
        /* admin_waits is the control thread's (every console login moves there, 5.6): the
         * owner closes it if it is still there, unanswered */
        control_kill_client_elsewhere(owner, id);
        return OUT_DONE;
    }
    struct kill_ask *ask = calloc(1, sizeof(*ask));
    if (!ask || !add_wait(c, WAIT_KILL_CLIENT, NULL)) {
        free(ask);
        client_fail(c, FAIL_OUT_OF_MEMORY, "");
        return OUT_CLOSED;
    }
    ask->console_id = c->id;
    ask->victim_id = id;
    struct admin_wait *w = find_wait(c->worker, c->id);
    w->kill_id = id;
    if (worker_post_call(owner, kill_on_owner, ask) < 0) {
        free(ask); /* its mailbox is closed: its clients are gone */
        w->kill = KILL_NO_CLIENT;
    }
    return OUT_WAITING;
}

static enum outcome run_kill_client(struct client *c, const struct admin_command *cmd)
{
    struct worker *owner = control_client_owner(c->worker, cmd->client_id);
    if (owner && owner != c->worker)
        return kill_client_elsewhere(c, owner, cmd->client_id);
    struct client *victim = owner ? control_find_client(c->worker, cmd->client_id) : NULL;
    if (!victim) {
        put_no_client(c, cmd->client_id);
        return OUT_ERROR;
    }
    if (victim == c) {
        put_error(c, SQLSTATE_OBJECT_NOT_IN_PREREQUISITE_STATE, "Disconnect instead.",
                  "KILL_CLIENT %s is this console session itself", CONN_ID_TEXT(cmd->client_id));
        return OUT_ERROR;
    }
    log_client(LOG_INFO, c, "admin: KILL_CLIENT %s", CONN_ID_TEXT(cmd->client_id));
    control_kill_client(victim);
    return OUT_DONE;
}

/* RELOAD is answered when its reload's read has ended (its files may block: a FIFO nobody
 * writes; the console's other sessions and every client are served meanwhile, the log warns
 * every few seconds, and a cancel ends this wait, not the read) and, when the new config is in
 * force, once every worker applied it. */
static enum outcome run_reload(struct client *c)
{
    log_client(LOG_INFO, c, "admin: RELOAD");
    unsigned asked = control_reload(c->worker);
    if (!add_wait(c, WAIT_RELOAD, NULL)) {
        client_fail(c, FAIL_OUT_OF_MEMORY, ""); /* its answer would find no wait */
        return OUT_CLOSED;
    }
    find_wait(c->worker, c->id)->reload_asked = asked;
    return OUT_WAITING;
}

/* A reload's read ended (the core's reload_ended): the RELOADs it answers are told how. */
static void reload_ended(struct process *proc, unsigned asked_upto, bool applied)
{
    struct list_node *n, *tmp;
    list_for_each(&proc->admin_waits, n, tmp)
    {
        struct admin_wait *w = container_of(n, struct admin_wait, node);
        /* unsigned difference: numbers wrap */
        if (w->kind == WAIT_RELOAD && w->reload == RELOAD_READING &&
            (int)(asked_upto - w->reload_asked) >= 0)
            w->reload = applied ? RELOAD_APPLIED : RELOAD_INVALID;
    }
    settle_waits(proc);
}

/* SHUTDOWN: at once; WAIT_FOR_SERVERS: sluice's graceful shutdown (SIGINT), which is PgBouncer's
 * PAUSE + SHUTDOWN: transactions finish, each client is closed when it has none; WAIT_FOR_CLIENTS:
 * no new connections, the rest goes on until the last client leaves (no shutdown_timeout, as in
 * PgBouncer; a SHUTDOWN or SIGINT meanwhile ends it sooner). */
static enum outcome run_shutdown(struct client *c, const struct admin_command *cmd)
{
    static const struct {
        const char *log;
        enum sluice_phase phase;
    } modes[] = {
        [ADMIN_SHUTDOWN_NOW] = {"", PHASE_SHUTDOWN_NOW},
        [ADMIN_SHUTDOWN_WAIT_FOR_SERVERS] = {" WAIT_FOR_SERVERS", PHASE_SHUTDOWN_GRACEFUL},
        [ADMIN_SHUTDOWN_WAIT_FOR_CLIENTS] = {" WAIT_FOR_CLIENTS", PHASE_SHUTDOWN_WAIT_FOR_CLIENTS},
    };
    log_client(LOG_INFO, c, "admin: SHUTDOWN%s", modes[cmd->shutdown].log);
    if (modes[cmd->shutdown].phase <= c->worker->proc->phase) {
        put_error(c, SQLSTATE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                  "SHUTDOWN (without a mode) exits now.",
                  "a shutdown that goes at least as far is already under way");
        return OUT_ERROR;
    }
    if (cmd->shutdown != ADMIN_SHUTDOWN_NOW) {
        /* PgBouncer answers the waiting modes at once, so `psql -c 'SHUTDOWN WAIT_FOR_SERVERS'`
         * succeeds: the answer goes first, then (WAIT_FOR_SERVERS) the 57P01 every idle client
         * gets. */
        put_command_complete(&c->out, "SHUTDOWN");
        codec_put_ready(&c->out, 'I');
    }
    control_shutdown(c->worker, modes[cmd->shutdown].phase);
    if (c->state != CLIENT_IDLE)
        return OUT_CLOSED; /* a graceful or immediate shutdown closed it with 57P01 */
    return cmd->shutdown == ADMIN_SHUTDOWN_NOW ? OUT_DONE : OUT_ANSWERED;
}

/* ---- DISABLE / ENABLE ---- */

/* PgBouncer's DISABLE: new logins to the database are refused (client_login_ok); sessions
 * already open go on. Kept across RELOAD, as the database is. */
static enum outcome run_disable(struct client *c, const struct admin_command *cmd)
{
    if (!check_target(c, cmd))
        return OUT_ERROR;
    log_client(LOG_INFO, c, "admin: DISABLE %s", cmd->name);
    if (disabled_dbs_add(c->worker->proc, cmd->name) < 0) {
        put_error(c, SQLSTATE_OUT_OF_MEMORY, NULL, "out of memory");
        return OUT_ERROR;
    }
    return OUT_DONE;
}

static enum outcome run_enable(struct client *c, const struct admin_command *cmd)
{
    if (!check_target(c, cmd))
        return OUT_ERROR;
    log_client(LOG_INFO, c, "admin: ENABLE %s", cmd->name);
    disabled_dbs_remove(c->worker->proc, cmd->name);
    return OUT_DONE;
}

/* PgBouncer's SUSPEND flushes every socket and stops reading them so that a new process can take
 * them over (online restart, -R, deprecated there). sluice cannot hand its sockets over, and a
 * suspended pooler that nothing takes over is just stuck, so the command is refused. */
static enum outcome run_suspend(struct client *c)
{
    put_error(c, SQLSTATE_FEATURE_NOT_SUPPORTED,
              "To restart without dropping sessions, send new clients to a second sluice and run "
              "SHUTDOWN WAIT_FOR_CLIENTS here; PAUSE holds the traffic to the servers.",
              "SUSPEND is not supported: sluice has no online restart to hand its sockets to");
    return OUT_ERROR;
}

static int find_key(const char *name)
{
    for (int i = 0; i < config_nkeys; i++) {
        if (strcasecmp(config_keys[i].name, name) == 0)
            return i;
    }
    return -1;
}

/* A SET that changed nothing: a value that cannot be (22023, as Postgres's SET answers), files
 * that cannot be read now because too many abandoned reads hold their threads (54000, a limit
 * of sluice's: retried once the stuck files are written or the mount answers), or a shutdown
 * under way (57P01, Postgres's admin_shutdown: nothing about the value is wrong). */
static void put_set_error(struct client *c, enum sluice_set_result why, const char *err)
{
    if (why == SLUICE_SET_SHUTTING_DOWN)
        put_error(c, SQLSTATE_ADMIN_SHUTDOWN, NULL, "%s", err);
    else if (why == SLUICE_SET_TOO_MANY_STUCK)
        put_error(c, SQLSTATE_PROGRAM_LIMIT_EXCEEDED,
                  "Write the files those SETs named (or end the hung mount's wait), then SET "
                  "again; sluice's log names them.",
                  "%s", err);
    else
        put_error(c, SQLSTATE_INVALID_PARAMETER_VALUE, NULL, "%s", err);
}

static enum outcome run_set(struct client *c, const struct admin_command *cmd)
{
    struct worker *worker = c->worker;
    int idx = find_key(cmd->name);
    if (idx < 0) {
        put_error(c, SQLSTATE_UNDEFINED_OBJECT, "SHOW CONFIG lists the keys.",
                  "unknown configuration key \"%s\"", cmd->name);
        return OUT_ERROR;
    }
    const char *key = config_keys[idx].name;
    if (!config_keys[idx].reloadable) {
        put_error(c, SQLSTATE_CANT_CHANGE_RUNTIME_PARAM,
                  "Change it in the configuration file and restart sluice.",
                  "%s is read only at start", key);
        return OUT_ERROR;
    }
    if (strcmp(key, "auth_file") == 0) {
        /* The file is read as part of loading the whole configuration. */
        put_error(c, SQLSTATE_CANT_CHANGE_RUNTIME_PARAM,
                  "Change it in the configuration file and run RELOAD.",
                  "auth_file cannot be changed with SET");
        return OUT_ERROR;
    }
    char err[512];
    unsigned id = 0;
    log_client(LOG_INFO, c, "admin: SET %s = '%s'", key, cmd->value);
    enum sluice_set_result r = control_set(worker, key, cmd->value, &id, err, sizeof(err));
    if (r < 0) { /* refused (put_set_error says how) */
        put_set_error(c, r, err);
        return OUT_ERROR;
    }
    /* Answered once every worker runs under the new generation, as RELOAD is: a client of any
     * worker that the console's answer sends on meets the new value. */
    if (r == SLUICE_SET_APPLIED) {
        if (control_reload_done(worker) || !add_wait(c, WAIT_SET, NULL))
            return OUT_DONE;
        find_wait(worker, c->id)->set = SET_IN_FORCE;
        return OUT_WAITING;
    }
    /* Its files are read off the loop, or a reload or SET asked before it goes first: the
     * session waits (its further queries stay buffered) and the loop serves everyone else;
     * set_ended says how it ended. */
    if (!add_wait(c, WAIT_SET, NULL)) {
        control_set_cancel(worker, id);
        client_fail(c, FAIL_OUT_OF_MEMORY, ""); /* its answer would find no wait */
        return OUT_CLOSED;
    }
    struct admin_wait *w = find_wait(worker, c->id);
    w->set = SET_PENDING;
    w->set_id = id;
    return OUT_WAITING;
}

/* A pending SET ended (the core's set_ended): its console is told how. */
static void set_ended(struct process *proc, unsigned set_id, enum sluice_set_result how,
                      const char *error)
{
    struct list_node *n, *tmp;
    list_for_each(&proc->admin_waits, n, tmp)
    {
        struct admin_wait *w = container_of(n, struct admin_wait, node);
        if (w->kind != WAIT_SET || w->set != SET_PENDING || w->set_id != set_id)
            continue;
        w->set = how == SLUICE_SET_APPLIED ? SET_IN_FORCE : SET_FAILED;
        w->set_refused = how;
        if (error)
            snprintf(w->set_error, sizeof(w->set_error), "%s", error);
        break;
    }
    settle_waits(proc);
}

static enum outcome run_command(struct client *c, const struct admin_command *cmd)
{
    struct worker *worker = c->worker;
    switch (cmd->verb) {
    case ADMIN_SHOW:
        return run_show(c, cmd);
    case ADMIN_PAUSE:
        if (!check_target(c, cmd))
            return OUT_ERROR;
        log_client(LOG_INFO, c, "admin: PAUSE %s", target_text(cmd));
        control_pause(worker, target_db(cmd));
        if (control_pause_done(worker, target_db(cmd)))
            return OUT_DONE;
        return add_wait(c, WAIT_PAUSE, cmd) ? OUT_WAITING : OUT_DONE;
    case ADMIN_RESUME:
        if (!check_target(c, cmd))
            return OUT_ERROR;
        /* RESUME db ends only that database's PAUSE: under a PAUSE of everything it changes
         * nothing, and answering RESUME would tell the operator the database serves (PgBouncer
         * answers "database is not paused" there too). */
        if (cmd->has_name && control_paused_all(worker)) {
            put_error(c, SQLSTATE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                      "RESUME without a database name ends every PAUSE; SHOW DATABASES says "
                      "what is paused.",
                      "database \"%s\" stays paused: a PAUSE of all databases is in force",
                      cmd->name);
            return OUT_ERROR;
        }
        log_client(LOG_INFO, c, "admin: RESUME %s", target_text(cmd));
        control_resume(worker, target_db(cmd));
        end_pauses_resumed(c, cmd);
        return OUT_DONE;
    case ADMIN_RECONNECT:
        if (!check_target(c, cmd))
            return OUT_ERROR;
        log_client(LOG_INFO, c, "admin: RECONNECT %s", target_text(cmd));
        control_reconnect(worker, target_db(cmd));
        return OUT_DONE;
    case ADMIN_WAIT_CLOSE:
        if (!check_target(c, cmd))
            return OUT_ERROR;
        if (control_close_done(worker, target_db(cmd)))
            return OUT_DONE;
        return add_wait(c, WAIT_CLOSE_DONE, cmd) ? OUT_WAITING : OUT_DONE;
    case ADMIN_KILL:
        if (!check_target(c, cmd))
            return OUT_ERROR;
        log_client(LOG_INFO, c, "admin: KILL %s", cmd->name);
        control_kill(worker, target_db(cmd));
        return c->state == CLIENT_IDLE ? OUT_DONE : OUT_CLOSED;
    case ADMIN_KILL_CLIENT:
        return run_kill_client(c, cmd);
    case ADMIN_RELOAD:
        return run_reload(c);
    case ADMIN_SHUTDOWN:
        return run_shutdown(c, cmd);
    case ADMIN_SET:
        return run_set(c, cmd);
    case ADMIN_DISABLE:
        return run_disable(c, cmd);
    case ADMIN_ENABLE:
        return run_enable(c, cmd);
    case ADMIN_SUSPEND:
        return run_suspend(c);
    case ADMIN_EMPTY:
    case ADMIN_INVALID:
        break;
    }
    return OUT_DONE;
}

static void run_query(struct client *c, const char *sql)
{
    struct admin_command cmd;
    admin_parse_command(sql, &cmd);
    const struct config *cfg = c->worker->cfg;
    enum outcome r;
    if (cmd.verb == ADMIN_INVALID) {
        put_error(c,
                  cmd.error == ADMIN_ERR_UNKNOWN_OBJECT ? SQLSTATE_UNDEFINED_OBJECT
                                                        : SQLSTATE_SYNTAX_ERROR,
                  NULL, "%s", cmd.message);
        r = OUT_ERROR;
    } else if (cmd.verb == ADMIN_EMPTY) {
        codec_begin(&c->out, 'I'); /* EmptyQueryResponse */
        codec_end(&c->out);
        r = OUT_ERROR; /* no CommandComplete: just ReadyForQuery */
    } else if (!config_list_contains(&cfg->admin_users, c->user) &&
               !(admin_verb_read_only(cmd.verb) &&
                 config_list_contains(&cfg->stats_users, c->user))) {
        bool stats = config_list_contains(&cfg->stats_users, c->user);
        put_error(c, SQLSTATE_INSUFFICIENT_PRIVILEGE,
                  stats ? "stats_users may run SHOW commands; the rest is for admin_users."
                        : "Only users in admin_users or stats_users may use the console.",
                  "permission denied: user \"%s\" may not run %s", c->user,
                  admin_verb_tag(cmd.verb));
        r = OUT_ERROR;
    } else {
        r = run_command(c, &cmd);
    }
    switch (r) {
    case OUT_DONE:
        put_command_complete(&c->out, admin_verb_tag(cmd.verb));
        codec_put_ready(&c->out, 'I');
        break;
    case OUT_ERROR:
        codec_put_ready(&c->out, 'I');
        break;
    case OUT_ANSWERED:
    case OUT_WAITING:
    case OUT_CLOSED:
        break;
    }
}

/* ---- messages ---- */

static void refuse_extended(struct client *c)
{
    put_error(c, SQLSTATE_FEATURE_NOT_SUPPORTED,
              "Use a plain query (psql, or prepare_threshold=None in psycopg).",
              "the admin console speaks the simple query protocol only");
}

/* One whole message. A console client never reaches the relay, so its framer's discard flag is
 * free to mean: an extended-protocol message was refused, skip to Sync (protocol section
 * 55.2.3: after an error the backend discards messages until Sync). */
static void handle_message(struct client *c, uint8_t type, const char *body, uint32_t len)
{
    if (c->rx.discard && type != 'S' && type != 'X')
        return;
    switch (type) {
    case 'Q':
        if (len == 0 || body[len - 1] != '\0' || memchr(body, '\0', len) != body + len - 1) {
            client_fail(c, FAIL_PROTOCOL_VIOLATION,
                        "Query message is not one NUL-terminated "
                        "string");
            return;
        }
        /* A console client stays IDLE; its state time is its last command, so
         * client_idle_timeout counts from there. */
        c->state_since_ms = sluice_now(c->worker);
        run_query(c, body);
        return;
    case 'X':
        client_close(c, NULL);
        return;
    case 'S':
        c->rx.discard = false;
        codec_put_ready(&c->out, 'I');
        return;
    case 'P':
    case 'B':
    case 'E':
    case 'D':
    case 'C':
    case 'H':
        refuse_extended(c);
        c->rx.discard = true;
        return;
    case 'F':
        refuse_extended(c);
        codec_put_ready(&c->out, 'I');
        return;
    case 'd':
    case 'c':
    case 'f':
        return; /* COPY messages outside COPY are ignored, as the backend does */
    default: {
        char detail[64];
        snprintf(detail, sizeof(detail), "unexpected message type 0x%02x", type);
        client_fail(c, FAIL_PROTOCOL_VIOLATION, detail);
        return;
    }
    }
}

static void on_data(struct client *c)
{
    struct worker *worker = c->worker;
    struct buf *b = &c->in;
    if (find_wait(worker, c->id)) {
        client_send(c); /* an earlier command is still waiting: the rest stays buffered */
        return;
    }
    uint32_t max_body = buf_block_size() - CODEC_HEADER_LEN;
    while (c->state == CLIENT_IDLE && b->data && buf_unframed(b) >= CODEC_HEADER_LEN) {
        if (output_backlogged(c)) {
            client_send(c);
            if (c->state != CLIENT_IDLE)
                return;
            if (output_backlogged(c)) {
                if (!add_wait(c, WAIT_OUTPUT, NULL)) {
                    client_fail(c, FAIL_OUT_OF_MEMORY, "");
                    return;
                }
                break;
            }
        }
        uint8_t type;
        uint32_t body_len;
        enum frame_result fr =
            codec_frame_header(b->data + b->scan, buf_unframed(b), max_body, &type, &body_len);
        if (fr == FRAME_NEED_MORE)
            break;
        if (fr == FRAME_BAD_LENGTH) {
            char detail[128];
            snprintf(detail, sizeof(detail),
                     "bad message length (the admin console takes messages of at most %u bytes)",
                     max_body);
            client_fail(c, FAIL_PROTOCOL_VIOLATION, detail);
            return;
        }
        uint32_t whole = CODEC_HEADER_LEN + body_len;
        if (buf_unframed(b) < whole)
            break; /* it fits the buffer (max_body): the rest will come */
        /* Copy and consume first: a command may close this client and release its buffer. */
        char *body = malloc((size_t)body_len + 1);
        if (!body) {
            client_fail(c, FAIL_OUT_OF_MEMORY, "");
            return;
        }
        memcpy(body, b->data + b->scan + CODEC_HEADER_LEN, body_len);
        body[body_len] = '\0';
        b->scan += whole;
        buf_consume(b, whole);
        handle_message(c, type, body, body_len);
        free(body);
        if (find_wait(worker, c->id))
            break;
    }
    if (c->state == CLIENT_CLOSED)
        return;
    if (c->state == CLIENT_IDLE)
        buf_detach_if_empty(b);
    client_send(c);
}

/* settle_waits is running: a call from inside it (a command it goes on with ends a SET,
 * whose set_ended settles again) only asks it to look once more, so that one walk of
 * admin_waits never meets waits freed by another. The control thread's only. */
static bool settling, settle_again;

static void settle_waits_once(struct process *proc);

/* Answer each waiting command whose wait is over (or whose client went). */
static void settle_waits(struct process *proc)
{
    if (settling) {
        settle_again = true;
        return;
    }
    settling = true;
    do {
        settle_again = false;
        settle_waits_once(proc);
    } while (settle_again);
    settling = false;
}

static void settle_waits_once(struct process *proc)
{
    struct worker *worker = sluice_control_worker(proc);
    struct list_node *n, *tmp;
    list_for_each(&worker->proc->admin_waits, n, tmp)
    {
        struct admin_wait *w = container_of(n, struct admin_wait, node);
        struct client *c = find_console_client(worker, w->client_id);
        if (c && sluice_serving(worker) && !wait_done(worker, c, w))
            continue;
        list_remove(&worker->proc->admin_waits, n);
        enum wait_kind kind = w->kind;
        enum admin_show show = w->show;
        struct admin_command paused = w->target;
        enum kill_answer kill = w->kill;
        uint64_t kill_id = w->kill_id;
        enum reload_answer reload = w->reload;
        enum set_answer set = w->set;
        enum sluice_set_result set_refused = w->set_refused;
        unsigned set_id = w->set_id;
        char set_error[sizeof(w->set_error)];
        memcpy(set_error, w->set_error, sizeof(set_error));
        free(w);
        /* A SET nobody waits for any more (its console left, or shutdown closes it) is
         * dropped, as a cancelled one, so that a read of it still blocked does not hold the
         * reloads and SETs after it. */
        if (kind == WAIT_SET && set == SET_PENDING)
            control_set_cancel(worker, set_id);
        if (!c || !sluice_serving(worker))
            continue; /* gone, or shutdown closes it */
        if (kind == WAIT_FRAMES)
            admin_show(c, show, NULL);
        if (kind == WAIT_PAUSE_RESUMED) {
            log_client(LOG_INFO, c, "admin: PAUSE %s ended by a RESUME before it was done",
                       target_text(&paused));
            put_error(c, SQLSTATE_QUERY_CANCELED,
                      "SHOW DATABASES says what is paused; PAUSE again to pause.",
                      "PAUSE %s was ended by a RESUME before its servers were released: not "
                      "paused",
                      target_text(&paused));
            codec_put_ready(&c->out, 'I');
        } else if (kind == WAIT_RELOAD && reload == RELOAD_INVALID) {
            put_error(c, SQLSTATE_CONFIG_FILE_ERROR, "sluice's log names each problem.",
                      "the configuration has errors; the previous one stays in force");
            codec_put_ready(&c->out, 'I');
        } else if (kind == WAIT_SET && set == SET_FAILED) {
            put_set_error(c, set_refused, set_error);
            codec_put_ready(&c->out, 'I');
        } else if (kind == WAIT_KILL_CLIENT && kill == KILL_NO_CLIENT) {
            put_no_client(c, kill_id);
            codec_put_ready(&c->out, 'I');
        } else if (kind != WAIT_OUTPUT) {
            put_command_complete(&c->out, kind == WAIT_PAUSE                         ? "PAUSE"
                                          : kind == WAIT_ROWS || kind == WAIT_FRAMES ? "SHOW"
                                          : kind == WAIT_RELOAD                      ? "RELOAD"
                                          : kind == WAIT_SET                         ? "SET"
                                          : kind == WAIT_KILL_CLIENT                 ? "KILL_CLIENT"
                                                                     : "WAIT_CLOSE");
            codec_put_ready(&c->out, 'I');
        }
        /* Go on with what the client sent meanwhile (this may add a new wait at the tail). */
        if (c->in.data && buf_unframed(&c->in) >= CODEC_HEADER_LEN)
            on_data(c);
        else
            client_send(c);
    }
}

static void tick(struct process *proc, uint64_t now)
{
    (void)now;
    settle_waits(proc);
}

static void cancel_wait(struct client *c)
{
    struct admin_wait *w = find_wait(c->worker, c->id);
    /* A SET in force waits only for the workers' swap, a moment: its answer comes. */
    if (!w || w->kind == WAIT_OUTPUT || w->kind == WAIT_ROWS || w->kind == WAIT_FRAMES ||
        w->kind == WAIT_KILL_CLIENT || (w->kind == WAIT_SET && w->set != SET_PENDING) ||
        c->state != CLIENT_IDLE)
        return;
    enum wait_kind kind = w->kind;
    unsigned set_id = w->set_id;
    list_remove(&c->worker->proc->admin_waits, &w->node);
    free(w);
    log_client(LOG_INFO, c, "admin: waiting command cancelled");
    if (kind == WAIT_SET)
        control_set_cancel(c->worker, set_id); /* may end other SETs: settle_waits */
    put_error(c, SQLSTATE_QUERY_CANCELED,
              kind == WAIT_RELOAD ? "The reload goes on: sluice's log says how it ends."
              : kind == WAIT_SET  ? "Nothing was changed: the SET is dropped, and a read of its "
                                    "files still blocked is abandoned."
                                  : "A PAUSE stays in force until RESUME.",
              "canceling statement due to user request");
    codec_put_ready(&c->out, 'I');
    if (c->in.data && buf_unframed(&c->in) >= CODEC_HEADER_LEN)
        on_data(c);
    else
        client_send(c);
}

/* A RESUME of what a PAUSE still waits for undoes it: that PAUSE's wait would end at once,
 * its pools no longer paused, and answer PAUSE to an operator whose database is not paused
 * (a script's "PAUSE; maintenance; RESUME" would run its maintenance under traffic). It ends
 * with an error instead (settle_waits), as a cancelled one does. */
static void end_pauses_resumed(struct client *resumer, const struct admin_command *resume)
{
    struct list_node *n, *tmp;
    list_for_each(&resumer->worker->proc->admin_waits, n, tmp)
    {
        struct admin_wait *w = container_of(n, struct admin_wait, node);
        if (w->kind == WAIT_PAUSE &&
            (!resume->has_name ||
             (w->target.has_name && strcmp(resume->name, w->target.name) == 0)))
            w->kind = WAIT_PAUSE_RESUMED;
    }
}

static void free_waits(struct process *proc)
{
    struct list_node *n, *tmp;
    list_for_each(&proc->admin_waits, n, tmp)
    {
        list_remove(&proc->admin_waits, n);
        free(container_of(n, struct admin_wait, node));
    }
}

static const struct console_ops console = {
    .is_console_db = is_console_db,
    .welcome = send_welcome,
    .on_data = on_data,
    .cancel = cancel_wait,
};

static int start(struct process *proc)
{
    list_init(&proc->admin_waits);
    proc->console = &console;
    return 0;
}

const struct sluice_service admin_service = {
    .name = "admin console",
    .start = start,
    .tick = tick,
    .free = free_waits,
    .reload_ended = reload_ended,
    .set_ended = set_ended,
};
