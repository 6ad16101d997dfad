"""The prompt cache: a prompt decoded once per distinct raw token list, matched the same."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec
import numpy as np
import pytest
from lmcache_engine_blend.fingerprint import FingerprintIndex, Prompt
from lmcache_engine_blend.prompt_cache import MIN_BASED_BYTES, PromptCache

from lmcache_core.protocol.types import pack_token_blob

C = 16
NS = ("model", 1, "")


def raw_of(tokens: list[int]) -> bytes:
    return msgspec.msgpack.encode(tokens)


Primed = list[tuple[int, int]]
PrimeFn = Callable[[bytes, Sequence[int], list[bytes], int], list[bytes]]


def based_rig(
    seed: int,
) -> tuple[FingerprintIndex, np.random.Generator, np.ndarray, PromptCache, Primed, PrimeFn]:
    """200 documents registered (over MIN_BASED_BYTES), a cache, and a prime that records calls.

    The prime records ``(base hashes offered, tokens shared)`` and returns a hash per chunk.
    """
    index = FingerprintIndex(C)
    rng = np.random.default_rng(seed)
    docs = rng.integers(0, 128000, 200 * C, dtype=np.uint64)
    index.register(NS, docs, [i.to_bytes(32, "big") for i in range(200)], 1, 0)
    primed: Primed = []

    def prime(raw: bytes, ids: Sequence[int], known: list[bytes], shared: int) -> list[bytes]:
        primed.append((len(known), shared))
        return [bytes([n % 256]) * 32 for n in range(len(ids) // C)]

    return index, rng, docs, PromptCache(C), primed, prime


def test_a_prompt_seen_again_is_not_decoded_again() -> None:
    cache = PromptCache(C)
    tokens = list(range(100, 100 + 3 * C))
    decoded: list[Sequence[int]] = []

    def prime(raw: bytes, ids: Sequence[int], known: list[bytes], shared: int) -> list[bytes]:
        decoded.append(ids)
        return []

    first = cache.get(raw_of(tokens), 3 * C, prime)
    again = cache.get(raw_of(tokens), 3 * C, prime)
    assert again is first and [list(d) for d in decoded] == [tokens]
    assert first.tokens.tolist() == tokens and first.tokens.dtype == np.uint32
    # Another end is another prompt (the key's window bounds it).
    shorter = cache.get(raw_of(tokens), 2 * C)
    assert len(shorter) == 2 * C and shorter is not first
    status = cache.status() | {"tokens": 0, "shared_tokens": 0}
    assert status == {"entries": 2, "tokens": 0, "hits": 1, "misses": 2, "shared_tokens": 0}


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


def test_a_prompt_starting_like_a_recent_one_takes_its_tokens_windows_and_hashes() -> None:
    """The fresh-prompt path: only the new tail is decoded, fingerprinted and hashed."""
    index, rng, docs, cache, primed, prime = based_rig(5)
    first_tokens = [*docs.tolist(), *rng.integers(0, 128000, 7).tolist()]
    first = cache.get(raw_of(first_tokens), len(first_tokens), prime)
    expected_first = index.match(NS, np.array(first_tokens, dtype=np.uint64))
    assert index.match(NS, first) == expected_first and len(expected_first) == 199
    assert len(raw_of(first_tokens)) >= MIN_BASED_BYTES
    tail = rng.integers(0, 128000, 3 * C).tolist()
    second_tokens = first_tokens + tail
    second = cache.get(raw_of(second_tokens), len(second_tokens), prime)
    assert second.tokens.tolist() == second_tokens
    assert primed == [(0, 0), (200, len(first_tokens))]  # the base's 200 chunk hashes offered
    assert cache.status()["shared_tokens"] == len(first_tokens)
    shared_windows = len(first_tokens) - C + 1
    assert set(second._digests) == {p for p in first._digests if p < shared_windows}
    assert index.match(NS, second) == index.match(NS, np.array(second_tokens, dtype=np.uint64))
    assert np.array_equal(second.polys(index), index.rolling(second.tokens))
    # A list that differs early shares only its first tokens, and is still exact.
    third_tokens = list(first_tokens)
    third_tokens[30 * C + 3] ^= 1  # past the probe bytes: the same base
    third = cache.get(raw_of(third_tokens), len(third_tokens) - 2, prime)
    assert third.tokens.tolist() == third_tokens[:-2]
    assert primed[-1] == (203, 30 * C + 3)  # the base: the most recent, second
    assert np.array_equal(third.polys(index), index.rolling(third.tokens))
    assert index.match(NS, third) == index.match(NS, third.tokens)


def test_a_bad_list_after_a_shared_prefix_is_refused_and_not_kept() -> None:
    cache = PromptCache(C)
    good = list(range(1000, 1000 + 200 * C))  # over MIN_BASED_BYTES
    cache.get(raw_of(good), len(good))
    for bad in ([*good, 2**32], [*good, -1], [*good, "a"]):
        with pytest.raises(ValueError, match="uint32"):
            cache.get(raw_of(bad), len(bad))
    truncated = raw_of([*good, 5])[:-1]
    with pytest.raises(ValueError, match="uint32"):
        cache.get(truncated, len(good))
    with pytest.raises(ValueError, match="uint32"):
        cache.get(raw_of(good) + b"\x01", len(good))  # trailing bytes
    assert cache.status() | {"tokens": 0} == {
        "entries": 1,
        "tokens": 0,
        "hits": 0,
        "misses": 1,
        "shared_tokens": 0,
    }


def test_a_plan_is_kept_for_one_match_and_shared_with_a_prompt_that_matched_the_same() -> None:
    index = FingerprintIndex(C)
    rng = np.random.default_rng(6)
    docs = rng.integers(0, 128000, 200 * C, dtype=np.uint64)
    index.register(NS, docs, [i.to_bytes(32, "big") for i in range(200)], 1, 0)
    cache = PromptCache(C)
    tokens = [*docs.tolist(), 1, 2, 3]
    prompt = cache.get(raw_of(tokens), len(tokens))
    matches, token = index.match_with_token(NS, prompt)
    assert len(matches) == 199 and prompt.plan(token, "k") is None
    prompt.keep_plan(token, "k", "plan")
    again, same = index.match_with_token(NS, prompt)
    assert same is token and again == matches and prompt.plan(same, "k") == "plan"
    assert prompt.plan(same, "other key") is None
    # A prompt sharing its windows that matches the same: the same token, the plan with it.
    longer = cache.get(raw_of([*tokens, 4, 5]), len(tokens) + 2)
    longer_matches, longer_token = index.match_with_token(NS, longer)
    assert longer_matches == matches and longer_token is token
    assert longer.plan(longer_token, "k") == "plan"
    # Any change of the index: a new match, a new token, no plan.
    index.register(
        NS, rng.integers(0, 128000, 2 * C, dtype=np.uint64), [b"x" * 32, b"y" * 32], 1, 0
    )
    _, newer = index.match_with_token(NS, prompt)
    assert newer is not token and prompt.plan(newer, "k") is None
    assert index.match_with_token(("other", 1, ""), prompt) == ([], None)


@pytest.mark.parametrize("seed", range(6))
def test_prompts_based_on_others_match_exactly_as_their_own_tokens(seed: int) -> None:
    """Repeated texts on both sides of the shared windows, random points of divergence."""
    rng = np.random.default_rng(seed)
    index = FingerprintIndex(C)
    docs = rng.integers(0, 128000, 200 * C, dtype=np.uint64)
    index.register(NS, docs, [i.to_bytes(32, "big") for i in range(200)], 1, 0)
    cache = PromptCache(C)
    chunks = [docs[i * C : (i + 1) * C].tolist() for i in range(200)]
    order = rng.permutation(200).tolist()
    base = [t for i in order for t in chunks[i]]
    prompt = cache.get(raw_of(base), len(base))
    assert index.match(NS, prompt) == index.match(NS, np.array(base, dtype=np.uint64))
    for _ in range(4):
        keep = int(rng.integers(C, len(base)))
        # Texts seen before, and enough of them that the list stays over MIN_BASED_BYTES.
        count = 5 + max(0, 3200 - keep) // C
        repeated = [t for i in rng.choice(200, count).tolist() for t in chunks[i]]
        tokens = base[:keep] + rng.integers(0, 128000, 7).tolist() + repeated
        derived = cache.get(raw_of(tokens), len(tokens))
        assert derived.tokens.tolist() == tokens
        assert index.match(NS, derived) == index.match(NS, np.array(tokens, dtype=np.uint64))
        base = tokens
    assert cache.status()["shared_tokens"] > 0  # the based path ran


def blob_of(tokens: list[int]) -> bytes:
    return bytes(pack_token_blob(tokens))


def test_a_blob_prompt_is_the_list_prompt_and_is_based_on_recent_blobs() -> None:
    """Either form gives the same tokens, fingerprints and matches; blobs share with blobs."""
    index, rng, docs, cache, primed, prime = based_rig(8)
    first_tokens = [*docs.tolist(), *rng.integers(0, 128000, 7).tolist()]
    as_list = cache.get(raw_of(first_tokens), len(first_tokens))
    as_blob = cache.get(blob_of(first_tokens), len(first_tokens), prime)
    assert as_blob is not as_list and as_blob.tokens.tolist() == first_tokens
    assert as_blob.tokens.dtype == np.uint32
    assert np.array_equal(as_blob.polys(index), as_list.polys(index))
    assert index.match(NS, as_blob) == index.match(NS, as_list)
    assert primed == [(0, 0)]  # a list is no blob's base
    second_tokens = first_tokens[:-7] + rng.integers(0, 128000, 2 * C).tolist()
    second = cache.get(blob_of(second_tokens), len(second_tokens) - 1, prime)
    assert second.tokens.tolist() == second_tokens[:-1]
    assert primed[-1] == (200, len(first_tokens) - 7)  # the tokens before the tails differ
    assert np.array_equal(second.polys(index), index.rolling(second.tokens))
    assert index.match(NS, second) == index.match(NS, second.tokens)
    # And a list after the blobs is decoded in full (a blob is no list's base) and exact.
    third = cache.get(raw_of(second_tokens), len(second_tokens))
    assert third.tokens.tolist() == second_tokens
    assert cache.get(blob_of(second_tokens), len(second_tokens) - 1) is second  # a hit


def test_a_malformed_blob_is_refused() -> None:
    with pytest.raises(ValueError, match="token_ids"):
        PromptCache(C).get(msgspec.msgpack.encode(b"abcdef"), 1)


def test_find_gives_the_chain_hashes_prime_made_for_these_bytes() -> None:
    cache = PromptCache(C)
    tokens = list(range(100, 100 + 3 * C))
    made = [b"a" * 32, b"b" * 32, b"c" * 32]

    def prime(raw: bytes, ids: Sequence[int], known: list[bytes], shared: int) -> list[bytes]:
        return list(made)

    prompt, hashes = cache.find(raw_of(tokens), 3 * C, prime)
    again, hashes_again = cache.find(raw_of(tokens), 3 * C, prime)  # a hit: kept ones
    assert again is prompt and hashes == hashes_again == made
    assert cache.get(raw_of(tokens), 3 * C, prime) is prompt
    assert cache.find(raw_of(tokens), 2 * C)[1] == []  # no prime: no hashes
