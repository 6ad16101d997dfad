"""Segmented retention of the L2 prefetch controller (:class:`Retention`), on real parts.

Real L1 (anonymous memory), the real tier, and real adapters built through the
plugin registry: ``fs`` in a temporary directory, and ``fault_inject`` around it
for failed loads. The scenario is upstream's prefetch-controller test: keys
{0, 1, 3, 4} stored, a gap at 2. ``PREFIX`` retains {0, 1}; ``SEGMENTED`` retains
{0, 1, 3, 4}, all read-locked, with 2 absent; the hit count is 2 either way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from lmcache_core.observability.miss_causes import MissCause
from lmcache_core.plugin import L2AdapterSpec, PluginKind, PrefetchPolicySpec, StorePolicySpec
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l1 import L1Manager
from lmcache_core.storage.l2.adapter import L2AdapterV1
from lmcache_core.storage.l2.context import L2AdapterContext
from lmcache_core.storage.l2.tier import L2Tier, PrefetchResult, Retention
from tests.storage.doubles import KIB, check_l1, make_l1

OBJ = 16 * KIB
WAIT_S = 10.0
PREFIX, SEGMENTED = Retention.PREFIX, Retention.SEGMENTED


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return PluginRegistry(strict=True)


def build_adapter(registry: PluginRegistry, raw: dict[str, Any]) -> L2AdapterV1:
    spec = registry.resolve(PluginKind.L2_ADAPTER, raw["type"])
    assert isinstance(spec, L2AdapterSpec) and spec.config_model is not None
    config = spec.config_model.model_validate(raw)
    adapter = registry.builder.l2_adapter(spec, config, L2AdapterContext(registry=registry))
    adapter.start()
    return adapter


class Rig:
    """One L1, one tier over one adapter (real policies), and the keys of a request."""

    def __init__(self, registry: PluginRegistry, adapter: L2AdapterV1, width: int = 1) -> None:
        self.l1: L1Manager = make_l1()
        self.adapter = adapter
        store = registry.resolve(PluginKind.STORE_POLICY, "default")
        prefetch = registry.resolve(PluginKind.PREFETCH_POLICY, "default")
        assert isinstance(store, StorePolicySpec) and isinstance(prefetch, PrefetchPolicySpec)
        self.tier = L2Tier(
            [adapter],
            self.l1,
            registry.builder.store_policy(store),
            registry.builder.prefetch_policy(prefetch),
            max_in_flight=2,
            timeout_s=WAIT_S,
        )
        self.chunks = [
            [ObjectKey(bytes([i, r]) * 16, "seg/model", r) for r in range(width)] for i in range(5)
        ]

    def payload(self, key: ObjectKey) -> bytes:
        return key.chunk_hash[:2] * (OBJ // 2)

    def store_in_l2(self, indices: Sequence[int]) -> None:
        keys = [k for i in indices for k in self.chunks[i]]
        stored = self.adapter.submit_store(keys, [self.payload(k) for k in keys]).result(WAIT_S)
        assert stored == [True] * len(keys)

    def prefetch(self, retention: Retention, readers: int = 1) -> PrefetchResult:
        return self.tier.prefetch(self.chunks, OBJ, readers, retention=retention)

    def resident(self) -> set[int]:
        present = self.l1.contains([k for chunk in self.chunks for k in chunk])
        width = len(self.chunks[0])
        return {i for i in range(5) if all(present[i * width : (i + 1) * width])}

    def readers(self, index: int) -> list[int]:
        with self.l1._lock:  # the lock counts, as check_l1 reads them
            return [self.l1._resident[k].readers for k in self.chunks[index]]

    def bytes_ok(self, index: int) -> bool:
        views = self.l1.read_views(self.chunks[index])
        return all(
            bytes(view.numpy()) == self.payload(k)
            for view, k in zip(views, self.chunks[index], strict=True)
        )

    def close(self) -> None:
        self.adapter.close()
        self.l1.close()


@pytest.fixture
def fs_rig(registry: PluginRegistry, tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(registry, build_adapter(registry, {"type": "fs", "base_path": str(tmp_path)}))
    yield rig
    rig.close()


def gapped_rig(registry: PluginRegistry, tmp_path: Path, **faults: Any) -> Rig:
    inner = {"type": "fs", "base_path": str(tmp_path)}
    adapter = build_adapter(registry, {"type": "fault_inject", "inner": inner, **faults})
    return Rig(registry, adapter)


# -- a gap in L2 (chunk 2 never stored) -----------------------------------------------------


def test_prefix_retains_the_leading_run_only(fs_rig: Rig) -> None:
    fs_rig.store_in_l2([0, 1, 3, 4])
    result = fs_rig.prefetch(PREFIX)
    assert result.chunks == 2
    assert result.found == (True, True, False, False, False)
    assert result.post_gap == ()
    assert fs_rig.resident() == {0, 1}
    assert fs_rig.readers(0) == fs_rig.readers(1) == [1]
    assert fs_rig.tier.stats.prefetched_chunks == 2
    check_l1(fs_rig.l1)


def test_segmented_retains_every_found_chunk_locked_and_counts_the_leading_run(
    fs_rig: Rig,
) -> None:
    fs_rig.store_in_l2([0, 1, 3, 4])
    result = fs_rig.prefetch(SEGMENTED, readers=2)
    assert result.chunks == 2  # the hit count stays the leading-ones run
    assert result.found == (True, True, False, True, True)
    assert result.post_gap == (3, 4)
    assert result.keys_by_adapter == (4,)
    assert fs_rig.resident() == {0, 1, 3, 4}
    for index in (0, 1, 3, 4):
        assert fs_rig.readers(index) == [2]
        assert fs_rig.bytes_ok(index)
    retained = result.retained_keys(fs_rig.chunks)
    assert retained == [k for i in (0, 1, 3, 4) for k in fs_rig.chunks[i]]
    # Read-locked: nothing deletes them until the caller gives its locks back; the
    # default prefetch policy loads temporary objects, freed with their last lock.
    assert fs_rig.l1.delete(retained) == 0
    fs_rig.l1.unlock(retained, 1)
    assert fs_rig.resident() == {0, 1, 3, 4}
    fs_rig.l1.unlock(retained, 1)
    assert fs_rig.resident() == set()
    check_l1(fs_rig.l1)


def test_segmented_with_nothing_past_the_gap_is_the_prefix(fs_rig: Rig) -> None:
    fs_rig.store_in_l2([0, 1])
    # Chunks 2-4 are in no adapter: L2 cannot say why (the caller's history decides).
    expected = PrefetchResult(2, (2,), (None,) * 5, (True, True, False, False, False))
    assert fs_rig.prefetch(SEGMENTED) == expected
    fs_rig.l1.unlock(expected.retained_keys(fs_rig.chunks))
    assert fs_rig.prefetch(PREFIX) == expected


def test_segmented_without_a_leading_chunk_still_retains_the_rest(fs_rig: Rig) -> None:
    fs_rig.store_in_l2([1, 2])
    result = fs_rig.prefetch(SEGMENTED)
    assert (result.chunks, result.found) == (0, (False, True, True, False, False))
    assert fs_rig.resident() == {1, 2}
    fs_rig.l1.unlock(result.retained_keys(fs_rig.chunks))
    # Chunks 1-2 are held but behind the missing chunk 0: a prefix gap.
    gap = MissCause.PREFIX_GAP
    assert fs_rig.prefetch(PREFIX) == PrefetchResult(0, (), (None, gap, gap, None, None))


def test_a_post_gap_chunk_already_in_l1_is_retained_and_locked(fs_rig: Rig) -> None:
    fs_rig.store_in_l2([0, 1, 3])
    chunk4 = fs_rig.chunks[4]
    reserved = [r for r in fs_rig.l1.reserve(chunk4, OBJ) if r is not None]
    fs_rig.l1.commit(reserved)  # in L1 only (no adapter holds it)
    assert fs_rig.prefetch(PREFIX).found == (True, True, False, False, False)
    fs_rig.l1.unlock([k for i in (0, 1) for k in fs_rig.chunks[i]])
    result = fs_rig.prefetch(SEGMENTED)
    assert result.found == (True, True, False, True, True)
    assert fs_rig.readers(4) == [1]
    assert result.keys_by_adapter == (3,)  # chunk 4 came from no adapter


def test_a_chunk_missing_one_rank_is_not_retained(registry: PluginRegistry, tmp_path: Path) -> None:
    rig = Rig(registry, build_adapter(registry, {"type": "fs", "base_path": str(tmp_path)}), 2)
    try:
        rig.store_in_l2([0, 1, 2, 4])
        rank0_of_3 = rig.chunks[3][:1]
        assert rig.adapter.submit_store(rank0_of_3, [rig.payload(rank0_of_3[0])]).result(WAIT_S)
        result = rig.prefetch(SEGMENTED)
        assert (result.chunks, result.found) == (3, (True, True, True, False, True))
        assert rig.resident() == {0, 1, 2, 4}
        assert rig.l1.contains(rank0_of_3) == [False]  # never loaded: its chunk is unusable
        assert rig.readers(4) == [1, 1]
        check_l1(rig.l1)
    finally:
        rig.close()


# -- a failed load mid-prefix (fault_inject) ---------------------------------------------------


@pytest.mark.parametrize("faults", [{"gap_indices": [2]}, {"gap_tail_ratios": [0.5]}])
def test_a_failed_mid_prefix_load(
    registry: PluginRegistry, tmp_path: Path, faults: dict[str, Any]
) -> None:
    rig = gapped_rig(registry, tmp_path, **faults)
    try:
        rig.store_in_l2(range(5))
        prefix = rig.prefetch(PREFIX)
        assert (prefix.chunks, prefix.found) == (2, (True, True, False, False, False))
        # The post-gap loads succeeded but nothing can use them: freed, not resident.
        assert rig.resident() == {0, 1}
        assert rig.tier.stats.prefetch_failures == 3
        rig.l1.unlock(prefix.retained_keys(rig.chunks))
        rig.l1.clear()
        segmented = rig.prefetch(SEGMENTED)
        assert (segmented.chunks, segmented.found) == (2, (True, True, False, True, True))
        # The failed chunk is explained as such; the retained ones past it are a gap.
        gap = MissCause.PREFIX_GAP
        assert segmented.misses == (None, None, MissCause.L2_LOAD_FAILED, gap, gap)
        assert rig.resident() == {0, 1, 3, 4}
        assert all(rig.readers(i) == [1] for i in (0, 1, 3, 4))
        assert all(rig.bytes_ok(i) for i in (0, 1, 3, 4))
        assert rig.adapter.status()["fault_inject"]["injected_failures"] == 2
        assert rig.l1.usage().staged_objects == 0  # the failed reservation was aborted
        check_l1(rig.l1)
    finally:
        rig.close()
