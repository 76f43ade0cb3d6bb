#!/bin/sh
# crash.sh MPIRUN PROGRAM [--rank0-optional]: runs PROGRAM (crash_test) on 3 ranks through
# mpirun.sh and checks that a task crashing its rank ends the job: a failure status, the dying
# rank's line naming the signal and the task it ran, and rank 0's line listing what was in
# flight, this task included. --rank0-optional (thread sanitizer builds): TSan defers a signal
# handler until its thread calls an intercepted function, and rank 0's threads wait in raw futex
# calls, so mpirun's SIGKILL may come before rank 0's SIGTERM handler runs; its line is then
# checked only when it is there.
set -u
here=$(dirname "$0")
mpirun=$1
prog=$2
rank0_optional=0
[ "${3:-}" = "--rank0-optional" ] && rank0_optional=1
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$here/mpirun.sh" "$mpirun" -np 3 "$prog" >"$out" 2>&1
rc=$?
cat "$out"
fail() {
  echo "crash.sh: $*"
  exit 1
}
[ $rc -ne 0 ] || fail "the job ended with status 0"
# tandem cluster: rank R (host H, pid P) died of signal 11 (SIGSEGV) running task ID (FUNCTION)
line=$(grep -E 'tandem cluster: rank [1-9][0-9]* .*signal 11.* task [0-9]+' "$out" | head -n 1)
[ -n "$line" ] || fail "no line from the dying rank naming signal 11 and the task"
rank=$(printf '%s\n' "$line" | sed -E 's/.*tandem cluster: rank ([0-9]+).*/\1/')
task=$(printf '%s\n' "$line" | sed -E 's/.* task ([0-9]+).*/\1/')
# tandem cluster: rank 0 stopped by signal 15 (...); in flight: rank R: task ID, ...
zero=$(grep -E 'tandem cluster: rank 0 ' "$out" | head -n 1)
if [ -z "$zero" ] && [ $rank0_optional -eq 1 ]; then
  echo "crash.sh: ok (exit status $rc; rank $rank died running task $task; no line from rank 0)"
  exit 0
fi
[ -n "$zero" ] || fail "no line from rank 0"
printf '%s\n' "$zero" | grep -Eq "rank $rank: ([^;:]*[ ,])?task $task([^0-9]|\$)" ||
  fail "rank 0's line does not list task $task on rank $rank"
echo "crash.sh: ok (exit status $rc; rank $rank died running task $task)"
