"""The prompt cache: a prompt decoded once per distinct raw token list, matched the same."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np
import pytest
from lmcache_engine_blend.fingerprint import FingerprintIndex, Prompt
from lmcache_engine_blend.prompt_cache import PromptCache

C = 16
NS = ("model", 1, "")


def raw_of(tokens: list[int]) -> bytes:
    return msgspec.msgpack.encode(tokens)


def test_a_prompt_seen_again_is_not_decoded_again() -> None:
    cache = PromptCache(C)
    tokens = list(range(100, 100 + 3 * C))
    decoded: list[Sequence[int]] = []
    first = cache.get(raw_of(tokens), 3 * C, decoded.append)
    again = cache.get(raw_of(tokens), 3 * C, decoded.append)
    assert again is first and [list(d) for d in decoded] == [tokens]
    assert first.tokens.tolist() == tokens and first.tokens.dtype == np.uint64
    # Another end is another prompt (the key's window bounds it).
    shorter = cache.get(raw_of(tokens), 2 * C)
    assert len(shorter) == 2 * C and shorter is not first
    assert cache.status() | {"tokens": 0} == {"entries": 2, "tokens": 0, "hits": 1, "misses": 2}


def test_bad_tokens_are_refused_and_not_kept() -> None:
    cache = PromptCache(C)
    for bad in ([2**32], [-1], ["a"], [True]):
        with pytest.raises(ValueError, match="uint32"):
            cache.get(raw_of(bad), 1)
    assert cache.status()["entries"] == 0


def test_bounded_by_entries_and_tokens() -> None:
    cache = PromptCache(C, entries=3, max_tokens=5 * C)
    for seed in range(6):
        cache.get(raw_of([seed] * 2 * C), 2 * C)
    assert cache.status()["entries"] == 2 and cache.status()["tokens"] == 4 * C
    big = cache.get(raw_of([7] * 6 * C), 6 * C)  # over the token bound: served, not kept
    assert len(big) == 6 * C and cache.status()["entries"] == 2


def test_matching_a_cached_prompt_equals_matching_its_tokens() -> None:
    index = FingerprintIndex(C)
    rng = np.random.default_rng(3)
    stored = rng.integers(0, 50000, 4 * C, dtype=np.uint64)
    index.register(NS, stored, [bytes([i]) * 32 for i in range(4)], 1, 0)
    query = np.concatenate([stored[2 * C :], rng.integers(0, 50000, 5, dtype=np.uint64), stored])
    prompt = Prompt(query, C)
    expected = index.match(NS, query)
    assert len(expected) == 3
    assert index.match(NS, prompt) == expected
    assert index.match(NS, prompt) == expected  # memoised polys and digests: the same again


def test_a_memoised_match_follows_every_change_of_the_index() -> None:
    index = FingerprintIndex(C)
    rng = np.random.default_rng(4)
    first, second = (rng.integers(0, 50000, 2 * C, dtype=np.uint64) for _ in range(2))
    index.register(NS, first, [b"a" * 32, b"b" * 32], 1, 0)
    prompt = Prompt(np.concatenate([second, first]), C)
    assert [m.chain_hash for m in index.match(NS, prompt)] == [b"b" * 32]
    index.register(NS, second, [b"c" * 32, b"d" * 32], 1, 0)  # a new entry: matched now
    assert [m.chain_hash for m in index.match(NS, prompt)] == [b"d" * 32, b"b" * 32]
    for _ in range(2):  # struck twice: removed, and no longer matched
        index.stale(NS, [b"d" * 32])
    assert [m.chain_hash for m in index.match(NS, prompt)] == [b"b" * 32]
    assert index.match(("other", 1, ""), prompt) == []  # another namespace: its own answer
    found = index.match(NS, prompt)
    found.clear()  # the caller's list: the memo is not changed through it
    assert [m.chain_hash for m in index.match(NS, prompt)] == [b"b" * 32]
