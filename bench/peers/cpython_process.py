#!/usr/bin/env python3
"""CPython's peers of `tandem bench`'s process workloads (bench/process_bench.c).

`tandem bench` runs this script with the keys of the workloads it measured:

    python3 -B cpython_process.py [--runs N] [--quick] WORKLOAD...

and reads its standard output: one JSON object per line, first {"python": VERSION}, then for
each workload either {"workload", "impl", "ns_per_op", "runs"[, "goal"]} or
{"workload", "impl", "error"}. The goal: every tandem start method at least 10x faster than
CPython's same method, with a small parent (process/start/*).

One operation is what it is in C: multiprocessing.get_context(METHOD).Process(target=f), with
an f that returns at once, then start() and join(); the exit code must be 0. Each workload gets
one warm-up run (a quarter of the iterations, at least one start), then N timed runs, median
reported. The forkserver is started before anything is timed, as tandem's is by its warm-up.

The "start-1gib-parent" workloads run while this process holds a 1 GiB bytearray with every page
written, taken before the first of them and released after the last.
"""

import multiprocessing
import multiprocessing.forkserver
import re
import time

from peerlib import options, report, unknown

now = time.monotonic_ns

BIG_PARENT = 1 << 30
PAGE = 4096


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
    return big, impl, start_join(method), ITERS[(big, method)], None if big else 10


def main():
    args = options(__doc__)
    if any(k.endswith("/forkserver") for k in args.workloads):
        multiprocessing.forkserver.ensure_running()
    held = {}

    def hold(want_big):
        if want_big and "big" not in held:
            big = bytearray(BIG_PARENT)
            big[::PAGE] = b"\x5a" * (BIG_PARENT // PAGE)  # every page written
            held["big"] = big
        elif not want_big:
            held.clear()

    for key in args.workloads:
        found = lookup(key)
        if found is None:
            unknown(key)
            continue
        want_big, impl, run, iters, goal = found
        report(key, impl, run, iters, args, prepare=lambda: hold(want_big), goal=goal)
    held.clear()


if __name__ == "__main__":
    main()
