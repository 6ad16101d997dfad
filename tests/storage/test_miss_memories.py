"""The bounded memories behind miss explanations: the removal history and the namespace index.

And that L1 records into them: evictions by policy and by quota, deletions,
and the namespace of every commit.
"""

from __future__ import annotations

import pytest

from lmcache_core.storage.keys import ObjectKey, pack_kv_rank
from lmcache_core.storage.namespace_index import BYTES_PER_ENTRY as INDEX_BYTES
from lmcache_core.storage.namespace_index import Namespace, NamespaceIndex
from lmcache_core.storage.removal_history import BYTES_PER_ENTRY as HISTORY_BYTES
from lmcache_core.storage.removal_history import L1_TIER, RemovalHistory
from tests.storage.doubles import KIB, chunks, make_l1
from tests.storage.test_l1 import store

OBJ = 64 * KIB


def keys(prefix: str, n: int, *, salt: str = "", model: str = "m", ws: int = 1) -> list[ObjectKey]:
    return [
        ObjectKey(f"{prefix}{i}".encode(), model, pack_kv_rank(ws, 0), 0, salt) for i in range(n)
    ]


def test_history_remembers_tier_policy_reason_and_time() -> None:
    history = RemovalHistory(1024)
    history.name_tier(L1_TIER, "l1", "lru")
    history.name_tier(1, "l2[1]:fs", None)
    a, b = keys("a", 2), keys("b", 1)
    history.record(a, L1_TIER, "eviction", 100.0)
    history.record(b, 1, "quota", 200.0)
    removal = history.find(a[1])
    assert removal is not None
    assert (removal.tier, removal.policy, removal.reason, removal.at) == (
        "l1",
        "lru",
        "eviction",
        100.0,
    )
    assert history.find_many([b[0], keys("never", 1)[0], a[0]]) == [
        ("l2[1]:fs", None, "quota", 200.0),
        None,
        ("l1", "lru", "eviction", 100.0),
    ]
    # A later removal of the same key replaces the earlier one.
    history.record(a[:1], 1, "deleted", 300.0)
    assert history.find(a[0]) == ("l2[1]:fs", None, "deleted", 300.0)


def test_history_is_bounded_and_forgets_rather_than_misattributes() -> None:
    history = RemovalHistory(64)
    assert history.nbytes == 64 * HISTORY_BYTES == 64 * 18
    many = keys("k", 5000)
    history.record(many, L1_TIER, "eviction", 1.0)
    remembered = [k for k, r in zip(many, history.find_many(many), strict=True) if r is not None]
    # At most one key per slot survives; every one that does is a key that was recorded.
    assert 0 < len(remembered) <= 64
    assert all(history.find(k) is not None for k in remembered)
    assert all(r is None for r in history.find_many(keys("other", 2000)))


def test_history_rejects_bad_sizes_and_reasons() -> None:
    with pytest.raises(ValueError, match="power of two"):
        RemovalHistory(1000)
    with pytest.raises(ValueError):
        RemovalHistory(8).record(keys("a", 1), L1_TIER, "vanished", 1.0)


def test_namespace_index_says_what_differs() -> None:
    index = NamespaceIndex(1024)
    assert index.nbytes == 1024 * INDEX_BYTES == 1024 * 20
    stored = keys("h", 3, salt="tenant-a")
    index.add(stored)
    asked_salt = keys("h", 1, salt="tenant-b")[0]
    asked_model = keys("h", 1, salt="tenant-a", model="other")[0]
    asked_ws = keys("h", 1, salt="tenant-a", ws=2)[0]
    found = index.find(stored[0].chunk_hash)
    assert found is not None
    assert found.difference(Namespace.of(asked_salt)) == "cache_salt"
    assert found.difference(Namespace.of(asked_model)) == "model_name"
    assert found.difference(Namespace.of(asked_ws)) == "world_size"
    assert found.difference(Namespace.of(stored[0])) is None
    assert index.find(b"never") is None
    # Mixed batches keep each key's own namespace.
    mixed = [*keys("x", 1, salt="s1"), *keys("y", 1, salt="s2", model="m2")]
    index.add(mixed)
    assert index.find_many([b"x0", b"y0", b"z0"]) == [
        Namespace.of(mixed[0]),
        Namespace.of(mixed[1]),
        None,
    ]


def test_l1_records_commits_evictions_and_deletions() -> None:
    l1 = make_l1()  # 1 MiB, FIFO policy double: 16 objects of 64 KiB
    history, index = RemovalHistory(1024), NamespaceIndex(1024)
    l1.removals, l1.namespaces = history, index
    first = chunks("a", 8)
    store(l1, first, nbytes=OBJ)
    assert index.find(first[0].chunk_hash) == Namespace.of(first[0])
    store(l1, chunks("b", 12), nbytes=OBJ)  # does not fit: the oldest of "a" make room
    evicted = [k for k in first if history.find(k) is not None]
    assert evicted and all(not l1.contains([k])[0] for k in evicted)
    assert {history.find(k).reason for k in evicted} == {"eviction"}  # type: ignore[union-attr]
    kept = [k for k in first if k not in evicted]
    assert l1.delete(kept[:1]) == 1
    assert history.find(kept[0]) == ("l1", None, "deleted", pytest.approx(history.find(kept[0]).at))  # type: ignore[union-attr]
    assert all(history.find(k) is None for k in kept[1:])


def test_presence_tells_resident_staged_and_absent_apart() -> None:
    l1 = make_l1()
    resident, staged, absent = chunks("r", 1), chunks("s", 1), chunks("n", 1)
    store(l1, resident, nbytes=OBJ)
    assert l1.reserve(staged, OBJ)[0] is not None
    assert l1.presence([*resident, *staged, *absent]) == [1, 2, 0]
