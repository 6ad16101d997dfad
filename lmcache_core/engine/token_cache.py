"""Chunk hashes of token lists, cached by content.

Every lookup, store and retrieve carries the request's whole token list. Decoding
it into Python ints costs more than the rest of a lookup, so the server keeps the
list as raw msgpack and asks this cache first: the same bytes always give the
same hashes, whatever request they come from. Only a miss decodes the tokens;
then the request's own :class:`~lmcache_core.hashing.RequestHashes` reuses the
part of its previous hashes whose tokens did not change.

Entries are found by an XXH3 fingerprint of the bytes and kept with the bytes
themselves, which a hit compares in full: a fingerprint collision is a miss,
never another list's hashes. XXH3 and the comparison cost about 3 us on a
64-chunk request where a blake3 digest cost 20 us (docs/benchmarks.md, the
third pass on the lookup path); holding the bytes costs memory, so the cache is
bounded by bytes as well as by entries.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import xxhash

from lmcache_core.hashing import ChunkHasher, RequestHashes, chunk_hashes
from lmcache_core.protocol.types import decode_token_ids

DEFAULT_ENTRIES = 4096
DEFAULT_MAX_BYTES = 32 << 20
"""Token bytes kept at most (512 lists of 16,384 tokens); a longer list is not kept."""
_fingerprint = xxhash.xxh3_64_intdigest


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
        max_bytes: How many bytes of token lists to remember (the entries keep
            their bytes, to compare them on a hit).
    """

    def __init__(
        self,
        hasher: ChunkHasher,
        chunk_size: int,
        entries: int = DEFAULT_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.hasher = hasher
        self.chunk_size = chunk_size
        self.entries = entries
        self.max_bytes = max_bytes
        # fingerprint -> (the token bytes, their chunk hashes), least recent first
        self._cache: OrderedDict[int, tuple[bytes, list[bytes]]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.binder: TokenBinder | None = None
        """Told every decoded prefix's tokens (the KV event log); ``None``: nobody asks."""

    def new_request(self) -> RequestHashes:
        """A per-request memo using this cache's hasher and chunk size."""
        return RequestHashes(self.hasher, self.chunk_size)

    @property
    def held_bytes(self) -> int:
        """Bytes of token lists the cache holds."""
        return self._bytes

    def hashes(
        self, raw_tokens: bytes | memoryview, num_chunks: int, memo: RequestHashes | None = None
    ) -> list[bytes]:
        """Hashes of the first ``num_chunks`` complete chunks of ``raw_tokens``.

        Args:
            raw_tokens: The msgpack array of token ids, as received (another
                buffer is copied to bytes first: the cache keeps the bytes, and
                comparing a memoryview with bytes is a slow element-wise loop).
            num_chunks: How many chunks the caller needs.
            memo: The request's memo, used on a miss.

        Raises:
            ValueError: The tokens are not an array of uint32 values.
        """
        if type(raw_tokens) is not bytes:
            raw_tokens = bytes(raw_tokens)
        fingerprint = _fingerprint(raw_tokens)
        binder = self.binder
        with self._lock:
            entry = self._cache.get(fingerprint)
            if entry is not None and len(entry[1]) >= num_chunks and entry[0] == raw_tokens:
                self._cache.move_to_end(fingerprint)
                self.hits += 1
                cached = entry[1]
                if binder is not None:
                    self.keep_bound(cached, raw_tokens)
                return cached[:num_chunks]
        self.misses += 1
        tokens = decode_token_ids(raw_tokens)
        every = self._hash_and_remember(fingerprint, raw_tokens, tokens, memo)
        if len(every) < num_chunks:
            raise ValueError(f"{num_chunks} chunks requested but the tokens hold {len(every)}")
        return every[:num_chunks]

    def keep_bound(self, hashes: Sequence[bytes], raw_tokens: bytes) -> None:
        """Tell the binder ``raw_tokens``'s ``hashes`` again if its bindings of them expired.

        What :meth:`hashes` does on a hit, for an engine that kept what :meth:`prime`
        returned and hands those hashes to the lookup itself (the blend engine's
        prompt cache): a KV event recorded for these chunks still finds their tokens.
        """
        binder = self.binder
        if binder is not None and hashes and not binder.is_bound(hashes[-1]):
            binder.bind_raw(hashes, raw_tokens, self.chunk_size)

    def prime(
        self, raw_tokens: bytes, tokens: Sequence[int], known: Sequence[bytes] = ()
    ) -> list[bytes]:
        """Cache the hashes of ``raw_tokens`` from ``tokens``, their list already decoded.

        For an engine that decodes a request's tokens itself (the blend engine's
        fingerprint leg) before the lookup that hashes them: the lookup then hits
        this cache instead of decoding the same bytes a second time. ``tokens``
        must be ``raw_tokens`` decoded (the caller has checked them); a uint32
        ``array.array`` is packed for the hasher without building a Python int
        per token.

        Args:
            raw_tokens: The msgpack token list.
            tokens: ``raw_tokens`` decoded.
            known: The hashes of the first ``len(known)`` chunks, if the caller
                has them (a list that starts with the same tokens as one this
                cache hashed: the blend engine's prompt sharing a prefix); only
                the chunks after them are hashed.

        Returns:
            The hashes of every complete chunk of ``tokens``.

        Raises:
            ValueError: A token the hasher refuses.
        """
        fingerprint = _fingerprint(raw_tokens)
        with self._lock:
            entry = self._cache.get(fingerprint)
            if entry is not None and entry[0] == raw_tokens:
                return entry[1]
        size = self.chunk_size
        known = list(known[: len(tokens) // size])
        if not known:
            return self._hash_and_remember(fingerprint, raw_tokens, tokens, None)
        rest = chunk_hashes(self.hasher, tokens, size, start_chunk=len(known), parent=known[-1])
        every = known + rest
        if self.binder is not None:
            self.binder.bind_raw(every, raw_tokens, size)
        self._remember(fingerprint, raw_tokens, every)
        return every

    def _hash_and_remember(
        self, fingerprint: int, raw_tokens: bytes, tokens: Sequence[int], memo: RequestHashes | None
    ) -> list[bytes]:
        """Hash decoded ``tokens``, tell the binder, and cache the hashes."""
        every = (memo or self.new_request()).hashes(tokens)
        binder = self.binder
        if binder is not None:
            # Bound before the store that uses them commits, so its record has the tokens.
            binder.bind_raw(every, raw_tokens, self.chunk_size)
        self._remember(fingerprint, raw_tokens, every)
        return every

    def _remember(self, fingerprint: int, kept: bytes, hashes: list[bytes]) -> None:
        """Keep an entry (replacing a colliding one), then evict down to both bounds."""
        cache = self._cache
        with self._lock:
            old = cache.pop(fingerprint, None)
            if old is not None:
                self._bytes -= len(old[0])
            if len(kept) > self.max_bytes:
                return
            cache[fingerprint] = (kept, hashes)
            self._bytes += len(kept)
            while len(cache) > self.entries or self._bytes > self.max_bytes:
                _, (dropped, _) = cache.popitem(last=False)
                self._bytes -= len(dropped)
