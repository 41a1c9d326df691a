#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# cli_test.sh EPMOECTL [EPMOED] — the real binaries' command lines, all parsed
# by daemon/cli_opt.c: `SUB --help` exits 0 with the help on stdout for every
# subcommand; an unknown option exits 64 naming it, with the usage on stderr;
# `--x=v` and `--x v` give the same result for every subcommand that takes
# values (the value visibly takes effect: an output, a checksum, or the path
# in a runtime error); epmoed --help exits 0 and names each option's EPMOE_*
# variable; bad values to epmoed (flag or environment) exit 64; `--version` on
# both programs and every subcommand prints the project version; epmoed
# refuses to start without --model or --preset, and refuses an EPMOE_*
# variable it does not know (naming the nearest setting), while every EPMOE_*
# name the sources and recipes use is known.
set -u
ctl="$1" epmoed="${2:-}"
src=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d /tmp/epm_cli_XXXXXX)
trap 'rm -rf "$tmp"' EXIT
empty="$tmp/no-daemons"
mkdir -p "$empty"
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
# expect CODE PATTERN CMD... : exit status CODE and PATTERN (grep -E) in stdout+stderr
expect() {
  local code=$1 pat=$2 out rc
  shift 2
  out=$("$@" 2>&1); rc=$?
  [ "$rc" -eq "$code" ] || { fail "$* exited $rc, want $code: $out"; return; }
  printf '%s\n' "$out" | grep -qE -- "$pat" || fail "$* output lacks '$pat': $out"
}
# same OUT1 OUT2 WHAT
same() { [ "$1" = "$2" ] || fail "$3: '--x=v' and '--x v' differ: '$1' vs '$2'"; }
fnv() { sed -n 's/.*"fnv1a64":"\([0-9a-f]*\)".*/\1/p'; }

subs="plan ref step ckpt status stats health forward bench shutdown"

# --- epmoectl itself: the plain table of subcommands
expect 0 "^usage: epmoectl <command>" "$ctl" --help
expect 0 "^usage: epmoectl <command>" "$ctl" help
out=$("$ctl" --help)
for s in $subs; do printf '%s\n' "$out" | grep -qE "^  $s " || fail "epmoectl --help does not list $s"; done
expect 64 "^usage: epmoectl <command>" "$ctl"
expect 64 "unknown command 'nope'" "$ctl" nope

# --- every subcommand: --help on stdout exit 0; unknown option 64 + usage on stderr
for s in $subs; do
  # $s is "ckpt make" for the ckpt actions: split on purpose.
  # shellcheck disable=SC2086
  out=$("$ctl" $s --help 2>"$tmp/err"); rc=$?
  [ $rc = 0 ] || fail "$s --help exited $rc"
  printf '%s\n' "$out" | head -1 | grep -q "^usage: " || fail "$s --help: no usage line on stdout: $out"
  [ -s "$tmp/err" ] && fail "$s --help wrote to stderr: $(cat "$tmp/err")"
  # shellcheck disable=SC2086
  "$ctl" $s --bogus-opt >"$tmp/out" 2>"$tmp/err"; rc=$?
  [ $rc = 64 ] || fail "$s --bogus-opt exited $rc, want 64"
  grep -q "unknown \(option '--bogus-opt'\|action '--bogus-opt'\)" "$tmp/err" || fail "$s: message lacks the option: $(cat "$tmp/err")"
  grep -q "usage: " "$tmp/err" || fail "$s --bogus-opt: no usage on stderr"
  [ -s "$tmp/out" ] && fail "$s --bogus-opt wrote to stdout"
done
for a in make inspect load; do
  expect 0 "^usage: epmoectl ckpt $a" "$ctl" ckpt $a --help
  expect 64 "unknown option '--bogus-opt'" "$ctl" ckpt $a --bogus-opt
done

# --- plan: both spellings, same JSON; the values took effect
a=$("$ctl" plan --preset=tiny --ep=2 --tokens-per-rank=5 --tile=64 --rank=1 --json)
b=$("$ctl" plan --preset tiny --ep 2 --tokens-per-rank 5 --tile 64 --rank 1 --json)
same "$a" "$b" "plan"
printf '%s\n' "$a" | grep -q '"tile": 64' || fail "plan --tile=64 not applied"
printf '%s\n' "$a" | grep -q '"rank": 1' || fail "plan --rank=1 not applied"
expect 64 "bad value for --ep: 0 is outside \[1, 65536\]" "$ctl" plan --preset tiny --ep=0 --tokens-per-rank 1
expect 64 "bad value for --ep: 0 is outside \[1, 65536\]" "$ctl" plan --preset tiny --ep 0 --tokens-per-rank 1
expect 64 "option --ep is required" "$ctl" plan --preset tiny --tokens-per-rank 1
expect 64 "option --json takes no value" "$ctl" plan --preset tiny --ep 1 --tokens-per-rank 1 --json=yes

# --- ref
a=$("$ctl" ref --preset=tiny --tokens=4 --seed=3 --threads=1 --json | fnv)
b=$("$ctl" ref --preset tiny --tokens 4 --seed 3 --threads 1 --json | fnv)
c=$("$ctl" ref --preset tiny --tokens 4 --seed 4 --threads 1 --json | fnv)
[ -n "$a" ] || fail "ref: no checksum"
same "$a" "$b" "ref"
[ "$a" != "$c" ] || fail "ref: --seed=3 gives seed 4's checksum (value not applied)"
expect 64 "bad value for --tokens: '4x' is not an integer" "$ctl" ref --preset tiny --tokens=4x --seed 1

# --- ckpt make / inspect / load
"$ctl" ckpt make --preset=tiny --layers=1 --out="$tmp/ck1" --seed=5 --shard-mb=0 --quiet >/dev/null 2>&1 || fail "ckpt make --x=v"
"$ctl" ckpt make --preset tiny --layers 1 --out "$tmp/ck2" --seed 5 --shard-mb 0 --quiet >/dev/null 2>&1 || fail "ckpt make --x v"
"$ctl" ckpt make --preset tiny --layers 1 --out "$tmp/ck3" --seed 6 --shard-mb 0 --quiet >/dev/null 2>&1 || fail "ckpt make seed 6"
h1=$("$ctl" ckpt inspect "$tmp/ck1" --json --tensors | grep fnv1a64 | sort | md5sum)
h2=$("$ctl" ckpt inspect --tensors --json -- "$tmp/ck2" | grep fnv1a64 | sort | md5sum)
h3=$("$ctl" ckpt inspect "$tmp/ck3" --json --tensors | grep fnv1a64 | sort | md5sum)
same "$h1" "$h2" "ckpt make (tensor hashes)"
[ "$h1" != "$h3" ] || fail "ckpt make: --seed=5 and --seed 6 wrote the same tensors"
[ -f "$tmp/ck1/model.safetensors" ] || fail "ckpt make --shard-mb=0 did not write one model.safetensors"
expect 0 "rank 1 of 2, 1 layers" "$ctl" ckpt load "$tmp/ck1" --ep=2 --rank=1
expect 0 "rank 1 of 2, 1 layers" "$ctl" ckpt load "$tmp/ck1" --ep 2 --rank 1
expect 64 "--rank 2 must be < --ep 2" "$ctl" ckpt load "$tmp/ck1" --ep 2 --rank 2
expect 64 "DIR is required" "$ctl" ckpt inspect --json
expect 64 "unexpected argument" "$ctl" ckpt inspect "$tmp/ck1" "$tmp/ck2"
expect 64 "an action is required" "$ctl" ckpt

# --- step (a singleton MPI job of one rank; usage errors exit before MPI starts)
a=$("$ctl" step --preset=tiny --tokens-per-rank=3 --seed=5 --partial=bf16 --json 2>/dev/null | fnv)
b=$("$ctl" step --preset tiny --tokens-per-rank 3 --seed 5 --partial bf16 --json 2>/dev/null | fnv)
c=$("$ctl" step --preset tiny --tokens-per-rank 3 --seed 6 --partial bf16 --json 2>/dev/null | fnv)
[ -n "$a" ] || fail "step: no checksum (does a singleton MPI job run here?)"
same "$a" "$b" "step"
[ "$a" != "$c" ] || fail "step: --seed=5 gives seed 6's checksum"
expect 64 "bad value for --seed: 'x' is not an integer" "$ctl" step --preset tiny --tokens-per-rank 3 --seed=x
expect 64 "bad value for --seed: 'x' is not an integer" "$ctl" step --preset tiny --tokens-per-rank 3 --seed x
expect 64 "bad value for --partial: 'f16' is not one of f32\|bf16" "$ctl" step --preset tiny --tokens-per-rank 3 --seed 1 --partial=f16
expect 64 "bad value for --tolerance: 'nan' is not a finite number" "$ctl" step --preset tiny --tokens-per-rank 3 --seed 1 --tolerance nan
expect 64 "bad value for --routing" "$ctl" step --preset tiny --tokens-per-rank 3 --seed 1 --routing=nope
expect 64 "bad value for --kernels: 'v3' is not one of v1\|v2" "$ctl" step --preset tiny --tokens-per-rank 3 --seed 1 --kernels=v3
# --kernels picks the cuda backend's kernels; the cpu reference ignores it
d=$("$ctl" step --preset tiny --tokens-per-rank 3 --seed 5 --partial bf16 --kernels v2 --json 2>/dev/null | fnv)
same "$a" "$d" "step --kernels v2 on the cpu backend"

# --- the daemon-facing subcommands: the shared --socket-dir/--rank/--timeout,
# and their own values. No daemon runs: the path in the runtime error (exit 1,
# health 2) shows the value was applied; bad values are usage errors (64).
for s in status stats health shutdown; do
  want=1; [ $s = health ] && want=2
  expect $want "$empty" "$ctl" $s --socket-dir="$empty"
  expect $want "$empty" "$ctl" $s --socket-dir "$empty"
  expect $want "$empty/epmoe.3.sock" "$ctl" $s --socket-dir="$empty" --rank=3
  expect $want "$empty/epmoe.3.sock" "$ctl" $s --socket-dir "$empty" --rank 3
  expect 64 "bad value for --timeout: 0 is outside \[1, 86400000\]" "$ctl" $s --timeout=0
  expect 64 "bad value for --timeout: 0 is outside \[1, 86400000\]" "$ctl" $s --timeout 0
  expect 64 "option --rank needs a value" "$ctl" $s --rank
done
expect 2 "" "$ctl" health -q --socket-dir "$empty"
expect 1 "$empty" "$ctl" stats --prometheus --socket-dir="$empty"
expect 1 "$empty" "$ctl" status --json --socket-dir="$empty"
for s in forward bench; do
  expect 1 "$empty" "$ctl" $s --tokens-per-rank=1,2 --socket-dir="$empty"
  expect 1 "$empty" "$ctl" $s --tokens-per-rank 1,2 --socket-dir "$empty"
  expect 64 "option --tokens-per-rank is required" "$ctl" $s --socket-dir "$empty"
  expect 64 "bad value for --tokens-per-rank: value 2 of '1,,2'" "$ctl" $s --tokens-per-rank=1,,2
  expect 64 "bad value for --tokens-per-rank: value 2 of '1,,2'" "$ctl" $s --tokens-per-rank 1,,2
  expect 64 "2000000000 is outside \[0, 1073741824\]" "$ctl" $s --tokens-per-rank 1,2000000000
done
expect 64 "bad value for --tolerance: 'nan' is not a finite number" "$ctl" forward --tokens-per-rank 1 --tolerance=nan
expect 64 "bad value for --seed: '-1' is not an unsigned integer" "$ctl" forward --tokens-per-rank 1 --seed -1
expect 64 "--random and --input" "$ctl" forward --tokens-per-rank 1 --random --input=x.bin
expect 64 "bad value for --duration: 0 is outside \(0, 86400\]" "$ctl" bench --tokens-per-rank 1 --duration=0
expect 64 "bad value for --warmup: 'many' is not an integer" "$ctl" bench --tokens-per-rank 1 --warmup many
# strict numbers: an empty or infinite tolerance is refused, and a list value
# is read whole however long (45 characters once read as 0)
expect 64 "bad value for --tolerance: '' is not a number" "$ctl" forward --tokens-per-rank 1 --tolerance ""
expect 64 "bad value for --tolerance: 'inf' is not a finite number" "$ctl" forward --tokens-per-rank 1 --tolerance inf
expect 64 "bad value for --tolerance: '-inf' is not a finite number" "$ctl" forward --tokens-per-rank 1 --tolerance=-inf
expect 64 "bad value for --tolerance: '1e999' is not a finite number" "$ctl" forward --tokens-per-rank 1 --tolerance 1e999
long=$(printf '0%.0s' $(seq 1 44))7
expect 0 "tokens: local 7, max per rank 7" "$ctl" plan --preset tiny --ep 1 --tokens-per-rank "$long"
expect 0 "tokens: local 5, max per rank 7, gathered 12" "$ctl" plan --preset tiny --ep 2 --tokens-per-rank "5,$long"
expect 64 "bad value for --tokens-per-rank: value 1 of '1$(printf '0%.0s' $(seq 1 40))'" \
  "$ctl" forward --tokens-per-rank "1$(printf '0%.0s' $(seq 1 40))"
expect 64 "bad value for --expect-uid: '1x' is not an integer" "$ctl" health --expect-uid 1x

# --- epmoed: --help from the table, every option with its EPMOE_* variable;
# bad values from a flag or the environment exit 64 before MPI starts
if [ -n "$epmoed" ]; then
  help=$("$epmoed" --help 2>"$tmp/err"); rc=$?
  [ $rc = 0 ] || fail "epmoed --help exited $rc"
  [ -s "$tmp/err" ] && fail "epmoed --help wrote to stderr"
  n=0
  for opt in $(printf '%s\n' "$help" | sed -n 's/^  --\([a-z-]*\).*/\1/p' | grep -v '^\(help\|version\)$'); do
    env=EPMOE_$(printf '%s' "$opt" | tr 'a-z-' 'A-Z_')
    printf '%s\n' "$help" | grep -q "env $env)" || fail "epmoed --help: --$opt does not name $env"
    n=$((n + 1))
  done
  [ $n -ge 15 ] || fail "epmoed --help lists $n options, expected at least 15"
  expect 64 "bad value for --max-tokens-per-rank: 0 is outside \[1, 16777216\]" "$epmoed" --max-tokens-per-rank=0
  expect 64 "bad value for --max-tokens-per-rank: 0 is outside \[1, 16777216\]" "$epmoed" --max-tokens-per-rank 0
  expect 64 "bad value for --log-level: 'loud' is not one of error\|warn\|info\|debug" "$epmoed" --log-level=loud
  expect 64 "unknown option '--bogus'" "$epmoed" --bogus
  expect 64 "usage: mpirun -np N epmoed" "$epmoed" --layers
  expect 64 "bad value for --max-frame \(from EPMOE_MAX_FRAME\): '1X' is not an integer" env EPMOE_MAX_FRAME=1X "$epmoed"
  expect 64 "unexpected argument 'stray'" "$epmoed" stray
  # no silent default model (bounded: a daemon that did start would serve forever)
  expect 64 "no model to serve: pass --model DIR \(or EPMOE_MODEL=DIR\).*--preset NAME" timeout 20 "$epmoed"
  expect 64 "no model to serve" timeout 20 env -u EPMOE_MODEL -u EPMOE_PRESET "$epmoed" --backend cpu
  expect 64 "bad value for --preset: unknown model preset 'tinyy'" "$epmoed" --preset tinyy
  # a misspelt setting is an error naming the nearest names, even when the
  # rest of the line is fine
  expect 64 "unknown environment variable EPMOE_MODLE \(did you mean EPMOE_MODEL\?\)" timeout 20 env EPMOE_MODLE=/m "$epmoed" --preset tiny
  expect 64 "EPMOE_SOCKETDIR \(did you mean EPMOE_SOCKET_DIR\?\); EPMOE_ZZZ: not a setting of epmoed" \
    timeout 20 env EPMOE_SOCKETDIR=/s EPMOE_ZZZ=1 "$epmoed" --preset tiny
  # every EPMOE_* name read by the sources, the recipes and the tests is known
  names=$({ grep -rhoE 'getenv\("EPMOE_[A-Z0-9_]+"' "$src"/runtime "$src"/comm "$src"/kernels "$src"/daemon "$src"/tests |
    sed 's/getenv("//;s/"//'
    grep -rhoE '\$\{?EPMOE_[A-Z0-9_]+' "$src"/deploy "$src"/tests --include='*.sh' --include='*.sbatch' \
      --include='*.service' --include='*.yaml' --include=Containerfile | sed 's/^\$[{]\{0,1\}//'
    grep -rhoE '^EPMOE_[A-Z0-9_]+=' "$src"/deploy | sed 's/=$//'; } | sort -u)
  [ "$(printf '%s\n' "$names" | wc -l)" -ge 20 ] || fail "found only these EPMOE_* names in the sources: $names"
  for v in $names; do
    out=$(env "$v=1" "$epmoed" --preset tiny --max-tokens-per-rank 0 2>&1)
    printf '%s\n' "$out" | grep -q "unknown environment" && fail "epmoed does not know $v (used in the sources): $out"
  done
  # --version: the project version, exit 0, on stdout
  ver=$(sed -n 's/^project(epmoe VERSION \([0-9.]*\).*/\1/p' "$src/CMakeLists.txt")
  [ -n "$ver" ] || fail "no project version in $src/CMakeLists.txt"
  expect 0 "^epmoed $ver\$" "$epmoed" --version
  expect 0 "^epmoed $ver\$" env EPMOE_MODLE=x "$epmoed" --layers=0 --version
  expect 64 "bad value for --kernels \(from EPMOE_KERNELS\): 'v9' is not one of v1\|v2" env EPMOE_KERNELS=v9 "$epmoed" --preset tiny
  expect 64 "bad value for --liveness-timeout: 'inf' is not a finite number" "$epmoed" --preset tiny --liveness-timeout inf
  expect 64 "--liveness-timeout: 0.01 is below 0.1 s" "$epmoed" --preset tiny --liveness-timeout 0.01
  expect 64 "bad value for --idle-timeout: '' is not an integer" "$epmoed" --preset tiny --idle-timeout ""
fi
ver=${ver:-$(sed -n 's/^project(epmoe VERSION \([0-9.]*\).*/\1/p' "$src/CMakeLists.txt")}
expect 0 "^epmoectl $ver\$" "$ctl" --version
for s in $subs "ckpt make" "ckpt inspect" "ckpt load"; do
  # shellcheck disable=SC2086  # "ckpt make" is two words on purpose
  out=$("$ctl" $s --version 2>&1); rc=$?
  if [ $rc != 0 ] || [ "$out" != "epmoectl $ver" ]; then
    fail "epmoectl $s --version: exit $rc, '$out' (want 'epmoectl $ver')"
  fi
done

[ $fails = 0 ] || { echo "$fails failure(s)"; exit 1; }
echo "ok: epmoectl ($subs) and epmoed command lines"
