#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# run_layering.sh — the `layering` test: the real archives must pass the
# checker, and the checker must fail on a forbidden edge (a probe archive that
# pretends to be part of comm/ and calls the engine), naming the edge.
#   run_layering.sh CHECKER PROBE_ARCHIVE PART=ARCHIVE...
set -u
checker=$1 probe=$2
shift 2
echo "== the build's parts"
python3 "$checker" "$@" || { echo "layering: FAIL: the build has edges outside the rules"; exit 1; }
echo "== self-check: a comm object that calls the engine must be refused"
out=$(python3 "$checker" "$@" "comm=$probe" 2>&1)
rc=$?
echo "$out"
if [ "$rc" -ne 1 ] || ! grep -q 'comm -> runtime is not an allowed edge' <<<"$out" ||
   ! grep -q 'epm_engine_destroy' <<<"$out"; then
  echo "layering: FAIL: the checker did not refuse comm -> runtime (exit $rc)"
  exit 1
fi
echo "layering: PASS"
