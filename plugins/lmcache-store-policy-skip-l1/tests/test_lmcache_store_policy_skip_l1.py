"""Tests of the lmcache-store-policy-skip-l1 plugin distribution."""

from __future__ import annotations

from lmcache_core.plugin import PluginKind
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.storage.l2.policies import StorePolicy


def test_registered_and_built() -> None:
    registry = PluginRegistry(strict=True)
    spec = registry.resolve(PluginKind.STORE_POLICY, "skip_l1")
    assert registry.owner(spec).distribution == "lmcache-store-policy-skip-l1"
    assert spec.not_implemented is None
    policy = registry.build(PluginKind.STORE_POLICY, "skip_l1")
    assert isinstance(policy, StorePolicy)
    assert list(policy.targets(3)) == [0, 1, 2]
    assert policy.keep_in_l1 is False
