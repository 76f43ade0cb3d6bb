/*
 * threads: named threads, the registry of live threads, a join that times out, thread-local
 * storage with a destructor, and timers, one that fires and one that is cancelled.
 *
 * The Python it corresponds to (module threading):
 *
 *   local, go = threading.local(), Event()
 *   workers = [Thread(target=worker, name=f"worker-{i}") for i in (1, 2, 3)]   # then start
 *   print(current_thread().name, get_native_id(), active_count(), threading.enumerate())
 *   workers[0].join(timeout=0.1)           # times out: worker-1 waits for `go`
 *   go.set(); [w.join() for w in workers]
 *   Timer(0.05, ring).start(); t = Timer(10, ring); t.start(); t.cancel()
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "tandem.h"

enum { NWORKERS = 3 };

static tdm_tls scratch; /* each thread's own buffer (threading.local) */
static tdm_event go;    /* the workers wait for it, so that they are alive while we look */
static atomic_int destroyed, rang;

static void check(int rc, const char *what) {
  if (rc < 0) {
    fprintf(stderr, "%s: %s (%s)\n", what, tdm_strerror(rc), tdm_err_name(rc));
    exit(1);
  }
}

/* Runs in each worker as it ends, with the value the worker stored in `scratch`. */
static void free_scratch(void *buf) {
  free(buf);
  atomic_fetch_add(&destroyed, 1);
}

static void worker(void *arg) {
  (void)arg;
  char *buf = malloc(64);
  if (buf == NULL) check(-ENOMEM, "malloc");
  snprintf(buf, 64, "scratch of %s", tdm_thread_name(tdm_thread_self()));
  check(tdm_tls_set(&scratch, buf), "tdm_tls_set");
  check(tdm_event_wait(&go, TDM_S(10)), "tdm_event_wait");
  if (tdm_tls_get(&scratch) != buf) check(-EINVAL, "tdm_tls_get");
}

static int show(tdm_thread *t, void *arg) {
  (void)arg;
  printf("  %-10s ident %-3llu native id %-8d alive %s\n", tdm_thread_name(t),
         (unsigned long long)tdm_thread_ident(t), (int)tdm_thread_native_id(t),
         tdm_thread_is_alive(t) ? "yes" : "no");
  return 0;
}

static void ring(void *arg) {
  printf("timer '%s' fired (%s)\n", tdm_thread_name(tdm_thread_self()), (const char *)arg);
  atomic_fetch_add(&rang, 1);
}

int main(void) {
  check(tdm_tls_init(&scratch, free_scratch), "tdm_tls_init");
  check(tdm_event_init(&go, TDM_SYNC_PRIVATE), "tdm_event_init");
  tdm_thread *workers[NWORKERS];
  for (int i = 0; i < NWORKERS; i++) {
    char name[16];
    snprintf(name, sizeof name, "worker-%d", i + 1);
    tdm_thread_options opt = { .name = name }; /* the name is copied */
    check(tdm_thread_start(&workers[i], worker, NULL, &opt), "tdm_thread_start");
  }
  tdm_thread *me = tdm_thread_self();
  printf("this is %s (native id %d); %zu threads are alive:\n", tdm_thread_name(me),
         (int)tdm_thread_native_id(me), tdm_thread_count());
  check(tdm_thread_foreach(show, NULL), "tdm_thread_foreach");

  int rc = tdm_thread_join(workers[0], TDM_MS(100)); /* worker-1 waits for `go`: too early */
  if (rc != -ETIMEDOUT) {
    fprintf(stderr, "join: %s, not ETIMEDOUT\n", tdm_err_name(rc));
    return 1;
  }
  printf("join(%s, 100 ms): %s; alive: %s\n", tdm_thread_name(workers[0]), tdm_err_name(rc),
         tdm_thread_is_alive(workers[0]) ? "yes" : "no");

  tdm_event_set(&go);
  for (int i = 0; i < NWORKERS; i++) /* a successful join frees the handle */
    check(tdm_thread_join(workers[i], TDM_FOREVER), "tdm_thread_join");
  printf("joined %d workers; their threads destroyed %d thread-local buffers; main's is %s\n",
         NWORKERS, atomic_load(&destroyed), tdm_tls_get(&scratch) == NULL ? "NULL" : "set");

  tdm_timer *fires, *cancelled;
  tdm_thread_options fopt = { .name = "timer-fires" }, copt = { .name = "timer-cancelled" };
  check(tdm_timer_start(&fires, TDM_MS(50), ring, "after 50 ms", &fopt), "tdm_timer_start");
  check(tdm_timer_start(&cancelled, TDM_S(10), ring, "after 10 s", &copt), "tdm_timer_start");
  check(tdm_timer_cancel(cancelled), "tdm_timer_cancel"); /* 0: ring() will not run */
  printf("timer 'timer-cancelled' cancelled; fired: %s\n",
         tdm_timer_fired(cancelled) ? "yes" : "no");
  rc = tdm_timer_join(cancelled, TDM_S(10)); /* -ECANCELED: joined, and ring() never ran */
  if (rc != -ECANCELED) check(rc == 0 ? -EINVAL : rc, "tdm_timer_join");
  check(tdm_timer_join(fires, TDM_S(10)), "tdm_timer_join");
  printf("timers joined; ring() ran %d time(s); %zu thread(s) alive\n", atomic_load(&rang),
         tdm_thread_count());

  tdm_event_fini(&go);
  tdm_tls_fini(&scratch);
  return atomic_load(&destroyed) == NWORKERS && atomic_load(&rang) == 1 ? 0 : 1;
}
