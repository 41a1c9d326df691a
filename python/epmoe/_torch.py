# SPDX-License-Identifier: Apache-2.0
"""PyTorch tensors in Layer.forward (imported only when one is passed).

CPU tensors go through numpy. CUDA tensors stay on the GPU: each connection
gets a device buffer allocated by torch, shared with its daemon once through
CUDA IPC (DEV_ATTACH kind 1: the 64-byte cudaIpcMemHandle_t of the buffer's
allocation, from ``UntypedStorage._share_cuda_``), and each step copies x and
logits into it, sends a device-mode FORWARD with offsets, and copies y out:
device-to-device copies, no host staging. The daemon must run the cuda
backend on the same node, with the buffer's GPU as its device (``device``
below: the ordinal as the daemon numbers it, by default the tensor's).

This path needs a GPU and PyTorch, so the CPU-only test suite does not run
it; docs/INTEGRATION.md says how to try it.
"""
from __future__ import annotations

import struct
from typing import Any, List, Optional, Sequence

import numpy as np
import torch

from . import _wire
from .errors import EpmoeError


def _to_numpy_bf16(t: "torch.Tensor") -> np.ndarray:
    t = t.detach().to("cpu")
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(np.uint16)
    from .bf16 import to_bf16
    return to_bf16(t.float().numpy())


class _Region:
    """A torch device buffer attached as a connection's DEV_ATTACH region."""

    def __init__(self, conn: Any, nbytes: int, device: "torch.device", daemon_device: int):
        self.buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
        share = self.buf.untyped_storage()._share_cuda_()
        handle, base_off = bytes(share[1]), int(share[3])
        if len(handle) != 64:
            raise EpmoeError(_wire.ERR_PROTOCOL, f"torch gave a {len(handle)}-byte CUDA IPC handle (64 expected)")
        # The handle names the whole allocation; our buffer starts base_off into it.
        conn._decode(_wire.empty, conn._call(_wire.DEV_ATTACH, _wire.DEV_ATTACH_S.pack(
            base_off + nbytes, daemon_device, _wire.DEV_ATTACH_IPC) + handle), "DEV_ATTACH response")
        self.nbytes, self.base_off, self.device = nbytes, base_off, device


def _region(conn: Any, nbytes: int, device: "torch.device", daemon_device: int) -> _Region:
    reg: Optional[_Region] = getattr(conn, "_torch_region", None)
    if reg is None or reg.nbytes < nbytes or reg.device != device:
        reg = _Region(conn, max(nbytes, 2 * (reg.nbytes if reg else 0), 1 << 20), device, daemon_device)
        conn._torch_region = reg
    return reg


def _forward_cuda(layer: Any, x: "torch.Tensor", logits: "torch.Tensor", counts: List[int],
                  daemon_device: Optional[int]) -> "torch.Tensor":
    group = layer.group
    info = group.info
    H, E = info.hidden, info.num_experts
    x = x.to(torch.bfloat16).contiguous()
    logits = logits.to(torch.float32).contiguous()
    dev = x.device
    ddev = dev.index if daemon_device is None else daemon_device
    step_id = group.next_step_id()
    flags = _wire.FWD_F_SHARED_EXPERT if layer.shared_expert else 0
    dt = _wire.DTYPES[layer.partial_dtype]
    plans, off = [], 0
    for r, conn in enumerate(group.conns):
        m = counts[r]
        xb, lb = m * H * 2, m * E * 4
        lo = (xb + 255) // 256 * 256
        yo = lo + (lb + 255) // 256 * 256
        reg = _region(conn, yo + xb, dev, ddev)
        if m:
            reg.buf[:xb].view(torch.bfloat16).view(m, H).copy_(x[off:off + m])
            reg.buf[lo:lo + lb].view(torch.float32).view(m, E).copy_(logits[off:off + m])
        plans.append((conn, reg, m, lo, yo))
        off += m
    torch.cuda.current_stream(dev).synchronize()  # the daemon reads the buffers from its own process

    def one(p: tuple) -> None:
        conn, reg, m, lo, yo = p
        head = _wire.fwd_req(layer.layer, _wire.DATA_DEVICE, step_id, m, H, E, flags, dt,
                             (reg.base_off, reg.base_off + lo, reg.base_off + yo))
        r = conn._decode(_wire.fwd_resp, conn._call(_wire.FORWARD, head))
        if r.m != m or r.step_id != step_id:
            raise EpmoeError(_wire.ERR_PROTOCOL, f"FORWARD response step {r.step_id} m={r.m}, sent {step_id} m={m}")

    pool = group._pool
    futures = [pool.submit(one, p) for p in plans] if pool else None
    errors = []
    for i, p in enumerate(plans):
        try:
            futures[i].result() if futures else one(p)
        except EpmoeError as e:
            errors.append(e)
    if errors:
        raise errors[0]
    return torch.cat([reg.buf[yo:yo + m * H * 2].view(torch.bfloat16).view(m, H).clone()
                      for _, reg, m, _, yo in plans])


def forward_torch(layer: Any, x: "torch.Tensor", logits: "torch.Tensor", tokens_per_rank: Optional[Sequence[int]],
                  daemon_device: Optional[int] = None) -> "torch.Tensor":
    if x.dim() != 2 or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        raise ValueError(f"x {tuple(x.shape)} / logits {tuple(logits.shape)} must be [M, H] / [M, E]")
    counts = layer.split(int(x.shape[0]), tokens_per_rank)
    if x.is_cuda:
        if layer.mode == "doorbell":
            raise ValueError("CUDA tensors go through CUDA IPC FORWARDs; the Python doorbell is the host path")
        return _forward_cuda(layer, x, logits, counts, daemon_device)
    y = layer.forward(_to_numpy_bf16(x), logits.detach().to("cpu", torch.float32).numpy(), tokens_per_rank)
    return torch.from_numpy(np.ascontiguousarray(y).view(np.int16)).view(torch.bfloat16)
