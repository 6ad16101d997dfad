"""Tests of the template plugin: its registration and its FIFO policy."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from lmcache_plugin_template.policy import FifoEvictionPolicy

from lmcache_core.plugin import EvictionPolicySpec, PluginKind
from lmcache_core.plugin.registry import ENTRY_POINT_GROUP, PluginRegistry

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


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
    assert isinstance(
        registry.build(PluginKind.EVICTION_POLICY, "example_fifo"), FifoEvictionPolicy
    )


def test_evicts_in_insertion_order_regardless_of_access() -> None:
    policy = FifoEvictionPolicy()
    for key in ("a", "b", "c"):
        policy.on_insert(key)
    policy.on_access("a")
    policy.on_insert("a")  # a second insert keeps the original place
    assert policy.victims(2) == ["a", "b"]
    assert policy.victims(10) == ["a", "b", "c"]


def test_victims_are_kept_until_removed() -> None:
    policy = FifoEvictionPolicy()
    policy.on_insert("a")
    policy.on_insert("b")
    assert policy.victims(1) == ["a"]
    assert policy.victims(1) == ["a"]
    policy.on_remove("a")
    policy.on_remove("unknown")
    assert policy.victims(1) == ["b"]
    assert len(policy) == 1
    assert "a" not in policy


def test_victims_skip_keys_the_filter_rejects() -> None:
    policy = FifoEvictionPolicy()
    for key in range(5):
        policy.on_insert(key)
    assert policy.victims(2, evictable=lambda key: key % 2 == 1) == [1, 3]
    assert policy.victims(0) == []


def test_negative_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="n must be >= 0"):
        FifoEvictionPolicy().victims(-1)
