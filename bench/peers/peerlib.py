"""What every CPython peer script shares: the command line, the JSON lines, the timing rule.

`tandem bench` runs a peer script as `python3 -B SCRIPT [--quick] [--runs N] WORKLOAD...` and
reads one JSON object per line: first {"python": version}, then per workload either
{"workload", "impl", "ns_per_op", "runs"[, "goal"]} or {"workload", "impl", "error"}. A "goal" is
the least ratio (peer time / tandem time) that meets one of the project's goals; `tandem bench`
prints whether the run meets it.
"""

import argparse
import json
import statistics
import sys


def emit(obj):
    print(json.dumps(obj), flush=True)


def options(doc):
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("workloads", nargs="*")
    args = ap.parse_args()
    args.runs = max(args.runs, 1)
    emit({"python": "%d.%d.%d" % sys.version_info[:3]})
    return args


def measure(run, iters, runs):
    """The median ns per operation over `runs` runs of run(iters), which returns (ns, ops)."""
    run(max(iters // 4, 1))  # warm-up
    samples = []
    for _ in range(runs):
        t, ops = run(iters)
        samples.append(t / ops)
    return statistics.median(samples)


def report(key, impl, run, iters, args, prepare=None, goal=None):
    """Measures one workload and emits its line (with the peer's goal, if it has one); an
    exception becomes an error line, never a crash, so that the other workloads still run."""
    try:
        if prepare is not None:
            prepare()
        ns = measure(run, iters[1] if args.quick else iters[0], args.runs)
        line = {"workload": key, "impl": impl, "ns_per_op": round(ns, 3), "runs": args.runs}
        if goal is not None:
            line["goal"] = goal
        emit(line)
    except Exception as e:
        emit({"workload": key, "impl": impl, "error": "%s: %s" % (type(e).__name__, e)})


def start_together(procs, ready, go, now):
    """Starts every process, waits until each has released `ready`, opens the gate `go`, joins
    them all (a party that fails fails the measurement) and returns the clock reading taken
    just before the gate opened."""
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    t0 = now()
    go.set()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError("a party exited with %s" % p.exitcode)
    return t0


def unknown(key):
    emit({"workload": key, "impl": "CPython", "error": "no CPython peer for this workload"})


def run_workloads(args, peers_of):
    """Reports every workload asked for: peers_of(key) gives its peers as (impl, run, iters,
    goal) tuples, or None when this script has none for it."""
    for key in args.workloads:
        peers = peers_of(key)
        if peers is None:
            unknown(key)
            continue
        for impl, run, iters, goal in peers:
            report(key, impl, run, iters, args, goal=goal)
