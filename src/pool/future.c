/*
 * future.c: futures, and waiting on many of them.
 *
 * A future's state word is the only thing its readers need: it moves by compare-and-swap, each
 * move once (pool.h lists who makes which). Ending a future takes two steps so that two
 * threads racing to end it (a result arriving while the caller cancels, say) cannot both write
 * the outcome: the winner of the CAS that sets TDM__FINISHING writes the outcome, then publishes
 * the final state with a release store. A reader that sees a final state (acquire) sees the
 * outcome.
 *
 * Waiting spins for a moment (a tiny task often ends within a microsecond or two of the wait),
 * then sleeps on the state word itself as a private futex. The ender stores the final state and
 * then reads the waiter count; a waiter adds itself to the count and then reads the state. Both
 * are sequentially consistent, so at least one of them sees the other: either the ender wakes
 * the waiter, or the waiter sees the final state and does not sleep.
 *
 * Callbacks hang off the future under its mutex. User callbacks are detached by the ender and
 * run outside the mutex (they may do anything short of freeing the future). Watchers, the
 * internal callbacks of tdm_wait() and as_completed, run under the mutex, which is what lets
 * their owner unregister them safely: once an unregistering thread holds the mutex and has
 * removed its node, no ender can be inside it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "platform/platform.h"
#include "pool/pool.h"

struct tdm__callback {
  void (*fn)(tdm_future *f, void *arg);
  void *arg;
  struct tdm__callback *next;
};

static bool is_final(uint32_t s) {
  return (s & TDM__FINISHING) == 0 && (s & TDM__STATE_MASK) >= TDM_FUTURE_DONE;
}

/* ---- Life ------------------------------------------------------------------------------------ */

struct tdm_future *tdm__future_new(tdm_pool *p, tdm_task_fn fn, const void *arg, size_t size,
                                   int64_t timeout) {
  struct tdm_future *f = tdm__calloc(1, sizeof *f);
  if (f == NULL) return NULL;
  if (size <= TDM__INLINE_ARG) {
    f->arg = f->inline_arg;
  } else if ((f->arg = tdm__alloc(size)) == NULL) {
    tdm__free(f);
    return NULL;
  }
  if (size > 0) memcpy(f->arg, arg, size);
  pthread_mutex_init(&f->mu, NULL);
  atomic_init(&f->refs, 2);
  f->pool = p;
  f->fn = fn;
  f->size = size;
  f->timeout = timeout;
  f->deadline = TDM_FOREVER;
  f->worker = -1;
  f->id = atomic_fetch_add_explicit(&p->next_id, 1, memory_order_relaxed) + 1;
  return f;
}

void tdm__future_ref(struct tdm_future *f) {
  atomic_fetch_add_explicit(&f->refs, 1, memory_order_relaxed);
}

void tdm__future_unref(struct tdm_future *f) {
  if (atomic_fetch_sub_explicit(&f->refs, 1, memory_order_acq_rel) != 1) return;
  struct tdm__callback *c = f->cbs;
  while (c != NULL) {
    struct tdm__callback *next = c->next;
    tdm__free(c);
    c = next;
  }
  if (f->arg != f->inline_arg) tdm__free(f->arg);
  tdm__free(f->result);
  pthread_mutex_destroy(&f->mu);
  tdm__free(f);
}

void tdm_future_free(tdm_future *f) {
  if (f != NULL) tdm__future_unref(f);
}

/* ---- Moves ----------------------------------------------------------------------------------- */

static bool move(struct tdm_future *f, uint32_t from, uint32_t to) {
  return __atomic_compare_exchange_n(&f->state, &from, to, false, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE);
}

bool tdm__future_start(struct tdm_future *f) {
  if (!move(f, TDM_FUTURE_PENDING, TDM_FUTURE_RUNNING)) return false;
  atomic_fetch_add_explicit(&f->attempts, 1, memory_order_relaxed);
  return true;
}

bool tdm__future_retry(struct tdm_future *f) {
  return move(f, TDM_FUTURE_RUNNING, TDM_FUTURE_PENDING);
}

int tdm__future_request_cancel(struct tdm_future *f) {
  uint32_t s = tdm__load(&f->state);
  for (;;) {
    if (is_final(s) || (s & TDM__FINISHING) != 0) return -EALREADY;
    if ((s & TDM__STATE_MASK) == TDM_FUTURE_PENDING) return -EAGAIN;
    if ((s & TDM__CANCEL_REQ) != 0) break;
    if (__atomic_compare_exchange_n(&f->state, &s, s | TDM__CANCEL_REQ, false, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE))
      break;
  }
  atomic_store(&f->cancel, true);
  return -EINPROGRESS;
}

/*
 * Runs the watchers and takes the callbacks, once (`fired`, under mu), then runs the callbacks
 * outside the mutex. Called by the ender when has_cbs is set, and by a registrant that finds
 * the future ended: whichever comes first does the work.
 */
static void fire_callbacks(struct tdm_future *f) {
  pthread_mutex_lock(&f->mu);
  if (f->fired) {
    pthread_mutex_unlock(&f->mu);
    return;
  }
  f->fired = true;
  for (struct tdm__callback *w = f->watchers; w != NULL; w = w->next)
    w->fn(f, w->arg);
  struct tdm__callback *cbs = f->cbs;
  f->cbs = NULL;
  pthread_mutex_unlock(&f->mu);
  while (cbs != NULL) {
    struct tdm__callback *next = cbs->next;
    cbs->fn(f, cbs->arg);
    tdm__free(cbs);
    cbs = next;
  }
}

/* Wins the right to end f: state to (its state | FINISHING). `only_pending`: only from
 * PENDING. False when someone else ended it (or it is not pending). */
static bool claim(struct tdm_future *f, bool only_pending, uint32_t *was) {
  uint32_t s = tdm__load(&f->state);
  do {
    if (is_final(s) || (s & TDM__FINISHING) != 0) return false;
    if (only_pending && s != TDM_FUTURE_PENDING) return false;
  } while (!__atomic_compare_exchange_n(&f->state, &s, s | TDM__FINISHING, false, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE));
  *was = s;
  return true;
}

static void publish(struct tdm_future *f, uint32_t was, tdm_future_state state, int code,
                    int status, void *result, size_t result_size) {
  if ((was & TDM__CANCEL_REQ) != 0) {
    /* Cancel was asked of the running task: whatever it returned, it ends cancelled. */
    tdm__free(result);
    result = NULL;
    result_size = 0;
    state = TDM_FUTURE_CANCELLED;
    code = -ECANCELED;
    status = 0;
  }
  f->result = result;
  f->result_size = result_size;
  f->code = code;
  f->status = status;
  tdm_pool *p = f->pool;
  if (p != NULL) {
    _Atomic uint64_t *n = state == TDM_FUTURE_DONE     ? &p->c.done
                          : state == TDM_FUTURE_FAILED ? &p->c.failed
                                                       : &p->c.cancelled;
    atomic_fetch_add_explicit(n, 1, memory_order_relaxed);
    if (code == TDM_ETASKTIMEOUT)
      atomic_fetch_add_explicit(&p->c.timed_out, 1, memory_order_relaxed);
  }
  __atomic_store_n(&f->state, (uint32_t)state, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&f->waiters, __ATOMIC_SEQ_CST) > 0)
    tdm__futex_wake(&f->state, INT32_MAX, false);

  /* Most futures never get a callback: then the mutex is not touched. has_cbs is set (under
   * mu) before a registrant looks at the state, and read here after the final state is out;
   * both sequentially consistent, so one of the two sides sees the other (fire_callbacks()). */
  if (atomic_load(&f->has_cbs)) fire_callbacks(f);
}

bool tdm__future_finish(struct tdm_future *f, tdm_future_state state, int code, int status,
                        void *result, size_t result_size) {
  uint32_t was;
  if (!claim(f, false, &was)) {
    tdm__free(result);
    return false;
  }
  publish(f, was, state, code, status, result, result_size);
  return true;
}

bool tdm__future_cancel_pending(struct tdm_future *f) {
  uint32_t was;
  if (!claim(f, true, &was)) return false;
  publish(f, was, TDM_FUTURE_CANCELLED, -ECANCELED, 0, NULL, 0);
  return true;
}

/* ---- Inside a task -------------------------------------------------------------------------- */

int tdm_task_set_result(tdm_task *task, const void *data, size_t size) {
  TDM__REQUIRE(task != NULL && (data != NULL || size == 0), "tdm_task_set_result: bad arguments");
  if (task->max_result > 0 && size > task->max_result) return -EMSGSIZE;
  void *copy = NULL;
  if (size > 0) {
    if ((copy = tdm__alloc(size)) == NULL) return -ENOMEM;
    memcpy(copy, data, size);
  }
  tdm__free(task->result);
  task->result = copy;
  task->result_size = size;
  return 0;
}

bool tdm_task_cancelled(const tdm_task *task) {
  return (task->cancel_flag != NULL &&
          atomic_load_explicit(task->cancel_flag, memory_order_relaxed)) ||
         (task->pool_stop != NULL && atomic_load_explicit(task->pool_stop, memory_order_relaxed));
}

/* ---- Reading --------------------------------------------------------------------------------- */

tdm_future_state tdm_future_state_get(const tdm_future *f) {
  return (tdm_future_state)(tdm__load(&f->state) & TDM__STATE_MASK);
}

bool tdm_future_done(const tdm_future *f) {
  return is_final(tdm__load(&f->state));
}

int tdm_future_wait(tdm_future *f, int64_t timeout) {
  if (is_final(tdm__load(&f->state))) return 0;
  if (timeout == 0) return -ETIMEDOUT;
  /* Waiting forever for a task nobody has started: a thread pool runs it here (the waiting
   * thread has nothing better to do, and it saves two context switches). */
  uint32_t s0 = tdm__load(&f->state);
  if (timeout < 0 && s0 == TDM_FUTURE_PENDING && f->timeout == TDM_FOREVER && f->pool != NULL &&
      f->pool->be->run_inline != NULL && f->pool->be->run_inline(f->pool, f))
    return 0;
  int64_t deadline = tdm__deadline(timeout);
  /* A short spin: the tasks of a busy pool often end within a couple of microseconds. */
  int64_t spin_until = tdm_clock_now() + 2000;
  for (unsigned i = 1;; i++) {
    if (is_final(tdm__load(&f->state))) return 0;
    if ((i & 63) == 0 && tdm_clock_now() > spin_until) break;
    tdm__cpu_relax();
  }
  for (;;) {
    __atomic_fetch_add(&f->waiters, 1, __ATOMIC_SEQ_CST);
    uint32_t s = __atomic_load_n(&f->state, __ATOMIC_SEQ_CST);
    int r = 0;
    if (!is_final(s)) r = tdm__futex_wait(&f->state, s, deadline, false);
    __atomic_fetch_sub(&f->waiters, 1, __ATOMIC_SEQ_CST);
    if (is_final(tdm__load(&f->state))) return 0;
    if (r == -ETIMEDOUT) return -ETIMEDOUT;
  }
}

int tdm_future_result(tdm_future *f, int64_t timeout, const void **data, size_t *size) {
  int r = tdm_future_wait(f, timeout);
  if (r != 0) return r;
  switch (tdm__load(&f->state)) {
  case TDM_FUTURE_DONE:
    if (data != NULL) *data = f->result;
    if (size != NULL) *size = f->result_size;
    return 0;
  case TDM_FUTURE_CANCELLED:
    return -ECANCELED;
  default:
    return f->code;
  }
}

int tdm_future_error(const tdm_future *f, tdm_task_error *err) {
  uint32_t s = tdm__load(&f->state);
  tdm_task_error e = { 0, 0, atomic_load_explicit(&f->attempts, memory_order_relaxed) };
  if (s == TDM_FUTURE_FAILED) {
    e.code = f->code;
    e.status = f->status;
  } else if (s == TDM_FUTURE_CANCELLED) {
    e.code = -ECANCELED;
  }
  if (err != NULL) *err = e;
  return e.code;
}

/* ---- Cancel and callbacks -------------------------------------------------------------------- */

int tdm_future_cancel(tdm_future *f) {
  for (;;) {
    uint32_t s = tdm__load(&f->state);
    if (is_final(s) || (s & TDM__FINISHING) != 0) return -EALREADY;
    tdm_pool *p = f->pool;
    if (s == TDM_FUTURE_PENDING) {
      if (!tdm__future_cancel_pending(f)) continue;
      if (p->be->cancelled_pending != NULL) p->be->cancelled_pending(p, f);
      return 0;
    }
    int r = p->be->cancel_running(p, f);
    /* -EAGAIN: the task moved (back to pending for a retry) while the backend looked. */
    if (r != -EAGAIN) return r;
  }
}

int tdm_future_on_done(tdm_future *f, void (*fn)(tdm_future *f, void *arg), void *arg) {
  TDM__REQUIRE(fn != NULL, "tdm_future_on_done: fn is NULL");
  struct tdm__callback *c = tdm__alloc(sizeof *c);
  if (c == NULL) return -ENOMEM;
  c->fn = fn;
  c->arg = arg;
  c->next = NULL;
  pthread_mutex_lock(&f->mu);
  if (f->fired) {
    pthread_mutex_unlock(&f->mu);
    tdm__free(c);
    fn(f, arg);
    return 0;
  }
  struct tdm__callback **tail = &f->cbs;
  while (*tail != NULL)
    tail = &(*tail)->next;
  *tail = c;
  atomic_store(&f->has_cbs, true);
  pthread_mutex_unlock(&f->mu);
  /* The ender may have published the final state before it could see has_cbs. */
  if (is_final(__atomic_load_n(&f->state, __ATOMIC_SEQ_CST))) fire_callbacks(f);
  return 0;
}

/* ---- Watching many --------------------------------------------------------------------------- */

struct watch;

/* A watcher's node on one future: the callback first, so that the future's list holds it. */
struct watch_node {
  struct tdm__callback cb; /* cb.arg points back at this node */
  struct watch *w;
  size_t i;
};

/* What tdm_wait() and as_completed share: a node per future, and a word to sleep on. */
struct watch {
  size_t n;
  tdm_future **fs;
  struct watch_node *nodes; /* n, one per future */
  uint32_t seq;             /* bumped at every end; the futex word */
  uint32_t sleeping;
  _Atomic size_t ended;
  _Atomic bool error;
  /* as_completed: the indices of ended futures, in the order they ended. */
  pthread_mutex_t mu;
  size_t *order;
  size_t head, tail;
};

static void watch_note(struct watch *w, tdm_future *f, size_t i) {
  uint32_t s = tdm__load(&f->state);
  if (s == TDM_FUTURE_FAILED || s == TDM_FUTURE_CANCELLED) atomic_store(&w->error, true);
  if (w->order != NULL) {
    pthread_mutex_lock(&w->mu);
    w->order[w->tail++] = i;
    pthread_mutex_unlock(&w->mu);
  }
  atomic_fetch_add(&w->ended, 1);
  __atomic_fetch_add(&w->seq, 1, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&w->sleeping, __ATOMIC_SEQ_CST) > 0)
    tdm__futex_wake(&w->seq, INT32_MAX, false);
}

static void watch_fired(tdm_future *f, void *arg) {
  struct watch_node *node = arg;
  watch_note(node->w, f, node->i);
}

/* Registers on every future; those already ended are noted at once, in array order. */
static void watch_start(struct watch *w) {
  for (size_t i = 0; i < w->n; i++) {
    tdm_future *f = w->fs[i];
    struct watch_node *node = &w->nodes[i];
    node->cb.fn = watch_fired;
    node->cb.arg = node;
    node->w = w;
    node->i = i;
    pthread_mutex_lock(&f->mu);
    bool fired = f->fired;
    if (!fired) {
      node->cb.next = f->watchers;
      f->watchers = &node->cb;
      atomic_store(&f->has_cbs, true);
    }
    pthread_mutex_unlock(&f->mu);
    if (fired)
      watch_note(w, f, i);
    else if (is_final(__atomic_load_n(&f->state, __ATOMIC_SEQ_CST)))
      fire_callbacks(f); /* ended before its ender could see has_cbs: runs our node too */
  }
}

static void watch_stop(struct watch *w) {
  for (size_t i = 0; i < w->n; i++) {
    tdm_future *f = w->fs[i];
    pthread_mutex_lock(&f->mu);
    for (struct tdm__callback **pp = &f->watchers; *pp != NULL; pp = &(*pp)->next) {
      if (*pp == &w->nodes[i].cb) {
        *pp = w->nodes[i].cb.next;
        break;
      }
    }
    pthread_mutex_unlock(&f->mu);
  }
}

/* Sleeps until seq moves from `seen` or the deadline passes. */
static int watch_sleep(struct watch *w, uint32_t seen, int64_t deadline) {
  __atomic_fetch_add(&w->sleeping, 1, __ATOMIC_SEQ_CST);
  int r = 0;
  if (__atomic_load_n(&w->seq, __ATOMIC_SEQ_CST) == seen)
    r = tdm__futex_wait(&w->seq, seen, deadline, false);
  __atomic_fetch_sub(&w->sleeping, 1, __ATOMIC_SEQ_CST);
  return r;
}

static int watch_init(struct watch *w, tdm_future *const *fs, size_t n, bool ordered) {
  memset(w, 0, sizeof *w);
  w->n = n;
  w->fs = tdm__calloc(n > 0 ? n : 1, sizeof *w->fs);
  w->nodes = tdm__calloc(n > 0 ? n : 1, sizeof *w->nodes);
  w->order = ordered ? tdm__calloc(n > 0 ? n : 1, sizeof *w->order) : NULL;
  if (w->fs == NULL || w->nodes == NULL || (ordered && w->order == NULL)) {
    tdm__free(w->fs);
    tdm__free(w->nodes);
    tdm__free(w->order);
    return -ENOMEM;
  }
  if (n > 0) memcpy(w->fs, fs, n * sizeof *fs);
  pthread_mutex_init(&w->mu, NULL);
  return 0;
}

static void watch_fini(struct watch *w) {
  pthread_mutex_destroy(&w->mu);
  tdm__free(w->fs);
  tdm__free(w->nodes);
  tdm__free(w->order);
}

static bool wait_met(struct watch *w, tdm_wait_mode mode) {
  size_t ended = atomic_load(&w->ended);
  switch (mode) {
  case TDM_WAIT_FIRST:
    return ended > 0 || w->n == 0;
  case TDM_WAIT_FIRST_ERROR:
    return atomic_load(&w->error) || ended == w->n;
  default:
    return ended == w->n;
  }
}

int tdm_wait(tdm_future *const *fs, size_t n, tdm_wait_mode mode, int64_t timeout, size_t *n_done) {
  TDM__REQUIRE(fs != NULL || n == 0, "tdm_wait: fs is NULL");
  for (size_t i = 0; i < n; i++)
    TDM__REQUIRE(fs[i] != NULL, "tdm_wait: fs[%zu] is NULL", i);
  struct watch w;
  int r = watch_init(&w, fs, n, false);
  if (r != 0) return r;
  int64_t deadline = tdm__deadline(timeout);
  watch_start(&w);
  for (;;) {
    uint32_t seen = __atomic_load_n(&w.seq, __ATOMIC_SEQ_CST);
    if (wait_met(&w, mode)) {
      r = 0;
      break;
    }
    if (timeout == 0 || watch_sleep(&w, seen, deadline) == -ETIMEDOUT) {
      r = wait_met(&w, mode) ? 0 : -ETIMEDOUT;
      break;
    }
  }
  watch_stop(&w);
  if (n_done != NULL) {
    size_t d = 0;
    for (size_t i = 0; i < n; i++)
      d += tdm_future_done(fs[i]);
    *n_done = d;
  }
  watch_fini(&w);
  return r;
}

struct tdm_as_completed {
  struct watch w;
  size_t given;
};

int tdm_as_completed_open(tdm_as_completed **out, tdm_future *const *fs, size_t n) {
  if (out == NULL || (fs == NULL && n > 0)) return -EINVAL;
  for (size_t i = 0; i < n; i++)
    if (fs[i] == NULL) return -EINVAL;
  tdm_as_completed *it = tdm__calloc(1, sizeof *it);
  if (it == NULL) return -ENOMEM;
  int r = watch_init(&it->w, fs, n, true);
  if (r != 0) {
    tdm__free(it);
    return r;
  }
  watch_start(&it->w);
  *out = it;
  return 0;
}

int tdm_as_completed_next(tdm_as_completed *it, int64_t timeout, tdm_future **f) {
  struct watch *w = &it->w;
  if (it->given == w->n) return TDM_EEOF;
  int64_t deadline = tdm__deadline(timeout);
  for (;;) {
    uint32_t seen = __atomic_load_n(&w->seq, __ATOMIC_SEQ_CST);
    pthread_mutex_lock(&w->mu);
    bool have = w->head < w->tail;
    size_t i = have ? w->order[w->head++] : 0;
    pthread_mutex_unlock(&w->mu);
    if (have) {
      it->given++;
      *f = w->fs[i];
      return 0;
    }
    if (timeout == 0 || watch_sleep(w, seen, deadline) == -ETIMEDOUT) {
      pthread_mutex_lock(&w->mu);
      have = w->head < w->tail;
      pthread_mutex_unlock(&w->mu);
      if (!have) return -ETIMEDOUT;
    }
  }
}

void tdm_as_completed_close(tdm_as_completed *it) {
  if (it == NULL) return;
  watch_stop(&it->w);
  watch_fini(&it->w);
  tdm__free(it);
}
