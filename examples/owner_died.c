/*
 * owner_died: a child process takes a shared lock, starts an update, and is killed (SIGKILL)
 * while it holds the lock. The parent's next acquire gets the lock with -EOWNERDEAD, repairs the
 * half-done update, and the lock goes on working for everybody.
 *
 * The Python it corresponds to (module multiprocessing):
 *
 *   lock = Lock()
 *   p = Process(target=transfer_then_hang, args=(lock, account)); p.start()
 *   ...; p.kill(); p.join()
 *   lock.acquire()   # Python: hangs forever, the dead child's hold is never released
 *
 * A tandem shared lock is robust (as a pthread robust mutex): the kernel releases it when its
 * owner dies and tells the next owner, who must check the data the lock protects.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tandem.h"

struct account {
  tdm_lock lock;     /* guards debit and credit; outside it, debit == credit */
  tdm_event holding; /* the child sets it once it holds the lock */
  long debit, credit;
};

static pid_t child = -1;

static void die(const char *what, int rc) {
  fprintf(stderr, "%s%s%s\n", what, rc < 0 ? ": " : "", rc < 0 ? tdm_strerror(rc) : "");
  if (child > 0 && kill(child, SIGKILL) == 0) waitpid(child, NULL, 0); /* leave none behind */
  exit(1);
}

static void check(int rc, const char *what) {
  if (rc < 0) die(what, rc);
}

/* In the child: a transfer under the lock; with `hang`, it stops halfway, to be killed. */
static int transfer(struct account *a, bool hang) {
  int rc = tdm_lock_acquire(&a->lock, TDM_S(10));
  if (rc != 0) {
    fprintf(stderr, "child: %s\n", tdm_strerror(rc));
    return 1;
  }
  a->debit += 100;
  if (hang) {
    tdm_event_set(&a->holding);
    tdm_clock_sleep(TDM_S(30)); /* the parent kills us long before this ends */
    return 1;
  }
  a->credit += 100;
  tdm_lock_release(&a->lock);
  return 0;
}

static void run_child(struct account *a, bool hang) {
  child = fork();
  if (child == 0) _exit(transfer(a, hang));
  if (child < 0) check(-errno, "fork");
}

int main(void) {
  struct account *a =
      mmap(NULL, sizeof *a, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (a == MAP_FAILED) check(-errno, "mmap");
  check(tdm_lock_init(&a->lock, TDM_SYNC_SHARED), "tdm_lock_init");
  check(tdm_event_init(&a->holding, TDM_SYNC_SHARED), "tdm_event_init");

  run_child(a, true);
  check(tdm_event_wait(&a->holding, TDM_S(10)), "waiting for the child to hold the lock");
  int status = 0;
  if (kill(child, SIGKILL) != 0 || waitpid(child, &status, 0) != child) check(-errno, "kill");
  pid_t killed = child;
  child = -1; /* reaped */
  if (!WIFSIGNALED(status)) die("the child was not killed", 0);
  printf("child %d killed by signal %d while holding the lock\n", (int)killed, WTERMSIG(status));

  int rc = tdm_lock_acquire(&a->lock, TDM_S(10));
  printf("parent: tdm_lock_acquire returned %s: \"%s\"\n", tdm_err_name(rc), tdm_strerror(rc));
  if (rc != -EOWNERDEAD) die("expected EOWNERDEAD", 0);
  /* We hold the lock now; the data it guards may be half-updated, so check and repair it. */
  printf("parent: debit %ld, credit %ld: half done; rolling the transfer back\n", a->debit,
         a->credit);
  a->debit = a->credit;
  tdm_lock_release(&a->lock);

  run_child(a, false); /* the lock works across processes as before */
  if (waitpid(child, &status, 0) != child) check(-errno, "waitpid");
  child = -1;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) die("the second child failed", 0);
  check(tdm_lock_acquire(&a->lock, TDM_S(10)), "tdm_lock_acquire");
  printf("second child transferred under the same lock: debit %ld, credit %ld\n", a->debit,
         a->credit);
  bool ok = a->debit == 100 && a->credit == 100;
  tdm_lock_release(&a->lock);
  tdm_event_fini(&a->holding);
  tdm_lock_fini(&a->lock);
  munmap(a, sizeof *a);
  return ok ? 0 : 1;
}
