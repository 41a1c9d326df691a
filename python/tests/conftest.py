# SPDX-License-Identifier: Apache-2.0
"""Fixtures: a real 2-rank daemon group on the CPU backend (tiny preset, 2
layers) in a temporary socket dir, and the independent reference: the CPU
reference of `epmoectl ref --input/--output` (the whole layer at EP = 1,
computed by runtime/moe_ref*.c, not by the daemons' step engine).

The binaries come from $EPMOE_BUILD_DIR (default: the repository's build/);
mpirun from $MPIEXEC (default: mpirun). A missing build is an error, not a
skip: CI must not pass with nothing tested."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package, when it is not installed
import epmoe  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("EPMOE_BUILD_DIR", REPO / "build"))
EPMOED = BUILD / "daemon" / "epmoed"
EPMOECTL = BUILD / "daemon" / "epmoectl"
PRESET, SEED, LAYERS, NP = "tiny", 7, 2, 2
STEP_TIMEOUT = 3
MAX_TOKENS = 64

MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMPI_MCA_rmaps_base_oversubscribe": "1",
    "OMPI_MCA_btl": "self,vader", "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
}


class Daemons:
    def __init__(self, socket_dir: str, proc: subprocess.Popen, log: Path):
        self.socket_dir, self.proc, self.log = socket_dir, proc, log

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture(scope="session")
def daemons() -> Iterator[Daemons]:
    for exe in (EPMOED, EPMOECTL):
        if not exe.exists():
            pytest.fail(f"{exe} not found: build first (cmake --build build) or set EPMOE_BUILD_DIR")
    mpiexec = os.environ.get("MPIEXEC", "mpirun")
    if not shutil.which(mpiexec):
        pytest.fail(f"{mpiexec} not found (set MPIEXEC)")
    tmp = tempfile.mkdtemp(prefix="epmoe-py.")
    sock = os.path.join(tmp, "s")
    log = Path(tmp) / "daemons.log"
    cmd = [mpiexec, "-np", str(NP), "--oversubscribe", str(EPMOED), "--preset", PRESET, "--seed", str(SEED),
           "--layers", str(LAYERS), "--backend", "cpu", "--socket-dir", sock, "--warmup-tokens", "1",
           "--step-timeout", str(STEP_TIMEOUT), "--max-tokens-per-rank", str(MAX_TOKENS)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **MPI_ENV},
                                start_new_session=True)
    d = Daemons(sock, proc, log)
    try:
        epmoe.wait_ready(sock, NP, timeout=60)
    except Exception:
        proc.kill()
        pytest.fail(f"daemons did not become ready:\n{d.log_tail()}")
    yield d
    try:
        with epmoe.connect(sock, rank=0) as g:
            g.shutdown()
        proc.wait(timeout=30)
    except Exception:
        proc.kill()
        proc.wait()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture()
def group(daemons: Daemons) -> Iterator[epmoe.Group]:
    g = epmoe.connect(daemons.socket_dir)
    yield g
    g.close()


def tokens(m: int, seed: int, hidden: int = 256, experts: int = 16) -> tuple:
    """Random bf16 x (unit-RMS rows) and router logits."""
    rng = np.random.default_rng(seed)
    x = epmoe.to_bf16(rng.standard_normal((m, hidden), dtype=np.float32))
    logits = rng.standard_normal((m, experts), dtype=np.float32) * 2
    return x, logits


def reference(layer: int, x: np.ndarray, logits: np.ndarray, shared: bool) -> np.ndarray:
    """y of the whole layer on the CPU reference (epmoectl ref --input)."""
    m, hidden = x.shape
    with tempfile.TemporaryDirectory() as d:
        inp, outp = os.path.join(d, "in.bin"), os.path.join(d, "out.bin")
        with open(inp, "wb") as f:
            f.write(np.ascontiguousarray(x, dtype=np.uint16).tobytes())
            f.write(np.ascontiguousarray(logits, dtype=np.float32).tobytes())
        cmd = [str(EPMOECTL), "ref", "--preset", PRESET, "--seed", str(SEED), "--layer", str(layer), "--tokens", str(m),
               "--input", inp, "--output", outp] + ([] if shared else ["--no-shared"])
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr}"
        return np.fromfile(outp, dtype=np.uint16).reshape(m, hidden)


def rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    """max |y - ref| / max |ref| in float; the engine's EP bound is 2^-6."""
    a, b = epmoe.from_bf16(y).astype(np.float64), epmoe.from_bf16(ref).astype(np.float64)
    assert a.shape == b.shape
    if a.size == 0:
        return 0.0
    scale = np.abs(b).max()
    assert scale > 0, "an all-zero reference proves nothing"
    return float(np.abs(a - b).max() / scale)
