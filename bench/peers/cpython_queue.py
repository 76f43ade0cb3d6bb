#!/usr/bin/env python3
"""CPython's peers of `tandem bench`'s queue workloads (bench/queue_bench.c).

`tandem bench` runs this script with the keys of the workloads it measured:

    python3 -B cpython_queue.py [--runs N] [--quick] WORKLOAD...

and reads its standard output: one JSON object per line, first {"python": VERSION}, then for
each workload and peer either {"workload", "impl", "ns_per_op", "runs"[, "goal"]} or
{"workload", "impl", "error"}. The goal: for 64-byte messages, tandem's queue at least 100x
multiprocessing.Queue.

Every workload is the same shape as its C counterpart, with processes forked by
multiprocessing's "fork" context:

  queue/64b/1p1c, queue/64b/2p2c, queue/1mib/1p1c: P producer processes put bytes objects of 64
  bytes (1 MiB) and C consumer processes get them. The clock (time.monotonic_ns, CLOCK_MONOTONIC
  like the C side's) starts when every party has started and the gate opens, and stops when the
  last consumer has seen the end of the stream: each producer ends its messages with as many
  stop values (None, or an empty message) as there are consumers per producer. A consumer stops
  at the first it gets; since every producer's messages come before its own stop values, every
  message has been taken once all the stop values have. One operation is one message: wall
  time / all messages. The consumers count what they get, and the count must come out exact.
  Peers: multiprocessing.Queue (pickles, and a feeder thread writes to a pipe), SimpleQueue
  (pickles, writes under a lock) and, with one producer and one consumer, Pipe(duplex=False)
  with send_bytes/recv_bytes (no pickling: the fastest way CPython moves bytes between two
  processes). The same three for 1 MiB (1+1).

  queue/ping-pong/procs, queue/ping-pong/procs-unpinned: the parent sends 64 bytes and waits for
  the child to send them back; one operation is one round trip. Peers: Pipe() with
  send_bytes/recv_bytes, and a pair of Queues.

As in C, with one producer and one consumer and in queue/ping-pong/procs the two sides are pinned
to the first two CPUs of the affinity mask, when it has two; in 2p2c and
queue/ping-pong/procs-unpinned the scheduler places them. Each workload gets one warm-up run
(a quarter of the messages), then N timed runs, median reported.
"""

import multiprocessing
import os
import time

from peerlib import options, run_workloads, start_together

now = time.monotonic_ns  # CLOCK_MONOTONIC: comparable between processes
MP = multiprocessing.get_context("fork")

SMALL, LARGE = 64, 1 << 20


def side_cpus():
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[:2] if len(cpus) >= 2 else None


CPUS = side_cpus()


def pin(side):
    if CPUS is not None:
        os.sched_setaffinity(0, {CPUS[side]})


# ---- Channels ---------------------------------------------------------------------------------
# Each kind gives the parent an object that forked children inherit, with put, get and a stop
# value that ends the stream.


class QueueChan:
    STOP = None

    def __init__(self):
        self.q = MP.Queue()

    def put(self, m):
        self.q.put(m)

    def get(self):
        return self.q.get()

    def producer_done(self):
        self.q.close()
        self.q.join_thread()  # the feeder thread has written everything


class SimpleQueueChan:
    STOP = None

    def __init__(self):
        self.q = MP.SimpleQueue()

    def put(self, m):
        self.q.put(m)

    def get(self):
        return self.q.get()

    def producer_done(self):
        pass


class PipeChan:
    STOP = b""

    def __init__(self):
        self.r, self.w = MP.Pipe(duplex=False)

    def put(self, m):
        self.w.send_bytes(m)

    def get(self):
        return self.r.recv_bytes()

    def producer_done(self):
        pass


CHANNELS = {
    "Queue": ("CPython multiprocessing.Queue", QueueChan),
    "SimpleQueue": ("CPython multiprocessing.SimpleQueue", SimpleQueueChan),
    "Pipe": ("CPython multiprocessing.Pipe send_bytes/recv_bytes", PipeChan),
}


# ---- Streams ----------------------------------------------------------------------------------


def _producer(ch, n, size, stops, ready, go, pinned):
    if pinned:
        pin(0)
    msg = bytes(size)
    ready.release()
    go.wait()
    for _ in range(n):
        ch.put(msg)
    for _ in range(stops):
        ch.put(ch.STOP)
    ch.producer_done()


def _consumer(ch, i, got, ends, ready, go, pinned):
    if pinned:
        pin(1)
    ready.release()
    go.wait()
    count = 0
    stop = ch.STOP
    while True:
        m = ch.get()
        if m == stop:
            break
        count += 1
    ends[i] = now()
    got[i] = count


def stream(kind, producers, consumers, size):
    def run(n):
        per = max(n // producers, 1)
        ch = kind()
        pinned = producers == 1 and consumers == 1
        got = MP.RawArray("q", consumers)
        ends = MP.RawArray("q", consumers)
        ready, go = MP.Semaphore(0), MP.Event()
        procs = [
            MP.Process(target=_consumer, args=(ch, i, got, ends, ready, go, pinned), daemon=True)
            for i in range(consumers)
        ] + [
            MP.Process(
                target=_producer,
                args=(ch, per, size, consumers // producers, ready, go, pinned),
                daemon=True,
            )
            for _ in range(producers)
        ]
        t0 = start_together(procs, ready, go, now)
        if sum(got) != per * producers:
            raise RuntimeError("%d messages delivered, not %d" % (sum(got), per * producers))
        return max(ends) - t0, per * producers

    return run


# ---- Ping-pong --------------------------------------------------------------------------------


def _pong_pipe(conn, n, ready, pinned):
    if pinned:
        pin(1)
    ready.release()
    for _ in range(n):
        conn.send_bytes(conn.recv_bytes())


def _pong_queues(there, back, n, ready, pinned):
    if pinned:
        pin(1)
    ready.release()
    for _ in range(n):
        back.put(there.get())


def ping_pong(kind, pinned):
    def run(n):
        msg = bytes(SMALL)
        ready = MP.Semaphore(0)
        saved = os.sched_getaffinity(0)
        if kind == "Pipe":
            a, b = MP.Pipe()
            child = MP.Process(target=_pong_pipe, args=(b, n, ready, pinned), daemon=True)
        else:
            there, back = MP.Queue(), MP.Queue()
            child = MP.Process(
                target=_pong_queues, args=(there, back, n, ready, pinned), daemon=True
            )
        child.start()
        ready.acquire()
        if pinned:
            pin(0)
        try:
            t0 = now()
            if kind == "Pipe":
                for _ in range(n):
                    a.send_bytes(msg)
                    a.recv_bytes()
            else:
                for _ in range(n):
                    there.put(msg)
                    back.get()
            t = now() - t0
        finally:
            os.sched_setaffinity(0, saved)
        child.join()
        if child.exitcode != 0:
            raise RuntimeError("side B exited with %s" % child.exitcode)
        return t, n

    return run


# ---- The table --------------------------------------------------------------------------------

# Iterations (default, --quick): messages, or round trips, per run.
STREAM_N, LARGE_N, PONG_N = (20000, 2000), (200, 40), (2000, 400)


# The goal of each channel for 64-byte messages: tandem at least 100x multiprocessing.Queue.
SMALL_GOALS = {"Queue": 100}


def peers_of(key):
    """The peers of `key`: (impl, run(n), (iterations, quick iterations), goal or None)."""
    if key == "queue/64b/1p1c":
        return [
            (CHANNELS[k][0], stream(CHANNELS[k][1], 1, 1, SMALL), STREAM_N, SMALL_GOALS.get(k))
            for k in ("Queue", "SimpleQueue", "Pipe")
        ]
    if key == "queue/64b/2p2c":
        return [
            (CHANNELS[k][0], stream(CHANNELS[k][1], 2, 2, SMALL), STREAM_N, SMALL_GOALS.get(k))
            for k in ("Queue", "SimpleQueue")
        ]
    if key == "queue/1mib/1p1c":
        return [
            (CHANNELS[k][0], stream(CHANNELS[k][1], 1, 1, LARGE), LARGE_N, None)
            for k in ("Queue", "SimpleQueue", "Pipe")
        ]
    if key in ("queue/ping-pong/procs", "queue/ping-pong/procs-unpinned"):
        pinned = not key.endswith("-unpinned")
        pipe = "CPython multiprocessing.Pipe send_bytes/recv_bytes"
        return [
            (pipe, ping_pong("Pipe", pinned), PONG_N, None),
            ("CPython multiprocessing.Queue pair", ping_pong("Queue", pinned), PONG_N, None),
        ]
    return None


def main():
    run_workloads(options(__doc__), peers_of)


if __name__ == "__main__":
    main()
