"""Recently looked-up prompts by their raw bytes: decoded, fingerprinted and digested once.

Decoding a prompt's msgpack token list is the largest single cost of a unified
lookup (about 0.5 ms at 64 chunks of 256 tokens: msgspec builds a Python int
per token). An engine asks about the same prompt more than once (a request the
scheduler could not admit yet is looked up again at the next step; identical
prompts across requests), so the decoded tokens, their rolling fingerprints and
the window digests checked so far are kept per distinct raw token list, keyed
by the list's blake3 digest (what the core's token hash cache keys by too) and
the key's ``end``. Bounded by entries and by tokens held; least recently used
first out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import blake3

from lmcache_engine_blend.fingerprint import Prompt
from lmcache_engine_blend.fingerprinting_store import decode_token_list

ENTRIES = 64
"""Prompts kept at most."""
MAX_TOKENS = 1 << 21
"""Tokens kept at most over every entry (about 20 bytes each with their fingerprints)."""


class PromptCache:
    """Decoded prompts by ``(blake3(raw token list), end)`` (thread-safe).

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
        self._cache: OrderedDict[tuple[bytes, int], Prompt] = OrderedDict()
        self._tokens = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(
        self, raw: bytes, end: int, decoded: Callable[[Sequence[int]], None] | None = None
    ) -> Prompt:
        """The prompt of ``raw`` (a msgpack token list) cut at ``end``.

        Args:
            raw: The key's raw token list.
            end: The key's ``end``.
            decoded: Called with the whole decoded token list (a uint32 array) when
                ``raw`` had to be decoded (a miss), so another user of the tokens
                need not decode them.

        Raises:
            ValueError: ``raw`` is not a msgpack array of uint32 values.
        """
        key = (blake3.blake3(raw).digest(), end)
        with self._lock:
            prompt = self._cache.get(key)
            if prompt is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                return prompt
        listed, tokens = decode_token_list(raw)
        if decoded is not None:
            decoded(listed)
        prompt = Prompt(tokens[:end], self.chunk_size)
        with self._lock:
            self.misses += 1
            if len(prompt) > self.max_tokens:
                return prompt  # used once, not kept
            if key not in self._cache:
                self._cache[key] = prompt
                self._tokens += len(prompt)
            while len(self._cache) > self.entries or self._tokens > self.max_tokens:
                _, dropped = self._cache.popitem(last=False)
                self._tokens -= len(dropped)
        return prompt

    def status(self) -> dict[str, int]:
        """Size and counters for ``/status``."""
        with self._lock:
            return {
                "entries": len(self._cache),
                "tokens": self._tokens,
                "hits": self.hits,
                "misses": self.misses,
            }
