/* control: the commands through which a service changes the core — PgBouncer's PAUSE, RESUME,
 * RECONNECT, KILL, KILL_CLIENT, WAIT_CLOSE, RELOAD, SHUTDOWN and SET, as actions on the pools,
 * servers and clients. The admin console parses and answers; these act, and never write to a
 * console client. A database name of NULL means every database; the console's own pseudo-pool
 * is never a target. DISABLE/ENABLE are disabled_dbs.h. The pool commands are control.c's;
 * RELOAD, SET and SHUTDOWN, which sluice.c carries out for the whole process, are
 * control_process.c's. */
#ifndef SLUICE_CONTROL_H
#define SLUICE_CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sluice.h"

struct client;

/* Is db a database of sluice's: configured (by name or a "*" entry), or removed by a reload
 * while a pool of it still holds clients or servers? */
bool control_db_known(const struct worker *worker, const char *db);

/* PAUSE, RESUME, RECONNECT and KILL act on every worker (architecture.md 5.7): the ledger's
 * paused state of db's pool keys changes first (PAUSE, KILL, RESUME), so no worker hands out a
 * server of a paused key even before it reads its message; then each worker is told
 * (worker_post_control: inline for the control worker) and runs control_apply on its thread. */
enum control_op { CONTROL_PAUSE, CONTROL_RESUME, CONTROL_RECONNECT, CONTROL_KILL };
/* On the worker's own thread: op for its pools of db. seq: a PAUSE's proc->pause_seq. */
void control_apply(struct worker *worker, enum control_op op, const char *db, unsigned seq);
/* On the worker's own thread, each tick: report the last PAUSE done once its paused pools have
 * no server in use or logging in (closing their idle ones, and those logging in for no client,
 * meanwhile). */
void control_report_pause(struct worker *worker);

/* PAUSE: no server is handed out and every server closes once its client is done with it
 * (idle ones and those still logging in at once), so the database is left free of sluice's
 * sessions. It pauses the database (NULL: everything), not the pools of the moment: a pool made
 * later starts paused (ledger_db_set_state). */
void control_pause(struct worker *worker, const char *db);
/* Do the paused pools of db have no server in use or logging in any more, on this worker and on every other
 * (each reported the last PAUSE done)? Closes this worker's idle ones (a min_pool_size
 * connection may bring one). A pool resumed meanwhile counts as done. */
bool control_pause_done(struct worker *worker, const char *db);
/* RESUME: hand servers to the clients that queued (RESUME db: not while a PAUSE without a
 * name is in force; RESUME without a name ends every PAUSE). */
void control_resume(struct worker *worker, const char *db);
/* Is a PAUSE without a name in force (RESUME db cannot end it)? */
bool control_paused_all(struct worker *worker);
/* RECONNECT: servers in use close when their client releases them; idle ones close now. */
void control_reconnect(struct worker *worker, const char *db);
/* Servers of p marked to close when free (published for WAIT_CLOSE, tally.h). */
int control_close_pending(const struct pool *p);
/* WAIT_CLOSE: is no server marked to close when free (RECONNECT, a reload) left? The calling
 * worker's lists now, every other worker's as published by a tick after it applied the last
 * control message and reload (architecture.md 5.7). */
bool control_close_done(const struct worker *worker, const char *db);
/* KILL: every client (57P01-style FATAL) and server of db goes; the pools stay paused until
 * RESUME, so new clients wait. */
void control_kill(struct worker *worker, const char *db);

/* A reload removed databases from [databases] (no "*" entry serves them either): as PgBouncer
 * drops such a database, every client of its pools on this worker is closed with FATAL 3D000
 * (FAIL_UNKNOWN_DATABASE, what a new login to it gets), a transaction in progress included,
 * and every server of them closes. On the worker's own thread (worker_apply_config). */
void control_drop_removed(struct worker *worker);

/* The client of worker's with this id (logging in, or in a pool), or NULL; on its thread. */
struct client *control_find_client(struct worker *worker, uint64_t id);
/* KILL_CLIENT: close it with FATAL "connection closed by the administrator". */
void control_kill_client(struct client *victim);
/* The worker that owns the client with this id (the id's top byte, 5.1), or NULL when no
 * worker has that index. */
struct worker *control_client_owner(struct worker *worker, uint64_t id);
/* KILL_CLIENT of a client another worker owns: a message to it, which closes the client on its
 * own thread if it is still there; nothing is known here of whether it was. */
void control_kill_client_elsewhere(struct worker *owner, uint64_t id);
/* On the owner's thread (at that message, or the console's question, admin.c): KILL_CLIENT of
 * its client with this id if it is still there; false (logged) when it has left. */
bool control_kill_client_here(struct worker *worker, uint64_t id);

/* RELOAD: re-read the configuration, off the loop (sluice_reload); returns the reload's number,
 * which the services' reload_ended names when its read is over: the new config in force, or
 * errors (logged) and the previous one stays. */
unsigned control_reload(struct worker *worker);
/* Has every worker applied it (sluice_reload_done)? The console answers RELOAD then. */
bool control_reload_done(const struct worker *worker);
/* SHUTDOWN: move to this phase (a phase not past the current one changes nothing). */
void control_shutdown(struct worker *worker, enum sluice_phase phase);
/* SET key = value (key a reloadable key's name as config_keys spells it): a new config
 * generation, a copy of the live one with the key changed, applied as a reload applies one, in
 * turn with the reloads, its files read off the loop (sluice_set says how and in what order).
 * SLUICE_SET_APPLIED: the calling (control) worker runs under it on return, every other worker
 * swaps to it when its reload message comes (control_reload_done says when all have: the
 * console answers SET then, as it answers RELOAD, so a command after the answer meets the new
 * value on every worker). SLUICE_SET_PENDING: the services' set_ended names *id when it ended.
 * SLUICE_SET_REFUSED: err says why the value was refused, nothing changed. */
enum sluice_set_result control_set(struct worker *worker, const char *key, const char *value,
                                   unsigned *id, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* A pending SET's console cancelled it: it never applies (sluice_set_cancel). */
void control_set_cancel(struct worker *worker, unsigned id);

#endif
