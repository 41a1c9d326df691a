# SPDX-License-Identifier: Apache-2.0
"""The epmoe wire protocol, version 2, written from docs/PROTOCOL.md.

Frames are a 32-byte little-endian header and a payload; every body is a
fixed part (struct formats below) and, for some, data after it. Decoders check
the exact payload length, as the daemon's do.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional, Tuple

MAGIC = 0x4F4D5045  # "EPMO"
VERSION = 2
MIN_VERSION = 2
HEADER = struct.Struct("<IHHIIQQ")  # magic, version, type, flags, reserved, request_id, payload_len
HEADER_SIZE = HEADER.size  # 32

F_RESPONSE = 0x1
F_HAS_FD = 0x2

HELLO, STATUS, STATS, HEALTH, FORWARD, SHM_ATTACH, SHUTDOWN, ERROR, DEV_ATTACH, DOORBELL_ATTACH = range(1, 11)
TYPE_NAMES = {
    HELLO: "HELLO", STATUS: "STATUS", STATS: "STATS", HEALTH: "HEALTH", FORWARD: "FORWARD",
    SHM_ATTACH: "SHM_ATTACH", SHUTDOWN: "SHUTDOWN", ERROR: "ERROR", DEV_ATTACH: "DEV_ATTACH",
    DOORBELL_ATTACH: "DOORBELL_ATTACH",
}

DATA_INLINE, DATA_SHM, DATA_DEVICE = 0, 1, 2
FWD_F_SHARED_EXPERT = 0x1
DTYPES = {"f32": 0, "bf16": 1}
DB_MODE_HOST, DB_MODE_DEVICE = 0, 1
DEV_ATTACH_FD, DEV_ATTACH_IPC = 0, 1

FMT_TEXT, FMT_JSON, FMT_PROMETHEUS = 0, 1, 2
HEALTH_NAMES = {0: "ok", 1: "not-ready", 2: "failed"}

# epm_status_t (include/epmoe/status.h)
STATUS_NAMES = {
    0: "OK", 1: "ERR_INVALID_ARG", 2: "ERR_OVERFLOW", 3: "ERR_NOMEM", 4: "ERR_SYSTEM", 5: "ERR_CUDA",
    6: "ERR_NCCL", 7: "ERR_MPI", 8: "ERR_PROTOCOL", 9: "ERR_TIMEOUT", 10: "ERR_NOT_SUPPORTED",
    11: "ERR_IO", 12: "ERR_FORMAT", 13: "ERR_NOT_READY", 14: "ERR_ABORTED", 15: "ERR_INTERNAL",
}
ERR_INVALID_ARG, ERR_PROTOCOL, ERR_TIMEOUT, ERR_IO, ERR_NOT_READY = 1, 8, 9, 11, 13

FWD_REQ = struct.Struct("<IIQqqqQQQII")  # layer, data_mode, step_id, m, hidden, experts, x/logits/y offsets, flags, dtype
FWD_RESP = struct.Struct("<QqqIIQ")      # step_id, m, hidden, data_mode, pad, step_ns
HELLO_RESP_FIXED = struct.Struct("<HHIIIqqqqQ")
DB_ATTACH = struct.Struct("<QIIqQQQQ")    # size, mode, pad, capacity, x/logits/y offsets, step_base
DEV_ATTACH_S = struct.Struct("<QII")     # size, device, kind
assert FWD_REQ.size == 72 and FWD_RESP.size == 40 and DB_ATTACH.size == 56


class WireError(Exception):
    """A frame or body that does not follow docs/PROTOCOL.md."""


def frame(mtype: int, request_id: int, payload: bytes = b"", flags: int = 0) -> bytes:
    return HEADER.pack(MAGIC, VERSION, mtype, flags, 0, request_id, len(payload)) + payload


@dataclass
class Frame:
    version: int
    type: int
    flags: int
    request_id: int
    payload: bytes


def parse_header(h: bytes, max_payload: int) -> Tuple[int, int, int, int, int]:
    """(version, type, flags, request_id, payload_len) of a 32-byte header."""
    magic, version, mtype, flags, reserved, rid, plen = HEADER.unpack(h)
    if magic != MAGIC:
        raise WireError(f"bad frame magic 0x{magic:08x} (expected 0x{MAGIC:08x} \"EPMO\")")
    if not MIN_VERSION <= version <= VERSION:
        raise WireError(f"protocol version {version} is not supported: this client speaks {MIN_VERSION}..{VERSION}")
    if not 1 <= mtype <= DOORBELL_ATTACH:
        raise WireError(f"unknown frame type {mtype}")
    if flags & ~(F_RESPONSE | F_HAS_FD) or reserved:
        raise WireError(f"unknown frame flags 0x{flags:x} or reserved field 0x{reserved:x}")
    if plen > max_payload:
        raise WireError(f"{TYPE_NAMES[mtype]} payload of {plen} bytes exceeds the limit of {max_payload}")
    return version, mtype, flags, rid, plen


class Reader:
    """Bounded reads from one payload; done() insists that nothing is left."""

    def __init__(self, payload: bytes, what: str):
        self.p, self.pos, self.what = payload, 0, what

    def take(self, n: int) -> bytes:
        if n < 0 or len(self.p) - self.pos < n:
            raise WireError(f"{self.what}: payload of {len(self.p)} bytes is truncated")
        b = self.p[self.pos:self.pos + n]
        self.pos += n
        return b

    def unpack(self, s: struct.Struct) -> tuple:
        return s.unpack(self.take(s.size))

    def string(self) -> str:
        (n,) = struct.unpack("<I", self.take(4))
        return self.take(n).decode("utf-8", "replace")

    def done(self) -> None:
        if self.pos != len(self.p):
            raise WireError(f"{self.what}: {len(self.p) - self.pos} trailing bytes after {self.pos} used")


def string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<I", len(b)) + b


def hello_req(client_name: str) -> bytes:
    return struct.pack("<HH", MIN_VERSION, VERSION) + string(client_name)


@dataclass(frozen=True)
class ServerInfo:
    """What HELLO says about one rank's daemon."""

    version: int
    rank: int
    world_size: int
    hidden: int
    num_experts: int
    top_k: int
    max_tokens_per_rank: int
    max_payload: int
    server_version: str
    model: str
    backend: str


def hello_resp(payload: bytes) -> ServerInfo:
    r = Reader(payload, "HELLO response")
    v, _, rank, world, _, hidden, experts, top_k, max_m, max_payload = r.unpack(HELLO_RESP_FIXED)
    sv, model, backend = r.string(), r.string(), r.string()
    r.done()
    return ServerInfo(v, rank, world, hidden, experts, top_k, max_m, max_payload, sv, model, backend)


def error_resp(payload: bytes) -> Tuple[int, str]:
    r = Reader(payload, "ERROR")
    (code,) = struct.unpack("<I", r.take(4))
    msg = r.string()
    r.done()
    return code, msg


def health_resp(payload: bytes) -> Tuple[int, str]:
    r = Reader(payload, "HEALTH response")
    (state,) = struct.unpack("<I", r.take(4))
    reason = r.string()
    r.done()
    return state, reason


def fwd_req(layer: int, data_mode: int, step_id: int, m: int, hidden: int, experts: int, flags: int,
            partial_dtype: int, offsets: Tuple[int, int, int] = (0, 0, 0)) -> bytes:
    """The 72-byte fixed part of a FORWARD request (inline data follows it)."""
    return FWD_REQ.pack(layer, data_mode, step_id, m, hidden, experts, *offsets, flags, partial_dtype)


@dataclass
class FwdResp:
    step_id: int
    m: int
    hidden: int
    data_mode: int
    step_ns: int
    y: Optional[bytes]


def fwd_resp(payload: bytes) -> FwdResp:
    r = Reader(payload, "FORWARD response")
    step_id, m, hidden, mode, _, step_ns = r.unpack(FWD_RESP)
    y = None
    if mode == DATA_INLINE:
        if m < 0 or hidden <= 0:
            raise WireError(f"FORWARD response shape m={m} hidden={hidden}")
        y = r.take(m * hidden * 2)
    r.done()
    return FwdResp(step_id, m, hidden, mode, step_ns, y)


def empty(payload: bytes, what: str) -> None:
    Reader(payload, what).done()
