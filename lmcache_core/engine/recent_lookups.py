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
            return self._entries.get(request_id)

    def newest(self, limit: int) -> list[T]:
        """Up to ``limit`` entries, newest first."""
        with self._lock:
            entries = list(self._entries.values())
        return entries[: -limit - 1 : -1] if limit > 0 else []

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
