"""From a request's wire key to the object keys of its chunks.

Every engine turns a :class:`~lmcache_core.protocol.types.WireCacheKey` into
chunk hashes (memoized per request, and by content across requests) and then
into one :class:`~lmcache_core.storage.keys.ObjectKey` per chunk and KV rank;
store and retrieve also check that their window is chunk-aligned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from lmcache_core.engine.sessions import Session
from lmcache_core.engine.token_cache import TokenHashCache
from lmcache_core.protocol.errors import BadRequestError
from lmcache_core.protocol.types import WireCacheKey
from lmcache_core.storage.keys import ObjectKey, pack_kv_rank

_new_tuple = tuple.__new__


class ChunkWindow(NamedTuple):
    """The chunks ``[first, last)`` of one KV rank that a store or retrieve moves."""

    rank: int
    first: int
    last: int

    @property
    def chunks(self) -> int:
        """How many chunks the window covers."""
        return self.last - self.first


class ChunkKeys:
    """Hashes and object keys of a request's full chunks.

    Args:
        tokens: The server's token hash cache (it knows the chunk size and hasher).
    """

    def __init__(self, tokens: TokenHashCache) -> None:
        self.tokens = tokens
        self.chunk_size = tokens.chunk_size

    def hashes(self, key: WireCacheKey, session: Session, num_chunks: int) -> list[bytes]:
        """The rolling hashes of the first ``num_chunks`` chunks of ``key``'s tokens.

        Raises:
            BadRequestError: The tokens cannot be decoded, or are too few.
        """
        try:
            return self.tokens.hashes(bytes(key.token_ids), num_chunks, session.hashes)
        except ValueError as exc:
            raise BadRequestError(str(exc)) from None

    @staticmethod
    def keys(key: WireCacheKey, hashes: Sequence[bytes], rank: int) -> list[ObjectKey]:
        """One object key per hash, for KV rank ``rank`` of ``key.world_size``."""
        kv_rank = pack_kv_rank(key.world_size, rank)
        model, salt = key.model_name, key.cache_salt
        # tuple.__new__ skips the named tuple's Python-level __new__: a third of the
        # cost of a 64-chunk lookup's keys (docs/benchmarks.md, "Where a lookup's time goes").
        return [_new_tuple(ObjectKey, (h, model, kv_rank, 0, salt)) for h in hashes]

    def window(self, key: WireCacheKey) -> ChunkWindow:
        """The rank and chunk-aligned window of a store or retrieve.

        Raises:
            BadRequestError: No ``worker_id`` in the key, or a window that is not
                chunk-aligned.
        """
        if key.worker_id is None:
            raise BadRequestError("this operation needs a key with worker_id set")
        size = self.chunk_size
        if key.start % size or key.end % size:
            raise BadRequestError(
                f"start {key.start} and end {key.end} must be multiples of the chunk size {size}"
            )
        return ChunkWindow(key.worker_id, key.start // size, key.end // size)

    def window_keys(
        self, key: WireCacheKey, session: Session, window: ChunkWindow
    ) -> list[ObjectKey]:
        """The object keys of the window's chunks (hashing the prefix up to its end)."""
        hashes = self.hashes(key, session, window.last)[window.first :]
        return self.keys(key, hashes, window.rank)
