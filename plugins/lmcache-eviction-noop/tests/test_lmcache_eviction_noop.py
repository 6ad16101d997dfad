"""Tests of the lmcache-eviction-noop plugin distribution."""

from __future__ import annotations

from lmcache_eviction_noop.policy import NoopEvictionPolicy

from lmcache_core.plugin import PluginKind
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.storage.eviction import EvictionPolicy, EvictionSettings
from lmcache_core.testing.eviction_conformance import EvictionPolicyConformance

SETTINGS = EvictionSettings(trigger_watermark=0.8, eviction_ratio=0.2, capacity_bytes=1 << 30)


def test_registered_and_built_through_the_registry() -> None:
    registry = PluginRegistry(strict=True)
    spec = registry.resolve(PluginKind.EVICTION_POLICY, "noop")
    assert spec.not_implemented is None
    assert spec.config_model is None
    record = registry.owner(spec)
    assert record.distribution == "lmcache-eviction-noop"
    assert record.specs == [spec]
    policy = registry.build(PluginKind.EVICTION_POLICY, "noop", SETTINGS)
    assert isinstance(policy, NoopEvictionPolicy)
    assert isinstance(policy, EvictionPolicy)


def test_resolves_in_other_spellings() -> None:
    spec = PluginRegistry(strict=True).resolve(PluginKind.EVICTION_POLICY, "NOOP")
    assert spec.name == "noop"


class TestNoopConformance(EvictionPolicyConformance):
    """The shared rules of the eviction contract, for a policy that never evicts."""

    offers_candidates = False

    def make_policy(self, settings: EvictionSettings) -> EvictionPolicy:
        policy = PluginRegistry(strict=True).build(PluginKind.EVICTION_POLICY, "noop", settings)
        assert isinstance(policy, EvictionPolicy)
        return policy
