"""Miss explanations: every cause, from a real L1 and a real L2 tier.

The L2 adapter here is an in-memory double (``DictAdapterDouble``) that runs the
real :class:`~lmcache_core.storage.l2.adapter.L2AdapterV1` machinery (framing,
header check, pool threads), with switches to corrupt a stored object, fail a
load or stall it past the tier's timeout. The servers' end-to-end tests are in
``tests/data_path/test_miss_explanations.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import msgspec
import pytest

from lmcache_core.engine.miss_explainer import (
    MAX_KEPT_ID_CHARS,
    MEMO_ENTRIES,
    LookupExplanation,
    MissExplainer,
)
from lmcache_core.engine.prefetch_pool import MAX_QUEUED, PrefetchPool
from lmcache_core.engine.recent_lookups import RecentLookups
from lmcache_core.observability.events import FirstMiss
from lmcache_core.observability.miss_causes import DESCRIPTIONS, MissCause
from lmcache_core.protocol.types import WireCacheKey
from lmcache_core.storage.keys import ObjectKey, pack_kv_rank
from lmcache_core.storage.l1 import L1Manager
from lmcache_core.storage.l2.adapter import L2AdapterV1
from lmcache_core.storage.l2.tier import AdapterEviction, L2Tier
from lmcache_core.storage.removal_history import L1_TIER
from tests.storage.doubles import KIB, make_l1
from tests.storage.test_l1 import EverywhereKept, FirstHolder, lru, store

CHUNK = 16
OBJ = 64 * KIB


class DictAdapterDouble(L2AdapterV1):
    """A stand-in L2 backend: objects in a dict, with fault switches."""

    def __init__(self, capacity_bytes: int = 0) -> None:
        super().__init__("dict", capacity_bytes=capacity_bytes, num_workers=2)
        self.objects: dict[ObjectKey, bytes] = {}
        self.fail: set[ObjectKey] = set()
        self.stall = threading.Event()  # set: loads block until released
        self.release = threading.Event()

    def _put(self, key: ObjectKey, parts: Sequence[bytes | memoryview]) -> None:
        self.objects[key] = b"".join(parts)

    def _exists(self, key: ObjectKey) -> bool:
        return key in self.objects

    def _get(self, key: ObjectKey, size: int) -> bytes | None:
        if self.stall.is_set():
            self.release.wait(10)
        if key in self.fail:
            raise OSError("injected load failure")
        return self.objects.get(key)

    def _remove(self, key: ObjectKey) -> bool:
        return self.objects.pop(key, None) is not None

    def flip_last_byte(self, key: ObjectKey) -> None:
        data = bytearray(self.objects[key])
        data[-1] ^= 0xFF
        self.objects[key] = bytes(data)


def wire_key(
    request: str, n_tokens: int, *, salt: str = "", model: str = "m", ws: int = 1
) -> WireCacheKey:
    return WireCacheKey(
        model_name=model,
        world_size=ws,
        worker_id=0,
        token_ids=msgspec.Raw(msgspec.msgpack.encode([1] * n_tokens)),
        start=0,
        end=n_tokens,
        request_id=request,
        cache_salt=salt,
    )


def object_keys(
    prefix: str, n: int, *, salt: str = "", model: str = "m", ws: int = 1
) -> list[ObjectKey]:
    return [
        ObjectKey(f"{prefix}{i}".encode(), model, pack_kv_rank(ws, 0), 0, salt) for i in range(n)
    ]


def explain(
    explainer: MissExplainer,
    l1: L1Manager,
    key: WireCacheKey,
    flat: list[ObjectKey],
    l1_chunks: int,
    **kw: object,
) -> LookupExplanation:
    return explainer.explain(
        key, CHUNK, flat, 1, l1, l1_chunks=l1_chunks, started=time.time(), **kw
    )  # type: ignore[arg-type]


def attached(l1: L1Manager) -> MissExplainer:
    explainer = MissExplainer()
    explainer.removals.name_tier(L1_TIER, "l1", "fifo")
    l1.removals, l1.namespaces = explainer.removals, explainer.namespaces
    return explainer


def test_a_full_hit_has_no_miss_and_a_partial_tail_is_named() -> None:
    l1 = make_l1()
    explainer = attached(l1)
    flat = object_keys("a", 2)
    store(l1, flat, nbytes=OBJ)
    full = explain(explainer, l1, wire_key("r", 2 * CHUNK), flat, 2)
    assert (full.hit_chunks, full.first_miss, full.miss_chunks_by_cause) == (2, None, {})
    assert full.hit_chunks_by_tier == {"l1": 2.0}
    tail = explain(explainer, l1, wire_key("r", 2 * CHUNK + 5), flat, 2)
    assert tail.first_miss is not None and tail.first_miss.cause == "partial_chunk"
    assert tail.first_miss.chunk == 2 and tail.miss_chunks_by_cause == {"partial_chunk": 1}
    assert tail.requested_tokens == 2 * CHUNK + 5 and tail.hit_tokens == 2 * CHUNK
    assert explainer.recent.get("r") is tail  # the latest lookup of the request
    long_id = "x" * (MAX_KEPT_ID_CHARS + 1)  # published, but not kept: the ring stays bounded
    assert explain(explainer, l1, wire_key(long_id, CHUNK), flat[:1], 1).hit_chunks == 1
    assert explainer.recent.get(long_id) is None and len(explainer.recent) == 1


def test_never_stored_other_namespaces_gap_and_being_written() -> None:
    l1 = make_l1()
    explainer = attached(l1)
    store(l1, object_keys("h", 1, salt="tenant-a"), nbytes=OBJ)
    store(l1, object_keys("m", 1, model="other"), nbytes=OBJ)
    store(l1, object_keys("w", 1, ws=2), nbytes=OBJ)
    gap = object_keys("g", 1)
    store(l1, gap, nbytes=OBJ)
    writing = object_keys("s", 1)
    assert l1.reserve(writing, OBJ)[0] is not None  # a store still writing it
    flat = [
        *object_keys("n", 1),  # never stored
        *object_keys("h", 1),  # stored under salt tenant-a, asked with no salt
        *object_keys("m", 1),  # stored for model "other"
        *object_keys("w", 1),  # stored with world size 2
        *gap,  # resident, but behind the misses
        *writing,
    ]
    explanation = explain(explainer, l1, wire_key("r", 6 * CHUNK), flat, 0)
    assert explanation.first_miss is not None
    assert (explanation.first_miss.chunk, explanation.first_miss.cause) == (0, "never_stored")
    assert explanation.miss_chunks_by_cause == {
        "never_stored": 1,
        "other_cache_salt": 1,
        "other_model": 1,
        "other_world_size": 1,
        "prefix_gap": 1,
        "being_written": 1,
    }


def test_evicted_names_tier_policy_reason_and_time_and_lost_when_forgotten() -> None:
    l1 = make_l1()  # 16 objects of 64 KiB, FIFO
    explainer = attached(l1)
    old = object_keys("old", 4)
    store(l1, old, nbytes=OBJ)
    before = time.time()
    store(l1, object_keys("new", 14), nbytes=OBJ)  # the oldest go
    explanation = explain(explainer, l1, wire_key("r", 4 * CHUNK), old, 0)
    first = explanation.first_miss
    assert first is not None and first.cause == "evicted"
    assert (first.tier, first.policy, first.reason) == ("l1", "fifo", "eviction")
    assert first.removed_at is not None and before - 1 <= first.removed_at <= time.time()
    evicted = explanation.miss_chunks_by_cause["evicted"]
    assert evicted >= 2 and sum(explanation.miss_chunks_by_cause.values()) == 4
    # Stored under this very namespace, gone with no record: "lost".
    forgotten = MissExplainer(namespaces=explainer.namespaces)
    lost = explain(forgotten, l1, wire_key("r", 4 * CHUNK), old, 0)
    assert lost.first_miss is not None and lost.first_miss.cause == "lost"


def test_not_asked_causes_apply_to_what_l1_cannot_explain() -> None:
    l1 = make_l1()
    explainer = attached(l1)
    flat = object_keys("x", 3)
    store(l1, flat[:1], nbytes=OBJ)
    limit = explain(
        explainer, l1, wire_key("r", 3 * CHUNK), flat, 1, not_asked=MissCause.PREFETCH_LIMIT
    )
    assert limit.first_miss is not None and limit.first_miss.chunk == 1
    assert limit.miss_chunks_by_cause == {"prefetch_limit": 2}


def test_a_repeated_question_gets_the_same_answer_until_a_table_or_l1_changes() -> None:
    """The kept classification of a shared keys list: reused only while nothing it read changed."""
    l1 = make_l1()  # 16 objects of 64 KiB, FIFO
    explainer = attached(l1)
    flat = object_keys("q", 4)  # one list object, as the prefix memo shares it
    key = wire_key("r", 4 * CHUNK + 3)

    def causes() -> tuple[object, dict[str, int]]:
        explanation = explain(explainer, l1, key, flat, 0)
        return explanation.first_miss, explanation.miss_chunks_by_cause

    never = causes()
    assert never[1] == {"never_stored": 4, "partial_chunk": 1}
    assert causes() == never and len(explainer._memo) == 1  # kept, and the same answer
    # Another namespace stores chunk 1's hash: the namespace index changed.
    store(l1, object_keys("q", 4, salt="tenant-a")[1:2], nbytes=OBJ)
    salted = causes()
    assert salted[1] == {"never_stored": 3, "other_cache_salt": 1, "partial_chunk": 1}
    # L1 now holds chunk 3 (presence changed): a prefix gap, not a miss by history.
    store(l1, flat[3:], nbytes=OBJ)
    gap = causes()
    assert gap[1] == {"never_stored": 2, "other_cache_salt": 1, "prefix_gap": 1, "partial_chunk": 1}
    # A removal of chunk 0 is recorded (only the history changed): evicted, with its record.
    explainer.removals.record(flat[:1], L1_TIER, "deleted", 1234.0)
    evicted = causes()
    assert evicted[1] == {
        "evicted": 1,
        "never_stored": 1,
        "other_cache_salt": 1,
        "prefix_gap": 1,
        "partial_chunk": 1,
    }
    first = evicted[0]
    assert isinstance(first, FirstMiss)
    assert (first.cause, first.tier, first.reason, first.removed_at) == (
        "evicted",
        "l1",
        "deleted",
        1234.0,
    )
    assert causes() == evicted
    explainer.removals.name_tier(L1_TIER, "l1-renamed", "fifo")  # what a report names
    renamed = causes()[0]
    assert isinstance(renamed, FirstMiss) and renamed.tier == "l1-renamed"
    # The same keys in another list (not one the prefix memo shares) are classified afresh.
    assert explain(explainer, l1, key, list(flat), 0).miss_chunks_by_cause == evicted[1]
    # Bounded: the question asked least recently is forgotten first.
    others = [object_keys(f"o{i}-", 1) for i in range(MEMO_ENTRIES + 5)]
    for i, keys in enumerate(others):
        explain(explainer, l1, wire_key(f"o{i}", CHUNK), keys, 0)
        if i % 8 == 0:
            explain(explainer, l1, key, flat, 0)  # asked again: kept
    assert len(explainer._memo) == MEMO_ENTRIES
    assert any(kept[0] is flat for kept in explainer._memo.values())
    assert not any(kept[0] is others[0] for kept in explainer._memo.values())


@pytest.fixture
def l2() -> Iterator[tuple[L1Manager, DictAdapterDouble, L2Tier, MissExplainer]]:
    l1 = make_l1()
    explainer = attached(l1)
    adapter = DictAdapterDouble()
    adapter.start()
    tier = L2Tier([adapter], l1, EverywhereKept(), FirstHolder(), max_in_flight=2, timeout_s=0.5)
    tier.removals, tier.namespaces = explainer.removals, explainer.namespaces
    explainer.removals.name_tier(1, "l2[1]:dict", None)
    yield l1, adapter, tier, explainer
    adapter.release.set()
    adapter.close()


def _into_l2_only(l1: L1Manager, tier: L2Tier, keys: list[ObjectKey]) -> None:
    store(l1, keys, nbytes=OBJ)
    assert all(tier.store_now(keys, OBJ))
    l1.delete(keys)


def test_l2_corrupt_failed_and_gap_causes(
    l2: tuple[L1Manager, DictAdapterDouble, L2Tier, MissExplainer],
) -> None:
    l1, adapter, tier, explainer = l2
    flat = object_keys("c", 4)
    _into_l2_only(l1, tier, flat)
    adapter.flip_last_byte(flat[1])
    result = tier.prefetch([[k] for k in flat], OBJ, 1)
    assert result.chunks == 1
    assert result.misses == (None, MissCause.L2_CORRUPT, MissCause.PREFIX_GAP, MissCause.PREFIX_GAP)
    explanation = explain(
        explainer,
        l1,
        wire_key("r", 4 * CHUNK),
        flat,
        0,
        l2_chunks=result.chunks,
        l2_sources=[("l2[1]:dict", 1.0)],
        l2_misses=result.misses,
    )
    assert explanation.hit_chunks == 1 and explanation.hit_chunks_by_tier == {
        "l1": 0.0,
        "l2[1]:dict": 1.0,
    }
    assert explanation.first_miss is not None
    assert (explanation.first_miss.chunk, explanation.first_miss.cause) == (1, "l2_corrupt")
    # chunk 0 is in L1 now (read-locked); chunks 2 and 3 were loaded and dropped
    assert explanation.miss_chunks_by_cause == {"l2_corrupt": 1, "prefix_gap": 2}
    l1.unlock(flat[:1])
    l1.delete(flat[:1])
    adapter.fail.add(flat[0])
    failed = tier.prefetch([[k] for k in flat], OBJ, 1)
    assert failed.chunks == 0 and failed.misses[0] == MissCause.L2_LOAD_FAILED


def test_l2_timeout_and_l1_full(
    l2: tuple[L1Manager, DictAdapterDouble, L2Tier, MissExplainer],
) -> None:
    l1, adapter, tier, _ = l2
    flat = object_keys("t", 2)
    _into_l2_only(l1, tier, flat)
    adapter.stall.set()
    slow = tier.prefetch([[k] for k in flat], OBJ, 1)
    assert slow.chunks == 0 and slow.misses[0] == MissCause.L2_TIMEOUT
    adapter.stall.clear()
    adapter.release.set()
    deadline = time.monotonic() + 10
    while l1.usage().staged_objects and time.monotonic() < deadline:
        time.sleep(0.01)  # the late load still owns its reservations until it ends
    assert l1.usage().staged_objects == 0
    big = tier.prefetch([[k] for k in flat], 4 << 20, 1)  # objects larger than the whole L1
    assert big.chunks == 0 and set(big.misses) == {MissCause.L1_FULL}


def test_l2_evictions_are_recorded_with_their_tier_and_policy() -> None:
    l1 = make_l1()
    explainer = attached(l1)
    adapter = DictAdapterDouble(capacity_bytes=4 * (OBJ + 64))  # four framed objects
    adapter.start()
    policy = lru()
    eviction = AdapterEviction(policy, trigger_watermark=0.5, eviction_ratio=0.5)
    tier = L2Tier(
        [adapter], l1, EverywhereKept(), FirstHolder(), max_in_flight=1, evictions=[eviction]
    )
    tier.removals = explainer.removals
    explainer.removals.name_tier(1, "l2[1]:dict", "lru")
    try:
        first = object_keys("e", 3)
        store(l1, first, nbytes=OBJ)
        before = time.time()
        assert all(tier.store_now(first, OBJ))  # above half the capacity: the oldest go
        gone = [k for k in first if k not in adapter.objects]
        assert gone
        removal = explainer.removals.find(gone[0])
        assert removal is not None
        assert (removal.tier, removal.policy, removal.reason) == ("l2[1]:dict", "lru", "eviction")
        assert removal.at >= before - 1
        assert all(explainer.removals.find(k) is None for k in first if k in adapter.objects)
    finally:
        adapter.close()


def test_every_cause_is_described_and_the_ring_is_bounded() -> None:
    assert set(DESCRIPTIONS) == set(MissCause)
    ring: RecentLookups[int] = RecentLookups(3)
    for index in range(5):
        ring.add(f"r{index}", index)
    ring.add("r2", 22)  # replaces and becomes the newest
    assert (len(ring), ring.get("r0"), ring.get("r1")) == (3, None, None)
    assert ring.newest(10) == [22, 4, 3]
    with pytest.raises(ValueError):
        RecentLookups(0)


def test_the_prefetch_queue_is_bounded_and_refusals_are_counted() -> None:
    pool = PrefetchPool(1)  # one running, MAX_QUEUED waiting
    pool.start()
    gate = threading.Event()
    bound = 1 + MAX_QUEUED
    try:
        accepted = [pool.submit(gate.wait, 10) for _ in range(bound + 2)]
        assert accepted == [True] * bound + [False, False]
        assert pool.refused == 2
        gate.set()
        deadline, again = time.monotonic() + 10, False
        while not again and time.monotonic() < deadline:
            again = pool.submit(lambda: None)  # room again once the queued jobs ran
            time.sleep(0.01)
        assert again
    finally:
        gate.set()
        pool.stop(5)
