#!/bin/sh
# mpirun.sh MPIRUN ARGS...: runs an MPI job on this one machine for the cluster tests and the
# benchmark: more ranks than cores (--oversubscribe, ranks yield when idle), no binding (ranks
# share the cores), shared memory between ranks (btl self,vader: no network probing), and
# --allow-run-as-root where the tests run as root (containers, CI).
set -eu
mpirun=$1
shift
root=""
[ "$(id -u)" -eq 0 ] && root="--allow-run-as-root"
exec "$mpirun" --oversubscribe --bind-to none --mca btl self,vader $root "$@"
