"""Tests of the lmcache-eviction-isolated-lru plugin distribution."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from lmcache_eviction_isolated_lru.policy import IsolatedLRUEvictionPolicy

from lmcache_core.plugin import PluginKind
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.storage.eviction import (
    EvictionPolicy,
    EvictionSettings,
    IsolatedEvictionPolicy,
    quota_eviction_targets,
)
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.quota import GIB, QuotaManager
from lmcache_core.testing.eviction_conformance import EvictionPolicyConformance
from lmcache_core.testing.plugin_checks import assert_registered_plugin, readme_adapter_examples


def settings(quotas: QuotaManager | None) -> EvictionSettings:
    return EvictionSettings(0.8, 0.2, 1 << 30, quotas)


def chunks(request: str, n: int, salt: str = "") -> list[ObjectKey]:
    """The keys of one request's ``n`` chunks under ``salt``, in prefix order."""
    return [ObjectKey(f"{request}{i}".encode(), "model", 0, 0, salt) for i in range(n)]


def names(keys: object) -> list[str]:
    return [k.chunk_hash.decode() for k in keys]  # type: ignore[attr-defined]


def test_registered_implemented_and_built_through_the_registry() -> None:
    spec = assert_registered_plugin(
        PluginKind.EVICTION_POLICY, "IsolatedLRU", "lmcache-eviction-isolated-lru"
    )
    assert spec.config_model is None
    registry = PluginRegistry(strict=True)
    policy = registry.build(PluginKind.EVICTION_POLICY, "isolated_lru", settings(QuotaManager()))
    assert isinstance(policy, IsolatedLRUEvictionPolicy)
    assert isinstance(policy, IsolatedEvictionPolicy)
    assert isinstance(policy, EvictionPolicy)


def test_the_lru_policy_is_not_isolated() -> None:
    lru = PluginRegistry(strict=True).build(PluginKind.EVICTION_POLICY, "LRU", settings(None))
    assert not isinstance(lru, IsolatedEvictionPolicy)


def test_refuses_to_build_without_quotas() -> None:
    with pytest.raises(ValueError, match="quota manager"):
        PluginRegistry(strict=True).build(PluginKind.EVICTION_POLICY, "IsolatedLRU", settings(None))


def test_each_salt_has_its_own_prefix_keeping_lru() -> None:
    policy = IsolatedLRUEvictionPolicy(QuotaManager())
    policy.on_stored(chunks("a", 3, "alice"))
    policy.on_stored(chunks("b", 2, "bob"))
    policy.on_stored(chunks("c", 2, "alice"))
    assert names(policy.salt_candidates("alice")) == ["a2", "a1", "a0", "c1", "c0"]
    assert names(policy.salt_candidates("bob")) == ["b1", "b0"]
    assert list(policy.salt_candidates("nobody")) == []
    # The global order (for the tier's watermark) interleaves the salts by recency.
    assert names(policy.candidates()) == ["a2", "a1", "a0", "b1", "b0", "c1", "c0"]
    assert sorted(policy.salts()) == ["alice", "bob"]
    assert len(policy) == 7


def test_access_refreshes_keys_in_their_salt_and_globally() -> None:
    policy = IsolatedLRUEvictionPolicy(QuotaManager())
    a, b = chunks("a", 3, "s"), chunks("b", 2, "s")
    policy.on_stored(a)
    policy.on_stored(b)
    policy.on_stored(chunks("x", 1, "other"))
    policy.on_accessed(a[:2])  # a lookup hit on a's first two chunks
    assert names(policy.salt_candidates("s")) == ["a2", "b1", "b0", "a1", "a0"]
    assert names(policy.candidates()) == ["a2", "b1", "b0", "x0", "a1", "a0"]
    policy.on_accessed(chunks("z", 2, "s"))  # unknown keys: ignored, not started
    assert len(policy) == 6


def test_a_mixed_batch_is_split_per_salt_in_prefix_order() -> None:
    policy = IsolatedLRUEvictionPolicy(QuotaManager())
    batch = [*chunks("p", 2, "one"), *chunks("q", 2, "two")]
    policy.on_stored(batch)
    assert names(policy.salt_candidates("one")) == ["p1", "p0"]
    assert names(policy.salt_candidates("two")) == ["q1", "q0"]


def test_removal_forgets_keys_and_empty_salts() -> None:
    policy = IsolatedLRUEvictionPolicy(QuotaManager())
    a = chunks("a", 2, "s")
    policy.on_stored(a)
    policy.on_stored(chunks("b", 1, "t"))
    iterator = policy.salt_candidates("s")
    first = next(iterator)
    policy.on_removed([first])  # removal while a caller iterates: tolerated
    assert names(iterator) == ["a0"]
    policy.on_removed(a)
    assert policy.salts() == ["t"]
    assert names(policy.candidates()) == ["b0"]
    assert a[0] not in policy
    policy.on_removed(chunks("unknown", 2, "nope"))  # ignored


def test_quota_targets_of_the_policy() -> None:
    quotas = QuotaManager()
    quotas.set_limit("big", 1.0)
    quotas.set_limit("small", 1.0)
    policy = IsolatedLRUEvictionPolicy(quotas)
    usage = {"big": GIB, "small": GIB // 2, "stranger": 1000, "": 5}
    targets = quota_eviction_targets(policy, usage, 0.8, 0.2)
    # Below 80 % of its limit: untouched. Unregistered (the empty salt too): everything.
    assert targets == {"big": GIB - (math.ceil(0.8 * GIB) - 1), "stranger": 1000, "": 5}
    # What stays of "big" is just below its watermark, so the next cycle leaves it alone.
    left = GIB - targets["big"]
    assert left < 0.8 * GIB
    assert quota_eviction_targets(policy, {"big": left}, 0.8, 0.2) == {}


def test_the_readme_example_is_a_valid_adapter_with_isolated_lru() -> None:
    registry = PluginRegistry(strict=True)
    readme = Path(__file__).parents[1] / "README.md"
    for example in readme_adapter_examples(readme):
        spec = registry.resolve(PluginKind.L2_ADAPTER, example["type"])
        assert spec.config_model is not None
        config = spec.config_model.model_validate(example)
        eviction = config.eviction  # type: ignore[attr-defined]
        policy = registry.resolve(PluginKind.EVICTION_POLICY, eviction.eviction_policy)
        assert policy.name == "IsolatedLRU"


class TestIsolatedLRUConformance(EvictionPolicyConformance):
    """The shared rules of the eviction contract, the isolated ones included."""

    def make_policy(self, settings: EvictionSettings) -> EvictionPolicy:
        registry = PluginRegistry(strict=True)
        policy = registry.build(PluginKind.EVICTION_POLICY, "IsolatedLRU", settings)
        assert isinstance(policy, IsolatedEvictionPolicy)
        return policy
