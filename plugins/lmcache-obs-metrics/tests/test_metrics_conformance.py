"""The metrics subscriber passes the core's subscriber conformance suite."""

from __future__ import annotations

from pathlib import Path

from lmcache_obs_metrics.subscriber import MetricsSubscriber

from lmcache_core.observability.bus import Subscriber
from lmcache_core.testing.subscriber_conformance import SubscriberConformance


class TestMetricsSubscriberConformance(SubscriberConformance):
    def make_subscriber(self, tmp_path: Path) -> Subscriber:
        # Every chunk sampled, so the lifetime histogram's code runs too.
        return MetricsSubscriber("conformance", sample_rate=1.0)
