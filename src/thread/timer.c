/*
 * timer.c: Timer, a thread that waits on a private event until its deadline and then runs the
 * function unless it was cancelled.
 *
 * Who runs is decided by one compare-and-swap on `state`: the timer thread moves it from WAITING
 * to RUNNING before calling the function, cancel() moves it from WAITING to CANCELLED, so exactly
 * one of them wins and cancel() can say truthfully whether the function will run. The deadline
 * is fixed when the timer starts. The timer structure is shared by its owner and its thread and
 * freed by whichever lets go last.
 */
#include <stdio.h>

#include "base/internal.h"
#include "sync/sync.h"
#include "tandem/thread.h"

enum { WAITING, RUNNING, CANCELLED, FIRED };

struct tdm_timer {
  tdm_thread *thread;
  tdm_event wake;
  tdm_deadline deadline;
  tdm_thread_fn fn;
  void *arg;
  uint32_t state;
  uint32_t refs;
};

static uint64_t timer_names;

static void unref(tdm_timer *t) {
  if (__atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) == 0) {
    tdm_event_fini(&t->wake);
    tdm__free(t);
  }
}

static void timer_main(void *arg) {
  tdm_timer *t = arg;
  /* Returns early only when cancel() set the event. */
  while (tdm_event_wait(&t->wake, tdm_deadline_left(t->deadline)) != 0 &&
         !tdm_deadline_passed(t->deadline)) {
  }
  uint32_t expected = WAITING;
  if (__atomic_compare_exchange_n(&t->state, &expected, RUNNING, false, __ATOMIC_ACQ_REL,
                                  __ATOMIC_ACQUIRE)) {
    t->fn(t->arg);
    __atomic_store_n(&t->state, FIRED, __ATOMIC_RELEASE);
  }
  unref(t);
}

int tdm_timer_start(tdm_timer **out, int64_t delay, tdm_thread_fn fn, void *arg,
                    const tdm_thread_options *opt) {
  if (out == NULL || fn == NULL || delay < 0) return -EINVAL;
  tdm_timer *t = tdm__calloc(1, sizeof *t);
  if (t == NULL) return -ENOMEM;
  tdm_event_init(&t->wake, TDM_SYNC_PRIVATE);
  t->deadline = tdm_deadline_after(delay);
  t->fn = fn;
  t->arg = arg;
  t->state = WAITING;
  t->refs = 2;
  char name[32];
  tdm_thread_options o = { 0 };
  if (opt != NULL) o = *opt;
  if (o.name == NULL) {
    snprintf(name, sizeof name, "Timer-%llu",
             (unsigned long long)__atomic_add_fetch(&timer_names, 1, __ATOMIC_RELAXED));
    o.name = name;
  }
  int r = tdm_thread_start(&t->thread, timer_main, t, &o);
  if (r != 0) {
    tdm_event_fini(&t->wake);
    tdm__free(t);
    return r;
  }
  *out = t;
  return 0;
}

int tdm_timer_cancel(tdm_timer *t) {
  uint32_t expected = WAITING;
  if (__atomic_compare_exchange_n(&t->state, &expected, CANCELLED, false, __ATOMIC_ACQ_REL,
                                  __ATOMIC_ACQUIRE)) {
    tdm_event_set(&t->wake);
    return 0;
  }
  return expected == CANCELLED ? 0 : -EALREADY;
}

int tdm_timer_join(tdm_timer *t, int64_t timeout) {
  int r = tdm_thread_join(t->thread, timeout);
  if (r != 0) return r;
  r = __atomic_load_n(&t->state, __ATOMIC_ACQUIRE) == FIRED ? 0 : -ECANCELED;
  unref(t);
  return r;
}

void tdm_timer_detach(tdm_timer *t) {
  tdm_thread_detach(t->thread);
  unref(t);
}

bool tdm_timer_fired(const tdm_timer *t) {
  return __atomic_load_n(&t->state, __ATOMIC_ACQUIRE) == FIRED;
}
