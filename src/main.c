/* main: command line, loading the config, running the loop until shutdown. */
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "admin.h"
#include "config.h"
#include "cpus.h"
#include "http.h"
#include "log.h"
#include "sockio.h"
#include "sluice.h"

extern char **environ;

static void usage(FILE *out)
{
    fprintf(out,
            "sluice %s - a PostgreSQL connection pooler\n"
            "\n"
            "Usage:\n"
            "  sluice [CONFIG.ini]        run (config file optional: DATABASE_URL and SLUICE_*\n"
            "                             environment variables configure it without one)\n"
            "  sluice -c CONFIG.ini       the same\n"
            "  sluice --check [CONFIG]    validate the configuration, print every problem, exit\n"
            "  sluice --version           print the version\n"
            "  sluice --help              this text\n"
            "\n"
            "Environment:\n"
            "  DATABASE_URL=postgres://user:pass@host:port/db?sslmode=require\n"
            "                             the upstream database; clients log in with the same\n"
            "                             user and password\n"
            "  SLUICE_<KEY>=value         any main-section key, e.g. SLUICE_POOL_MODE=transaction,\n"
            "                             SLUICE_DEFAULT_POOL_SIZE=10, SLUICE_MAX_DB_CONNECTIONS=80%%\n"
            "                             (environment overrides the file; the file overrides\n"
            "                             defaults)\n"
            "\n"
            "Signals: SIGHUP reloads the config, SIGINT shuts down gracefully (transactions\n"
            "finish, up to shutdown_timeout; a second SIGINT closes at once), SIGTERM and\n"
            "SIGQUIT shut down promptly; all exit 0. SIGUSR1 pauses every database (PAUSE),\n"
            "SIGUSR2 resumes them (RESUME), as in PgBouncer.\n",
            SLUICE_VERSION);
}

static void print_diag(const struct config_diag *d)
{
    for (int i = 0; i < d->nwarnings; i++)
        fprintf(stderr, "warning: %s\n", d->warnings[i]);
    for (int i = 0; i < d->nerrors; i++)
        fprintf(stderr, "error: %s\n", d->errors[i]);
}

/* Run until every handle is closed, then close the poll handles sockio keeps for reuse (see
 * sockio.c) and run once more for their close callbacks, so that uv_loop_close finds none. */
static void run_to_the_end(uv_loop_t *loop)
{
    uv_run(loop, UV_RUN_DEFAULT);
    sockio_release_spares();
    uv_run(loop, UV_RUN_DEFAULT);
}

int main(int argc, char **argv)
{
    /* No OpenSSL clean-up at exit (before libpq or tls.c first use it, or its default registers
     * an atexit handler): a reload's or SET's read abandoned on a certificate that blocks (a
     * FIFO) sits inside OpenSSL's own read, and if that read returned while the handler freed
     * the library's state, the thread would go on parsing over freed memory. The process's end
     * takes the memory back; reload_reader_exiting keeps the thread from freeing its job. */
    OPENSSL_init_ssl(OPENSSL_INIT_NO_ATEXIT, NULL);
    const char *path = NULL;
    bool check = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--version") == 0 || strcmp(a, "-V") == 0) {
            printf("sluice %s\n", SLUICE_VERSION);
            return 0;
        } else if (strcmp(a, "--check") == 0) {
            check = true;
        } else if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
            if (++i >= argc) {
                fprintf(stderr, "sluice: %s needs a file name\n", a);
                return 64;
            }
            path = argv[i];
        } else if (a[0] == '-') {
            fprintf(stderr, "sluice: unknown option %s (see --help)\n", a);
            return 64;
        } else if (!path) {
            path = a;
        } else {
            fprintf(stderr, "sluice: more than one config file given\n");
            return 64;
        }
    }
    if (!path) {
        const char *env_path = getenv("SLUICE_CONFIG");
        if (env_path && env_path[0])
            path = env_path;
    }

    struct config_diag diag = {0};
    struct config *cfg = config_load(path, environ, &diag);
    print_diag(&diag);
    config_diag_free(&diag);
    if (check) {
        if (cfg) {
            printf("%s: configuration is valid\n", path ? path : "environment");
            config_free(cfg);
            return 0;
        }
        return 1;
    }
    if (!cfg) {
        fprintf(stderr, "sluice: invalid configuration; not starting\n");
        return 1;
    }

    cpus_size_threadpool(cfg->workers.n); /* the number in effect; before any loop queues work */
    uv_loop_t *loop = uv_default_loop();
    struct process proc;
    /* The services beside the core, started in this order; the core knows them only as hooks. */
    static const struct sluice_service *const services[] = {&admin_service, &http_service, NULL};
    int rc = sluice_start(&proc, loop, cfg, services);
    if (rc < 0) {
        log_msg(LOG_ERROR, "cannot start: %s", uv_strerror(rc));
        sluice_shutdown(&proc, PHASE_SHUTDOWN_NOW);
        run_to_the_end(loop);
        sluice_free(&proc);
        uv_loop_close(loop);
        reload_reader_exiting(); /* a stuck read's thread frees nothing from here on */
        return 1;
    }
    char *pidfile = proc.cfg->pidfile[0] ? strdup(proc.cfg->pidfile) : NULL;
    if (pidfile) {
        FILE *f = fopen(pidfile, "w");
        if (f) {
            fprintf(f, "%d\n", (int)getpid());
            fclose(f);
        } else {
            log_msg(LOG_ERROR, "cannot write pidfile %s", pidfile);
        }
    }
    run_to_the_end(loop);
    if (pidfile) {
        unlink(pidfile);
        free(pidfile);
    }
    int exit_code = proc.exit_code;
    sluice_free(&proc);
    rc = uv_loop_close(loop);
    if (rc != 0)
        fprintf(stderr, "sluice: loop not empty at exit: %s\n", uv_strerror(rc));
    /* Last: from here exit's handlers (OpenSSL's clean-up) run, and a reload or SET read
     * abandoned on a file that blocked may return at any moment: its thread frees nothing. */
    reload_reader_exiting();
    return exit_code;
}
