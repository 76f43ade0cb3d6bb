/*
 * tandem/process.h: processes (Python's multiprocessing.Process, start methods,
 * active_children, current_process, parent_process).
 *
 * A process runs a C function on a copy of an argument (bytes) and exits with the function's
 * return value. Three start methods make it:
 *   TDM_START_FORK        fork(): the child is a copy of the caller and runs the function at
 *                         once. Fastest; in a multithreaded caller the child inherits locks held
 *                         by threads that do not exist in it, so only fork-safe code should run.
 *   TDM_START_SPAWN       a fresh exec of the same program (/proc/self/exe, with the caller's
 *                         argv and environment); nothing of the caller's memory is copied.
 *   TDM_START_FORKSERVER  a single-threaded server process, started (as a spawn) the first time
 *                         it is needed, forks each child on request: as clean as spawn, and the
 *                         cost of loading the program is paid once.
 * TDM_START_DEFAULT picks fork while the calling process has one thread, and forkserver once it
 * has more (Python 3.14 made forkserver its default on POSIX for the same reason);
 * tdm_process_set_start_method() changes the default.
 *
 * Under spawn and forkserver the function is still a plain function pointer: the caller sends
 * the object that contains it (the program, or a shared library, loaded with dlopen or not) and
 * its offset in that object, and the child resolves the pair. The child is recognised by a
 * constructor of libtandem, which runs the function before the program's main() and before the
 * program's own constructors, then exits: a program needs no "if __name__ == '__main__'"
 * guard. A program that loads libtandem with dlopen() would run its main() in such a child, so
 * tandem preloads the library there (LD_PRELOAD); where it cannot (the program was started as
 * "ld.so ./prog", or is static), spawn and forkserver are -ENOTSUP. By the time the task runs,
 * the libraries libtandem depends on are
 * initialised, and so are those glibc initialises before it (with glibc, libraries named after
 * -ltandem on the link line; a library named before it that does not depend on it may not be):
 * a task must not rely on constructors that run later.
 *
 * Exit. A child exits with the function's return value (its low 8 bits) after flushing stdio;
 * it does not run the parent's atexit handlers. The exit code follows Python: >= 0 is the exit
 * status, a negative value -N means the child was killed by signal N.
 *
 * Supervision. No SIGCHLD handler is installed and no signal disposition of the program is
 * changed: tandem observes each child through a pidfd, which is also the child's pollable
 * sentinel. A daemon child runs in a process group of its own and dies with its parent, even
 * when the parent is SIGKILLed: it watches a pipe whose other end only the parent holds, and a
 * thread of the child kills the child's whole group (its descendants too) when that pipe
 * closes; PR_SET_PDEATHSIG stands in when that thread cannot be made. A daemon may not start
 * children of its own. A non-daemon child outlives its parent unless joined or killed.
 *
 * The forkserver is a child of the program (it ends when the program does): a program that
 * loops on wait(NULL) until it fails would wait for it too.
 *
 * Fork safety. Between fork and exec the child makes only async-signal-safe calls.
 * Descriptors: every child gets the caller's standard streams and the descriptors named in
 * pass_fds. A fork child inherits every descriptor; a spawn child every one that is not
 * close-on-exec (tandem's own always are); a forkserver child no others. A forkserver child's
 * environment and working directory are the caller's as they were when the forkserver started.
 * After fork() by the program itself, handles inherited from the parent are dead in the child:
 * join, exitcode and the signal calls return -ECHILD there; use them only to close them.
 *
 * Thread safety. Every function may be called from any thread; one handle may be joined,
 * polled and signalled from several threads at once; closing it while another thread uses it is
 * a bug.
 */
#ifndef TANDEM_PROCESS_H
#define TANDEM_PROCESS_H

#include <sys/types.h>

#include "tandem/base.h"
#include "tandem/clock.h"
#include "tandem/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tdm_process tdm_process;

/*
 * The function a process runs, on its copy of the argument: `size` bytes at `arg` (arg is NULL
 * when size is 0). Its return value is the child's exit status.
 */
typedef int (*tdm_process_fn)(void *arg, size_t size);

/* How a child is made; see the top of this file. */
typedef enum tdm_start_method {
  TDM_START_DEFAULT = 0,
  TDM_START_FORK,
  TDM_START_SPAWN,
  TDM_START_FORKSERVER,
} tdm_start_method;

/* The largest argument a child can be given, in bytes. */
#define TDM_PROCESS_ARG_MAX ((size_t)1 << 30)

/* Options for tdm_process_start(); NULL means all defaults. */
typedef struct tdm_process_options {
  const char *name;       /* copied; NULL: "Process-N". Shown by ps (its first 15 bytes). */
  tdm_start_method start; /* TDM_START_DEFAULT: see tdm_process_start_method() */
  bool daemon;            /* dies with its parent; runs in a process group of its own */
  bool new_group;         /* a non-daemon child in a process group of its own */
  const int *pass_fds;    /* descriptors open at the same numbers in the child (at most 64) */
  size_t n_pass_fds;
} tdm_process_options;

/*
 * Starts a child process that runs fn(copy of arg, size), and returns once the child exists
 * and (under spawn and forkserver) has found fn. On success *out is a new handle owned by the
 * caller until tdm_process_close(). Returns 0, or:
 *   -EINVAL        out or fn is NULL, arg is NULL with a size, an unknown start method, a name
 *                  that is empty or longer than 4096 bytes, more than 64 pass_fds or one that
 *                  is not an open descriptor;
 *   -E2BIG         size is beyond TDM_PROCESS_ARG_MAX;
 *   TDM_EDAEMON    the caller is a daemon child (daemons may not have children);
 *   TDM_ENOTASK    spawn/forkserver: fn is not in a loaded object the child can load, or the
 *                  child could not find it there;
 *   -EAGAIN        the process limit was reached (RLIMIT_NPROC, pid_max, a cgroup's pids.max);
 *   -ENOMEM, -EMFILE, and for spawn and forkserver what exec returns (-ENOENT, -EACCES,
 *                  -E2BIG for an environment too large...);
 *   TDM_ECHILDINIT the child died before it could run fn;
 *   -ENOSYS        the kernel has no pidfds (Linux before 5.3);
 *   -ENOTSUP       spawn and forkserver, when this program cannot re-exec itself into a tandem
 *                  child (see above).
 * On failure no child is left: none was made, or the one that was made was reaped.
 */
TDM_API int tdm_process_start(tdm_process **out, tdm_process_fn fn, const void *arg, size_t size,
                              const tdm_process_options *opt);

/*
 * Waits at most `timeout` for the child to end, and collects its exit code. Returns 0 when it
 * has ended (then tdm_process_exitcode() reports how), -ETIMEDOUT when it still runs, -ECHILD
 * for a handle inherited through fork() (see the top of this file), or an error of poll().
 */
TDM_API int tdm_process_join(tdm_process *p, int64_t timeout);

/* True until the child has ended (this collects its exit code when it has); false for a handle
 * inherited through fork(). */
TDM_API bool tdm_process_is_alive(tdm_process *p);

/*
 * Stores the exit code in *code: >= 0 the exit status, -N killed by signal N. Returns 0;
 * -EBUSY while the child runs (*code untouched); -ECHILD when the code could not be collected
 * (a forkserver child whose forkserver was killed, or a child reaped by someone else's wait)
 * and for a handle inherited through fork(). Does not wait.
 */
TDM_API int tdm_process_exitcode(tdm_process *p, int *code);

/* The child's process id (still reported after it ended). */
TDM_API pid_t tdm_process_pid(const tdm_process *p);

/* The child's name (owned by the handle). */
TDM_API const char *tdm_process_name(const tdm_process *p);

/* True for a daemon child. */
TDM_API bool tdm_process_daemon(const tdm_process *p);

/* The start method that made the child (never TDM_START_DEFAULT). */
TDM_API tdm_start_method tdm_process_method(const tdm_process *p);

/*
 * The child's sentinel: a descriptor (a pidfd) that becomes readable when the child ends, for
 * poll, epoll or select, alongside connections and other sentinels. Owned by the handle; valid
 * until tdm_process_close().
 */
TDM_API int tdm_process_sentinel(const tdm_process *p);

/*
 * Sends signal `sig` to the child (through its pidfd: never to a recycled pid). Returns 0, also
 * when the child has already ended; -EINVAL for a bad signal number; -ECHILD for a handle
 * inherited through fork(); or an error of pidfd_send_signal() (-EPERM).
 */
TDM_API int tdm_process_signal(tdm_process *p, int sig);

/* tdm_process_signal() with SIGTERM, SIGKILL and SIGINT (Python's terminate, kill, and
 * interrupt). */
TDM_API int tdm_process_terminate(tdm_process *p);
TDM_API int tdm_process_kill(tdm_process *p);
TDM_API int tdm_process_interrupt(tdm_process *p);

/*
 * Sends `sig` to the child's process group: the child and every descendant that stayed in its
 * group. Returns 0 (also when the group is empty); -ENOTSUP when the child has no group of its
 * own (neither daemon nor new_group); -EINVAL for a bad signal; -ECHILD for a handle inherited
 * through fork(); or an error of kill() (-EPERM).
 */
TDM_API int tdm_process_signal_tree(tdm_process *p, int sig);

/*
 * Frees the handle and everything it holds (the pidfd, the child's exit record). Returns 0;
 * -EBUSY when the child still runs (the handle stays valid: join or kill it first).
 * NULL is a no-op that returns 0.
 */
TDM_API int tdm_process_close(tdm_process *p);

/*
 * Stores in out[0..cap) the caller's children that are still running (handles not closed),
 * and returns how many there are (which may be more than cap). Children that have ended are
 * reaped on the way, as Python's active_children() does. Handles are borrowed.
 */
TDM_API size_t tdm_process_active_children(tdm_process **out, size_t cap);

/* ---- The calling process --------------------------------------------------------------------- */

/*
 * The calling process's name: the name it was started with when it is a tandem child,
 * "MainProcess" otherwise, or what tdm_process_set_name() set.
 */
TDM_API const char *tdm_process_current_name(void);

/*
 * Sets the calling process's name (copied). Called from the main thread, it is also the name
 * ps shows (its first 15 bytes). Returns 0, or -EINVAL for NULL, "" or 256 bytes or more. Not
 * while another thread reads tdm_process_current_name().
 */
TDM_API int tdm_process_set_name(const char *name);

/*
 * The process id of the logical parent: the process that called tdm_process_start() (for a
 * forkserver child too), or getppid() for a process tandem did not start.
 */
TDM_API pid_t tdm_process_parent_pid(void);

/* True when the calling process is a daemon child. */
TDM_API bool tdm_process_is_daemon(void);

/*
 * The start method TDM_START_DEFAULT stands for now: the one set by
 * tdm_process_set_start_method(), or fork while the process has one thread and forkserver
 * once it has more.
 */
TDM_API tdm_start_method tdm_process_start_method(void);

/*
 * Sets the start method TDM_START_DEFAULT stands for in this process; TDM_START_DEFAULT goes
 * back to the automatic choice. Returns 0 or -EINVAL.
 */
TDM_API int tdm_process_set_start_method(tdm_start_method m);

/* The name of a start method: "fork", "spawn", "forkserver", "default"; NULL if unknown. */
TDM_API const char *tdm_start_method_name(tdm_start_method m);

#ifdef __cplusplus
}
#endif

#endif /* TANDEM_PROCESS_H */
