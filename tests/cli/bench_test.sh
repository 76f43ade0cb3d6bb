#!/bin/sh
# bench_test.sh TANDEM: tests `tandem bench` through the real binary (TANDEM is the path of the
# tandem command): the option errors (exit 2) and --help; --list (every suite registers its
# workloads); a quick measurement of one workload family per suite, without the CPython peers,
# checked in the JSON or CSV output: every implementation measured, no failure, the peers
# reported as skipped and never given a number; the shape of the JSON (python3's json module),
# the CSV (its csv module: the same rows as the JSON) and the SVG chart (xml.etree: well formed,
# an <svg> root, one <rect> per measured bar), with the CPython peers found from the build tree;
# and a chart that cannot be written (exit 1). No timing is asserted: only shapes and counts.
set -u
tandem=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
command -v python3 >/dev/null 2>&1 || fail "python3 is needed to check the output"

# check MODE FILE...: the output checks, in Python (see each mode below).
check() {
  python3 - "$@" <<'PY'
import csv, json, math, sys
import xml.etree.ElementTree as ET

SVG = "{http://www.w3.org/2000/svg}"
KEYS = {"workload", "impl", "role", "ns_per_op", "runs"}
COLUMNS = ["workload", "impl", "role", "ns_per_op", "runs", "ratio", "goal", "status", "note"]


def fail(msg):
    sys.exit("FAIL: " + msg)


def number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def load_json(path):
    """The JSON array, its shape checked: every entry has the keys, numbers are numbers or
    null, and an entry without a number says why (skipped or failed), one with a number not."""
    with open(path) as f:
        rows = json.load(f)
    if not isinstance(rows, list) or not rows:
        fail("%s: not a non-empty JSON array" % path)
    for r in rows:
        if not isinstance(r, dict) or not KEYS <= r.keys():
            fail("%s: an entry lacks a key: %r" % (path, r))
        if not r.keys() <= KEYS | {"goal", "skipped", "failed"}:
            fail("%s: an entry has an unknown key: %r" % (path, r))
        if not isinstance(r["workload"], str) or not isinstance(r["impl"], str):
            fail("%s: workload and impl must be strings: %r" % (path, r))
        if r["role"] not in ("tandem", "peer"):
            fail("%s: bad role: %r" % (path, r))
        if not (r["ns_per_op"] is None or (number(r["ns_per_op"]) and r["ns_per_op"] > 0)):
            fail("%s: ns_per_op is neither a positive number nor null: %r" % (path, r))
        if not isinstance(r["runs"], int) or r["runs"] < 0:
            fail("%s: runs is not a count: %r" % (path, r))
        if "goal" in r and not (number(r["goal"]) and r["goal"] > 0):
            fail("%s: goal is not a positive number: %r" % (path, r))
        why = [k for k in ("skipped", "failed") if k in r]
        if r["ns_per_op"] is None:
            if len(why) != 1 or not isinstance(r[why[0]], str) or r["runs"] != 0:
                fail("%s: an entry without a number must say why, once: %r" % (path, r))
        elif why or r["runs"] < 1:
            fail("%s: an entry with a number has a reason or no runs: %r" % (path, r))
    return rows


def load_csv(path):
    """The CSV rows as dicts, the header checked; every field parses as what it should be."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != COLUMNS:
        fail("%s: the header is not %s" % (path, ",".join(COLUMNS)))
    out = []
    for row in rows[1:]:
        if len(row) != len(COLUMNS):
            fail("%s: a row has %d fields, not %d: %r" % (path, len(row), len(COLUMNS), row))
        r = dict(zip(COLUMNS, row))
        for k in ("ns_per_op", "ratio", "goal"):
            if r[k] != "":
                try:
                    r[k] = float(r[k])
                except ValueError:
                    fail("%s: %s is not a number: %r" % (path, k, row))
            else:
                r[k] = None
        r["runs"] = int(r["runs"])
        if r["status"] not in ("ok", "skipped", "failed"):
            fail("%s: bad status: %r" % (path, row))
        if (r["status"] == "ok") != (r["ns_per_op"] is not None) or (
            r["status"] != "ok" and r["note"] == ""
        ):
            fail("%s: status, number and note disagree: %r" % (path, row))
        out.append(r)
    return out


def rows_of(fmt, path):
    """Rows as (workload, impl, role, ns_per_op or None, status), from JSON or CSV."""
    if fmt == "json":
        return [
            (r["workload"], r["impl"], r["role"], r["ns_per_op"],
             "ok" if r["ns_per_op"] is not None else "skipped" if "skipped" in r else "failed",
             r.get("skipped", r.get("failed", "")))
            for r in load_json(path)
        ]
    return [(r["workload"], r["impl"], r["role"], r["ns_per_op"], r["status"], r["note"])
            for r in load_csv(path)]


mode, args = sys.argv[1], sys.argv[2:]
if mode == "count":
    # count FORMAT FILE: prints the tandem rows with a number, the rows with a number, the
    # failed rows, and the CPython rows skipped with --no-peers and no number.
    rows = rows_of(args[0], args[1])
    print(sum(1 for r in rows if r[2] == "tandem" and r[3] is not None),
          sum(1 for r in rows if r[3] is not None),
          sum(1 for r in rows if r[4] == "failed"),
          sum(1 for r in rows if r[1] == "CPython" and r[4] == "skipped" and r[5] == "--no-peers"
              and r[3] is None))
elif mode == "same":
    # same JSON CSV: the two runs gave the same rows (numbers aside: they are two runs), and the
    # CSV's ratios are its own peer / tandem times and its goals the JSON's.
    j, c = load_json(args[0]), load_csv(args[1])
    key_j = [(r["workload"], r["impl"], r["role"], r["ns_per_op"] is None, r.get("goal"))
             for r in j]
    key_c = [(r["workload"], r["impl"], r["role"], r["ns_per_op"] is None, r["goal"]) for r in c]
    if key_j != key_c:
        fail("the CSV's rows are not the JSON's:\n%r\n%r" % (key_j, key_c))
    tandem = {r["workload"]: r["ns_per_op"] for r in c if r["role"] == "tandem"}
    for r in c:
        t = tandem.get(r["workload"])
        want = r["role"] == "peer" and r["ns_per_op"] is not None and t is not None
        if want != (r["ratio"] is not None):
            fail("a CSV row has a ratio where it should not, or none where it should: %r" % r)
        if want and abs(r["ratio"] - r["ns_per_op"] / t) > 1e-3 * r["ratio"]:
            fail("a CSV ratio is not peer / tandem: %r" % r)
elif mode == "svg":
    # svg SVG JSON: the chart is well-formed XML with an <svg> root, one <rect> per measured
    # row (besides the background), and a heading per workload.
    root = ET.parse(args[0]).getroot()
    if root.tag != SVG + "svg":
        fail("the chart's root is %s, not svg" % root.tag)
    rows = load_json(args[1])
    bars = [r for r in root.iter(SVG + "rect") if r.get("width") != "100%"]
    measured = sum(1 for r in rows if r["ns_per_op"] is not None)
    if len(bars) != measured:
        fail("the chart has %d bars for %d measured rows" % (len(bars), measured))
    texts = {t.text for t in root.iter(SVG + "text")}
    for r in rows:
        if r["workload"] not in texts or r["impl"] not in texts:
            fail("the chart lacks %s / %s" % (r["workload"], r["impl"]))
        # A failure's reason already starts with "failed: ".
        why = "skipped: " + r["skipped"] if "skipped" in r else r.get("failed")
        if r["ns_per_op"] is None and why not in texts:
            fail("the chart does not say why %s has no number (%s)" % (r["impl"], why))
elif mode == "peers":
    # peers JSON: every CPython row has a number (the peer scripts were found and ran).
    rows = [r for r in load_json(args[0]) if r["impl"].startswith("CPython")]
    if not rows or any(r["ns_per_op"] is None for r in rows):
        fail("the CPython peers did not run: %r" % rows)
else:
    fail("unknown check " + mode)
PY
}

expect_status() {
  want=$1
  shift
  "$tandem" bench "$@" >"$tmp/out" 2>"$tmp/err"
  got=$?
  [ "$got" -eq "$want" ] || fail "tandem bench $* exited with $got, not $want: $(cat "$tmp/err")"
}
expect_status 0 --help
grep -q '^usage: tandem bench ' "$tmp/out" || fail "--help does not print the usage"
"$tandem" help bench | grep -q '^usage: tandem bench ' || fail "tandem help bench"
expect_status 2 --runs 0
grep -q '^usage: tandem bench ' "$tmp/err" || fail "a bad option does not print the usage"
expect_status 2 --runs 101
expect_status 2 --runs 3x
expect_status 2 --no-such-option
expect_status 2 unexpected-argument
expect_status 2 --json --csv
expect_status 2 --svg
expect_status 2 --svg ''
expect_status 2 --no-peers --filter no-such-workload
# A chart that cannot be written fails before anything is measured, with a clear message.
expect_status 1 --no-peers --filter lock/uncontended/thread --svg "$tmp/no-such-dir/chart.svg"
grep -q "cannot write the chart to $tmp/no-such-dir/chart.svg" "$tmp/err" ||
  fail "an unwritable --svg path gives no clear message: $(cat "$tmp/err")"
expect_status 1 --no-peers --filter lock/uncontended/thread --svg "$tmp"
# One that fails only when written (a full device): the results are still printed.
if [ -w /dev/full ]; then
  expect_status 1 --quick --runs 1 --no-peers --filter lock/uncontended/thread --svg /dev/full
  grep -q '^lock/uncontended/thread ' "$tmp/out" || fail "--svg /dev/full lost the table"
fi

list=$("$tandem" bench --list) || fail "--list failed"
for key in lock/uncontended/thread lock/uncontended/shared rlock/reentrant/thread \
  lock/contended/2-threads lock/contended/2-procs cond/ping-pong/procs sem/hand-off/threads \
  event/ping-pong/procs process/start/fork process/start/spawn process/start/forkserver \
  process/start-1gib-parent/fork queue/64b/1p1c queue/64b/2p2c queue/1mib/1p1c \
  queue/ping-pong/procs queue/ping-pong/procs-unpinned manager/dict-get/1-proc \
  manager/dict-get/8-procs manager/dict-set/1-proc manager/dict-set/8-procs \
  manager/value-add/1-proc manager/value-add/8-procs pool/map-1m/threads pool/map-1m/processes \
  pool/map-1m/auto pool/cpu-8x10m/threads pool/cpu-8x10m/processes pool/cpu-8x10m/auto \
  pool/wait-64x50ms/threads pool/wait-64x50ms/processes pool/wait-64x50ms/auto \
  pool/submit-200k/threads pool/submit-200k/processes pool/submit-200k/auto; do
  printf '%s\n' "$list" | grep -qx "$key" || fail "--list lacks $key"
done
[ -z "$("$tandem" bench --list --filter /procs | grep -v /procs)" ] || fail "--list ignores --filter"

# measure FORMAT FILTER WORKLOADS IMPLS [MORE]: one quick run of the workloads matching FILTER,
# printed as FORMAT (json or csv), which must give WORKLOADS tandem numbers and IMPLS numbers in
# all (with MORE, IMPLS at least: some peers depend on the machine's limits), no failure, and
# the CPython peers skipped.
measure() {
  fmt=$1 filter=$2 want_tandem=$3 want_impls=$4 more=${5:-}
  out="$tmp/m.$fmt"
  "$tandem" bench --quick --runs 1 --no-peers --"$fmt" --filter "$filter" >"$out" ||
    fail "--filter $filter failed: $(cat "$out")"
  counts=$(check count "$fmt" "$out") || exit 1
  set -- $counts
  tandem_n=$1 measured=$2 failed=$3 skipped=$4
  if [ -n "$more" ]; then enough=$((measured >= want_impls)); else enough=$((measured == want_impls)); fi
  [ "$tandem_n" -eq "$want_tandem" ] && [ "$enough" -eq 1 ] ||
    fail "--filter $filter: $tandem_n tandem and $measured measured implementations, not $want_tandem and $want_impls: $(cat "$out")"
  [ "$failed" -eq 0 ] || fail "--filter $filter: a measurement failed: $(cat "$out")"
  [ "$skipped" -eq "$want_tandem" ] ||
    fail "--filter $filter: the CPython peers are not reported as skipped: $(cat "$out")"
}
measure json uncontended/thread 2 4
measure json process/start/ 3 8
# tdm_queue, a pipe, a socketpair and memcpy always; the pipe with a 1 MiB buffer where allowed.
measure json queue/1mib/ 1 4 more
# The manager's get from 1 and from 8 client processes, and the socket floor of each.
measure json manager/dict-get/ 2 4
# The thread pool's map and the sequential loop always; OpenMP and GLib where they are built.
# In CSV: its implementations' names hold commas, which must come back as one field each.
measure csv pool/map-1m/threads 1 2 more
grep -q '^pool/map-1m/threads,"tdm_pool_map, threads (default workers)",tandem,' "$tmp/m.csv" ||
  fail "a CSV field with a comma is not quoted: $(cat "$tmp/m.csv")"

# The output formats, with the CPython peers (found from the build tree): the JSON and the chart
# of one run, the CSV of another.
run="--quick --runs 1 --filter uncontended/thread"
"$tandem" bench $run --json --svg "$tmp/chart.svg" >"$tmp/out.json" || fail "--json --svg failed"
"$tandem" bench $run --csv >"$tmp/out.csv" || fail "--csv failed"
check peers "$tmp/out.json" || exit 1
check same "$tmp/out.json" "$tmp/out.csv" || exit 1
check svg "$tmp/chart.svg" "$tmp/out.json" || exit 1
# A chart with rows that have no number: they get no bar, and say why.
"$tandem" bench $run --no-peers --json --svg "$tmp/chart2.svg" >"$tmp/out2.json" ||
  fail "--no-peers --svg failed"
check svg "$tmp/chart2.svg" "$tmp/out2.json" || exit 1
grep -q 'skipped: --no-peers' "$tmp/chart2.svg" || fail "the chart does not say why a peer was skipped"
echo "ok: tandem bench options, --list, one quick measurement per suite, JSON, CSV and SVG"
