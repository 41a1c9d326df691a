# SPDX-License-Identifier: Apache-2.0
"""Errors of the epmoe client: the daemon's status code and its own message."""
from __future__ import annotations

from typing import Optional

from . import _wire


class EpmoeError(Exception):
    """A failed request. ``status`` is the daemon's ``epm_status_t`` code
    (``status_name`` its name, e.g. ``"ERR_TIMEOUT"``), ``message`` the
    daemon's text (``"step (layer 0, id 7) failed on every rank: ... missing
    ranks 1"``), ``rank`` the daemon's rank when known."""

    def __init__(self, status: int, message: str, rank: Optional[int] = None):
        self.status = status
        self.status_name = _wire.STATUS_NAMES.get(status, f"status {status}")
        self.message = message
        self.rank = rank
        where = f"rank {rank}: " if rank is not None else ""
        super().__init__(f"{where}{message} [{self.status_name}]")


class ProtocolError(EpmoeError):
    """The peer broke docs/PROTOCOL.md (or speaks another version)."""

    def __init__(self, message: str, rank: Optional[int] = None):
        super().__init__(_wire.ERR_PROTOCOL, message, rank)


class ConnectionClosed(EpmoeError):
    """The daemon closed the connection (it exited, or refused this client)."""

    def __init__(self, message: str, rank: Optional[int] = None):
        super().__init__(_wire.ERR_IO, message, rank)
