# SPDX-License-Identifier: Apache-2.0
"""The host doorbell (docs/PROTOCOL.md "Doorbell"): x, logits and y for a
capacity of tokens and the control block in one sealed memfd, registered
once; then a step is a few stores into the control block and a futex wake,
and the answer is a futex wait on ``done_seq``: no socket message per step.

The stores are plain numpy stores: the request fields before ``seq`` in
program order, which x86-64's store order keeps (the daemon reads ``seq``
with acquire semantics). On CPUs with weaker store order use the C client
(``epm_client_doorbell_*``), whose ``seq`` store is a release store."""
from __future__ import annotations

import ctypes
import mmap
import os
import platform
import select
import struct
import time
from typing import Any, Optional

import numpy as np

from . import _wire
from .errors import ConnectionClosed, EpmoeError

CTL_BYTES = 4096
DB_MAGIC, DB_LAYOUT = 0x42445045, 1
# control block offsets (include/epmoe/doorbell.h)
OFF_SEQ, OFF_M, OFF_LAYER, OFF_FLAGS, OFF_DTYPE = 64, 72, 80, 84, 88
OFF_DONE, OFF_STATUS, OFF_STEP_NS, OFF_STEP_ID, OFF_ERROR = 128, 136, 144, 152, 192
ERROR_BYTES = 256

_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "ppc64le": 221}.get(platform.machine())
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _futex_wake(addr: int) -> None:
    _libc.syscall(ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(addr), ctypes.c_int(_FUTEX_WAKE),
                  ctypes.c_int(0x7FFFFFFF), None, None, ctypes.c_int(0))


def _futex_wait(addr: int, val: int, timeout_s: float) -> None:
    ts = _timespec(int(timeout_s), int((timeout_s - int(timeout_s)) * 1e9))
    _libc.syscall(ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(addr), ctypes.c_int(_FUTEX_WAIT),
                  ctypes.c_uint32(val & 0xFFFFFFFF), ctypes.byref(ts), None, ctypes.c_int(0))


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


class Doorbell:
    """A host-mode doorbell of one connection. ``x``, ``logits`` and ``y``
    are numpy views of the shared buffers ([capacity, H] bf16 bits,
    [capacity, E] fp32, [capacity, H] bf16 bits). One thread at a time."""

    def __init__(self) -> None:
        raise TypeError("use Connection.attach_doorbell()")

    @classmethod
    def _attach(cls, conn: Any, capacity: int, step_base: int) -> "Doorbell":
        if _SYS_FUTEX is None:
            raise EpmoeError(_wire.ERR_INVALID_ARG, f"the doorbell's futex call is not known on {platform.machine()}")
        info = conn._need_info()
        if not 0 < capacity <= info.max_tokens_per_rank:
            raise EpmoeError(_wire.ERR_INVALID_ARG, f"doorbell capacity {capacity} tokens is outside "
                             f"[1, {info.max_tokens_per_rank}] (--max-tokens-per-rank)", info.rank)
        H, E = info.hidden, info.num_experts
        xb, lb = capacity * H * 2, capacity * E * 4
        x_off = CTL_BYTES
        l_off = x_off + _align(xb, 64)
        y_off = l_off + _align(lb, 64)
        size = _align(y_off + xb, 4096)
        from .client import _seal_memfd
        fd = _seal_memfd("epmoe-doorbell", size)
        try:
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            struct.pack_into("<II", mm, 0, DB_MAGIC, DB_LAYOUT)
            conn._decode(_wire.empty, conn._call(_wire.DOORBELL_ATTACH, _wire.DB_ATTACH.pack(
                size, _wire.DB_MODE_HOST, 0, capacity, x_off, l_off, y_off, step_base), fd=fd), "DOORBELL_ATTACH response")
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        self = object.__new__(cls)
        self.conn, self.capacity, self.step_base = conn, capacity, step_base
        self.rank = info.rank
        self._mm = mm
        self._anchor = ctypes.c_char.from_buffer(mm)  # the mapping's address, for the futex calls
        self._base = ctypes.addressof(self._anchor)
        self._u64 = np.frombuffer(mm, dtype=np.uint64, count=CTL_BYTES // 8)
        self._i64 = self._u64.view(np.int64)
        self._u32 = self._u64.view(np.uint32)
        self.x = np.frombuffer(mm, dtype=np.uint16, count=capacity * H, offset=x_off).reshape(capacity, H)
        self.logits = np.frombuffer(mm, dtype=np.float32, count=capacity * E, offset=l_off).reshape(capacity, E)
        self.y = np.frombuffer(mm, dtype=np.uint16, count=capacity * H, offset=y_off).reshape(capacity, H)
        self.seq = int(self._u64[OFF_SEQ // 8])
        self._poll = select.poll()
        self._poll.register(conn.fileno(), select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        return self

    def _release(self) -> None:
        """Drop the views and unmap (the connection is closing)."""
        self.x = self.logits = self.y = self._u64 = self._i64 = self._u32 = None  # type: ignore[assignment]
        del self._anchor
        try:
            self._mm.close()
        except BufferError:  # the caller still holds a view: the mapping goes with it
            pass

    @property
    def step_id(self) -> int:
        """The key of the last step rung: step_base + seq."""
        return self.step_base + self.seq

    def ring(self, layer: int, m: int, *, shared_expert: bool = False, partial_dtype: str = "f32",
             seq: Optional[int] = None) -> None:
        """Ask for the next step (x and logits already written for m tokens).
        ``seq`` rings an explicit sequence number (tests): one that is not
        the next is refused by the daemon naming both numbers."""
        if not 0 <= m <= self.capacity:
            raise EpmoeError(_wire.ERR_INVALID_ARG, f"doorbell step of {m} tokens is outside [0, {self.capacity}] "
                             "(its capacity)", self.rank)
        self._ring_raw(layer, m, _wire.FWD_F_SHARED_EXPERT if shared_expert else 0, _wire.DTYPES[partial_dtype],
                       self.seq + 1 if seq is None else seq)

    def _ring_raw(self, layer: int, m: int, flags: int, dtype: int, seq: int) -> None:
        self._i64[OFF_M // 8] = m
        self._u32[OFF_LAYER // 4] = layer
        self._u32[OFF_FLAGS // 4] = flags
        self._u32[OFF_DTYPE // 4] = dtype
        self._u64[OFF_SEQ // 8] = seq  # last: announces the fields above
        _futex_wake(self._base + OFF_SEQ)
        self.seq = seq

    def wait(self, timeout: Optional[float] = None) -> int:
        """Wait for the answer to the last ring; ns inside the collective.
        The daemon's error is raised as EpmoeError with its message."""
        limit = self.conn.timeout if timeout is None else timeout
        t0 = time.monotonic()
        spins = 0
        while True:
            done = int(self._u64[OFF_DONE // 8])
            if done == self.seq:
                status = int(self._u32[OFF_STATUS // 4])
                if status:
                    raw = bytes(self._mm[OFF_ERROR:OFF_ERROR + ERROR_BYTES])
                    raise EpmoeError(status, raw.split(b"\0", 1)[0].decode("utf-8", "replace"), self.rank)
                return int(self._u64[OFF_STEP_NS // 8])
            waited = time.monotonic() - t0
            if waited >= limit:
                raise EpmoeError(_wire.ERR_TIMEOUT, f"doorbell step {self.seq}: no answer within {limit} s "
                                 f"(last answered {done})", self.rank)
            spins += 1
            if spins < 32:
                os.sched_yield()
                continue
            if self._poll.poll(0):
                raise ConnectionClosed(f"daemon at {self.conn.path} closed the connection while doorbell step "
                                       f"{self.seq} was waiting", self.rank)
            _futex_wait(self._base + OFF_DONE, done, min(0.05, limit - waited))

    def step(self, layer: int, x: Any, logits: Any, *, shared_expert: bool = False,
             partial_dtype: str = "f32") -> np.ndarray:
        """Copy x / logits in, ring, wait; y (bf16 bits, a copy)."""
        from .client import _as_bf16_bits
        xb = _as_bf16_bits(x)
        m = xb.shape[0]
        self.x[:m] = xb
        self.logits[:m] = np.asarray(logits, dtype=np.float32)
        self.ring(layer, m, shared_expert=shared_expert, partial_dtype=partial_dtype)
        self.wait()
        return self.y[:m].copy()
