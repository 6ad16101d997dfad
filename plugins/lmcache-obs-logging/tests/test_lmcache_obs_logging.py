"""Tests of the lmcache-obs-logging plugin distribution."""

from __future__ import annotations

from lmcache_obs_logging.subscriber import EventLogSubscriber

from lmcache_core.plugin import PluginKind, SubscriberCategory, SubscriberSpec
from lmcache_core.testing.plugin_checks import assert_registered_plugin


def test_registered_and_builds_an_event_log_subscriber() -> None:
    spec = assert_registered_plugin(PluginKind.SUBSCRIBER, "logging", "lmcache-obs-logging")
    assert isinstance(spec, SubscriberSpec)
    assert spec.category is SubscriberCategory.LOGGING
    assert spec.enabled_when is None
    assert spec.config_model is None
    assert isinstance(spec.factory(None), EventLogSubscriber)
