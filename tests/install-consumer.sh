#!/bin/sh
# install-consumer.sh BUILD_DIR SOURCE_DIR
# Installs tandem into a temporary prefix, then builds and runs a tiny consumer program against
# it four ways: CMake find_package (shared and static targets) and pkg-config (shared, static).
set -eu
build=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
cmake --install "$build" --prefix "$prefix" >/dev/null
libdir=$(ls -d "$prefix"/lib*/pkgconfig | head -n 1)
libdir=${libdir%/pkgconfig}

for target in tandem::tandem tandem::tandem_static; do
  dir=$tmp/cmake-$(echo "$target" | tr ':' '_')
  cmake -S "$src/tests/consumer" -B "$dir" -DCMAKE_PREFIX_PATH="$prefix" -DTANDEM_TARGET="$target" >/dev/null
  cmake --build "$dir" >/dev/null
  "$dir/consumer"
done

export PKG_CONFIG_PATH="$libdir/pkgconfig"
cc -o "$tmp/pc-shared" "$src/tests/consumer/main.c" $(pkg-config --cflags --libs tandem) -Wl,-rpath,"$libdir"
"$tmp/pc-shared"
# The static library's own dependencies (libcrypto, through Requires.private) come from
# pkg-config --static; -ltandem itself is replaced by the archive.
cc -o "$tmp/pc-static" "$src/tests/consumer/main.c" $(pkg-config --cflags tandem) \
  "$libdir/libtandem.a" $(pkg-config --libs --static tandem | sed 's/-ltandem\b//')
"$tmp/pc-static"
if ldd "$tmp/pc-static" | grep -q libtandem; then
  echo "the static consumer is linked against the shared library" >&2
  exit 1
fi
# libtandem-mpi, where it was built: pkg-config tandem-mpi gives a program that links it.
if [ -f "$libdir/pkgconfig/tandem-mpi.pc" ]; then
  cc -o "$tmp/pc-mpi" "$src/tests/consumer/cluster.c" $(pkg-config --cflags --libs tandem-mpi) \
    -Wl,-rpath,"$libdir"
  "$tmp/pc-mpi"
  ldd "$tmp/pc-mpi" | grep -q libtandem-mpi || { echo "pkg-config tandem-mpi: not linked" >&2; exit 1; }
  echo "ok: pkg-config tandem-mpi"
fi
echo "ok: find_package(tandem) and pkg-config tandem, shared and static"
