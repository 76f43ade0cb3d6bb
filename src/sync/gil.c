/*
 * gil.c: a global interpreter lock with CPython's hand-off rules (Python/ceval_gil.c, the "new
 * GIL" of CPython 3.2 by Antoine Pitrou), rebuilt on tandem's own lock and conditions.
 *
 * State, guarded by `mutex_`: `locked_` (someone holds the GIL), `holder_`, `last_holder_`
 * and `switches_`. `drop_request_` and `holder_` are also read without the mutex, by
 * tdm_gil_checkpoint(), which must cost one load when nothing is asked of it.
 *
 * Taking: while the GIL is held, wait on `cond_` for one interval; if the wait timed out and
 * the GIL has not changed hands meanwhile, set `drop_request_`. Once free, take it, count a
 * switch if the holder changed, clear the request, and signal `switch_cond_`.
 *
 * Dropping: mark it free and signal `cond_`. If a drop was requested (forced switching), wait on
 * `switch_cond_` until another thread has taken it, so that the dropping thread cannot take it
 * straight back; this is what guarantees a waiting thread its turn.
 */
#include <string.h>

#include "sync/sync.h"
#include "tandem/gil.h"

_Static_assert(sizeof(tdm_gil) == 192, "tdm_gil layout");

int tdm_gil_init(tdm_gil *g, int64_t interval) {
  if (interval < 0) return -EINVAL;
  memset(g, 0, sizeof *g);
  g->interval_ = interval == 0 ? TDM_GIL_DEFAULT_INTERVAL : interval;
  int r = tdm__lock_init_as(&g->mutex_, TDM_SYNC_PRIVATE, TDM__LOCK_MAGIC);
  if (r == 0) r = tdm_cond_init(&g->cond_, TDM_SYNC_PRIVATE);
  if (r == 0) r = tdm_cond_init(&g->switch_cond_, TDM_SYNC_PRIVATE);
  if (r != 0) return r;
  tdm__stamp(&g->magic_, &g->version_, &g->flags_, TDM__GIL_MAGIC, TDM_SYNC_PRIVATE);
  return 0;
}

void tdm_gil_fini(tdm_gil *g) {
  TDM__CHECK(g, TDM__GIL_MAGIC, "tdm_gil_fini");
  TDM__REQUIRE(__atomic_load_n(&g->locked_, __ATOMIC_RELAXED) == 0, "tdm_gil_fini: GIL %p is held",
               (void *)g);
  tdm_cond_fini(&g->switch_cond_);
  tdm_cond_fini(&g->cond_);
  tdm_lock_fini(&g->mutex_);
  __atomic_store_n(&g->magic_, 0, __ATOMIC_RELAXED);
}

/* True when the calling thread holds the GIL (under its id of before a fork, too). */
static bool held_by_me(const tdm_gil *g) {
  return tdm__owner_is_me((uint32_t)__atomic_load_n(&g->holder_, __ATOMIC_RELAXED), false);
}

static void take(tdm_gil *g, int32_t me) {
  tdm__lock_acquire(&g->mutex_, TDM_FOREVER);
  while (__atomic_load_n(&g->locked_, __ATOMIC_RELAXED)) {
    uint64_t seen = g->switches_;
    int64_t deadline = tdm__deadline(g->interval_);
    int r = tdm__cond_wait_core(&g->cond_, &g->mutex_, deadline);
    if (r == -ETIMEDOUT && __atomic_load_n(&g->locked_, __ATOMIC_RELAXED) && g->switches_ == seen)
      __atomic_store_n(&g->drop_request_, 1, __ATOMIC_RELAXED);
  }
  __atomic_store_n(&g->locked_, 1, __ATOMIC_RELAXED);
  __atomic_store_n(&g->holder_, me, __ATOMIC_RELAXED);
  /* The same thread after a fork (a new id) is not a new holder. */
  if (!tdm__owner_is_me((uint32_t)g->last_holder_, false)) {
    g->switches_++;
    tdm_cond_notify_all(&g->switch_cond_);
  }
  g->last_holder_ = me;
  /* Whoever asked for the GIL got it (or it was us, taking it back): the request is served. */
  __atomic_store_n(&g->drop_request_, 0, __ATOMIC_RELAXED);
  tdm__lock_release(&g->mutex_);
}

static void drop(tdm_gil *g, int32_t me) {
  tdm__lock_acquire(&g->mutex_, TDM_FOREVER);
  __atomic_store_n(&g->holder_, 0, __ATOMIC_RELAXED);
  __atomic_store_n(&g->locked_, 0, __ATOMIC_RELAXED);
  tdm_cond_notify(&g->cond_, 1);
  if (__atomic_load_n(&g->drop_request_, __ATOMIC_RELAXED)) {
    g->forced_++;
    while (g->last_holder_ == me && !__atomic_load_n(&g->locked_, __ATOMIC_RELAXED))
      tdm__cond_wait_core(&g->switch_cond_, &g->mutex_, TDM__NEVER);
  }
  tdm__lock_release(&g->mutex_);
}

void tdm_gil_acquire(tdm_gil *g) {
  TDM__CHECK(g, TDM__GIL_MAGIC, "tdm_gil_acquire");
  int32_t me = tdm__tid();
  TDM__REQUIRE(!held_by_me(g), "tdm_gil_acquire: this thread already holds GIL %p", (void *)g);
  take(g, me);
}

void tdm_gil_release(tdm_gil *g) {
  TDM__CHECK(g, TDM__GIL_MAGIC, "tdm_gil_release");
  int32_t me = tdm__tid();
  TDM__REQUIRE(held_by_me(g), "tdm_gil_release: GIL %p is not held by this thread", (void *)g);
  drop(g, me);
}

void tdm_gil_checkpoint(tdm_gil *g) {
  if (__builtin_expect(__atomic_load_n(&g->drop_request_, __ATOMIC_RELAXED) == 0, 1)) return;
  TDM__CHECK(g, TDM__GIL_MAGIC, "tdm_gil_checkpoint");
  int32_t me = tdm__tid();
  TDM__REQUIRE(held_by_me(g), "tdm_gil_checkpoint: GIL %p is not held by this thread", (void *)g);
  drop(g, me);
  take(g, me);
}

int tdm_gil_sleep(tdm_gil *g, int64_t duration) {
  TDM__CHECK(g, TDM__GIL_MAGIC, "tdm_gil_sleep");
  TDM__REQUIRE(held_by_me(g), "tdm_gil_sleep: GIL %p is not held by this thread", (void *)g);
  if (duration < 0) return -EINVAL;
  tdm_gil_release(g);
  tdm_clock_sleep(duration);
  tdm_gil_acquire(g);
  return 0;
}

int64_t tdm_gil_interval(const tdm_gil *g) {
  TDM__CHECK(g, TDM__GIL_MAGIC, "tdm_gil_interval");
  return g->interval_;
}

bool tdm_gil_held(tdm_gil *g) {
  TDM__CHECK(g, TDM__GIL_MAGIC, "tdm_gil_held");
  return held_by_me(g);
}

uint64_t tdm_gil_switches(tdm_gil *g) {
  TDM__CHECK(g, TDM__GIL_MAGIC, "tdm_gil_switches");
  tdm__lock_acquire(&g->mutex_, TDM_FOREVER);
  uint64_t n = g->switches_;
  tdm__lock_release(&g->mutex_);
  return n;
}

uint64_t tdm_gil_forced_switches(tdm_gil *g) {
  TDM__CHECK(g, TDM__GIL_MAGIC, "tdm_gil_forced_switches");
  tdm__lock_acquire(&g->mutex_, TDM_FOREVER);
  uint64_t n = g->forced_;
  tdm__lock_release(&g->mutex_);
  return n;
}
