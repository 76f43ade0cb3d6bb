#!/bin/sh
# test-cli.sh TANDEM_BENCH: tests tandem-bench through its real binary: the option errors, --list
# (every suite registers its workloads), and a quick measurement of one workload family per
# suite, without the CPython peers, checked in the JSON output: every implementation measured,
# no failure, the peers reported as skipped and never given a number.
set -u
bench=$1
fail() {
  echo "FAIL: $*" >&2
  exit 1
}

expect_status() {
  want=$1
  shift
  "$bench" "$@" >/dev/null 2>&1
  got=$?
  [ "$got" -eq "$want" ] || fail "tandem-bench $* exited with $got, not $want"
}
expect_status 0 --help
expect_status 2 --runs 0
expect_status 2 --runs 101
expect_status 2 --runs 3x
expect_status 2 --no-such-option
expect_status 2 unexpected-argument
expect_status 2 --no-peers --filter no-such-workload

list=$("$bench" --list) || fail "--list failed"
for key in lock/uncontended/thread lock/uncontended/shared rlock/reentrant/thread \
  lock/contended/2-threads lock/contended/2-procs cond/ping-pong/procs sem/hand-off/threads \
  event/ping-pong/procs process/start/fork process/start/spawn process/start/forkserver \
  process/start-1gib-parent/fork queue/64b/1p1c queue/64b/2p2c queue/1mib/1p1c \
  queue/ping-pong/procs queue/ping-pong/procs-unpinned pool/map-1m/threads pool/map-1m/processes \
  pool/map-1m/auto pool/cpu-8x10m/threads pool/cpu-8x10m/processes pool/cpu-8x10m/auto \
  pool/wait-64x50ms/threads pool/wait-64x50ms/processes pool/wait-64x50ms/auto \
  pool/submit-200k/threads pool/submit-200k/processes pool/submit-200k/auto; do
  printf '%s\n' "$list" | grep -qx "$key" || fail "--list lacks $key"
done
[ -z "$("$bench" --list --filter /procs | grep -v /procs)" ] || fail "--list ignores --filter"

# measure FILTER WORKLOADS IMPLS [MORE]: one quick run of the workloads matching FILTER, which
# must give WORKLOADS tandem numbers and IMPLS numbers in all (with MORE, IMPLS at least: some
# peers depend on the machine's limits).
measure() {
  out=$("$bench" --quick --runs 1 --no-peers --json --filter "$1") || fail "--filter $1 failed: $out"
  tandem=$(printf '%s\n' "$out" | grep -c '"role": "tandem", "ns_per_op": [0-9]')
  measured=$(printf '%s\n' "$out" | grep -c '"ns_per_op": [0-9]')
  if [ $# -ge 4 ]; then enough=$((measured >= $3)); else enough=$((measured == $3)); fi
  [ "$tandem" -eq "$2" ] && [ "$enough" -eq 1 ] ||
    fail "--filter $1: $tandem tandem and $measured measured implementations, not $2 and $3: $out"
  ! printf '%s\n' "$out" | grep -q '"failed"' || fail "--filter $1: $out"
  printf '%s\n' "$out" | grep -q '"impl": "CPython", "role": "peer", "ns_per_op": null, "runs": 0, "skipped": "--no-peers"' ||
    fail "--filter $1: the CPython peers are not reported as skipped: $out"
}
measure uncontended/thread 2 4
measure process/start/ 3 8
# tdm_queue, a pipe, a socketpair and memcpy always; the pipe with a 1 MiB buffer where allowed.
measure queue/1mib/ 1 4 more
# The thread pool's map and the sequential loop always; OpenMP and GLib where they are built.
measure pool/map-1m/threads 1 2 more
echo "ok: tandem-bench options, --list and one quick measurement per suite"
