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
