"""The fingerprint index: upstream's hash and chunk rules, namespaced, bounded, collision-safe."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
from lmcache_engine_blend.fingerprint import BASE, STALE_STRIKES, FingerprintIndex, Match
from lmcache_engine_blend.fingerprinting_store import decode_tokens

C = 16
NS = ("model", 1, "")


def naive_poly(tokens: list[int]) -> int:
    value = 0
    for tok in tokens:
        value = (value * BASE + tok) % (1 << 64)
    return value


def doc(seed: int, n: int = C) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 50000, n, dtype=np.uint64)


def chains(n: int, tag: bytes = b"h") -> list[bytes]:
    return [tag + bytes([i]) * 31 for i in range(n)]


@pytest.mark.parametrize("dtype", [np.uint64, np.uint32])
def test_rolling_hash_is_upstreams_polynomial_at_every_offset(dtype: type) -> None:
    # uint32: how the prompt cache keeps a prompt's tokens (the products widen them).
    index = FingerprintIndex(C)
    tokens = np.random.default_rng(1).integers(0, 1 << 32, 5 * C + 7, dtype=np.uint64)
    tokens = tokens.astype(dtype)
    rolled = index.rolling(tokens)
    assert rolled.dtype == np.uint64
    assert len(rolled) == len(tokens) - C + 1
    for s in (0, 1, 7, C, len(tokens) - C):
        assert int(rolled[s]) == naive_poly([int(t) for t in tokens[s : s + C]])
    assert index.rolling(tokens[: C - 1]).size == 0


def test_match_at_unaligned_offsets_returns_the_stored_position_and_chain_hash() -> None:
    index = FingerprintIndex(C)
    stored = np.concatenate([doc(1), doc(2), doc(3)])
    assert index.register(NS, stored, chains(3), 0, 256) == 3
    query = np.concatenate([doc(9, 5), doc(3), doc(2), doc(9, 3)])
    assert index.match(NS, query) == [
        Match(256 + 2 * C, 5, chains(3)[2]),
        Match(256 + C, 5 + C, chains(3)[1]),
    ]


def test_duplicates_are_reported_at_their_first_occurrence_only() -> None:
    index = FingerprintIndex(C)
    index.register(NS, doc(1), chains(1), 0, 0)
    query = np.concatenate([doc(1), doc(4), doc(1)])
    assert [m.cur_st for m in index.match(NS, query)] == [0]


def test_first_chunk_skip_and_partial_chunks_are_never_indexed() -> None:
    index = FingerprintIndex(C)
    stored = np.concatenate([doc(1), doc(2), doc(3, C // 2)])
    assert index.register(NS, stored, chains(2), 1, 0) == 1  # chunk 0 skipped, tail partial
    assert index.match(NS, doc(1)) == []
    assert [m.old_st for m in index.match(NS, doc(2))] == [C]
    assert index.match(NS, np.concatenate([doc(3, C // 2), doc(3, C // 2)])) == []


def test_namespaces_are_isolated_and_foreign_strikes_cannot_erase() -> None:
    index = FingerprintIndex(C)
    index.register(NS, doc(1), chains(1), 0, 0)
    other = ("model", 1, "tenant-b")
    assert index.match(other, doc(1)) == []
    assert index.match(("model-2", 1, ""), doc(1)) == []
    assert index.match(("model", 2, ""), doc(1)) == []
    for _ in range(3):
        assert index.stale(other, chains(1)) == 0
    assert len(index.match(NS, doc(1))) == 1


def test_two_strikes_remove_a_found_in_between_resets() -> None:
    index = FingerprintIndex(C)
    index.register(NS, doc(1), chains(1), 0, 0)
    assert index.stale(NS, chains(1)) == 0
    index.found(NS, chains(1))
    assert index.stale(NS, chains(1)) == 0
    assert index.stale(NS, chains(1)) == 1
    assert STALE_STRIKES == 2
    assert index.match(NS, doc(1)) == []
    assert index.stats.removed_stale == 1
    # Registering again brings it back.
    assert index.register(NS, doc(1), chains(1), 0, 0) == 1
    assert len(index.match(NS, doc(1))) == 1


def test_dedup_content_indexes_one_entry_per_text() -> None:
    plain, dedup = FingerprintIndex(C), FingerprintIndex(C, dedup_content=True)
    for index in (plain, dedup):
        index.register(NS, doc(1), [b"a" * 32], 0, 0)
        index.register(NS, doc(1), [b"b" * 32], 0, C)
    assert len(plain) == 2 and len(dedup) == 1
    # Without dedup the newest of the two is reported.
    assert plain.match(NS, doc(1)) == [Match(C, 0, b"b" * 32)]
    assert dedup.match(NS, doc(1)) == [Match(0, 0, b"a" * 32)]


def test_capacity_evicts_the_oldest_registered_and_counts_it() -> None:
    index = FingerprintIndex(C, capacity=3)
    for i in range(5):
        index.register(NS, doc(i), [bytes([i]) * 32], 0, i * C)
    assert len(index) == 3
    assert index.stats.evicted_capacity == 2
    assert index.match(NS, doc(0)) == [] and index.match(NS, doc(1)) == []
    assert [m.chain_hash for m in index.match(NS, doc(4))] == [bytes([4]) * 32]
    assert index.status()["entries"] == 3


def test_same_fingerprint_different_text_never_matches() -> None:
    index = FingerprintIndex(C)
    index.register(NS, doc(1), chains(1), 0, 0)
    # Forge a collision: the entry's second digest disagrees with the query's text.
    entry = next(iter(index._spaces[NS].by_hash.values()))
    entry.digest = b"\0" * 8
    assert index.match(NS, doc(1)) == []
    assert index.stats.collisions_rejected == 1


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        FingerprintIndex(0)


def test_decode_tokens_gives_uint64_and_refuses_what_is_not_uint32() -> None:
    decoded = decode_tokens(msgspec.msgpack.encode([0, 1, 127, 128, 65536, (1 << 32) - 1]))
    assert decoded.dtype == np.uint64
    assert decoded.tolist() == [0, 1, 127, 128, 65536, (1 << 32) - 1]
    for bad in ([-1], [1 << 32], ["a"], {"a": 1}):
        with pytest.raises(ValueError, match="uint32"):
            decode_tokens(msgspec.msgpack.encode(bad))
    with pytest.raises(ValueError, match="uint32"):
        decode_tokens(b"\xc1")  # not msgpack
