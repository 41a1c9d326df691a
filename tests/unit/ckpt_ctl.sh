#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# ckpt_ctl.sh EPMOECTL — `epmoectl ckpt` as a user runs it: make, inspect
# (exit 0 on a good checkpoint, 1 on each kind of damage: truncation, index,
# bad scale and router values, config.json bounds, special files), load,
# usage errors.
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

# Values: inspect reports what the loader refuses, naming tensor and index.
patch_tensor() { # FILE TENSOR BYTE_OFFSET BYTES (printf octal escapes)
  hl=$(od -An -tu8 -N8 "$1" | tr -d ' ')
  b=$(head -c $((8 + hl)) "$1" | tail -c "$hl" | grep -o "\"$2\":{[^}]*}" | sed 's/.*"data_offsets":\[\([0-9]*\),.*/\1/')
  [ -n "$b" ] || fail "tensor $2 not in $1"
  # $4 holds escapes such as '\x7f' that printf must interpret.
  # shellcheck disable=SC2059
  printf "$4" | dd of="$1" bs=1 seek=$((8 + hl + b + $3)) conv=notrunc 2>/dev/null
}
P=model.layers.0.mlp
expect 0 "wrote" "$ctl" ckpt make --preset tiny --layers 1 --out "$tmp/one" --shard-mb 0
damage() { # NAME TENSOR BYTE_OFFSET BYTES
  rm -rf "${tmp:?}/${1:?}"; cp -r "$tmp/one" "$tmp/$1"
  patch_tensor "$tmp/$1/model.safetensors" "$2" "$3" "$4"
}
damage nan_sf $P.experts.5.up_proj.weight_scale 49 '\177'
expect 1 "experts.5.up_proj.weight_scale': block scale \[3, 1\] is 0x7f (NaN" "$ctl" ckpt inspect "$tmp/nan_sf"
expect 1 "block scale \[3, 1\] is 0x7f" "$ctl" ckpt load "$tmp/nan_sf"
damage neg_sf $P.shared_experts.down_proj.weight_scale 0 '\270'
expect 1 "shared_experts.down_proj.weight_scale': block scale \[0, 0\] is 0xb8 (negative" "$ctl" ckpt inspect "$tmp/neg_sf"
damage inf_s2 $P.experts.2.gate_proj.weight_scale_2 0 '\000\000\200\177'
expect 1 "experts.2.gate_proj.weight_scale_2' = inf; a decode scale must be finite" "$ctl" ckpt inspect "$tmp/inf_s2"
damage zero_in $P.experts.9.down_proj.input_scale 0 '\000\000\000\000'
expect 1 "experts.9.down_proj.input_scale' = 0; a decode scale" "$ctl" ckpt inspect "$tmp/zero_in"
damage neg_in $P.experts.9.up_proj.input_scale 3 '\277'
expect 1 "experts.9.up_proj.input_scale' = -" "$ctl" ckpt inspect "$tmp/neg_in"
damage inf_bias $P.gate.e_score_correction_bias 20 '\000\000\200\177'
expect 1 "e_score_correction_bias': element \[5\] is inf" "$ctl" ckpt inspect "$tmp/inf_bias"
expect 1 "e_score_correction_bias': element \[5\] is inf" "$ctl" ckpt load "$tmp/inf_bias"
damage nan_router $P.gate.weight 518 '\300\177'
expect 1 "gate.weight': element \[1, 3\] is nan" "$ctl" ckpt inspect "$tmp/nan_router" --json
# A transposed router (same size): refused by inspect as by the loader.
rm -rf "$tmp/router_t"; cp -r "$tmp/one" "$tmp/router_t"
sed -i 's/"model.layers.0.mlp.gate.weight":{"dtype":"BF16","shape":\[16,256\]/"model.layers.0.mlp.gate.weight":{"dtype":"BF16","shape":[256,16]/' \
  "$tmp/router_t/model.safetensors"
expect 1 "gate.weight' is BF16 \[256, 16\], expected BF16 or F32 \[16, 256\]" "$ctl" ckpt load "$tmp/router_t"
expect 1 "gate.weight' is BF16 \[256, 16\], expected BF16 \[16, 256\]" "$ctl" ckpt inspect "$tmp/router_t"

# config.json: bounds named with value and limit; inspect time bounded by the
# files (an expert count of 10^9 fails at once, 4096 stops after 1000 misses).
setcfg() { # NAME KEY VALUE
  rm -rf "${tmp:?}/${1:?}"; cp -r "$tmp/one" "$tmp/$1"
  sed -i "s/\"$2\": [0-9]*/\"$2\": $3/" "$tmp/$1/config.json"
  grep -q "\"$2\": $3" "$tmp/$1/config.json" || fail "could not set $2 in config.json"
}
setcfg big_h hidden_size 576460752303423488
expect 1 '"hidden_size" = 576460752303423488 exceeds the limit 65536' "$ctl" ckpt inspect "$tmp/big_h"
setcfg shared_wrap n_shared_experts 576460752303423489
expect 1 '"n_shared_experts" = 576460752303423489 exceeds the limit 16' "$ctl" ckpt inspect "$tmp/shared_wrap"
setcfg e_huge n_routed_experts 1000000000
expect 1 '"n_routed_experts" = 1000000000 exceeds the limit 4096' timeout 20 "$ctl" ckpt inspect "$tmp/e_huge"
setcfg e_4096 n_routed_experts 4096
expect 1 "which need 49166 tensors or more, but the weight map lists 206" timeout 20 "$ctl" ckpt inspect "$tmp/e_4096"
expect 1 "stopped after 1000 bad tensors" timeout 20 "$ctl" ckpt inspect "$tmp/e_4096" --json

# Special files: refused at once, never waited on.
cp -r "$tmp/ok" "$tmp/fifo"
f=$(ls "$tmp/fifo"/model-00002-*.safetensors)
rm "$f" && mkfifo "$f"
expect 1 "model-00002-of-00002.safetensors: is a FIFO, not a regular file: refused" timeout 20 "$ctl" ckpt inspect "$tmp/fifo"
expect 1 "is a FIFO, not a regular file" timeout 20 "$ctl" ckpt load "$tmp/fifo" --cold
rm "$tmp/fifo/config.json" && mkfifo "$tmp/fifo/config.json"
expect 1 "config.json: is a FIFO, not a regular file: refused" timeout 20 "$ctl" ckpt inspect "$tmp/fifo"
echo "ok: epmoectl ckpt make/inspect/load"
