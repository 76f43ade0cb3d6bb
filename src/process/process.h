/*
 * process.h (private): what the files of src/process/ share.
 *
 *   process.c     handles, the registry of children, join/signal/close, the death pipe
 *   start.c       the three start methods, seen from the parent
 *   child.c       the child side: the boot message, the library constructor that recognises a
 *                 spawned child, the calling process's identity
 *   forkserver.c  the forkserver: its client in the parent, and its own loop
 */
#ifndef TDM_PROCESS_PRIVATE_H
#define TDM_PROCESS_PRIVATE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "base/internal.h"
#include "platform/platform.h"
#include "tandem/process.h"

#define TDM__PROCESS_MAGIC TDM__MAGIC('T', 'p', 'r', 'c')

/* The environment variable that tells a spawned program it is a tandem child: its value is the
 * number of the descriptor on which the boot message comes. */
#define TDM__BOOT_ENV "TANDEM_BOOT"

#define TDM__BOOT_MAGIC   TDM__MAGIC('T', 'b', 'o', 't')
#define TDM__BOOT_VERSION 2

/* What a spawned program becomes. */
enum { TDM__ROLE_TASK = 1, TDM__ROLE_FORKSERVER = 2 };

/* tdm__boot.flags */
#define TDM__BOOT_DAEMON 0x1u /* the first descriptor is the read end of the death pipe */
#define TDM__BOOT_GROUP  0x2u /* lead a process group of its own */
#define TDM__BOOT_PDEATH 0x4u /* forkserver: its parent thread is the main thread */
#define TDM__BOOT_JOINPG 0x8u /* forkserver child: join the process group parent_pgid */

/* At most this many descriptors in tdm_process_options.pass_fds (a forkserver child gets the
 * standard streams too: TDM__BOOT_FDS_MAX in all). */
#define TDM__PASS_FDS_MAX 64
#define TDM__BOOT_FDS_MAX (TDM__PASS_FDS_MAX + 3)

/*
 * The boot message, parent to child over a stream socket: this header (with the descriptors,
 * SCM_RIGHTS: the death pipe first if DAEMON, then pass_fds), then object_len bytes of the
 * object's path, name_len bytes of the name, arg_size bytes of the argument.
 */
struct tdm__boot {
  uint32_t magic;
  uint16_t version;
  uint16_t role;
  uint32_t flags;
  int32_t parent_pid;  /* the logical parent */
  int32_t parent_pgid; /* with TDM__BOOT_JOINPG */
  uint32_t object_len; /* 0: the main program */
  uint64_t offset;     /* of the function in its object */
  uint64_t arg_size;
  uint32_t name_len;
  uint32_t n_pass;                    /* pass_fds that follow the death pipe */
  int32_t targets[TDM__BOOT_FDS_MAX]; /* where each of them goes in the child */
};

/* The child's answer once it has found its function (or not). */
struct tdm__boot_reply {
  uint32_t magic;
  int32_t result; /* 0, TDM_ENOTASK, or a negative errno */
};

enum { TDM__RUNNING, TDM__ENDED, TDM__LOST };

struct tdm_process {
  uint32_t magic;
  pid_t pid;
  pid_t owner; /* the process that started it: in a child of fork(), the handle is dead */
  int pidfd;
  int status_fd; /* forkserver children: the forkserver reports the exit here; else -1 */
  tdm_start_method method;
  bool daemon;
  bool group;
  int state;     /* TDM__RUNNING, ENDED, LOST; under mu */
  bool orphaned; /* a forkserver child whose forkserver died: no exit code will come */
  int exitcode;
  char *name;
  pthread_mutex_t mu; /* serialises collecting the exit */
  struct tdm_process *prev, *next;
};

/* What tdm_process_start() hands to a start method. */
struct tdm__task {
  tdm_process_fn fn;
  const void *arg;
  size_t size;
  const char *name;
  bool daemon;
  bool group; /* lead a process group: new_group, and every daemon */
  const int *pass_fds;
  size_t n_pass;
  const char *object; /* spawn and forkserver: where fn is, and its offset there */
  uint64_t offset;
};

/*
 * Function identity across exec. tdm__fn_locate() gives the loaded object that holds the code
 * at `fn` (its path, "" for the main program; the string belongs to the dynamic loader) and the
 * offset of `fn` in it: 0, or TDM_ENOTASK when no loaded object holds it. tdm__fn_resolve()
 * does the reverse in any process running the same program: it loads the object if it must
 * (dlopen(), which runs the library's constructors) and returns the address, or NULL when the
 * object cannot be loaded or the address falls outside it.
 */
int tdm__fn_locate(const void *fn, const char **object, uint64_t *offset);
void *tdm__fn_resolve(const char *object, uint64_t offset);

/* ---- start.c --------------------------------------------------------------------------------- */

/* Start p's child with each method; fill p->pid, pidfd (and status_fd). 0 or an error code;
 * on error no child is left. */
int tdm__start_fork(tdm_process *p, const struct tdm__task *t);
int tdm__start_spawn(tdm_process *p, const struct tdm__task *t);
int tdm__start_forkserver(tdm_process *p, const struct tdm__task *t);

/* Spawns this program as a tandem child that reads its boot message on the returned channel.
 * Returns 0 with *pid, *pidfd and *channel, or a negative errno. */
int tdm__spawn_self(pid_t *pid, int *pidfd, int *channel);

/* Sends the boot message for `t` (role TASK) or for a forkserver on `channel`, then waits for
 * the child's reply. Returns the reply's result, or TDM_ECHILDINIT when the child went away. */
int tdm__boot_exchange(int channel, uint16_t role, uint32_t flags, const struct tdm__task *t,
                       const int *fds, size_t n_fds);

/*
 * The descriptors of t's boot message in fds[0..*n) (the death pipe first for a daemon, then
 * t->pass_fds: room for 1 + t->n_pass), and the flags that say so added to *flags. 0 or a
 * negative errno.
 */
int tdm__boot_fds(const struct tdm__task *t, int *fds, size_t *n, uint32_t *flags);

/* Opens a pidfd for `pid`, a child the caller has just made; when that fails, kills and reaps
 * the child. Returns the pidfd or a negative errno. */
int tdm__child_pidfd(pid_t pid);

/* Kills and reaps a child that failed to start (its pidfd is closed too). */
void tdm__discard_child(int pidfd);

/* ---- child.c --------------------------------------------------------------------------------- */

/* The program's argv, saved by the library constructor (NULL if the C library did not pass
 * it). */
extern char **tdm__argv;

/* tdm__exec_self_plan() for libtandem, asked by the constructor: 0, a spawned copy of the
 * program runs libtandem's constructor; 1, only with tdm__spawn_preload in LD_PRELOAD (the
 * program dlopen()ed libtandem); negative, never (spawn and forkserver are -ENOTSUP). */
extern int tdm__spawn_plan;
extern char tdm__spawn_preload[4096];

/*
 * Makes the calling process a tandem child: records its name, parent and daemon status, leads
 * a process group of its own with `group` (which every daemon has), and for a daemon starts the
 * thread that watches `death_rd` (or, when `may_thread` is false or the thread cannot start,
 * asks for PR_SET_PDEATHSIG).
 */
void tdm__child_setup(const char *name, bool daemon, bool group, pid_t parent, int death_rd,
                      bool may_thread);

/* Receives the boot message on `channel` and becomes the child it describes (a task: runs it
 * and exits; a forkserver: serves). Never returns. */
_Noreturn void tdm__child_boot(int channel);

/* Ends a child with the task's return value, after flushing stdio. */
_Noreturn void tdm__child_exit(int rc);

/* ---- process.c ------------------------------------------------------------------------------- */

/* The read end of this process's death pipe (made on first use). 0 or a negative errno. */
int tdm__death_pipe(int *rd);

/* Set by tdm__start_fork() around the fork() of a daemon: the child keeps the death pipe's read
 * end (which the child of any other fork() closes). */
extern __thread bool tdm__forking_daemon TDM__TLS_IE;

/* getpid(), cached (and forgotten in the child of every fork()). */
pid_t tdm__self_pid(void);

/* ---- forkserver.c ---------------------------------------------------------------------------- */

/* The forkserver's loop, on its command socket `cmd`. Never returns. */
_Noreturn void tdm__forkserver_main(int cmd, bool pdeath, pid_t parent);

#endif /* TDM_PROCESS_PRIVATE_H */
