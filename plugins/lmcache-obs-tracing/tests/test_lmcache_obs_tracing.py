"""Tests of the lmcache-obs-tracing plugin distribution."""

from __future__ import annotations

from lmcache_obs_tracing.settings import TracingSettings

from lmcache_core.plugin import PluginKind, SubscriberCategory, SubscriberSpec
from lmcache_core.testing.plugin_checks import assert_registered_plugin


def test_registered() -> None:
    spec = assert_registered_plugin(PluginKind.SUBSCRIBER, "tracing", "lmcache-obs-tracing")
    assert isinstance(spec, SubscriberSpec)
    assert spec.category is SubscriberCategory.TRACING
    assert spec.enabled_when is None
    assert spec.config_model is TracingSettings
