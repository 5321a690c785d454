/* cpus: how many CPUs this process may use, the default number of workers: the count of CPUs
 * in its affinity mask, capped by its cgroup's CPU quota (cgroup v2 cpu.max, or v1
 * cpu.cfs_quota_us over cpu.cfs_period_us), rounded up, at least 1. A sidecar limited to one
 * CPU gets one. Reads a few small files once at start-up; no other state. */
#ifndef SLUICE_CPUS_H
#define SLUICE_CPUS_H

/* For this process: sched_getaffinity and the cgroup files under /sys/fs/cgroup. */
int cpus_usable(void);

/* The same from an affinity count and a cgroup tree under cgroup_root (a test's fake files):
 * cgroup_root/cpu.max (v2), else cgroup_root/cpu/ or cgroup_root/cpu,cpuacct/ with
 * cpu.cfs_quota_us and cpu.cfs_period_us (v1). Missing or unreadable files mean no quota. */
int cpus_usable_under(const char *cgroup_root, int affinity_count);

/* libuv's thread pool is one per process, shared by every worker's loop (SCRAM derivations and
 * getaddrinfo queue there; cancels do not: cancel_send.c sends them from the loop, with a
 * deadline, where a PQcancel held a thread for as long as a connect could hang): 4 threads,
 * libuv's default, per worker, so workers = 1
 * keeps the default. Sets UV_THREADPOOL_SIZE unless the environment already does; call it
 * before any loop queues work (libuv reads it once, at the first). Returns the size in effect,
 * as the environment says it (0: unset, unreadable). */
int cpus_size_threadpool(int workers);

#endif
