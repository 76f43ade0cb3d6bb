/*
 * platform.h: the porting contract. Every operating-system primitive tandem needs beyond
 * ISO C and POSIX threads is declared here, with its contract; src/platform/linux/ implements
 * it. Nothing outside src/platform/ calls futex(2), get_robust_list(2), gettid(2) or prctl(2).
 * Features are tested by the build (config.h: HAVE_...), not by operating-system names.
 */
#ifndef TDM_PLATFORM_H
#define TDM_PLATFORM_H

#include <sys/types.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"

/* ---- Futexes ---------------------------------------------------------------------------------
 *
 * A futex is a 32-bit aligned word. `shared` selects a futex that works between processes
 * mapping the same memory (keyed by the physical page) instead of a private one (keyed by
 * address, faster, one process only). Both sides of a futex must agree on `shared`.
 */

/* No deadline: tdm__futex_wait() waits until woken. */
#define TDM__NEVER INT64_MAX

/*
 * If *word == expected, sleeps until woken by tdm__futex_wake() or until the absolute
 * CLOCK_MONOTONIC `deadline` (ns; TDM__NEVER for none). Returns -ETIMEDOUT when the deadline
 * has passed, 0 otherwise: woken, *word != expected on entry, interrupted by a signal, or a
 * spurious wake-up. Callers re-check their condition and call again; the deadline is absolute,
 * so re-waiting never extends the wait.
 */
int tdm__futex_wait(uint32_t *word, uint32_t expected, int64_t deadline, bool shared);

/* Wakes up to n threads sleeping on `word` (INT32_MAX: all). Returns how many were woken. */
int tdm__futex_wake(uint32_t *word, int n, bool shared);

/* Futex word bits of the kernel's robust-futex protocol (linux/futex.h). */
#define TDM__FUTEX_WAITERS    0x80000000u
#define TDM__FUTEX_OWNER_DIED 0x40000000u
#define TDM__FUTEX_TID_MASK   0x3fffffffu

/* ---- Robust lists ----------------------------------------------------------------------------
 *
 * The kernel keeps, per thread, a pointer to a user-space list of the robust futexes the thread
 * holds; when the thread ends (exit, exec, kill) it walks the list and, for each futex word
 * still holding the thread's id, sets TDM__FUTEX_OWNER_DIED and wakes a waiter. A thread has
 * one list and the C library owns it (glibc uses it for robust pthread mutexes), so tandem
 * links its own lock nodes into the C library's list, in the C library's node format:
 *
 *   node (the "entry") = address of a 64-bit `next` slot; the 64-bit `prev` slot sits just
 *   before it; the futex word sits TDM__ROBUST_FUTEX_OFFSET bytes from the entry.
 *
 * A robust node is owned by the thread that holds the lock; only that thread (and the kernel,
 * after it died) touches it. Not async-signal-safe, like pthread_mutex_lock.
 */
#define TDM__ROBUST_FUTEX_OFFSET (-32)

/* These run on every lock operation, so they are inline, on initial-exec thread-local state. */
#define TDM__TLS_IE __attribute__((tls_model("initial-exec")))

/* The kernel's struct robust_list_head, seen through plain pointers. */
struct tdm__robust_head {
  void *next;
  long futex_offset;
  void *pending;
};

/* The calling thread's head, once looked up and found usable; NULL otherwise. */
extern __thread struct tdm__robust_head *tdm__robust_head_tls TDM__TLS_IE;
/* 0: not looked up yet in this thread; 1: usable; -1: not usable. */
extern __thread int tdm__robust_state_tls TDM__TLS_IE;

/* Looks up the calling thread's robust-list head and records whether it is usable. */
bool tdm__robust_lookup(void);

/*
 * Returns true when the calling thread can link robust nodes: the build found the node format
 * (HAVE_ROBUST_LIST_CHAIN) and the thread's registered list uses TDM__ROBUST_FUTEX_OFFSET.
 * Cached per thread.
 */
static inline bool tdm__robust_usable(void) {
  int state = tdm__robust_state_tls;
  return state != 0 ? state > 0 : tdm__robust_lookup();
}

/*
 * Marks `entry` as the lock operation in progress (the kernel's list_op_pending), so that a
 * death between taking or releasing the futex word and linking or unlinking the node is still
 * handled; NULL clears it. Requires tdm__robust_usable().
 */
static inline void tdm__robust_pending(uint64_t *entry) {
  tdm__robust_head_tls->pending = entry;
}

/* The `prev` slot of the node whose entry is `entry` (the head's entry is the head itself). */
static inline void **tdm__robust_prev_slot(void *entry) {
  return (void **)((uintptr_t)entry & ~(uintptr_t)1) - 1;
}

/* Links `entry` at the head of the calling thread's robust list. Requires tdm__robust_usable(). */
static inline void tdm__robust_link(uint64_t *entry) {
  struct tdm__robust_head *head = tdm__robust_head_tls;
  void **e = (void **)entry;
  void *first = head->next;
  *tdm__robust_prev_slot(first) = e;
  e[0] = first;
  e[-1] = head;
  /* The node must be complete before the kernel can reach it from the head. */
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
  head->next = e;
}

/* Unlinks `entry`, which the calling thread linked, from its robust list. */
static inline void tdm__robust_unlink(uint64_t *entry) {
  void **e = (void **)entry;
  void *next = e[0];
  void *prev = e[-1];
  *tdm__robust_prev_slot(next) = prev;
  *(void **)((uintptr_t)prev & ~(uintptr_t)1) = next;
  /* Out of the list before the node's own slots change: the kernel may walk it at any time. */
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
  e[-1] = NULL;
  e[0] = NULL;
}

/* ---- Threads -------------------------------------------------------------------------------- */

extern __thread int32_t tdm__tid_tls TDM__TLS_IE;

/* Reads the kernel id into the cache (the slow path of tdm__tid). */
int32_t tdm__tid_lookup(void);

/*
 * Returns the calling thread's kernel id (gettid), cached per thread and refreshed in the child
 * after fork() through pthread_atfork (a child made by a raw clone() that neither execs nor runs
 * fork handlers would see its parent's id).
 */
static inline int32_t tdm__tid(void) {
  int32_t tid = tdm__tid_tls;
  return __builtin_expect(tid != 0, 1) ? tid : tdm__tid_lookup();
}

/*
 * Returns true when `tid` is an id the calling thread had in an ancestor process, before a
 * fork() made it the thread of a child (the last 8 forks are remembered). A private lock or GIL
 * that the thread held when it forked records the old id, and is still the thread's own in the
 * child, as with pthreads. Shared objects must not use this: in shared memory, a lock held at
 * the fork still belongs to the parent's thread.
 */
bool tdm__tid_was_mine(int32_t tid);

/* Returns true when the calling thread is its process's main thread (tid == pid). */
bool tdm__is_main_thread(void);

/*
 * Opens the scheduler's statistics of thread `tid` of the calling process, for
 * tdm__sched_wait_ns(). Returns a descriptor (close-on-exec; the caller closes it) or a negative
 * errno: -ENOENT when the thread is gone or the kernel keeps no such statistics.
 */
int tdm__sched_open(int32_t tid);

/*
 * Reads, from a descriptor of tdm__sched_open(), how long the thread has spent runnable but
 * waiting for a CPU, in nanoseconds, since it started. The kernel adds a wait when the thread
 * gets the CPU back, so a wait in progress is not counted yet. Returns the total or a negative
 * errno (-ESRCH once the thread has ended).
 */
int64_t tdm__sched_wait_ns(int fd);

/*
 * Sets the calling thread's OS-visible name to `name`, truncated to the kernel's limit
 * (15 bytes) without splitting a UTF-8 character. Best effort: errors are ignored.
 */
void tdm__set_os_thread_name(const char *name);

/* A pause instruction for spin loops. */
static inline void tdm__cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield" ::: "memory");
#else
  __asm__ __volatile__("" ::: "memory");
#endif
}

/* ---- CPUs ----------------------------------------------------------------------------------- */

/* Returns the number of CPUs in the calling thread's affinity mask (>= 1). */
int tdm__affinity_cpus(void);

/* ---- Processes ------------------------------------------------------------------------------
 *
 * Children are watched through pidfds (Linux 5.3+): a descriptor that names one process for
 * good, becomes readable when it ends, and can be signalled and waited on without the pid-reuse
 * races of kill() and waitpid().
 */

/* Opens a pidfd (close-on-exec) for the process `pid`. Returns it, or a negative errno. */
int tdm__pidfd_open(pid_t pid);

/* Sends `sig` to the process behind `pidfd`. Returns 0 or a negative errno (-ESRCH: ended). */
int tdm__pidfd_signal(int pidfd, int sig);

/*
 * Reaps the child behind `pidfd` (which must be a child of the caller). With `block` false it
 * does not wait. Returns 1 and the exit code (>= 0 the exit status, -N killed by signal N) in
 * *code when the child was reaped; 0 when it still runs (block false only); a negative errno
 * (-ECHILD: not a child, or already reaped by someone else).
 */
int tdm__pidfd_reap(int pidfd, bool block, int *code);

/*
 * Waits with poll() until `fd` has one of `events` (POLLIN, POLLOUT; a hang-up or an error
 * counts too), at most until the absolute monotonic `deadline` (TDM__NEVER: no limit; EINTR
 * does not end the wait; the timeout is rounded up, so the wait never ends early). Returns 1
 * when an event came, 0 at the deadline, -EBADF when fd is not open, or another negative errno.
 */
int tdm__wait_fd(int fd, short events, int64_t deadline);

/* tdm__wait_fd(fd, POLLIN, deadline): until `fd` is readable (or hung up). */
int tdm__wait_readable(int fd, int64_t deadline);

/* The number of threads in the calling process (from /proc), or -1 when unknown. */
int tdm__thread_count(void);

/*
 * The start time of process `pid` (0: the caller), in clock ticks since boot: with the pid, it
 * names one process for good, even after the pid is reused. Returns 0; -ESRCH when the process
 * does not exist or has ended (a zombie); another negative errno when /proc cannot be read.
 */
int tdm__proc_start_time(pid_t pid, uint64_t *start);

/*
 * Asks the kernel to send `sig` to the calling process when its parent thread ends
 * (PR_SET_PDEATHSIG), and returns false when the parent `parent` is already gone, which the
 * signal would have missed. Async-signal-safe.
 */
bool tdm__parent_death_signal(int sig, pid_t parent);

/* Sends `fds` (n of them, at most 253) with the bytes `buf` on the socket `sock` (MSG_NOSIGNAL).
 * Returns the number of bytes sent (possibly fewer than len) or a negative errno. */
ssize_t tdm__send_fds(int sock, const void *buf, size_t len, const int *fds, size_t n);

/*
 * Receives at most `len` bytes and at most `max_fds` descriptors (made close-on-exec) from
 * `sock`. Returns the number of bytes (0 at end of file) and the descriptors in fds[0..*n_fds);
 * descriptors beyond max_fds are closed. A negative errno on failure.
 */
ssize_t tdm__recv_fds(int sock, void *buf, size_t len, int *fds, size_t max_fds, size_t *n_fds);

/* Writes or reads exactly `len` bytes (retrying after EINTR and short transfers; MSG_NOSIGNAL).
 * Returns 0, -EPIPE at end of file, or a negative errno. */
int tdm__send_all(int sock, const void *buf, size_t len);
int tdm__recv_all(int sock, void *buf, size_t len);

/* ---- Shared memory ---------------------------------------------------------------------------
 *
 * Named segments are files in TDM__SHM_DIR, a tmpfs (the directory glibc's shm_open() uses);
 * anonymous ones are memfds. The reaper of src/shm/reaper.c is a fresh exec of the program,
 * started through two forks: the calls below that a fork child makes before exec are marked
 * async-signal-safe.
 */

/* Where named segments live, with its trailing slash. */
#define TDM__SHM_DIR "/dev/shm/"

/*
 * Creates an anonymous shared memory file (a memfd, close-on-exec) of size 0; `name` only
 * labels it in /proc. Returns the descriptor, owned by the caller, or a negative errno
 * (-EMFILE, -ENFILE, -ENOMEM; -ENOSYS before Linux 3.17).
 */
int tdm__memfd_create(const char *name);

/* Returns true when `fd` is a file of a memory file system (tmpfs, as /dev/shm and memfds are,
 * or hugetlbfs): one whose pages are shared memory, not a disk file's cache. */
bool tdm__is_shm_fd(int fd);

/* Returns the machine's memory and swap together, in bytes; 0 when it cannot be known. */
uint64_t tdm__memory_total(void);

/*
 * fork() without the pthread_atfork handlers (_Fork, HAVE__FORK), so a child of a
 * multithreaded process runs no handler that could wait on a lock held by a thread that does
 * not exist in it. Async-signal-safe. Without _Fork it is fork(), which runs the handlers and
 * is not async-signal-safe: call it only from a single-threaded process (a fork child) whose
 * handlers find their locks free. Returns as fork() does.
 */
pid_t tdm__fork_raw(void);

/*
 * Closes every descriptor numbered `first` or above (close_range, HAVE_CLOSE_RANGE, or the
 * system call, or one by one up to the descriptor limit on a kernel older than 5.9).
 * Async-signal-safe.
 */
void tdm__close_from(int first);

/*
 * Replaces the calling process with a fresh start of the program it runs (/proc/self/exe,
 * which stays the same file when the program's path is replaced or removed), with argument
 * vector `argv` and environment `envp`. Returns only on failure, with a negative errno.
 * Async-signal-safe. See tdm__exec_self_plan() for whether the new image runs a given
 * library's constructors.
 */
int tdm__exec_self(char *const argv[], char *const envp[]);

/*
 * Tells whether tdm__exec_self() starts a program that runs the constructors of the loaded
 * object that contains `addr` (the program itself, or a shared library) before main(), so that
 * a constructor can take over the new process. Returns
 *    0  yes: the object is part of the program, or one of the libraries loaded with it;
 *    1  only if the object is preloaded (LD_PRELOAD): the program loaded it later (dlopen), or
 *       loaded it deep in its dependencies; its absolute path is then in `path` (`size` bytes);
 *   -ENOTSUP never: /proc/self/exe is not the program (a program started by naming the
 *       dynamic loader, or without /proc), or a static program dlopen()ed the object;
 *   -ENAMETOOLONG: its path does not fit in `path`, or holds a space or a colon (which
 *       LD_PRELOAD takes for separators); -ENOENT: its path cannot be resolved.
 * Call it from the object's constructor, while the working directory is still the one the
 * object was loaded from, so that a relative path resolves to that object.
 */
int tdm__exec_self_plan(const void *addr, char *path, size_t size);

/* ---- Sockets --------------------------------------------------------------------------------- */

struct iovec;

/*
 * sendmsg() of the `iovcnt` buffers `iov` on the socket `sock`, with the `n` descriptors `fds`
 * attached (SCM_RIGHTS; at most 253) and `flags` (MSG_NOSIGNAL is always added; EINTR is
 * retried). Returns the number of bytes sent, possibly fewer than asked, or a negative errno.
 */
ssize_t tdm__sendmsg_fds(int sock, const struct iovec *iov, size_t iovcnt, const int *fds, size_t n,
                         int flags);

/*
 * recvmsg() of at most `len` bytes with `flags` (EINTR is retried). The descriptors that came
 * with them are made close-on-exec atomically and stored in fds[0..*n_fds) (room for `max_fds`);
 * those beyond max_fds are closed. *truncated is set when descriptors were lost: closed for lack
 * of room here, or dropped by the kernel (MSG_CTRUNC: its control buffer was too small, or this
 * process's descriptor limit). Returns the number of bytes (0 at end of file) or a negative errno.
 */
ssize_t tdm__recvmsg_fds(int sock, void *buf, size_t len, int flags, int *fds, size_t max_fds,
                         size_t *n_fds, bool *truncated);

/* Fills `buf` with `len` random bytes from the kernel's generator (getrandom), waiting until it
 * is seeded. Returns 0 or a negative errno. */
int tdm__random(void *buf, size_t len);

#endif /* TDM_PLATFORM_H */
