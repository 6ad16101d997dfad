"""Tests of the lmcache-obs-lookup-hash-log plugin distribution."""

from __future__ import annotations

import pytest
from lmcache_obs_lookup_hash_log.plugin import lookup_hash_log_enabled
from lmcache_obs_lookup_hash_log.settings import LookupHashLogSettings

from lmcache_core.config.loading import load_config
from lmcache_core.plugin import PluginKind, SubscriberCategory, SubscriberSpec
from lmcache_core.testing.plugin_checks import assert_registered_plugin


def test_registered() -> None:
    spec = assert_registered_plugin(
        PluginKind.SUBSCRIBER, "lookup_hash_log", "lmcache-obs-lookup-hash-log"
    )
    assert isinstance(spec, SubscriberSpec)
    assert spec.category is SubscriberCategory.LOGGING
    assert spec.enabled_when is lookup_hash_log_enabled
    assert spec.config_model is LookupHashLogSettings


@pytest.mark.parametrize(("directory", "enabled"), [("", False), ("/data/lookup_hashes", True)])
def test_enabled_only_with_a_directory(directory: str, enabled: bool) -> None:
    config = load_config(
        {"l1_size_gb": 1, "eviction_policy": "LRU", "lookup_hash_log_dir": directory},
        plugins=(LookupHashLogSettings,),
    )
    assert lookup_hash_log_enabled(config) is enabled
