# SPDX-License-Identifier: Apache-2.0
"""The host doorbell (memfd + futex, no socket message per step) against a
real 2-rank daemon group: results against the CPU reference and equal to the
socket path's, the options, sequence errors naming both numbers, and the
daemon's own checks of what the control block says."""
import numpy as np
import pytest

import epmoe

from conftest import reference, rel_err, tokens

TOL = 1.0 / 64


@pytest.mark.parametrize("layer,shared,dtype,split", [
    (0, False, "f32", [4, 4]),
    (1, True, "bf16", [0, 11]),
    (0, True, "f32", [16, 2]),
    (1, False, "f32", [0, 0]),
])
def test_doorbell_matches_the_cpu_reference(group, layer, shared, dtype, split):
    moe = group.layer(layer, shared_expert=shared, partial_dtype=dtype, mode="doorbell", capacity=32)
    for k in range(3):  # several steps through the same doorbells
        x, logits = tokens(sum(split), seed=1000 + 10 * k + layer)
        y = moe.forward(x, logits, split)
        if sum(split):
            err = rel_err(y, reference(layer, x, logits, shared))
            assert err <= TOL, f"step {k}: max relative error {err}"
    assert len(moe.last_step_ns) == 2


def test_doorbell_equals_the_socket_path(group):
    x, logits = tokens(10, seed=77)
    y_sock = group.layer(0, mode="socket").forward(x, logits, [6, 4])
    y_db = group.layer(0, mode="doorbell").forward(x, logits, [6, 4])
    assert np.array_equal(y_sock, y_db)


def test_sequence_errors_name_both_numbers(group):
    moe = group.layer(0, mode="doorbell", capacity=8)
    x, logits = tokens(4, seed=3)
    moe.forward(x, logits, [2, 2])
    dbs = group.doorbells()
    seq = dbs[0].seq
    assert all(db.seq == seq for db in dbs)
    for bad, expected in ((seq + 5, seq + 1), (seq + 5 - 3, seq + 6)):  # skipped, then stale
        for db in dbs:
            db.ring(0, 1, seq=bad)
        for db in dbs:
            with pytest.raises(epmoe.EpmoeError) as e:
                db.wait()
            assert e.value.status_name == "ERR_INVALID_ARG"
            assert f"doorbell sequence {bad} is not the next one: expected {expected}" in e.value.message
    y = moe.forward(x, logits, [2, 2])  # the doorbells go on after the refused numbers
    assert rel_err(y, reference(0, x, logits, False)) <= TOL


def test_daemon_checks_the_control_block(group):
    """What a client writes is checked by the daemon too: a token count above
    the attached capacity and an unknown partial dtype are refused (both ranks,
    so the step ids stay in step)."""
    dbs = group.doorbells(capacity=8)
    for m, dtype, want in ((dbs[0].capacity + 1, 0, "outside [0, "), (1, 9, "partial dtype 9")):
        seq = dbs[0].seq + 1
        for db in dbs:
            db._ring_raw(0, m, 0, dtype, seq)
        for db in dbs:
            with pytest.raises(epmoe.EpmoeError, match=want.replace("[", r"\[")):
                db.wait()


def test_doorbell_capacity_is_checked_here_first(group):
    moe = group.layer(0, mode="doorbell", capacity=4)
    dbs = group.doorbells(4)
    assert dbs[0].capacity == 4
    x, logits = tokens(dbs[0].capacity + 1, seed=1)
    with pytest.raises(ValueError, match="exceed the doorbell's capacity"):
        moe.forward(x, logits, [dbs[0].capacity + 1, 0])


CHILD = r"""
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
import epmoe
sock, rank, base = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
group = epmoe.connect(sock, rank=rank, step_base=base)
moe = [group.layer(l, mode=mode, capacity=16) for l, mode in ((0, "doorbell"), (1, "socket"))]
rng = np.random.default_rng(50 + rank)
m = 3 + 4 * rank
out = []
for step in range(3):
    for l in range(2):
        x = epmoe.to_bf16(rng.standard_normal((m, 256), dtype=np.float32))
        logits = rng.standard_normal((m, 16), dtype=np.float32)
        y = moe[l].forward(x, logits)
        out += [x, logits, y]
np.savez(sys.argv[5], *out)
"""


def test_one_process_per_rank(daemons, tmp_path):
    """The engine's shape: one process per rank, each talking to its own
    daemon only, same step base, the same layers in the same order (doorbell
    and socket mixed); every result against the reference."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    pkg = str(Path(__file__).resolve().parents[1])
    base = int(time.time() * 1e6)
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, pkg, daemons.socket_dir, str(r), str(base),
                               str(tmp_path / f"r{r}.npz")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(2)]
    for r, p in enumerate(procs):
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, f"rank {r} process: {out.decode()}"
    # the whole layer on the CPU reference of the global tokens (rank 0's rows, then rank 1's)
    got = [np.load(tmp_path / f"r{r}.npz") for r in range(2)]
    for i in range(6):
        layer = i % 2
        x = np.concatenate([g[f"arr_{3 * i}"] for g in got])
        logits = np.concatenate([g[f"arr_{3 * i + 1}"] for g in got])
        y = np.concatenate([g[f"arr_{3 * i + 2}"] for g in got])
        assert rel_err(y, reference(layer, x, logits, False)) <= TOL
