#!/usr/bin/env python3
"""CPython's peers of `tandem bench`'s sync workloads (bench/sync_bench.c).

`tandem bench` runs this script with the keys of the workloads it measured:

    python3 -B cpython_sync.py [--runs N] [--quick] WORKLOAD...

and reads its standard output: one JSON object per line, first {"python": VERSION}, then for
each workload either {"workload", "impl", "ns_per_op", "runs"} or {"workload", "impl", "error"}.
Every workload is the same shape as its C counterpart (see sync_bench.c): one warm-up run, then
N timed runs, median reported. Processes are forked (multiprocessing's "fork" context) and are
given a start gate, so that starting them is not timed. Iteration counts are small: the whole
script takes a few seconds.
"""

import multiprocessing
import re
import threading
import time
import types

from peerlib import options, run_workloads, start_together

now = time.monotonic_ns  # CLOCK_MONOTONIC: comparable between processes
MP = multiprocessing.get_context("fork")


# ---- Uncontended ------------------------------------------------------------------------------


def uncontended(make):
    def run(n):
        lock = make()
        t0 = now()
        for _ in range(n):
            with lock:
                pass
        return now() - t0, n

    return run


def reentrant(make):
    def run(n):
        lock = make()
        with lock:
            t0 = now()
            for _ in range(n):
                with lock:
                    pass
            t = now() - t0
        return t, n

    return run


# ---- Contended --------------------------------------------------------------------------------


def contended_threads(parties):
    def run(n):
        lock = threading.Lock()
        counter = [0]
        ends = [0] * parties
        gate = threading.Barrier(parties + 1)

        def party(i):
            gate.wait()
            for _ in range(n):
                with lock:
                    counter[0] += 1
            ends[i] = now()

        threads = [threading.Thread(target=party, args=(i,)) for i in range(parties)]
        for t in threads:
            t.start()
        gate.wait()
        t0 = now()
        for t in threads:
            t.join()
        if counter[0] != n * parties:
            raise RuntimeError("counter %d, expected %d" % (counter[0], n * parties))
        return max(ends) - t0, n * parties

    return run


def _contended_proc(lock, counter, ready, go, ends, i, n):
    ready.release()
    go.wait()
    for _ in range(n):
        with lock:
            counter.value += 1
    ends[i] = now()


def contended_procs(parties):
    def run(n):
        lock = MP.Lock()
        counter = MP.RawValue("q", 0)
        ends = MP.RawArray("q", parties)
        ready, go = MP.Semaphore(0), MP.Event()
        procs = [
            MP.Process(
                target=_contended_proc, args=(lock, counter, ready, go, ends, i, n), daemon=True
            )
            for i in range(parties)
        ]
        t0 = start_together(procs, ready, go, now)
        if counter.value != n * parties:
            raise RuntimeError("counter %d, expected %d" % (counter.value, n * parties))
        return max(ends) - t0, n * parties

    return run


# ---- Ping-pong --------------------------------------------------------------------------------
# Side A runs in the calling thread and is timed; side B runs in a thread or a forked process.


def cond_a(cond, turn, n):
    with cond:
        for _ in range(n):
            turn.value = 1
            cond.notify()
            while turn.value == 1:
                cond.wait()


def cond_b(cond, turn, n):
    with cond:
        for _ in range(n):
            while turn.value == 0:
                cond.wait()
            turn.value = 0
            cond.notify()


def sem_a(sa, sb, n):
    for _ in range(n):
        sb.release()
        sa.acquire()


def sem_b(sa, sb, n):
    for _ in range(n):
        sb.acquire()
        sa.release()


def event_a(ea, eb, n):
    for _ in range(n):
        eb.set()
        ea.wait()
        ea.clear()


def event_b(ea, eb, n):
    for _ in range(n):
        eb.wait()
        eb.clear()
        ea.set()


def _side_b_proc(ready, fn, args):
    ready.release()
    fn(*args)


def pair(side_a, side_b, make_args, procs):
    def run(n):
        args = make_args()
        if procs:
            ready = MP.Semaphore(0)
            b = MP.Process(target=_side_b_proc, args=(ready, side_b, args + (n,)), daemon=True)
            b.start()
            ready.acquire()
        else:
            b = threading.Thread(target=side_b, args=args + (n,))
            b.start()  # returns once the thread runs
        t0 = now()
        side_a(*args, n)
        t = now() - t0
        b.join()
        if procs and b.exitcode != 0:
            raise RuntimeError("side B exited with %s" % b.exitcode)
        return t, n

    return run


def thread_cond():
    return threading.Condition(threading.Lock()), types.SimpleNamespace(value=0)


def proc_cond():
    return MP.Condition(MP.Lock()), MP.RawValue("i", 0)


def thread_sems():
    return threading.Semaphore(0), threading.Semaphore(0)


def proc_sems():
    return MP.Semaphore(0), MP.Semaphore(0)


def thread_events():
    return threading.Event(), threading.Event()


def proc_events():
    return MP.Event(), MP.Event()


# ---- The table --------------------------------------------------------------------------------

LOCK_N, PING_N = (50000, 20000), (2000, 500)  # iterations: default, --quick

# key: (impl, run(n), (iterations, quick iterations))
WORKLOADS = {
    "lock/uncontended/thread": ("threading.Lock", uncontended(threading.Lock), LOCK_N),
    "lock/uncontended/shared": ("multiprocessing.Lock", uncontended(MP.Lock), LOCK_N),
    "rlock/uncontended/thread": ("threading.RLock", uncontended(threading.RLock), LOCK_N),
    "rlock/reentrant/thread": ("threading.RLock (held once)", reentrant(threading.RLock), LOCK_N),
    "cond/ping-pong/threads": (
        "threading.Condition(Lock)", pair(cond_a, cond_b, thread_cond, False), PING_N),
    "cond/ping-pong/procs": (
        "multiprocessing.Condition(Lock)", pair(cond_a, cond_b, proc_cond, True), PING_N),
    "sem/hand-off/threads": ("threading.Semaphore", pair(sem_a, sem_b, thread_sems, False), PING_N),
    "sem/hand-off/procs": (
        "multiprocessing.Semaphore", pair(sem_a, sem_b, proc_sems, True), PING_N),
    "event/ping-pong/threads": (
        "threading.Event", pair(event_a, event_b, thread_events, False), PING_N),
    "event/ping-pong/procs": (
        "multiprocessing.Event", pair(event_a, event_b, proc_events, True), PING_N),
}


def lookup(key):
    if key in WORKLOADS:
        return WORKLOADS[key]
    m = re.fullmatch(r"lock/contended/(\d+)-(threads|procs)", key)
    if m:
        parties = int(m.group(1))
        if m.group(2) == "threads":
            return ("threading.Lock", contended_threads(parties), (25000, 10000))
        return ("multiprocessing.Lock", contended_procs(parties), (25000, 10000))
    return None


def peers_of(key):
    found = lookup(key)
    if found is None:
        return None
    impl, run, iters = found
    return [("CPython " + impl, run, iters, None)]


def main():
    run_workloads(options(__doc__), peers_of)


if __name__ == "__main__":
    main()
