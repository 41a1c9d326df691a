#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# client_so.sh — the client shared library is what its documentation says:
# a SONAME from the project version, and no dependency on MPI, jansson,
# OpenMP or libuv (engines link it without the runtime). Then runs a program
# linked against it.
#   client_so.sh LIBFILE PROBE
set -u
lib=$1 probe=$2
fail=0
dyn=$(readelf -d "$lib") || { echo "client_so: readelf failed on $lib"; exit 1; }
soname=$(sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p' <<<"$dyn")
echo "SONAME: ${soname:-none}"
[[ "$soname" =~ ^libepmoe_client\.so\.[0-9]+\.[0-9]+$ ]] || { echo "client_so: FAIL: SONAME '$soname'"; fail=1; }
needed=$(sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' <<<"$dyn" | tr '\n' ' ')
echo "NEEDED: $needed"
for bad in mpi jansson gomp uv nccl; do
  if grep -qE "(^| )lib${bad}[^ ]*" <<<"$needed"; then echo "client_so: FAIL: links lib$bad"; fail=1; fi
done
"$probe" || fail=1
[ "$fail" = 0 ] && echo "client_so: PASS"
exit "$fail"
