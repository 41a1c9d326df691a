#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""bundle_check.py SRC WORK EXE... -- the bundle-reading tests on another bundle.

Writes WORK/derived, a second bundle of the flashinfer-ref v1 format cut from
the one in SRC (tests/data/README.md), with other shapes, offsets, files and a
reordered routing case list:
  quant_*    rows 50..169 and the first 256 columns (120 x 256 instead of 200 x 512);
             the 128x4 swizzled scales are rebuilt for the new shape
  routing_*  40 tokens in reverse order; cases llama4, topk with top_k 4 (the first 4
             of the reference's top-8, which is exactly top-4), deepseekv3,
             renormalize; routing_bias stored as bfloat16 (its values are bf16-exact)
  moe_*      two experts of the low half dropped (6 experts left), only the tokens
             routed to kept experts, in reverse order; slices lo [0, 2) and hi [2, 6),
             which are the old [0, 4) and [4, 8) restricted to the kept experts
Every derived value is a slice of a FlashInfer value, so the expected results
stay exact: tokens are independent, and the dropped experts receive no kept token.
Arrays go into two files with other names, in another order.

Then runs each EXE with EPMOE_TEST_DATA=WORK/derived and checks that it passes
and that its output shows the derived shapes (the bundle summary lines and the
per-case lines of each test). Finally two broken copies: a manifest entry whose
nbytes does not match its shape x dtype, and a missing parameter; every EXE must
fail and name the array and both sizes, or the key.

An EXE that exits 77 (no GPU) is skipped; if all are skipped the script exits 77.
Standard library only.
"""
import array
import copy
import json
import os
import shutil
import struct
import subprocess
import sys

ALIGN = 64
DSIZE = {"uint8": 1, "int32": 4, "float32": 4, "bfloat16": 2}


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def prod(xs):
    n = 1
    for x in xs:
        n *= x
    return n


# ---- reading the source bundle -------------------------------------------------

def load_bundle(src):
    with open(os.path.join(src, "manifest.json")) as f:
        man = json.load(f)
    files = {}
    arrays = {}
    for a in man["arrays"]:
        if a["file"] not in files:
            with open(os.path.join(src, a["file"]), "rb") as f:
                files[a["file"]] = f.read()
        data = files[a["file"]][a["offset"]:a["offset"] + a["nbytes"]]
        assert len(data) == a["nbytes"] == prod(a["shape"]) * DSIZE[a["dtype"]], a["name"]
        arrays[a["name"]] = {"dtype": a["dtype"], "shape": list(a["shape"]), "data": data,
                             "description": a.get("description", "")}
    return man, arrays


def row_bytes(a):
    return prod(a["shape"][1:]) * DSIZE[a["dtype"]]


def take_rows(a, idx):
    """Rows idx (dim 0) of a, in that order."""
    rb = row_bytes(a)
    data = b"".join(a["data"][r * rb:(r + 1) * rb] for r in idx)
    return dict(a, shape=[len(idx)] + a["shape"][1:], data=data)


def take_cols(a, cols):
    """Columns cols (last dim, in that order) of a 2-D array."""
    es = DSIZE[a["dtype"]]
    rows, n = a["shape"]
    out = bytearray()
    for r in range(rows):
        row = a["data"][r * n * es:(r + 1) * n * es]
        for c in cols:
            out += row[c * es:(c + 1) * es]
    return dict(a, shape=[rows, len(cols)], data=bytes(out))


def bf16_values(data):
    h = array.array("H")
    h.frombytes(data)
    if sys.byteorder != "little":
        h.byteswap()
    return [struct.unpack("<f", struct.pack("<I", v << 16))[0] for v in h]


def f32_to_bf16_exact(a):
    f = array.array("f")
    f.frombytes(a["data"])
    out = array.array("H")
    for v in f:
        bits = struct.unpack("<I", struct.pack("<f", v))[0]
        assert bits & 0xFFFF == 0, "value %r is not exact in bfloat16" % v
        out.append(bits >> 16)
    return dict(a, dtype="bfloat16", data=out.tobytes())


def amax_row(a):
    """(amax, row) of a bf16 [rows, cols] array."""
    vals = bf16_values(a["data"])
    n = a["shape"][1]
    best = max(range(len(vals)), key=lambda i: abs(vals[i]) if vals[i] == vals[i] else -1.0)
    return abs(vals[best]), best // n


def swizzle_128x4(lin, rows, sf_cols):
    """The 128x4 scale layout of README section 1, padding bytes 0."""
    pad_rows = (rows + 127) // 128 * 128
    pad_cols = (sf_cols + 3) // 4 * 4
    nkt = pad_cols // 4
    out = bytearray(pad_rows * pad_cols)
    for m in range(rows):
        for k in range(sf_cols):
            off = (m // 128) * (nkt * 512) + (k // 4) * 512 + (m % 32) * 16 + ((m % 128) // 32) * 4 + k % 4
            out[off] = lin[m * sf_cols + k]
    return {"dtype": "uint8", "shape": [len(out)], "data": bytes(out)}


# ---- the derived bundle --------------------------------------------------------

def derive(src, dst):
    man, A = load_bundle(src)
    if man.get("format") != "flashinfer-ref bundle v1":
        fail("%s: not a flashinfer-ref bundle v1" % src)
    new = {}
    comp = copy.deepcopy(man["computations"])

    # quant_*: rows 50..169, columns 0..255
    qp = comp["nvfp4_quant"]["params"]
    R = list(range(50, 170))
    C = 256
    x = take_cols(take_rows(A["quant_x"], R), range(C))
    old_amax, _ = amax_row(A["quant_x"])
    new_amax, _ = amax_row(x)
    if new_amax != old_amax:
        fail("quant subset lost the amax row: quant_global_scale would change")
    new["quant_x"] = x
    new["quant_global_scale"] = A["quant_global_scale"]
    new["quant_global_scale_inv"] = A["quant_global_scale_inv"]
    new["quant_packed"] = take_cols(take_rows(A["quant_packed"], R), range(C // 2))
    lin = take_cols(take_rows(A["quant_sf_linear"], R), range(C // 16))
    new["quant_sf_linear"] = lin
    new["quant_sf_swizzled"] = swizzle_128x4(lin["data"], len(R), C // 16)
    new["quant_dequant"] = take_cols(take_rows(A["quant_dequant"], R), range(C))
    qp["rows"], qp["cols"] = len(R), C
    qp["special_rows"] = {k: v - R[0] for k, v in qp["special_rows"].items() if v in R}
    qp["tie_row_sf_exponents_per_block"] = qp["tie_row_sf_exponents_per_block"][:C // 16]

    # routing_*: 40 tokens reversed, reordered cases, topk cut to k = 4
    rp = comp["routing"]["params"]
    T = list(range(51, 11, -1))
    new["routing_logits"] = take_rows(A["routing_logits"], T)
    new["routing_bias"] = f32_to_bf16_exact(A["routing_bias"])
    order = ["llama4", "topk", "deepseekv3", "renormalize"]
    cases = {name: rp.pop(name) for name in order}
    rp["tokens"] = len(T)
    cases["topk"]["top_k"] = 4
    for name in order:
        rp[name] = cases[name]
        k = cases[name]["top_k"]
        for part in ("ids", "weights"):
            a = take_rows(A["routing_%s_%s" % (name, part)], T)
            new["routing_%s_%s" % (name, part)] = take_cols(a, range(k)) if k < a["shape"][1] else a
        new["routing_%s_scores" % name] = take_rows(A["routing_%s_scores" % name], T)
    fn = comp["routing"]["functions"]
    comp["routing"]["functions"] = {name: fn[name] for name in order}

    # moe_*: drop two low experts the amax token does not use, keep the tokens
    # routed only to kept experts
    mp = comp["moe"]["params"]
    E, K = mp["num_experts"], mp["top_k"]
    ids = array.array("i")
    ids.frombytes(A["moe_topk_ids"]["data"])
    _, amax_tok = amax_row(A["moe_hidden"])
    amax_ids = set(ids[amax_tok * K:(amax_tok + 1) * K])
    drop = [e for e in range(E // 2) if e not in amax_ids][:2]
    kept = [e for e in range(E) if e not in drop]
    remap = {e: i for i, e in enumerate(kept)}
    toks = [t for t in range(mp["tokens"]) if all(ids[t * K + j] in remap for j in range(K))][::-1]
    if amax_tok not in toks or len(toks) < 8:
        fail("moe subset: %d tokens, amax token %d kept: %s" % (len(toks), amax_tok, amax_tok in toks))
    lo_new = [remap[e] for e in range(*mp["local_slice_lo"]) if e in remap]
    hi_new = [remap[e] for e in range(*mp["local_slice_hi"]) if e in remap]
    for name in ("moe_hidden", "moe_hidden_fp4", "moe_hidden_sf_linear", "moe_topk_weights", "moe_act_fp32",
                 "moe_out_fp32", "moe_out_bf16", "moe_out_local_hi_fp32", "moe_out_local_hi_bf16",
                 "moe_out_local_lo_fp32", "moe_out_wbf16_fp32"):
        new[name] = take_rows(A[name], toks)
    if amax_row(new["moe_hidden"])[0] != amax_row(A["moe_hidden"])[0]:
        fail("moe subset changed amax(moe_hidden)")
    new["moe_hidden_global_scale"] = A["moe_hidden_global_scale"]
    new["moe_input_scale"] = A["moe_input_scale"]
    h = mp["hidden_size"]
    new["moe_hidden_sf_swizzled"] = swizzle_128x4(new["moe_hidden_sf_linear"]["data"], len(toks), h // 16)
    new["moe_logits"] = take_cols(take_rows(A["moe_logits"], toks), kept)
    nid = array.array("i", [remap[ids[t * K + j]] for t in toks for j in range(K)])
    new["moe_topk_ids"] = dict(A["moe_topk_ids"], shape=[len(toks), K], data=nid.tobytes())
    for name in ("moe_gate_weight", "moe_gate_weight_scale", "moe_up_weight", "moe_up_weight_scale",
                 "moe_gate_up_weight_scale_2", "moe_gemm1_global_scale", "moe_down_weight",
                 "moe_down_weight_scale", "moe_down_weight_scale_2", "moe_gemm2_global_scale"):
        new[name] = take_rows(A[name], kept)
    new["moe_c_global_sf"] = A["moe_c_global_sf"]
    new["moe_down_input_scale"] = A["moe_down_input_scale"]
    mp["tokens"], mp["num_experts"] = len(toks), len(kept)
    mp["local_slice_lo"] = [lo_new[0], lo_new[-1] + 1]
    mp["local_slice_hi"] = [hi_new[0], hi_new[-1] + 1]

    missing = set(A) - set(new)
    if missing:
        fail("derive: arrays not carried over: %s" % sorted(missing))

    # two files with other names; routing before quant, moe reversed after a gap
    layout = [("vectors_a.bin", 0, [n for n in A if n.startswith("routing_")] +
               [n for n in A if n.startswith("quant_")][::-1]),
              ("vectors_b.bin", 3 * ALIGN, [n for n in A if n.startswith("moe_")][::-1])]
    if os.path.exists(dst):
        shutil.rmtree(dst)
    os.makedirs(dst)
    entries, files = [], {}
    for fname, start, names in layout:
        buf = bytearray(start)
        for n in names:
            a = new[n]
            buf += bytes(-len(buf) % ALIGN)
            assert len(a["data"]) == prod(a["shape"]) * DSIZE[a["dtype"]], n
            entries.append({"name": n, "file": fname, "dtype": a["dtype"], "shape": a["shape"],
                            "offset": len(buf), "nbytes": len(a["data"]), "description": a.get("description", "")})
            buf += a["data"]
        with open(os.path.join(dst, fname), "wb") as f:
            f.write(buf)
        files[fname] = len(buf)
    out = copy.deepcopy(man)
    out["set"] = "derived by tests/py/bundle_check.py from the %r set" % man.get("set")
    out["files"] = files
    out["computations"] = comp
    out["checks"] = {"note": "the checks of the source bundle hold for this subset; none were re-run"}
    out["arrays"] = entries
    with open(os.path.join(dst, "manifest.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


# ---- what each test must print ---------------------------------------------------

def summaries(man, d):
    q = man["computations"]["nvfp4_quant"]["params"]
    r = man["computations"]["routing"]["params"]
    m = man["computations"]["moe"]["params"]
    cases = [(k, v["top_k"]) for k, v in r.items() if isinstance(v, dict)]
    lo, hi = m["local_slice_lo"], m["local_slice_hi"]
    s = {
        "quant": "bundle quant: %d rows x %d cols (%s)" % (q["rows"], q["cols"], d),
        "routing": "bundle routing: %d tokens x %d experts, %d cases: %s (%s)" % (
            r["tokens"], r["num_experts"], len(cases), ", ".join("%s k=%d" % c for c in cases), d),
        "moe": "bundle moe: %d tokens, hidden %d, intermediate %d, %d experts, top_k %d, %s, "
               "slices lo [%d, %d) hi [%d, %d) (%s)" % (m["tokens"], m["hidden_size"], m["intermediate_size"],
                                                       m["num_experts"], m["top_k"], m["routing_method"],
                                                       lo[0], lo[1], hi[0], hi[1], d),
    }
    return s, q, r, m, cases


def expectations(exe, man, d):
    """(sections read, lines that must appear in this order) for one test."""
    s, q, r, m, cases = summaries(man, d)
    T, E, H = m["tokens"], m["num_experts"], m["hidden_size"]
    lo, hi = m["local_slice_lo"], m["local_slice_hi"]
    rt = "%d tokens x %d experts" % (r["tokens"], r["num_experts"])
    name = os.path.basename(exe)
    if name == "test_routing":
        return ["routing"], [s["routing"]] + ["routing %s as %%s: %s, k=%d: ids identical" % (c, rt, k)
                                              for c, k in cases]
    if name == "test_kernel_cores":
        return ["quant", "routing"], [s["quant"], s["routing"]] + [
            "core routing %s: %s, k=%d: ids identical" % (c, rt, k) for c, k in cases]
    if name == "test_nvfp4_flashinfer":
        return ["quant", "moe"], [s["quant"], "quant_x [%d, %d] ->" % (q["rows"], q["cols"]), s["moe"],
                                  "moe_hidden [%d, %d] ->" % (T, H)]
    if name == "test_moe_ref":
        return ["moe"], [s["moe"], "full, fp32 weights vs moe_out_fp32 [%d, %d]" % (T, H),
                         "experts [%d, %d) vs moe_out_local_hi_fp32 [%d, %d]" % (hi[0], hi[1], T, H),
                         "experts [%d, %d) vs moe_out_local_lo_fp32 [%d, %d]" % (lo[0], lo[1], T, H),
                         "moe routing %s over [%d, %d] logits: ids identical" % (m["routing_method"], T, E)]
    if name == "test_gpu_quantize":
        return ["quant"], [s["quant"], "flashinfer quant_* [%d, %d] linear: 0 codes differ" % (q["rows"], q["cols"])]
    if name == "test_gpu_routing":
        return ["routing"], [s["routing"]] + ["routing flashinfer %-18s: %s, k=%d: 0 ids differ" % (c, rt, k)
                                              for c, k in cases]
    if name == "test_gpu_moe":
        return ["moe"], [s["moe"]] + ["flashinfer %s experts [%d, %d) of %d, %d tokens" % (n, a, b, E, T)
                                      for n, (a, b) in (("moe_out_wbf16_fp32", (0, E)),
                                                        ("moe_out_local_hi_fp32", tuple(hi)),
                                                        ("moe_out_local_lo_fp32", tuple(lo)))]
    fail("%s: no expectations known for this test" % name)


def contains_in_order(text, lines):
    """Each line (with %s meaning any text without a newline) appears, in order."""
    pos = 0
    for want in lines:
        parts = want.split("%s")
        start = text.find(parts[0], pos)
        while start >= 0:
            at, ok = start + len(parts[0]), True
            for p in parts[1:]:
                nxt = text.find(p, at)
                if nxt < 0 or "\n" in text[at:nxt]:
                    ok = False
                    break
                at = nxt + len(p)
            if ok:
                break
            start = text.find(parts[0], start + 1)
        if start < 0:
            return want
        pos = at
    return None


def run(exe, data):
    env = dict(os.environ, EPMOE_TEST_DATA=data)
    p = subprocess.run([exe], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def broken_copy(good, dst, edit):
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(good, dst)
    with open(os.path.join(dst, "manifest.json")) as f:
        man = json.load(f)
    edit(man)
    with open(os.path.join(dst, "manifest.json"), "w") as f:
        json.dump(man, f, indent=1)


def main(argv):
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    src, work, exes = argv[1], argv[2], argv[3:]
    good = os.path.join(work, "derived")
    man = derive(src, good)
    s, q, r, m, cases = summaries(man, good)
    print("derived bundle %s:\n  %s\n  %s\n  %s" % (good, s["quant"], s["routing"], s["moe"]))

    ran = []
    for exe in exes:
        sections, lines = expectations(exe, man, good)
        rc, out, err = run(exe, good)
        name = os.path.basename(exe)
        if rc == 77:
            print("SKIP %s (exit 77: no device)" % name)
            continue
        if rc != 0:
            fail("%s on the derived bundle: exit %d\n%s\n%s" % (name, rc, out[-6000:], err[-3000:]))
        missing = contains_in_order(out, lines)
        if missing:
            fail("%s passed but did not print (in order):\n  %s\nits output:\n%s" % (name, missing, out[-6000:]))
        print("ok %s on the derived bundle: %d expected lines" % (name, len(lines)))
        ran.append((exe, sections))
    if not ran:
        print("all tests skipped")
        return 77

    # a manifest entry whose nbytes does not match shape x dtype: the down
    # projection gets 16 more columns in its shape
    victim = "moe_down_weight"
    ent = next(a for a in man["arrays"] if a["name"] == victim)
    bad_shape = ent["shape"][:-1] + [ent["shape"][-1] + 16]
    want = "array %s: nbytes %d does not match shape [%s] x 1-byte uint8 = %d bytes" % (
        victim, ent["nbytes"], ", ".join(str(v) for v in bad_shape), prod(bad_shape))

    def bad_size(mf):
        next(a for a in mf["arrays"] if a["name"] == victim)["shape"] = bad_shape

    broken_copy(good, os.path.join(work, "bad_size"), bad_size)
    for exe, _ in ran:
        rc, out, err = run(exe, os.path.join(work, "bad_size"))
        if rc in (0, 77) or want not in err:
            fail("%s on a manifest with a wrong nbytes: exit %d, expected a failure with\n  %s\nstderr:\n%s" % (
                os.path.basename(exe), rc, want, err[-3000:]))
        print("ok %s fails on the size mismatch: %s" % (os.path.basename(exe), want))

    # a missing parameter of a section the test reads
    first_case = cases[0][0]
    drop = {"quant": ("nvfp4_quant", None, "cols"), "routing": ("routing", first_case, "top_k"),
            "moe": ("moe", None, "hidden_size")}
    for exe, sections in ran:
        sec, sub, key = drop[sections[0]]
        ctx = "computations.%s.params%s" % (sec, "." + sub if sub else "")
        want = '%s has no integer "%s"' % (ctx, key)

        def no_key(mf):
            p = mf["computations"][sec]["params"]
            del (p[sub] if sub else p)[key]

        d = os.path.join(work, "no_key")
        broken_copy(good, d, no_key)
        rc, out, err = run(exe, d)
        if rc in (0, 77) or want not in err:
            fail("%s without %s.%s: exit %d, expected a failure with\n  %s\nstderr:\n%s" % (
                os.path.basename(exe), ctx, key, rc, want, err[-3000:]))
        print("ok %s fails on the missing key: %s" % (os.path.basename(exe), want))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
