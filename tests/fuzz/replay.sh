#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# replay.sh CORPUS_DIR MAKE_CORPUS TARGET=BIN... — run each fuzz target once
# over every file of its committed corpus (CORPUS_DIR/TARGET/) and over a
# corpus generated now by MAKE_CORPUS (so the generator and the committed
# files stay in step). A crash, sanitizer report or non-zero exit fails.
set -euo pipefail
corpus=$1 gen=$2
shift 2
tmp=$(mktemp -d /tmp/epm_fuzz_replay_XXXXXX)
trap 'rm -rf "$tmp"' EXIT
"$gen" "$tmp" >/dev/null
for tb in "$@"; do
  t=${tb%%=*} bin=${tb#*=}
  for d in "$corpus/$t" "$tmp/$t"; do
    n=$(find "$d" -maxdepth 1 -type f | wc -l)
    [ "$n" -gt 0 ] || { echo "FAIL: no inputs in $d"; exit 1; }
    find "$d" -maxdepth 1 -type f -print0 | sort -z | xargs -0 "$bin" >/dev/null 2>"$tmp/err" ||
      { cat "$tmp/err"; echo "FAIL: $t on $d"; exit 1; }
    echo "ok: $t replayed $n inputs from $d"
  done
done
