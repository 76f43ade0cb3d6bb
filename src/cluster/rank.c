/*
 * rank.c: the job. Before main(), on every rank of a job that mpirun started, a constructor
 * initializes MPI, has rank 0 compare every rank's fingerprint (one build everywhere), and then
 * either returns into main() (rank 0) or runs the worker loop and exits (every other rank).
 *
 * A worker rank runs the units rank 0 sends it, one at a time in its own process, or hands them
 * to a pool of its own (hybrid: rank_workers > 0), whose futures it polls between messages. It
 * only ever answers rank 0, which always receives, so it may send with blocking calls.
 *
 * When a unit crashes the rank, a handler of the fatal signals prints which unit it was, then
 * lets the signal go on to MPI's handler or the default action; Open MPI then ends the job.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cluster/cluster.h"
#include "tandem/cluster.h"

struct tdm__cl_job tdm__cl = { .rank = -1, .size = 1, .status = TDM_ECLUSTER };

/* ---- Messages -------------------------------------------------------------------------------- */

static int grow(void **buf, size_t *cap, size_t need) {
  if (need <= *cap && *buf != NULL) return 0;
  size_t c = *cap > 0 ? *cap : 4096;
  while (c < need)
    c *= 2;
  void *b = realloc(*buf, c);
  if (b == NULL) return -ENOMEM;
  *buf = b;
  *cap = c;
  return 0;
}

int tdm__cl_try_recv(int source, void **buf, size_t *cap, int *len, int *tag, int *from) {
  int flag = 0;
  MPI_Message msg;
  MPI_Status st;
  if (MPI_Improbe(source, MPI_ANY_TAG, tdm__cl.comm, &flag, &msg, &st) != MPI_SUCCESS) return -EIO;
  if (!flag) return -EAGAIN;
  int n = 0;
  MPI_Get_count(&st, MPI_BYTE, &n);
  if (grow(buf, cap, n > 0 ? (size_t)n : 1) != 0) {
    /* A matched message must be received through its handle, whole. A rank that cannot hold
     * one cannot go on, and a lost rank ends the job anyway: say why, and end it. */
    fprintf(stderr, "tandem cluster: rank %d: no memory for a message of %d bytes\n", tdm__cl.rank,
            n);
    MPI_Abort(tdm__cl.comm, 70);
  }
  if (MPI_Mrecv(*buf, n, MPI_BYTE, &msg, MPI_STATUS_IGNORE) != MPI_SUCCESS) return -EIO;
  *len = n;
  *tag = st.MPI_TAG;
  *from = st.MPI_SOURCE;
  return 0;
}

void tdm__cl_idle(struct tdm__cl_backoff *b) {
  int64_t now = tdm_clock_now();
  if (b->since == 0) {
    b->since = now;
    b->sleep_ns = 0;
  }
  if (now - b->since < TDM__CL_SPIN_NS) {
    sched_yield(); /* at once when nothing else wants the core */
    return;
  }
  b->sleep_ns = b->sleep_ns == 0 ? 20000 : b->sleep_ns * 2;
  if (b->sleep_ns > 1000000) b->sleep_ns = 1000000;
  struct timespec ts = { 0, (long)b->sleep_ns };
  nanosleep(&ts, NULL);
}

int tdm__cl_recv(int source, void **buf, size_t *cap, int *len, int *tag, int *from) {
  struct tdm__cl_backoff b = { 0, 0 };
  for (;;) {
    int r = tdm__cl_try_recv(source, buf, cap, len, tag, from);
    if (r != -EAGAIN) return r;
    tdm__cl_idle(&b);
  }
}

size_t tdm__cl_put(char *buf, size_t at, size_t cap, const char *s) {
  while (*s != '\0' && at < cap)
    buf[at++] = *s++;
  return at;
}

size_t tdm__cl_put_u(char *buf, size_t at, size_t cap, uint64_t v) {
  char tmp[24];
  size_t n = 0;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v > 0);
  while (n > 0 && at < cap)
    buf[at++] = tmp[--n];
  return at;
}

/* ---- Fingerprints ---------------------------------------------------------------------------- */

#define FP_MAGIC   0x54636c75u /* "Tclu" */
#define FP_VERSION 1u

enum { FP_PROGRAM, FP_TANDEM, FP_TANDEM_MPI, FP_N };
static const char *const fp_what[FP_N] = { "the program", "libtandem", "libtandem-mpi" };

/* What a rank sends rank 0 at start-up: fixed size, so that ranks of any build can exchange
 * it. */
struct fingerprint {
  uint32_t magic, version;
  uint64_t digest[FP_N]; /* FNV-1a of each object's build-id, or of its file */
  char tandem[16];       /* tdm_version() */
  int32_t pid;
  uint32_t spi;
  char host[MPI_MAX_PROCESSOR_NAME];
  char path[256]; /* the program */
};

static uint64_t fnv(uint64_t h, const void *data, size_t n) {
  const unsigned char *p = data;
  for (size_t i = 0; i < n; i++) {
    h ^= p[i];
    h *= 0x100000001b3u;
  }
  return h;
}

#define FNV_START 0xcbf29ce484222325u

static uint64_t file_digest(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  uint64_t h = fnv(FNV_START, "file", 4);
  unsigned char b[65536];
  ssize_t n;
  while ((n = read(fd, b, sizeof b)) > 0)
    h = fnv(h, b, (size_t)n);
  close(fd);
  return h;
}

struct fp_search {
  uintptr_t addr[FP_N]; /* an address inside each object; 0: the first object (the program) */
  uint64_t digest[FP_N];
  bool first;
};

/* The object's GNU build-id note, or NULL. */
static const unsigned char *build_id(struct dl_phdr_info *info, size_t *len) {
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type != PT_NOTE) continue;
    const unsigned char *p = (const unsigned char *)(info->dlpi_addr + ph->p_vaddr);
    const unsigned char *end = p + ph->p_memsz;
    while (p + sizeof(ElfW(Nhdr)) <= end) {
      const ElfW(Nhdr) *nh = (const ElfW(Nhdr) *)(const void *)p;
      size_t name = (nh->n_namesz + 3u) & ~3u, desc = (nh->n_descsz + 3u) & ~3u;
      const unsigned char *d = p + sizeof *nh + name;
      if (d + nh->n_descsz > end) break;
      if (nh->n_type == NT_GNU_BUILD_ID && nh->n_namesz == 4 &&
          memcmp(p + sizeof *nh, "GNU", 4) == 0) {
        *len = nh->n_descsz;
        return d;
      }
      p = d + desc;
    }
  }
  return NULL;
}

static bool holds(struct dl_phdr_info *info, uintptr_t a) {
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
    if (ph->p_type == PT_LOAD && a >= lo && a < lo + ph->p_memsz) return true;
  }
  return false;
}

static int fp_visit(struct dl_phdr_info *info, size_t size, void *ctx) {
  (void)size;
  struct fp_search *s = ctx;
  bool first = s->first;
  s->first = false;
  for (int k = 0; k < FP_N; k++) {
    if (s->digest[k] != 0 || !(k == FP_PROGRAM ? first : holds(info, s->addr[k]))) continue;
    size_t len = 0;
    const unsigned char *id = build_id(info, &len);
    if (id != NULL) {
      s->digest[k] = fnv(fnv(FNV_START, "build-id", 8), id, len);
    } else {
      const char *path =
          k == FP_PROGRAM || info->dlpi_name[0] == '\0' ? "/proc/self/exe" : info->dlpi_name;
      s->digest[k] = file_digest(path);
    }
  }
  return 0;
}

static void fingerprint_make(struct fingerprint *fp) {
  memset(fp, 0, sizeof *fp);
  fp->magic = FP_MAGIC;
  fp->version = FP_VERSION;
  struct fp_search s = { .first = true };
  s.addr[FP_TANDEM] = (uintptr_t)(void *)tdm_version;
  s.addr[FP_TANDEM_MPI] = (uintptr_t)(void *)tdm_cluster_rank;
  dl_iterate_phdr(fp_visit, &s);
  memcpy(fp->digest, s.digest, sizeof fp->digest);
  snprintf(fp->tandem, sizeof fp->tandem, "%s", tdm_version());
  fp->pid = (int32_t)getpid();
  fp->spi = TDM__POOL_SPI_VERSION;
  int n = 0;
  if (MPI_Get_processor_name(fp->host, &n) != MPI_SUCCESS) snprintf(fp->host, sizeof fp->host, "?");
  ssize_t k = readlink("/proc/self/exe", fp->path, sizeof fp->path - 1);
  fp->path[k > 0 ? k : 0] = '\0';
}

/* Rank 0: compares every rank's fingerprint with its own, prints a line for each that differs,
 * keeps every rank's host and pid. Returns 0 or TDM_EMISMATCH. */
static int fingerprints_check(const struct fingerprint *all, int n) {
  const struct fingerprint *me = &all[0];
  int status = 0;
  tdm__cl.hosts = calloc((size_t)n, sizeof *tdm__cl.hosts);
  tdm__cl.pids = calloc((size_t)n, sizeof *tdm__cl.pids);
  for (int r = 0; r < n; r++) {
    const struct fingerprint *f = &all[r];
    if (tdm__cl.hosts != NULL) tdm__cl.hosts[r] = strndup(f->host, sizeof f->host);
    if (tdm__cl.pids != NULL) tdm__cl.pids[r] = f->pid;
    if (r == 0) continue;
    const char *what = NULL;
    if (f->magic != FP_MAGIC || f->version != FP_VERSION || f->spi != me->spi ||
        strncmp(f->tandem, me->tandem, sizeof f->tandem) != 0) {
      what = "tandem itself (another version)";
    } else {
      for (int k = 0; k < FP_N && what == NULL; k++)
        if (f->digest[k] != me->digest[k]) what = fp_what[k];
    }
    if (what == NULL) continue;
    status = TDM_EMISMATCH;
    fprintf(stderr,
            "tandem cluster: rank %d (host %.*s, pid %d, program %.*s) runs another build of %s "
            "than rank 0 (%.*s): tasks are named by their place in the code, so cluster pools "
            "will not open (TDM_EMISMATCH)\n",
            r, (int)sizeof f->host, f->magic == FP_MAGIC ? f->host : "?", (int)f->pid,
            (int)sizeof f->path, f->magic == FP_MAGIC ? f->path : "?", what, (int)sizeof me->path,
            me->path);
  }
  return status;
}

/* ---- Public ---------------------------------------------------------------------------------- */

/* Every rank names itself in its environment ("rank/size"), which its child processes inherit:
 * the processes of a hybrid rank's pool that start a fresh program (spawn, forkserver) learn
 * their rank from it, and a program that a rank starts (a pool worker, system()) knows from it
 * that mpirun did not start it, although it inherits mpirun's variables too. */
#define RANK_ENV "TDM_CLUSTER_RANK"

int tdm_cluster_rank(void) {
  if (tdm__cl.rank >= 0) return tdm__cl.rank;
  const char *v = getenv(RANK_ENV);
  int rank, size;
  return v != NULL && sscanf(v, "%d/%d", &rank, &size) == 2 ? rank : -1;
}

int tdm_cluster_size(void) {
  if (tdm__cl.rank >= 0) return tdm__cl.size;
  const char *v = getenv(RANK_ENV);
  int rank, size;
  return v != NULL && sscanf(v, "%d/%d", &rank, &size) == 2 ? size : 1;
}

int tdm_cluster_status(void) {
  return tdm__cl.status;
}

const char *tdm_cluster_host(int rank) {
  if (tdm__cl.hosts == NULL || rank < 0 || rank >= tdm__cl.size) return NULL;
  return tdm__cl.hosts[rank];
}

/* ---- The worker rank ------------------------------------------------------------------------- */

/* What the rank runs now, for the crash report (read by a signal handler). */
static struct {
  _Atomic uint64_t id; /* 0: nothing */
  _Atomic int chunk;   /* a map chunk rather than a task */
  char fn[160];        /* the function's name, written before id */
} current;

static struct sigaction fatal_old[NSIG];
static char fatal_host[MPI_MAX_PROCESSOR_NAME];
static const int fatal_signals[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT };

/* Async-signal-safe: one line on stderr, then the signal goes on as it would have. */
static void on_fatal(int sig) {
  if (getpid() != tdm__cl.pid) {
    /* A fork child of the rank (a worker of its own pool): its death is that pool's business. */
    signal(sig, SIG_DFL);
    raise(sig);
    return;
  }
  char line[512];
  size_t cap = sizeof line - 1, n = 0;
  n = tdm__cl_put(line, n, cap, "tandem cluster: rank ");
  n = tdm__cl_put_u(line, n, cap, (uint64_t)tdm__cl.rank);
  n = tdm__cl_put(line, n, cap, " (host ");
  n = tdm__cl_put(line, n, cap, fatal_host);
  n = tdm__cl_put(line, n, cap, ", pid ");
  n = tdm__cl_put_u(line, n, cap, (uint64_t)getpid());
  n = tdm__cl_put(line, n, cap, ") died of signal ");
  n = tdm__cl_put_u(line, n, cap, (uint64_t)sig);
  n = tdm__cl_put(line, n, cap, " (");
  n = tdm__cl_put(line, n, cap, sigabbrev_np(sig) != NULL ? sigabbrev_np(sig) : "?");
  uint64_t id = atomic_load(&current.id);
  if (id != 0) {
    n = tdm__cl_put(line, n, cap,
                    atomic_load(&current.chunk) ? ") running map chunk " : ") running task ");
    n = tdm__cl_put_u(line, n, cap, id);
    n = tdm__cl_put(line, n, cap, " (");
    n = tdm__cl_put(line, n, cap, current.fn);
    n = tdm__cl_put(line, n, cap, ")");
  } else {
    n = tdm__cl_put(line, n, cap, ") between tasks");
  }
  line[n++] = '\n';
  ssize_t w = write(STDERR_FILENO, line, n);
  (void)w;
  sigaction(sig, &fatal_old[sig], NULL);
  raise(sig);
}

static void fatal_handlers_install(void) {
  int len = 0;
  if (MPI_Get_processor_name(fatal_host, &len) != MPI_SUCCESS) snprintf(fatal_host, 2, "?");
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_fatal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_NODEFER | SA_RESETHAND;
  for (size_t i = 0; i < sizeof fatal_signals / sizeof fatal_signals[0]; i++)
    sigaction(fatal_signals[i], &sa, &fatal_old[fatal_signals[i]]);
}

/* A cache of resolved functions: units of one map name the same one again and again. */
#define FN_CACHE 16
struct fn_entry {
  char *obj;
  uint64_t off;
  void *addr;
  char name[160];
};

struct worker {
  void *buf; /* the last message received */
  size_t cap;
  void *out; /* a result being built */
  size_t out_cap;
  struct fn_entry fns[FN_CACHE];
  unsigned fn_next;
  /* The open pool. */
  bool open;
  uint64_t max_result;
  tdm_pool_fini_fn fini;
  void *init_arg;
  size_t init_size;
  tdm_pool *local; /* hybrid */
  /* Hybrid: futures that ended, handed over by their callbacks. */
  pthread_mutex_t mu;
  struct done *done;
  unsigned pending; /* futures of the local pool not yet answered */
};

struct done {
  struct done *next;
  tdm_future *f;
  uint64_t id;
  int64_t started;
};

static void *resolve(struct worker *w, const char *obj, size_t obj_len, uint64_t off,
                     const char **name) {
  for (unsigned i = 0; i < FN_CACHE; i++) {
    struct fn_entry *e = &w->fns[i];
    if (e->obj != NULL && e->off == off && strlen(e->obj) == obj_len &&
        memcmp(e->obj, obj, obj_len) == 0) {
      *name = e->name;
      return e->addr;
    }
  }
  char *path = strndup(obj, obj_len);
  if (path == NULL) return NULL;
  void *addr = tdm__cl.spi->fn_resolve(path, off);
  if (addr == NULL) {
    free(path);
    return NULL;
  }
  struct fn_entry *e = &w->fns[w->fn_next++ % FN_CACHE];
  free(e->obj);
  e->obj = path;
  e->off = off;
  e->addr = addr;
  Dl_info info;
  const char *base = strrchr(path, '/');
  if (dladdr(addr, &info) != 0 && info.dli_sname != NULL)
    snprintf(e->name, sizeof e->name, "%s", info.dli_sname);
  else
    snprintf(e->name, sizeof e->name, "%s+0x%llx",
             base != NULL      ? base + 1
             : path[0] != '\0' ? path
                               : program_invocation_short_name,
             (unsigned long long)off);
  *name = e->name;
  return addr;
}

static void send0(const void *data, size_t len, int tag) {
  /* A failed send to rank 0 leaves nothing to do: MPI's default handler aborts the job. */
  MPI_Send(data, (int)len, MPI_BYTE, 0, tag, tdm__cl.comm);
}

static void send_ready(int32_t code) {
  struct tdm__cl_ready r = { code, (int32_t)getpid() };
  send0(&r, sizeof r, TDM__CL_READY);
}

static void *fn_of(struct worker *w, const unsigned char *p, uint32_t len, uint64_t off) {
  const char *name;
  return resolve(w, (const char *)p, len, off, &name); /* "" is the program itself */
}

static void handle_open(struct worker *w, const unsigned char *m, size_t len) {
  struct tdm__cl_open o;
  if (len < sizeof o) {
    send_ready(-EPROTO);
    return;
  }
  memcpy(&o, m, sizeof o);
  const unsigned char *p = m + sizeof o;
  if (len - sizeof o < (size_t)o.init_len + o.fini_len + o.init_size) {
    send_ready(-EPROTO);
    return;
  }
  void *init = (o.flags & TDM__CL_OPEN_INIT) ? fn_of(w, p, o.init_len, o.init_off) : NULL;
  void *fini =
      (o.flags & TDM__CL_OPEN_FINI) ? fn_of(w, p + o.init_len, o.fini_len, o.fini_off) : NULL;
  if (((o.flags & TDM__CL_OPEN_INIT) && init == NULL) ||
      ((o.flags & TDM__CL_OPEN_FINI) && fini == NULL)) {
    send_ready(TDM_ENOTASK);
    return;
  }
  const unsigned char *arg = p + o.init_len + o.fini_len;
  free(w->init_arg);
  w->init_arg = NULL;
  w->init_size = (size_t)o.init_size;
  if (w->init_size > 0) {
    if ((w->init_arg = malloc(w->init_size)) == NULL) {
      send_ready(-ENOMEM);
      return;
    }
    memcpy(w->init_arg, arg, w->init_size);
  }
  tdm_pool_init_fn init_fn;
  memcpy(&init_fn, &init, sizeof init_fn);
  memcpy(&w->fini, &fini, sizeof w->fini);
  w->max_result = o.max_result;
  int32_t code = 0;
  if (o.rank_workers > 0) {
    tdm_pool_options lo = {
      .backend = (tdm_pool_backend)o.rank_backend,
      .start = (tdm_start_method)o.start,
      .workers = o.rank_workers,
      .initializer = init_fn,
      .finalizer = w->fini,
      .init_arg = w->init_arg,
      .init_size = w->init_size,
      .max_tasks_per_worker = o.max_tasks_per_worker,
      .task_timeout = o.task_timeout,
      .retries = o.retries,
      .break_on_worker_death = o.break_on_worker_death != 0,
      .max_result = (size_t)o.max_result,
    };
    code = tdm_pool_open(&w->local, &lo);
    w->fini = NULL; /* the rank's pool runs it */
  } else if (init_fn != NULL) {
    snprintf(current.fn, sizeof current.fn, "the initializer");
    atomic_store(&current.id, UINT64_MAX);
    code = init_fn(w->init_size > 0 ? w->init_arg : NULL, w->init_size) != 0 ? TDM_EINIT : 0;
    atomic_store(&current.id, 0);
    if (code != 0) w->fini = NULL; /* as on processes: no finalizer after a failed start */
  }
  w->open = code == 0;
  send_ready(code);
}

static void handle_close(struct worker *w) {
  if (w->local != NULL) {
    tdm_pool_close(w->local);
    w->local = NULL;
  } else if (w->open && w->fini != NULL) {
    w->fini(w->init_size > 0 ? w->init_arg : NULL, w->init_size);
  }
  w->open = false;
  w->fini = NULL;
  send0(NULL, 0, TDM__CL_CLOSED);
}

/* Sends a RESULT: the header, then `a` (na bytes) and `b` (nb bytes) in one message. */
static void send_result(struct worker *w, const struct tdm__cl_result *r, const void *a, size_t na,
                        const void *b, size_t nb) {
  size_t len = sizeof *r + na + nb;
  if (len > TDM__CL_MAX_MSG || grow(&w->out, &w->out_cap, len) != 0) {
    struct tdm__cl_result e = *r;
    e.flags = TDM__CL_RES_ERROR;
    e.code = len > TDM__CL_MAX_MSG ? -EMSGSIZE : -ENOMEM;
    e.status = 0;
    e.size = e.n_failed = 0;
    send0(&e, sizeof e, TDM__CL_RESULT);
    return;
  }
  unsigned char *o = w->out;
  struct tdm__cl_result h = *r;
  if (w->local != NULL) {
    tdm_pool_stats st;
    tdm_pool_stats_get(w->local, &st);
    h.lost = st.workers_lost;
    h.replaced = st.workers_replaced;
    h.retried = st.retried;
  }
  memcpy(o, &h, sizeof h);
  if (na > 0) memcpy(o + sizeof *r, a, na);
  if (nb > 0) memcpy(o + sizeof *r + na, b, nb);
  send0(o, len, TDM__CL_RESULT);
}

static void send_error(struct worker *w, uint64_t id, int code, int status) {
  struct tdm__cl_result r = {
    .id = id, .code = code, .status = status, .flags = TDM__CL_RES_ERROR
  };
  send_result(w, &r, NULL, 0, NULL, 0);
}

/* The rank's one worker state (worker_main()). */
static struct worker the_worker;

/* Hybrid: a future of the rank's pool ended (in any thread): hand it to the loop. */
static void on_local_done(tdm_future *f, void *arg) {
  (void)f;
  struct done *d = arg;
  struct worker *w = &the_worker;
  pthread_mutex_lock(&w->mu);
  d->next = w->done;
  w->done = d;
  pthread_mutex_unlock(&w->mu);
}

/*
 * Reads a unit's header (*u), checks that the message holds what it announces (`items` bytes
 * of inputs after the object path and the argument), and resolves its function. Returns the
 * function, with *arg at the argument and *name set; NULL after answering with the error.
 */
static void *unit_open(struct worker *w, const unsigned char *m, size_t len, struct tdm__cl_unit *u,
                       const unsigned char **arg, const char **name) {
  if (len < sizeof *u) return NULL; /* no id to answer to: not from rank 0 */
  memcpy(u, m, sizeof *u);
  size_t in_bytes = 0, room = len - sizeof *u;
  if ((u->n > 0 && __builtin_mul_overflow(u->n, u->in_size, &in_bytes)) || u->n > UINT32_MAX ||
      room < u->obj_len || room - u->obj_len < u->arg_size ||
      room - u->obj_len - u->arg_size < in_bytes) {
    send_error(w, u->id, -EPROTO, 0);
    return NULL;
  }
  void *addr = resolve(w, (const char *)m + sizeof *u, u->obj_len, u->fn_off, name);
  if (addr == NULL || !w->open) {
    send_error(w, u->id, addr == NULL ? TDM_ENOTASK : -EPIPE, 0);
    return NULL;
  }
  *arg = m + sizeof *u + u->obj_len;
  return addr;
}

static void handle_task(struct worker *w, const unsigned char *m, size_t len) {
  struct tdm__cl_unit u;
  const unsigned char *arg;
  const char *name;
  void *addr = unit_open(w, m, len, &u, &arg, &name);
  if (addr == NULL) return;
  tdm_task_fn fn;
  memcpy(&fn, &addr, sizeof fn);
  if (w->local != NULL) {
    struct done *d = calloc(1, sizeof *d);
    tdm_task_options to = { .timeout = u.timeout };
    int r =
        d == NULL ? -ENOMEM : tdm_pool_submit(w->local, fn, arg, (size_t)u.arg_size, &to, &d->f);
    if (r != 0) {
      free(d);
      send_error(w, u.id, r, 0);
      return;
    }
    d->id = u.id;
    d->started = tdm_clock_now();
    w->pending++;
    if (tdm_future_on_done(d->f, on_local_done, d) != 0) on_local_done(d->f, d);
    return;
  }
  snprintf(current.fn, sizeof current.fn, "%s", name);
  atomic_store(&current.chunk, 0);
  atomic_store(&current.id, u.id);
  struct tdm_task task = { .max_result = (size_t)w->max_result };
  int64_t t0 = tdm_clock_now(), c0 = tdm__cl.spi->thread_cpu_ns();
  int rc = fn(&task, u.arg_size > 0 ? arg : NULL, (size_t)u.arg_size);
  struct tdm__cl_result r = { .id = u.id,
                              .code = rc,
                              .wall_ns = (uint64_t)(tdm_clock_now() - t0),
                              .cpu_ns = (uint64_t)(tdm__cl.spi->thread_cpu_ns() - c0) };
  atomic_store(&current.id, 0);
  if (rc == 0) r.size = task.result_size;
  send_result(w, &r, task.result, rc == 0 ? task.result_size : 0, NULL, 0);
  tdm__cl.spi->free(task.result);
}

/* Hybrid: answers every future of the rank's pool that has ended. */
static void drain_local(struct worker *w) {
  pthread_mutex_lock(&w->mu);
  struct done *d = w->done;
  w->done = NULL;
  pthread_mutex_unlock(&w->mu);
  while (d != NULL) {
    struct done *next = d->next;
    struct tdm__cl_result r = { .id = d->id, .wall_ns = (uint64_t)(tdm_clock_now() - d->started) };
    tdm_task_error err;
    tdm_future_error(d->f, &err);
    const void *data = NULL;
    size_t size = 0;
    if (tdm_future_state_get(d->f) == TDM_FUTURE_DONE) {
      tdm_future_result(d->f, 0, &data, &size);
      r.size = size;
    } else if (err.code == TDM_ETASK) {
      r.code = err.status; /* the function's own return value */
    } else {
      r.flags = TDM__CL_RES_ERROR;
      r.code = err.code;
      r.status = err.status;
    }
    send_result(w, &r, data, size, NULL, 0);
    tdm_future_free(d->f);
    free(d);
    w->pending--;
    d = next;
  }
}

static void handle_chunk(struct worker *w, const unsigned char *m, size_t len) {
  struct tdm__cl_unit u;
  const unsigned char *marg;
  const char *name;
  void *addr = unit_open(w, m, len, &u, &marg, &name);
  if (addr == NULL) return;
  size_t out_bytes;
  if (__builtin_mul_overflow(u.n, u.out_size, &out_bytes) || out_bytes > TDM__CL_MAX_MSG) {
    send_error(w, u.id, -EMSGSIZE, 0);
    return;
  }
  tdm_map_fn fn;
  memcpy(&fn, &addr, sizeof fn);
  const unsigned char *in = marg + u.arg_size;
  size_t n = (size_t)u.n;
  unsigned char *out = calloc(out_bytes > 0 ? out_bytes : 1, 1);
  int32_t *rcs = calloc(n > 0 ? n : 1, sizeof *rcs);
  struct tdm__cl_failure *fails = NULL;
  if (out == NULL || rcs == NULL) {
    free(out);
    free(rcs);
    send_error(w, u.id, -ENOMEM, 0);
    return;
  }
  struct tdm__cl_result r = { .id = u.id };
  int64_t t0 = tdm_clock_now(), c0 = tdm__cl.spi->thread_cpu_ns();
  if (w->local != NULL) {
    int *errs = calloc(n > 0 ? n : 1, sizeof *errs);
    tdm_map_options mo = { .arg = u.arg_size > 0 ? marg : NULL,
                           .arg_size = (size_t)u.arg_size,
                           .errors = errs };
    int e = errs == NULL ? -ENOMEM
                         : tdm_pool_map(w->local, fn, in, (size_t)u.in_size, out,
                                        (size_t)u.out_size, n, &mo);
    if (e != 0 && e != TDM_ETASK) {
      free(errs);
      free(out);
      free(rcs);
      send_error(w, u.id, e, 0);
      return;
    }
    for (size_t i = 0; i < n; i++)
      rcs[i] = errs[i];
    free(errs);
  } else {
    snprintf(current.fn, sizeof current.fn, "%s", name);
    atomic_store(&current.chunk, 1);
    atomic_store(&current.id, u.id);
    const void *a = u.arg_size > 0 ? marg : NULL;
    for (size_t i = 0; i < n; i++)
      rcs[i] = fn(u.in_size > 0 ? in + i * u.in_size : NULL,
                  u.out_size > 0 ? out + i * u.out_size : NULL, a);
    atomic_store(&current.id, 0);
  }
  r.wall_ns = (uint64_t)(tdm_clock_now() - t0);
  r.cpu_ns = (uint64_t)(tdm__cl.spi->thread_cpu_ns() - c0);
  size_t nf = 0;
  for (size_t i = 0; i < n; i++)
    nf += rcs[i] != 0;
  if (nf > 0 && (fails = calloc(nf, sizeof *fails)) != NULL) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
      if (rcs[i] != 0) fails[k++] = (struct tdm__cl_failure){ (uint32_t)i, rcs[i] };
  }
  if (nf > 0 && fails == NULL) {
    send_error(w, u.id, -ENOMEM, 0);
  } else {
    r.n_failed = nf;
    send_result(w, &r, out, out_bytes, fails, nf * sizeof *fails);
  }
  free(fails);
  free(out);
  free(rcs);
}

static _Noreturn void worker_exit(struct worker *w) {
  if (w->local != NULL) tdm_pool_terminate(w->local);
  MPI_Comm_free(&tdm__cl.comm);
  MPI_Finalize();
  fflush(NULL);
  _exit(0);
}

static _Noreturn void worker_main(void) {
  struct worker *w = &the_worker;
  pthread_mutex_init(&w->mu, NULL);
  fatal_handlers_install();
  struct tdm__cl_backoff idle = { 0, 0 };
  for (;;) {
    if (w->pending > 0) drain_local(w);
    int len = 0, tag = 0, from = 0;
    int r = tdm__cl_try_recv(0, &w->buf, &w->cap, &len, &tag, &from);
    if (r != 0) { /* nothing yet, or MPI failed (its handler normally aborts first) */
      tdm__cl_idle(&idle);
      continue;
    }
    idle.since = 0;
    switch (tag) {
    case TDM__CL_OPEN:
      handle_open(w, w->buf, (size_t)len);
      break;
    case TDM__CL_TASK:
      handle_task(w, w->buf, (size_t)len);
      break;
    case TDM__CL_CHUNK:
      handle_chunk(w, w->buf, (size_t)len);
      break;
    case TDM__CL_CLOSE:
      while (w->pending > 0)
        drain_local(w);
      handle_close(w);
      break;
    case TDM__CL_EXIT:
      worker_exit(w);
    default:
      break;
    }
  }
}

/* ---- Start and end --------------------------------------------------------------------------- */

static void rank0_exit(void) {
  if (getpid() != tdm__cl.pid) return; /* a fork child: the job is its parent's */
  tdm__cl_dispatch_atexit();
  for (int r = 1; r < tdm__cl.size; r++)
    MPI_Send(NULL, 0, MPI_BYTE, r, TDM__CL_EXIT, tdm__cl.comm);
  MPI_Comm_free(&tdm__cl.comm);
  MPI_Finalize();
}

__attribute__((constructor)) static void cluster_init(void) {
  /* Not started by mpirun; or started by a rank (see RANK_ENV), whose job it is not part of. */
  if (getenv("OMPI_COMM_WORLD_SIZE") == NULL || getenv(RANK_ENV) != NULL) return;
  const struct tdm__pool_spi *spi = tdm__pool_spi(TDM__POOL_SPI_VERSION);
  int provided = 0, initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) return;
  if (MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) return;
  tdm__cl.pid = getpid();
  MPI_Comm_dup(MPI_COMM_WORLD, &tdm__cl.comm);
  MPI_Comm_rank(tdm__cl.comm, &tdm__cl.rank);
  MPI_Comm_size(tdm__cl.comm, &tdm__cl.size);
  tdm__cl.spi = spi;
  char self[32];
  snprintf(self, sizeof self, "%d/%d", tdm__cl.rank, tdm__cl.size);
  setenv(RANK_ENV, self, 1);

  /* Every rank sends its fingerprint; rank 0 answers with the job's status. */
  struct fingerprint mine;
  fingerprint_make(&mine);
  struct fingerprint *all = NULL;
  if (tdm__cl.rank == 0) all = calloc((size_t)tdm__cl.size, sizeof *all);
  MPI_Gather(&mine, (int)sizeof mine, MPI_BYTE, all, (int)sizeof mine, MPI_BYTE, 0, tdm__cl.comm);
  int status = 0;
  if (tdm__cl.rank == 0) {
    status = all == NULL ? -ENOMEM : fingerprints_check(all, tdm__cl.size);
    if (status == 0 && (spi == NULL || provided < MPI_THREAD_SERIALIZED || tdm__cl.size < 2))
      status = TDM_ECLUSTER;
    free(all);
  }
  MPI_Bcast(&status, 1, MPI_INT, 0, tdm__cl.comm);
  tdm__cl.status = status;
  if (tdm__cl.rank != 0) worker_main();
  /* Registered whatever the status, so that a pool's open says why it cannot (cl_open()). */
  if (spi != NULL) spi->register_cluster(&tdm__backend_cluster);
  atexit(rank0_exit);
}
