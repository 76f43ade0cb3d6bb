#!/bin/sh
# check-exports.sh LIBRARY INCLUDE_DIR [HEADER...]
# Passes when the shared library exports exactly the functions that the public headers declare
# with TDM_API (all of them, or the HEADERs given, relative to INCLUDE_DIR): nothing internal
# leaks out, and nothing declared is missing. One private symbol is allowed besides:
# tdm__pool_spi, libtandem's door for libtandem-mpi (src/pool/spi.h).
set -eu
lib=$1
inc=$2
shift 2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
nm -D --defined-only "$lib" | awk '{ print $NF }' |
  grep -v -e '^_init$' -e '^_fini$' -e '^tdm__pool_spi$' | sort -u >"$tmp/exported"
if [ $# -gt 0 ]; then
  headers=""
  for h in "$@"; do headers="$headers $inc/$h"; done
else
  headers=$(ls "$inc"/tandem.h "$inc"/tandem/*.h | grep -v '/cluster\.h$')
fi
# shellcheck disable=SC2086
grep -h '^TDM_API ' $headers |
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
