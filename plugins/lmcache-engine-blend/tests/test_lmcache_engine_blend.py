"""Tests of the lmcache-engine-blend plugin distribution."""

from __future__ import annotations

from lmcache_core.plugin import EngineSpec, PluginKind
from lmcache_core.testing.plugin_checks import assert_pending_plugin


def test_registered_and_pending() -> None:
    spec = assert_pending_plugin(
        PluginKind.ENGINE, "blend", "lmcache-engine-blend", "CacheBlend V3"
    )
    assert isinstance(spec, EngineSpec)
    assert spec.transfer_modes == {"lmcache_driven", "auto"}
    assert spec.config_model is None
