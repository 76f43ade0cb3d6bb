/*
 * tandem/cluster.h: the cluster backend, a pool whose workers are the ranks of an MPI job
 * (Open MPI), for programs that outgrow one machine. It lives in its own library,
 * libtandem-mpi (pkg-config tandem-mpi, or the CMake target tandem::tandem_mpi); libtandem
 * itself does not link MPI.
 *
 * A program written for the process backend runs on a cluster when it opens its pool with
 * tdm_pool_options.backend = TDM_POOL_CLUSTER, links libtandem-mpi and is started with
 * `mpirun -np N prog`. Every rank runs the same binary. Rank 0 runs main(); ranks 1..N-1 never
 * reach main(): libtandem-mpi's constructor turns them into workers before it, and they exit
 * when rank 0 exits. Everything in pool.h and future.h works as on processes: submit and
 * futures, map (chunked, results in order), imap and imap-unordered, wait and as_completed,
 * statistics (one worker per rank), initializers and finalizers.
 *
 * Start-up. Before main(), every rank initializes MPI and sends rank 0 a fingerprint of its
 * program, libtandem and libtandem-mpi (their GNU build-ids, or a checksum of the file when a
 * build has none). A task is named by (loaded object, offset), as under spawn, which is only
 * right when every rank runs the same code: a rank whose fingerprint differs makes rank 0 print
 * one line naming the rank, its host and what differs, and cluster pools then fail to open
 * with TDM_EMISMATCH.
 *
 * Messages. Arguments, results and map chunks travel as MPI point-to-point messages (a
 * duplicate of MPI_COMM_WORLD, so a program's own MPI traffic does not mix with the pool's).
 * One thread of rank 0 (the dispatcher) talks to the ranks; it keeps a few units (tasks or
 * chunks) in flight per rank and gives the next one to whichever rank returns a result first,
 * so a rank that finishes early gets more. Map inputs leave in chunks and outputs are written
 * into the caller's array in place, in order.
 *
 * Failures. A task that returns non-zero fails its future with TDM_ETASK, as elsewhere. A
 * task's timeout ends its future with TDM_ETASKTIMEOUT at the deadline; the rank finishes the
 * task and its result is dropped (a hybrid rank with a process pool kills it instead). A rank
 * that dies (a crash in a task, a kill, a lost host) cannot be survived: Open MPI ends the whole
 * job (ULFM, which would let it go on, is not in Debian's Open MPI). Before the job ends, the
 * dying rank prints which task it ran and of what, and rank 0 prints what every rank was
 * running. To survive crashing tasks, give each rank a process pool of its own
 * (tdm_pool_options.rank_workers with TDM_POOL_PROCESSES): a crash then kills a process of
 * that rank, and the task fails with TDM_EWORKER.
 *
 * MPI. libtandem-mpi calls MPI_Init_thread() before main() when the program was started by
 * mpirun, and MPI_Finalize() when rank 0 exits. A program that uses MPI itself must not call
 * MPI_Init() again (check MPI_Initialized()), must not call MPI_Finalize(), and may use MPI
 * from rank 0's main() only; while a pool is open (its dispatcher thread talks MPI too), only if
 * MPI_Query_thread() says MPI_THREAD_MULTIPLE, as Debian's Open MPI gives. One cluster pool may
 * be open at a time.
 *
 * The functions here are for information; a pool needs none of them.
 */
#ifndef TANDEM_CLUSTER_H
#define TANDEM_CLUSTER_H

#include "tandem/pool.h"

#ifdef __cplusplus
extern "C" {
#endif

/* This process's rank in the job (0 in main()), or -1 when the program was not started by
 * mpirun. A process that a rank started (a worker of a hybrid rank's pool, a program it ran)
 * is no rank itself, and no cluster opens there, but it gets the rank of the one that started
 * it. */
TDM_API int tdm_cluster_rank(void);

/* The number of ranks in the job (rank 0 and the worker ranks); 1 when not started by mpirun
 * (nor by a rank, as above). */
TDM_API int tdm_cluster_size(void);

/*
 * Whether a cluster pool can open here: 0; TDM_ECLUSTER when the program was not started by
 * mpirun, MPI failed to start (or gives less than MPI_THREAD_SERIALIZED), or the job has no
 * worker rank; TDM_EMISMATCH when a rank runs a different build (see above).
 */
TDM_API int tdm_cluster_status(void);

/*
 * The name of the host that runs `rank` (as MPI_Get_processor_name() gives it there), or NULL
 * for a rank that is not in the job. Valid in rank 0, until the program ends.
 */
TDM_API const char *tdm_cluster_host(int rank);

#ifdef __cplusplus
}
#endif

#endif /* TANDEM_CLUSTER_H */
