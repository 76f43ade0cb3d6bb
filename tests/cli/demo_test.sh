#!/bin/sh
# demo_test.sh TANDEM: tests the tandem command and `tandem demo` through the real binary: the
# top-level options, every bad option of the demo (usage, exit 2, nothing on stdout), a small
# run of every experiment checked through its JSON (shape, and what must hold whatever the
# machine's speed: every result checked by the program, exact counts in the memory experiment,
# no wait shorter than the sleeps it contains), the text tables, the SVG chart (well-formed
# XML, one bar per result), the progress line, the failure paths (an unwritable chart, a
# descriptor limit that makes the workers fail: exit 1 with the failure in its row, no hang),
# and that nothing is left behind: no file, no process, even after Ctrl-C.
# Timings are never asserted, only lower bounds that a correct program cannot break.
set -u
bin=$1
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export TMPDIR="$work/tmp"
mkdir "$TMPDIR"

# expect STATUS ARGS...: runs tandem ARGS, which must exit with STATUS; keeps its output.
expect() {
  want=$1
  shift
  "$bin" "$@" >"$work/out" 2>"$work/err"
  got=$?
  [ "$got" -eq "$want" ] || fail "tandem $* exited with $got, not $want: $(cat "$work/err")"
}

# ---- the command ----
expect 2
grep -q "usage: tandem" "$work/err" || fail "no usage without a command"
expect 0 --help
grep -q "demo" "$work/out" && grep -q "bench" "$work/out" || fail "--help does not list the commands"
expect 0 help demo
grep -q "usage: tandem demo" "$work/out" || fail "help demo does not show the demo's usage"
expect 0 --version
version=$(sed -n 's/^#define TDM_VERSION_STRING "\(.*\)"/\1/p' "$(dirname "$0")/../../include/tandem/base.h")
[ "$(cat "$work/out")" = "tandem $version" ] || fail "--version says '$(cat "$work/out")', not 'tandem $version'"
head -n 1 "$(dirname "$0")/../../man/tandem.1" | grep -q "\"tandem $version\"" ||
  fail "man/tandem.1 does not carry version $version"
expect 2 no-such-command
expect 2 --no-such-option
expect 2 help no-such-command

# ---- bad options of the demo: usage on stderr, exit 2, nothing on stdout ----
for args in "--runs 0" "--runs 51" "--runs x" "--experiments" "--experiments nope" \
  "--experiments io,nope" "--experiments ," "--io-tasks 0" "--io-tasks 257" "--io-ms -1" \
  "--file-kib 0" "--http-kib 99999999" "--cpu-tasks 300" "--cpu-n 0" "--memory-items 0" \
  "--ipc-rounds 0" "--claim-seconds 0" "--claim-seconds 61" "--claim-seconds 1s" "--svg" \
  "--svg=" "--bogus" "extra-argument" "--json --runs"; do
  # shellcheck disable=SC2086
  expect 2 demo $args
  [ ! -s "$work/out" ] || fail "demo $args wrote to stdout"
  grep -q "usage: tandem demo" "$work/err" || fail "demo $args: no usage on stderr"
  [ "$(head -n 1 "$work/err" | cut -c1-13)" = "tandem demo: " ] || fail "demo $args: first line is not the error"
done
expect 0 demo --help
grep -q -- "--experiments" "$work/out" || fail "demo --help lacks the options"

# ---- one small run of everything, as JSON, with the chart ----
small="--runs 1 --io-tasks 4 --io-ms 20 --file-kib 64 --http-kib 16 --cpu-tasks 3 --cpu-n 200000
  --memory-items 500 --ipc-rounds 50 --claim-seconds 0.05"
# shellcheck disable=SC2086
expect 0 demo $small --json --svg "$work/chart.svg"
[ ! -s "$work/err" ] || fail "stderr is not a terminal, yet the demo wrote to it: $(cat "$work/err")"
cp "$work/out" "$work/demo.json"
python3 - "$work/demo.json" "$work/chart.svg" <<'EOF' || fail "the JSON or the SVG is wrong (above)"
import json, sys, xml.etree.ElementTree as ET

d = json.load(open(sys.argv[1]))
def check(cond, what):
    if not cond:
        sys.exit("JSON: " + what)
num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
check(isinstance(d["tandem"], str) and isinstance(d["date"], str), "tandem, date")
check(isinstance(d["machine"]["cpus"], int) and d["machine"]["cpus"] >= 1, "machine.cpus")
check(isinstance(d["machine"]["system"], str), "machine.system")
check(d["runs"] == 1 and d["setup_error"] is None, "runs, setup_error")
names = [e["name"] for e in d["experiments"]]
check(names == ["io-sleep", "io-file", "io-http", "cpu", "memory", "ipc", "claims"], names)
exp = {e["name"]: e for e in d["experiments"]}
methods = ["sequential", "threads", "threads + GIL", "processes", "auto pool"]
for name in ["io-sleep", "io-file", "io-http", "cpu"]:
    e = exp[name]
    check(e["tasks"] == (3 if name == "cpu" else 4), name + ".tasks")
    check([r["method"] for r in e["results"]] == methods, name + " methods")
    for r in e["results"]:
        where = name + "/" + r["method"]
        # --runs 1; the CPU batch runs three times as often.
        runs = 3 if name == "cpu" else 1
        check(r["ok"] is True and r["error"] is None and r["runs"] == runs, where + " failed: %s" % r)
        check(num(r["wall_s"]) and r["wall_s"] > 0, where + ".wall_s")
        check(num(r["speedup"]) and r["speedup"] > 0, where + ".speedup")
        check(num(r["cpu_per_wall"]) and r["cpu_per_wall"] >= 0, where + ".cpu_per_wall")
    auto = e["results"][4]["auto"]
    check(isinstance(auto["cpu_bound"], bool) and isinstance(auto["workers"], int) and auto["workers"] >= 1, name + ".auto")
    check(isinstance(e["results"][2]["gil_switches"], int), name + ".gil_switches")
    check(isinstance(e["summary"], str) and len(e["summary"]) > 40, name + ".summary")
    if name in ("io-sleep", "io-http"):
        # Lower bounds only: four 20 ms waits one after another, and one at least, in parallel.
        check(e["results"][0]["wall_s"] >= 4 * 0.020, name + ": sequential faster than its sleeps")
        for r in e["results"][1:]:
            check(r["wall_s"] >= 0.020, name + "/" + r["method"] + ": faster than one sleep")
check(exp["io-file"]["cached_after_drop"] is None or 0 <= exp["io-file"]["cached_after_drop"] <= 1, "cached")
m = exp["memory"]
check(m["items"] == 500, "memory.items")
rows = {r["model"]: r for r in m["rows"]}
check(rows["threads"]["seen"] == 500, "a thread's appends are visible")
check(rows["processes"]["seen"] == 0, "a process's appends are not")
check(rows["processes + tdm_array"]["seen"] == 500, "shared memory brings them back")
check(rows["processes + tdm_queue"]["seen"] == 500, "a queue brings them back")
check(rows["processes + tdm_manager"]["seen"] == 500, "a manager's list brings them back")
for r in m["rows"]:
    check(r["error"] is None, "memory row failed: %s" % r)
i = exp["ipc"]
check(i["rounds"] == 50 and i["error"] is None, "ipc")
check(i["hello"].startswith("hello from process "), "ipc.hello")
for k in ("queue_one_way_us", "queue_round_trip_us", "pipe_round_trip_us"):
    check(num(i[k]) and i[k] > 0, "ipc." + k)
c = exp["claims"]
check(c["error"] is None and c["seconds"] == 0.05 and len(c["claims"]) == 3, "claims")
for k in c["claims"]:
    check(isinstance(k["holds"], bool) and isinstance(k["claim"], str) and len(k["explanation"]) > 20, "claim %s" % k)
check(c["claims"][0]["measured_s"] >= 0.05, "four sleeping threads finished before one sleep")
pool = c["claims"][2]
check(pool["workers"] == d["machine"]["cpus"], "a default pool has one worker per CPU")
# Four sleeps of S on W workers cannot end before ceil(4 / W) * S.
check(pool["measured_s"] >= 0.99 * pool["predicted_s"], "the default pool beat its lower bound")
check(pool["measured_cpu_s"] >= 0.99 * pool["predicted_s"], "the computing tasks beat the lower bound")

svg = ET.parse(sys.argv[2]).getroot()
if svg.tag != "{http://www.w3.org/2000/svg}svg":
    sys.exit("SVG: root is " + svg.tag)
rects = svg.findall("{http://www.w3.org/2000/svg}rect")
# The background, five bars per speed experiment, three for IPC.
if len(rects) != 1 + 4 * 5 + 3:
    sys.exit("SVG: %d rects" % len(rects))
EOF

# ---- the tables ----
expect 0 demo --experiments memory,ipc --memory-items 300 --ipc-rounds 20
for text in "tandem demo: threads or processes?" "CPUs* usable" "1. Memory" "parent sees 300" \
  "parent sees 0" "parent gets 300" "2. IPC between two processes" "hello from process"; do
  grep -q "$text" "$work/out" || fail "the tables lack '$text': $(cat "$work/out")"
done
grep -q "Tutorial claims" "$work/out" && fail "--experiments memory,ipc ran the claims"
# shellcheck disable=SC2086
expect 0 demo $small --experiments cpu,claims
for text in "CPU-bound: computing" "sequential" "threads + GIL" "auto pool" "Tutorial claims" \
  "HOLD"; do
  grep -q "$text" "$work/out" || fail "the tables lack '$text': $(cat "$work/out")"
done

# ---- the progress line goes to stderr only when asked (or to a terminal) ----
expect 0 demo --experiments memory --memory-items 10 --progress
grep -q "\[1/1\] memory" "$work/err" || fail "--progress printed no progress: $(cat "$work/err")"
expect 0 demo --experiments memory --memory-items 10 --no-progress
[ ! -s "$work/err" ] || fail "--no-progress printed to stderr"

# ---- failures: reported, exit 1, the rest still shown ----
expect 1 demo --experiments memory --memory-items 10 --svg "$work/no-such-dir/chart.svg"
grep -q "cannot write $work/no-such-dir/chart.svg" "$work/err" || fail "no message for an unwritable chart"
grep -q "parent sees 10" "$work/out" || fail "an unwritable chart lost the results"
# Too few descriptors for a process per task: those methods fail, in their rows, without a hang.
(ulimit -n 24 && exec "$bin" demo --experiments io-sleep --runs 1 --io-tasks 40 --io-ms 1) \
  >"$work/out" 2>"$work/err"
got=$?
[ "$got" -eq 1 ] || fail "a descriptor limit gave exit $got, not 1: $(cat "$work/out" "$work/err")"
grep -q "failed:" "$work/out" || fail "no failed row under a descriptor limit: $(cat "$work/out")"
grep -q "sequential .* 1.0x" "$work/out" || fail "the sequential run was lost: $(cat "$work/out")"

# A file size limit: the files cannot be written, so that batch is not measured (its error
# said), the other experiments still are, and no partial file is left.
(ulimit -f 16 && exec "$bin" demo --experiments io-file,memory --io-tasks 2 --file-kib 64 \
  --memory-items 10) >"$work/out" 2>"$work/err"
got=$?
[ "$got" -eq 1 ] || fail "a file size limit gave exit $got, not 1: $(cat "$work/out" "$work/err")"
grep -q "not measured: creating the files: File too large" "$work/out" ||
  fail "no 'not measured' line under a file size limit: $(cat "$work/out")"
grep -q "parent sees 10" "$work/out" || fail "a failed batch stopped the other experiments"

# ---- nothing left behind ----
[ -z "$(ls -A "$TMPDIR")" ] || fail "files left in TMPDIR: $(ls -A "$TMPDIR")"
# Ctrl-C while the files exist and the server runs: the files go, and so do the children.
"$bin" demo --experiments io --runs 50 --io-tasks 8 --io-ms 200 --file-kib 64 >/dev/null 2>&1 &
pid=$!
i=0
while [ -z "$(ls -A "$TMPDIR")" ] && [ $i -lt 300 ]; do
  sleep 0.1
  i=$((i + 1))
done
[ -n "$(ls -A "$TMPDIR")" ] || fail "the demo never created its files"
sleep 0.5
kill -INT $pid
wait $pid
got=$?
[ "$got" -eq 130 ] || fail "Ctrl-C ended the demo with $got, not 130"
[ -z "$(ls -A "$TMPDIR")" ] || fail "Ctrl-C left files: $(ls -A "$TMPDIR")"
i=0
while pgrep -f "^$bin demo" >/dev/null && [ $i -lt 100 ]; do
  sleep 0.1
  i=$((i + 1))
done
! pgrep -f "^$bin demo" >/dev/null || fail "processes outlived the demo: $(pgrep -af "^$bin demo")"
echo "ok: tandem options, demo options, a run of every experiment (JSON, tables, SVG), failures, cleanup"
