#!/usr/bin/env python3
"""CPython's peers of `tandem bench`'s manager workloads (bench/manager_bench.c).

`tandem bench` runs this script with the keys of the workloads it measured:

    python3 -B cpython_manager.py [--runs N] [--quick] WORKLOAD...

and reads its standard output: one JSON object per line, first {"python": VERSION}, then for
each workload and peer either {"workload", "impl", "ns_per_op", "runs"[, "goal"]} or
{"workload", "impl", "error"}. The goal: tandem's manager at least 20x CPython's, on the rows
that do what tandem's call does.

Every workload is the C side's shape: P client processes (1 or 8, forked by multiprocessing's
"fork" context) call a proxy of an object that a manager holds. Each client inherits the proxy
(multiprocessing then gives it a connection and a reference of its own, as a pickled proxy
would get) and makes one untimed call, so that its connection exists; then it waits at the gate.
The clock (time.monotonic_ns, CLOCK_MONOTONIC like the C side's) starts when every client is
ready and the gate opens, and stops when the last client has made its last call: one operation
is one call of one client, wall time / all clients' calls.

  manager/dict-get/*   d[b"bench-key"] on a dict proxy of multiprocessing.Manager(), the value
                       64 bytes (every client the same key); each value is checked.
  manager/dict-set/*   d[b"client-<i>"] = 64 bytes, each client its own key; afterwards each key
                       must hold its client's last value.
  manager/value-add/*  CPython's Value proxy has no atomic add, so two peers:
                       - a Counter type registered on a SyncManager (BaseManager.register, the
                         documented way to share a custom object): add(1) takes a lock in the
                         server and returns the new value. One round trip and no lost update,
                         as tdm_mvalue_add_int; this is the row with the goal, and the final
                         count is checked;
                       - Manager().Value("q", 0) with `v.value += 1`, what a Python program
                         usually writes: a get and a set, two round trips per add, and with
                         several clients updates are lost (so its count is checked only with one
                         client). No goal: it is not the same operation.

The dict and Value peers use multiprocessing.Manager() itself; the Counter's manager is a
SyncManager subclass started the same way. Each manager is started once, at the first workload
that needs it, and kept until the script ends; each run makes fresh objects (untimed). Each
workload gets one warm-up run (a quarter of the calls), then N timed runs, median reported.
"""

import multiprocessing
import threading
import time
from multiprocessing.managers import SyncManager

from peerlib import options, run_workloads, start_together

now = time.monotonic_ns  # CLOCK_MONOTONIC: comparable between processes
MP = multiprocessing.get_context("fork")

VALUE = bytes([0x5A]) * 64
GET_KEY = b"bench-key"
GOAL = 20  # tandem's manager at least 20x CPython's


class Counter:
    """An integer whose add() is one atomic step in the manager's server (which runs each
    connection's requests on a thread of its own: without the lock, two adds could interleave)."""

    def __init__(self, value=0):
        self._value = value
        self._lock = threading.Lock()

    def add(self, delta):
        with self._lock:
            self._value += delta
            return self._value

    def get(self):
        return self._value


class CounterManager(SyncManager):
    pass


CounterManager.register("Counter", Counter)

_managers = {}


def manager(kind):
    """The started manager of `kind` ("Manager" or "CounterManager"), kept until the end."""
    if kind not in _managers:
        if kind == "Manager":
            _managers[kind] = MP.Manager()
        else:
            m = CounterManager(ctx=MP)
            m.start()
            _managers[kind] = m
    return _managers[kind]


# ---- Clients ----------------------------------------------------------------------------------
# Each call kind: (make(n_clients) -> the proxy, one call by client i, check(proxy, clients, per)).


def _client(call, proxy, i, per, ends, ready, go):
    try:
        call(proxy, i, 0)  # untimed: this process's connection is made here
    finally:
        ready.release()  # also after a failure, so that the parent does not wait forever
    go.wait()
    for k in range(per):
        call(proxy, i, k)
    ends[i] = now()


def _get(d, i, k):
    if d[GET_KEY] != VALUE:
        raise RuntimeError("a wrong value came back")


def _set(d, i, k):
    d[b"client-%d" % i] = k.to_bytes(8, "little") + VALUE[8:]


def _counter_add(c, i, k):
    c.add(1)


def _value_add(v, i, k):
    v.value += 1


def _make_get():
    d = manager("Manager").dict()
    d[GET_KEY] = VALUE
    return d


def _make_set():
    return manager("Manager").dict()


def _make_counter():
    return manager("CounterManager").Counter(0)


def _make_value():
    return manager("Manager").Value("q", 0)


def _check_set(d, clients, per):
    for i in range(clients):
        got = d[b"client-%d" % i]
        if int.from_bytes(got[:8], "little") != per - 1:
            raise RuntimeError("client-%d does not hold its last value" % i)


def _check_counter(c, clients, per):
    # The warm call of each client adds 1 too.
    if c.get() != clients * (per + 1):
        raise RuntimeError("the counter is %d after %d adds" % (c.get(), clients * (per + 1)))


def _check_value(v, clients, per):
    if clients == 1 and v.value != per + 1:
        raise RuntimeError("the value is %d after %d adds" % (v.value, per + 1))


CALLS = {
    "get": (_make_get, _get, None),
    "set": (_make_set, _set, _check_set),
    "counter": (_make_counter, _counter_add, _check_counter),
    "value": (_make_value, _value_add, _check_value),
}


def clients_run(kind, clients):
    make, call, check = CALLS[kind]

    def run(n):
        per = max(n // clients, 1)
        proxy = make()
        ends = MP.RawArray("q", clients)
        ready, go = MP.Semaphore(0), MP.Event()
        procs = [
            MP.Process(target=_client, args=(call, proxy, i, per, ends, ready, go), daemon=True)
            for i in range(clients)
        ]
        t0 = start_together(procs, ready, go, now)
        if check is not None:
            check(proxy, clients, per)
        del proxy  # releases the object in the manager
        return max(ends) - t0, per * clients

    return run


# ---- The table --------------------------------------------------------------------------------

# Calls per run, all clients together (default, --quick).
CALLS_N = (4000, 800)

NAMES = {
    "get": "CPython Manager().dict(): d[key]",
    "set": "CPython Manager().dict(): d[key] = value",
    "counter": "CPython SyncManager + registered Counter.add(1) (1 round trip, locked)",
    "value": "CPython Manager().Value('q'): v.value += 1 (2 round trips, not atomic)",
}


def peers_of(key):
    """The peers of `key`: (impl, run(n), (iterations, quick iterations), goal or None)."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "manager" or parts[2] not in ("1-proc", "8-procs"):
        return None
    clients = 1 if parts[2] == "1-proc" else 8
    if parts[1] == "dict-get":
        kinds = [("get", GOAL)]
    elif parts[1] == "dict-set":
        kinds = [("set", GOAL)]
    elif parts[1] == "value-add":
        kinds = [("counter", GOAL), ("value", None)]
    else:
        return None
    return [(NAMES[k], clients_run(k, clients), CALLS_N, goal) for k, goal in kinds]


def main():
    try:
        run_workloads(options(__doc__), peers_of)
    finally:
        for m in _managers.values():
            m.shutdown()


if __name__ == "__main__":
    main()
