/* The consumer of an installed libtandem-mpi: started without mpirun, it has no cluster, says
 * so, and a cluster pool does not open; a process pool still does. */
#include <stdio.h>

#include <tandem.h>
#include <tandem/cluster.h>

int main(void) {
  tdm_pool_options o = { .backend = TDM_POOL_CLUSTER };
  tdm_pool *p;
  if (tdm_cluster_status() != TDM_ECLUSTER || tdm_cluster_rank() != -1 ||
      tdm_pool_open(&p, &o) != TDM_ECLUSTER) {
    fprintf(stderr, "consumer: a cluster outside mpirun?\n");
    return 1;
  }
  o.backend = TDM_POOL_PROCESSES;
  o.workers = 1;
  if (tdm_pool_open(&p, &o) != 0) return 1;
  tdm_pool_close(p);
  return 0;
}
