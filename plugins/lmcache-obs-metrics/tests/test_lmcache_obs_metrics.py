"""Tests of the lmcache-obs-metrics plugin distribution: what it registers."""

from __future__ import annotations

import subprocess
import sys

from lmcache_obs_metrics.settings import MetricsSettings

from lmcache_core.plugin import HttpRouterSpec, PluginKind, SubscriberCategory, SubscriberSpec
from lmcache_core.plugin.registry import PluginRegistry

DISTRIBUTION = "lmcache-obs-metrics"


def test_registers_the_subscriber_and_its_route() -> None:
    registry = PluginRegistry(strict=True)
    subscriber = registry.resolve(PluginKind.SUBSCRIBER, "metrics")
    router = registry.resolve(PluginKind.HTTP_ROUTER, "metrics")
    assert isinstance(subscriber, SubscriberSpec)
    assert isinstance(router, HttpRouterSpec)
    record = registry.owner(subscriber)
    assert record.distribution == DISTRIBUTION
    assert registry.owner(router).distribution == DISTRIBUTION
    assert sorted(type(s).__name__ for s in record.specs) == ["HttpRouterSpec", "SubscriberSpec"]
    assert subscriber.not_implemented is None and router.not_implemented is None
    assert subscriber.category is SubscriberCategory.METRICS
    assert subscriber.enabled_when is None
    assert subscriber.config_model is MetricsSettings
    assert "Prometheus" in subscriber.description
    assert router.prefix == ""


def test_listing_the_plugins_does_not_build_the_subscriber() -> None:
    # `lmcache plugins list` loads plugin.py; the subscriber modules load only when built.
    code = (
        "import sys\n"
        "from lmcache_core.plugin import PluginKind\n"
        "from lmcache_core.plugin.registry import PluginRegistry\n"
        "PluginRegistry(strict=True).specs(PluginKind.SUBSCRIBER)\n"
        "assert 'lmcache_obs_metrics.plugin' in sys.modules\n"
        "assert 'lmcache_obs_metrics.subscriber' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
