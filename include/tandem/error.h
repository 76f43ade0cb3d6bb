/*
 * tandem/error.h: one error convention for the whole library.
 *
 * A call that can fail returns an int: 0 on success, or a negative code. Codes that the C
 * library already names are negative errno values (-ETIMEDOUT, -EINVAL, -EOWNERDEAD, ...);
 * conditions of tandem's own have codes in the reserved range -1000 to -1999, listed once in
 * TDM_ERROR_MAP below, which also generates tdm_strerror() and tdm_err_name(). On failure a
 * call leaves its outputs untouched and has taken nothing.
 *
 * Misuse (releasing a lock the caller does not hold, destroying a held lock, using an object
 * that was never initialised) is a bug, not a result: tandem prints a message naming the call
 * and aborts.
 *
 * Nothing here has state; everything is safe in any thread and after fork().
 */
#ifndef TANDEM_ERROR_H
#define TANDEM_ERROR_H

#include <errno.h>

#include "tandem/base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* X(name, value, message): every tandem-specific code, in one table. */
#define TDM_ERROR_MAP(X)                                                                     \
  X(EBROKEN, -1001,                                                                          \
    "broken: a barrier (a party timed out, it was aborted or reset, or its action "          \
    "failed), or a pool that breaks when a worker dies")                                     \
  X(EOVERRELEASE, -1002,                                                                     \
    "released more times than acquired (a bounded semaphore), or task_done() called more "   \
    "times than messages were put")                                                          \
  X(EDAEMON, -1003, "a daemon process may not start children")                               \
  X(ENOTASK, -1004, "the task function cannot be found in the child process")                \
  X(ECHILDINIT, -1005, "the child process died before it could run its task")                \
  X(EEOF, -1006, "end of stream: the queue was shut down and drained, or the peer closed")   \
  X(EAUTH, -1007, "authentication failed: the peer does not know the key")                   \
  X(ETASK, -1008, "the task failed: its function returned an error")                         \
  X(EWORKER, -1009, "the worker running the task died (a crash, a signal or an exit)")       \
  X(ETASKTIMEOUT, -1010, "the task ran past its timeout")                                    \
  X(EINIT, -1011, "a pool worker's initializer failed")                                      \
  X(EMANAGER, -1012, "the manager is gone: its process ended or the connection to it broke") \
  X(ETYPE, -1013, "the object is not of the type the operation needs")                       \
  X(ECLUSTER, -1014,                                                                         \
    "no cluster here: link libtandem-mpi and start the program with mpirun -np N (N >= 2)")  \
  X(EMISMATCH, -1015, "a cluster rank runs a different build of the program or of tandem")

enum tdm_error {
#define TDM_ERROR_ENUM_(name, value, message) TDM_##name = (value),
  TDM_ERROR_MAP(TDM_ERROR_ENUM_)
#undef TDM_ERROR_ENUM_
      TDM_ERROR_MIN_ = -1999,
  TDM_ERROR_MAX_ = -1000
};

/*
 * Returns a message for a code returned by tandem: "success" for 0, a tandem-specific code, or
 * a negative errno value (also a positive errno value, for convenience); unknown codes give
 * "unknown error". The string must not be freed; thread-safe. With glibc 2.32 or later it is
 * static; with an older C library an errno message lives in a per-thread buffer until the next
 * call in the same thread.
 */
TDM_API const char *tdm_strerror(int err);

/*
 * Returns the symbolic name of a code: "OK" for 0, "TDM_EBROKEN", "ETIMEDOUT", ... ("UNKNOWN"
 * when the code is not known, and for errno values with a C library older than glibc 2.32).
 * Static string; thread-safe.
 */
TDM_API const char *tdm_err_name(int err);

#ifdef __cplusplus
}
#endif

#endif /* TANDEM_ERROR_H */
