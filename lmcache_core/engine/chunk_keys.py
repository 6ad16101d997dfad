"""From a request's wire key to the object keys of its chunks.

Every engine turns a :class:`~lmcache_core.protocol.types.WireCacheKey` into
chunk hashes (memoized per request, and by content across requests) and then
into one :class:`~lmcache_core.storage.keys.ObjectKey` per chunk and KV rank;
store and retrieve also check that their window is chunk-aligned.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

from lmcache_core.engine.sessions import Session
from lmcache_core.engine.token_cache import TokenHashCache
from lmcache_core.protocol.errors import BadRequestError
from lmcache_core.protocol.types import WireCacheKey
from lmcache_core.storage.keys import ObjectKey, pack_kv_rank

_new_tuple = tuple.__new__

PREFIX_MEMO_ENTRIES = 256
"""Prefixes whose object keys :meth:`ChunkKeys.prefix_keys` remembers."""

PREFIX_MEMO_MAX_KEYS = 128
"""Longest prefix (chunks x ranks) it remembers: the lookups served on the request loop."""

PrefixKeys = tuple[list[ObjectKey], list[list[ObjectKey]]]
"""``(flat, rows)``: every rank's keys chunk-major, and one row (every rank) per chunk."""


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
        self._prefixes: OrderedDict[tuple[object, ...], PrefixKeys] = OrderedDict()
        self._prefix_lock = threading.Lock()

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

    def prefix_keys(self, key: WireCacheKey, hashes: Sequence[bytes]) -> PrefixKeys:
        """The object keys of a lookup's chunks for its ranks, chunk-major, and their rows.

        The ranks are ``key.worker_id``, or every rank of ``key.world_size`` when
        it is None. A prefix of at most :data:`PREFIX_MEMO_MAX_KEYS` keys is
        remembered (the last :data:`PREFIX_MEMO_ENTRIES`, by its last chunk hash,
        which names the whole prefix, and by the key's namespace): a lookup
        repeated while a request waits to be scheduled, or the same prompt
        again, builds no keys. The lists are shared between those lookups, so
        callers must not change them (none does: they are read, sliced, copied).
        """
        ranks = [key.worker_id] if key.worker_id is not None else range(key.world_size)
        width, count = len(ranks), len(hashes)
        memo_key: tuple[object, ...] | None = None
        if hashes and count * width <= PREFIX_MEMO_MAX_KEYS:
            memo_key = (
                hashes[-1],
                count,
                key.model_name,
                key.world_size,
                key.worker_id,
                key.cache_salt,
            )
            with self._prefix_lock:
                found = self._prefixes.get(memo_key)
                if found is not None:
                    self._prefixes.move_to_end(memo_key)
                    return found
        per_rank = [self.keys(key, hashes, rank) for rank in ranks]
        if width == 1:
            flat = per_rank[0]
            rows = [[k] for k in flat]
        else:
            rows = [[keys[i] for keys in per_rank] for i in range(count)]
            flat = [k for row in rows for k in row]
        built = (flat, rows)
        if memo_key is not None:
            with self._prefix_lock:
                self._prefixes[memo_key] = built
                if len(self._prefixes) > PREFIX_MEMO_ENTRIES:
                    self._prefixes.popitem(last=False)
        return built

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
