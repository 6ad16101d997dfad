"""L1 reservations being written: serials, write-TTL deadlines, and their extents.

A writer reserves (:meth:`~lmcache_core.storage.l1.L1Manager.reserve`), fills
its extent outside the lock, then commits or aborts. A reservation is valid
while its serial matches the staged one (a later reservation of the same key
that reuses the extent gets a new serial) and its write TTL has not run out.
:class:`Staging` keeps that table; the L1 manager calls it under its lock.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

from lmcache_core.storage.errors import ReservationExpired
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l1_objects import Reservation, Stage

logger = logging.getLogger("lmcache.storage")


class Staging:
    """The staged objects of one L1 manager (called with the manager's lock held).

    Args:
        write_ttl_s: Lifetime of a reservation that is not committed.
        base: Arena offset of allocator offset 0 (:attr:`Reservation.offset` is
            ``base + alloc_offset``).
        dropped: Told of every stage dropped without a commit (expired,
            aborted, reclaimed): frees its extent.

    Attributes:
        staged: Stages by key.
        next_deadline: A lower bound of every stage's deadline.
    """

    def __init__(self, write_ttl_s: float, base: int, dropped: Callable[[Stage], None]) -> None:
        self.write_ttl_s = write_ttl_s
        self.base = base
        self.staged: dict[ObjectKey, Stage] = {}
        self.next_deadline = math.inf
        self._serial = 0
        self._dropped = dropped

    def add(
        self,
        keys: Sequence[ObjectKey],
        fresh: list[int],
        alloc_offsets: list[int],
        nbytes: int,
        now: float,
        result: list[Reservation | None],
    ) -> None:
        """Stage ``keys[i]`` for each ``i`` in ``fresh`` at its extent; fills ``result[i]``."""
        deadline = now + self.write_ttl_s
        staged = self.staged
        base = self.base
        for index, alloc_offset in zip(fresh, alloc_offsets, strict=True):
            self._serial += 1
            key = keys[index]
            reservation = Reservation(key, base + alloc_offset, nbytes, self._serial)
            staged[key] = Stage(reservation, alloc_offset, deadline)
            result[index] = reservation
        self.next_deadline = min(self.next_deadline, deadline)

    def renew(self, reservations: Sequence[Reservation], now: float) -> bool:
        """Restart the write TTL of every reservation, or of none if one is gone."""
        stages = [self.staged.get(r.key) for r in reservations]
        if any(
            stage is None or stage.reservation.serial != r.serial or stage.deadline <= now
            for stage, r in zip(stages, reservations, strict=True)
        ):
            return False
        deadline = now + self.write_ttl_s
        for stage in stages:
            assert stage is not None
            stage.deadline = deadline
        self.next_deadline = min(self.next_deadline, deadline)
        return True

    def committable(
        self, reservations: Sequence[Reservation], now: float
    ) -> dict[ObjectKey, Stage]:
        """The stages of ``reservations``, all live, for a commit (which removes them).

        Raises:
            ReservationExpired: Some are no longer staged; the live ones stay
                staged, and the expired ones are dropped.
        """
        gone: list[ObjectKey] = []
        batch: dict[ObjectKey, Stage] = {}
        for reservation in reservations:
            stage = self.staged.get(reservation.key)
            if stage is None or stage.reservation.serial != reservation.serial:
                gone.append(reservation.key)
            elif stage.deadline <= now:
                gone.append(reservation.key)
                self.drop(reservation.key, stage)
            else:
                batch[reservation.key] = stage
        if gone:
            raise ReservationExpired(gone)
        return batch

    def abort(self, reservations: Sequence[Reservation]) -> int:
        """Drop the reservations still staged under their serial; returns how many."""
        freed = 0
        for reservation in reservations:
            stage = self.staged.get(reservation.key)
            if stage is not None and stage.reservation.serial == reservation.serial:
                self.drop(reservation.key, stage)
                freed += 1
        return freed

    def drop(self, key: ObjectKey, stage: Stage) -> None:
        """Forget one stage and free its extent."""
        del self.staged[key]
        self._dropped(stage)

    def drop_expired(self, now: float, *, warn: bool = False) -> int:
        """Drop every stage past its deadline; recompute :attr:`next_deadline`."""
        dropped = 0
        next_deadline = math.inf
        for key, stage in list(self.staged.items()):
            if stage.deadline <= now:
                if warn:
                    logger.warning("L1 reservation of %r expired before commit", key)
                self.drop(key, stage)
                dropped += 1
            else:
                next_deadline = min(next_deadline, stage.deadline)
        self.next_deadline = next_deadline
        return dropped
