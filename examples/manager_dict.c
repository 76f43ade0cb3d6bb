/*
 * manager_dict: a dictionary and a counter shared by several processes through a manager. The
 * manager is a server process that holds the objects; every other process reaches them through
 * proxies. Four workers each put one entry in the dictionary and add to the counter 250 times;
 * then the parent prints what they left. Run it with no arguments:
 *
 *   build/examples/manager_dict
 *
 * The Python it re-creates:
 *
 *   from multiprocessing import Manager, Process
 *
 *   def worker(d, total, lock, n):
 *       d["worker-%d" % n] = "%d squared is %d" % (n, n * n)
 *       for _ in range(250):
 *           with lock:                    # Value has no atomic add: four round trips here,
 *               total.value += 1          # one with tdm_mvalue_add_int()
 *
 *   if __name__ == "__main__":
 *       with Manager() as m:
 *           d, total, lock = m.dict(), m.Value("q", 0), m.Lock()
 *           ps = [Process(target=worker, args=(d, total, lock, n)) for n in range(4)]
 *           for p in ps: p.start()
 *           for p in ps: p.join()
 *           for k, v in sorted(d.items()): print(k, v)
 *           print(total.value)
 *
 * The workers are started with spawn: a fresh program that shares nothing with the parent but
 * what it is sent, here the manager's address and the tokens that name the two objects. Each
 * worker connects to the manager and makes its own proxies from the tokens (Python pickles a
 * proxy into the same pair). Under fork a worker could also use the handle and the proxies it
 * inherited. The parent keeps its proxies until the workers are done: a token does not keep an
 * object alive, a proxy does.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tandem.h"

#define WORKERS 4
#define ADDS    250

/* What a worker is sent: plain bytes, as a spawned child gets them. */
struct job {
  char address[256];
  tdm_token dict, total;
  int n;
};

static int worker(void *arg, size_t size) {
  struct job job;
  if (size != sizeof job) return 1;
  memcpy(&job, arg, sizeof job);
  tdm_manager *m;
  tdm_proxy *d = NULL, *total = NULL;
  int rc = tdm_manager_connect(&m, job.address, NULL);
  if (rc != 0) {
    fprintf(stderr, "worker %d: connect: %s\n", job.n, tdm_strerror(rc));
    return 1;
  }
  rc = tdm_proxy_open(&d, m, &job.dict);
  if (rc == 0) rc = tdm_proxy_open(&total, m, &job.total);
  if (rc == 0) {
    char key[32], val[64];
    int klen = snprintf(key, sizeof key, "worker-%d", job.n);
    int vlen = snprintf(val, sizeof val, "%d squared is %d", job.n, job.n * job.n);
    rc = tdm_mdict_set(d, key, (size_t)klen, val, (size_t)vlen);
  }
  for (int i = 0; i < ADDS && rc == 0; i++)
    rc = tdm_mvalue_add_int(total, 1, NULL); /* one atomic step in the server */
  if (rc != 0) fprintf(stderr, "worker %d: %s\n", job.n, tdm_strerror(rc));
  tdm_proxy_close(d);
  tdm_proxy_close(total);
  tdm_manager_close(m); /* leaves the manager running: this process did not start it */
  return rc == 0 ? 0 : 1;
}

/* Orders the (key, value) pairs of tdm_mdict_items() by key. */
static int by_key(const void *a, const void *b) {
  const tdm_bytes *x = a, *y = b;
  size_t n = x->len < y->len ? x->len : y->len;
  int c = memcmp(x->data, y->data, n);
  return c != 0 ? c : (x->len > y->len) - (x->len < y->len);
}

int main(void) {
  tdm_manager *m;
  int rc = tdm_manager_start(&m, NULL); /* a server process on a private Unix socket */
  if (rc != 0) {
    fprintf(stderr, "manager: %s\n", tdm_strerror(rc));
    return 1;
  }
  tdm_proxy *d = NULL, *total = NULL;
  rc = tdm_manager_dict(m, &d);
  if (rc == 0) rc = tdm_manager_value_int(m, 0, &total);
  if (rc != 0) {
    fprintf(stderr, "create: %s\n", tdm_strerror(rc));
    return 1;
  }
  printf("manager: server process %d at %s\n", (int)tdm_manager_pid(m), tdm_manager_address(m));

  struct job job = { .n = 0 };
  if (strlen(tdm_manager_address(m)) >= sizeof job.address) return 1;
  snprintf(job.address, sizeof job.address, "%s", tdm_manager_address(m));
  tdm_proxy_token(d, &job.dict);
  tdm_proxy_token(total, &job.total);
  tdm_process *p[WORKERS];
  tdm_process_options o = { .start = TDM_START_SPAWN };
  for (int n = 0; n < WORKERS; n++) {
    job.n = n;
    rc = tdm_process_start(&p[n], worker, &job, sizeof job, &o);
    if (rc != 0) {
      fprintf(stderr, "start: %s\n", tdm_strerror(rc));
      return 1;
    }
  }
  int failed = 0;
  for (int n = 0; n < WORKERS; n++) {
    int code = -1;
    if (tdm_process_join(p[n], TDM_S(30)) != 0 || tdm_process_exitcode(p[n], &code) != 0 ||
        code != 0) {
      fprintf(stderr, "worker %d failed (exit code %d)\n", n, code);
      failed++;
      tdm_process_kill(p[n]);
      tdm_process_join(p[n], TDM_S(5));
    }
    tdm_process_close(p[n]);
  }

  /* What the workers left, in one consistent snapshot: key, value, key, value... */
  tdm_bytes_list *items = NULL;
  int64_t sum = -1;
  rc = tdm_mdict_items(d, &items);
  if (rc == 0) rc = tdm_mvalue_get_int(total, &sum);
  if (rc != 0) {
    fprintf(stderr, "read back: %s\n", tdm_strerror(rc));
    return 1;
  }
  size_t pairs = items->n / 2;
  qsort(items->v, pairs, 2 * sizeof items->v[0], by_key);
  printf("the dictionary has %zu entries:\n", pairs);
  for (size_t i = 0; i < pairs; i++)
    printf("  %.*s: %.*s\n", (int)items->v[2 * i].len, (const char *)items->v[2 * i].data,
           (int)items->v[2 * i + 1].len, (const char *)items->v[2 * i + 1].data);
  printf("the counter is %lld (%d workers x %d adds)\n", (long long)sum, WORKERS, ADDS);
  tdm_free(items);

  tdm_proxy_close(d);
  tdm_proxy_close(total);
  tdm_manager_close(m); /* we started the server: this stops it */
  return failed == 0 && pairs == WORKERS && sum == WORKERS * ADDS ? 0 : 1;
}
