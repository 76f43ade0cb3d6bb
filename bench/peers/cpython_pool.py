#!/usr/bin/env python3
"""CPython's peers of `tandem bench`'s pool workloads (bench/pool_bench.c).

`tandem bench` runs this script with the keys of the workloads it measured:

    python3 -B cpython_pool.py [--runs N] [--quick] WORKLOAD...

and reads its standard output: one JSON object per line, first {"python": VERSION}, then for
each workload and peer either {"workload", "impl", "ns_per_op", "runs"[, "goal"]} or
{"workload", "impl", "error"}. A "goal" is the least ratio (peer time / tandem time) that
meets one of the project's goals; `tandem bench` prints whether the run meets it.

The peers are multiprocessing.Pool and ThreadPool (multiprocessing.pool) and
concurrent.futures' ProcessPoolExecutor and ThreadPoolExecutor, processes forked by the "fork"
context. Each workload is the C one, with the same unit (one map item, one task, one batch of
64 waits), written as a Python program writes it:

  pool/map-1m/*         pool.map(f, items) with the default chunking and
                        list(executor.map(f, items)) (chunksize 1, the default), f(x) = x * x + 1
                        over a list of ints. Pool.map and ThreadPool.map run the 1,000,000 items
                        (--quick: 250,000); the executors make a future per item and are too
                        slow for that (20-240 us an item here), so they run fewer items and the
                        row's name says how many. The time is per item either way.
  pool/cpu-8x10m/*      8 tasks submitted (apply_async, or executor.submit), then their results
                        read: Pool and ProcessPoolExecutor against the process backend,
                        ThreadPoolExecutor and ThreadPool (which the GIL serialises) against
                        the thread and auto backends. A Python loop summing to 10,000,000 takes about 1.5 s, so each
                        task sums to 200,000 and its time is multiplied by 50 (the row says so):
                        the per-task overhead of the pool (25-190 us here) is multiplied
                        too, which adds about 2% to ProcessPoolExecutor's time, less to the
                        others'.
  pool/wait-64x50ms/*   64 tasks of time.sleep(0.05), submitted, then waited for; a new pool
                        for each run, as in C (its making is not timed; an executor starts its
                        threads as tasks arrive, which is timed, as it is what it does).
                        threads: 64 workers, as tandem's; auto: ThreadPoolExecutor's default
                        workers, min(32, cpus + 4); processes: Pool() and ProcessPoolExecutor()
                        with their default workers (a batch takes 64 / cpus x 50 ms: not run
                        with --quick).
  pool/submit-200k/*    empty tasks: submit all, then wait for each (f.result(), r.get()).
                        Fewer than 200,000 (the row says how many); the time is per task.

The pools of the map, CPU and submit workloads are made once, before the warm-up, and kept for
the runs, as tandem's are. A peer measured for several keys (the auto backend's rows repeat the
thread backend's peers) is measured once and reported under each key.
"""

import concurrent.futures as cf
import multiprocessing
import os
import time
from multiprocessing.pool import ThreadPool

from peerlib import emit, measure, options, unknown

now = time.monotonic_ns
MP = multiprocessing.get_context("fork")

CPU_SUM, CPU_SCALE = 200_000, 50  # each task sums to CPU_SUM; its time x CPU_SCALE


def item(x):
    return x * x + 1


def sum_to(n):
    s = 0
    for i in range(n):
        s += i
    return s


def empty():
    return None


def nap():
    time.sleep(0.05)


def cpus():
    """The CPUs that the default pools count: os.cpu_count() before Python 3.13,
    os.process_cpu_count() (which honours the affinity mask) since. Pool() and
    ProcessPoolExecutor() start that many workers, ThreadPoolExecutor() min(32, cpus() + 4)."""
    return getattr(os, "process_cpu_count", os.cpu_count)() or 1


# ---- Pools: made, run, ended the same way whatever the kind ------------------------------------


def is_pool(kind):
    """multiprocessing's pools (apply_async, terminate) rather than an executor."""
    return kind in ("Pool", "ThreadPool")


def make(kind, workers=None):
    if kind == "Pool":
        return MP.Pool(workers)
    if kind == "ThreadPool":
        return ThreadPool(workers)
    if kind == "ProcessPoolExecutor":
        return cf.ProcessPoolExecutor(workers, mp_context=MP)
    return cf.ThreadPoolExecutor(workers)


def end(kind, p):
    if is_pool(kind):
        p.terminate()
        p.join()
    else:
        p.shutdown(wait=True)


def run_all(kind, p, fn, args, n):
    """Submits fn(*args) n times, then waits for each result, in order; returns them."""
    if is_pool(kind):
        return [r.get() for r in [p.apply_async(fn, args) for _ in range(n)]]
    return [f.result() for f in [p.submit(fn, *args) for _ in range(n)]]


_kept = {}


def kept(kind):
    if kind not in _kept:
        _kept[kind] = make(kind)
    return _kept[kind]


def release():
    for kind, p in _kept.items():
        end(kind, p)
    _kept.clear()


# ---- Workloads: each returns run(n) -> (ns, operations) ---------------------------------------


def map_run(kind):
    def run(n):
        p = kept(kind)
        data = list(range(n))
        t0 = now()
        if is_pool(kind):
            out = p.map(item, data)
        else:
            out = list(p.map(item, data))
        t = now() - t0
        if out[-1] != item(n - 1) or len(out) != n:
            raise RuntimeError("wrong map output")
        return t, n

    return run


def cpu_run(kind):
    def run(n):
        p = kept(kind)
        t0 = now()
        sums = run_all(kind, p, sum_to, (CPU_SUM,), n)
        t = now() - t0
        if sums != [CPU_SUM * (CPU_SUM - 1) // 2] * n:
            raise RuntimeError("wrong sums")
        return t * CPU_SCALE, n

    return run


def wait_run(kind, workers):
    def run(batches):
        p = make(kind, workers)
        try:
            t0 = now()
            for _ in range(batches):
                run_all(kind, p, nap, (), 64)
            t = now() - t0
        finally:
            end(kind, p)
        return t, batches

    return run


def submit_run(kind):
    def run(n):
        p = kept(kind)
        t0 = now()
        run_all(kind, p, empty, (), n)
        return now() - t0, n

    return run


# ---- The table --------------------------------------------------------------------------------
# A peer: (id, name, run, (iterations, --quick iterations), goal or None). The id is what the
# cache keys on; a name with "{n}" gets the number of items or tasks of this run.

MP_NAME = {
    "Pool": "CPython multiprocessing.Pool",
    "ThreadPool": "CPython multiprocessing.pool.ThreadPool",
    "ProcessPoolExecutor": "CPython ProcessPoolExecutor",
    "ThreadPoolExecutor": "CPython ThreadPoolExecutor",
}


def map_peer(kind, iters, goal=None):
    how = ".map, default chunks" if is_pool(kind) else ".map, chunksize 1"
    return ("map/" + kind, MP_NAME[kind] + how + " ({n:,} items)", map_run(kind), iters, goal)


def cpu_peer(kind):
    how = ".apply_async x8" if is_pool(kind) else ".submit x8"
    name = MP_NAME[kind] + how + " (tasks sum to %s, time x %d)" % (f"{CPU_SUM:,}", CPU_SCALE)
    return ("cpu/" + kind, name, cpu_run(kind), (8, 8), None)


def submit_peer(kind, iters, goal=None):
    how = ".apply_async" if is_pool(kind) else ".submit"
    name = MP_NAME[kind] + how + " + wait ({n:,} tasks)"
    return ("submit/" + kind, name, submit_run(kind), iters, goal)


def peers_of(key):
    group, _, backend = key.rpartition("/")
    threads = backend in ("threads", "auto")
    goals = backend == "threads"
    if group == "pool/map-1m":
        if threads:
            return [
                map_peer("ThreadPool", (1_000_000, 250_000)),
                map_peer("ThreadPoolExecutor", (10_000, 2_000)),
            ]
        return [
            map_peer("Pool", (1_000_000, 250_000), goal=50),
            map_peer("ProcessPoolExecutor", (2_000, 500)),
        ]
    if group == "pool/cpu-8x10m":
        if threads:
            return [cpu_peer("ThreadPoolExecutor"), cpu_peer("ThreadPool")]
        return [cpu_peer("Pool"), cpu_peer("ProcessPoolExecutor")]
    if group == "pool/wait-64x50ms":
        if backend == "threads":
            return [
                ("wait/TPE64", "CPython ThreadPoolExecutor(64)", wait_run("ThreadPoolExecutor", 64), (1, 1), None),
                ("wait/TP64", "CPython ThreadPool(64)", wait_run("ThreadPool", 64), (1, 1), None),
            ]
        if backend == "auto":
            name = "CPython ThreadPoolExecutor() (default workers: %d)" % min(32, cpus() + 4)
            return [("wait/TPE", name, wait_run("ThreadPoolExecutor", None), (1, 1), None)]
        pool = "CPython multiprocessing.Pool() (default workers: %d)" % cpus()
        ppe = "CPython ProcessPoolExecutor() (default workers: %d)" % cpus()
        return [
            ("wait/Pool", pool, wait_run("Pool", None), (1, 0), None),
            ("wait/PPE", ppe, wait_run("ProcessPoolExecutor", None), (1, 0), None),
        ]
    if group == "pool/submit-200k":
        if threads:
            return [
                submit_peer("ThreadPoolExecutor", (20_000, 5_000), goal=100 if goals else None),
                submit_peer("ThreadPool", (20_000, 5_000)),
            ]
        return [
            submit_peer("ProcessPoolExecutor", (2_000, 500)),
            submit_peer("Pool", (5_000, 1_000)),
        ]
    return None


def main():
    args = options(__doc__)
    cache = {}
    try:
        for key in args.workloads:
            peers = peers_of(key)
            if peers is None:
                unknown(key)
                continue
            for pid, name, run, iters, goal in peers:
                n = iters[1] if args.quick else iters[0]
                impl = name.format(n=n)
                if n == 0:
                    emit({"workload": key, "impl": impl, "error": "not run with --quick"})
                    continue
                if pid not in cache:
                    try:
                        cache[pid] = ("ns", measure(run, n, args.runs))
                    except Exception as e:
                        cache[pid] = ("error", "%s: %s" % (type(e).__name__, e))
                what, value = cache[pid]
                if what == "ns":
                    line = {"workload": key, "impl": impl, "ns_per_op": round(value, 3),
                            "runs": args.runs}
                    if goal is not None:
                        line["goal"] = goal
                    emit(line)
                else:
                    emit({"workload": key, "impl": impl, "error": value})
    finally:
        release()


if __name__ == "__main__":
    main()
