"""Chunk hashes of token lists, cached by content.

Every lookup, store and retrieve carries the request's whole token list. Decoding
it into Python ints costs more than the rest of a lookup, so the server keeps the
list as raw msgpack and asks this cache first: the same bytes always give the
same hashes, whatever request they come from. Only a miss decodes the tokens;
then the request's own :class:`~lmcache_core.hashing.RequestHashes` reuses the
part of its previous hashes whose tokens did not change.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import blake3
import msgspec

from lmcache_core.hashing import ChunkHasher, RequestHashes

DEFAULT_ENTRIES = 4096
_tokens_decoder = msgspec.msgpack.Decoder(list[int])


class TokenBinder(Protocol):
    """Whoever wants the tokens behind chunk hashes (the KV event log)."""

    def is_bound(self, chunk_hash: bytes) -> bool:
        """Whether ``chunk_hash``'s tokens are already known."""

    def bind_raw(self, hashes: Sequence[bytes], raw_tokens: bytes, chunk_size: int) -> None:
        """Remember each chunk's place in ``raw_tokens`` (a prefix from its first chunk)."""


class TokenHashCache:
    """A bounded LRU map from raw token bytes to their chunk hashes.

    Args:
        hasher: The ``--hash-algorithm``.
        chunk_size: ``--chunk-size``.
        entries: How many distinct token lists to remember.
    """

    def __init__(
        self, hasher: ChunkHasher, chunk_size: int, entries: int = DEFAULT_ENTRIES
    ) -> None:
        self.hasher = hasher
        self.chunk_size = chunk_size
        self.entries = entries
        self._cache: OrderedDict[bytes, list[bytes]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.binder: TokenBinder | None = None
        """Told every decoded prefix's tokens (the KV event log); ``None``: nobody asks."""

    def new_request(self) -> RequestHashes:
        """A per-request memo using this cache's hasher and chunk size."""
        return RequestHashes(self.hasher, self.chunk_size)

    def hashes(
        self, raw_tokens: bytes, num_chunks: int, memo: RequestHashes | None = None
    ) -> list[bytes]:
        """Hashes of the first ``num_chunks`` complete chunks of ``raw_tokens``.

        Args:
            raw_tokens: The msgpack array of token ids, as received.
            num_chunks: How many chunks the caller needs.
            memo: The request's memo, used on a miss.

        Raises:
            ValueError: The tokens are not an array of uint32 values.
        """
        digest = blake3.blake3(raw_tokens).digest()
        binder = self.binder
        with self._lock:
            cached = self._cache.get(digest)
            if cached is not None and len(cached) >= num_chunks:
                self._cache.move_to_end(digest)
                self.hits += 1
                if binder is not None and cached and not binder.is_bound(cached[-1]):
                    binder.bind_raw(cached, raw_tokens, self.chunk_size)  # bindings expired
                return cached[:num_chunks]
        self.misses += 1
        try:
            tokens = _tokens_decoder.decode(raw_tokens)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ValueError(f"token_ids: {exc}") from None
        every = self._remember(digest, raw_tokens, tokens, memo)
        if len(every) < num_chunks:
            raise ValueError(f"{num_chunks} chunks requested but the tokens hold {len(every)}")
        return every[:num_chunks]

    def prime(self, raw_tokens: bytes, tokens: list[int]) -> None:
        """Cache the hashes of ``raw_tokens`` from ``tokens``, their list already decoded.

        For an engine that decodes a request's tokens itself (the blend engine's
        fingerprint leg) before the lookup that hashes them: the lookup then hits
        this cache instead of decoding the same bytes a second time. ``tokens``
        must be ``raw_tokens`` decoded (the caller has checked them).

        Raises:
            ValueError: A token the hasher refuses.
        """
        digest = blake3.blake3(raw_tokens).digest()
        with self._lock:
            if digest in self._cache:
                return
        self._remember(digest, raw_tokens, tokens, None)

    def _remember(
        self, digest: bytes, raw_tokens: bytes, tokens: list[int], memo: RequestHashes | None
    ) -> list[bytes]:
        """Hash decoded ``tokens`` and cache the hashes under ``digest``."""
        binder = self.binder
        memo = memo or self.new_request()
        every = memo.hashes(tokens)
        if binder is not None:
            # Bound before the store that uses them commits, so its record has the tokens.
            binder.bind_raw(every, raw_tokens, self.chunk_size)
        with self._lock:
            self._cache[digest] = every
            self._cache.move_to_end(digest)
            while len(self._cache) > self.entries:
                self._cache.popitem(last=False)
        return every
