# SPDX-License-Identifier: Apache-2.0
"""One connection to one rank's daemon: HELLO, STATUS, STATS, HEALTH,
FORWARD (inline or through a sealed memfd), SHUTDOWN and the attach
messages, as docs/PROTOCOL.md describes them. Blocking; one request at a time
per connection (a lock serialises callers)."""
from __future__ import annotations

import array
import json as _json
import mmap
import os
import socket
import struct
import threading
import time
from typing import Any, List, Optional, Tuple, Union

import numpy as np

from . import _wire
from .errors import ConnectionClosed, EpmoeError, ProtocolError
from ._wire import ServerInfo


def _seal_memfd(name: str, size: int) -> int:
    """A memfd of `size` bytes the daemon accepts: sealed against shrinking."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        import fcntl
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _as_bf16_bits(x: Any) -> np.ndarray:
    from .bf16 import to_bf16
    a = np.asarray(x)
    if a.dtype == np.uint16 or a.dtype == np.int16:
        return np.ascontiguousarray(a.view(np.uint16))
    return to_bf16(a)


class Connection:
    """A connection to the daemon at ``path`` (``DIR/epmoe.<rank>.sock``).

    ``hello()`` is sent by the constructor unless ``hello=False`` (a daemon
    that is still loading answers HEALTH but not HELLO). ``timeout`` bounds
    every call, in seconds."""

    def __init__(self, path: str, timeout: float = 30.0, hello: bool = True, client_name: str = "epmoe-python"):
        self.path = path
        self.timeout = timeout
        self._lock = threading.Lock()
        self._rid = 1
        self.info: Optional[ServerInfo] = None
        self._shm: Optional[mmap.mmap] = None
        self._shm_size = 0
        self.doorbell = None  # the Doorbell attached on this connection, if any
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError as e:
            self._sock.close()
            raise ConnectionClosed(f"cannot connect to {path}: {e.strerror or e}") from None
        if hello:
            self.hello(client_name)

    # ---- plumbing --------------------------------------------------------
    @property
    def rank(self) -> Optional[int]:
        return self.info.rank if self.info else None

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        if self.doorbell is not None:
            self.doorbell._release()
            self.doorbell = None
        if self._shm is not None:
            try:
                self._shm.close()
            except BufferError:  # a caller's view still points into it
                pass
            self._shm = None
        self._sock.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self._sock.recv(n - len(buf))
            except socket.timeout:
                raise EpmoeError(_wire.ERR_TIMEOUT, f"no answer from {self.path} within {self.timeout} s", self.rank) from None
            if not chunk:
                raise ConnectionClosed(f"daemon at {self.path} closed the connection", self.rank)
            buf += chunk
        return bytes(buf)

    def _call(self, mtype: int, payload: bytes = b"", extra: bytes = b"", fd: Optional[int] = None,
              max_payload: int = 1 << 24) -> bytes:
        """Send one request (payload + extra, optionally with an fd) and
        return the payload of its response; ERROR becomes EpmoeError."""
        with self._lock:
            rid = self._rid
            self._rid += 1
            data = _wire.frame(mtype, rid, payload + extra, _wire.F_HAS_FD if fd is not None else 0)
            try:
                if fd is not None:
                    self._sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
                else:
                    self._sock.sendall(data)
            except socket.timeout:
                raise EpmoeError(_wire.ERR_TIMEOUT, f"sending to {self.path} timed out", self.rank) from None
            except OSError as e:
                raise ConnectionClosed(f"send to {self.path}: {e.strerror or e}", self.rank) from None
            hdr = self._recv_exact(_wire.HEADER_SIZE)
            try:
                _, rtype, flags, rrid, plen = _wire.parse_header(hdr, max(max_payload, 1 << 16))
            except _wire.WireError as e:
                raise ProtocolError(f"response from {self.path}: {e}", self.rank) from None
            body = self._recv_exact(plen)
        if rtype == _wire.ERROR:
            code, msg = _wire.error_resp(body)
            raise EpmoeError(code, msg, self.rank)
        if not flags & _wire.F_RESPONSE or rrid != rid or rtype != mtype:
            raise ProtocolError(f"expected the {_wire.TYPE_NAMES[mtype]} response to request {rid}, got "
                                f"{_wire.TYPE_NAMES.get(rtype, rtype)} for {rrid}", self.rank)
        return body

    def _decode(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except _wire.WireError as e:
            raise ProtocolError(str(e), self.rank) from None

    # ---- messages ----------------------------------------------------------
    def hello(self, client_name: str = "epmoe-python") -> ServerInfo:
        """Negotiate the version; the server's model and limits."""
        self.info = self._decode(_wire.hello_resp, self._call(_wire.HELLO, _wire.hello_req(client_name)))
        return self.info

    def status(self, json: bool = False) -> Union[str, dict]:
        """STATUS: Redis-INFO text, or the JSON object."""
        text = self._call(_wire.STATUS, struct.pack("<I", _wire.FMT_JSON if json else _wire.FMT_TEXT)).decode()
        return _json.loads(text) if json else text

    def stats(self, fmt: str = "text") -> Union[str, dict]:
        """STATS: "text" (INFO), "json" (parsed) or "prometheus"."""
        code = {"text": _wire.FMT_TEXT, "json": _wire.FMT_JSON, "prometheus": _wire.FMT_PROMETHEUS}[fmt]
        text = self._call(_wire.STATS, struct.pack("<I", code)).decode()
        return _json.loads(text) if fmt == "json" else text

    def health(self) -> Tuple[str, str]:
        """("ok" | "not-ready" | "failed", reason)."""
        state, reason = self._decode(_wire.health_resp, self._call(_wire.HEALTH))
        return _wire.HEALTH_NAMES.get(state, str(state)), reason

    def shutdown(self) -> None:
        """Ask the whole group to drain and exit."""
        self._decode(_wire.empty, self._call(_wire.SHUTDOWN), "SHUTDOWN response")

    def _need_info(self) -> ServerInfo:
        if self.info is None:
            raise EpmoeError(_wire.ERR_INVALID_ARG, f"FORWARD before HELLO on {self.path}")
        return self.info

    def forward(self, layer: int, step_id: int, x: Any, logits: Any, *, shared_expert: bool = False,
                partial_dtype: str = "f32", shm: bool = False) -> Tuple[np.ndarray, int]:
        """This rank's share of step (layer, step_id): x bf16 [m, H] (uint16
        bits, or floats that are rounded to bf16), logits fp32 [m, E].
        Returns (y as bf16 bits, uint16 [m, H]; ns inside the collective).
        Blocks until every rank joined the step. ``shm`` passes the data
        through a sealed memfd attached once (grown when needed)."""
        info = self._need_info()
        xb = _as_bf16_bits(x)
        lg = np.ascontiguousarray(np.asarray(logits, dtype=np.float32))
        m = xb.shape[0] if xb.ndim == 2 else 0
        if xb.shape != (m, info.hidden) or lg.shape != (m, info.num_experts):
            raise EpmoeError(_wire.ERR_INVALID_ARG, f"x {xb.shape} / logits {lg.shape} do not match [m, {info.hidden}] / "
                             f"[m, {info.num_experts}]", info.rank)
        if partial_dtype not in _wire.DTYPES:
            raise EpmoeError(_wire.ERR_INVALID_ARG, f"partial dtype {partial_dtype!r} (f32 or bf16)", info.rank)
        flags = _wire.FWD_F_SHARED_EXPERT if shared_expert else 0
        dt = _wire.DTYPES[partial_dtype]
        if not shm:
            head = _wire.fwd_req(layer, _wire.DATA_INLINE, step_id, m, info.hidden, info.num_experts, flags, dt)
            body = self._call(_wire.FORWARD, head, xb.tobytes() + lg.tobytes(), max_payload=40 + m * info.hidden * 2)
            r = self._decode(_wire.fwd_resp, body)
            y = np.frombuffer(r.y or b"", dtype=np.uint16).reshape(m, info.hidden).copy()
        else:
            xbytes, lbytes = m * info.hidden * 2, m * info.num_experts * 4
            self._ensure_shm(2 * xbytes + lbytes + 64)
            assert self._shm is not None
            self._shm[0:xbytes] = xb.tobytes()
            lo = (xbytes + 3) // 4 * 4
            self._shm[lo:lo + lbytes] = lg.tobytes()
            yo = (lo + lbytes + 1) // 2 * 2
            head = _wire.fwd_req(layer, _wire.DATA_SHM, step_id, m, info.hidden, info.num_experts, flags, dt,
                                 (0, lo, yo))
            r = self._decode(_wire.fwd_resp, self._call(_wire.FORWARD, head))
            y = np.frombuffer(self._shm, dtype=np.uint16, count=m * info.hidden, offset=yo).reshape(m, info.hidden).copy()
        if r.m != m or r.step_id != step_id:
            raise ProtocolError(f"FORWARD response for step {r.step_id} m={r.m} does not match request step {step_id} m={m}",
                                info.rank)
        return y, r.step_ns

    def _ensure_shm(self, size: int) -> None:
        if self._shm is not None and self._shm_size >= size:
            return
        size = max(size, 2 * self._shm_size, 1 << 16)
        fd = _seal_memfd("epmoe-python", size)
        try:
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self._decode(_wire.empty, self._call(_wire.SHM_ATTACH, struct.pack("<Q", size), fd=fd),
                         "SHM_ATTACH response")
        finally:
            os.close(fd)
        if self._shm is not None:
            self._shm.close()
        self._shm, self._shm_size = mm, size

    def attach_doorbell(self, capacity: int, step_base: int) -> "Doorbell":
        """Register a host-mode doorbell (docs/PROTOCOL.md "Doorbell") for
        ``capacity`` tokens; steps then go through shared memory."""
        from .doorbell import Doorbell
        if self.doorbell is not None:
            raise EpmoeError(_wire.ERR_INVALID_ARG, f"the connection to {self.path} already has a doorbell", self.rank)
        self.doorbell = Doorbell._attach(self, capacity, step_base)
        return self.doorbell


def sockets(socket_dir: str) -> List[Tuple[int, str]]:
    """(rank, path) of every ``epmoe.<rank>.sock`` in socket_dir, by rank."""
    out = []
    for name in os.listdir(socket_dir):
        if name.startswith("epmoe.") and name.endswith(".sock") and name[6:-5].isdigit():
            out.append((int(name[6:-5]), os.path.join(socket_dir, name)))
    return sorted(out)


def wait_ready(socket_dir: str, ranks: int, timeout: float = 60.0) -> None:
    """Wait until `ranks` daemons in socket_dir answer HEALTH "ok"."""
    deadline = time.monotonic() + timeout
    last = "no sockets yet"
    while time.monotonic() < deadline:
        try:
            found = sockets(socket_dir)
            if len(found) >= ranks:
                states = []
                for _, path in found:
                    with Connection(path, timeout=2.0, hello=False) as c:
                        states.append(c.health())
                if all(s == "ok" for s, _ in states):
                    return
                last = "; ".join(f"{s} {r}" for s, r in states)
        except (OSError, EpmoeError) as e:
            last = str(e)
        time.sleep(0.2)
    raise EpmoeError(_wire.ERR_TIMEOUT, f"daemons in {socket_dir} not ready within {timeout} s: {last}")
