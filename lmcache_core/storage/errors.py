"""Errors of the L1 memory tier.

Both derive from :class:`~lmcache_core.errors.LMCacheError`, so the request
server can turn them into typed error replies instead of dropping a request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmcache_core.errors import LMCacheError


class L1Error(LMCacheError):
    """Base class of the L1 tier's deliberate errors."""


class L1FullError(L1Error):
    """A batch reservation does not fit, even after growing and evicting.

    Nothing of the batch was reserved. Objects that are read-locked, staged or
    simply not offered by the eviction policy (``noop``) cannot make room.

    Attributes:
        requested_bytes: What the batch needed (after alignment).
        free_bytes: What was free when the reservation gave up.
    """

    def __init__(self, requested_bytes: int, free_bytes: int, detail: str = "") -> None:
        self.requested_bytes = requested_bytes
        self.free_bytes = free_bytes
        message = f"L1 is full: {requested_bytes} bytes requested, {free_bytes} bytes free"
        super().__init__(f"{message}; {detail}" if detail else message)


class ReservationExpired(L1Error):
    """A commit named reservations that are no longer staged.

    Their write TTL ran out (or they were aborted) and their memory may already
    belong to another object, so their bytes must not become visible. Nothing of
    the batch was committed; the batch's live reservations are still staged.

    Attributes:
        keys: The keys of the reservations that are gone.
    """

    def __init__(self, keys: Sequence[Any]) -> None:
        self.keys = list(keys)
        shown = ", ".join(repr(k) for k in self.keys[:3])
        more = f" and {len(self.keys) - 3} more" if len(self.keys) > 3 else ""
        super().__init__(f"reservation expired or aborted before commit: {shown}{more}")


class ArenaError(L1Error):
    """The arena cannot be created (bad name, no room in /dev/shm, no CUDA, ...)."""


class L1ClosedError(L1Error):
    """The L1 manager was closed; it serves nothing any more."""
