/*
 * reaper.c: owners of named segments, and the reaper process that removes an owner's segments
 * when the owner dies.
 *
 * A process that owns named segments has one reaper: a small process of its own, started with
 * its first owned segment, that holds the list of names and removes them when the owner goes
 * away, however it goes (exit, exec, SIGKILL, a crash). The owner and its reaper share a
 * SOCK_STREAM socketpair. Only the owner holds its end (close-on-exec, and closed in every fork
 * child by the atfork handler below), so the reaper reads end-of-file exactly when the owner
 * has died or exec'd: the kernel closes the socket for it, which no signal can prevent.
 *
 * The protocol is lines of text, owner to reaper:
 *
 *   +<inode in hex> /<name>\n    the owner owns the segment /dev/shm/<name> with that inode
 *   -<inode in hex> /<name>\n    it no longer does (closed, removed or disowned it)
 *
 * and one byte back, once, when the reaper is ready. At end-of-file the reaper removes every
 * name it still holds whose file still has the inode it was given (so a segment that someone
 * else removed and re-created under the same name in the meantime is spared), then exits.
 * The reaper keeps the entries ("<inode> /<name>\n", the line without its first byte) packed
 * in one static table of TABLE_BYTES, a multiset: two handles of one process may own the same
 * segment. The owner keeps the list of the records it owns and mirrors the table's fill, so a
 * full table is an error (-ENOMEM) in the owner, never a name the reaper dropped. 1 MiB holds
 * 3,900 names of the longest kind (269-byte entries) and some 35,000 names of 20 bytes; in the
 * owner, the table is untouched .bss, which costs nothing.
 *
 * Writes cannot raise SIGPIPE in the owner (send with MSG_NOSIGNAL: a dead reaper is -EPIPE),
 * and tandem changes no signal disposition of the caller's. Each line is at most LINE_BYTES,
 * sent in one send(): a blocking AF_UNIX stream queues it whole or not at all, and the owner's
 * lock keeps lines from interleaving. When the owner finds its reaper dead (-EPIPE), it starts
 * another and tells it every name on its list again. Before each write it checks, with fstat,
 * that its descriptor still is its socket, in case the program closed it (closefrom) and the
 * number was reused: tandem must never write its protocol into someone else's file.
 *
 * Starting the reaper. The reaper must not be a child of the owner: a program's waitpid(-1) or
 * SIGCHLD handler must never meet it, and it must outlive the owner. The owner fork()s an
 * intermediate process that forks the reaper and exits at once; the owner reaps the
 * intermediate by its pid, and the reaper, an orphan, goes to init (or to the nearest
 * subreaper). The owner blocks every signal in the forking thread around the fork, so no
 * handler of the program's runs in the new processes before the reaper has reset them. From
 * the fork to the exec, the intermediate and the reaper call only async-signal-safe functions
 * and use only memory prepared before the fork: the owner may have many threads, and a fork
 * child of a threaded process can find any lock (malloc's, stdio's) held forever. The
 * intermediate forks with tdm__fork_raw() (_Fork), which runs no atfork handler. The reaper
 * then calls setsid() (a session of its own: a Ctrl-C or SIGHUP aimed at the terminal's process
 * group does not reach it), moves its socket to descriptor REAPER_FD and /dev/null to 0, 1 and
 * 2, closes every other descriptor (so that it holds no pipe or socket of the owner's open),
 * sets its signals to their defaults and ignores SIGHUP, SIGINT, SIGQUIT, SIGTERM and SIGPIPE
 * (a "kill everybody" SIGTERM must not take it before its owner: only end-of-file ends it;
 * SIGKILL still does; ignored signals stay ignored across exec), and execs the program again
 * (/proc/self/exe) with the argument vector { "tdm-shm-reaper" } and an environment of
 * TANDEM_REAPER=<REAPER_FD> and, when the owner has them, the dynamic loader's LD_LIBRARY_PATH
 * and LD_PRELOAD, so that the new image finds the same libraries. The owner builds both arrays
 * before the fork. In the new image, the library constructor at the end of this file finds
 * TANDEM_REAPER (with that argv[0], and a socket on that descriptor), removes it from the
 * environment, moves to "/" (it holds no mount busy), sets its signals again (another
 * library's constructor may have installed handlers), names itself "tdm-shm-reaper", sends the
 * ready byte and runs the loop above; it never returns to main(). So the ready byte also tells
 * the owner that the exec worked: when it fails, the reaper _exit()s, the owner reads
 * end-of-file and gets -EAGAIN, and nothing is left behind.
 *
 * Why exec. A fork that never execs shares, copy-on-write, every page the owner had at the
 * fork, for as long as it lives: each later write of the owner's to that memory copies the
 * page, so a 1 GiB process that owns a segment and then rewrites its heap would use 2 GiB.
 * The exec'd reaper shares nothing with its owner but the program's files, and its own memory
 * is the program's start-up and the table's pages that hold names. The cost: one idle process
 * per owning process, for the owner's lifetime, and two forks and an exec at the first owned
 * segment (and again if the reaper is killed).
 *
 * Which program. The new image must load libtandem at start-up, or the program's main() would
 * run in it. The constructor asks tdm__exec_self_plan() once, while the library is being
 * loaded: a program that links libtandem loads it again by itself; for a program that loaded
 * it with dlopen() (Python through ctypes), the library's absolute path is added to LD_PRELOAD.
 * Where no exec of /proc/self/exe can run tandem (a program started by naming the dynamic
 * loader, a static program that dlopen()ed libtandem, no /proc), the reaper does not exec: it
 * runs the loop right after its set-up, as a fork, with the copy-on-write cost above.
 *
 * Fork. The child of an owner is not an owner: the child handler closes the inherited socket
 * (so the reaper still sees end-of-file when the owner dies), empties the list and starts a new
 * fork generation; a record is owned only by the process whose pid and generation it carries.
 * The prepare handler takes the lock, so a child never inherits a half-made list, and every
 * socket of ours is recorded under the lock the moment it exists, so the child handler can
 * close it. tandem never forks while it holds the lock: the thread that starts a reaper marks
 * the start under way, lets go of the lock for the fork, and takes it back; meanwhile the
 * other threads that want to change the list wait for the start to end.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "platform/platform.h"
#include "shm/shm.h"

/* The reaper's table of names, in bytes. */
#define TABLE_BYTES ((size_t)1 << 20)

/* The longest line, with its NUL: op, 16 hex digits, space, slash, name, newline. */
#define LINE_BYTES (1 + 16 + 1 + 1 + TDM_SHM_NAME_MAX + 1 + 1)

/* ---- The reaper process: async-signal-safe up to the exec, static memory only ---------------- */

/* The reaper's socket: this descriptor in the new image, named by TANDEM_REAPER=<REAPER_FD>. */
#define REAPER_FD        3
#define REAPER_FD_STRING "3"
#define REAPER_ENV       "TANDEM_REAPER"
#define REAPER_NAME      "tdm-shm-reaper" /* the new image's argv[0], and the process's name */

static char table[TABLE_BYTES]; /* entries "<ino hex> /<name>\n", packed */
static size_t table_used;
static char input[4096];
static char line[LINE_BYTES]; /* the line being read, op included */
static size_t line_len;
static bool line_too_long;
static char reap_path[TDM__SHM_PATH_MAX];

static void table_add(const char *entry, size_t n) {
  /* The owner checks the fill before it sends; a full table here means a bug, not a drop. */
  if (n > TABLE_BYTES - table_used) return;
  memcpy(table + table_used, entry, n);
  table_used += n;
}

static void table_remove(const char *entry, size_t n) {
  char *end = table + table_used;
  for (char *p = table; p < end;) {
    char *nl = memchr(p, '\n', (size_t)(end - p));
    if (nl == NULL) return;
    size_t len = (size_t)(nl + 1 - p);
    if (len == n && memcmp(p, entry, n) == 0) {
      memmove(p, nl + 1, (size_t)(end - (nl + 1)));
      table_used -= n;
      return;
    }
    p = nl + 1;
  }
}

static void handle_line(void) {
  if (line_len < 2) return;
  if (line[0] == '+')
    table_add(line + 1, line_len - 1);
  else if (line[0] == '-')
    table_remove(line + 1, line_len - 1);
}

/* Removes the entry's file "<ino hex> /<name>\n" at `p` if it still has that inode. */
static void reap_entry(const char *p, const char *nl) {
  uint64_t ino = 0;
  for (; p < nl && *p != ' '; p++) {
    unsigned d;
    if (*p >= '0' && *p <= '9')
      d = (unsigned)(*p - '0');
    else if (*p >= 'a' && *p <= 'f')
      d = (unsigned)(*p - 'a' + 10);
    else
      return;
    ino = ino << 4 | d;
  }
  if (p + 2 >= nl || p[0] != ' ' || p[1] != '/') return;
  const char *name = p + 2;
  size_t n = (size_t)(nl - name), dir = sizeof TDM__SHM_DIR - 1;
  if (n > TDM_SHM_NAME_MAX) return;
  memcpy(reap_path, TDM__SHM_DIR, dir);
  memcpy(reap_path + dir, name, n);
  reap_path[dir + n] = '\0';
  struct stat st;
  if (lstat(reap_path, &st) == 0 && (uint64_t)st.st_ino == ino) (void)unlink(reap_path);
}

static void reap_all(void) {
  char *end = table + table_used;
  for (char *p = table; p < end;) {
    char *nl = memchr(p, '\n', (size_t)(end - p));
    if (nl == NULL) return;
    reap_entry(p, nl);
    p = nl + 1;
  }
}

static void reset_signals(void) {
  struct sigaction dfl, ign, old;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  ign = dfl;
  ign.sa_handler = SIG_IGN;
  for (int sig = 1; sig < NSIG; sig++) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    if (sigaction(sig, NULL, &old) != 0) continue; /* one the C library keeps for itself */
    bool handled =
        (old.sa_flags & SA_SIGINFO) || (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN);
    if (handled) (void)sigaction(sig, &dfl, NULL);
  }
  const int ignored[] = { SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGPIPE };
  for (size_t i = 0; i < sizeof ignored / sizeof ignored[0]; i++)
    (void)sigaction(ignored[i], &ign, NULL);
  sigset_t none;
  sigemptyset(&none);
  (void)sigprocmask(SIG_SETMASK, &none, NULL);
}

/* The reaper's life after its set-up (and exec): ready byte, the loop, then the removals. */
_Noreturn static void reaper_run(int fd) {
  (void)chdir("/");
  reset_signals();
  /* glibc names the calling thread with one prctl(): safe where there was no exec too. */
  tdm__set_os_thread_name(REAPER_NAME);
  char ready = 'R';
  (void)write(fd, &ready, 1);

  for (;;) {
    ssize_t n = read(fd, input, sizeof input);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break; /* end-of-file: the owner is gone (or, for an error, we cannot know) */
    for (ssize_t i = 0; i < n; i++) {
      char c = input[i];
      if (!line_too_long) {
        if (line_len < sizeof line)
          line[line_len++] = c;
        else
          line_too_long = true;
      }
      if (c == '\n') {
        if (!line_too_long) handle_line();
        line_len = 0;
        line_too_long = false;
      }
    }
  }
  reap_all();
  _exit(0);
}

/*
 * The reaper, right after the second fork: sets itself up with async-signal-safe calls only and
 * execs the program again (envp NULL: runs on without exec). Never returns.
 */
_Noreturn static void reaper_start(int fd, char *const *argv, char *const *envp) {
  (void)setsid();
  /* The socket to REAPER_FD, inherited by the exec (dup2 clears close-on-exec on the copy). */
  if (fd == REAPER_FD) {
    if (fcntl(fd, F_SETFD, 0) != 0) _exit(127);
  } else if (dup2(fd, REAPER_FD) < 0) {
    _exit(127);
  }
  /* The standard descriptors on /dev/null: never the owner's terminal or pipes. */
  int null = open("/dev/null", O_RDWR);
  for (int i = 0; i < 3; i++) {
    if (null < 0)
      (void)close(i);
    else if (null != i)
      (void)dup2(null, i);
  }
  tdm__close_from(REAPER_FD + 1);
  reset_signals();
  if (envp != NULL) {
    (void)tdm__exec_self(argv, envp);
    _exit(127); /* the owner reads end-of-file instead of the ready byte */
  }
  reaper_run(REAPER_FD);
}

/* ---- The owner's side ------------------------------------------------------------------------ */

static struct {
  pthread_mutex_t lock;
  pthread_cond_t idle; /* broadcast when `starting` goes back to false */
  bool starting;       /* a thread is starting a reaper (and has let go of the lock to fork) */
  int pending[2];      /* that thread's socketpair, until the reaper holds its end */
  int fd;              /* our end of the socket; -1: no reaper */
  dev_t sock_dev;      /* what fstat says `fd` is, to notice that it was closed under us */
  ino_t sock_ino;
  uint64_t gen;               /* fork generation: bumped in every fork child */
  size_t used;                /* bytes of the reaper's table that the list fills */
  struct tdm__shm_owner head; /* sentinel of the circular list of owned records */
} owner = {
  .lock = PTHREAD_MUTEX_INITIALIZER,
  .idle = PTHREAD_COND_INITIALIZER,
  .pending = { -1, -1 },
  .fd = -1,
  .gen = 1,
  .head = { .prev = &owner.head, .next = &owner.head },
};

/* Set while this thread forks the intermediate process. */
static __thread bool forking_reaper TDM__TLS_IE;

static size_t format_line(char *buf, char op, const struct tdm__shm_owner *o) {
  int n = snprintf(buf, LINE_BYTES, "%c%" PRIx64 " %s\n", op, o->ino, o->name);
  TDM__REQUIRE(n > 0 && n < LINE_BYTES, "tdm_shm: name too long for the reaper (%d bytes)", n);
  return (size_t)n;
}

static bool owned_locked(const struct tdm__shm_owner *o) {
  return o->pid != 0 && o->pid == getpid() && o->gen == owner.gen;
}

/* Waits until no thread is starting a reaper: the list must not change while one does. */
static void wait_idle_locked(void) {
  while (owner.starting)
    pthread_cond_wait(&owner.idle, &owner.lock);
}

static void forget_fd_locked(bool close_it) {
  if (close_it) (void)close(owner.fd);
  owner.fd = -1;
}

/*
 * How a reaper execs this program, from tdm__exec_self_plan() in the constructor: 0, 1 (add
 * `self_path` to LD_PRELOAD), or a negative errno (no exec: the reaper stays a fork).
 */
static int exec_plan = -ENOTSUP;
static char self_path[PATH_MAX];

/*
 * Builds the new image's environment in one allocation (for tdm__free): TANDEM_REAPER, and the
 * dynamic loader's variables of the calling process's environment, with libtandem added to
 * LD_PRELOAD where the plan says so. *out is NULL when the reaper is not to exec. Returns 0 or
 * -ENOMEM.
 */
static int make_env(char ***out) {
  static char reaper_var[] = REAPER_ENV "=" REAPER_FD_STRING;
  *out = NULL;
  if (exec_plan < 0) return 0;
  const char *lib = getenv("LD_LIBRARY_PATH");
  const char *pre = getenv("LD_PRELOAD");
  const char *self = exec_plan == 1 ? self_path : NULL;
  size_t lib_n = lib != NULL ? sizeof "LD_LIBRARY_PATH=" + strlen(lib) : 0;
  size_t pre_n = 0;
  if (pre != NULL || self != NULL)
    pre_n =
        sizeof "LD_PRELOAD=:" + (pre != NULL ? strlen(pre) : 0) + (self != NULL ? strlen(self) : 0);
  char **env = tdm__alloc(4 * sizeof *env + lib_n + pre_n);
  if (env == NULL) return -ENOMEM;
  char *p = (char *)(env + 4);
  size_t k = 0;
  env[k++] = reaper_var;
  if (lib != NULL) {
    snprintf(p, lib_n, "LD_LIBRARY_PATH=%s", lib);
    env[k++] = p;
    p += lib_n;
  }
  if (pre_n > 0) {
    /* The program's own preloads first: some (a sanitizer's runtime) must come first. */
    snprintf(p, pre_n, "LD_PRELOAD=%s%s%s", pre != NULL ? pre : "",
             pre != NULL && self != NULL ? ":" : "", self != NULL ? self : "");
    env[k++] = p;
  }
  env[k] = NULL;
  *out = env;
  return 0;
}

/*
 * Forks the intermediate process, which forks the reaper on `fd` and exits. The reaper execs
 * the program with `argv` and `envp` (NULL: it does not exec).
 */
static pid_t fork_reaper(int fd, char *const *argv, char *const *envp) {
  pid_t pid = fork();
  if (pid != 0) return pid;
  /* The intermediate is single-threaded: without _Fork, fork()'s handlers find no lock held. */
  pid_t r = tdm__fork_raw();
  if (r == 0) reaper_start(fd, argv, envp);
  _exit(r < 0 ? 1 : 0);
}

/*
 * Starts a reaper and records our end of its socket; the list is not sent. Called with the
 * lock held and no other start under way; lets go of the lock around the fork (fork() runs the
 * atfork handlers, which take it, and some C libraries hold their own atfork lock while the
 * handlers of another thread's fork wait for ours), and returns with it held again. Meanwhile
 * `starting` keeps the list as it is, and `pending` tells a fork from another thread which
 * descriptors its child must close.
 */
static int start_locked(void) {
  /* Everything the reaper's exec needs exists before the fork. */
  static char arg0[] = REAPER_NAME;
  char *argv[] = { arg0, NULL };
  char **envp;
  int r = make_env(&envp);
  if (r < 0) return r;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    r = -errno;
    tdm__free(envp);
    return r;
  }
  struct stat st;
  if (fstat(sv[0], &st) != 0) {
    r = -errno;
    (void)close(sv[0]);
    (void)close(sv[1]);
    tdm__free(envp);
    return r;
  }
  owner.pending[0] = sv[0];
  owner.pending[1] = sv[1];
  owner.starting = true;
  pthread_mutex_unlock(&owner.lock);

  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  forking_reaper = true;
  pid_t pid = fork_reaper(sv[1], argv, envp);
  int err = errno;
  forking_reaper = false;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  tdm__free(envp);

  pthread_mutex_lock(&owner.lock);
  (void)close(sv[1]);
  owner.pending[1] = -1;
  pthread_mutex_unlock(&owner.lock);
  /*
   * The ready byte, which the reaper sends once it runs in its new image, or end-of-file when
   * the intermediate could not fork or the exec failed (once they have exited, nobody else
   * holds sv[1]). This also works when the program's own waitpid(-1) or SIG_IGN-ed SIGCHLD
   * reaps the intermediate before we do.
   */
  ssize_t n = -1;
  char c = 0;
  if (pid > 0) {
    do
      n = recv(sv[0], &c, 1, 0);
    while (n < 0 && errno == EINTR);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
  }

  pthread_mutex_lock(&owner.lock);
  owner.pending[0] = -1;
  owner.starting = false;
  pthread_cond_broadcast(&owner.idle);
  if (n != 1 || c != 'R') {
    (void)close(sv[0]);
    return pid < 0 && err == ENOMEM ? -ENOMEM : -EAGAIN;
  }
  owner.fd = sv[0];
  owner.sock_dev = st.st_dev;
  owner.sock_ino = st.st_ino;
  return 0;
}

/* Starts a new reaper and tells it every owned name. */
static int restart_locked(void) {
  int r = start_locked();
  for (struct tdm__shm_owner *o = owner.head.next; r == 0 && o != &owner.head; o = o->next) {
    char buf[LINE_BYTES];
    r = tdm__send_all(owner.fd, buf, format_line(buf, '+', o));
    /* A dead reaper is dropped; one that failed otherwise is kept, as closing its socket would
     * make it remove the names it got. */
    if (r == -EPIPE) forget_fd_locked(true);
  }
  return r;
}

/* True when owner.fd still is the socket start_locked() made. */
static bool fd_is_ours_locked(void) {
  struct stat st;
  return fstat(owner.fd, &st) == 0 && st.st_dev == owner.sock_dev && st.st_ino == owner.sock_ino;
}

/*
 * Sends one line to a running reaper. When there is none, or it died, starts another and sends
 * it the whole list instead (which already reflects the change the line describes).
 */
static int send_locked(const char *buf, size_t n) {
  if (owner.fd >= 0 && !fd_is_ours_locked()) forget_fd_locked(false); /* not ours to close */
  if (owner.fd >= 0) {
    int r = tdm__send_all(owner.fd, buf, n); /* a dead reaper is -EPIPE, never SIGPIPE */
    if (r != -EPIPE) return r;
    forget_fd_locked(true);
  }
  return restart_locked();
}

static void link_locked(struct tdm__shm_owner *o, size_t bytes) {
  o->next = &owner.head;
  o->prev = owner.head.prev;
  owner.head.prev->next = o;
  owner.head.prev = o;
  owner.used += bytes;
  o->pid = getpid();
  o->gen = owner.gen;
}

static void unlink_locked(struct tdm__shm_owner *o, size_t bytes) {
  o->prev->next = o->next;
  o->next->prev = o->prev;
  o->prev = o->next = NULL;
  owner.used -= bytes;
  o->pid = 0;
}

int tdm__shm_own(struct tdm__shm_owner *o) {
  char buf[LINE_BYTES];
  size_t n = format_line(buf, '+', o);
  pthread_mutex_lock(&owner.lock);
  wait_idle_locked();
  int r = 0;
  if (!owned_locked(o)) {
    if (n - 1 > TABLE_BYTES - owner.used) {
      r = -ENOMEM;
    } else {
      link_locked(o, n - 1);
      r = send_locked(buf, n);
      if (r < 0) unlink_locked(o, n - 1);
    }
  }
  pthread_mutex_unlock(&owner.lock);
  return r;
}

void tdm__shm_disown(struct tdm__shm_owner *o) {
  char buf[LINE_BYTES];
  size_t n = format_line(buf, '-', o);
  pthread_mutex_lock(&owner.lock);
  wait_idle_locked();
  if (owned_locked(o)) {
    unlink_locked(o, n - 1);
    /* Without a reaper there is nobody to tell; the next tdm__shm_own() starts one. */
    if (owner.fd >= 0) (void)send_locked(buf, n);
  }
  pthread_mutex_unlock(&owner.lock);
}

bool tdm__shm_owns(const struct tdm__shm_owner *o) {
  pthread_mutex_lock(&owner.lock);
  bool r = owned_locked(o);
  pthread_mutex_unlock(&owner.lock);
  return r;
}

/* ---- Fork ------------------------------------------------------------------------------------ */

static void fork_prepare(void) {
  pthread_mutex_lock(&owner.lock);
}

static void fork_parent(void) {
  pthread_mutex_unlock(&owner.lock);
}

/*
 * The child owns nothing, and holds no end of its parent's sockets: the parent's reaper must
 * see end-of-file when the parent dies. (The intermediate process keeps them: it passes one to
 * the reaper, which closes the rest, and exits.)
 */
static void fork_child(void) {
  if (!forking_reaper) {
    for (int i = 0; i < 2; i++)
      if (owner.pending[i] >= 0) (void)close(owner.pending[i]);
  }
  owner.pending[0] = owner.pending[1] = -1;
  owner.starting = false;
  if (owner.fd >= 0) (void)close(owner.fd);
  owner.fd = -1;
  owner.used = 0;
  owner.head.prev = owner.head.next = &owner.head;
  owner.gen++;
  /* No thread of the parent waits on it here; its copy may still count them. */
  pthread_cond_init(&owner.idle, NULL);
  pthread_mutex_unlock(&owner.lock);
}

/*
 * The library constructor. In the new image of a reaper (TANDEM_REAPER names a socket, and
 * argv[0] is the reaper's), it removes the variable and becomes the reaper: it never returns.
 * Anywhere else it notes how a reaper would exec this program (while the working directory is
 * the one the library was loaded from) and installs the fork handlers. child.c's constructor
 * recognises TANDEM_BOOT the same way, in either order: a reaper's environment holds no
 * TANDEM_BOOT, and a tandem child's no TANDEM_REAPER (no process keeps one: only a reaper's
 * image has it, and removes it at once). glibc passes argc, argv and envp to constructors.
 */
__attribute__((constructor)) static void reaper_init(int argc, char **argv, char **envp) {
  (void)envp;
  const char *v = getenv(REAPER_ENV);
  if (v != NULL) {
    char *end;
    long fd = strtol(v, &end, 10);
    bool valid = end != v && *end == '\0' && fd >= 0 && fd <= INT32_MAX;
    unsetenv(REAPER_ENV);
    struct stat st;
    if (valid && argc >= 1 && argv != NULL && argv[0] != NULL &&
        strcmp(argv[0], REAPER_NAME) == 0 && fstat((int)fd, &st) == 0 && S_ISSOCK(st.st_mode))
      reaper_run((int)fd);
  }
  exec_plan = tdm__exec_self_plan(&owner, self_path, sizeof self_path);
  pthread_atfork(fork_prepare, fork_parent, fork_child);
}
