#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# ctl_ref_test.sh EPMOECTL — `epmoectl ref`: help and usage errors, a checksum
# that does not depend on the thread count but does on the seed, 0 tokens.
set -u
ctl="$1"
fail() { echo "FAIL: $*" >&2; exit 1; }
fnv() { sed -n 's/.*"fnv1a64":"\([0-9a-f]*\)".*/\1/p'; }

"$ctl" ref --help | grep -q "usage: epmoectl ref" || fail "--help"
"$ctl" ref --preset tiny --tokens 4 --seed 1 --bogus 2>/dev/null; [ $? = 64 ] || fail "unknown flag must exit 64"
"$ctl" ref --preset tiny --tokens 4 2>/dev/null; [ $? = 64 ] || fail "missing --seed must exit 64"
"$ctl" ref --preset nope --tokens 4 --seed 1 2>/dev/null; [ $? = 64 ] || fail "unknown preset must exit 64"
"$ctl" ref --preset tiny --tokens 4 --seed 1 --local-experts 17 2>/dev/null; [ $? = 64 ] || fail "E_l > E must exit 64"
"$ctl" ref --preset tiny --tokens -3 --seed 1 2>/dev/null; [ $? = 64 ] || fail "negative tokens must exit 64"

a=$("$ctl" ref --preset tiny --tokens 64 --seed 1 --threads 1 --json | fnv)
b=$("$ctl" ref --preset tiny --tokens 64 --seed 1 --threads 2 --json | fnv)
c=$("$ctl" ref --preset tiny --tokens 64 --seed 2 --threads 2 --json | fnv)
d=$("$ctl" ref --preset tiny --tokens 64 --seed 1 --threads 2 --json --local-experts 8 | fnv)
[ -n "$a" ] || fail "no checksum in the JSON output"
[ "$a" = "$b" ] || fail "checksum depends on the thread count: $a vs $b"
[ "$a" != "$c" ] || fail "checksum does not depend on the seed"
[ "$a" != "$d" ] || fail "an 8-expert slice gives the full layer's checksum"
# 0 tokens: the FNV-1a offset basis (no bytes hashed)
z=$("$ctl" ref --preset tiny --tokens 0 --seed 1 --json | fnv)
[ "$z" = "cbf29ce484222325" ] || fail "0 tokens: checksum $z"
"$ctl" ref --preset tiny --tokens 8 --seed 1 | grep -q "^checksum fnv1a64 " || fail "text output"
echo "ok: checksum $a"
