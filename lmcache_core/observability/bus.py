"""The event bus: producers publish without blocking, one thread delivers.

Publishing must cost nothing measurable on the data path, so :meth:`EventBus.publish`
only appends to a bounded queue (and skips even that when nobody listens to the
type). A single drain thread hands events to subscribers in publish order; a
subscriber that raises is counted and logged (rate limited) and never affects the
others or the producer. When the queue is full the *new* event is dropped (tail
drop) and counted, so a slow subscriber costs events, never memory or latency.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from lmcache_core.background import BackgroundLoop, Wakeup
from lmcache_core.lifecycle import Health
from lmcache_core.observability.events import Event

logger = logging.getLogger("lmcache.observability")

DRAIN_INTERVAL_SECONDS = 0.1
"""The drain thread wakes at least this often, even without a signal."""

WARN_INTERVAL_SECONDS = 1.0
"""At most one warning per this many seconds for drops and for each failing subscriber."""


@runtime_checkable
class Subscriber(Protocol):
    """What the bus needs from a subscriber.

    Attributes:
        name: Shown in statistics and logs (the plugin's spec name).
        event_types: The types it wants, or ``None`` for every type. The bus
            skips publishing a type nobody wants.
    """

    name: str
    event_types: frozenset[str] | None

    def on_event(self, event: Event) -> None:
        """Handle one event, on the drain thread. May raise: the bus counts it."""

    def close(self) -> None:
        """Flush and release resources; called once, after the last event."""


@dataclass
class BusStats:
    """Counters of the bus, for ``/status`` and the metrics subscriber.

    Attributes:
        published: Events accepted into the queue.
        delivered: Events handed to every interested subscriber.
        dropped: Events refused because the queue was full (tail drop).
        subscriber_errors: Exceptions raised per subscriber name.
    """

    published: int = 0
    delivered: int = 0
    dropped: int = 0
    subscriber_errors: dict[str, int] = field(default_factory=dict)


class EventBus:
    """A bounded, non-blocking publish queue with one delivering thread.

    Args:
        queue_size: ``--event-bus-queue-size``: events held at most.
        enabled: False for ``--disable-observability``: :meth:`publish` does
            nothing and no thread runs.
    """

    name = "event_bus"

    def __init__(self, queue_size: int = 10_000, enabled: bool = True) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, not {queue_size}")
        self.queue_size = queue_size
        self.enabled = enabled
        self.stats = BusStats()
        self._queue: deque[Event] = deque()
        self._lock = threading.Lock()
        self._wake = Wakeup()  # a threading.Event: publish's wake-up is one Event.set
        self._drainer = BackgroundLoop(
            "event bus drain",
            self.drain,
            interval_s=DRAIN_INTERVAL_SECONDS,
            thread_name="lmcache-event-bus",
            trigger=self._wake,
            log=logger,
        )
        self._subscribers: list[Subscriber] = []
        self._wanted: frozenset[str] | None = frozenset()
        self._last_drop_warning = 0.0
        self._last_error_warning: dict[str, float] = {}

    # -- producers ---------------------------------------------------------------

    def publish(self, event: Event, /) -> None:
        """Queue one event record; never blocks, never raises.

        Producers whose record costs something to build (hex chunk hashes, per-salt
        counts, key tuples) check :meth:`has_subscribers` with the record class's
        ``type`` first, so an unwanted event costs no record at all.

        Args:
            event: The record (an :mod:`~lmcache_core.observability.events` class,
                or a plugin's own :class:`~lmcache_core.observability.events.Event`
                subclass); its ``timestamp`` was stamped when it was built.
        """
        if not self.enabled or not self.has_subscribers(event.type):
            return
        with self._lock:
            if len(self._queue) >= self.queue_size:
                self.stats.dropped += 1
                now = event.timestamp
                if now - self._last_drop_warning >= WARN_INTERVAL_SECONDS:
                    self._last_drop_warning = now
                    logger.warning(
                        "event bus full (%d events): dropping new events (%d dropped so far)",
                        self.queue_size,
                        self.stats.dropped,
                    )
                return
            self._queue.append(event)
            self.stats.published += 1
        if len(self._queue) >= 64:
            # Small batches wait for the periodic wake-up; a burst is drained at once.
            self._wake.set()

    def has_subscribers(self, event_type: str) -> bool:
        """Whether any subscriber wants ``event_type`` (producers skip unwanted records)."""
        wanted = self._wanted
        return self.enabled and (wanted is None or event_type in wanted)

    # -- subscribers -------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> None:
        """Add a subscriber; its events start with the next publish."""
        if not isinstance(subscriber, Subscriber):
            raise TypeError(f"{subscriber!r} is not an event bus subscriber")
        with self._lock:
            self._subscribers.append(subscriber)
            self.stats.subscriber_errors.setdefault(subscriber.name, 0)
            self._wanted = _union(s.event_types for s in self._subscribers)

    @property
    def subscribers(self) -> list[Subscriber]:
        """The subscribers, in subscription order."""
        return list(self._subscribers)

    def queue_depth(self) -> int:
        """Events waiting for delivery."""
        return len(self._queue)

    def drain_lag_seconds(self) -> float:
        """Age of the oldest undelivered event (0 when the queue is empty)."""
        with self._lock:
            oldest = self._queue[0].timestamp if self._queue else None
        return max(0.0, time.time() - oldest) if oldest is not None else 0.0

    # -- component ---------------------------------------------------------------

    def start(self) -> None:
        """Start the drain thread (nothing when the bus is disabled)."""
        if not self.enabled or self._drainer.started:
            return
        self._drainer.start()

    def stop(self, timeout: float) -> None:
        """Deliver what is queued, then close every subscriber."""
        self._drainer.stop(timeout)
        self.drain()
        for subscriber in self._subscribers:
            try:
                subscriber.close()
            except Exception:
                logger.exception("subscriber %s failed to close", subscriber.name)

    def health(self) -> Health:
        """Healthy while the drain thread runs (or when the bus is disabled)."""
        if not self.enabled:
            return Health(True, "disabled (--disable-observability)")
        detail = (
            f"{len(self._subscribers)} subscribers, {self.queue_depth()} queued, "
            f"{self.stats.dropped} dropped"
        )
        return self._drainer.health(detail, stopped=f"drain thread stopped; {detail}")

    def status(self) -> dict[str, Any]:
        """Counters and subscribers for ``/status``."""
        return {
            "enabled": self.enabled,
            "queue_size": self.queue_size,
            "queue_depth": self.queue_depth(),
            "drain_lag_seconds": round(self.drain_lag_seconds(), 6),
            "published": self.stats.published,
            "delivered": self.stats.delivered,
            "dropped": self.stats.dropped,
            "subscribers": [s.name for s in self._subscribers],
            "subscriber_errors": dict(self.stats.subscriber_errors),
        }

    # -- delivery ----------------------------------------------------------------

    def drain(self) -> int:
        """Deliver every queued event now (the drain thread's work; also for tests).

        Returns:
            How many events were delivered.
        """
        delivered = 0
        while True:
            with self._lock:
                if not self._queue:
                    return delivered
                batch = list(self._queue)
                self._queue.clear()
            for event in batch:
                self._deliver(event)
                # Hand the GIL to a waiting request thread after every event: a burst
                # of deliveries must not hold a lookup for a whole switch interval.
                time.sleep(0)
            delivered += len(batch)
            self.stats.delivered += len(batch)

    def _deliver(self, event: Event) -> None:
        for subscriber in self._subscribers:
            wanted = subscriber.event_types
            if wanted is not None and event.type not in wanted:
                continue
            try:
                subscriber.on_event(event)
            except Exception as exc:  # noqa: BLE001 - isolated and counted per subscriber
                self._count_error(subscriber.name, event, exc)

    def _count_error(self, name: str, event: Event, exc: Exception) -> None:
        errors = self.stats.subscriber_errors
        errors[name] = errors.get(name, 0) + 1
        now = time.monotonic()
        if now - self._last_error_warning.get(name, 0.0) >= WARN_INTERVAL_SECONDS:
            self._last_error_warning[name] = now
            logger.warning(
                "subscriber %s failed on %s (%d failures so far): %r",
                name,
                event.type,
                errors[name],
                exc,
            )


def _union(types: Iterable[frozenset[str] | None]) -> frozenset[str] | None:
    """The types any subscriber wants; ``None`` when one of them wants everything."""
    result: set[str] = set()
    for wanted in types:
        if wanted is None:
            return None
        result |= wanted
    return frozenset(result)
