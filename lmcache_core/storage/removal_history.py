"""A compact, fixed-size memory of objects that left a tier: which tier, when, and why.

Miss explanations ask "was this key here once?" long after the object is gone.
Keeping the keys themselves would cost more than the cache they describe, so
this table keeps, per removed object, a 64-bit fingerprint of its
:class:`~lmcache_core.storage.keys.ObjectKey` and three small fields, in
preallocated numpy arrays. It is direct mapped: the fingerprint picks one slot
and a newer removal overwrites whatever that slot held, so the memory never
grows and the oldest records are forgotten first (on average). A forgotten
removal makes a miss read as "lost" or "never stored", never as a wrong tier;
a wrong match needs two keys with the same 64-bit fingerprint.

Memory: :data:`BYTES_PER_ENTRY` (18) bytes per slot, :data:`DEFAULT_ENTRIES`
(262,144) slots by default: 4.5 MiB, allocated zeroed at start (the kernel
commits the pages on first write).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from lmcache_core.storage.keys import ObjectKey

DEFAULT_ENTRIES = 1 << 18
BYTES_PER_ENTRY = 8 + 8 + 1 + 1
"""Fingerprint (int64), time (float64 seconds since the epoch), tier (uint8), reason (uint8)."""

L1_TIER = 0
"""Tier number of L1; L2 adapter ``i`` (0-based, cascade order) is ``i + 1``."""

REASONS = ("eviction", "quota", "deleted")
"""Why an object left (its index is what a slot stores).

``eviction``: the tier's eviction policy chose it (room for a new object, or
usage above the watermark); ``quota``: its cache salt was over its quota;
``deleted``: removed on request (``/cache/clear``, a write-buffer policy
dropping what L2 now holds, an admin delete).
"""


class Removal(NamedTuple):
    """The record of one removed object.

    Attributes:
        tier: The tier's label (``l1``, ``l2[0]:fs``, ...).
        policy: The tier's eviction policy name (``lru``, ...), or None if unknown.
        reason: One of :data:`REASONS`.
        at: When (seconds since the epoch).
    """

    tier: str
    policy: str | None
    reason: str
    at: float


def fingerprint(key: ObjectKey) -> int:
    """The key's 64-bit fingerprint (never 0, the empty slot's mark)."""
    return hash(key) or 1


class RemovalHistory:
    """The last removal of each object, as far as a fixed-size table remembers.

    Thread-safe: L1 records under its own lock, the L2 store thread records L2
    evictions, lookups read.

    Args:
        entries: Slots; a power of two.

    Raises:
        ValueError: ``entries`` is not a positive power of two.
    """

    def __init__(self, entries: int = DEFAULT_ENTRIES) -> None:
        if entries < 1 or entries & (entries - 1):
            raise ValueError(f"entries must be a power of two, not {entries}")
        self.entries = entries
        self._mask = entries - 1
        self._fingerprints = np.zeros(entries, dtype=np.int64)
        self._times = np.zeros(entries, dtype=np.float64)
        self._tiers = np.zeros(entries, dtype=np.uint8)
        self._reasons = np.zeros(entries, dtype=np.uint8)
        self._tier_names: dict[int, tuple[str, str | None]] = {L1_TIER: ("l1", None)}
        self._lock = threading.Lock()
        self.recorded = 0
        self.generation = 0
        """Bumped after every change of what :meth:`find` and :meth:`matches` answer
        (under the lock, after the change): an answer computed after reading
        generation ``g`` is still the table's while it reads ``g``."""

    @property
    def nbytes(self) -> int:
        """Bytes the table holds (what the docs state)."""
        return self.entries * BYTES_PER_ENTRY

    def name_tier(self, tier: int, label: str, policy: str | None) -> None:
        """Give tier number ``tier`` its label and eviction policy name, for reports."""
        if not 0 <= tier <= 255:
            raise ValueError(f"tier must be in [0, 255], not {tier}")
        self._tier_names[tier] = (label, policy)
        self.generation += 1

    def record(self, keys: Sequence[ObjectKey], tier: int, reason: str, at: float) -> None:
        """Remember that ``keys`` left ``tier`` at ``at`` for ``reason``.

        Raises:
            ValueError: An unknown reason.
        """
        if not keys:
            return
        code = REASONS.index(reason)
        fps = np.array([hash(k) or 1 for k in keys], dtype=np.int64)
        slots = fps & self._mask
        with self._lock:
            self._fingerprints[slots] = fps
            self._times[slots] = at
            self._tiers[slots] = tier
            self._reasons[slots] = code
            self.recorded += len(keys)
            self.generation += 1

    def find(self, key: ObjectKey) -> Removal | None:
        """The last recorded removal of ``key``, or None if none is remembered."""
        fp = fingerprint(key)
        slot = fp & self._mask
        with self._lock:
            if int(self._fingerprints[slot]) != fp:
                return None
            tier, code, at = int(self._tiers[slot]), int(self._reasons[slot]), self._times[slot]
        label, policy = self._tier_names.get(tier, (f"tier{tier}", None))
        return Removal(label, policy, REASONS[code], float(at))

    def find_many(self, keys: Sequence[ObjectKey]) -> list[Removal | None]:
        """:meth:`find` for many keys at once (one lock round, vectorised)."""
        if not keys:
            return []
        fps = np.array([hash(k) or 1 for k in keys], dtype=np.int64)
        slots = fps & self._mask
        with self._lock:
            match = self._fingerprints[slots] == fps
            if not match.any():
                return [None] * len(keys)
            tiers, codes, times = self._tiers[slots], self._reasons[slots], self._times[slots]
        names = self._tier_names
        found: list[Removal | None] = [None] * len(keys)
        for position in np.flatnonzero(match).tolist():
            tier = int(tiers[position])
            label, policy = names.get(tier, (f"tier{tier}", None))
            found[position] = Removal(
                label, policy, REASONS[int(codes[position])], float(times[position])
            )
        return found

    def matches(self, keys: Sequence[ObjectKey]) -> np.ndarray:
        """Per key, whether a removal of it is remembered (a bool array; details: :meth:`find`)."""
        if not keys:
            return np.zeros(0, dtype=bool)
        fps = np.array([hash(k) or 1 for k in keys], dtype=np.int64)
        slots = fps & self._mask
        with self._lock:
            found: np.ndarray = self._fingerprints[slots] == fps
        return found
