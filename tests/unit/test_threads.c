/* test_threads: the leaf modules that worker threads (docs/architecture.md section 5) will share
 * or each keep, used from several threads at once: buffers (buf.c), log lines with a reload of
 * the log file in between (log.c), SCRAM exchanges (scram.c), cancel keys (cancel.c), upstream
 * passthrough keys (passthrough.c), SCRAM secrets derived from plain passwords on each worker's
 * loop into the one cache they share (secret.c), and logins choosing their method from the hba
 * rules and the TLS context while a reload swaps both (auth.c, tls.c), config generations held
 * and released by every worker (config.c), and statement definitions shared by several
 * workers' maps (prepared.c). Each thread checks its own
 * results; the main thread counts them after the join. Run under ThreadSanitizer (build-tsan/,
 * scripts/test) it also shows that no memory is touched by two threads without an order between
 * them. */
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "auth.h"
#include "buf.h"
#include "cancel.h"
#include "check.h"
#include "client.h"
#include "config.h"
#include "disabled_dbs.h"
#include "certificate.h"
#include "fixture.h"
#include "log.h"
#include "passthrough.h"
#include "pool.h"
#include "prepared.h"
#include "scram.h"
#include "secret.h"
#include "sluice.h"
#include "tls.h"

#define NTHREADS 4

static char dir[64]; /* a fresh directory for the files the test writes */

static void path_in_dir(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/%s", dir, name);
}

static void write_file(const char *name, const char *text)
{
    char path[128], tmp[160];
    path_in_dir(path, sizeof(path), name);
    snprintf(tmp, sizeof(tmp), "%s.new", path);
    FILE *f = fopen(tmp, "w");
    CHECK(f != NULL);
    if (!f)
        return;
    fputs(text, f);
    fclose(f);
    CHECK_INT(rename(tmp, path), 0); /* whole: a reload never reads half a file */
}

/* Start NTHREADS threads running fn(&args[i]) and wait for them. */
static void run_threads(void *(*fn)(void *), void *args, size_t arg_size)
{
    pthread_t t[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        CHECK_INT(pthread_create(&t[i], NULL, fn, (char *)args + (size_t)i * arg_size), 0);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(t[i], NULL);
}

/* What a worker that only needs its number gets: id 0 to NTHREADS-1, and a count of what it
 * found wrong. */
struct numbered_arg {
    int id;
    int bad;
};

/* Run fn on NTHREADS threads, each with its own numbered_arg, and check none found anything. */
static void run_numbered_threads(void *(*fn)(void *))
{
    struct numbered_arg args[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        args[i] = (struct numbered_arg){.id = i};
    run_threads(fn, args, sizeof(args[0]));
    for (int i = 0; i < NTHREADS; i++)
        CHECK_INT(args[i].bad, 0);
}

/* ---- buf: each thread's blocks are its own while attached ---- */

static void *buf_worker(void *p)
{
    struct numbered_arg *a = p;
    uint32_t size = buf_block_size();
    for (int round = 0; round < 3000; round++) {
        struct buf b[3] = {{0}};
        for (int i = 0; i < 3; i++) {
            if (!buf_attach(&b[i])) {
                a->bad++;
                return NULL;
            }
            memset(b[i].data, a->id * 3 + i + 1, size);
        }
        for (int i = 0; i < 3; i++) {
            if (b[i].data[0] != a->id * 3 + i + 1 || b[i].data[size - 1] != a->id * 3 + i + 1)
                a->bad++;
            buf_release(&b[i]);
        }
    }
    buf_free_cache(); /* a worker's cache goes with it */
    return NULL;
}

static void buffers_are_never_shared_between_threads(void)
{
    run_numbered_threads(buf_worker);
}

/* ---- log: whole lines, none lost, while the log file is reopened (reload) ---- */

#define LOG_LINES 400
static atomic_bool logging_done;

static void *log_worker(void *p)
{
    int id = *(int *)p;
    for (int i = 0; i < LOG_LINES; i++)
        log_msg(LOG_INFO, "thread %d line %d", id, i);
    return NULL;
}

static void *log_reloader(void *p)
{
    const char *path = p;
    while (!atomic_load(&logging_done))
        log_configure(LOG_INFO, false, path);
    return NULL;
}

static void log_lines_stay_whole_across_a_reload(void)
{
    char path[128];
    path_in_dir(path, sizeof(path), "sluice.log");
    log_configure(LOG_INFO, false, path);
    /* the lines go to stderr too: into a file, of which only what is not a log line (a
     * sanitizer's report) is shown afterwards */
    char captured[128];
    path_in_dir(captured, sizeof(captured), "stderr");
    fflush(stderr);
    int saved = dup(2), capture = open(captured, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(capture >= 0);
    dup2(capture, 2);
    close(capture);
    pthread_t reloader;
    atomic_store(&logging_done, false);
    CHECK_INT(pthread_create(&reloader, NULL, log_reloader, path), 0);
    int ids[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        ids[i] = i;
    run_threads(log_worker, ids, sizeof(ids[0]));
    atomic_store(&logging_done, true);
    pthread_join(reloader, NULL);
    log_close();
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    FILE *report = fopen(captured, "r");
    char text[4096];
    while (report && fgets(text, sizeof(text), report))
        if (!strstr(text, " LOG thread "))
            fputs(text, stderr);
    if (report)
        fclose(report);

    int seen[NTHREADS] = {0}, malformed = 0;
    FILE *f = fopen(path, "r");
    CHECK(f != NULL);
    char line[4096];
    while (f && fgets(line, sizeof(line), f)) {
        int id = -1, n = -1;
        const char *at = strstr(line, " LOG thread ");
        if (!at || sscanf(at, " LOG thread %d line %d", &id, &n) != 2 || id < 0 || id >= NTHREADS ||
            !strchr(line, '\n'))
            malformed++;
        else
            seen[id]++;
    }
    if (f)
        fclose(f);
    CHECK_INT(malformed, 0);
    for (int i = 0; i < NTHREADS; i++)
        CHECK_INT(seen[i], LOG_LINES);
}

/* ---- scram: exchanges on every thread at once give the RFC 7677 answers ---- */

#define RFC_CLIENT_FIRST "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
#define RFC_SERVER_NONCE "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
#define RFC_CLIENT_FINAL                                                                           \
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+"               \
    "Ute9ytag9zjfMHg"                                                                              \
    "sqmmiz7AndVQ="
#define RFC_SERVER_FINAL "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

static struct scram_secret rfc_secret;

static void *scram_worker(void *p)
{
    struct numbered_arg *a = p;
    for (int i = 0; i < 300; i++) {
        struct scram_server x;
        scram_server_init(&x, &rfc_secret, false, NULL, 0);
        char *out = NULL;
        const char *why = NULL;
        if (scram_server_first(&x, false, RFC_CLIENT_FIRST, strlen(RFC_CLIENT_FIRST),
                               RFC_SERVER_NONCE, &out, &why) != SCRAM_OK)
            a->bad++;
        free(out);
        out = NULL;
        if (scram_server_final(&x, RFC_CLIENT_FINAL, strlen(RFC_CLIENT_FINAL), &out, &why) !=
                SCRAM_OK ||
            !out || strcmp(out, RFC_SERVER_FINAL) != 0)
            a->bad++;
        free(out);
        scram_server_free(&x);
    }
    scram_free_contexts(); /* a worker's contexts go with it */
    return NULL;
}

static void scram_exchanges_run_on_every_thread_at_once(void)
{
    uint8_t salt[32];
    int n = scram_b64_decode("W22ZaJ0SNY7soEsUEjb6gQ==", 24, salt, sizeof salt);
    CHECK_INT(n, 16);
    CHECK_INT(scram_make_secret("pencil", salt, (size_t)n, 4096, &rfc_secret), 0);
    run_numbered_threads(scram_worker);
}

/* ---- cancel: every thread (worker) registers its clients' keys in its own map ---- */

#define CANCEL_CLIENTS 2000

struct cancel_arg {
    unsigned index; /* the worker: its map's owner */
    struct client *clients;
    uint32_t *pids; /* what each client was given */
    int bad;
};

static void *cancel_worker(void *p)
{
    struct cancel_arg *a = p;
    struct cancel_map *m = cancel_map_new(a->index);
    if (!m) {
        a->bad++;
        return NULL;
    }
    for (int i = 0; i < CANCEL_CLIENTS; i++)
        if (cancel_register(m, &a->clients[i]) != 0)
            a->bad++;
    for (int i = 0; i < CANCEL_CLIENTS; i++) {
        struct client *c = &a->clients[i];
        if (cancel_pid_owner(c->cancel_pid) != a->index || (int32_t)c->cancel_pid <= 0 ||
            cancel_map_lookup(m, c->cancel_pid, c->cancel_key) != c ||
            cancel_map_lookup(m, c->cancel_pid, c->cancel_key ^ 1) != NULL)
            a->bad++;
        a->pids[i] = c->cancel_pid;
    }
    for (int i = 0; i < CANCEL_CLIENTS; i += 2)
        cancel_unregister(m, &a->clients[i]);
    for (int i = 0; i < CANCEL_CLIENTS; i++) {
        struct client *c = &a->clients[i];
        bool gone = i % 2 == 0;
        if ((c->cancel_pid == 0) != gone ||
            (cancel_map_lookup(m, a->pids[i], c->cancel_key) == NULL) != gone)
            a->bad++;
    }
    for (int i = 1; i < CANCEL_CLIENTS; i += 2)
        cancel_unregister(m, &a->clients[i]);
    cancel_map_free(m);
    return NULL;
}

static int compare_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void cancel_keys_are_drawn_on_every_thread_at_once(void)
{
    struct cancel_arg args[NTHREADS];
    uint32_t *all = calloc(NTHREADS * CANCEL_CLIENTS, sizeof(*all));
    CHECK(all != NULL);
    if (!all)
        return;
    for (unsigned i = 0; i < NTHREADS; i++) {
        /* owners 0, 21, 42, 63: the highest index a pid can carry among them */
        args[i] = (struct cancel_arg){.index = i * CANCEL_OWNER_MAX / (NTHREADS - 1),
                                      .pids = all + i * CANCEL_CLIENTS};
        args[i].clients = calloc(CANCEL_CLIENTS, sizeof(struct client));
        CHECK(args[i].clients != NULL);
        if (!args[i].clients)
            return;
    }
    run_threads(cancel_worker, args, sizeof(args[0]));
    for (int i = 0; i < NTHREADS; i++) {
        CHECK_INT(args[i].bad, 0);
        free(args[i].clients);
    }
    /* one map per worker, yet no pid is handed out twice */
    qsort(all, NTHREADS * CANCEL_CLIENTS, sizeof(*all), compare_u32);
    int duplicates = 0;
    for (int i = 1; i < NTHREADS * CANCEL_CLIENTS; i++)
        duplicates += all[i] == all[i - 1];
    CHECK_INT(duplicates, 0);
    free(all);
    CHECK(cancel_map_new(CANCEL_OWNER_MAX + 1) == NULL);
}

/* ---- passthrough: keys remembered and found by several threads ---- */

static void *passthrough_worker(void *p)
{
    struct numbered_arg *a = p;
    char user[32];
    for (int i = 0; i < 500; i++) {
        snprintf(user, sizeof(user), "u%d", i % 20); /* the same names on every thread */
        struct passthrough_keys k = {.kind = PASSTHROUGH_MD5};
        memset(k.client_key, a->id + 1, sizeof(k.client_key));
        snprintf(k.md5, sizeof(k.md5), "md5%032d", a->id + 1);
        if (passthrough_remember(user, &k) != 0)
            a->bad++;
        const struct passthrough_keys *found = passthrough_find(user);
        /* whoever wrote last, the keys are one thread's whole, never a mix */
        if (!found || found->kind != PASSTHROUGH_MD5 ||
            (int)found->client_key[0] != atoi(found->md5 + 3) ||
            found->client_key[SCRAM_KEY_LEN - 1] != found->client_key[0])
            a->bad++;
    }
    return NULL;
}

static void passthrough_keys_are_kept_whole(void)
{
    run_numbered_threads(passthrough_worker);
    passthrough_free_all();
}

/* ---- secret: each worker derives on its own loop; the cache of derived secrets is shared ---- */

#define DERIVED_USERS 6

struct derive_arg {
    const struct config *cfg;
    struct secret_waiter waiter;
    int answers, bad;
    struct scram_secret first[DERIVED_USERS], cached[DERIVED_USERS];
};

static void on_secret(struct secret_waiter *w, const struct user_secret *s, const char *error)
{
    struct derive_arg *a = container_of(w, struct derive_arg, waiter);
    a->answers++;
    if (error || !s || s->kind != SECRET_PLAIN || !s->have_scram)
        a->bad++;
    else
        a->first[a->answers - 1] = s->scram;
}

static void *derive_worker(void *p)
{
    struct derive_arg *a = p;
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) {
        a->bad++;
        return NULL;
    }
    struct worker worker = {.loop = &loop, .cfg = (struct config *)a->cfg};
    char users[DERIVED_USERS][8];
    for (int i = 0; i < DERIVED_USERS; i++) {
        snprintf(users[i], sizeof(users[i]), "u%d", i); /* the same names on every thread */
        a->waiter = (struct secret_waiter){
            .req = {.worker = &worker, .user = users[i], .database = "db", .need_scram = true},
            .done = on_secret};
        struct user_secret s;
        int answers = a->answers;
        int rc = secret_lookup(&a->waiter, &s);
        if (rc == 1)
            on_secret(&a->waiter, &s, NULL); /* another thread's derivation is in the cache */
        else if (rc == 0)
            uv_run(&loop, UV_RUN_DEFAULT); /* the derivation, then on_secret on this loop */
        else
            a->bad++;
        secret_wipe(&s);
        if (a->answers != answers + 1)
            a->bad++;
    }
    /* now every user's secret is cached: answered at once, one secret per user for everyone */
    for (int i = 0; i < DERIVED_USERS; i++) {
        a->waiter.req.user = users[i];
        struct user_secret s;
        if (secret_lookup(&a->waiter, &s) != 1 || !s.have_scram)
            a->bad++;
        a->cached[i] = s.scram;
        secret_wipe(&s);
    }
    uv_loop_close(&loop);
    return NULL;
}

static void derived_secrets_are_shared_by_every_worker(void)
{
    char users[128], ini[512];
    path_in_dir(users, sizeof(users), "users.txt");
    char list[256] = "";
    for (int i = 0; i < DERIVED_USERS; i++)
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "\"u%d\" \"pw%d\"\n", i, i);
    write_file("users.txt", list);
    snprintf(ini, sizeof(ini), "[databases]\ndb = host=127.0.0.1\n[sluice]\nauth_file = %s\n",
             users);
    struct config *cfg = fixture_config(ini);
    if (!cfg)
        return;
    struct derive_arg *args = calloc(NTHREADS, sizeof(*args));
    CHECK(args != NULL);
    if (!args)
        return;
    for (int i = 0; i < NTHREADS; i++)
        args[i].cfg = cfg;
    run_threads(derive_worker, args, sizeof(args[0]));
    for (int i = 0; i < NTHREADS; i++) {
        CHECK_INT(args[i].bad, 0);
        CHECK_INT(args[i].answers, DERIVED_USERS);
        for (int u = 0; u < DERIVED_USERS; u++) {
            char password[8];
            snprintf(password, sizeof(password), "pw%d", u);
            CHECK(scram_verify_password(&args[i].first[u], password));
            CHECK(memcmp(&args[i].cached[u], &args[0].cached[u], sizeof(args[0].cached[u])) == 0);
        }
    }
    free(args);
    secret_free_all();
    config_free(cfg);
}

/* ---- auth and tls: logins read the hba rules and the TLS context during reloads ---- */

static void quiet_log(void *owner, enum log_level level, const char *fmt, va_list ap)
{
    (void)owner;
    (void)level;
    (void)fmt;
    (void)ap;
}

static void quiet_resumed(void *owner, const struct auth_result *r)
{
    (void)owner;
    (void)r;
}

static const struct auth_hooks quiet_hooks = {.resumed = quiet_resumed, .log = quiet_log};

static atomic_bool reloading_done;

struct login_arg {
    struct worker *worker;
    int logins, proven, tls_sessions, bad;
};

static void *login_worker(void *p)
{
    struct login_arg *a = p;
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) {
        a->bad++;
        return NULL;
    }
    union peer_addr addr = {.in = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)}};
    struct auth_login l = {.worker = a->worker,
                           .user = "alice",
                           .database = "db",
                           .addr = &addr,
                           .hooks = &quiet_hooks};
    /* at least a few logins after the reloader is done: each thread meets both kinds of state */
    for (int i = 0; i < 200 || !atomic_load(&reloading_done); i++) {
        struct auth_result r;
        memset(&r, 0, sizeof(r));
        struct auth_state *st = auth_start(&l, &r);
        auth_end(st);
        a->logins++;
        if (r.verdict == AUTH_PROVEN)
            a->proven++;
        SSL *ssl = tls_client_new(fds[0]);
        if (ssl)
            a->tls_sessions++;
        tls_client_close(ssl);
    }
    close(fds[0]);
    close(fds[1]);
    return NULL;
}

static void logins_read_rules_and_tls_context_during_reloads(void)
{
    char hba[128], cert[128], key[128], ini[1024];
    path_in_dir(hba, sizeof(hba), "hba.conf");
    path_in_dir(cert, sizeof(cert), "cert.pem");
    path_in_dir(key, sizeof(key), "key.pem");
    CHECK(make_certificate(cert, key));
    /* two rule sets that both trust alice from 127.0.0.1: every login is proven, whichever set
     * it met */
    const char *rules[2] = {"host all alice 127.0.0.1/32 trust\n",
                            "host all bob 10.0.0.0/8 reject\nhost all all 127.0.0.0/8 trust\n"};
    write_file("hba.conf", rules[0]);
    snprintf(ini, sizeof(ini),
             "[databases]\ndb = host=127.0.0.1\n[sluice]\nauth_type = hba\nauth_hba_file = %s\n"
             "client_tls_sslmode = allow\nclient_tls_cert_file = %s\nclient_tls_key_file = %s\n",
             hba, cert, key);
    struct config *cfg = fixture_config(ini);
    if (!cfg)
        return;
    struct worker worker = {.cfg = cfg};
    log_configure(LOG_WARNING, false, NULL);
    CHECK_INT(auth_init(cfg), 0);
    CHECK_INT(tls_init(cfg), 0);

    struct login_arg args[NTHREADS];
    pthread_t t[NTHREADS];
    atomic_store(&reloading_done, false);
    for (int i = 0; i < NTHREADS; i++) {
        args[i] = (struct login_arg){.worker = &worker};
        CHECK_INT(pthread_create(&t[i], NULL, login_worker, &args[i]), 0);
    }
    for (int round = 0; round < 40; round++) {
        write_file("hba.conf", rules[round % 2]);
        /* the reload's own path: the files read (on its thread), then put in force */
        char err[1024];
        struct auth_files *read = auth_files_read(cfg, err, sizeof(err));
        CHECK(read != NULL);
        if (read)
            auth_reload_read(cfg, read);
        struct tls_context *built = tls_context_build(cfg, err, sizeof(err));
        CHECK(built != NULL);
        if (built)
            tls_reload_built(cfg, built);
    }
    atomic_store(&reloading_done, true);
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(t[i], NULL);
        CHECK_INT(args[i].bad, 0);
        CHECK(args[i].logins >= 200);
        CHECK_INT(args[i].proven, args[i].logins);
        CHECK_INT(args[i].tls_sessions, args[i].logins);
    }
    tls_free();
    auth_free_all();
    config_free(cfg);
    log_configure(LOG_INFO, false, NULL);
}

/* ---- config: every worker holds the generation it applied; the last holder frees it ---- */

struct config_arg {
    struct config *cfg; /* a reference of this thread's own */
    int bad;
};

static void *config_holder(void *p)
{
    struct config_arg *a = p;
    for (int i = 0; i < 200; i++) {
        const struct db_entry *db = config_find_db(a->cfg, "db");
        a->bad += !db || a->cfg->default_pool_size != 7;
    }
    config_release(a->cfg); /* the last of the five frees it, on whichever thread */
    return NULL;
}

/* Rounds of RELOAD (5.7): the control thread loads a generation, takes a reference for each
 * worker and drops its own while they still read it; the config is freed once, by its last
 * holder, after every read. Without atomic counts ThreadSanitizer reports the race on refs
 * (and a lost count frees it early or never). */
static void config_generations_are_freed_by_their_last_holder(void)
{
    uint64_t last = 0;
    for (int round = 0; round < 50; round++) {
        struct config_diag diag = {0};
        struct config *cfg = config_load_string("[sluice]\ndefault_pool_size = 7\n"
                                                "[databases]\ndb = host=127.0.0.1\n",
                                                NULL, &diag);
        config_diag_free(&diag);
        CHECK(cfg != NULL);
        if (!cfg)
            return;
        CHECK(cfg->generation > last); /* a reload's number only grows */
        last = cfg->generation;
        struct config_arg args[NTHREADS];
        pthread_t t[NTHREADS];
        for (int i = 0; i < NTHREADS; i++) {
            args[i] = (struct config_arg){.cfg = config_acquire(cfg)};
            CHECK_INT(pthread_create(&t[i], NULL, config_holder, &args[i]), 0);
        }
        config_release(cfg); /* the control thread's, while the workers read */
        for (int i = 0; i < NTHREADS; i++) {
            pthread_join(t[i], NULL);
            CHECK_INT(args[i].bad, 0);
        }
    }
}

/* ---- prepared: one definition in several workers' maps ---- */

#define STREAMED_PER_THREAD 200

struct stmt_arg {
    struct stmt_def *def; /* shared: the main thread's reference keeps it */
    int bad;
    char streamed[STREAMED_PER_THREAD][STMT_SERVER_NAME_MAX + 1];
};

static void *stmt_holder(void *p)
{
    struct stmt_arg *a = p;
    struct stmt_map *m = stmt_map_new();
    if (!m) {
        a->bad++;
        return NULL;
    }
    for (int i = 0; i < 4000; i++) {
        char name[16];
        snprintf(name, sizeof(name), "s%d", i % 16);
        if (i % 5 == 4)
            stmt_map_remove(m, name);
        else if (!stmt_map_put(m, name, a->def))
            a->bad++;
    }
    stmt_map_delete(m); /* drops this map's references */
    for (int i = 0; i < STREAMED_PER_THREAD; i++) {
        struct stmt_def *d = stmt_def_alloc(0, NULL);
        if (!d) {
            a->bad++;
            continue;
        }
        memcpy(a->streamed[i], d->server_name, sizeof(a->streamed[i]));
        stmt_def_unref(d);
    }
    return NULL;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* Four workers' maps add and drop the same definition at once (a server's map moves between
 * workers with its definitions, 5.4): its count ends where it began, and definitions that
 * streamed through get names unique across threads. Without atomic counts the count drifts
 * and ThreadSanitizer reports the race. */
static void statement_definitions_are_counted_across_threads(void)
{
    static const char query[] = "\0select 1\0\0"; /* after a name: query, no parameters */
    struct stmt_def *def = stmt_def_new((const uint8_t *)query, sizeof(query) - 1, NULL);
    CHECK(def != NULL);
    struct stmt_arg *args = calloc(NTHREADS, sizeof(*args));
    CHECK(args != NULL);
    if (!def || !args)
        return;
    for (int i = 0; i < NTHREADS; i++)
        args[i].def = def;
    run_threads(stmt_holder, args, sizeof(args[0]));
    for (int i = 0; i < NTHREADS; i++)
        CHECK_INT(args[i].bad, 0);
    CHECK_INT(def->refs, 1);
    stmt_def_unref(def);
    char(*names)[STMT_SERVER_NAME_MAX + 1] =
        calloc((size_t)NTHREADS * STREAMED_PER_THREAD, sizeof(*names));
    CHECK(names != NULL);
    if (names) {
        for (int i = 0; i < NTHREADS; i++)
            memcpy(names[i * STREAMED_PER_THREAD], args[i].streamed, sizeof(args[i].streamed));
        qsort(names, (size_t)NTHREADS * STREAMED_PER_THREAD, sizeof(*names), compare_names);
        int repeated = 0;
        for (int i = 1; i < NTHREADS * STREAMED_PER_THREAD; i++)
            repeated += strcmp(names[i - 1], names[i]) == 0;
        CHECK_INT(repeated, 0);
        free(names);
    }
    free(args);
}

/* ---- disabled_dbs: logins on every worker ask while DISABLE/ENABLE change it ---- */

static struct process disabled_proc; /* only its disabled_dbs is used */

static void *disabled_worker(void *p)
{
    struct numbered_arg *a = p;
    for (int i = 0; i < 3000; i++) {
        if (a->id == 0) { /* the console: DISABLE busy, ENABLE busy */
            a->bad += disabled_dbs_add(&disabled_proc, "busy") != 0;
            disabled_dbs_remove(&disabled_proc, "busy");
        } else { /* logins: "busy" either way, the others always the same */
            (void)disabled_dbs_contains(&disabled_proc, "busy");
            a->bad += !disabled_dbs_contains(&disabled_proc, "closed");
            a->bad += disabled_dbs_contains(&disabled_proc, "open");
        }
    }
    return NULL;
}

/* Without the list's mutex ThreadSanitizer reports the race between a login's walk and
 * DISABLE's append or ENABLE's free. */
static void disabled_databases_are_read_while_changed(void)
{
    disabled_dbs_init(&disabled_proc.disabled_dbs);
    CHECK_INT(disabled_dbs_add(&disabled_proc, "closed"), 0);
    run_numbered_threads(disabled_worker);
    CHECK(disabled_dbs_contains(&disabled_proc, "closed"));
    CHECK(!disabled_dbs_contains(&disabled_proc, "busy"));
    disabled_dbs_free(&disabled_proc);
}

/* ---- budgets: logins and leases on every worker while reloads replace the set ---- */

static struct worker *budget_worker_of; /* worker 0 of the process whose budgets all use */
static struct config *budget_cfgs[2];   /* the two configs the reloads switch between */
static struct pool *budget_pools[NTHREADS]; /* each worker's pool of db/u */

static void *budget_login_worker(void *p)
{
    struct numbered_arg *a = p;
    struct process *proc = budget_worker_of->proc;
    union peer_addr addr = {0};
    addr.sa.sa_family = AF_UNIX;
    if (a->id == 0) { /* the control thread (worker 0's): RELOAD after RELOAD */
        for (int i = 0; i < 3000; i++) {
            ledger_lock(&proc->ledger);
            proc->cfg = budget_cfgs[i & 1];
            ledger_unlock(&proc->ledger);
            a->bad += budget_sync(proc) != 0;
        }
        return NULL;
    }
    /* worker a->id, on its own thread: its generation is swapped only here, as its RELOAD
     * message does (worker.c), and its pools' questions read that generation unlocked */
    struct worker *worker = &proc->workers[a->id];
    budget_set_swap(&worker->budgets, budget_set_current(proc));
    for (int i = 0; i < 3000; i++) {
        if (i % 16 == 0)
            budget_set_swap(&worker->budgets, budget_set_current(proc));
        const struct budget_rule *r = NULL;
        a->bad += !budget_join(worker, i & 1 ? "web-1" : "api-1", "u", &addr, &r);
        a->bad += r == NULL;
        struct budget *b = r ? r->budget : NULL;
        struct pool_cap cap; /* a pool's question (first_eligible's and SHOW's walk) */
        budget_pool_cap(budget_pools[a->id], &cap);
        if (ledger_lease_room(worker, b) != 0 && ledger_take_lease(worker, b) == LIMIT_NONE)
            ledger_give_lease(worker, b); /* a transaction */
        ledger_give_client(&proc->ledger, b); /* the client leaves */
    }
    budget_set_swap(&worker->budgets, NULL);
    return NULL;
}

/* Each worker holds a budget generation of its own (budget.h): a reload builds the next one
 * beside it, and a worker swaps on its own thread. Before, budget_sync rewrote the one set and
 * its budgets' numbers and matchers in place while the workers' lease checks, matches and pools
 * read them: ThreadSanitizer reported 18 races in this test, budget_sync's set_str freeing a
 * budget's matcher while budget_pool_cap (budget_of_every_client) read it on another worker, and
 * its writes of the set against the lock-free reads of budgets.n and max_servers. */
static void logins_join_budgets_while_a_reload_changes_them(void)
{
    budget_cfgs[0] = fixture_config("[databases]\ndb = host=127.0.0.1\n"
                                    "[budgets]\nweb = app=web* max_clients=1000 max_servers=50\n");
    budget_cfgs[1] = fixture_config("[databases]\ndb = host=127.0.0.1\n"
                                    "[budgets]\napi = app=api* max_clients=1000 max_servers=40\n");
    if (!budget_cfgs[0] || !budget_cfgs[1])
        return;
    budget_worker_of = fixture_worker_of(budget_cfgs[0], NULL);
    if (!budget_worker_of)
        return;
    struct process *proc = budget_worker_of->proc;
    for (int i = 1; i < NTHREADS; i++) {
        struct worker *w = &proc->workers[i];
        w->proc = proc;
        w->index = (unsigned)i; /* its own share of every budget's leases (ledger.c lease_add) */
        w->cfg = budget_cfgs[0];
        list_init(&w->pools);
        budget_pools[i] = pool_get(w, NULL, "u", "db");
        CHECK(budget_pools[i] != NULL);
        if (!budget_pools[i])
            return;
    }
    proc->nworkers = NTHREADS; /* the lease checks sum every worker's share */
    run_numbered_threads(budget_login_worker);
    proc->nworkers = 1;
    for (int i = 1; i < NTHREADS; i++) {
        list_remove(&proc->workers[i].pools, &budget_pools[i]->node);
        pool_free(budget_pools[i]);
    }
    for (const struct budget *b = proc->budgets_known; b; b = b->next_known) {
        CHECK_INT(b->clients, 0);
        CHECK_INT(budget_leases(b, BUDGET_LEASE_SHARES), 0);
    }
    /* the last reload set budget_cfgs[1]; a sync back to [0] retires "api" and frees what
     * nothing lists or counts in */
    proc->cfg = budget_cfgs[0];
    CHECK_INT(budget_sync(proc), 0);
    CHECK_INT(budget_sync(proc), 0);
    int known = 0;
    for (const struct budget *b = proc->budgets_known; b; b = b->next_known)
        known++;
    CHECK_INT(known, 2); /* web and default */
    proc->cfg = budget_worker_of->cfg = budget_cfgs[0]; /* fixture_worker_free frees it */
    config_free(budget_cfgs[1]);
    fixture_worker_free(budget_worker_of);
}

int main(void)
{
    snprintf(dir, sizeof(dir), "/tmp/sluice-test-threads-XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    buffers_are_never_shared_between_threads();
    log_lines_stay_whole_across_a_reload();
    scram_exchanges_run_on_every_thread_at_once();
    cancel_keys_are_drawn_on_every_thread_at_once();
    passthrough_keys_are_kept_whole();
    derived_secrets_are_shared_by_every_worker();
    logins_read_rules_and_tls_context_during_reloads();
    config_generations_are_freed_by_their_last_holder();
    statement_definitions_are_counted_across_threads();
    disabled_databases_are_read_while_changed();
    logins_join_budgets_while_a_reload_changes_them();
    buf_free_cache();
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK_INT(system(cmd), 0);
    return CHECK_DONE();
}
