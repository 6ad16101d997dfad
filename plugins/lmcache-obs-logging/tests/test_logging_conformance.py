"""The logging subscriber passes the core's subscriber conformance suite."""

from __future__ import annotations

import logging
from pathlib import Path

from lmcache_obs_logging.subscriber import EventLogSubscriber

from lmcache_core.observability.bus import Subscriber
from lmcache_core.testing.subscriber_conformance import SubscriberConformance


class TestEventLogSubscriberConformance(SubscriberConformance):
    def make_subscriber(self, tmp_path: Path) -> Subscriber:
        # At DEBUG every event formats a line, so every line's code runs.
        logger = logging.getLogger("tests.lmcache.events.conformance")
        logger.setLevel(logging.DEBUG)
        return EventLogSubscriber(logger, summary_interval_s=0.0)
