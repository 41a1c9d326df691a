#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Interop of epmoe's safetensors reader/writer with the reference
implementation (huggingface safetensors, Rust core via its Python binding).

  st_interop.py EPMOECTL ST_DUMP

1. Files written by the reference (safetensors.numpy.save_file for U8, U16,
   F32, I64, F16, BOOL; safetensors.serialize_file for F8_E4M3 and BF16 given
   as uint8 / uint16 bytes, since numpy has neither dtype) are read by epmoe
   (st_dump) bit for bit: dtype, shape and FNV-1a 64 of the bytes.
2. A checkpoint written by `epmoectl ckpt make` opens with
   safetensors.safe_open(framework="numpy") (U8/F32 tensors as arrays) and
   safetensors.deserialize (every tensor, raw bytes); every tensor matches
   what `epmoectl ckpt inspect --json --tensors` reports and what epmoe's
   loader put in memory (st_dump --model), and the loader's global input
   scales equal the max over the experts' input_scale tensors.
Exit 77 (ctest: skipped) when safetensors or numpy is not installed.
"""
import json
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import safetensors
    from safetensors import TensorSpec, deserialize, safe_open, serialize_file
    from safetensors.numpy import save_file
except ImportError as e:  # pragma: no cover
    print(f"SKIP: python safetensors/numpy not available ({e})")
    sys.exit(77)

FNV_OFFSET, FNV_PRIME, MASK = 0xCBF29CE484222325, 0x100000001B3, (1 << 64) - 1
NP_DTYPES = {"U8": np.uint8, "F32": np.float32}  # what safe_open(numpy) can return here


def fnv1a64(data: bytes) -> str:
    h = FNV_OFFSET
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & MASK
    return f"{h:016x}"


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r.stdout


def dump_lines(out):
    return [json.loads(l) for l in out.splitlines() if l.strip()]


def check(cond, msg):
    if not cond:
        sys.exit("FAIL: " + msg)


def reference_files(tmp, st_dump):
    rng = np.random.default_rng(7)
    arrays = {
        "u8": rng.integers(0, 256, size=(17, 9), dtype=np.uint8),
        "u16": rng.integers(0, 65536, size=(5, 3), dtype=np.uint16),
        "f32": rng.standard_normal((4, 6)).astype(np.float32),
        "i64": rng.integers(-(2**40), 2**40, size=(7,), dtype=np.int64),
        "f16": rng.standard_normal((3, 2, 2)).astype(np.float16),
        "flag": rng.integers(0, 2, size=(6,)).astype(bool),
        "scalar": np.array(3.25, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
    p1 = os.path.join(tmp, "numpy.safetensors")
    save_file(arrays, p1, metadata={"format": "np"})
    want = {k: ({"uint8": "U8", "uint16": "U16", "float32": "F32", "int64": "I64", "float16": "F16",
                 "bool": "BOOL"}[v.dtype.name], list(v.shape), v.tobytes()) for k, v in arrays.items()}
    # F8_E4M3 and BF16 from raw uint8 / uint16 buffers with the dtype declared.
    f8 = rng.integers(0, 256, size=(8, 16), dtype=np.uint8)
    bf = rng.integers(0, 65536, size=(4, 10), dtype=np.uint16)
    p2 = os.path.join(tmp, "typed.safetensors")
    serialize_file({"w.weight_scale": TensorSpec(dtype="float8_e4m3fn", shape=f8.shape, data_ptr=f8.ctypes.data,
                                                 data_len=f8.nbytes),
                    "gate.weight": TensorSpec(dtype="bfloat16", shape=bf.shape, data_ptr=bf.ctypes.data,
                                              data_len=bf.nbytes)}, p2)
    want2 = {"w.weight_scale": ("F8_E4M3", [8, 16], f8.tobytes()), "gate.weight": ("BF16", [4, 10], bf.tobytes())}
    for path, w in ((p1, want), (p2, want2)):
        got = {d["name"]: d for d in dump_lines(run([st_dump, path])) if "name" in d}
        check(set(got) == set(w), f"{path}: epmoe sees {sorted(got)}, reference wrote {sorted(w)}")
        for name, (dt, shape, data) in w.items():
            g = got[name]
            check(g["dtype"] == dt and g["shape"] == shape and g["nbytes"] == len(data)
                  and g["fnv1a64"] == fnv1a64(data), f"{path}:{name}: epmoe {g} vs reference {dt} {shape}")
    print(f"ok: epmoe reads {len(want) + len(want2)} reference-written tensors bit for bit")


def epmoe_checkpoint(tmp, epmoectl, st_dump):
    ck = os.path.join(tmp, "ckpt")
    run([epmoectl, "ckpt", "make", "--preset", "tiny", "--layers", "2", "--out", ck, "--shard-mb", "1",
         "--seed", "99", "--quiet"])
    index = json.load(open(os.path.join(ck, "model.safetensors.index.json")))["weight_map"]
    check(len(set(index.values())) >= 2, "expected a multi-file checkpoint")
    ref = {}
    for fname in sorted(set(index.values())):
        path = os.path.join(ck, fname)
        raw = open(path, "rb").read()
        for name, v in deserialize(raw):  # the reference parser validates the whole file
            ref[name] = (v["dtype"], list(v["shape"]), bytes(v["data"]), fname)
        with safe_open(path, framework="numpy") as f:
            check(f.metadata().get("format") == "pt", f"{fname}: metadata {f.metadata()}")
            for name in f.keys():
                dt = f.get_slice(name).get_dtype()
                if dt in NP_DTYPES:
                    a = f.get_tensor(name)
                    check(a.dtype == NP_DTYPES[dt] and a.tobytes() == ref[name][2], f"safe_open {name} differs")
    check(set(ref) == set(index), "index weight_map and file contents differ")
    check(all(index[n] == ref[n][3] for n in ref), "weight_map points at the wrong file")
    # What epmoe's reader reports (inspect) ...
    insp = json.loads(run([epmoectl, "ckpt", "inspect", ck, "--json", "--tensors"]))
    check(insp["ok"] and not insp["problems"], f"inspect problems: {insp['problems'][:5]}")
    seen = {t["name"]: t for t in insp["tensors"]}
    check(set(seen) == set(ref), "inspect tensor list differs from the reference's")
    for name, (dt, shape, data, fname) in ref.items():
        t = seen[name]
        check(t["dtype"] == dt and t["shape"] == shape and t["file"] == fname and t["fnv1a64"] == fnv1a64(data),
              f"inspect {name}: {t} vs reference {dt} {shape} {fname}")
    # ... and what its loader put in memory.
    loaded, layers = {}, {}
    for d in dump_lines(run([st_dump, "--model", ck])):
        if "layer" in d:
            layers[d["layer"]] = d
        else:
            loaded[d["name"]] = d
    expect = {n for n in ref if not n.endswith(".input_scale")}
    check(set(loaded) == expect, f"loader emitted {len(loaded)} tensors, checkpoint has {len(expect)}: "
          f"{sorted(set(loaded) ^ expect)[:5]}")
    for name in expect:
        dt, shape, data, _ = ref[name]
        g = loaded[name]
        check(g["dtype"] == dt and g["shape"] == shape and g["fnv1a64"] == fnv1a64(data),
              f"loaded {name}: {g} vs reference {dt} {shape}")
    for L, d in layers.items():
        def scal(pat):
            return [np.frombuffer(v[2], dtype=np.float32)[0] for n, v in ref.items()
                    if n.startswith(f"model.layers.{L}.mlp.experts.") and n.endswith(pat)]
        a13 = max(scal("gate_proj.input_scale") + scal("up_proj.input_scale"))
        a2 = max(scal("down_proj.input_scale"))
        check(len(set(scal("gate_proj.input_scale"))) > 1, "per-expert input scales should vary")
        check(np.float32(d["input_scale"]) == a13 and np.float32(d["down_input_scale"]) == a2,
              f"layer {L}: loader scales {d} vs max over experts {a13} {a2}")
    print(f"ok: {len(ref)} tensors of an epmoectl checkpoint agree with safetensors "
          f"{safetensors.__version__} (reader, inspect and loader)")


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: st_interop.py EPMOECTL ST_DUMP")
    with tempfile.TemporaryDirectory(prefix="epm_interop_") as tmp:
        reference_files(tmp, sys.argv[2])
        epmoe_checkpoint(tmp, sys.argv[1], sys.argv[2])


if __name__ == "__main__":
    main()
