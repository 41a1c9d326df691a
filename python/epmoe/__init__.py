# SPDX-License-Identifier: Apache-2.0
"""epmoe — Python client of the epmoe daemons (expert-parallel NVFP4 MoE).

    import epmoe
    group = epmoe.connect("/run/epmoe")               # every rank's daemon
    moe = group.layer(0)                              # no shared expert, f32 partials
    y = moe.forward(x, logits)                        # bf16 bits [M, H] (numpy uint16)
    fast = group.layer(0, mode="doorbell")            # shared-memory fast path

Written from docs/PROTOCOL.md (protocol version 2); docs/INTEGRATION.md has
the worked example. Errors are EpmoeError with the daemon's status and
message.
"""
from ._wire import ServerInfo
from .bf16 import from_bf16, to_bf16
from .client import Connection, sockets, wait_ready
from .doorbell import Doorbell
from .errors import ConnectionClosed, EpmoeError, ProtocolError
from .group import Group, Layer, connect

__version__ = "0.1.0"
PROTOCOL_VERSION = 2

__all__ = [
    "Connection", "ConnectionClosed", "Doorbell", "EpmoeError", "Group", "Layer", "ProtocolError", "ServerInfo",
    "connect", "from_bf16", "sockets", "to_bf16", "wait_ready", "PROTOCOL_VERSION",
]
