"""Deterministic per-chunk sampling and the sampled L1 chunk lifetime.

``--metrics-sample-rate`` applies only to per-chunk lifecycle histograms; the
counters always count every chunk. A chunk is sampled when its chunk hash, read
as an integer, falls below ``rate * PRIME`` modulo :data:`PRIME`: the same chunk
is sampled on every server and after every restart, so its write and its
eviction are both seen (random sampling would pair them only by luck).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence

PRIME = 1_000_003
"""The modulus of the sampling decision (a prime, so hash structure does not bias it)."""

MAX_TRACKED_CHUNKS = 100_000
"""Sampled chunks whose write time is remembered; the oldest are forgotten beyond this."""


class ChunkSampler:
    """Decides, from a chunk hash, whether a chunk is in the sample.

    Args:
        rate: The fraction of chunks sampled, in ``(0, 1]``.
    """

    def __init__(self, rate: float) -> None:
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"sample rate must be in (0, 1], not {rate}")
        self.rate = rate
        self._threshold = round(rate * PRIME)

    def sampled(self, chunk_hash: bytes) -> bool:
        """Whether the chunk with this hash is in the sample."""
        if self._threshold >= PRIME:
            return True
        return int.from_bytes(chunk_hash[:8], "little") % PRIME < self._threshold


def chunk_hash_of(key: object) -> bytes | None:
    """The chunk hash of an event's key (an ``ObjectKey``: its first field), or None."""
    if isinstance(key, Sequence) and key and isinstance(key[0], bytes):
        return key[0]
    return None


class LifetimeTracker:
    """Write times of sampled L1 objects, until they leave L1.

    Bounded: beyond ``capacity`` entries the oldest are forgotten (objects
    deleted without an eviction event would otherwise stay forever).

    Args:
        sampler: Which chunks to track.
        capacity: Most objects remembered.
    """

    def __init__(self, sampler: ChunkSampler, capacity: int = MAX_TRACKED_CHUNKS) -> None:
        self.sampler = sampler
        self.capacity = capacity
        self.forgotten = 0
        """Objects dropped from the table because it was full."""
        self._written: OrderedDict[Hashable, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._written)

    def written(self, keys: Iterable[object], timestamp: float) -> int:
        """Remember when the sampled ones of ``keys`` were written; returns how many."""
        count = 0
        for key in keys:
            chunk_hash = chunk_hash_of(key)
            if chunk_hash is None or not self.sampler.sampled(chunk_hash):
                continue
            assert isinstance(key, Hashable)
            self._written[key] = timestamp
            self._written.move_to_end(key)
            count += 1
        while len(self._written) > self.capacity:
            self._written.popitem(last=False)
            self.forgotten += 1
        return count

    def removed(self, keys: Iterable[object], timestamp: float) -> list[float]:
        """Forget the tracked ones of ``keys``; returns their lifetimes in seconds."""
        lifetimes = []
        for key in keys:
            if not isinstance(key, Hashable):
                continue
            written = self._written.pop(key, None)
            if written is not None:
                lifetimes.append(max(0.0, timestamp - written))
        return lifetimes
