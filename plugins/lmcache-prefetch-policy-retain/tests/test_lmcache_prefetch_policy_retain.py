"""Tests of the lmcache-prefetch-policy-retain plugin distribution."""

from __future__ import annotations

from lmcache_core.plugin import PluginKind
from lmcache_core.testing.plugin_checks import assert_pending_plugin


def test_registered_and_pending() -> None:
    spec = assert_pending_plugin(
        PluginKind.PREFETCH_POLICY, "retain", "lmcache-prefetch-policy-retain", "L2 issue (#4)"
    )
    assert spec.config_model is None
