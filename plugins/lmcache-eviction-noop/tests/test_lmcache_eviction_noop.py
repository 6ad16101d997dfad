"""Tests of the lmcache-eviction-noop plugin distribution."""

from __future__ import annotations

from lmcache_core.plugin import PluginKind
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.testing.plugin_checks import assert_pending_plugin


def test_registered_and_pending() -> None:
    spec = assert_pending_plugin(
        PluginKind.EVICTION_POLICY, "noop", "lmcache-eviction-noop", "data-path issue (#3)"
    )
    assert spec.config_model is None


def test_resolves_in_other_spellings() -> None:
    spec = PluginRegistry(strict=True).resolve(PluginKind.EVICTION_POLICY, "NOOP")
    assert spec.name == "noop"
