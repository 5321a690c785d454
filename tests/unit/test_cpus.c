/* test_cpus: the worker count's default from fake cgroup trees: no quota, a v2 quota rounded up,
 * a v2 quota above the affinity count, "max", a v1 quota in either directory name, v1's -1, and
 * garbage; never below 1. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "cpus.h"

static char root[64];

static void put(const char *rel, const char *text)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", root, rel);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void fresh_root(void)
{
    char cmd[128];
    if (root[0]) {
        snprintf(cmd, sizeof(cmd), "rm -rf %s", root);
        CHECK_INT(system(cmd), 0);
    }
    snprintf(root, sizeof(root), "/tmp/test_cpus.XXXXXX");
    CHECK(mkdtemp(root) != NULL);
}

static void subdir(const char *rel)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", root, rel);
    CHECK_INT(mkdir(path, 0700), 0);
}

static void no_cgroup_files_means_the_affinity_count(void)
{
    fresh_root();
    CHECK_INT(cpus_usable_under(root, 8), 8);
    CHECK_INT(cpus_usable_under(root, 0), 1); /* never below one */
    CHECK_INT(cpus_usable_under("/nonexistent/cgroup", 3), 3);
}

static void v2_quota_caps_and_rounds_up(void)
{
    fresh_root();
    put("cpu.max", "150000 100000\n");
    CHECK_INT(cpus_usable_under(root, 16), 2); /* 1.5 CPUs: two workers */
    put("cpu.max", "50000 100000\n");
    CHECK_INT(cpus_usable_under(root, 16), 1);
    put("cpu.max", "800000 100000\n");
    CHECK_INT(cpus_usable_under(root, 4), 4); /* the affinity mask is smaller */
    put("cpu.max", "max 100000\n");
    CHECK_INT(cpus_usable_under(root, 6), 6);
    put("cpu.max", "garbage\n");
    CHECK_INT(cpus_usable_under(root, 6), 6);
}

static void v1_quota_in_either_directory(void)
{
    fresh_root();
    subdir("cpu,cpuacct");
    put("cpu,cpuacct/cpu.cfs_quota_us", "300000\n");
    put("cpu,cpuacct/cpu.cfs_period_us", "100000\n");
    CHECK_INT(cpus_usable_under(root, 32), 3);
    put("cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
    CHECK_INT(cpus_usable_under(root, 32), 32);
    fresh_root();
    subdir("cpu");
    put("cpu/cpu.cfs_quota_us", "250000\n");
    put("cpu/cpu.cfs_period_us", "100000\n");
    CHECK_INT(cpus_usable_under(root, 32), 3);
    put("cpu.max", "100000 100000\n"); /* v2 wins when both are there */
    CHECK_INT(cpus_usable_under(root, 32), 1);
}

static void this_process_has_at_least_one(void)
{
    CHECK(cpus_usable() >= 1);
}

/* 4 threads per worker unless the environment already chose; one worker keeps libuv's 4. */
static void the_thread_pool_grows_with_workers_unless_the_environment_sets_it(void)
{
    unsetenv("UV_THREADPOOL_SIZE");
    CHECK_INT(cpus_size_threadpool(1), 4);
    CHECK_STR(getenv("UV_THREADPOOL_SIZE"), "4");
    unsetenv("UV_THREADPOOL_SIZE");
    CHECK_INT(cpus_size_threadpool(3), 12);
    unsetenv("UV_THREADPOOL_SIZE");
    CHECK_INT(cpus_size_threadpool(64 * 64), 1024);
    setenv("UV_THREADPOOL_SIZE", "7", 1);
    CHECK_INT(cpus_size_threadpool(3), 7); /* the operator's choice stays */
    unsetenv("UV_THREADPOOL_SIZE");
}

int main(void)
{
    RUN(no_cgroup_files_means_the_affinity_count);
    RUN(v2_quota_caps_and_rounds_up);
    RUN(v1_quota_in_either_directory);
    RUN(this_process_has_at_least_one);
    RUN(the_thread_pool_grows_with_workers_unless_the_environment_sets_it);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", root);
    CHECK_INT(system(cmd), 0);
    return CHECK_DONE();
}
