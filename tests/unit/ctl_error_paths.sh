#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# ctl_error_paths.sh EPMOECTL PROBE — every epmoectl error path we could
# think of that needs no daemon group: bad flags and values, missing or
# unreachable sockets, a stale socket, a peer that answers nonsense, and
# broken checkpoint directories. Each must end with a non-zero exit code and
# a message, never a crash; in a sanitizer build (EPMOE_SANITIZE=address)
# LeakSanitizer runs at every exit and any leak or memory error fails the
# test (ASAN_OPTIONS below), so the error paths stay leak-free.
set -u
C=$1 PROBE=$2
T=$(mktemp -d /tmp/epm_ctl_err.XXXXXX)
FAKE=""
trap '[ -n "$FAKE" ] && kill -KILL "$FAKE" 2>/dev/null; rm -rf "$T"' EXIT
export ASAN_OPTIONS=detect_leaks=1:exitcode=99 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
fails=0 n=0
# run CMD...: non-zero exit, a message, no sanitizer report
run() {
  local out rc
  out=$("$@" 2>&1 </dev/null); rc=$?
  n=$((n + 1))
  if printf '%s' "$out" | grep -qE "LeakSanitizer|AddressSanitizer|runtime error"; then
    echo "FAIL (sanitizer): $*"; printf '%s\n' "$out" | grep -A12 "ERROR" | head -30; fails=$((fails + 1))
  elif [ $rc = 0 ] || [ $rc -ge 128 ] || [ $rc = 99 ] || [ -z "$out" ]; then
    echo "FAIL (exit $rc, want a clean error): $*: $out" | head -3; fails=$((fails + 1))
  fi
}
mkdir "$T/empty"
echo junk >"$T/junk"
long=$(printf '9%.0s' $(seq 1 60))

run "$C"
run "$C" nope
for s in plan ref step ckpt status stats health forward bench shutdown; do
  run "$C" $s --bogus
  run "$C" $s --=x
done
run "$C" plan
run "$C" plan --preset nope --ep 2 --tokens-per-rank 1,2
run "$C" plan --preset tiny --ep 3 --tokens-per-rank 1,2
run "$C" plan --preset tiny --ep 2 --tokens-per-rank 1,,2
run "$C" plan --preset tiny --ep 2 --tokens-per-rank 1,2 --tokens-per-rank 3,4,5
run "$C" plan --preset tiny --ep 1 --tokens-per-rank "$long"
run "$C" ref --preset nope
run "$C" ref --model "$T/empty"
run "$C" ref --model "$T/missing"
run "$C" ckpt
run "$C" ckpt bogus
run "$C" ckpt inspect "$T/empty"
run "$C" ckpt inspect "$T/missing"
run "$C" ckpt inspect "$T/junk"
run "$C" ckpt make --preset nope --out "$T/ck0"
run "$C" ckpt make --preset tiny --out /proc/epm-no-such-dir/x
# broken checkpoints: bad JSON, a truncated file, a header length past the file, a tiny bogus header
if "$C" ckpt make --preset tiny --layers 1 --out "$T/ck" --quiet >/dev/null 2>&1; then
  run "$C" ckpt make --preset tiny --layers 1 --out "$T/ck" --quiet # exists
  for k in json trunc hugehdr badhdr noconfig; do
    cp -r "$T/ck" "$T/ck.$k"
    f=$(find "$T/ck.$k" -maxdepth 1 -name '*.safetensors' | sort | head -1)
    case $k in
      json) echo '{"bad json' >"$T/ck.$k/config.json" ;;
      trunc) truncate -s 100 "$f" ;;
      hugehdr) printf '\xff\xff\xff\xff\xff\xff\xff\x7f' | dd of="$f" conv=notrunc 2>/dev/null ;;
      badhdr) printf '\x10\x00\x00\x00\x00\x00\x00\x00{"a":1}        ' | dd of="$f" conv=notrunc 2>/dev/null ;;
      noconfig) rm "$T/ck.$k/config.json" ;;
    esac
    run "$C" ckpt inspect "$T/ck.$k"
    run "$C" ckpt load "$T/ck.$k"
    run "$C" ref --model "$T/ck.$k" --tokens 2
  done
fi
# sockets: none, missing directory, a stale socket, a peer speaking nonsense
for s in status stats health shutdown; do
  run "$C" $s --socket-dir "$T/empty"
  run "$C" $s --socket-dir "$T/missing" --rank 0
done
run "$C" forward --socket-dir "$T/empty" --tokens-per-rank 1
run "$C" forward --socket-dir "$T/empty" --rank 0 --tokens-per-rank 1
run "$C" forward --socket-dir "$T/empty" --tokens-per-rank 1 --input "$T/missing"
run "$C" forward --socket-dir "$T/empty" --tokens-per-rank 1 --random --input "$T/junk"
run "$C" forward --socket-dir "$T/empty" --tokens-per-rank 1 --tolerance ""
run "$C" forward --socket-dir "$T/empty" --tokens-per-rank 1 --tolerance inf
run "$C" bench --socket-dir "$T/empty" --tokens-per-rank 1 --duration 0
python3 - "$T/stale/epmoe.0.sock" <<'EOF' 2>/dev/null || mkdir -p "$T/stale"
import os, socket, sys
os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])  # bound, never listening: a stale socket
EOF
run "$C" health --socket-dir "$T/stale"
run "$C" forward --socket-dir "$T/stale" --tokens-per-rank 1
mkdir "$T/fake"
"$PROBE" "$T/fake/epmoe.0.sock" fakeserver "$T/fake.log" >/dev/null 2>&1 &
FAKE=$!
disown "$FAKE" 2>/dev/null
for _ in $(seq 1 50); do [ -S "$T/fake/epmoe.0.sock" ] && break; sleep 0.1; done
run "$C" status --socket-dir "$T/fake"       # a HEALTH answer to STATUS
run "$C" forward --socket-dir "$T/fake" --tokens-per-rank 1 # a HEALTH answer to HELLO
run "$C" bench --socket-dir "$T/fake" --tokens-per-rank 1 --duration 1
run "$C" health --socket-dir "$T/fake" --expect-uid 4242
[ $fails = 0 ] || { echo "$fails of $n error paths failed"; exit 1; }
echo "ok: $n epmoectl error paths end cleanly (exit code, message$([ -n "${EPM_SAN:-}" ] && echo ", no leak"))"
