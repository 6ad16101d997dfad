"""Tests of the lmcache-eviction-lru plugin distribution."""

from __future__ import annotations

from lmcache_eviction_lru.policy import LRUEvictionPolicy

from lmcache_core.plugin import PluginKind
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.storage.eviction import EvictionPolicy, EvictionSettings
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.testing.eviction_conformance import EvictionPolicyConformance

SETTINGS = EvictionSettings(trigger_watermark=0.8, eviction_ratio=0.2, capacity_bytes=1 << 30)


def chunks(request: str, n: int) -> list[ObjectKey]:
    """The keys of one request's ``n`` chunks, in prefix order."""
    return [ObjectKey(f"{request}{i}".encode(), "model", 0) for i in range(n)]


def names(keys: object) -> list[str]:
    return [k.chunk_hash.decode() for k in keys]  # type: ignore[attr-defined]


def test_registered_and_built_through_the_registry(plugin_registry: PluginRegistry) -> None:
    # plugin_registry: the strict registry fixture lmcache-core's pytest plugin provides.
    registry = plugin_registry
    spec = registry.resolve(PluginKind.EVICTION_POLICY, "LRU")
    assert spec.name == "LRU"
    assert spec.not_implemented is None
    assert spec.config_model is None
    assert spec.description
    record = registry.owner(spec)
    assert record.distribution == "lmcache-eviction-lru"
    assert record.specs == [spec]
    policy = registry.build(PluginKind.EVICTION_POLICY, "LRU", SETTINGS)
    assert isinstance(policy, LRUEvictionPolicy)
    assert isinstance(policy, EvictionPolicy)


def test_resolves_in_other_spellings() -> None:
    spec = PluginRegistry(strict=True).resolve(PluginKind.EVICTION_POLICY, "lru")
    assert spec.name == "LRU"


def test_least_recent_batch_goes_first() -> None:
    policy = LRUEvictionPolicy()
    policy.on_stored(chunks("a", 3))
    policy.on_stored(chunks("b", 2))
    assert names(policy.candidates()) == ["a2", "a1", "a0", "b1", "b0"]


def test_access_makes_keys_most_recent_with_the_same_batch_rule() -> None:
    policy = LRUEvictionPolicy()
    a, b = chunks("a", 3), chunks("b", 2)
    policy.on_stored(a)
    policy.on_stored(b)
    policy.on_accessed(a[:2])  # a lookup hit on the first two chunks of a
    assert names(policy.candidates()) == ["a2", "b1", "b0", "a1", "a0"]


def test_an_access_with_untracked_keys_orders_the_tracked_ones_alike() -> None:
    """Untracked keys anywhere in an access (the fast pass fails on them) are ignored."""
    a, b, x = chunks("a", 3), chunks("b", 2), chunks("x", 2)
    for accessed, expected in (
        ([a[0], x[0], a[1]], ["a2", "b1", "b0", "a1", "a0"]),
        ([x[1], a[1], a[0]], ["a2", "b1", "b0", "a0", "a1"]),
        ([a[0], a[1], x[0]], ["a2", "b1", "b0", "a1", "a0"]),
    ):
        policy = LRUEvictionPolicy()
        policy.on_stored(a)
        policy.on_stored(b)
        policy.on_accessed(accessed)
        assert names(policy.candidates()) == expected
        assert len(policy) == 5


def test_storing_a_tracked_key_again_refreshes_it() -> None:
    policy = LRUEvictionPolicy()
    a, b = chunks("a", 2), chunks("b", 1)
    policy.on_stored(a)
    policy.on_stored(b)
    policy.on_stored(a)
    assert names(policy.candidates()) == ["b0", "a1", "a0"]
    assert len(policy) == 3


def test_large_batches_stay_cheap() -> None:
    policy = LRUEvictionPolicy()
    keys = chunks("z", 50_000)
    policy.on_stored(keys)
    policy.on_accessed(keys[:25_000])
    first = next(policy.candidates())
    assert first == keys[-1]
    policy.on_removed(keys)
    assert len(policy) == 0


class TestLRUConformance(EvictionPolicyConformance):
    """The shared rules of the eviction contract (lmcache_core.testing)."""

    def make_policy(self, settings: EvictionSettings) -> EvictionPolicy:
        policy = PluginRegistry(strict=True).build(PluginKind.EVICTION_POLICY, "LRU", settings)
        assert isinstance(policy, EvictionPolicy)
        return policy
