"""Tests of the lmcache-engine-blend plugin distribution."""

from __future__ import annotations

from lmcache_engine_blend.settings import BlendEngineSettings

from lmcache_core.plugin import EngineSpec, PluginKind
from lmcache_core.testing.plugin_checks import assert_registered_plugin


def test_registered_with_its_flags() -> None:
    spec = assert_registered_plugin(PluginKind.ENGINE, "blend", "lmcache-engine-blend")
    assert isinstance(spec, EngineSpec)
    assert spec.not_implemented is None
    assert spec.transfer_modes == {"lmcache_driven", "auto"}
    assert spec.config_model is BlendEngineSettings
    assert set(BlendEngineSettings.model_fields) == {
        "enable_dedup_content",
        "enable_blend_reorder",
    }
