"""Tests of the lmcache-store-policy-skip-l1 plugin distribution."""

from __future__ import annotations

from lmcache_core.plugin import PluginKind
from lmcache_core.testing.plugin_checks import assert_pending_plugin


def test_registered_and_pending() -> None:
    spec = assert_pending_plugin(
        PluginKind.STORE_POLICY, "skip_l1", "lmcache-store-policy-skip-l1", "L2 issue (#4)"
    )
    assert spec.config_model is None
