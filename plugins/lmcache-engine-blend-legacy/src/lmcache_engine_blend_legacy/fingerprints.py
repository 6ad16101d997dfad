"""The position-independent fingerprint index of ``blend_legacy``: stored chunks by content.

Every full chunk a ``cb_store_*`` operation stores is indexed by a polynomial
hash of its token ids (``sum(tok[j] * B**(C-1-j)) mod 2**64``, base
``0x9E3779B97F4A7C15``, as upstream), which does not depend on where the chunk
sat. A lookup computes the same hash over a window at **every** token offset of
the request (a rolling hash, vectorised with numpy: O(tokens)), so a stored
chunk is found at any position, even unaligned.

Differences from upstream's matcher, on purpose:

* **Namespaced**: one index per ``(model, world size, cache salt)``, so one
  tenant's lookups never see (or evict) another's chunks.
* **Collision-safe**: a bucket holds every entry of its 64-bit hash, and a hit
  is confirmed by a 16-byte blake2b digest of the window's tokens; upstream's
  direct-mapped table overwrote entries and lost them.
* **Bounded, with a stated policy**: at most ``capacity`` entries over all
  namespaces; when full, the entry registered longest ago goes first (FIFO),
  and every such eviction is counted.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

BASE = 0x9E3779B97F4A7C15
"""The polynomial's base: the 64-bit golden-ratio constant (odd, so invertible mod 2**64)."""
_BASE_INVERSE = pow(BASE, -1, 1 << 64)

DEFAULT_CAPACITY = 1 << 20
"""Entries kept over all namespaces before the oldest are evicted."""

Namespace = tuple[str, int, str]
"""``(model_name, world_size, cache_salt)``: whose chunks an index holds."""


class Match(NamedTuple):
    """A stored chunk found in a request (positions in tokens; ``hash`` is its object key)."""

    old_st: int
    cur_st: int
    hash: bytes


@dataclass
class _Entry:
    poly: int
    digest: bytes
    old_st: int


@dataclass
class _Namespace:
    entries: dict[bytes, _Entry] = field(default_factory=dict)  # chunk hash -> entry
    buckets: dict[int, list[bytes]] = field(default_factory=dict)  # poly -> chunk hashes
    polys: npt.NDArray[np.uint64] | None = None  # sorted bucket keys, rebuilt on change


def as_tokens(token_ids: Sequence[int] | npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
    """Token ids as the uint64 values the polynomial works on (negative ids wrap)."""
    return np.asarray(token_ids, dtype=np.int64).view(np.uint64)


def _powers(base: int, count: int) -> npt.NDArray[np.uint64]:
    """``base**0 .. base**(count-1)`` mod 2**64."""
    powers = np.full(count, base, dtype=np.uint64)
    powers[0] = 1
    return np.cumprod(powers, dtype=np.uint64)  # uint64 products wrap: arithmetic mod 2**64


def window_polys(tokens: npt.NDArray[np.uint64], size: int) -> npt.NDArray[np.uint64]:
    """The polynomial hash of every window of ``size`` tokens (one per start offset).

    With ``Q[i] = sum(tok[j] * B**-j for j < i)``, the window at ``s`` is
    ``B**(size-1+s) * (Q[s+size] - Q[s])``: two cumulative passes, no loop.
    """
    count = tokens.shape[0] - size + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        inverse = _powers(_BASE_INVERSE, tokens.shape[0])
        prefix = np.zeros(tokens.shape[0] + 1, dtype=np.uint64)
        np.cumsum(tokens * inverse, dtype=np.uint64, out=prefix[1:])
        scale = _powers(BASE, tokens.shape[0])[size - 1 : size - 1 + count]
        polys: npt.NDArray[np.uint64] = scale * (prefix[size : size + count] - prefix[:count])
    return polys


def chunk_polys(tokens: npt.NDArray[np.uint64], size: int) -> npt.NDArray[np.uint64]:
    """The hash of each full, non-overlapping chunk (what a store indexes)."""
    full = tokens.shape[0] // size
    if not full:
        return np.empty(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        weights = _powers(BASE, size)[::-1].copy()
        windows = tokens[: full * size].reshape(full, size) * weights
        polys: npt.NDArray[np.uint64] = windows.sum(axis=1, dtype=np.uint64)
    return polys


def _digest(tokens: npt.NDArray[np.uint64]) -> bytes:
    return hashlib.blake2b(tokens.tobytes(), digest_size=16).digest()


class FingerprintIndex:
    """Stored chunks by content, per namespace, bounded (thread-safe).

    Args:
        chunk_size: Tokens per chunk.
        capacity: Entries kept over all namespaces (the oldest go first).

    Attributes:
        registered: Entries added, ever.
        evicted: Entries dropped to make room.
        removed: Entries removed as stale by lookups.
    """

    def __init__(self, chunk_size: int, capacity: int = DEFAULT_CAPACITY) -> None:
        if chunk_size < 1 or capacity < 1:
            raise ValueError("chunk_size and capacity must be >= 1")
        self.chunk_size = chunk_size
        self.capacity = capacity
        self._spaces: dict[Namespace, _Namespace] = {}
        self._order: OrderedDict[tuple[Namespace, bytes], None] = OrderedDict()
        self._lock = threading.Lock()
        self.registered = 0
        self.evicted = 0
        self.removed = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._order)

    def register(
        self, space: Namespace, token_ids: npt.NDArray[np.uint64], hashes: Sequence[bytes]
    ) -> int:
        """Index the full chunks of ``token_ids`` under their ``hashes`` (one per chunk).

        Chunk ``i`` is recorded as stored at ``old_st = i * chunk_size``. A hash
        already indexed is skipped. Returns how many entries were added.
        """
        size = self.chunk_size
        polys = chunk_polys(token_ids, size)
        count = min(len(hashes), polys.shape[0])
        added = 0
        with self._lock:
            index = self._spaces.setdefault(space, _Namespace())
            for i in range(count):
                chunk_hash = bytes(hashes[i])
                if chunk_hash in index.entries:
                    continue
                poly = int(polys[i])
                digest = _digest(token_ids[i * size : (i + 1) * size])
                index.entries[chunk_hash] = _Entry(poly, digest, i * size)
                index.buckets.setdefault(poly, []).append(chunk_hash)
                self._order[(space, chunk_hash)] = None
                added += 1
            if added:
                index.polys = None
                self.registered += added
                while len(self._order) > self.capacity:
                    (old_space, old_hash), _ = self._order.popitem(last=False)
                    self._drop(old_space, old_hash)
                    self.evicted += 1
        return added

    def match(self, space: Namespace, token_ids: npt.NDArray[np.uint64]) -> list[Match]:
        """Every indexed chunk found in ``token_ids``, once, at its first offset, by offset."""
        size = self.chunk_size
        if token_ids.shape[0] < size:
            return []
        windows = window_polys(token_ids, size)
        with self._lock:
            index = self._spaces.get(space)
            if index is None or not index.entries:
                return []
            if index.polys is None:
                index.polys = np.fromiter(index.buckets, dtype=np.uint64, count=len(index.buckets))
            candidates = np.flatnonzero(np.isin(windows, index.polys))
            found: list[Match] = []
            seen: set[bytes] = set()
            for position in candidates.tolist():
                digest: bytes | None = None
                for chunk_hash in index.buckets[int(windows[position])]:
                    if chunk_hash in seen:
                        continue
                    if digest is None:
                        digest = _digest(token_ids[position : position + size])
                    entry = index.entries[chunk_hash]
                    if entry.digest == digest:  # the same tokens, not a hash collision
                        seen.add(chunk_hash)
                        found.append(Match(entry.old_st, position, chunk_hash))
            return found

    def remove(self, space: Namespace, hashes: Sequence[bytes]) -> int:
        """Drop entries (stale chunks); returns how many were indexed."""
        with self._lock:
            gone = 0
            for chunk_hash in hashes:
                if (space, chunk_hash) in self._order:
                    del self._order[(space, chunk_hash)]
                    self._drop(space, chunk_hash)
                    gone += 1
            self.removed += gone
            return gone

    def _drop(self, space: Namespace, chunk_hash: bytes) -> None:
        """Forget one entry of ``space`` (the lock is held)."""
        index = self._spaces[space]
        entry = index.entries.pop(chunk_hash)
        bucket = index.buckets[entry.poly]
        bucket.remove(chunk_hash)
        if not bucket:
            del index.buckets[entry.poly]
            index.polys = None
        if not index.entries:
            del self._spaces[space]

    def status(self) -> dict[str, int]:
        """Sizes and counters for ``/status``."""
        with self._lock:
            return {
                "entries": len(self._order),
                "namespaces": len(self._spaces),
                "capacity": self.capacity,
                "registered": self.registered,
                "evicted": self.evicted,
                "removed_stale": self.removed,
            }
