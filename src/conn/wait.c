/*
 * wait.c: tdm_conn_wait(), Python's multiprocessing.connection.wait over connections, queues,
 * process sentinels, listeners and descriptors.
 *
 * Everything with a descriptor goes into one poll(), which wakes the caller the moment one is
 * ready. Queues have none: they are futex words in shared memory, written by processes that
 * know nothing of this waiter, so no descriptor could be made readable for them without making
 * every put pay for it. The choices were a helper thread per wait (a hidden thread in the
 * caller's path, which DESIGN.md rules out), or slices: poll() with a short timeout, then a look
 * at the queues (one load each). Slices it is, and they grow: 50 us at first, doubling to 1 ms,
 * so a queue that is ready soon is seen soon, and a long wait costs at most a thousand cheap
 * wake-ups a second. A set of one queue and nothing else waits on the queue's own futex.
 *
 * A connection may be ready without its socket being readable (its handle holds a whole
 * message, or it is broken), so connections are checked before every poll too.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <time.h>

#include "conn/conn.h"
#include "platform/platform.h"

#define SLICE_FIRST TDM_US(50)
#define SLICE_MAX   TDM_MS(1)

/* The descriptor to poll for an entry, or -1 for a queue. Returns -EINVAL for a bad entry. */
static int entry_fd(const tdm_wait_entry *e) {
  switch (e->kind) {
  case TDM_WAIT_CONN:
    if (e->conn == NULL) return -EINVAL;
    /* A sending end is always readable (its read side is shut down): it can never be ready. */
    return tdm__conn_can_recv(e->conn) ? tdm_conn_fd(e->conn) : -EBADF;
  case TDM_WAIT_QUEUE:
    return e->queue != NULL ? -1 : -EINVAL;
  case TDM_WAIT_PROCESS:
    return e->process != NULL ? tdm_process_sentinel(e->process) : -EINVAL;
  case TDM_WAIT_LISTENER:
    return e->listener != NULL ? tdm_listener_fd(e->listener) : -EINVAL;
  case TDM_WAIT_FD:
    return e->fd >= 0 ? e->fd : -EBADF;
  }
  return -EINVAL;
}

/* Marks the entries that are ready without a poll (queues, connections' handles). */
static size_t check_now(tdm_wait_entry *set, size_t n) {
  size_t ready = 0;
  for (size_t i = 0; i < n; i++) {
    tdm_wait_entry *e = &set[i];
    if (e->kind == TDM_WAIT_QUEUE)
      e->ready = tdm_queue_ready(e->queue);
    else if (e->kind == TDM_WAIT_CONN)
      e->ready = tdm__conn_ready_now(e->conn);
    else
      e->ready = false;
    ready += e->ready;
  }
  return ready;
}

int tdm_conn_wait(tdm_wait_entry *set, size_t n, int64_t timeout) {
  if (set == NULL && n > 0) return -EINVAL;
  tdm_deadline d = tdm_deadline_after(timeout);
  struct pollfd small[16];
  struct pollfd *pf = small;
  size_t n_queues = 0, n_fds = 0;
  for (size_t i = 0; i < n; i++) {
    int fd = entry_fd(&set[i]);
    if (fd < -1) return fd;
    if (fd == -1) n_queues++;
    set[i].ready = false;
  }
  if (n == 1 && n_queues == 1) {
    /* One queue alone: its own futex wakes us at once. -EAGAIN is its "not now". */
    int r = tdm_queue_wait_ready(set[0].queue, timeout);
    if (r == -EAGAIN) r = -ETIMEDOUT;
    if (r < 0) return r;
    set[0].ready = true;
    return 1;
  }
  if (n > sizeof small / sizeof small[0]) {
    pf = tdm__calloc(n, sizeof *pf);
    if (pf == NULL) return -ENOMEM;
  }
  for (size_t i = 0; i < n; i++) {
    int fd = entry_fd(&set[i]);
    if (fd >= 0) pf[n_fds++] = (struct pollfd){ .fd = fd, .events = POLLIN };
  }
  int64_t slice = SLICE_FIRST;
  int rc;
  for (;;) {
    size_t ready = check_now(set, n);
    int64_t wait = 0;
    if (ready == 0) {
      int64_t left = tdm_deadline_left(d); /* TDM_FOREVER (negative) when there is no deadline */
      wait = n_queues > 0 && (left < 0 || left > slice) ? slice : left;
    }
    struct timespec ts = { .tv_sec = (time_t)(wait / TDM_S(1)),
                           .tv_nsec = (long)(wait % TDM_S(1)) };
    int r = ppoll(pf, n_fds, wait < 0 ? NULL : &ts, NULL);
    if (r < 0 && errno != EINTR) {
      rc = -errno;
      break;
    }
    if (r > 0) {
      size_t k = 0;
      rc = 0;
      for (size_t i = 0; i < n; i++) {
        if (set[i].kind == TDM_WAIT_QUEUE) continue;
        short re = pf[k++].revents;
        if (re & POLLNVAL) rc = -EBADF;
        if (re != 0) set[i].ready = true;
      }
      if (rc < 0) break;
    }
    ready = 0;
    for (size_t i = 0; i < n; i++)
      ready += set[i].ready;
    if (ready > 0) {
      rc = (int)(ready > INT32_MAX ? INT32_MAX : ready);
      break;
    }
    if (tdm_deadline_passed(d) || timeout == 0) {
      rc = -ETIMEDOUT;
      break;
    }
    if (slice < SLICE_MAX) slice *= 2;
    if (slice > SLICE_MAX) slice = SLICE_MAX;
  }
  if (pf != small) tdm__free(pf);
  return rc;
}
