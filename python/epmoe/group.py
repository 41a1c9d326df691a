# SPDX-License-Identifier: Apache-2.0
"""The daemons of one EP group, as an engine (or a test) sees them.

``epmoe.connect(socket_dir)`` opens a connection to every rank's daemon and
drives each step on all of them at once (the global tokens split over the
ranks in rank order); ``epmoe.connect(socket_dir, rank=r)`` opens rank r
only, for an engine whose rank-r process talks to its local daemon (the
other ranks' processes must step the same layers in the same order, with the
same ``step_base``)."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, List, Optional, Sequence, Union

import numpy as np

from . import _wire
from .client import Connection, sockets
from .errors import EpmoeError
from ._wire import ServerInfo

MODES = ("socket", "shm", "doorbell")


class Group:
    """Connections to the ranks of one daemon group (see ``connect``)."""

    def __init__(self, conns: List[Connection], step_base: int):
        self.conns = conns
        self.info: ServerInfo = conns[0].info  # type: ignore[assignment]
        self._step = step_base
        self._pool = ThreadPoolExecutor(max_workers=len(conns)) if len(conns) > 1 else None

    @property
    def ranks(self) -> List[int]:
        return [c.rank for c in self.conns]  # type: ignore[misc]

    def close(self) -> None:
        if self._pool:
            self._pool.shutdown()
        for c in self.conns:
            c.close()

    def __enter__(self) -> "Group":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def health(self) -> List[tuple]:
        return [c.health() for c in self.conns]

    def status(self, json: bool = False) -> List[Union[str, dict]]:
        return [c.status(json) for c in self.conns]

    def stats(self, fmt: str = "text") -> List[Union[str, dict]]:
        return [c.stats(fmt) for c in self.conns]

    def shutdown(self) -> None:
        """Ask the group to drain and exit (one rank's SHUTDOWN drains all)."""
        self.conns[0].shutdown()

    def next_step_id(self) -> int:
        self._step += 1
        return self._step

    def layer(self, layer: int, *, shared_expert: bool = False, partial_dtype: str = "f32",
              mode: str = "socket", capacity: Optional[int] = None) -> "Layer":
        """A handle for MoE layer ``layer``. Defaults are the integration's:
        no shared expert (the engine computes it; see docs/INTEGRATION.md),
        f32 partials. ``mode``: "socket" (data in the frames), "shm" (a
        memfd per connection) or "doorbell" (the shared-memory fast path;
        ``capacity`` tokens per rank, default the smaller of 1024 and
        --max-tokens-per-rank, attached on first use)."""
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        if partial_dtype not in _wire.DTYPES:
            raise ValueError(f"partial_dtype {partial_dtype!r} is not one of {tuple(_wire.DTYPES)}")
        return Layer(self, layer, shared_expert, partial_dtype, mode, capacity)

    def doorbells(self, capacity: Optional[int] = None) -> list:
        """Every connection's doorbell, attached now if needed (same step
        base on every rank, so their k-th rings form one step)."""
        if all(c.doorbell is not None for c in self.conns):
            return [c.doorbell for c in self.conns]
        cap = capacity or min(1024, self.info.max_tokens_per_rank)
        base = self._step + (1 << 40)  # a range of ids the socket path's counter never reaches
        return [c.doorbell or c.attach_doorbell(cap, base) for c in self.conns]


class Layer:
    """One MoE layer of the group with fixed step options."""

    def __init__(self, group: Group, layer: int, shared_expert: bool, partial_dtype: str, mode: str,
                 capacity: Optional[int]):
        self.group, self.layer, self.shared_expert = group, layer, shared_expert
        self.partial_dtype, self.mode, self.capacity = partial_dtype, mode, capacity
        self.last_step_ns: List[int] = []

    def split(self, total: int, tokens_per_rank: Optional[Sequence[int]]) -> List[int]:
        n = len(self.group.conns)
        if tokens_per_rank is None:
            return [total // n + (1 if r < total % n else 0) for r in range(n)]
        counts = [int(c) for c in tokens_per_rank]
        if len(counts) != n or sum(counts) != total or min(counts) < 0:
            raise ValueError(f"tokens_per_rank {counts} must be {n} counts >= 0 summing to {total}")
        return counts

    def forward(self, x: Any, logits: Any, tokens_per_rank: Optional[Sequence[int]] = None) -> Any:
        """y = the MoE layer of x (bf16 [M, H]: uint16 bits, floats, or a
        torch tensor) with router logits (fp32 [M, E]); rows split over the
        ranks in rank order (``tokens_per_rank``, default as even as
        possible). Returns bf16 bits (numpy uint16 [M, H]), or a bfloat16
        tensor for torch inputs (CUDA tensors go through CUDA IPC)."""
        if _is_torch(x):
            from ._torch import forward_torch
            return forward_torch(self, x, logits, tokens_per_rank)
        from .client import _as_bf16_bits
        xb = _as_bf16_bits(x)
        lg = np.ascontiguousarray(np.asarray(logits, dtype=np.float32))
        info = self.group.info
        if xb.ndim != 2 or xb.shape[1] != info.hidden or lg.shape != (xb.shape[0], info.num_experts):
            raise ValueError(f"x {xb.shape} / logits {lg.shape} must be [M, {info.hidden}] / [M, {info.num_experts}]")
        counts = self.split(xb.shape[0], tokens_per_rank)
        offs = np.concatenate([[0], np.cumsum(counts)]).astype(int)
        if self.mode == "doorbell":
            return self._forward_doorbell(xb, lg, counts, offs)
        step_id = self.group.next_step_id()
        conns = self.group.conns

        def one(r: int) -> tuple:
            return conns[r].forward(self.layer, step_id, xb[offs[r]:offs[r + 1]], lg[offs[r]:offs[r + 1]],
                                    shared_expert=self.shared_expert, partial_dtype=self.partial_dtype,
                                    shm=self.mode == "shm")

        pool = self.group._pool
        futures = [pool.submit(one, r) for r in range(len(conns))] if pool else None
        results, errors = [], []
        for r in range(len(conns)):
            try:
                results.append(futures[r].result() if futures else one(r))
            except EpmoeError as e:
                errors.append(e)
        if errors:
            raise errors[0]
        self.last_step_ns = [ns for _, ns in results]
        return np.concatenate([y for y, _ in results]) if results else np.zeros((0, info.hidden), np.uint16)

    def _forward_doorbell(self, xb: np.ndarray, lg: np.ndarray, counts: List[int], offs: np.ndarray) -> np.ndarray:
        dbs = self.group.doorbells(self.capacity)
        for r, db in enumerate(dbs):
            if counts[r] > db.capacity:
                raise ValueError(f"rank {r}: {counts[r]} tokens exceed the doorbell's capacity {db.capacity}")
        for r, db in enumerate(dbs):  # ring every rank, then wait: one thread, no socket message
            db.x[:counts[r]] = xb[offs[r]:offs[r + 1]]
            db.logits[:counts[r]] = lg[offs[r]:offs[r + 1]]
            db.ring(self.layer, counts[r], shared_expert=self.shared_expert, partial_dtype=self.partial_dtype)
        errors, ns = [], []
        for db in dbs:
            try:
                ns.append(db.wait())
            except EpmoeError as e:
                errors.append(e)
        if errors:
            raise errors[0]
        self.last_step_ns = ns
        return np.concatenate([db.y[:counts[r]] for r, db in enumerate(dbs)])


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def connect(socket_dir: str, rank: Optional[int] = None, *, timeout: float = 30.0, step_base: Optional[int] = None,
            client_name: str = "epmoe-python") -> Group:
    """Connect to the daemons in ``socket_dir`` (``DIR/epmoe.<rank>.sock``):
    every rank (one process drives whole steps), or only ``rank`` (an engine
    process per rank). Step ids are ``step_base`` + 1, 2, ...: processes that
    each drive one rank must pass the same base (default 0 then; a
    time-based one when this process drives every rank)."""
    found = sockets(socket_dir)
    if rank is not None:
        found = [(r, p) for r, p in found if r == rank]
    if not found:
        raise EpmoeError(_wire.ERR_IO, f"no daemon socket{'' if rank is None else f' of rank {rank}'} in {socket_dir}")
    conns: List[Connection] = []
    try:
        for r, path in found:
            c = Connection(path, timeout=timeout, client_name=client_name)
            conns.append(c)
            assert c.info is not None
            if c.info.rank != r:
                raise EpmoeError(_wire.ERR_PROTOCOL, f"{path} answers as rank {c.info.rank}")
            first = conns[0].info
            assert first is not None
            if (c.info.hidden, c.info.num_experts, c.info.world_size) != (first.hidden, first.num_experts, first.world_size):
                raise EpmoeError(_wire.ERR_PROTOCOL, f"rank {r} serves another model shape or group size than rank "
                                 f"{first.rank}")
        if rank is None and len(conns) != conns[0].info.world_size:  # type: ignore[union-attr]
            raise EpmoeError(_wire.ERR_IO, f"{len(conns)} sockets in {socket_dir} for a group of "
                             f"{conns[0].info.world_size} ranks")  # type: ignore[union-attr]
    except BaseException:
        for c in conns:
            c.close()
        raise
    if step_base is None:
        step_base = 0 if rank is not None else int(time.time() * 1e6)
    return Group(conns, step_base)
