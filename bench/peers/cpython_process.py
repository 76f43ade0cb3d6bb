#!/usr/bin/env python3
"""CPython's peers of tandem-bench's process workloads (bench/process_bench.c).

tandem-bench runs this script with the keys of the workloads it measured:

    cpython_process.py [--runs N] [--quick] WORKLOAD...

and reads its standard output: one JSON object per line, first {"python": VERSION}, then for
each workload either {"workload", "impl", "ns_per_op", "runs"} or {"workload", "impl", "error"}.

One operation is what it is in C: multiprocessing.get_context(METHOD).Process(target=f), with
an f that returns at once, then start() and join(); the exit code must be 0. Each workload gets
one warm-up run (a quarter of the iterations, at least one start), then N timed runs, median
reported. The forkserver is started before anything is timed, as tandem's is by its warm-up.

The "start-1gib-parent" workloads run while this process holds a 1 GiB bytearray with every page
written, taken before the first of them and released after the last.
"""

import argparse
import json
import multiprocessing
import multiprocessing.forkserver
import re
import statistics
import sys
import time

now = time.monotonic_ns

BIG_PARENT = 1 << 30
PAGE = 4096


def emit(obj):
    print(json.dumps(obj), flush=True)


def returns_at_once():
    pass


def start_join(method):
    ctx = multiprocessing.get_context(method)

    def run(n):
        t0 = now()
        for _ in range(n):
            p = ctx.Process(target=returns_at_once)
            p.start()
            p.join()
            if p.exitcode != 0:
                raise RuntimeError("a %s child exited with %s" % (method, p.exitcode))
        return now() - t0, n

    return run


# Iterations (default, --quick) per method and parent size. A spawn costs tens of milliseconds
# (a new interpreter that imports this script); a fork of the 1 GiB parent copies its page table.
ITERS = {
    (False, "fork"): (100, 20),
    (False, "spawn"): (5, 2),
    (False, "forkserver"): (30, 10),
    (True, "fork"): (20, 5),
    (True, "spawn"): (5, 2),
    (True, "forkserver"): (20, 5),
}


def lookup(key):
    m = re.fullmatch(r"process/(start|start-1gib-parent)/(fork|spawn|forkserver)", key)
    if m is None:
        return None
    big, method = m.group(1) != "start", m.group(2)
    impl = "CPython multiprocessing %s" % method
    if method == "forkserver":
        impl += " (server already up)"
    return big, impl, start_join(method), ITERS[(big, method)]


def measure(run, iters, runs):
    run(max(iters // 4, 1))  # warm-up
    samples = []
    for _ in range(runs):
        t, ops = run(iters)
        samples.append(t / ops)
    return statistics.median(samples)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("workloads", nargs="*")
    args = ap.parse_args()
    runs = max(args.runs, 1)
    emit({"python": "%d.%d.%d" % sys.version_info[:3]})
    if any(k.endswith("/forkserver") for k in args.workloads):
        multiprocessing.forkserver.ensure_running()
    big = None
    for key in args.workloads:
        found = lookup(key)
        if found is None:
            emit({"workload": key, "impl": "CPython", "error": "no CPython peer for this workload"})
            continue
        want_big, impl, run, (iters, quick_iters) = found
        try:
            if want_big and big is None:
                big = bytearray(BIG_PARENT)
                big[::PAGE] = b"\x5a" * (BIG_PARENT // PAGE)  # every page written
            elif not want_big:
                big = None
            ns = measure(run, quick_iters if args.quick else iters, runs)
            emit({"workload": key, "impl": impl, "ns_per_op": round(ns, 3), "runs": runs})
        except Exception as e:  # report, never crash: the other workloads still run
            emit({"workload": key, "impl": impl, "error": "%s: %s" % (type(e).__name__, e)})
    del big


if __name__ == "__main__":
    main()
