"""Tests of the lmcache-obs-logging plugin distribution."""

from __future__ import annotations

from lmcache_core.plugin import PluginKind, SubscriberCategory, SubscriberSpec
from lmcache_core.testing.plugin_checks import assert_pending_plugin


def test_registered_and_pending() -> None:
    spec = assert_pending_plugin(
        PluginKind.SUBSCRIBER, "logging", "lmcache-obs-logging", "observability issue (#5)"
    )
    assert isinstance(spec, SubscriberSpec)
    assert spec.category is SubscriberCategory.LOGGING
    assert spec.enabled_when is None
    assert spec.config_model is None
