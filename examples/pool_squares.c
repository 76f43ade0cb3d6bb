/*
 * pool_squares: the square numbers of 0 to 9, computed by a pool of five worker processes.
 *
 * The Python it re-creates (the first example of the multiprocessing documentation):
 *
 *   from multiprocessing import Pool
 *
 *   def f(x):
 *       return x * x
 *
 *   if __name__ == "__main__":
 *       with Pool(5) as p:
 *           print(p.map(f, range(10)))    # [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
 *
 * In C a map works on arrays: the function reads one input item and writes one output item,
 * and tdm_pool_map() returns once every item has run. Items are bytes of a fixed size, so the
 * same function works on threads and on processes. No main guard is needed: a worker process
 * never runs main().
 */
#include <stdio.h>
#include <string.h>

#include "tandem.h"

#define N 10

/* Runs in a worker: one item in, one item out. Returning non-zero would fail this item alone. */
static int square(const void *in, void *out, const void *arg) {
  (void)arg;
  int x, y;
  memcpy(&x, in, sizeof x); /* items are bytes: copy them rather than assume their alignment */
  y = x * x;
  memcpy(out, &y, sizeof y);
  return 0;
}

int main(void) {
  tdm_pool_options opt = { .backend = TDM_POOL_PROCESSES, .workers = 5 };
  tdm_pool *pool;
  int rc = tdm_pool_open(&pool, &opt);
  if (rc != 0) {
    fprintf(stderr, "pool_squares: open: %s\n", tdm_strerror(rc));
    return 1;
  }

  int in[N], out[N];
  for (int i = 0; i < N; i++)
    in[i] = i;
  rc = tdm_pool_map(pool, square, in, sizeof in[0], out, sizeof out[0], N, NULL);
  tdm_pool_close(pool); /* waits for the workers to end (leaving `with Pool()` terminates them) */
  if (rc != 0) {
    fprintf(stderr, "pool_squares: map: %s\n", tdm_strerror(rc));
    return 1;
  }

  int ok = 1;
  printf("[");
  for (int i = 0; i < N; i++) {
    printf("%s%d", i > 0 ? ", " : "", out[i]);
    ok &= out[i] == i * i;
  }
  printf("]\n");
  return ok ? 0 : 1;
}
