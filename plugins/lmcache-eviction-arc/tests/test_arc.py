"""Tests of the lmcache-eviction-arc plugin distribution."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from lmcache_eviction_arc.policy import ARCEvictionPolicy

from lmcache_core.plugin import PluginKind
from lmcache_core.plugin.registry import ENTRY_POINT_GROUP, PluginRegistry
from lmcache_core.storage.eviction import EvictionPolicy, EvictionSettings
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.testing.eviction_conformance import EvictionPolicyConformance

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
SETTINGS = EvictionSettings(trigger_watermark=0.8, eviction_ratio=0.2, capacity_bytes=1 << 30)


def registry() -> PluginRegistry:
    """A strict registry of the entry points pyproject.toml declares (no install needed)."""
    group = tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"][ENTRY_POINT_GROUP]
    entry_points = [metadata.EntryPoint(n, v, ENTRY_POINT_GROUP) for n, v in group.items()]
    return PluginRegistry(strict=True, entry_points=entry_points)


def chunks(request: str, n: int) -> list[ObjectKey]:
    return [ObjectKey(f"{request}{i}".encode(), "model", 0) for i in range(n)]


def names(keys: object) -> list[str]:
    return [k.chunk_hash.decode() for k in keys]  # type: ignore[attr-defined]


def test_registered_under_its_name_and_spellings() -> None:
    for spelling in ("ARC", "arc"):
        spec = registry().resolve(PluginKind.EVICTION_POLICY, spelling)
        assert spec.name == "ARC" and spec.description and spec.not_implemented is None
    policy = registry().build(PluginKind.EVICTION_POLICY, "ARC", SETTINGS)
    assert isinstance(policy, ARCEvictionPolicy)


def test_a_hit_protects_a_key_from_a_scan_of_new_keys() -> None:
    # LRU would evict the hit chunk once enough newer keys arrive; ARC keeps T2 for last.
    policy = ARCEvictionPolicy()
    hot, scan = chunks("h", 2), chunks("s", 6)
    policy.on_stored(hot)
    policy.on_accessed(hot)
    policy.on_stored(scan)
    order = names(policy.candidates())
    assert order[-2:] == ["h1", "h0"]
    assert order[:6] == ["s5", "s4", "s3", "s2", "s1", "s0"]


def test_a_ghost_of_t1_grows_the_target_and_comes_back_into_t2() -> None:
    policy = ARCEvictionPolicy()
    a, b = chunks("a", 2), chunks("b", 2)
    policy.on_stored(a)
    policy.on_stored(b)
    policy.on_removed(a)  # evicted from T1: ghosts in B1
    assert policy.sizes == (2, 0, 2, 0)
    policy.on_stored(a[:1])  # recomputed: recency was underrated
    assert policy.target == 1.0
    assert policy.sizes == (2, 1, 1, 0)
    # T1 (b) is above the target of 1: one of its keys goes first, then T2, then T1's rest.
    assert names(policy.candidates()) == ["b1", "a0", "b0"]


def test_a_ghost_of_t2_shrinks_the_target() -> None:
    policy = ARCEvictionPolicy()
    a = chunks("a", 2)
    policy.on_stored(a)
    policy.on_accessed(a)
    policy.target = 1.0
    policy.on_removed(a[1:])  # evicted from T2: a ghost in B2
    policy.on_stored(a[1:])
    assert policy.target == 0.0
    assert policy.sizes == (0, 2, 0, 0)


def test_ghost_lists_stay_bounded_by_the_tracked_peak() -> None:
    policy = ARCEvictionPolicy()
    for index in range(50):
        keys = chunks(f"r{index}-", 4)
        policy.on_stored(keys)
        policy.on_removed(keys)
    t1, t2, b1, b2 = policy.sizes
    assert (t1, t2) == (0, 0)
    assert b1 <= policy.capacity == 4 and b2 == 0


class TestARCConformance(EvictionPolicyConformance):
    """The shared rules of the eviction contract (lmcache_core.testing)."""

    def make_policy(self, settings: EvictionSettings) -> EvictionPolicy:
        policy = registry().build(PluginKind.EVICTION_POLICY, "ARC", settings)
        assert isinstance(policy, EvictionPolicy)
        return policy
