"""The records of the L1 tier: reservations, usage, the shared segment, its tables' rows."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.read_grants import Ledger


@dataclass(frozen=True, slots=True)
class Reservation:
    """A staged object a writer fills, then commits or aborts.

    Attributes:
        key: The object's key.
        offset: Byte offset of the object in the arena (the same in every process
            that maps a shared-memory arena).
        nbytes: The object's size as requested (its extent is aligned up).
        serial: Distinguishes this reservation from a later one of the same key
            that reuses the same extent after this one expired.
    """

    key: ObjectKey
    offset: int
    nbytes: int
    serial: int = field(default=0, repr=False)


@dataclass(frozen=True, slots=True)
class L1Usage:
    """A consistent snapshot of the L1 tier's occupancy.

    Attributes:
        used_bytes: Bytes allocated (resident and staged, aligned sizes).
        capacity_bytes: The final size of L1 (``--l1-size-gb``).
        limit_bytes: The part grown so far (lazy allocation).
        resident_objects: Committed objects.
        staged_objects: Reservations not committed yet.
        locked_objects: Resident objects with a live read lock.
        temporary_objects: Resident objects marked temporary.
    """

    used_bytes: int
    capacity_bytes: int
    limit_bytes: int
    resident_objects: int
    staged_objects: int
    locked_objects: int
    temporary_objects: int = 0

    @property
    def usage_ratio(self) -> float:
        """``used_bytes / capacity_bytes`` (0 for an empty tier)."""
        return self.used_bytes / self.capacity_bytes if self.capacity_bytes else 0.0

    def as_dict(self) -> dict[str, int]:
        """The counts ``/status``, ``/config/adapters`` and the admin CLI show."""
        return {
            "used_bytes": self.used_bytes,
            "capacity_bytes": self.capacity_bytes,
            "limit_bytes": self.limit_bytes,
            "resident_objects": self.resident_objects,
            "staged_objects": self.staged_objects,
            "locked_objects": self.locked_objects,
        }


@dataclass(frozen=True, slots=True)
class SharedSegment:
    """The POSIX shared-memory segment holding L1, as another process maps it.

    Attributes:
        name: The segment's ``shm_open`` name.
        size_bytes: Its size; object offsets (:meth:`L1Manager.offsets`,
            :attr:`Reservation.offset`) are relative to its start.
    """

    name: str
    size_bytes: int


class Stage:
    """A reservation being filled: where its extent starts, and when it expires."""

    __slots__ = ("alloc_offset", "deadline", "reservation")

    def __init__(self, reservation: Reservation, alloc_offset: int, deadline: float) -> None:
        self.reservation = reservation
        self.alloc_offset = alloc_offset
        self.deadline = deadline


class ResidentObject(Ledger):
    """A committed object: its extent, and its read locks (the :class:`Ledger` it is)."""

    __slots__ = ("alloc_offset", "nbytes", "offset", "temporary")

    def __init__(self, offset: int, alloc_offset: int, nbytes: int) -> None:
        # Ledger's fields set inline: one object per committed chunk, no extra call.
        self.grants: list[list[float]] = []
        self.orphans: list[list[float]] = []
        self.readers = 0
        self.offset = offset
        self.alloc_offset = alloc_offset
        self.nbytes = nbytes
        self.temporary = False
