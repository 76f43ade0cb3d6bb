/* cpu.h: the cgroup CPU-quota reader behind tdm_cpu_count(), exposed for its tests. */
#ifndef TDM_BASE_CPU_H
#define TDM_BASE_CPU_H

/*
 * Returns the CPU limit that cgroup quotas put on the calling process: the smallest
 * ceil(quota / period) over its cgroup and every ancestor, in the cgroup v2 hierarchy and in
 * the v1 "cpu" hierarchy; 0 when no quota applies or nothing can be read. `root` is prepended
 * to every absolute path read (/proc/self/mountinfo, /proc/self/cgroup and the cgroup files),
 * so tests can point it at a fake tree; "" reads the real system.
 */
int tdm__cgroup_cpu_limit(const char *root);

#endif
