"""The fingerprint index: upstream's matcher cases, plus namespaces, capacity and collisions."""

from __future__ import annotations

import random

import numpy as np
import pytest
from lmcache_engine_blend_legacy.fingerprints import (
    BASE,
    FingerprintIndex,
    Match,
    as_tokens,
    chunk_polys,
    window_polys,
)

C = 8
SPACE = ("m", 1, "")


def tokens(seed: int, count: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1, 1 << 31) for _ in range(count)]


def hashes(tag: str, count: int) -> list[bytes]:
    return [f"{tag}{i}".encode().ljust(32, b".") for i in range(count)]


def direct(window: list[int]) -> int:
    return sum(t * pow(BASE, len(window) - 1 - j, 1 << 64) for j, t in enumerate(window)) % (
        1 << 64
    )


def test_rolling_hashes_equal_the_polynomial_at_every_offset() -> None:
    seq = [*tokens(1, 40), -1, 0, (1 << 63) - 1]
    rolled = window_polys(as_tokens(seq), C)
    assert rolled.shape == (len(seq) - C + 1,)
    expected = [direct([t % (1 << 64) for t in seq[s : s + C]]) for s in range(len(seq) - C + 1)]
    assert [int(v) for v in rolled] == expected
    chunks = chunk_polys(as_tokens(seq), C)
    assert [int(v) for v in chunks] == [expected[i * C] for i in range(len(seq) // C)]


def test_empty_index_and_short_queries_match_nothing() -> None:
    index = FingerprintIndex(C)
    assert index.match(SPACE, as_tokens(tokens(2, 3 * C))) == []
    doc = tokens(3, 2 * C)
    index.register(SPACE, as_tokens(doc), hashes("d", 2))
    assert index.match(SPACE, as_tokens(doc[: C - 1])) == []


def test_exact_multi_chunk_unaligned_and_second_chunk_only() -> None:
    index = FingerprintIndex(C)
    doc = tokens(4, 3 * C + 5)  # the partial tail is never indexed
    assert index.register(SPACE, as_tokens(doc), hashes("d", 3)) == 3
    found = index.match(SPACE, as_tokens(doc))
    assert found == [Match(i * C, i * C, h) for i, h in enumerate(hashes("d", 3))]
    shifted = [7, 7, *doc[: 2 * C]]  # unaligned: at position 2
    assert index.match(SPACE, as_tokens(shifted)) == [
        Match(0, 2, hashes("d", 1)[0]),
        Match(C, 2 + C, hashes("d", 2)[1]),
    ]
    only_second = [1, 2, 3, *doc[C : 2 * C], 4]
    assert index.match(SPACE, as_tokens(only_second)) == [Match(C, 3, hashes("d", 2)[1])]
    assert index.match(SPACE, as_tokens(tokens(5, 4 * C))) == []


def test_a_repeated_chunk_is_reported_once_at_its_first_offset() -> None:
    index = FingerprintIndex(C)
    doc = tokens(6, C)
    index.register(SPACE, as_tokens(doc), hashes("d", 1))
    assert index.match(SPACE, as_tokens(doc + [0] * 3 + doc)) == [Match(0, 0, hashes("d", 1)[0])]


def test_registrations_accumulate_and_a_known_hash_is_skipped() -> None:
    index = FingerprintIndex(C)
    a, b = tokens(7, C), tokens(8, C)
    assert index.register(SPACE, as_tokens(a), hashes("a", 1)) == 1
    assert index.register(SPACE, as_tokens(b), hashes("b", 1)) == 1
    assert index.register(SPACE, as_tokens(b), hashes("b", 1)) == 0
    found = index.match(SPACE, as_tokens(b + a))
    assert [(m.cur_st, m.hash) for m in found] == [(0, hashes("b", 1)[0]), (C, hashes("a", 1)[0])]
    assert index.status()["registered"] == 2 and len(index) == 2


def test_namespaces_are_isolated() -> None:
    index = FingerprintIndex(C)
    doc = tokens(9, C)
    index.register(("m", 1, "tenant-a"), as_tokens(doc), hashes("d", 1))
    for other in (("m", 1, "tenant-b"), ("m", 2, "tenant-a"), ("n", 1, "tenant-a")):
        assert index.match(other, as_tokens(doc)) == []
        index.remove(other, hashes("d", 1))  # another tenant cannot erase it either
    assert len(index.match(("m", 1, "tenant-a"), as_tokens(doc))) == 1


def test_capacity_evicts_the_oldest_registration_and_counts_it() -> None:
    index = FingerprintIndex(C, capacity=3)
    docs = [tokens(20 + i, C) for i in range(4)]
    for i, doc in enumerate(docs):
        index.register(SPACE, as_tokens(doc), hashes(f"x{i}", 1))
    assert len(index) == 3
    assert index.status()["evicted"] == 1
    assert index.match(SPACE, as_tokens(docs[0])) == []
    assert len(index.match(SPACE, as_tokens(docs[3]))) == 1


def test_remove_forgets_entries_and_counts_them() -> None:
    index = FingerprintIndex(C)
    doc = tokens(30, 2 * C)
    index.register(SPACE, as_tokens(doc), hashes("d", 2))
    assert index.remove(SPACE, [hashes("d", 2)[0], b"unknown"]) == 1
    assert [m.old_st for m in index.match(SPACE, as_tokens(doc))] == [C]
    assert index.status()["removed_stale"] == 1


def test_a_hash_collision_is_never_a_match(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two different chunks in one bucket: each matches only its own tokens."""
    import lmcache_engine_blend_legacy.fingerprints as fp

    def constant(values: np.ndarray, size: int) -> np.ndarray:
        return np.zeros(max(values.shape[0] - size + 1, 0), dtype=np.uint64)

    def constant_chunks(values: np.ndarray, size: int) -> np.ndarray:
        return np.zeros(values.shape[0] // size, dtype=np.uint64)

    monkeypatch.setattr(fp, "window_polys", constant)  # every window in bucket 0
    monkeypatch.setattr(fp, "chunk_polys", constant_chunks)
    index = FingerprintIndex(C)
    a, b = tokens(40, C), tokens(41, C)
    index.register(SPACE, as_tokens(a), hashes("a", 1))
    index.register(SPACE, as_tokens(b), hashes("b", 1))
    assert index.match(SPACE, as_tokens(b)) == [Match(0, 0, hashes("b", 1)[0])]
    assert index.match(SPACE, as_tokens(tokens(42, 2 * C))) == []
