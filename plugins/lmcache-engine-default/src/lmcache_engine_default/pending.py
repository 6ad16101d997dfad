"""The ``engine_driven`` transfers prepared but not committed yet, in one table.

``prepare_store`` stages L1 objects and ``prepare_retrieve`` (through the shared
pool) read-locks them; both hold them here until the matching commit, or until
the worker unregisters, is reaped, or the engine closes. A second prepare of the
same window replaces the first, whose holdings are handed back to be released.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field
from typing import NamedTuple

from lmcache_core.protocol.types import WireCacheKey
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l1 import Reservation


class Direction(enum.Enum):
    """Which way a pending transfer moves objects."""

    STORE = "store"
    RETRIEVE = "retrieve"


class PendingKey(NamedTuple):
    """One prepared window of one worker and request, in one direction."""

    instance_id: int
    request_id: str
    start: int
    end: int
    direction: Direction

    @classmethod
    def of(cls, instance_id: int, key: WireCacheKey, direction: Direction) -> PendingKey:
        """The pending key of a request's window."""
        return cls(instance_id, key.request_id, key.start, key.end, direction)


@dataclass
class Pending:
    """What a prepared transfer holds in L1.

    Attributes:
        staged: Reservations the worker fills (stores).
        others: Chunks of the window another writer is storing: the commit waits
            until they are visible (stores).
        locked: Keys read-locked for the worker to copy out (retrieves).
    """

    staged: list[Reservation] = field(default_factory=list)
    others: list[ObjectKey] = field(default_factory=list)
    locked: list[ObjectKey] = field(default_factory=list)

    def merge(self, other: Pending) -> None:
        """Take over ``other``'s holdings (to release them together)."""
        self.staged.extend(other.staged)
        self.others.extend(other.others)
        self.locked.extend(other.locked)


class PendingTransfers:
    """Prepared transfers by :class:`PendingKey` (thread-safe)."""

    def __init__(self) -> None:
        self._table: dict[PendingKey, Pending] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._table)

    def put(self, key: PendingKey, pending: Pending) -> Pending | None:
        """Record a prepared transfer; returns the one it replaces, to release."""
        with self._lock:
            previous = self._table.get(key)
            self._table[key] = pending
        return previous

    def take(self, key: PendingKey) -> Pending | None:
        """Remove and return a prepared transfer (None: nothing was prepared)."""
        with self._lock:
            return self._table.pop(key, None)

    def take_instance(self, instance_id: int) -> Pending:
        """Remove every transfer of one worker; returns their holdings together."""
        held = Pending()
        with self._lock:
            for key in [k for k in self._table if k.instance_id == instance_id]:
                held.merge(self._table.pop(key))
        return held

    def take_all(self) -> Pending:
        """Remove every transfer; returns their holdings together."""
        held = Pending()
        with self._lock:
            for pending in self._table.values():
                held.merge(pending)
            self._table.clear()
        return held
