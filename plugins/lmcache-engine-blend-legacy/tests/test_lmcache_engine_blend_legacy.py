"""Tests of the lmcache-engine-blend-legacy plugin distribution: registration and op table."""

from __future__ import annotations

from lmcache_core.plugin import EngineSpec, PluginKind
from lmcache_core.protocol.ops import LEGACY_BLEND_OPS, LEGACY_IDS, OPS
from lmcache_core.testing.plugin_checks import assert_registered_plugin

LEGACY = {
    "cb_register_kv_cache",
    "cb_unregister_kv_cache",
    "cb_store_pre_computed",
    "cb_store_final",
    "cb_lookup_pre_computed_v2",
    "cb_retrieve_pre_computed_v2",
}


def test_registered_and_implemented() -> None:
    spec = assert_registered_plugin(
        PluginKind.ENGINE, "blend_legacy", "lmcache-engine-blend-legacy"
    )
    assert isinstance(spec, EngineSpec)
    assert spec.transfer_modes == {"lmcache_driven", "auto"}
    assert spec.not_implemented is None


def test_the_legacy_operations_are_served_by_name_only() -> None:
    assert {spec.name for spec in LEGACY_BLEND_OPS} == LEGACY
    assert all(OPS[name].legacy_id is None for name in LEGACY)
    assert not LEGACY & set(LEGACY_IDS.values())  # no numeric id reaches them
