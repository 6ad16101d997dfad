"""Which namespace (cache salt, model, KV rank) a chunk hash was last stored under.

A chunk hash depends on the tokens only, so a prompt stored by one tenant, model
or tensor-parallel size and looked up by another misses with the same hash: the
most common "my hit rate is 0" report. This index remembers, per chunk hash,
the namespace of the last object committed under it, in fixed preallocated
numpy arrays: a 64-bit fingerprint of the hash and 32-bit fingerprints of the
salt and model name, plus the packed KV rank. It is direct mapped like
:class:`~lmcache_core.storage.removal_history.RemovalHistory`: bounded, newer
entries overwrite older ones. Salts and models are kept as fingerprints only,
so an explanation can say "stored under another cache salt" without naming
another tenant's salt.

Memory: :data:`BYTES_PER_ENTRY` (20) bytes per slot, :data:`DEFAULT_ENTRIES`
(262,144) slots by default: 5 MiB.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from lmcache_core.storage.keys import ObjectKey

DEFAULT_ENTRIES = 1 << 18
BYTES_PER_ENTRY = 8 + 4 + 4 + 4
"""Hash fingerprint (int64), salt and model fingerprints (uint32 each), KV rank (uint32)."""

_LOW32 = 0xFFFFFFFF


class Namespace(NamedTuple):
    """The namespace a chunk hash was last stored under (fingerprints, not names).

    Attributes:
        salt: 32-bit fingerprint of the cache salt.
        model: 32-bit fingerprint of the model name.
        kv_rank: The packed KV rank (world size in bits 24-31).
    """

    salt: int
    model: int
    kv_rank: int

    @classmethod
    def of(cls, key: ObjectKey) -> Namespace:
        """The namespace of ``key``."""
        return cls(hash(key.cache_salt) & _LOW32, hash(key.model_name) & _LOW32, key.kv_rank)

    def difference(self, other: Namespace) -> str | None:
        """What differs from ``other``, most telling first.

        Returns:
            ``cache_salt``, ``model_name``, ``world_size``, ``kv_rank`` (same world
            size, another worker), or None when they are the same.
        """
        if self.salt != other.salt:
            return "cache_salt"
        if self.model != other.model:
            return "model_name"
        if self.kv_rank >> 24 != other.kv_rank >> 24:
            return "world_size"
        if self.kv_rank != other.kv_rank:
            return "kv_rank"
        return None


class NamespaceIndex:
    """Chunk-hash fingerprint -> the namespace it was last committed under.

    Thread-safe (L1 commits add, lookups read).

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
        self._salts = np.zeros(entries, dtype=np.uint32)
        self._models = np.zeros(entries, dtype=np.uint32)
        self._ranks = np.zeros(entries, dtype=np.uint32)
        self._lock = threading.Lock()
        self.generation = 0
        """Bumped after every :meth:`add` (under the lock, after the change): an answer
        computed after reading generation ``g`` is still the index's while it reads ``g``."""

    @property
    def nbytes(self) -> int:
        """Bytes the table holds (what the docs state)."""
        return self.entries * BYTES_PER_ENTRY

    def add(self, keys: Sequence[ObjectKey]) -> None:
        """Remember the namespace of each key's chunk hash (the last key of a hash wins)."""
        if not keys:
            return
        count = len(keys)
        fps = np.array([hash(k.chunk_hash) or 1 for k in keys], dtype=np.int64)
        first = keys[0]
        if all(k.cache_salt == first.cache_salt and k.model_name == first.model_name for k in keys):
            # The usual batch: one request, one namespace (ranks may differ).
            namespace = Namespace.of(first)
            salts: np.ndarray | int = namespace.salt
            models: np.ndarray | int = namespace.model
        else:
            salts = np.fromiter(
                (hash(k.cache_salt) & _LOW32 for k in keys), dtype=np.uint32, count=count
            )
            models = np.fromiter(
                (hash(k.model_name) & _LOW32 for k in keys), dtype=np.uint32, count=count
            )
        ranks = np.array([k.kv_rank for k in keys], dtype=np.uint32)
        slots = fps & self._mask
        with self._lock:
            self._fingerprints[slots] = fps
            self._salts[slots] = salts
            self._models[slots] = models
            self._ranks[slots] = ranks
            self.generation += 1

    def find(self, chunk_hash: bytes) -> Namespace | None:
        """The namespace ``chunk_hash`` was last stored under, or None if not remembered."""
        fp = hash(chunk_hash) or 1
        slot = fp & self._mask
        with self._lock:
            if int(self._fingerprints[slot]) != fp:
                return None
            return Namespace(
                int(self._salts[slot]), int(self._models[slot]), int(self._ranks[slot])
            )

    def find_many(self, chunk_hashes: Sequence[bytes]) -> list[Namespace | None]:
        """:meth:`find` for many hashes at once (one lock round, vectorised)."""
        if not chunk_hashes:
            return []
        count = len(chunk_hashes)
        fps = np.array([hash(h) or 1 for h in chunk_hashes], dtype=np.int64)
        slots = fps & self._mask
        with self._lock:
            match = self._fingerprints[slots] == fps
            if not match.any():
                return [None] * count
            salts, models, ranks = self._salts[slots], self._models[slots], self._ranks[slots]
        found: list[Namespace | None] = [None] * count
        for position in np.flatnonzero(match).tolist():
            found[position] = Namespace(
                int(salts[position]), int(models[position]), int(ranks[position])
            )
        return found
