"""Disk limits of file-backed L2 adapters: a file-system watermark and a minimum free space.

A cache on a shared disk must never fill it: the other users of the disk (the
engine's logs, the model weights, the OS) fail long before the cache does. An
adapter that writes files declares :class:`DiskLimitsConfig` in its config model
(the keys upstream's later versions use: ``high_watermark`` and
``min_free_bytes``) and returns :meth:`DiskLimits.room` from
``L2AdapterV1._room_bytes``: every store batch is then admitted only while the
file system stays at or under the watermark and keeps the minimum free, counting
the stores already in flight. Both limits are about the whole file system (what
``df`` shows), not only this cache's files, so they also hold when several
servers or other programs share the disk; they are measured at each admission,
so nothing needs rebuilding after a restart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pydantic import BaseModel, Field


class DiskLimitsConfig(BaseModel):
    """Config keys of the disk limits (a mixin of a file adapter's config model)."""

    high_watermark: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description=(
            "Largest used fraction of the file system (what df reports, every user of the "
            "disk counted) a store may bring it to; stores beyond it are refused and counted "
            "(refused_no_room). 1.0: no watermark."
        ),
    )
    min_free_bytes: int = Field(
        default=0,
        ge=0,
        description=(
            "Bytes that must stay available to unprivileged users of the file system after a "
            "store; stores beyond it are refused and counted (refused_no_room). 0: no minimum."
        ),
    )

    def disk_limits(self) -> DiskLimits:
        """The limits as the adapter applies them."""
        return DiskLimits(self.high_watermark, self.min_free_bytes)


@dataclass(frozen=True)
class DiskLimits:
    """A watermark and a minimum free space on one file system.

    Attributes:
        high_watermark: Largest used fraction allowed (1.0: none).
        min_free_bytes: Bytes that must stay available (0: none).
    """

    high_watermark: float = 1.0
    min_free_bytes: int = 0

    @property
    def enabled(self) -> bool:
        """Whether any limit is set."""
        return self.high_watermark < 1.0 or self.min_free_bytes > 0

    def room_of(self, stat: os.statvfs_result) -> int:
        """Bytes that may still be written on a file system in state ``stat`` (>= 0).

        The used fraction is ``df``'s: used / (used + available to unprivileged
        users), so the space reserved for root does not count as room.
        """
        unit = stat.f_frsize
        used = (stat.f_blocks - stat.f_bfree) * unit
        available = stat.f_bavail * unit
        room = available - self.min_free_bytes
        if self.high_watermark < 1.0:
            room = min(room, int(self.high_watermark * (used + available)) - used)
        return max(room, 0)

    def room(self, path: str | os.PathLike[str]) -> int | None:
        """Bytes that may still be written under ``path``; None when no limit is set.

        Raises:
            OSError: The file system cannot be queried.
        """
        if not self.enabled:
            return None
        return self.room_of(os.statvfs(path))


NO_DISK_LIMITS = DiskLimits()
"""Neither a watermark nor a minimum free space."""
