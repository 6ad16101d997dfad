"""Recently looked-up prompts by their raw bytes: decoded, fingerprinted and digested once.

Decoding a prompt's msgpack token list is the largest single cost of a unified
lookup (about 0.4 ms at 64 chunks of 256 tokens: msgspec builds a Python int
per token). An engine asks about the same prompt more than once (a request the
scheduler could not admit yet is looked up again at the next step; identical
prompts across requests), so the decoded tokens, their rolling fingerprints,
the window digests checked so far and the chain hashes are kept per distinct
raw token list and the key's ``end``. Entries are found by an XXH3 fingerprint
of the bytes and keep the bytes, which a hit compares in full (a fingerprint
collision is a miss, never another prompt): XXH3 and the comparison cost a few
microseconds where a blake3 digest cost 20 at 64 chunks.

A prompt not seen before often starts like a recent one (the same documents, a
new question; the next turn). The most recent prompt with the same first
:data:`PROBE_BYTES` bytes is its *base*: the tokens whose bytes the two share
are taken from it (:mod:`~lmcache_engine_blend.token_decode`: only the rest is
decoded), with the fingerprints and digests of the windows inside them
(:meth:`~lmcache_engine_blend.fingerprint.Prompt.share_windows`) and the chain
hashes of the chunks inside them (the core's token cache is primed with them,
so the prefix leg neither decodes nor hashes them again).

Bounded by entries and by tokens held; least recently used first out.
"""

from __future__ import annotations

import array
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import xxhash

from lmcache_core.protocol.types import blob_tokens, token_blob
from lmcache_engine_blend.fingerprint import Prompt
from lmcache_engine_blend.token_decode import (
    TokenEnds,
    decode_after,
    decode_full,
    shared_blob_tokens,
    token_ends,
)

ENTRIES = 64
"""Prompts kept at most."""
MAX_TOKENS = 1 << 21
"""Tokens kept at most over every entry (about 35 bytes each: raw bytes, uint32 and
uint64 tokens, token ends, fingerprints)."""
PROBE_BYTES = 512
"""A prompt's base is the most recent one whose body starts with the same this many bytes."""
MIN_BASED_BYTES = 4096
"""Shorter lists (about 1,200 tokens) are decoded in full and hashed afresh: finding the
shared prefix and the tail's token ends has a fixed cost (about 55 us, min of 5 runs)
that only pays with the decode, hashes, fingerprints, screen and matches it saves."""

Prime = Callable[[bytes, "array.array[int]", list[bytes], int], list[bytes]]
"""``(raw, tokens, base hashes, shared tokens) -> raw's chain hashes``: primes the core's cache."""

_fingerprint = xxhash.xxh3_64_intdigest


@dataclass
class _Entry:
    raw: bytes
    prompt: Prompt
    ids: array.array[int]
    ends: TokenEnds | None
    """Token ends (:func:`token_ends`); None: not known yet, or the bytes are not the
    shortest encoding (then ``ends_checked``)."""
    hashes: list[bytes]
    probe: int | None
    ends_checked: bool = False

    def token_ends(self) -> TokenEnds | None:
        """:attr:`ends`, computed the first time this entry is a base (most never are)."""
        if not self.ends_checked:
            ends = token_ends(self.raw, np.frombuffer(self.ids, dtype=np.uint32))
            self.ends = TokenEnds(ends) if ends is not None else None
            self.ends_checked = True
        return self.ends


def _probe(raw: bytes) -> int | None:
    """The fingerprint of the body's first :data:`PROBE_BYTES` (None: a list too short)."""
    if len(raw) < MIN_BASED_BYTES:
        return None
    return _fingerprint(raw[5 : 5 + PROBE_BYTES])  # past any array header's length


class PromptCache:
    """Decoded prompts by ``(XXH3(raw token list), end)``, the bytes compared (thread-safe).

    Args:
        chunk_size: Tokens per chunk (of the fingerprint index the prompts are matched in).
        entries: Prompts kept at most.
        max_tokens: Tokens kept at most over all entries.
    """

    def __init__(
        self, chunk_size: int, entries: int = ENTRIES, max_tokens: int = MAX_TOKENS
    ) -> None:
        self.chunk_size = chunk_size
        self.entries = entries
        self.max_tokens = max_tokens
        self._cache: OrderedDict[tuple[int, int], _Entry] = OrderedDict()
        self._probes: dict[int, _Entry] = {}
        self._tokens = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.shared_tokens = 0
        """Tokens of missed prompts taken from a base (not decoded)."""

    def get(self, raw: bytes, end: int, prime: Prime | None = None) -> Prompt:
        """The prompt of ``raw`` (a msgpack token list) cut at ``end`` (see :meth:`find`)."""
        return self.find(raw, end, prime)[0]

    def find(self, raw: bytes, end: int, prime: Prime | None = None) -> tuple[Prompt, list[bytes]]:
        """The prompt of ``raw`` (a msgpack token list) cut at ``end``, and its chain hashes.

        Args:
            raw: The key's raw token list: a msgpack array, or a uint32 blob
                (:func:`~lmcache_core.protocol.types.pack_token_blob`; its base, if
                any, must be a blob too: the tokens are shared by equal values).
            end: The key's ``end``.
            prime: Called on a miss with the whole token list (a uint32 array),
                the base's chain hashes and how many tokens it shares with the
                base; returns ``raw``'s chain hashes, kept for prompts based on
                this one.

        Returns:
            The prompt, and the chain hashes of every complete chunk of ``raw``'s
            tokens (what ``prime`` returned for it; empty without ``prime``).

        Raises:
            ValueError: ``raw`` is neither a msgpack array of uint32 values nor a blob.
        """
        key = (_fingerprint(raw), end)
        probe = _probe(raw)
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None and entry.raw == raw:
                self._cache.move_to_end(key)
                self.hits += 1
                return entry.prompt, entry.hashes
            base = self._probes.get(probe) if probe is not None else None
        blob = token_blob(raw)
        if blob is not None:  # uint32 values already: one copy, no decode
            ids, ends = blob_tokens(blob), None
            base_blob = token_blob(base.raw) if base is not None else None
            shared = shared_blob_tokens(blob, base_blob) if base_blob is not None else 0
        else:
            ids, ends, shared = self._decode_list(raw, base)
        hashes = prime(raw, ids, base.hashes if base else [], shared) if prime else []
        prompt = Prompt(np.frombuffer(ids, dtype=np.uint32)[:end], self.chunk_size)
        if base is not None and shared:
            prompt.share_windows(base.prompt, shared)
        entry = _Entry(raw, prompt, ids, ends, hashes, probe, ends_checked=ends is not None)
        with self._lock:
            self.misses += 1
            self.shared_tokens += shared
            if len(ids) > self.max_tokens:
                return prompt, hashes  # used once, not kept
            old = self._cache.pop(key, None)
            if old is not None:
                self._forget(old)
            self._cache[key] = entry
            self._tokens += len(ids)
            if probe is not None:
                self._probes[probe] = entry
            while len(self._cache) > self.entries or self._tokens > self.max_tokens:
                self._forget(self._cache.popitem(last=False)[1])
        return prompt, hashes

    @staticmethod
    def _decode_list(
        raw: bytes, base: _Entry | None
    ) -> tuple[array.array[int], TokenEnds | None, int]:
        """A msgpack list's tokens, ends and tokens shared with ``base`` (decoded after them)."""
        base_ends = base.token_ends() if base is not None else None
        if base is not None and base_ends is not None:
            decoded = decode_after(raw, base.raw, base.ids, base_ends)
            if decoded is not None:
                return decoded
        return decode_full(raw), None, 0

    def _forget(self, entry: _Entry) -> None:
        """Account for an entry taken out (lock held)."""
        self._tokens -= len(entry.ids)
        if entry.probe is not None and self._probes.get(entry.probe) is entry:
            del self._probes[entry.probe]

    def status(self) -> dict[str, int]:
        """Size and counters for ``/status``."""
        with self._lock:
            return {
                "entries": len(self._cache),
                "tokens": self._tokens,
                "hits": self.hits,
                "misses": self.misses,
                "shared_tokens": self.shared_tokens,
            }
