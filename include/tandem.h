/*
 * tandem.h: the whole public API of tandem, Python's threading, multiprocessing and
 * concurrent.futures in C. Include this header; link with -ltandem (pkg-config tandem, or
 * find_package(tandem) and the target tandem::tandem).
 *
 * Modules: base (version, CPU count, allocator), error, clock (timeouts and deadlines),
 * thread (threads, thread-local storage, timers), sync (locks, conditions, semaphores, events,
 * barriers, between threads and between processes), gil (a CPython-style GIL), shm (shared segments
 * with owners, shared arrays, an arena allocator), process (processes and start methods), queue
 * (message queues), conn (pipes, connections, listeners and clients with authentication,
 * waiting on many objects), future and pool (pools of threads or processes: tasks, futures,
 * map and imap, crash recovery), manager (shared objects in a server process). The cluster
 * backend of the pool is a library of its own, libtandem-mpi, with its header tandem/cluster.h
 * (not included here).
 */
#ifndef TANDEM_H
#define TANDEM_H

#include "tandem/base.h"
#include "tandem/error.h"
#include "tandem/clock.h"
#include "tandem/thread.h"
#include "tandem/sync.h"
#include "tandem/gil.h"
#include "tandem/shm.h"
#include "tandem/process.h"
#include "tandem/queue.h"
#include "tandem/conn.h"
#include "tandem/future.h"
#include "tandem/pool.h"
#include "tandem/manager.h"

#endif /* TANDEM_H */
