# SPDX-License-Identifier: Apache-2.0
"""The socket client against a real 2-rank daemon group on the CPU backend:
HELLO / STATUS / STATS / HEALTH, FORWARD inline and through a memfd against
the CPU reference, the per-request options, and errors carrying the daemon's
message."""
import socket
import struct
import time

import numpy as np
import pytest

import epmoe
from epmoe import _wire

from conftest import MAX_TOKENS, NP, PRESET, STEP_TIMEOUT, reference, rel_err, tokens

TOL = 1.0 / 64  # the engine's EP = N vs EP = 1 bound (docs/ARCHITECTURE.md "Engine")


def test_hello_describes_the_group(group):
    info = group.info
    assert (info.version, info.world_size, info.model, info.backend) == (2, NP, PRESET, "cpu")
    assert (info.hidden, info.num_experts, info.max_tokens_per_rank) == (256, 16, MAX_TOKENS)
    assert group.ranks == list(range(NP))


def test_health_status_stats(group):
    assert group.health() == [("ok", "")] * NP
    st = group.status(json=True)
    assert st[1]["config"]["preset"]["value"] == PRESET
    assert "\r\nbackend:cpu" in group.status()[0]
    prom = group.stats("prometheus")[0]
    assert 'epmoe_steps_total{rank="0"}' in prom
    assert isinstance(group.stats("json")[1], dict)


@pytest.mark.parametrize("mode", ["socket", "shm"])
@pytest.mark.parametrize("layer,shared,dtype,split", [
    (0, False, "f32", [5, 3]),
    (0, True, "f32", [0, 9]),
    (1, False, "bf16", [12, 1]),
    (1, True, "f32", [0, 0]),
])
def test_forward_matches_the_cpu_reference(group, mode, layer, shared, dtype, split):
    x, logits = tokens(sum(split), seed=100 + layer + 7 * sum(split))
    y = group.layer(layer, shared_expert=shared, partial_dtype=dtype, mode=mode).forward(x, logits, split)
    assert y.shape == x.shape and y.dtype == np.uint16
    if sum(split):
        err = rel_err(y, reference(layer, x, logits, shared))
        assert err <= TOL, f"max relative error {err} vs the CPU reference"


def test_shared_expert_option_changes_y(group):
    """The option reaches the engine: y with and without the shared expert
    differ, each matching its own reference (and not the other's)."""
    x, logits = tokens(6, seed=5)
    y_off = group.layer(0).forward(x, logits)
    y_on = group.layer(0, shared_expert=True).forward(x, logits)
    ref_off, ref_on = reference(0, x, logits, False), reference(0, x, logits, True)
    assert rel_err(y_off, ref_off) <= TOL and rel_err(y_on, ref_on) <= TOL
    assert rel_err(y_off, ref_on) > 4 * TOL


def test_float_inputs_are_rounded_to_bf16(group):
    x, logits = tokens(4, seed=9)
    y_bits = group.layer(0).forward(x, logits)
    y_float = group.layer(0).forward(epmoe.from_bf16(x), logits)
    assert np.array_equal(y_bits, y_float)


def test_errors_carry_the_daemons_message(group):
    x, logits = tokens(2, seed=1)
    with pytest.raises(epmoe.EpmoeError) as e:
        group.layer(7).forward(x, logits)
    assert e.value.status_name == "ERR_INVALID_ARG" and "layer 7 is not served" in e.value.message
    big_x, big_logits = tokens(MAX_TOKENS + 1, seed=2)
    with pytest.raises(epmoe.EpmoeError, match="exceeds --max-tokens-per-rank"):
        group.layer(0).forward(big_x, big_logits, [MAX_TOKENS + 1, 0])


def test_step_timeout_names_the_missing_rank(daemons):
    """Rank 0 alone joins a step: it fails after --step-timeout naming rank 1."""
    with epmoe.connect(daemons.socket_dir, rank=0, step_base=int(time.time() * 1e6)) as g:
        x, logits = tokens(3, seed=3)
        t0 = time.monotonic()
        with pytest.raises(epmoe.EpmoeError) as e:
            g.layer(0).forward(x, logits)
        assert e.value.status_name == "ERR_TIMEOUT" and "missing ranks 1" in e.value.message
        assert e.value.rank == 0
        assert time.monotonic() - t0 < STEP_TIMEOUT + 5


def _raw(daemons, data: bytes) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(f"{daemons.socket_dir}/epmoe.0.sock")
    s.sendall(data)
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
        if len(out) >= 32 and len(out) >= 32 + struct.unpack_from("<Q", out, 24)[0]:
            break
    s.close()
    return out


def test_a_version_1_client_is_refused_in_its_own_version(daemons):
    hello_v1 = struct.pack("<IHHIIQQ", _wire.MAGIC, 1, _wire.HELLO, 0, 0, 5, 0)
    hello_v1 = hello_v1[:24] + struct.pack("<Q", 4 + 4 + 6) + struct.pack("<HH", 1, 1) + _wire.string("old-py")
    out = _raw(daemons, hello_v1)
    magic, version, mtype, flags, _, rid, plen = struct.unpack_from("<IHHIIQQ", out)
    assert (magic, version, mtype, flags & 1) == (_wire.MAGIC, 1, _wire.ERROR, 1)  # framed as version 1
    code, msg = _wire.error_resp(out[32:32 + plen])
    assert code == _wire.ERR_PROTOCOL
    assert "protocol version 1 is not supported" in msg and "2..2" in msg


def test_unknown_forward_flags_are_refused(daemons):
    head = _wire.fwd_req(0, _wire.DATA_INLINE, 1, 0, 256, 16, 0x4, 0)
    out = _raw(daemons, _wire.frame(_wire.FORWARD, 3, head))
    code, msg = _wire.error_resp(out[32:])
    assert code == _wire.ERR_PROTOCOL and "flags 0x4 have unknown bits" in msg
