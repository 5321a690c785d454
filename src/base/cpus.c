/* cpus: the CPUs this process may use (see cpus.h). The quota matters in containers: a pod with
 * a limit of 2 CPUs on a 64-core node sees 64 CPUs in its affinity mask, and 64 workers there
 * would spend the quota on contention (docs/architecture.md 5.1). */
#include "cpus.h"

#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The whole of a small file, NUL-terminated; false when it cannot be read. */
static bool read_small(const char *dir, const char *name, char *out, size_t n)
{
    char path[512];
    if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path))
        return false;
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    size_t got = fread(out, 1, n - 1, f);
    fclose(f);
    out[got] = '\0';
    return got > 0;
}

/* CPUs a quota allows: quota/period rounded up; 0 when there is none. */
static int quota_cpus(long long quota, long long period)
{
    if (quota <= 0 || period <= 0)
        return 0;
    long long n = (quota + period - 1) / period;
    return n > 4096 ? 4096 : (int)n;
}

/* cgroup v2: "max 100000" (no quota) or "200000 100000". */
static int v2_quota(const char *root)
{
    char text[128];
    if (!read_small(root, "cpu.max", text, sizeof(text)))
        return 0;
    long long quota = 0, period = 0;
    if (strncmp(text, "max", 3) == 0 || sscanf(text, "%lld %lld", &quota, &period) != 2)
        return 0;
    return quota_cpus(quota, period);
}

/* cgroup v1: cpu.cfs_quota_us (-1: no quota) over cpu.cfs_period_us. */
static int v1_quota(const char *root)
{
    static const char *const dirs[] = {"cpu", "cpu,cpuacct"};
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        char dir[512], text[64];
        if (snprintf(dir, sizeof(dir), "%s/%s", root, dirs[i]) >= (int)sizeof(dir))
            continue;
        long long quota = 0, period = 0;
        if (!read_small(dir, "cpu.cfs_quota_us", text, sizeof(text)) ||
            sscanf(text, "%lld", &quota) != 1)
            continue;
        if (!read_small(dir, "cpu.cfs_period_us", text, sizeof(text)) ||
            sscanf(text, "%lld", &period) != 1)
            continue;
        return quota_cpus(quota, period);
    }
    return 0;
}

int cpus_usable_under(const char *cgroup_root, int affinity_count)
{
    int n = affinity_count > 0 ? affinity_count : 1;
    int quota = v2_quota(cgroup_root);
    if (quota == 0)
        quota = v1_quota(cgroup_root);
    if (quota > 0 && quota < n)
        n = quota;
    return n;
}

int cpus_usable(void)
{
    cpu_set_t set;
    int affinity = 0;
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        affinity = CPU_COUNT(&set);
    return cpus_usable_under("/sys/fs/cgroup", affinity);
}

#define UV_DEFAULT_THREADS 4
#define UV_MAX_THREADS 1024 /* libuv's own ceiling */

int cpus_size_threadpool(int workers)
{
    const char *set = getenv("UV_THREADPOOL_SIZE");
    if (!set || !set[0]) {
        long size = (long)(workers > 1 ? workers : 1) * UV_DEFAULT_THREADS;
        char text[16];
        snprintf(text, sizeof(text), "%ld", size < UV_MAX_THREADS ? size : UV_MAX_THREADS);
        setenv("UV_THREADPOOL_SIZE", text, 1);
        set = getenv("UV_THREADPOOL_SIZE");
    }
    return set ? atoi(set) : 0;
}
