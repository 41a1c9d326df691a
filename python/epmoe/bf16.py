# SPDX-License-Identifier: Apache-2.0
"""bfloat16 as numpy uint16 bits (numpy has no bf16 dtype): conversions."""
from __future__ import annotations

from typing import Any

import numpy as np


def to_bf16(a: Any) -> np.ndarray:
    """float array -> bf16 bits (uint16), rounding to nearest even; NaN stays NaN."""
    f = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
    u = f.view(np.uint32)
    r = ((u + (((u >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
    return np.where(np.isnan(f), np.uint16(0x7FC0), r)


def from_bf16(b: Any) -> np.ndarray:
    """bf16 bits (uint16) -> float32, exactly."""
    u = np.ascontiguousarray(np.asarray(b).view(np.uint16)).astype(np.uint32) << 16
    return u.view(np.float32)
