/*
 * clock.c: CLOCK_MONOTONIC time and deadlines. A timeout becomes an absolute deadline once, at
 * the start of a call; every wait inside the call is made against that deadline.
 */
#include <errno.h>
#include <time.h>

#include "base/internal.h"

static int64_t read_clock(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t tdm_clock_now(void) {
  return read_clock(CLOCK_MONOTONIC);
}

int64_t tdm_clock_thread_cpu(void) {
  return read_clock(CLOCK_THREAD_CPUTIME_ID);
}

int64_t tdm_clock_process_cpu(void) {
  return read_clock(CLOCK_PROCESS_CPUTIME_ID);
}

tdm_deadline tdm_deadline_after(int64_t timeout) {
  tdm_deadline d = { INT64_MAX };
  if (timeout < 0) return d;
  int64_t now = tdm_clock_now();
  d.at = timeout > INT64_MAX - now ? INT64_MAX : now + timeout;
  return d;
}

int64_t tdm_deadline_left(tdm_deadline d) {
  if (d.at == INT64_MAX) return TDM_FOREVER;
  int64_t left = d.at - tdm_clock_now();
  return left > 0 ? left : 0;
}

bool tdm_deadline_passed(tdm_deadline d) {
  return d.at != INT64_MAX && tdm_clock_now() >= d.at;
}

int tdm_clock_sleep(int64_t duration) {
  if (duration < 0) return -EINVAL;
  int64_t at = tdm_deadline_after(duration).at;
  struct timespec ts = { (time_t)(at / 1000000000), (long)(at % 1000000000) };
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
  }
  return 0;
}
