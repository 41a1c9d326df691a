# SPDX-License-Identifier: Apache-2.0
"""The codec against the byte layouts of docs/PROTOCOL.md (no daemon)."""
import struct

import numpy as np
import pytest

import epmoe
from epmoe import _wire


def test_header_layout():
    f = _wire.frame(_wire.HEALTH, 0x0807060504030201)
    assert f == bytes.fromhex("45504d4f02000400000000000000000001020304050607080000000000000000")


def test_forward_fixed_part_is_72_bytes():
    head = _wire.fwd_req(5, _wire.DATA_SHM, 9, 3, 32, 8, _wire.FWD_F_SHARED_EXPERT, 1, (0, 4096, 8192))
    assert len(head) == 72
    assert struct.unpack_from("<II", head, 64) == (1, 1)  # flags, partial dtype at 64 and 68


def test_refuses_other_versions_and_garbage():
    good = _wire.frame(_wire.HEALTH, 1)
    _wire.parse_header(good[:32], 1 << 20)
    v1 = good[:4] + struct.pack("<H", 1) + good[6:32]
    with pytest.raises(_wire.WireError, match="version 1 is not supported"):
        _wire.parse_header(v1, 1 << 20)
    with pytest.raises(_wire.WireError, match="magic"):
        _wire.parse_header(b"XXXX" + good[4:32], 1 << 20)
    with pytest.raises(_wire.WireError, match="exceeds the limit"):
        _wire.parse_header(_wire.frame(_wire.STATUS, 1, b"x" * 10)[:32], 5)


def test_bodies_insist_on_exact_lengths():
    payload = struct.pack("<I", 9) + _wire.string("step 4 timed out")
    assert _wire.error_resp(payload) == (9, "step 4 timed out")
    with pytest.raises(_wire.WireError, match="trailing"):
        _wire.error_resp(payload + b"\0")
    with pytest.raises(_wire.WireError, match="truncated"):
        _wire.error_resp(payload[:-1])


def test_bf16_round_trip_and_rounding():
    vals = np.array([1.0, -2.5, 1.00390625, 1.01171875, 1.0078125 + 2.0**-10, 0.0], dtype=np.float32)
    b = epmoe.to_bf16(vals)
    # bf16 keeps 8 significant bits: 1 + 2^-8 is a tie and rounds to even
    # (1.0); 1 + 3*2^-8 is a tie and rounds up to even (1 + 2^-6); just above
    # 1 + 2^-7 rounds to it
    assert epmoe.from_bf16(b).tolist() == [1.0, -2.5, 1.0, 1.015625, 1.0078125, 0.0]
    assert b.tolist()[:2] == [0x3F80, 0xC020]
    assert epmoe.to_bf16(np.array([np.nan], np.float32))[0] == 0x7FC0
