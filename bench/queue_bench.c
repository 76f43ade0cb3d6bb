/*
 * queue_bench.c: message channels between processes: tandem's queue (and its connection pipe)
 * against pipes, socketpairs, POSIX message queues, a spinning shared-memory floor, memcpy and
 * CPython's multiprocessing (bench/peers/cpython_queue.py).
 *
 * Every party is a forked child process (bench_party_start); a channel is made in the parent
 * before the fork, so every child inherits it, and each party closes the descriptors of the
 * ends it does not use, so that end of file means what it says. Three shapes of workload:
 *
 *   stream     P producers and C consumers (1+1 or 2+2) move iters messages of 64 bytes or
 *              1 MiB. Each message starts with its producer's number and a sequence number;
 *              consumers check that each producer's messages arrive in order, and the parent
 *              that every message arrived once (count and sum of sequence numbers). The clock
 *              starts when the gate opens (every party started and waiting) and stops when the
 *              last consumer has seen the end of the stream: one operation is one message
 *              delivered, wall time / all messages. The last producer to finish ends the stream
 *              the way each channel does: tdm_queue_shutdown() (consumers then get TDM_EEOF),
 *              closing the write ends (end of file), `consumers` stop records (POSIX mq, which
 *              has no end of file), or a done flag (the spinning ring).
 *   ping-pong  the parent sends a 64-byte message and waits for the child to send it back: one
 *              operation is one round trip, i.e. two hand-offs between processes.
 *   memcpy     the reference of the 1 MiB stream: one thread copying 1 MiB from one buffer to
 *              another, both in cache. A queue copies every message twice, in and out, and the
 *              goal is half of this rate.
 *
 * The spinning floor is what a shared-memory channel costs with no system call at all: a
 * single-producer single-consumer ring of 64-byte slots in MAP_SHARED memory (for 2+2, two
 * independent rings, one per producer/consumer pair: no sharing, so a lower bound), or two
 * flags for the ping-pong. Its waits spin with a pause instruction and yield the CPU only after
 * SPIN_YIELD_AFTER pauses, which happens only while the other side is not running.
 *
 * With one producer and one consumer, and in the ping-pong, the two processes are pinned to two
 * different CPUs (every implementation alike, and the CPython peers too), so that what is
 * measured is a hand-off between two running processes, not the scheduler's placement; 2+2 is
 * left to the scheduler (four processes, and on a 2-CPU machine two per CPU).
 *
 * The project's goals sit on the peer rows they are measured against, and the table says whether
 * a run meets them: for 64-byte messages at least 5x a pipe (and 100x CPython's Queue, which the
 * peer script gives); for 1 MiB messages at least half of memcpy's rate; a pinned ping-pong
 * within 3x of the spinning floor.
 */
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench.h"
#ifdef TDM_BENCH_HAVE_CONN
#include "tandem/conn.h"
#endif

#define PEERS "cpython_queue.py"

#define SMALL            ((size_t)64)
#define LARGE            ((size_t)1 << 20)
#define MAX_SIDE         2    /* producers, or consumers, of a stream */
#define RING_SLOTS       1024 /* the spinning ring: as many 64-byte messages as a pipe holds */
#define SPIN_YIELD_AFTER 1024
#define MQ_MAX_WANTED    1024

enum chan_kind {
  CH_QUEUE,     /* tdm_queue */
  CH_CONN,      /* tdm_pipe + tdm_conn_send / tdm_conn_recv_into */
  CH_PIPE,      /* pipe(2) */
  CH_PIPE_BIG,  /* pipe(2) with a buffer of 1 MiB (F_SETPIPE_SZ) */
  CH_STREAM,    /* socketpair(AF_UNIX, SOCK_STREAM): fixed-size records */
  CH_SEQPACKET, /* socketpair(AF_UNIX, SOCK_SEQPACKET): one record per message */
  CH_MQ,        /* POSIX message queue */
  CH_SPIN,      /* the spinning floor */
  CH_MEMCPY,    /* memcpy, one thread */
};

typedef struct chan_arg {
  enum chan_kind chan;
  int producers, consumers; /* streams */
  size_t size;              /* bytes per message */
  bool pin;                 /* the two sides on two CPUs (1+1 streams, ping-pong) */
} chan_arg;

/* A failing call in a child is a bug in the library or the benchmark: say so and exit 1. */
static _Noreturn void child_fail(const char *call, int err) {
  fprintf(stderr, "tandem bench: %s failed: %s\n", call, tdm_strerror(err));
  _exit(1);
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ volatile("yield" ::: "memory");
#endif
}

/* One failed look at a spinning wait: pause, and now and then let a descheduled peer run. */
static inline void spin_once(unsigned *spins) {
  if (++*spins < SPIN_YIELD_AFTER) {
    cpu_relax();
  } else {
    *spins = 0;
    sched_yield();
  }
}

/* ---- CPUs --------------------------------------------------------------------------------- */

/*
 * The two CPUs that the two sides of a 1+1 stream or a ping-pong are pinned to, the first two
 * of the program's affinity mask; -1 when it has fewer than two (then nothing is pinned). A
 * forked child starts on its parent's CPU, and the scheduler takes milliseconds to move one of
 * two busy processes to an idle CPU: unpinned, a short run of the spinning floor measures the
 * two sides taking turns on one CPU (10 us a round trip here, against 0.25 us on two CPUs).
 */
static int side_cpu[2] = { -1, -1 };

static void cpus_probe(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return;
  int n = 0;
  for (int cpu = 0; cpu < CPU_SETSIZE && n < 2; cpu++)
    if (CPU_ISSET(cpu, &set)) side_cpu[n++] = cpu;
  if (n < 2) side_cpu[0] = side_cpu[1] = -1;
}

/* Pins the calling process to side `side`'s CPU (when there are two). */
static void pin_side(int side) {
  if (side_cpu[side] < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(side_cpu[side], &set);
  sched_setaffinity(0, sizeof set, &set);
}

/* ---- POSIX message queues ------------------------------------------------------------------- */

/* Probed once by the suite: the largest mq_maxmsg this machine grants (an unprivileged process
 * gets at most /proc/sys/fs/mqueue/msg_max, 10 by default), or 0 with the reason. */
static long mq_maxmsg;
static int mq_error;
static char mq_name_64[64] = "POSIX mq";

static int mq_make(mqd_t *out, long maxmsg, size_t msgsize) {
  static unsigned counter;
  char name[64];
  snprintf(name, sizeof name, "/tandem.bench.%d.%u", (int)getpid(), counter++);
  struct mq_attr attr = { .mq_maxmsg = maxmsg, .mq_msgsize = (long)msgsize };
  mqd_t q = mq_open(name, O_RDWR | O_CREAT | O_EXCL, 0600, &attr);
  if (q == (mqd_t)-1) return -errno;
  mq_unlink(name); /* the descriptor, which children inherit, keeps the queue */
  *out = q;
  return 0;
}

static void mq_probe(void) {
  long want = MQ_MAX_WANTED;
  FILE *f = fopen("/proc/sys/fs/mqueue/msg_max", "r");
  if (f != NULL) {
    long m;
    if (fscanf(f, "%ld", &m) == 1 && m > 0 && m < want) want = m;
    fclose(f);
  }
  for (long m = want; m >= 1; m /= 2) {
    mqd_t q;
    mq_error = mq_make(&q, m, SMALL);
    if (mq_error == 0) {
      mq_close(q);
      mq_maxmsg = m;
      snprintf(mq_name_64, sizeof mq_name_64, "POSIX mq (maxmsg %ld)", m);
      return;
    }
    if (mq_error != -EINVAL) break;
  }
  snprintf(mq_name_64, sizeof mq_name_64, "POSIX mq (unavailable: %s)", tdm_strerror(mq_error));
}

/* ---- Channels ------------------------------------------------------------------------------- */

/*
 * The spinning floor's ring: one producer, one consumer. Each side keeps a copy of the other's
 * index and reads the shared one only when its copy says full (or empty), so in a steady stream
 * the two cache lines of indexes move once per batch, not once per message.
 */
typedef struct spin_ring {
  _Alignas(64) uint64_t tail; /* next slot to write; written by the producer */
  uint32_t done;              /* the producer has finished */
  _Alignas(64) uint64_t head; /* next slot to read; written by the consumer */
  _Alignas(64) unsigned char slot[RING_SLOTS][SMALL];
} spin_ring;

typedef struct spin_cursor {
  spin_ring *ring;
  uint64_t mine, theirs; /* my index, and my copy of the other side's */
} spin_cursor;

static void ring_put(spin_cursor *c, const void *msg) {
  unsigned spins = 0;
  while (c->mine - c->theirs == RING_SLOTS) {
    c->theirs = __atomic_load_n(&c->ring->head, __ATOMIC_ACQUIRE);
    if (c->mine - c->theirs == RING_SLOTS) spin_once(&spins);
  }
  memcpy(c->ring->slot[c->mine % RING_SLOTS], msg, SMALL);
  __atomic_store_n(&c->ring->tail, ++c->mine, __ATOMIC_RELEASE);
}

/* Returns false once the producer is done and the ring is empty. */
static bool ring_get(spin_cursor *c, void *msg) {
  unsigned spins = 0;
  while (c->mine == c->theirs) {
    bool done = __atomic_load_n(&c->ring->done, __ATOMIC_ACQUIRE);
    c->theirs = __atomic_load_n(&c->ring->tail, __ATOMIC_ACQUIRE);
    if (c->mine != c->theirs) break;
    if (done) return false; /* done was set after the last tail: nothing more will come */
    spin_once(&spins);
  }
  memcpy(msg, c->ring->slot[c->mine % RING_SLOTS], SMALL);
  __atomic_store_n(&c->ring->head, ++c->mine, __ATOMIC_RELEASE);
  return true;
}

/*
 * A one-way channel, as the parent makes it before forking: tandem's queue, or a pair of
 * descriptors (rd: the consumers' end, wr: the producers'), or a message queue.
 */
typedef struct chan {
  enum chan_kind kind;
  size_t size;
  tdm_queue *q;
  int rd, wr;
  mqd_t mq;
} chan;

/* An empty channel: nothing to close. */
static void chan_reset(chan *c, enum chan_kind kind, size_t size) {
  memset(c, 0, sizeof *c);
  c->kind = kind;
  c->size = size;
  c->rd = c->wr = -1;
  c->mq = (mqd_t)-1;
}

static int chan_open(chan *c, enum chan_kind kind, size_t size) {
  chan_reset(c, kind, size);
  int fds[2];
  switch (kind) {
  case CH_QUEUE: {
    /* A user's queue for small messages is the default one; for 1 MiB, room for 4. */
    tdm_queue_options o = { .max_message = LARGE, .max_bytes = 4 * LARGE };
    return tdm_queue_open(&c->q, size > SMALL ? &o : NULL);
  }
  case CH_PIPE:
  case CH_PIPE_BIG:
    if (pipe(fds) != 0) return -errno;
    c->rd = fds[0];
    c->wr = fds[1];
    if (kind == CH_PIPE_BIG && fcntl(c->wr, F_SETPIPE_SZ, (int)LARGE) < 0) {
      int e = errno;
      bench_close_fd(&c->rd);
      bench_close_fd(&c->wr);
      return e == EPERM ? -ENOTSUP : -e;
    }
    return 0;
  case CH_STREAM:
  case CH_SEQPACKET:
    if (socketpair(AF_UNIX, kind == CH_STREAM ? SOCK_STREAM : SOCK_SEQPACKET, 0, fds) != 0)
      return -errno;
    c->wr = fds[0];
    c->rd = fds[1];
    if (kind == CH_STREAM) shutdown(c->rd, SHUT_WR); /* one-way, as a pipe */
    return 0;
  case CH_MQ:
    if (mq_maxmsg == 0) return -ENOTSUP;
    return mq_make(&c->mq, mq_maxmsg, size);
  case CH_SPIN:
    return 0; /* the rings are in the workload's shared state */
  default:
    return -EINVAL;
  }
}

static void chan_close(chan *c) {
  if (c->q != NULL) tdm_queue_close(c->q);
  c->q = NULL;
  bench_close_fd(&c->rd);
  bench_close_fd(&c->wr);
  if (c->mq != (mqd_t)-1) mq_close(c->mq);
  c->mq = (mqd_t)-1;
}

/* ---- Messages ------------------------------------------------------------------------------- */

typedef struct msg_hdr {
  uint64_t seq;
  uint32_t producer;
  uint32_t stop; /* a stop record (POSIX mq) */
} msg_hdr;

static void *msg_buffer(size_t size) {
  void *p = malloc(size);
  if (p == NULL) child_fail("malloc", -ENOMEM);
  memset(p, 0x5a, size);
  return p;
}

static inline void stamp(void *buf, uint64_t seq, uint32_t producer) {
  msg_hdr h = { seq, producer, 0 };
  memcpy(buf, &h, sizeof h);
}

/* ---- Streams -------------------------------------------------------------------------------- */

typedef struct stream_state {
  bench_gate gate;
  bool pin;
  int producers, consumers;
  int producers_left;
  int64_t per_producer;
  int64_t end[MAX_SIDE]; /* when each consumer saw the end of the stream */
  int64_t got[MAX_SIDE];
  uint64_t seq_sum[MAX_SIDE];
  uint32_t out_of_order[MAX_SIDE];
  spin_ring ring[MAX_SIDE]; /* CH_SPIN: producer i feeds consumer i */
} stream_state;

/* What a forked party is: the child reads its own copy of the parent's struct. */
typedef struct stream_role {
  stream_state *s;
  chan *c;
  bool producer;
  uint32_t id;
} stream_role;

static void producer_end(stream_state *s, chan *c, uint32_t id, void *buf) {
  bool last = __atomic_sub_fetch(&s->producers_left, 1, __ATOMIC_ACQ_REL) == 0;
  switch (c->kind) {
  case CH_QUEUE:
    if (last) tdm_queue_shutdown(c->q);
    break;
  case CH_MQ:
    for (int i = 0; last && i < s->consumers; i++) {
      msg_hdr h = { 0, 0, 1 };
      memcpy(buf, &h, sizeof h);
      if (mq_send(c->mq, buf, c->size, 0) != 0) child_fail("mq_send", -errno);
    }
    break;
  case CH_SPIN:
    __atomic_store_n(&s->ring[id].done, 1, __ATOMIC_RELEASE);
    break;
  default:
    bench_close_fd(&c->wr); /* the last write end closed is the consumers' end of file */
  }
}

static void produce(stream_state *s, chan *c, uint32_t id) {
  void *buf = msg_buffer(c->size);
  size_t size = c->size;
  int64_t n = s->per_producer;
  spin_cursor cur = { &s->ring[id], 0, 0 };
  int r = 0;
  bench_gate_arrive(&s->gate);
  switch (c->kind) {
  case CH_QUEUE:
    for (int64_t i = 0; i < n && r == 0; i++) {
      stamp(buf, (uint64_t)i, id);
      r = tdm_queue_put(c->q, buf, size, TDM_FOREVER);
    }
    if (r != 0) child_fail("tdm_queue_put", r);
    break;
  case CH_MQ:
    for (int64_t i = 0; i < n && r == 0; i++) {
      stamp(buf, (uint64_t)i, id);
      r = mq_send(c->mq, buf, size, 0) == 0 ? 0 : -errno;
    }
    if (r != 0) child_fail("mq_send", r);
    break;
  case CH_SPIN:
    for (int64_t i = 0; i < n; i++) {
      stamp(buf, (uint64_t)i, id);
      ring_put(&cur, buf);
    }
    break;
  default:
    for (int64_t i = 0; i < n && r == 0; i++) {
      stamp(buf, (uint64_t)i, id);
      r = bench_write_full(c->wr, buf, size);
    }
    if (r != 0) child_fail("write", r);
  }
  producer_end(s, c, id, buf);
  free(buf);
}

static void consume(stream_state *s, chan *c, uint32_t id) {
  void *buf = msg_buffer(c->size);
  size_t size = c->size, len;
  spin_cursor cur = { &s->ring[id], 0, 0 };
  int64_t last[MAX_SIDE], got = 0;
  uint64_t sum = 0;
  uint32_t bad = 0;
  for (int i = 0; i < MAX_SIDE; i++)
    last[i] = -1;
  bench_gate_arrive(&s->gate);
  for (;;) {
    int r;
    switch (c->kind) {
    case CH_QUEUE:
      r = tdm_queue_recv(c->q, buf, size, &len, TDM_FOREVER);
      if (r == 0 && len != size) r = -EPROTO;
      break;
    case CH_MQ: {
      ssize_t m = mq_receive(c->mq, buf, size, NULL);
      r = m < 0 ? -errno : (size_t)m != size ? -EPROTO : 0;
      if (r == -EINTR) continue;
      if (r == 0 && ((msg_hdr *)buf)->stop) r = TDM_EEOF;
      break;
    }
    case CH_SPIN:
      r = ring_get(&cur, buf) ? 0 : TDM_EEOF;
      break;
    default:
      r = bench_read_full(c->rd, buf, size);
    }
    if (r == TDM_EEOF) break;
    if (r != 0) child_fail("receiving a message", r);
    msg_hdr h;
    memcpy(&h, buf, sizeof h);
    if (h.producer >= MAX_SIDE || (int64_t)h.seq <= last[h.producer]) {
      bad++;
    } else {
      last[h.producer] = (int64_t)h.seq;
    }
    got++;
    sum += h.seq;
  }
  s->end[id] = tdm_clock_now();
  s->got[id] = got;
  s->seq_sum[id] = sum;
  s->out_of_order[id] = bad;
  free(buf);
}

static void stream_party(void *arg) {
  const stream_role *role = arg;
  chan *c = role->c;
  if (role->s->pin) pin_side(role->producer ? 0 : 1);
  /* Keep only this side's end, so that end of file comes when the producers close theirs. */
  bench_close_fd(role->producer ? &c->rd : &c->wr);
  if (role->producer)
    produce(role->s, c, role->id);
  else
    consume(role->s, c, role->id);
  chan_close(c);
}

static int stream_check(const stream_state *s) {
  int64_t n = s->per_producer, got = 0;
  uint64_t sum = 0, bad = 0;
  for (int i = 0; i < s->consumers; i++) {
    got += s->got[i];
    sum += s->seq_sum[i];
    bad += s->out_of_order[i];
  }
  uint64_t want_sum = (uint64_t)s->producers * (uint64_t)n * (uint64_t)(n - 1) / 2;
  if (got == n * s->producers && sum == want_sum && bad == 0) return 0;
  fprintf(stderr,
          "tandem bench: stream delivered %lld of %lld messages, sequence sum %llu (expected "
          "%llu), %llu out of order\n",
          (long long)got, (long long)(n * s->producers), (unsigned long long)sum,
          (unsigned long long)want_sum, (unsigned long long)bad);
  return -EPROTO;
}

static int run_stream(const void *arg, int64_t iters, double *ns) {
  const chan_arg *a = arg;
  stream_state *s = bench_shared_alloc(sizeof *s);
  chan c;
  int r = chan_open(&c, a->chan, a->size);
  if (r != 0) {
    bench_shared_free(s, sizeof *s);
    return r;
  }
  s->pin = a->pin && a->producers == 1 && a->consumers == 1;
  s->producers = s->producers_left = a->producers;
  s->consumers = a->consumers;
  s->per_producer = iters / a->producers > 0 ? iters / a->producers : 1;

  stream_role roles[2 * MAX_SIDE];
  bench_party party[2 * MAX_SIDE];
  int n = a->producers + a->consumers, started = 0;
  for (int i = 0; i < n && r == 0; i++) {
    bool producer = i >= a->consumers;
    roles[i] = (stream_role){ s, &c, producer, (uint32_t)(producer ? i - a->consumers : i) };
    r = bench_party_start(&party[i], true, stream_party, &roles[i]);
    if (r == 0) started++;
  }
  bench_close_fd(&c.rd); /* the parent keeps no end open: end of file is the producers' to give */
  bench_close_fd(&c.wr);
  if (r != 0) {
    for (int i = 0; i < started; i++)
      kill(party[i].pid, SIGKILL);
  }
  int64_t t0 = bench_gate_open(&s->gate, (uint32_t)started);
  for (int i = 0; i < started; i++) {
    int j = bench_party_join(&party[i]);
    if (r == 0) r = j;
  }
  if (r == 0) r = stream_check(s);
  if (r == 0) {
    int64_t t1 = t0;
    for (int i = 0; i < a->consumers; i++)
      if (s->end[i] > t1) t1 = s->end[i];
    *ns = (double)(t1 - t0) / (double)(s->per_producer * a->producers);
  }
  chan_close(&c);
  bench_shared_free(s, sizeof *s);
  return r;
}

/* The memcpy floor: iters copies of `size` bytes, one thread. */
static int run_memcpy(const void *arg, int64_t iters, double *ns) {
  const chan_arg *a = arg;
  char *src = malloc(a->size), *dst = malloc(a->size);
  int r = src && dst ? 0 : -ENOMEM;
  if (r == 0) {
    memset(src, 0x5a, a->size);
    memset(dst, 0, a->size);
    int64_t t0 = tdm_clock_now();
    for (int64_t i = 0; i < iters; i++) {
      memcpy(dst, src, a->size);
      __asm__ volatile("" : : "r"(dst) : "memory"); /* every copy happens */
    }
    *ns = (double)(tdm_clock_now() - t0) / (double)iters;
  }
  free(src);
  free(dst);
  return r;
}

/* ---- Ping-pong ------------------------------------------------------------------------------ */

typedef struct pong_state {
  uint32_t ready;
  int64_t rounds;
  _Alignas(64) uint64_t ping; /* the spinning floor's flags: the round each side has reached */
  _Alignas(64) uint64_t pong;
} pong_state;

/* Both directions of a ping-pong: `there` carries A's messages to B, `back` B's to A. */
typedef struct pong_chans {
  enum chan_kind kind;
  bool pin;
  pong_state *s;
  chan there, back;
#ifdef TDM_BENCH_HAVE_CONN
  tdm_conn *ca, *cb; /* CH_CONN: A's end and B's end */
#endif
} pong_chans;

static int pong_open(pong_chans *p, enum chan_kind kind) {
  p->kind = kind;
  chan_reset(&p->there, kind, SMALL);
  chan_reset(&p->back, kind, SMALL);
  switch (kind) {
  case CH_QUEUE:
  case CH_PIPE:
  case CH_MQ: {
    int r = chan_open(&p->there, kind, SMALL);
    if (r == 0) r = chan_open(&p->back, kind, SMALL);
    return r;
  }
  case CH_STREAM: {
    /* One socketpair carries both directions: A's socket in there.wr, B's in back.wr. */
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) return -errno;
    p->there.wr = fds[0];
    p->back.wr = fds[1];
    return 0;
  }
  case CH_CONN:
#ifdef TDM_BENCH_HAVE_CONN
    return tdm_pipe(&p->ca, &p->cb, NULL);
#else
    return -ENOTSUP;
#endif
  case CH_SPIN:
    return 0;
  default:
    return -EINVAL;
  }
}

static void pong_close(pong_chans *p) {
  chan_close(&p->there);
  chan_close(&p->back);
#ifdef TDM_BENCH_HAVE_CONN
  if (p->ca != NULL) tdm_conn_close(p->ca);
  if (p->cb != NULL) tdm_conn_close(p->cb);
  p->ca = p->cb = NULL;
#endif
}

/* Side A (the parent, timed) when `a`, else side B: s->rounds round trips. */
static int pong_side(pong_chans *p, bool a) {
  pong_state *s = p->s;
  char buf[SMALL];
  memset(buf, 0x5a, sizeof buf);
  int64_t n = s->rounds;
  size_t len;
  int r = 0;
  switch (p->kind) {
  case CH_QUEUE: {
    tdm_queue *out = a ? p->there.q : p->back.q, *in = a ? p->back.q : p->there.q;
    for (int64_t i = 0; i < n && r == 0; i++) {
      if (a) r = tdm_queue_put(out, buf, sizeof buf, TDM_FOREVER);
      if (r == 0) r = tdm_queue_recv(in, buf, sizeof buf, &len, TDM_FOREVER);
      if (r == 0 && !a) r = tdm_queue_put(out, buf, sizeof buf, TDM_FOREVER);
    }
    return r;
  }
#ifdef TDM_BENCH_HAVE_CONN
  case CH_CONN: {
    tdm_conn *me = a ? p->ca : p->cb;
    for (int64_t i = 0; i < n && r == 0; i++) {
      if (a) r = tdm_conn_send(me, buf, sizeof buf, TDM_FOREVER);
      if (r == 0) r = tdm_conn_recv_into(me, buf, sizeof buf, &len, TDM_FOREVER);
      if (r == 0 && !a) r = tdm_conn_send(me, buf, sizeof buf, TDM_FOREVER);
    }
    return r;
  }
#endif
  case CH_PIPE:
  case CH_STREAM: {
    int out, in;
    if (p->kind == CH_STREAM) {
      out = in = a ? p->there.wr : p->back.wr;
    } else {
      out = a ? p->there.wr : p->back.wr;
      in = a ? p->back.rd : p->there.rd;
    }
    for (int64_t i = 0; i < n && r == 0; i++) {
      if (a) r = bench_write_full(out, buf, sizeof buf);
      if (r == 0) r = bench_read_full(in, buf, sizeof buf);
      if (r == 0 && !a) r = bench_write_full(out, buf, sizeof buf);
    }
    return r;
  }
  case CH_MQ: {
    mqd_t out = a ? p->there.mq : p->back.mq, in = a ? p->back.mq : p->there.mq;
    for (int64_t i = 0; i < n && r == 0; i++) {
      if (a && mq_send(out, buf, sizeof buf, 0) != 0) r = -errno;
      if (r == 0) {
        ssize_t m = mq_receive(in, buf, sizeof buf, NULL);
        r = m < 0 ? -errno : (size_t)m != sizeof buf ? -EPROTO : 0;
      }
      if (r == 0 && !a && mq_send(out, buf, sizeof buf, 0) != 0) r = -errno;
    }
    return r;
  }
  case CH_SPIN: {
    uint64_t *mine = a ? &s->ping : &s->pong, *theirs = a ? &s->pong : &s->ping;
    for (uint64_t i = 1; i <= (uint64_t)n; i++) {
      unsigned spins = 0;
      if (a) __atomic_store_n(mine, i, __ATOMIC_RELEASE);
      while (__atomic_load_n(theirs, __ATOMIC_ACQUIRE) != i)
        spin_once(&spins);
      if (!a) __atomic_store_n(mine, i, __ATOMIC_RELEASE);
    }
    return 0;
  }
  default:
    return -EINVAL;
  }
}

static void pong_b(void *arg) {
  pong_chans *p = arg;
  if (p->pin) pin_side(1);
  /* B keeps the read end of `there` and the write end of `back` (a socket: its own). */
  if (p->kind == CH_PIPE) {
    bench_close_fd(&p->there.wr);
    bench_close_fd(&p->back.rd);
  } else if (p->kind == CH_STREAM) {
    bench_close_fd(&p->there.wr);
  }
#ifdef TDM_BENCH_HAVE_CONN
  if (p->ca != NULL) tdm_conn_close(p->ca);
  p->ca = NULL;
#endif
  __atomic_store_n(&p->s->ready, 1, __ATOMIC_RELEASE);
  int r = pong_side(p, false);
  if (r != 0) child_fail("ping-pong, side B", r);
  pong_close(p);
}

static int run_pong(const void *arg, int64_t iters, double *ns) {
  const chan_arg *a = arg;
  pong_chans p = { .pin = a->pin, .s = bench_shared_alloc(sizeof(pong_state)) };
  p.s->rounds = iters;
  int r = pong_open(&p, a->chan);
  cpu_set_t saved;
  bool pinned = sched_getaffinity(0, sizeof saved, &saved) == 0;
  if (r == 0) {
    if (pinned && p.pin) pin_side(0);
    bench_party b;
    r = bench_party_start(&b, true, pong_b, &p);
    if (r == 0) {
      if (p.kind == CH_PIPE) {
        bench_close_fd(&p.there.rd);
        bench_close_fd(&p.back.wr);
      } else if (p.kind == CH_STREAM) {
        bench_close_fd(&p.back.wr);
      }
#ifdef TDM_BENCH_HAVE_CONN
      if (p.cb != NULL) tdm_conn_close(p.cb);
      p.cb = NULL;
#endif
      while (!__atomic_load_n(&p.s->ready, __ATOMIC_ACQUIRE))
        sched_yield();
      int64_t t0 = tdm_clock_now();
      r = pong_side(&p, true);
      *ns = (double)(tdm_clock_now() - t0) / (double)iters;
      if (r != 0) {
        fprintf(stderr, "tandem bench: ping-pong, side A: %s\n", tdm_strerror(r));
        kill(b.pid, SIGKILL);
      }
      int j = bench_party_join(&b);
      if (r == 0) r = j;
    }
    if (pinned && p.pin) sched_setaffinity(0, sizeof saved, &saved);
  }
  pong_close(&p);
  bench_shared_free(p.s, sizeof(pong_state));
  return r;
}

/* ---- The suite ------------------------------------------------------------------------------ */

/* bench_measure() of a workload that shows rates: bytes_per_op > 0 for bytes per second, 0 for
 * messages per second, -1 for none; goals[i] is impls[i]'s goal (0: none; goals NULL: none). */
static void measure(bench_ctx *ctx, const char *key, int64_t iters, int64_t quick_iters,
                    int64_t bytes_per_op, const bench_impl *impls, const double *goals, size_t n) {
  bench_workload w = { .iters = iters,
                       .quick_iters = quick_iters,
                       .peer_script = PEERS,
                       .rate = bytes_per_op > 0    ? BENCH_RATE_BYTES
                               : bytes_per_op == 0 ? BENCH_RATE_MSGS
                                                   : BENCH_RATE_NONE,
                       .bytes_per_op = bytes_per_op > 0 ? bytes_per_op : 0,
                       .n_impls = (int)n };
  snprintf(w.key, sizeof w.key, "%s", key);
  memcpy(w.impls, impls, n * sizeof *impls);
  if (goals != NULL) memcpy(w.goal, goals, n * sizeof *goals);
  bench_run(ctx, &w);
}

#define MEASURE(ctx, key, iters, quick_iters, bytes_per_op, impls, goals)         \
  measure((ctx), (key), (iters), (quick_iters), (bytes_per_op), (impls), (goals), \
          BENCH_COUNT(impls))

static const char *const keys[] = { "queue/64b/1p1c", "queue/64b/2p2c", "queue/1mib/1p1c",
                                    "queue/ping-pong/procs", "queue/ping-pong/procs-unpinned" };

#ifdef TDM_BENCH_HAVE_CONN
#define CONN_NAME "tdm_pipe (tdm_conn_send/recv_into)"
#else
#define CONN_NAME "tdm_pipe (tdm_conn: not in this build)"
#endif

/* The ping-pong of every channel, its two processes pinned to two CPUs or placed by the
 * scheduler. */
static void pong_suite(bench_ctx *ctx, const char *key, bool pin) {
  static chan_arg args[2][6];
  enum chan_kind kinds[6] = { CH_QUEUE, CH_CONN, CH_PIPE, CH_STREAM, CH_MQ, CH_SPIN };
  for (int i = 0; i < 6; i++)
    args[pin][i] = (chan_arg){ kinds[i], 1, 1, SMALL, pin };
  const bench_impl pong[] = {
    { "tdm_queue pair", run_pong, &args[pin][0] },
    { CONN_NAME, run_pong, &args[pin][1] },
    { "pipe pair", run_pong, &args[pin][2] },
    { "socketpair SOCK_STREAM", run_pong, &args[pin][3] },
    { mq_name_64, run_pong, &args[pin][4] },
    { "two flags in shared memory, spinning (floor)", run_pong, &args[pin][5] },
  };
  /* Within 3x of the spinning floor when the peer is awake (pinned: each side has a CPU). */
  const double goals[] = { 0, 0, 0, 0, 0, pin ? 1 / 3.0 : 0 };
  MEASURE(ctx, key, 10000, 2000, -1, pong, goals);
}

void bench_queue_suite(bench_ctx *ctx) {
  bool any = false;
  for (size_t i = 0; i < BENCH_COUNT(keys); i++)
    any = any || bench_selected(ctx, keys[i]);
  static bool probed;
  if (any && !probed) {
    mq_probe();
    cpus_probe();
    probed = true;
  }

  /* Small messages: 1 producer + 1 consumer (pinned), then 2 + 2. Iterations: messages. */
  static const chan_arg q11 = { CH_QUEUE, 1, 1, SMALL, true },
                        q22 = { CH_QUEUE, 2, 2, SMALL, false };
  static const chan_arg p11 = { CH_PIPE, 1, 1, SMALL, true }, p22 = { CH_PIPE, 2, 2, SMALL, false };
  static const chan_arg s11 = { CH_STREAM, 1, 1, SMALL, true },
                        s22 = { CH_STREAM, 2, 2, SMALL, false };
  static const chan_arg k11 = { CH_SEQPACKET, 1, 1, SMALL, true },
                        k22 = { CH_SEQPACKET, 2, 2, SMALL, false };
  static const chan_arg m11 = { CH_MQ, 1, 1, SMALL, true }, m22 = { CH_MQ, 2, 2, SMALL, false };
  static const chan_arg f11 = { CH_SPIN, 1, 1, SMALL, true }, f22 = { CH_SPIN, 2, 2, SMALL, false };
  const bench_impl small11[] = {
    { "tdm_queue", run_stream, &q11 },
    { "pipe", run_stream, &p11 },
    { "socketpair SOCK_STREAM", run_stream, &s11 },
    { "socketpair SOCK_SEQPACKET", run_stream, &k11 },
    { mq_name_64, run_stream, &m11 },
    { "spinning SPSC ring in shared memory (floor)", run_stream, &f11 },
  };
  const bench_impl small22[] = {
    { "tdm_queue", run_stream, &q22 },
    { "pipe", run_stream, &p22 },
    { "socketpair SOCK_STREAM", run_stream, &s22 },
    { "socketpair SOCK_SEQPACKET", run_stream, &k22 },
    { mq_name_64, run_stream, &m22 },
    { "2 spinning SPSC rings, one per pair (floor)", run_stream, &f22 },
  };
  /* Small messages: at least 5x a pipe (and 100x CPython's Queue: the peer script's goal). */
  static const double small_goals[] = { 0, 5, 0, 0, 0, 0 };
  MEASURE(ctx, keys[0], 200000, 20000, 0, small11, small_goals);
  MEASURE(ctx, keys[1], 200000, 20000, 0, small22, small_goals);

  /* 1 MiB messages, pinned: iterations are messages (MiB) per run. */
  static const chan_arg ql = { CH_QUEUE, 1, 1, LARGE, true }, pl = { CH_PIPE, 1, 1, LARGE, true };
  static const chan_arg bl = { CH_PIPE_BIG, 1, 1, LARGE, true };
  static const chan_arg sl = { CH_STREAM, 1, 1, LARGE, true };
  static const chan_arg ml = { CH_MEMCPY, 1, 1, LARGE, false };
  static const bench_impl large[] = {
    { "tdm_queue", run_stream, &ql },
    { "pipe", run_stream, &pl },
    { "pipe, 1 MiB buffer (F_SETPIPE_SZ)", run_stream, &bl },
    { "socketpair SOCK_STREAM", run_stream, &sl },
    { "memcpy 1 MiB, one thread", run_memcpy, &ml },
  };
  /* At least half of memcpy's bandwidth: memcpy's time / tandem's at least 0.5. */
  static const double large_goals[] = { 0, 0, 0, 0, 0.5 };
  MEASURE(ctx, keys[2], 1000, 200, (int64_t)LARGE, large, large_goals);

  /* Ping-pong: round trips per run. */
  pong_suite(ctx, keys[3], true);
  pong_suite(ctx, keys[4], false);
}
