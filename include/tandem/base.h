/*
 * tandem/base.h: the export macro, the library version, the number of usable CPUs and the
 * allocator hook.
 *
 * Every other tandem header includes this one. Nothing here holds state that fork() could
 * break: the CPU count is re-read on every call and the allocator is a plain process-wide
 * setting that a forked child inherits.
 */
#ifndef TANDEM_BASE_H
#define TANDEM_BASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) || defined(__clang__)
#define TDM_API __attribute__((visibility("default")))
#else
#define TDM_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define TDM_VERSION_MAJOR  0
#define TDM_VERSION_MINOR  1
#define TDM_VERSION_PATCH  0
#define TDM_VERSION_STRING "0.1.0"

/*
 * Returns the version of the library that is running, as "MAJOR.MINOR.PATCH". It can differ
 * from TDM_VERSION_STRING, which is the version of the headers a program was compiled with.
 * Thread-safe; the string is static.
 */
TDM_API const char *tdm_version(void);

/*
 * Returns the number of CPUs this process may really use, always at least 1: the CPUs in the
 * calling thread's affinity mask (sched_getaffinity; the process's, unless threads set their
 * own), lowered to the CPU quota of its cgroup when one is set (cgroup v2 `cpu.max`, or cgroup
 * v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`, on every level from the process's own cgroup up
 * to the top of the mounted hierarchy; a fractional quota is rounded up, so a quota of 1.5 CPUs
 * counts as 2). This is Python 3.13's os.process_cpu_count() with loky's quota
 * rule, and the default size of process pools.
 *
 * The environment variable TDM_CPU_COUNT, when it holds a positive decimal integer, overrides
 * everything (as PYTHON_CPU_COUNT does for Python); any other value is ignored.
 *
 * Thread-safe. Reads the affinity mask and the cgroup files on every call, so it follows
 * changes made while the program runs.
 */
TDM_API int tdm_cpu_count(void);

/*
 * An allocator for the memory tandem's own objects take from the heap (thread handles, timers
 * and, in later modules, pools and futures). `alloc` behaves like realloc with a user pointer:
 * with size > 0 it returns a block of at least that size (ptr NULL: a new block; otherwise the
 * block is resized) or NULL when out of memory; with size 0 it frees ptr and returns NULL.
 * Objects that live in caller-provided memory (locks, semaphores, ...) never allocate. What the
 * C library allocates inside calls tandem makes (stdio buffers when tdm_cpu_count() reads
 * /proc, pthread keys, thread stacks) does not go through it.
 */
typedef struct tdm_allocator {
  void *(*alloc)(void *ud, void *ptr, size_t size);
  void *ud;
} tdm_allocator;

/*
 * Makes tandem allocate through `a` from now on; NULL (or an `alloc` of NULL) restores the C
 * library's allocator.
 * The structure is copied. Call it before any tandem object exists: a block must be freed by
 * the allocator that made it. Not thread-safe with other tandem calls. Its main use is fault
 * injection in tests (fail the Nth allocation) and accounting.
 */
TDM_API void tdm_allocator_set(const tdm_allocator *a);

/*
 * Frees a buffer that tandem allocated and handed to the caller (a message from
 * tdm_queue_get() or tdm_conn_recv(), say), with the allocator that made it. NULL is a no-op.
 */
TDM_API void tdm_free(void *ptr);

#ifdef __cplusplus
}
#endif

#endif /* TANDEM_BASE_H */
