"""Tests of the template plugin: its registration and its FIFO policy."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from lmcache_plugin_template.policy import FifoEvictionPolicy, build_fifo_policy

from lmcache_core.plugin import EvictionPolicySpec, PluginKind
from lmcache_core.plugin.registry import ENTRY_POINT_GROUP, PluginRegistry
from lmcache_core.storage.eviction import EvictionPolicy, EvictionSettings
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.testing.eviction_conformance import EvictionPolicyConformance

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
SETTINGS = EvictionSettings(trigger_watermark=0.8, eviction_ratio=0.2, capacity_bytes=1 << 30)


def key(name: str) -> ObjectKey:
    return ObjectKey(name.encode(), "model", 0)


def declared_entry_points() -> list[metadata.EntryPoint]:
    """The entry points pyproject.toml declares, so the test needs no install."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    group = project["entry-points"][ENTRY_POINT_GROUP]
    return [metadata.EntryPoint(name, value, ENTRY_POINT_GROUP) for name, value in group.items()]


def test_declared_entry_point_registers_the_policy() -> None:
    registry = PluginRegistry(strict=True, entry_points=declared_entry_points())
    spec = registry.resolve(PluginKind.EVICTION_POLICY, "example_fifo")
    assert isinstance(spec, EvictionPolicySpec)
    assert spec.not_implemented is None
    assert registry.owner(spec).specs == [spec]
    policy = registry.build(PluginKind.EVICTION_POLICY, "example_fifo", SETTINGS)
    assert isinstance(policy, FifoEvictionPolicy)
    assert isinstance(policy, EvictionPolicy)  # the core's protocol


def test_evicts_in_store_order_regardless_of_access() -> None:
    a, b, c = key("a"), key("b"), key("c")
    policy = FifoEvictionPolicy()
    policy.on_stored([a, b])
    policy.on_stored([c])
    policy.on_accessed([a])
    policy.on_stored([a])  # a second store keeps the original place
    assert list(policy.candidates()) == [a, b, c]


class TestFifoConformance(EvictionPolicyConformance):
    """The shared rules of the eviction contract; FIFO evicts chunk 0 of a batch first."""

    keeps_prefixes = False

    def make_policy(self, settings: EvictionSettings) -> EvictionPolicy:
        return build_fifo_policy(settings)
