/*
 * queue.c: a multi-producer, multi-consumer message queue in shared memory that survives the
 * death of the processes that use it.
 *
 * Layout. A queue owns one segment:
 *
 *   0            the header: geometry, counters, the registration lock; head, tail and the
 *                wait words each on a cache line of their own
 *   procs_off    the participant table: one 64-byte entry per process using the queue
 *   ring_off     the ring: `capacity` slots of `slot_size` bytes (a multiple of 64)
 *   arena_off    an arena (shm.h) for messages longer than a slot's payload
 *
 * The ring. Positions are 63-bit counters: `tail` is the next position a put commits, `head`
 * the next a get claims; position p lives in slot p % capacity. Each slot has one 64-bit state
 * word, SEQ(48) | OWNER(14) | KIND(2), where SEQ is the position (mod 2^48) the state is about
 * and OWNER the participant that holds the slot:
 *
 *   EMPTY(p)       free for the put of position p
 *   WRITING(p, o)  claimed by o's put of position p, message being copied in
 *   FULL(p)        message p ready
 *   READING(p, o)  claimed by o's get of position p, message being copied out
 *
 * A put claims its slot with a CAS EMPTY(p) -> WRITING(p, me) and then commits position p by
 * moving tail from p to p+1 (Vyukov's ring, with the slot claimed before the counter). Anyone
 * who finds a claimed slot at tail moves tail on for its owner, so a put that dies between its
 * two CASes stalls nobody. A get claims with FULL(p) -> READING(p, me) and moves head the same
 * way; it releases the slot as EMPTY(p + capacity). Every transition changes SEQ or KIND and
 * no state ever comes back (SEQ would need 2^48 positions), so a CAS that succeeds saw the
 * slot unchanged since it read it, and nothing a slot holds (length, offset) can be read from
 * the wrong message.
 *
 * Shutdown sets bit 63 of tail, which freezes it: no position commits any more. A put that
 * claimed a slot but then cannot commit gives the slot back; a get that finds head equal to a
 * frozen tail has reached the end.
 *
 * Large messages are copied into an arena block before the put claims a slot (a put that held
 * a slot while it waited for arena space could wait for blocks that messages behind it hold).
 * The block starts with a ticket, a number no other block ever carries, and is freed only
 * through tdm__arena_free_tagged(), which checks that ticket: recovery can free a block that
 * the normal path may already have freed, without ever freeing someone else's.
 *
 * Dead processes. Each process registers in the participant table (pid and start time, which
 * name the process for good), and every slot it holds names its entry. A waiter that has
 * waited a while sweeps the table: for each entry whose process has ended it recovers the slots
 * the process held (WRITING: the message is lost and the slot published as a skip, which gets
 * pass over; READING: the message is lost and the slot freed) and frees the blocks the process
 * was filling (recorded in its entry's pending cells), then frees the entry. Recovery is CASes
 * and tagged frees, all idempotent, so a sweeper that dies in the middle is simply followed by
 * another.
 *
 * Waiting. A get that finds nothing spins for about a sleep's cost, then registers in
 * get_waiters, re-checks and sleeps on the get_epoch futex; a put that publishes reads
 * get_waiters (both sides sequentially consistent) and makes a system call only when someone
 * sleeps, and only when no woken getter is still on its way (get_pending): the woken getter
 * passes the wake on if more messages wait, so a burst of puts costs one wake-up. Puts wait
 * the same way on put_epoch for room. Sleeps are cut into slices so that a waiter notices a
 * dead process, which wakes nobody.
 */
#include <sched.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "base/internal.h"
#include "platform/platform.h"
#include "process/process.h"
#include "shm/shm.h"
#include "sync/sync.h"
#include "tandem/queue.h"
#include "tandem/shm.h"

#define QUEUE_MAGIC  TDM__MAGIC('T', 'Q', 'U', 'E')
#define QUEUE_LAYOUT 1

#define LINE 64

/* Slot state words. */
#define SEQ_BITS   48
#define SEQ_MASK   ((UINT64_C(1) << SEQ_BITS) - 1)
#define OWNER_MASK UINT64_C(0x3fff)
enum { EMPTY, WRITING, FULL, READING };
#define MK(seq, owner, kind) \
  (((uint64_t)(seq)&SEQ_MASK) << 16 | ((uint64_t)(owner)&OWNER_MASK) << 2 | (uint64_t)(kind))
#define SEQ_OF(st)   ((st) >> 16)
#define OWNER_OF(st) ((unsigned)(((st) >> 2) & OWNER_MASK))
#define KIND_OF(st)  ((unsigned)((st)&3))

#define CLOSED    (UINT64_C(1) << 63)
#define POS(t)    ((t) & ~CLOSED)
#define SKIP      UINT64_MAX /* slot length of a message lost with its writer */
#define BLOCK_HDR 16u        /* the ticket, padded: payloads stay 16-byte aligned */

#define MAX_PROCS     4095u
#define PENDING_CELLS 3    /* large puts in flight at once per process */
#define RESERVED      1    /* a pending cell taken, its block not yet allocated */
#define SPIN_ALONE_NS 2000 /* a waiter spins this long before it starts to yield */
#define SWEEP_FIRST   TDM_MS(10)
#define SWEEP_EVERY   TDM_MS(100)

/* Defaults. */
#define DEF_CAPACITY    1024u
#define DEF_MAX_MESSAGE (UINT64_C(1) << 20)
#define DEF_PAYLOAD     96u
#define DEF_PROCS       256u

/* A participant: a process that uses the queue. Fields change under the registration lock. */
struct part {
  int32_t pid; /* 0: a free entry */
  uint32_t reserved_;
  uint64_t start; /* the process's start time (tdm__proc_start_time) */
  struct {
    uint64_t ticket; /* the ticket of the block, written before the allocation */
    uint64_t off;    /* 0 free, RESERVED, or the offset of a block being filled */
  } pending[PENDING_CELLS];
};
_Static_assert(sizeof(struct part) == LINE, "one line per participant");

/* A slot's fixed part; the inline payload follows. */
struct slot {
  uint64_t state;
  uint64_t len;    /* message length, or SKIP */
  uint64_t off;    /* arena block of a large message, else 0 */
  uint64_t ticket; /* its ticket */
};
#define SLOT_HDR sizeof(struct slot)

struct qhdr {
  uint32_t magic_;
  uint16_t version_;
  uint16_t flags;
  uint32_t slot_size;
  uint32_t max_procs;
  uint64_t capacity; /* a power of two */
  uint64_t max_message;
  uint64_t procs_off, ring_off, arena_off, size;
  tdm_lock reg; /* guards the participant table and sweeps */
  uint64_t lost, recoveries, done, tickets;
  _Alignas(LINE) uint32_t closed; /* set by shutdown before it freezes tail: getters and
                                     waiters read this line, which nothing else writes */
  _Alignas(LINE) uint64_t tail;
  _Alignas(LINE) uint64_t head;
  _Alignas(LINE) uint32_t get_epoch; /* bumped when a message may be there, or at shutdown */
  uint32_t get_waiters;              /* getters asleep on get_epoch */
  uint32_t get_pending;              /* 1: a getter was woken and has not looked yet */
  uint32_t ready_waiters;            /* tdm_queue_wait_ready() callers asleep on it */
  _Alignas(LINE) uint32_t put_epoch; /* bumped when a slot or arena space was freed */
  uint32_t put_waiters;
  uint32_t put_pending;
  _Alignas(LINE) uint32_t join_epoch; /* bumped when the unfinished count reaches 0 */
  uint32_t join_waiters;
};

struct tdm_queue {
  tdm_shm *shm;
  struct qhdr *h;
  struct slot *ring; /* the first slot */
  tdm_arena *arena;  /* NULL when every message fits in a slot */
  uint64_t mask, payload;
  pid_t pid;     /* the process registered as `me`; another pid means a fork child */
  unsigned me;   /* its participant number, 1..max_procs */
  int64_t swept; /* when this handle last swept (monotonic ns) */
};

/* ---- Helpers --------------------------------------------------------------------------------- */

static inline struct slot *slot_at(const tdm_queue *q, uint64_t pos) {
  return (struct slot *)(void *)((char *)q->ring + (pos & q->mask) * q->h->slot_size);
}

static inline struct part *part_at(const tdm_queue *q, unsigned i) {
  return (struct part *)(void *)((char *)q->h + q->h->procs_off) + (i - 1);
}

static inline uint64_t seq(uint64_t pos) {
  return pos & SEQ_MASK;
}

static inline bool cas(uint64_t *w, uint64_t *expect, uint64_t v) {
  return __atomic_compare_exchange_n(w, expect, v, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

static inline void *block_ptr(tdm_queue *q, uint64_t off) {
  return (char *)tdm_arena_ptr(q->arena, off) + BLOCK_HDR;
}

/*
 * Wakes the sleepers on `epoch` if `waiters` says there are any. The caller has just published
 * its change with a sequentially consistent store or read-modify-write, and a waiter counts
 * itself in `waiters` (seq_cst) before it looks (seq_cst): one of the two sees the other (no
 * fence: ThreadSanitizer does not model fences, and on x86 these are the same instructions).
 */
static void wake(uint32_t *epoch, const uint32_t *waiters, int n) {
  if (__atomic_load_n(waiters, __ATOMIC_SEQ_CST) == 0) return;
  __atomic_fetch_add(epoch, 1, __ATOMIC_SEQ_CST);
  tdm__futex_wake(epoch, n, true);
}

/*
 * Wakes one sleeper on `epoch`, unless none sleeps or one was woken already and has not looked
 * yet (*pending): a burst of puts while a getter sleeps makes one system call, not one each.
 * The woken waiter, once it has taken its message (or put its own), wakes the next if more
 * are there, and every waiter clears *pending when it counts itself in and when it wakes, so a
 * wake is never held back by one that went to nobody.
 */
static void wake_one(uint32_t *epoch, const uint32_t *waiters, uint32_t *pending) {
  if (__atomic_load_n(waiters, __ATOMIC_SEQ_CST) == 0) return;
  if (__atomic_exchange_n(pending, 1, __ATOMIC_SEQ_CST) != 0) return;
  __atomic_fetch_add(epoch, 1, __ATOMIC_SEQ_CST);
  tdm__futex_wake(epoch, 1, true);
}

/*
 * After a put: tdm_queue_wait_ready() callers share get_epoch with getters and take nothing, so
 * while any sleeps everyone is woken (one of them may be the getter the message needs).
 */
static void wake_getters(tdm_queue *q) {
  struct qhdr *h = q->h;
  if (__atomic_load_n(&h->ready_waiters, __ATOMIC_SEQ_CST) != 0)
    wake(&h->get_epoch, &h->ready_waiters, INT32_MAX);
  else
    wake_one(&h->get_epoch, &h->get_waiters, &h->get_pending);
}

static uint64_t unfinished(struct qhdr *h) {
  uint64_t done = __atomic_load_n(&h->done, __ATOMIC_SEQ_CST);
  uint64_t lost = __atomic_load_n(&h->lost, __ATOMIC_SEQ_CST);
  uint64_t put = POS(__atomic_load_n(&h->tail, __ATOMIC_SEQ_CST));
  return put > done + lost ? put - done - lost : 0;
}

/* Counts a message lost with a dead process; wakes joiners when nothing is left unfinished. */
static void count_lost(tdm_queue *q) {
  __atomic_fetch_add(&q->h->lost, 1, __ATOMIC_SEQ_CST);
  if ((q->h->flags & TDM_QUEUE_JOINABLE) && unfinished(q->h) == 0)
    wake(&q->h->join_epoch, &q->h->join_waiters, INT32_MAX);
}

/* ---- Participants and recovery --------------------------------------------------------------- */

static int lock_reg(struct qhdr *h) {
  int r = tdm__lock_acquire(&h->reg, TDM_FOREVER);
  /* A process died holding it: everything done under it is idempotent (see above). */
  return r == -EOWNERDEAD ? 0 : r;
}

static bool part_alive(const struct part *p) {
  uint64_t start;
  int r = tdm__proc_start_time(p->pid, &start);
  return r != -ESRCH && (r < 0 || start == p->start);
}

/*
 * Recovers the slot s, which `st` showed held by a process that has ended. `me` becomes its
 * holder for the time of the recovery.
 */
static void recover_slot(tdm_queue *q, struct slot *s, uint64_t st) {
  struct qhdr *h = q->h;
  uint64_t sq = SEQ_OF(st);
  unsigned kind = KIND_OF(st);
  if (kind != WRITING && kind != READING) return;
  if (!cas(&s->state, &st, MK(sq, q->me, kind))) return;
  tdm__tsan_acquire(h);

  uint64_t off = __atomic_load_n(&s->off, __ATOMIC_RELAXED);
  if (off != 0)
    tdm__arena_free_tagged(q->arena, off, __atomic_load_n(&s->ticket, __ATOMIC_RELAXED));
  __atomic_store_n(&s->off, 0, __ATOMIC_RELAXED);
  __atomic_fetch_add(&h->recoveries, 1, __ATOMIC_RELAXED);

  if (kind == WRITING) {
    /* Was the position committed? Find it from the tail (at most one lap behind). */
    uint64_t t = __atomic_load_n(&h->tail, __ATOMIC_ACQUIRE);
    uint64_t pos = POS(t) - ((seq(POS(t)) - sq) & SEQ_MASK);
    if (pos == POS(t)) {
      uint64_t want = t;
      if ((t & CLOSED) || (!cas(&h->tail, &want, t + 1) && (want & CLOSED) && POS(want) == pos)) {
        /* Never committed, and never will be: the slot is simply free again. */
        __atomic_store_n(&s->state, MK(sq, 0, EMPTY), __ATOMIC_SEQ_CST);
        return;
      }
    }
    __atomic_store_n(&s->len, SKIP, __ATOMIC_RELAXED);
    count_lost(q);
    tdm__tsan_release(h);
    __atomic_store_n(&s->state, MK(sq, 0, FULL), __ATOMIC_SEQ_CST);
    wake_getters(q);
  } else {
    uint64_t hd = __atomic_load_n(&h->head, __ATOMIC_ACQUIRE);
    if (seq(hd) == sq) cas(&h->head, &hd, hd + 1);
    if (__atomic_load_n(&s->len, __ATOMIC_RELAXED) != SKIP) count_lost(q);
    tdm__tsan_release(h);
    __atomic_store_n(&s->state, MK(sq + h->capacity, 0, EMPTY), __ATOMIC_SEQ_CST);
    wake(&h->put_epoch, &h->put_waiters, INT32_MAX);
  }
}

/* Recovers what participant i, whose process has ended, held; then frees its entry. */
static void recover_part(tdm_queue *q, unsigned i) {
  struct qhdr *h = q->h;
  for (uint64_t k = 0; k < h->capacity; k++) {
    struct slot *s = slot_at(q, k);
    uint64_t st = __atomic_load_n(&s->state, __ATOMIC_ACQUIRE);
    if (OWNER_OF(st) == i) recover_slot(q, s, st);
  }
  struct part *p = part_at(q, i);
  for (int c = 0; c < PENDING_CELLS; c++) {
    uint64_t off = __atomic_load_n(&p->pending[c].off, __ATOMIC_ACQUIRE);
    bool freed = off > RESERVED && tdm__arena_free_tagged(q->arena, off, p->pending[c].ticket);
    __atomic_store_n(&p->pending[c].off, 0, __ATOMIC_SEQ_CST);
    if (freed) wake(&h->put_epoch, &h->put_waiters, INT32_MAX);
  }
  __atomic_store_n(&p->pid, 0, __ATOMIC_RELEASE);
}

/* Recovers from every participant whose process has ended (the registration lock held). */
static unsigned sweep_locked(tdm_queue *q) {
  unsigned freed = 0;
  for (unsigned i = 1; i <= q->h->max_procs; i++) {
    struct part *p = part_at(q, i);
    if (p->pid == 0 || (p->pid == q->pid && i == q->me) || part_alive(p)) continue;
    recover_part(q, i);
    freed++;
  }
  return freed;
}

/* A waiter's sweep: at most one process at a time sweeps; the others go back to waiting. */
static void sweep(tdm_queue *q) {
  int r = tdm__lock_acquire(&q->h->reg, 0);
  if (r != 0 && r != -EOWNERDEAD) return;
  sweep_locked(q);
  tdm__lock_release(&q->h->reg);
}

/* Registers the calling process (the registration lock held). 0 or -EUSERS, -ENOENT. */
static int register_locked(tdm_queue *q, pid_t pid) {
  uint64_t start;
  int r = tdm__proc_start_time(0, &start);
  if (r < 0) return r;
  for (int round = 0; round < 2; round++) {
    for (unsigned i = 1; i <= q->h->max_procs; i++) {
      struct part *p = part_at(q, i);
      if (p->pid != 0) continue;
      memset(p->pending, 0, sizeof p->pending);
      p->start = start;
      __atomic_store_n(&p->pid, pid, __ATOMIC_RELEASE);
      q->me = i;
      __atomic_store_n(&q->pid, pid, __ATOMIC_RELEASE);
      return 0;
    }
    if (sweep_locked(q) == 0) break;
  }
  return -EUSERS;
}

/* Makes sure the calling process is registered (a fork child registers on first use). */
static int enter(tdm_queue *q) {
  pid_t pid = tdm__self_pid();
  if (__builtin_expect(__atomic_load_n(&q->pid, __ATOMIC_ACQUIRE) == pid, 1)) return 0;
  int r = lock_reg(q->h);
  if (r < 0) return r;
  if (__atomic_load_n(&q->pid, __ATOMIC_ACQUIRE) != pid) r = register_locked(q, pid);
  tdm__lock_release(&q->h->reg);
  return r;
}

/* ---- Waiting --------------------------------------------------------------------------------- */

/*
 * One round of waiting for `epoch` to move. *since is when the caller started to wait: 0 on the
 * first round, which only spins (a caller that sets it first skips the spin). Later rounds
 * announce the waiter, re-check `ready` (true: no sleep) and sleep until woken, the deadline or
 * the next sweep. Returns -ETIMEDOUT once the deadline has passed, else 0 (look again).
 */
typedef bool (*ready_fn)(tdm_queue *q, const void *arg);

static int park(tdm_queue *q, uint32_t *epoch, uint32_t *waiters, uint32_t *pending, ready_fn ready,
                const void *arg, int64_t deadline, int64_t *since) {
  int64_t now = tdm_clock_now();
  if (*since == 0) {
    /*
     * First, spin for about what a sleep and a wake-up would cost. After SPIN_ALONE_NS the
     * spin yields the CPU between looks: when the other side waits for this same CPU (two
     * processes on one core, or more processes than cores), spinning on would only keep it
     * from running, and a yield lets it answer at once.
     */
    *since = now;
    for (unsigned i = 1; !ready(q, arg); i++) {
      tdm__cpu_relax();
      if ((i & 7) != 0) continue;
      int64_t t = tdm_clock_now();
      if (t - now >= TDM__WAIT_SPIN_NS || t >= deadline) break;
      if (t - now >= SPIN_ALONE_NS) sched_yield();
    }
    return tdm_clock_now() >= deadline && !ready(q, arg) ? -ETIMEDOUT : 0;
  }
  if (now >= deadline) return -ETIMEDOUT;
  if (now - *since >= SWEEP_FIRST &&
      now - __atomic_load_n(&q->swept, __ATOMIC_RELAXED) >= SWEEP_EVERY) {
    __atomic_store_n(&q->swept, now, __ATOMIC_RELAXED);
    sweep(q);
    if (ready(q, arg)) return 0;
  }
  int64_t until = now + (now - *since < SWEEP_FIRST ? SWEEP_FIRST : SWEEP_EVERY);
  if (until > deadline) until = deadline;
  __atomic_fetch_add(waiters, 1, __ATOMIC_SEQ_CST);
  if (pending != NULL) __atomic_store_n(pending, 0, __ATOMIC_SEQ_CST);
  uint32_t e = __atomic_load_n(epoch, __ATOMIC_SEQ_CST);
  if (!ready(q, arg)) tdm__futex_wait(epoch, e, until, true);
  /* Woken (or not): this waiter is about to look, so the next wake may go out. */
  if (pending != NULL) __atomic_store_n(pending, 0, __ATOMIC_SEQ_CST);
  __atomic_fetch_sub(waiters, 1, __ATOMIC_RELAXED);
  return 0;
}

/* Is there something at head for a getter: a message, a skip, or the end? */
static bool can_get(tdm_queue *q, const void *arg) {
  (void)arg;
  uint64_t hd = __atomic_load_n(&q->h->head, __ATOMIC_SEQ_CST);
  uint64_t st = __atomic_load_n(&slot_at(q, hd)->state, __ATOMIC_SEQ_CST);
  if (SEQ_OF(st) != seq(hd) || KIND_OF(st) == FULL || KIND_OF(st) == READING) return true;
  if (!__atomic_load_n(&q->h->closed, __ATOMIC_SEQ_CST)) return false;
  uint64_t t = __atomic_load_n(&q->h->tail, __ATOMIC_SEQ_CST);
  return (t & CLOSED) && POS(t) == hd;
}

/* Is there room at tail for a putter (or has the queue been shut down)? */
static bool can_put(tdm_queue *q, const void *arg) {
  (void)arg;
  uint64_t t = __atomic_load_n(&q->h->tail, __ATOMIC_SEQ_CST);
  if (t & CLOSED) return true;
  uint64_t st = __atomic_load_n(&slot_at(q, t)->state, __ATOMIC_SEQ_CST);
  return SEQ_OF(st) != seq(t - q->h->capacity);
}

/* Could an arena block of `*(size_t *)arg` bytes be allocated now? */
static bool can_alloc(tdm_queue *q, const void *arg) {
  return tdm_arena_largest(q->arena) >= *(const size_t *)arg ||
         __atomic_load_n(&q->h->closed, __ATOMIC_ACQUIRE);
}

/* ---- Put ------------------------------------------------------------------------------------- */

/* Takes a pending cell of the caller's entry for a large put; NULL when all are busy. */
static uint64_t *take_cell(tdm_queue *q, uint64_t **ticket) {
  struct part *p = part_at(q, q->me);
  for (int c = 0; c < PENDING_CELLS; c++) {
    uint64_t zero = 0;
    if (__atomic_load_n(&p->pending[c].off, __ATOMIC_RELAXED) == 0 &&
        cas(&p->pending[c].off, &zero, RESERVED)) {
      *ticket = &p->pending[c].ticket;
      return &p->pending[c].off;
    }
  }
  return NULL;
}

/*
 * Copies a large message into a new arena block, waiting for space. Returns 0 with the block
 * recorded in *cell (a pending cell of the caller) and its ticket in *ticket_out.
 */
static int fill_block(tdm_queue *q, const void *msg, size_t len, int64_t deadline, int64_t timeout,
                      uint64_t **cell_out, uint64_t *ticket_out) {
  struct qhdr *h = q->h;
  uint64_t *tcell = NULL, *cell;
  /* No spin: looking for space takes the arena's lock, which a spin would keep from the
   * getters that free it (and a large message costs more to copy than a sleep). */
  int64_t since = tdm_clock_now();
  while ((cell = take_cell(q, &tcell)) == NULL) {
    /* More large puts in flight in this process than it has cells: a short nap. */
    if (tdm_clock_now() >= deadline) return -ETIMEDOUT;
    usleep(50);
  }
  uint64_t ticket = __atomic_add_fetch(&h->tickets, 1, __ATOMIC_RELAXED);
  __atomic_store_n(tcell, ticket, __ATOMIC_RELAXED);
  size_t need = BLOCK_HDR + len;
  for (;;) {
    int r = tdm__arena_alloc_tagged(q->arena, need, ticket, cell);
    if (r == 0) break;
    if (r != -ENOMEM) {
      __atomic_store_n(cell, 0, __ATOMIC_RELEASE);
      return r;
    }
    if (__atomic_load_n(&h->closed, __ATOMIC_ACQUIRE))
      r = -EPIPE;
    else if (timeout == 0)
      r = -ETIMEDOUT;
    else
      r = park(q, &h->put_epoch, &h->put_waiters, &h->put_pending, can_alloc, &need, deadline,
               &since);
    if (r < 0) {
      __atomic_store_n(cell, 0, __ATOMIC_RELEASE);
      return r;
    }
  }
  tdm__tsan_acquire(h); /* the block may have been freed by another process */
  memcpy(block_ptr(q, __atomic_load_n(cell, __ATOMIC_ACQUIRE)), msg, len);
  *cell_out = cell;
  *ticket_out = ticket;
  return 0;
}

/* Gives a filled block back (a put that failed after filling it). */
static void drop_block(tdm_queue *q, uint64_t *cell, uint64_t ticket) {
  tdm__arena_free_tagged(q->arena, *cell, ticket);
  __atomic_store_n(cell, 0, __ATOMIC_SEQ_CST);
  wake(&q->h->put_epoch, &q->h->put_waiters, INT32_MAX);
}

/*
 * Claims and commits the next position. Returns 0 with the slot (WRITING, ours) in *out;
 * -EPIPE after shutdown; -EAGAIN when the ring is full (also after a recovery, to look again).
 */
static int claim_put(tdm_queue *q, struct slot **out) {
  struct qhdr *h = q->h;
  for (;;) {
    uint64_t t = __atomic_load_n(&h->tail, __ATOMIC_ACQUIRE);
    if (t & CLOSED) return -EPIPE;
    struct slot *s = slot_at(q, t);
    /* Claim without a look first (one cache-line transfer fewer); a failed claim shows the
     * state. */
    uint64_t st = MK(t, 0, EMPTY);
    if (cas(&s->state, &st, MK(t, q->me, WRITING))) {
      uint64_t want = t;
      if (!cas(&h->tail, &want, t + 1) && (want & CLOSED) && POS(want) == t) {
        /* Shut down before the position could commit: give the slot back. */
        __atomic_store_n(&s->state, MK(t, 0, EMPTY), __ATOMIC_RELEASE);
        return -EPIPE;
      }
      *out = s;
      return 0;
    }
    if (SEQ_OF(st) == seq(t)) {
      uint64_t want = t; /* claimed by another put that has not committed yet: commit it */
      cas(&h->tail, &want, t + 1);
      continue;
    }
    if (SEQ_OF(st) == seq(t - h->capacity)) return -EAGAIN; /* the ring is full */
    /* Our view of tail is stale: look again. */
  }
}

int tdm_queue_put(tdm_queue *q, const void *msg, size_t len, int64_t timeout) {
  TDM__REQUIRE(q != NULL && (msg != NULL || len == 0), "tdm_queue_put: NULL queue or message");
  struct qhdr *h = q->h;
  if ((uint64_t)len > h->max_message) return -EMSGSIZE;
  int r = enter(q);
  if (r < 0) return r;
  if (__atomic_load_n(&h->closed, __ATOMIC_ACQUIRE)) return -EPIPE;
  int64_t deadline = tdm__deadline(timeout);

  uint64_t *cell = NULL, ticket = 0;
  if (len > q->payload) {
    r = fill_block(q, msg, len, deadline, timeout, &cell, &ticket);
    if (r < 0) return r;
  }

  struct slot *s;
  int64_t since = 0;
  while ((r = claim_put(q, &s)) == -EAGAIN) {
    r = timeout == 0 ? -ETIMEDOUT
                     : park(q, &h->put_epoch, &h->put_waiters, &h->put_pending, can_put, NULL,
                            deadline, &since);
    if (r < 0) break;
  }
  if (r < 0) {
    if (cell != NULL) drop_block(q, cell, ticket);
    return r;
  }

  tdm__tsan_acquire(h); /* the slot was last used by a getter, maybe in another process */
  if (cell != NULL) {
    /* The slot takes the block over from the pending cell before the message is published. */
    __atomic_store_n(&s->ticket, ticket, __ATOMIC_RELAXED);
    __atomic_store_n(&s->off, __atomic_load_n(cell, __ATOMIC_ACQUIRE), __ATOMIC_RELEASE);
    __atomic_store_n(cell, 0, __ATOMIC_RELEASE);
  } else if (len != 0) {
    memcpy(s + 1, msg, len);
  }
  __atomic_store_n(&s->len, (uint64_t)len, __ATOMIC_RELAXED);
  tdm__tsan_release(h);
  uint64_t st = __atomic_load_n(&s->state, __ATOMIC_RELAXED);
  __atomic_store_n(&s->state, MK(SEQ_OF(st), 0, FULL), __ATOMIC_SEQ_CST);
  wake_getters(q);
  /* A woken putter passes the wake on while there is room (see wake_one()). */
  if (__atomic_load_n(&h->put_waiters, __ATOMIC_SEQ_CST) != 0 && can_put(q, NULL))
    wake_one(&h->put_epoch, &h->put_waiters, &h->put_pending);
  /* The next put will most likely write the next slot: ask for its lines now, while the
   * caller goes on, so that its claim and copy find them in this core's cache. */
  struct slot *next = slot_at(q, SEQ_OF(st) + 1);
  __builtin_prefetch(next, 1, 3);
  __builtin_prefetch((char *)next + LINE, 1, 3);
  return 0;
}

/* ---- Get ------------------------------------------------------------------------------------- */

/* Where a get puts the message: the caller's buffer, or one it allocates. */
struct sink {
  void *buf;
  size_t cap;
  bool alloc; /* tdm_queue_get(): buf/cap may be replaced by a larger allocation */
};

/* Releases a slot a get holds: EMPTY for the position one lap on. */
static void release_slot(tdm_queue *q, struct slot *s, uint64_t sq) {
  tdm__tsan_release(q->h);
  __atomic_store_n(&s->off, 0, __ATOMIC_RELAXED);
  __atomic_store_n(&s->state, MK(sq + q->h->capacity, 0, EMPTY), __ATOMIC_SEQ_CST);
  wake_one(&q->h->put_epoch, &q->h->put_waiters, &q->h->put_pending);
}

/*
 * Takes the message at head into the sink. Returns 0 with its length in *len; -EAGAIN when
 * there is none yet; TDM_EEOF at the end; -EMSGSIZE (with *len) or -ENOMEM from the sink.
 */
static int try_get(tdm_queue *q, struct sink *k, size_t *len) {
  struct qhdr *h = q->h;
  /* A sink that holds any message may claim without a look first (one cache-line transfer
   * fewer): the claim fails, and shows the state, when no message is there. */
  bool blind = k->cap >= h->max_message;
  for (;;) {
    uint64_t hd = __atomic_load_n(&h->head, __ATOMIC_ACQUIRE);
    struct slot *s = slot_at(q, hd);
    uint64_t st = MK(hd, 0, FULL), n = 0;
    bool claimed = blind && cas(&s->state, &st, MK(hd, q->me, READING));
    if (!claimed && !blind) st = __atomic_load_n(&s->state, __ATOMIC_ACQUIRE);
    if (!claimed && st == MK(hd, 0, FULL)) {
      n = __atomic_load_n(&s->len, __ATOMIC_RELAXED);
      if (n != SKIP && n > k->cap) {
        if (!k->alloc) {
          *len = (size_t)n;
          return -EMSGSIZE;
        }
        void *b = tdm__alloc((size_t)n);
        if (b == NULL) return -ENOMEM;
        tdm__free(k->buf);
        k->buf = b;
        k->cap = (size_t)n;
      }
      claimed = cas(&s->state, &st, MK(hd, q->me, READING));
      if (!claimed) continue;
    }
    if (claimed) {
      uint64_t want = hd;
      cas(&h->head, &want, hd + 1);
      tdm__tsan_acquire(h); /* the message may come from a thread through another process */
      n = __atomic_load_n(&s->len, __ATOMIC_RELAXED);
      if (n == SKIP) {
        release_slot(q, s, seq(hd));
        continue;
      }
      uint64_t off = __atomic_load_n(&s->off, __ATOMIC_ACQUIRE);
      if (off == 0) {
        if (n != 0) memcpy(k->buf, s + 1, (size_t)n);
      } else {
        memcpy(k->buf, block_ptr(q, off), (size_t)n);
        tdm__arena_free_tagged(q->arena, off, __atomic_load_n(&s->ticket, __ATOMIC_RELAXED));
      }
      release_slot(q, s, seq(hd));
      /* Arena space may let several putters on: wake them all (slots go one by one). */
      if (off != 0) wake(&h->put_epoch, &h->put_waiters, INT32_MAX);
      *len = (size_t)n;
      return 0;
    }
    if (SEQ_OF(st) == seq(hd) && KIND_OF(st) == READING) {
      uint64_t want = hd; /* claimed by a get that has not moved head yet: move it */
      cas(&h->head, &want, hd + 1);
      continue;
    }
    if (SEQ_OF(st) == seq(hd)) { /* EMPTY or WRITING: nothing to take yet */
      if (__atomic_load_n(&h->closed, __ATOMIC_ACQUIRE)) {
        uint64_t t = __atomic_load_n(&h->tail, __ATOMIC_ACQUIRE);
        if ((t & CLOSED) && POS(t) == hd) return TDM_EEOF;
      }
      if (__atomic_load_n(&h->head, __ATOMIC_ACQUIRE) == hd) return -EAGAIN;
    }
    /* Our view of head is stale: look again. */
  }
}

static int get_into(tdm_queue *q, struct sink *k, size_t *len, int64_t timeout) {
  int r = enter(q);
  if (r < 0) return r;
  int64_t deadline = tdm__deadline(timeout), since = 0;
  while ((r = try_get(q, k, len)) == -EAGAIN) {
    if (timeout == 0) return -ETIMEDOUT;
    r = park(q, &q->h->get_epoch, &q->h->get_waiters, &q->h->get_pending, can_get, NULL, deadline,
             &since);
    if (r < 0) return -ETIMEDOUT;
  }
  /* A woken getter passes the wake on while messages are left (see wake_one()). */
  if (__atomic_load_n(&q->h->get_waiters, __ATOMIC_SEQ_CST) != 0 && tdm_queue_size(q) > 0)
    wake_one(&q->h->get_epoch, &q->h->get_waiters, &q->h->get_pending);
  return r;
}

int tdm_queue_get(tdm_queue *q, void **msg, size_t *len, int64_t timeout) {
  TDM__REQUIRE(q != NULL && msg != NULL && len != NULL, "tdm_queue_get: NULL argument");
  /* Room for a small message up front: most gets then allocate once. */
  struct sink k = { tdm__alloc(q->payload), q->payload, true };
  if (k.buf == NULL) return -ENOMEM;
  size_t n = 0;
  int r = get_into(q, &k, &n, timeout);
  if (r < 0) {
    tdm__free(k.buf);
    return r;
  }
  *msg = k.buf;
  *len = n;
  return 0;
}

int tdm_queue_recv(tdm_queue *q, void *buf, size_t cap, size_t *len, int64_t timeout) {
  TDM__REQUIRE(q != NULL && len != NULL && (buf != NULL || cap == 0),
               "tdm_queue_recv: NULL argument");
  struct sink k = { buf, cap, false };
  size_t n = 0;
  int r = get_into(q, &k, &n, timeout);
  if (r == 0 || r == -EMSGSIZE) *len = n;
  return r;
}

/* ---- Shutdown, size, readiness --------------------------------------------------------------- */

int tdm_queue_shutdown(tdm_queue *q) {
  TDM__REQUIRE(q != NULL, "tdm_queue_shutdown: NULL queue");
  struct qhdr *h = q->h;
  __atomic_store_n(&h->closed, 1, __ATOMIC_SEQ_CST);
  __atomic_fetch_or(&h->tail, CLOSED, __ATOMIC_SEQ_CST);
  __atomic_fetch_add(&h->get_epoch, 1, __ATOMIC_SEQ_CST);
  __atomic_fetch_add(&h->put_epoch, 1, __ATOMIC_SEQ_CST);
  tdm__futex_wake(&h->get_epoch, INT32_MAX, true);
  tdm__futex_wake(&h->put_epoch, INT32_MAX, true);
  return 0;
}

size_t tdm_queue_size(tdm_queue *q) {
  TDM__REQUIRE(q != NULL, "tdm_queue_size: NULL queue");
  uint64_t hd = __atomic_load_n(&q->h->head, __ATOMIC_ACQUIRE);
  uint64_t t = POS(__atomic_load_n(&q->h->tail, __ATOMIC_ACQUIRE));
  return t > hd ? (size_t)(t - hd) : 0;
}

bool tdm_queue_empty(tdm_queue *q) {
  return tdm_queue_size(q) == 0;
}

bool tdm_queue_full(tdm_queue *q) {
  return tdm_queue_size(q) >= q->h->capacity;
}

size_t tdm_queue_capacity(const tdm_queue *q) {
  TDM__REQUIRE(q != NULL, "tdm_queue_capacity: NULL queue");
  return (size_t)q->h->capacity;
}

size_t tdm_queue_max_message(const tdm_queue *q) {
  TDM__REQUIRE(q != NULL, "tdm_queue_max_message: NULL queue");
  return (size_t)q->h->max_message;
}

bool tdm_queue_ready(tdm_queue *q) {
  TDM__REQUIRE(q != NULL, "tdm_queue_ready: NULL queue");
  return can_get(q, NULL);
}

int tdm_queue_wait_ready(tdm_queue *q, int64_t timeout) {
  TDM__REQUIRE(q != NULL, "tdm_queue_wait_ready: NULL queue");
  int64_t deadline = tdm__deadline(timeout), since = 0;
  while (!can_get(q, NULL)) {
    if (timeout == 0) return -ETIMEDOUT;
    if (park(q, &q->h->get_epoch, &q->h->ready_waiters, NULL, can_get, NULL, deadline, &since) < 0)
      return -ETIMEDOUT;
  }
  return 0;
}

/* ---- JoinableQueue --------------------------------------------------------------------------- */

int tdm_queue_task_done(tdm_queue *q) {
  TDM__REQUIRE(q != NULL, "tdm_queue_task_done: NULL queue");
  struct qhdr *h = q->h;
  if (!(h->flags & TDM_QUEUE_JOINABLE)) return -EINVAL;
  uint64_t done = __atomic_load_n(&h->done, __ATOMIC_ACQUIRE);
  do {
    uint64_t lost = __atomic_load_n(&h->lost, __ATOMIC_ACQUIRE);
    if (done + 1 + lost > POS(__atomic_load_n(&h->tail, __ATOMIC_ACQUIRE))) return TDM_EOVERRELEASE;
  } while (!__atomic_compare_exchange_n(&h->done, &done, done + 1, false, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST));
  if (unfinished(h) == 0) wake(&h->join_epoch, &h->join_waiters, INT32_MAX);
  return 0;
}

static bool all_done(tdm_queue *q, const void *arg) {
  (void)arg;
  return unfinished(q->h) == 0;
}

int tdm_queue_join(tdm_queue *q, int64_t timeout) {
  TDM__REQUIRE(q != NULL, "tdm_queue_join: NULL queue");
  struct qhdr *h = q->h;
  if (!(h->flags & TDM_QUEUE_JOINABLE)) return -EINVAL;
  int64_t deadline = tdm__deadline(timeout), since = 0;
  while (!all_done(q, NULL)) {
    if (timeout == 0) return -ETIMEDOUT;
    if (park(q, &h->join_epoch, &h->join_waiters, NULL, all_done, NULL, deadline, &since) < 0)
      return -ETIMEDOUT;
  }
  return 0;
}

size_t tdm_queue_unfinished(tdm_queue *q) {
  TDM__REQUIRE(q != NULL, "tdm_queue_unfinished: NULL queue");
  return (q->h->flags & TDM_QUEUE_JOINABLE) ? (size_t)unfinished(q->h) : 0;
}

int tdm_queue_recover(tdm_queue *q) {
  TDM__REQUIRE(q != NULL, "tdm_queue_recover: NULL queue");
  int r = enter(q);
  if (r < 0) return r;
  r = lock_reg(q->h);
  if (r < 0) return r;
  r = (int)sweep_locked(q);
  tdm__lock_release(&q->h->reg);
  return r;
}

void tdm_queue_stats_get(tdm_queue *q, tdm_queue_stats *out) {
  TDM__REQUIRE(q != NULL && out != NULL, "tdm_queue_stats_get: NULL argument");
  struct qhdr *h = q->h;
  out->puts = POS(__atomic_load_n(&h->tail, __ATOMIC_ACQUIRE));
  out->gets = __atomic_load_n(&h->head, __ATOMIC_ACQUIRE);
  out->lost = __atomic_load_n(&h->lost, __ATOMIC_ACQUIRE);
  out->recoveries = __atomic_load_n(&h->recoveries, __ATOMIC_ACQUIRE);
  out->bytes = q->arena != NULL ? tdm_arena_used(q->arena) : 0;
}

/* ---- Opening and attaching ------------------------------------------------------------------- */

struct geometry {
  uint64_t capacity, payload, slot_size, max_message, max_bytes, procs;
  uint64_t procs_off, ring_off, arena_off, size;
};

static uint64_t round_up(uint64_t v, uint64_t to) {
  return (v + to - 1) / to * to;
}

static int plan(const tdm_queue_options *o, struct geometry *g) {
  if (o->flags & ~TDM_QUEUE_JOINABLE) return -EINVAL;
  uint64_t cap = o->capacity ? o->capacity : DEF_CAPACITY;
  if (cap > (UINT64_C(1) << 32)) return -EINVAL;
  g->capacity = 1;
  while (g->capacity < cap)
    g->capacity <<= 1;
  g->payload = o->slot_payload ? o->slot_payload : DEF_PAYLOAD;
  if (g->payload > (UINT64_C(1) << 20)) return -EINVAL;
  g->slot_size = round_up(g->payload + SLOT_HDR, LINE);
  g->payload = g->slot_size - SLOT_HDR;
  g->max_message = o->max_message ? o->max_message : DEF_MAX_MESSAGE;
  if (g->max_message > (UINT64_C(1) << 46)) return -EINVAL;
  g->procs = o->max_processes ? o->max_processes : DEF_PROCS;
  if (g->procs > MAX_PROCS) return -EINVAL;
  g->max_bytes = 0;
  if (g->max_message > g->payload) {
    uint64_t least = g->max_message + 64;
    g->max_bytes = o->max_bytes ? o->max_bytes : 2 * least;
    if (g->max_bytes < least) return -EINVAL;
    g->max_bytes = round_up(g->max_bytes + 4096, 4096); /* the arena's own header and table */
  }
  g->procs_off = round_up(sizeof(struct qhdr), LINE);
  g->ring_off = round_up(g->procs_off + g->procs * sizeof(struct part), 4096);
  g->arena_off = round_up(g->ring_off + g->capacity * g->slot_size, 4096);
  g->size = g->arena_off + g->max_bytes;
  if (g->size > (UINT64_C(1) << 47)) return -EINVAL;
  return 0;
}

static tdm_queue *handle_for(tdm_shm *shm) {
  tdm_queue *q = tdm__calloc(1, sizeof *q);
  if (q == NULL) return NULL;
  struct qhdr *h = tdm_shm_addr(shm);
  q->shm = shm;
  q->h = h;
  q->ring = (struct slot *)(void *)((char *)h + h->ring_off);
  q->arena = h->arena_off < h->size ? (tdm_arena *)(void *)((char *)h + h->arena_off) : NULL;
  q->mask = h->capacity - 1;
  q->payload = h->slot_size - SLOT_HDR;
  return q;
}

/* Registers the new handle's process; frees the handle (not the segment) on failure. */
static int start_handle(tdm_queue *q, tdm_queue **out) {
  int r = enter(q);
  if (r < 0) {
    tdm__free(q);
    return r;
  }
  *out = q;
  return 0;
}

int tdm_queue_open(tdm_queue **out, const tdm_queue_options *opt) {
  TDM__REQUIRE(out != NULL, "tdm_queue_open: out is NULL");
  static const tdm_queue_options defaults = { 0 };
  const tdm_queue_options *o = opt ? opt : &defaults;
  struct geometry g;
  int r = plan(o, &g);
  if (r < 0) return r;
  tdm_shm_options so = { .mode = o->mode };
  tdm_shm *shm;
  r = tdm_shm_create(&shm, o->name, (size_t)g.size, &so);
  if (r < 0) return r;

  struct qhdr *h = tdm_shm_addr(shm); /* zero-filled */
  h->flags = (uint16_t)o->flags;
  h->slot_size = (uint32_t)g.slot_size;
  h->max_procs = (uint32_t)g.procs;
  h->capacity = g.capacity;
  h->max_message = g.max_message;
  h->procs_off = g.procs_off;
  h->ring_off = g.ring_off;
  h->arena_off = g.arena_off;
  h->size = g.size;
  r = tdm_lock_init(&h->reg, TDM_SYNC_SHARED);
  if (r == 0 && g.max_bytes != 0)
    r = tdm_arena_init((tdm_arena *)(void *)((char *)h + g.arena_off), (size_t)g.max_bytes);
  tdm_queue *q = NULL;
  if (r == 0) {
    for (uint64_t i = 0; i < g.capacity; i++) {
      struct slot *s = (struct slot *)(void *)((char *)h + g.ring_off + i * g.slot_size);
      s->state = MK(i, 0, EMPTY);
    }
    h->version_ = QUEUE_LAYOUT;
    __atomic_store_n(&h->magic_, QUEUE_MAGIC, __ATOMIC_RELEASE);
    q = handle_for(shm);
    if (q == NULL) r = -ENOMEM;
  }
  if (r == 0) r = start_handle(q, out);
  if (r < 0) tdm_shm_close(shm);
  return r;
}

/* Checks that the attached segment holds a queue this build understands. */
static bool valid(tdm_shm *shm) {
  size_t size = tdm_shm_size(shm);
  if (size < sizeof(struct qhdr)) return false;
  struct qhdr *h = tdm_shm_addr(shm);
  if (__atomic_load_n(&h->magic_, __ATOMIC_ACQUIRE) != QUEUE_MAGIC || h->version_ != QUEUE_LAYOUT)
    return false;
  uint64_t cap = h->capacity;
  if (cap == 0 || (cap & (cap - 1)) != 0 || h->slot_size < SLOT_HDR + 16 || h->slot_size % LINE ||
      h->max_procs == 0 || h->max_procs > MAX_PROCS || h->size > size)
    return false;
  if (h->procs_off < sizeof(struct qhdr) ||
      h->ring_off < h->procs_off + (uint64_t)h->max_procs * sizeof(struct part) ||
      h->arena_off < h->ring_off + cap * h->slot_size || h->arena_off > h->size)
    return false;
  if (h->arena_off < h->size && tdm_arena_check((char *)h + h->arena_off) == NULL) return false;
  return h->max_message <= h->slot_size - SLOT_HDR || h->arena_off < h->size;
}

static int attach_shm(tdm_shm *shm, tdm_queue **out) {
  if (!valid(shm)) {
    tdm_shm_close(shm);
    return -EINVAL;
  }
  tdm_queue *q = handle_for(shm);
  int r = q != NULL ? start_handle(q, out) : -ENOMEM;
  if (r < 0) tdm_shm_close(shm);
  return r;
}

int tdm_queue_attach(tdm_queue **out, const char *name) {
  TDM__REQUIRE(out != NULL && name != NULL, "tdm_queue_attach: NULL argument");
  tdm_shm *shm;
  int r = tdm_shm_attach(&shm, name, 0, NULL);
  return r < 0 ? r : attach_shm(shm, out);
}

int tdm_queue_attach_fd(tdm_queue **out, int fd) {
  TDM__REQUIRE(out != NULL, "tdm_queue_attach_fd: out is NULL");
  tdm_shm *shm;
  int r = tdm_shm_attach_fd(&shm, fd, 0);
  return r < 0 ? r : attach_shm(shm, out);
}

int tdm_queue_close(tdm_queue *q) {
  if (q == NULL) return 0;
  /* Leave the table, unless this is a fork child that never registered (the entry is the
   * parent's). */
  if (__atomic_load_n(&q->pid, __ATOMIC_ACQUIRE) == tdm__self_pid() && lock_reg(q->h) == 0) {
    __atomic_store_n(&part_at(q, q->me)->pid, 0, __ATOMIC_RELEASE);
    tdm__lock_release(&q->h->reg);
  }
  int r = tdm_shm_close(q->shm);
  tdm__free(q);
  return r;
}

int tdm_queue_fd(const tdm_queue *q) {
  TDM__REQUIRE(q != NULL, "tdm_queue_fd: NULL queue");
  return tdm_shm_fd(q->shm);
}

const char *tdm_queue_name(const tdm_queue *q) {
  TDM__REQUIRE(q != NULL, "tdm_queue_name: NULL queue");
  return tdm_shm_name(q->shm);
}
