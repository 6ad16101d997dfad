"""The lookup-hash log passes the core's subscriber conformance suite."""

from __future__ import annotations

from pathlib import Path

from lmcache_obs_lookup_hash_log.subscriber import LookupHashLogSubscriber
from lmcache_obs_lookup_hash_log.writer import RotatingJsonlWriter

from lmcache_core.observability.bus import Subscriber
from lmcache_core.testing.subscriber_conformance import SubscriberConformance


class TestLookupHashLogConformance(SubscriberConformance):
    def make_subscriber(self, tmp_path: Path) -> Subscriber:
        writer = RotatingJsonlWriter(
            tmp_path / "lookup_hashes", rotation_interval_s=3600.0, max_size=10_000, max_files=10
        )
        return LookupHashLogSubscriber(writer)
