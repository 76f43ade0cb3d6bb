#!/bin/sh
# expect.sh zero|nonzero [-e REGEX]... -- COMMAND [ARGS...]: runs COMMAND, shows its output, and
# passes when COMMAND's exit status is zero (or non-zero, as asked) and every REGEX (grep -E)
# matches a line of its output (stdout and stderr together).
set -u
want=$1
shift
pats=""
n=0
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  [ "$1" = "-e" ] || { echo "expect.sh: bad argument $1" >&2; exit 2; }
  n=$((n + 1))
  eval "pat_$n=\$2"
  shift 2
done
[ $# -gt 0 ] && shift
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$@" >"$out" 2>&1
rc=$?
cat "$out"
ok=1
case $want in
zero) [ $rc -eq 0 ] || { echo "expect.sh: exit status $rc, expected 0"; ok=0; } ;;
nonzero) [ $rc -ne 0 ] || { echo "expect.sh: exit status 0, expected a failure"; ok=0; } ;;
*) echo "expect.sh: zero or nonzero, not $want" >&2; exit 2 ;;
esac
i=1
while [ $i -le $n ]; do
  eval "pat=\$pat_$i"
  grep -Eq -- "$pat" "$out" || { echo "expect.sh: no line matches: $pat"; ok=0; }
  i=$((i + 1))
done
[ $ok -eq 1 ] && echo "expect.sh: ok (exit status $rc)"
[ $ok -eq 1 ]
