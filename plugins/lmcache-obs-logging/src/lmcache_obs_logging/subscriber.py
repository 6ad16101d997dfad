"""The ``logging`` subscriber: event lines on the ``lmcache.events`` logger.

Levels:

* DEBUG, one line per event (rate limited per event type): request lifetime,
  lookups, stores, retrieves, L1 writes, L2 submissions and completions, and each
  eviction.
* INFO, rare events only: L1 allocation failures, L2 prefetch failures, L2
  stores or loads with failed objects (each rate limited), and one eviction
  summary per tier every :data:`SUMMARY_INTERVAL_SECONDS` while evictions happen.

The level in force is the ``lmcache.events`` logger's (``LMCACHE_LOG_LEVEL`` sets
the root logger it inherits from). The subscriber asks the bus only for the event
types that level can show, so at INFO the per-request events are not even
queued, and at WARNING nothing is.
"""

from __future__ import annotations

import logging
import time

from lmcache_core.observability.events import (
    Event,
    EventType,
    L1KeysEvicted,
    L2KeysEvicted,
    L2LoadCompleted,
    L2StoreCompleted,
)
from lmcache_core.observability.subscribers import BaseSubscriber
from lmcache_obs_logging.lines import FORMATTERS
from lmcache_obs_logging.ratelimit import LineRateLimiter
from lmcache_obs_logging.summary import EvictionSummary

LOGGER_NAME = "lmcache.events"

DEBUG_LINES_PER_SECOND = 50
"""Per event type: DEBUG lines beyond this per second are counted, not logged."""

INFO_LINES_PER_WINDOW = 5
INFO_WINDOW_SECONDS = 10.0
"""Per event type: at most this many INFO failure lines per window."""

SUMMARY_INTERVAL_SECONDS = 10.0
"""An eviction summary covers at least this long (from its first eviction)."""

EVICTIONS = frozenset({EventType.L1_KEYS_EVICTED.value, EventType.L2_KEYS_EVICTED.value})
FAILURES = frozenset({EventType.L1_ALLOCATION_FAILED.value, EventType.L2_PREFETCH_FAILED.value})
"""Always logged at INFO."""
PARTIAL_FAILURES = frozenset(
    {EventType.L2_STORE_COMPLETED.value, EventType.L2_LOAD_COMPLETED.value}
)
"""INFO when ``failed_count`` > 0, DEBUG otherwise."""
CLOCK = EventType.L1_EVICTION_LOOP_TICK.value
"""Published every 0.1 s by L1: flushes eviction summaries when evictions stop."""


class EventLogSubscriber(BaseSubscriber):
    """Logs events as one-line messages; see the module docstring for levels.

    Args:
        logger: Where lines go (``lmcache.events`` by default).
        summary_interval_s: Window of the eviction summaries.
    """

    name = "logging"

    def __init__(
        self,
        logger: logging.Logger | None = None,
        summary_interval_s: float = SUMMARY_INTERVAL_SECONDS,
    ) -> None:
        super().__init__()
        self.logger = logger or logging.getLogger(LOGGER_NAME)
        self._debug_limit = LineRateLimiter(DEBUG_LINES_PER_SECOND, 1.0)
        self._info_limit = LineRateLimiter(INFO_LINES_PER_WINDOW, INFO_WINDOW_SECONDS)
        self._summaries = {
            EventType.L1_KEYS_EVICTED.value: EvictionSummary("L1", summary_interval_s),
            EventType.L2_KEYS_EVICTED.value: EvictionSummary("L2", summary_interval_s),
        }
        self.debug_enabled = self.logger.isEnabledFor(logging.DEBUG)
        self.event_types = self._wanted_types()

    def _wanted_types(self) -> frozenset[str]:
        if self.debug_enabled:
            return frozenset(FORMATTERS) | {CLOCK}
        if self.logger.isEnabledFor(logging.INFO):
            return EVICTIONS | FAILURES | PARTIAL_FAILURES | {CLOCK}
        return frozenset()

    def on_event(self, event: Event) -> None:
        """Log ``event`` (or count it), then flush eviction summaries that are due."""
        if event.type in EVICTIONS:
            self._count_eviction(event)
        if event.type != CLOCK:
            level = self._level(event)
            if level is not None:
                self._log(event, level)
        self._flush_summaries(event.timestamp, force=False)

    def _level(self, event: Event) -> int | None:
        if event.type in FAILURES:
            return logging.INFO
        if isinstance(event, L2StoreCompleted | L2LoadCompleted) and event.failed_count > 0:
            return logging.INFO
        return logging.DEBUG if self.debug_enabled and event.type in FORMATTERS else None

    def _log(self, event: Event, level: int) -> None:
        limiter = self._info_limit if level == logging.INFO else self._debug_limit
        suppressed = limiter.admit(event.type, event.timestamp)
        if suppressed is None:
            return
        line = FORMATTERS[event.type](event)
        if suppressed:
            line += f" [{suppressed} more {event.type} lines suppressed]"
        self.logger.log(level, "%s", line)

    def _count_eviction(self, event: Event) -> None:
        summary = self._summaries[event.type]
        if isinstance(event, L1KeysEvicted):
            summary.add(event.timestamp, event.key_count, event.bytes, event.reason)
        elif isinstance(event, L2KeysEvicted):
            # L2 evictions report neither bytes nor a reason: the adapter is what varies.
            adapter = f"{event.adapter_index}:{event.l2_name}"
            summary.add(event.timestamp, event.key_count, adapter=adapter)

    def _flush_summaries(self, now: float, *, force: bool) -> None:
        for summary in self._summaries.values():
            if force or summary.due(now):
                line = summary.take(now)
                if line is not None:
                    self.logger.info("%s", line)

    def close(self) -> None:
        """Log the evictions not summarised yet."""
        self._flush_summaries(time.time(), force=True)
