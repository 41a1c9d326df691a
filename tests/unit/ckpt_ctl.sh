#!/bin/sh
# ckpt_ctl.sh EPMOECTL — `epmoectl ckpt` as a user runs it: make, inspect
# (exit 0 on a good checkpoint, 1 on each kind of damage), load, usage errors.
set -u
ctl="$1"
tmp=$(mktemp -d /tmp/epm_ckctl_XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
expect() { # expect CODE PATTERN CMD...
  code=$1 pat=$2; shift 2
  out=$("$@" 2>&1); rc=$?
  [ "$rc" -eq "$code" ] || fail "$* exited $rc, want $code: $out"
  printf '%s' "$out" | grep -q -- "$pat" || fail "$* output lacks '$pat': $out"
}
expect 0 "usage: epmoectl ckpt make" "$ctl" ckpt --help
expect 64 "required" "$ctl" ckpt make --preset tiny
expect 64 "unknown model preset" "$ctl" ckpt make --preset nope --layers 1 --out "$tmp/x"
expect 64 "outside" "$ctl" ckpt make --preset tiny --layers 0 --out "$tmp/x"
expect 0 "wrote" "$ctl" ckpt make --preset tiny --layers 2 --out "$tmp/ok" --shard-mb 1
expect 1 "already holds a checkpoint" "$ctl" ckpt make --preset tiny --layers 1 --out "$tmp/ok"
expect 0 "^ok" "$ctl" ckpt inspect "$tmp/ok"
expect 0 '"ok": true' "$ctl" ckpt inspect "$tmp/ok" --json
expect 0 "rank 1 of 4, 2 layers" "$ctl" ckpt load "$tmp/ok" --ep 4 --rank 1
expect 0 "rank 2 of 3, 2 layers" "$ctl" ckpt load "$tmp/ok" --ep 3 --rank 2
expect 1 "cannot give each of 17 ranks" "$ctl" ckpt load "$tmp/ok" --ep 17
# Damage: a truncated data file, a stray tensor missing from the index.
cp -r "$tmp/ok" "$tmp/trunc"
f=$(ls "$tmp/trunc"/model-00002-*.safetensors)
truncate -s -100 "$f"
expect 1 "past the end of the" "$ctl" ckpt inspect "$tmp/trunc"
expect 1 '"ok": false' "$ctl" ckpt inspect "$tmp/trunc" --json
cp -r "$tmp/ok" "$tmp/idx"
sed -i 's/"model.layers.1.mlp.experts.3.down_proj.weight": "[^"]*",//' "$tmp/idx/model.safetensors.index.json"
expect 1 "experts.3.down_proj.weight' is missing from" "$ctl" ckpt inspect "$tmp/idx"
expect 1 "but the weight map assigns" "$ctl" ckpt inspect "$tmp/idx"
echo "ok: epmoectl ckpt make/inspect/load"
