/*
 * thread.c: threads and the registry of live threads.
 *
 * A handle is shared by two parties: the caller of tdm_thread_start(), until it joins or
 * detaches, and the thread itself, until its function has returned. Each holds a reference;
 * the last one to let go frees the handle. A joiner waits on the handle's `done` futex word
 * (which is what makes a join with a timeout possible) and then calls pthread_join(), which
 * returns as soon as the thread has finished exiting.
 *
 * Start-up is a handshake: tdm_thread_start() returns only once the new thread has recorded its
 * kernel id, named itself and entered the registry, so the handle is complete when the caller
 * sees it and tdm_thread_count() already includes it, as in Python.
 *
 * The registry is a list under a private tandem lock. The main thread has a static handle,
 * registered by the library constructor; a thread that tandem did not start gets a handle in its
 * own thread-local storage the first time it asks for one, and a pthread key destructor removes
 * it when the thread ends. Nothing here allocates except tdm_thread_start().
 *
 * Fork: the registry lock is taken in the prepare handler, so the child gets a consistent list.
 * In the child, every thread but the forking one is gone: their handles are unlinked and marked
 * lost (join and detach free them at once) and the forking thread becomes the main thread.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/internal.h"
#include "platform/platform.h"
#include "sync/sync.h"
#include "tandem/thread.h"

enum kind { STARTED, MAIN, FOREIGN };

struct tdm_thread {
  struct tdm_thread *prev, *next; /* registry links, under `registry.lock` */
  pthread_t pthread;
  tdm_thread_fn fn;
  void *arg;
  const char *name; /* `own_name`, or an allocated copy */
  char own_name[32];
  uint64_t ident;
  int32_t native_id;
  uint32_t started; /* futex: the new thread is registered */
  uint32_t done;    /* futex: the function has returned */
  uint32_t refs;    /* owner + thread, for STARTED handles */
  enum kind kind;
  bool owned; /* STARTED: not yet joined or detached */
  bool lost;  /* the thread does not exist in this process (after fork) */
  bool registered;
};

static struct {
  tdm_lock lock;
  struct tdm_thread head; /* sentinel of the circular list */
  size_t count;
  bool fork_held; /* the prepare handler took `lock` */
  pthread_key_t foreign_key;
  tdm_thread *main;
} registry;

static struct tdm_thread main_static;
static uint64_t next_ident = 1;
static uint64_t started_names, foreign_names;

static __thread tdm_thread *current __attribute__((tls_model("initial-exec")));
static __thread struct tdm_thread foreign_self;

static void link_locked(tdm_thread *t) {
  t->next = &registry.head;
  t->prev = registry.head.prev;
  registry.head.prev->next = t;
  registry.head.prev = t;
  t->registered = true;
  registry.count++;
}

static void unlink_locked(tdm_thread *t) {
  if (!t->registered) return;
  t->prev->next = t->next;
  t->next->prev = t->prev;
  t->prev = t->next = NULL;
  t->registered = false;
  registry.count--;
}

/* Taking the registry again from a tdm_thread_foreach() callback would deadlock; say so. */
static void registry_lock(void) {
  TDM__REQUIRE(tdm__lock_acquire(&registry.lock, TDM_FOREVER) == 0,
               "tdm_thread: a tdm_thread_foreach() callback called a function that needs the "
               "thread registry (start, join, detach, count, foreach, or a first tdm_thread_self() "
               "in a foreign thread)");
}

static void registry_unlock(void) {
  tdm__lock_release(&registry.lock);
}

static void free_handle(tdm_thread *t) {
  if (t->name != t->own_name) tdm__free((void *)t->name);
  tdm__free(t);
}

static void unref(tdm_thread *t) {
  if (__atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) == 0) free_handle(t);
}

/* ---- Start, join, detach --------------------------------------------------------------------- */

static void *trampoline(void *arg) {
  tdm_thread *t = arg;
  t->native_id = tdm__tid();
  current = t;
  tdm__set_os_thread_name(t->name);
  registry_lock();
  link_locked(t);
  registry_unlock();
  __atomic_store_n(&t->started, 1, __ATOMIC_RELEASE);
  tdm__futex_wake(&t->started, 1, false);

  t->fn(t->arg);

  registry_lock();
  unlink_locked(t);
  registry_unlock();
  /* Destructors that run after this point and ask for their thread get a foreign handle. */
  current = NULL;
  __atomic_store_n(&t->done, 1, __ATOMIC_RELEASE);
  tdm__futex_wake(&t->done, INT32_MAX, false);
  unref(t);
  return NULL;
}

int tdm_thread_start(tdm_thread **out, tdm_thread_fn fn, void *arg, const tdm_thread_options *opt) {
  if (out == NULL || fn == NULL) return -EINVAL;
  tdm_thread *t = tdm__calloc(1, sizeof *t);
  if (t == NULL) return -ENOMEM;
  if (opt != NULL && opt->name != NULL) {
    t->name = tdm__strdup(opt->name);
    if (t->name == NULL) {
      tdm__free(t);
      return -ENOMEM;
    }
  } else {
    snprintf(t->own_name, sizeof t->own_name, "Thread-%llu",
             (unsigned long long)__atomic_add_fetch(&started_names, 1, __ATOMIC_RELAXED));
    t->name = t->own_name;
  }
  t->fn = fn;
  t->arg = arg;
  t->kind = STARTED;
  t->owned = true;
  t->refs = 2;
  t->ident = __atomic_add_fetch(&next_ident, 1, __ATOMIC_RELAXED);

  pthread_attr_t attr;
  int r = pthread_attr_init(&attr);
  if (r == 0 && opt != NULL && opt->stack_size != 0)
    r = pthread_attr_setstacksize(&attr, opt->stack_size);
  if (r == 0) {
    r = pthread_create(&t->pthread, &attr, trampoline, t);
    pthread_attr_destroy(&attr);
  }
  if (r != 0) {
    free_handle(t);
    return -r;
  }
  while (__atomic_load_n(&t->started, __ATOMIC_ACQUIRE) == 0)
    tdm__futex_wait(&t->started, 0, TDM__NEVER, false);
  *out = t;
  return 0;
}

/*
 * pthread_join() with an absolute CLOCK_MONOTONIC deadline: returns 0 or ETIMEDOUT. Used once the
 * thread's function has returned, for the rest of its exit (its thread-local destructors, which
 * may take any time).
 */
static int join_until(pthread_t p, int64_t deadline) {
  if (deadline == TDM__NEVER) return pthread_join(p, NULL);
#if defined(HAVE_PTHREAD_CLOCKJOIN_NP) && !defined(__SANITIZE_THREAD__)
  struct timespec ts = { (time_t)(deadline / 1000000000), (long)(deadline % 1000000000) };
  return pthread_clockjoin_np(p, NULL, CLOCK_MONOTONIC, &ts);
#else
  /* ThreadSanitizer intercepts pthread_timedjoin_np but not pthread_clockjoin_np, and the former
   * waits on CLOCK_REALTIME: wait in slices of at most 10 ms, each aimed anew at the monotonic
   * deadline, so a jump of the wall clock cannot stretch the wait by more than a slice. */
  for (;;) {
    int64_t left = deadline - tdm_clock_now();
    if (left <= 0) return pthread_tryjoin_np(p, NULL) == 0 ? 0 : ETIMEDOUT;
    if (left > TDM_MS(10)) left = TDM_MS(10);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t at = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + left;
    ts.tv_sec = (time_t)(at / 1000000000);
    ts.tv_nsec = (long)(at % 1000000000);
    int r = pthread_timedjoin_np(p, NULL, &ts);
    if (r != ETIMEDOUT) return r;
  }
#endif
}

int tdm_thread_join(tdm_thread *t, int64_t timeout) {
  if (t == NULL || t->kind != STARTED) return -EINVAL;
  TDM__REQUIRE(t->owned, "tdm_thread_join: thread %p was already joined or detached", (void *)t);
  if (t->lost) {
    free_handle(t);
    return 0;
  }
  if (t == current) return -EDEADLK;
  int64_t deadline = tdm__deadline(timeout);
  while (__atomic_load_n(&t->done, __ATOMIC_ACQUIRE) == 0) {
    if (timeout == 0) return -ETIMEDOUT;
    if (tdm__futex_wait(&t->done, 0, deadline, false) == -ETIMEDOUT &&
        __atomic_load_n(&t->done, __ATOMIC_ACQUIRE) == 0)
      return -ETIMEDOUT;
  }
  /* The function has returned; the thread may still be running thread-local destructors. */
  if (join_until(t->pthread, deadline) != 0) return -ETIMEDOUT;
  t->owned = false;
  unref(t);
  return 0;
}

void tdm_thread_detach(tdm_thread *t) {
  TDM__REQUIRE(t != NULL && t->kind == STARTED,
               "tdm_thread_detach: %p is not a handle returned by tdm_thread_start", (void *)t);
  TDM__REQUIRE(t->owned, "tdm_thread_detach: thread %p was already joined or detached", (void *)t);
  t->owned = false;
  if (t->lost) {
    free_handle(t);
    return;
  }
  pthread_detach(t->pthread);
  unref(t);
}

/* ---- Queries --------------------------------------------------------------------------------- */

bool tdm_thread_is_alive(const tdm_thread *t) {
  if (t->lost) return false;
  if (t->kind != STARTED) return true;
  return __atomic_load_n(&t->done, __ATOMIC_ACQUIRE) == 0;
}

uint64_t tdm_thread_ident(const tdm_thread *t) {
  return t->ident;
}

int32_t tdm_thread_native_id(const tdm_thread *t) {
  return t->native_id;
}

const char *tdm_thread_name(const tdm_thread *t) {
  return t->name;
}

static void foreign_gone(void *arg) {
  tdm_thread *t = arg;
  registry_lock();
  unlink_locked(t);
  registry_unlock();
  if (current == t) current = NULL;
}

tdm_thread *tdm_thread_self(void) {
  if (current != NULL) return current;
  if (tdm__is_main_thread()) {
    current = registry.main;
    return current;
  }
  tdm_thread *t = &foreign_self;
  memset(t, 0, sizeof *t);
  t->kind = FOREIGN;
  t->ident = __atomic_add_fetch(&next_ident, 1, __ATOMIC_RELAXED);
  t->native_id = tdm__tid();
  t->pthread = pthread_self();
  snprintf(t->own_name, sizeof t->own_name, "Dummy-%llu",
           (unsigned long long)__atomic_add_fetch(&foreign_names, 1, __ATOMIC_RELAXED));
  t->name = t->own_name;
  registry_lock();
  link_locked(t);
  registry_unlock();
  /* Without the key the handle would outlive its thread in the registry; if the C library
   * refuses, the thread simply stays listed, which is the lesser evil. */
  (void)pthread_setspecific(registry.foreign_key, t);
  current = t;
  return t;
}

tdm_thread *tdm_thread_main(void) {
  return registry.main;
}

size_t tdm_thread_count(void) {
  registry_lock();
  size_t n = registry.count;
  registry_unlock();
  return n;
}

int tdm_thread_foreach(int (*cb)(tdm_thread *t, void *arg), void *arg) {
  int r = 0;
  registry_lock();
  for (tdm_thread *t = registry.head.next; t != &registry.head && r == 0; t = t->next)
    r = cb(t, arg);
  registry_unlock();
  return r;
}

/* ---- Set-up and fork ------------------------------------------------------------------------- */

static void fork_prepare(void) {
  registry.fork_held = tdm__lock_acquire(&registry.lock, TDM_FOREVER) == 0;
}

static void fork_parent(void) {
  if (registry.fork_held) tdm__lock_release(&registry.lock);
}

static void fork_child(void) {
  tdm__lock_init_as(&registry.lock, TDM_SYNC_PRIVATE, TDM__LOCK_MAGIC);
  tdm_thread *self = current;
  for (tdm_thread *t = registry.head.next; t != &registry.head;) {
    tdm_thread *next = t->next;
    if (t != self) {
      unlink_locked(t);
      t->lost = true;
    }
    t = next;
  }
  if (self == NULL) {
    /* The forking thread had no handle yet: it becomes the main thread's. */
    self = &main_static;
    if (!main_static.registered) link_locked(&main_static);
    main_static.lost = false;
    current = self;
  }
  self->native_id = tdm__tid();
  registry.main = self;
}

__attribute__((constructor(102))) static void thread_init(void) {
  tdm__lock_init_as(&registry.lock, TDM_SYNC_PRIVATE, TDM__LOCK_MAGIC);
  registry.head.next = registry.head.prev = &registry.head;
  pthread_key_create(&registry.foreign_key, foreign_gone);
  main_static.kind = MAIN;
  main_static.ident = 1;
  main_static.native_id = (int32_t)getpid();
  main_static.pthread = pthread_self();
  snprintf(main_static.own_name, sizeof main_static.own_name, "MainThread");
  main_static.name = main_static.own_name;
  link_locked(&main_static);
  registry.main = &main_static;
  pthread_atfork(fork_prepare, fork_parent, fork_child);
}
