"""Tests of the lmcache-prefetch-policy-retain plugin distribution."""

from __future__ import annotations

from lmcache_core.plugin import PluginKind
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.storage.l2.policies import PrefetchPolicy


def test_registered_and_built() -> None:
    registry = PluginRegistry(strict=True)
    spec = registry.resolve(PluginKind.PREFETCH_POLICY, "retain")
    assert registry.owner(spec).distribution == "lmcache-prefetch-policy-retain"
    assert spec.not_implemented is None
    policy = registry.build(PluginKind.PREFETCH_POLICY, "retain")
    assert isinstance(policy, PrefetchPolicy)
    assert policy.choose([2, 0]) == 2
    assert policy.temporary is False
