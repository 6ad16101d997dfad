"""A bounded ring of the latest lookup explanation of recent requests.

``GET /lookups/{request_id}`` and ``lmcache explain`` read it. One entry per
request id (a newer lookup of the same request replaces its entry and makes it
the newest); past :data:`DEFAULT_CAPACITY` entries the oldest request is
forgotten.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

DEFAULT_CAPACITY = 1024
"""Requests remembered (see docs/observability.md for the bytes per entry)."""

T = TypeVar("T")

SETTLE_SECONDS = 0.5
"""The longest a reader waits for entries announced with :meth:`RecentLookups.expect`
(the event bus builds them within its drain interval, 0.1 s)."""


class RecentLookups(Generic[T]):
    """Request id -> its latest explanation, the newest ``capacity`` requests.

    Thread-safe: lookups add from pool and prefetch threads, HTTP reads.

    Args:
        capacity: Requests remembered (at least 1).

    Raises:
        ValueError: ``capacity`` < 1.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, not {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[str, T] = OrderedDict()
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._pending = 0

    def expect(self) -> None:
        """Announce an entry that :meth:`add` (or :meth:`settle`) will bring soon.

        A lookup answered before its explanation is built (``RequestContext.defer``)
        calls this first: until the entry is in, readers wait for it (at most
        :data:`SETTLE_SECONDS`), so a client that asks right after its answer
        still finds its lookup.
        """
        with self._lock:
            self._pending += 1

    def settle(self) -> None:
        """An expected entry is in, or will not come (its work failed)."""
        with self._lock:
            self._pending = max(0, self._pending - 1)
            if not self._pending:
                self._settled.notify_all()

    def _wait_settled(self) -> None:
        """Wait (bounded, lock held) until no expected entry is missing."""
        if self._pending:
            self._settled.wait_for(lambda: not self._pending, SETTLE_SECONDS)

    def add(self, request_id: str, entry: T) -> None:
        """Record ``entry`` as the latest of ``request_id`` (the newest entry)."""
        with self._lock:
            entries = self._entries
            entries[request_id] = entry
            entries.move_to_end(request_id)
            if len(entries) > self.capacity:
                entries.popitem(last=False)

    def get(self, request_id: str) -> T | None:
        """The latest entry of ``request_id``, or None when it is unknown or forgotten."""
        with self._lock:
            self._wait_settled()
            return self._entries.get(request_id)

    def newest(self, limit: int) -> list[T]:
        """Up to ``limit`` entries, newest first."""
        with self._lock:
            self._wait_settled()
            entries = list(self._entries.values())
        return entries[: -limit - 1 : -1] if limit > 0 else []

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
