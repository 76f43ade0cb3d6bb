#!/bin/sh
# check-exports.sh LIBRARY INCLUDE_DIR
# Passes when the shared library exports exactly the functions that the public headers declare
# with TDM_API: nothing internal leaks out, and nothing declared is missing.
set -eu
lib=$1
inc=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
nm -D --defined-only "$lib" | awk '{ print $NF }' | grep -v -e '^_init$' -e '^_fini$' | sort -u >"$tmp/exported"
grep -h '^TDM_API ' "$inc"/tandem.h "$inc"/tandem/*.h |
  sed -E 's/^.*[ *](tdm_[a-z0-9_]+)\(.*$/\1/' | sort -u >"$tmp/declared"
status=0
if ! diff -u "$tmp/declared" "$tmp/exported" >"$tmp/diff"; then
  echo "exported symbols differ from the public declarations (- declared only, + exported only):"
  grep -E '^[-+][a-z_]' "$tmp/diff" || true
  status=1
fi
n=$(wc -l <"$tmp/exported")
[ "$status" -eq 0 ] && echo "ok: $n exported functions, all declared in the public headers"
exit $status
