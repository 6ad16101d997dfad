"""``subscribe_kv_events``: one subscription per worker instance, each a stream source.

A subscription reads the replay log from its cursor: the first batch goes out
at once (the status: incarnation and where the log stands, events already
there included); after that a batch is sent only when there are records of its
model, or a loss to report. A second subscription of the same instance id ends
the first (upstream's rule), so a worker that reconnects never leaves a
duplicate behind. When the log stops (the server shuts down, or the stream is
disabled) the stream ends.
"""

from __future__ import annotations

import threading

from lmcache_core.engine.contract import Handler, RequestContext, StreamEnded
from lmcache_core.kv_events.log import MAX_EVENTS_PER_BATCH, KVEventLog
from lmcache_core.protocol.errors import BadRequestError
from lmcache_core.protocol.kv_event_records import KVEventBatch


class KVEventSubscription:
    """One subscriber's position in the log (a :class:`~lmcache_core.server.streams.StreamSource`).

    Args:
        log: The replay log.
        model_name: Only this model's records are sent.
        cursor: The last sequence number the subscriber has seen (0: none).
        max_events: Records per batch at most.
    """

    def __init__(
        self,
        log: KVEventLog,
        model_name: str,
        cursor: int,
        max_events: int,
    ) -> None:
        self.log = log
        self.model_name = model_name
        self.cursor = cursor
        self.max_events = max_events
        self._first = True
        self._closed = threading.Event()

    def next_batch(self, timeout: float) -> KVEventBatch | None:
        """The next batch worth sending, or ``None`` after ``timeout`` without one.

        Raises:
            StreamEnded: The subscription was closed or the log stopped.
        """
        with self.log.changed:
            for attempt in (0, 1):
                if self._closed.is_set():
                    raise StreamEnded
                batch = self.log.read(self.model_name, self.cursor, self.max_events)
                if not batch.enabled and not self._first:
                    raise StreamEnded
                self.cursor = batch.next_cursor
                if self._first or batch.events or batch.lost or not batch.enabled:
                    self._first = False
                    return batch
                if attempt == 0:
                    self.log.changed.wait(timeout)
        return None

    def close(self) -> None:
        """End the subscription; its sender wakes and sends the end of stream."""
        self._closed.set()
        with self.log.changed:
            self.log.changed.notify_all()

    @property
    def closed(self) -> bool:
        """Whether it was ended."""
        return self._closed.is_set()

    @property
    def ended(self) -> bool:
        """Ended, or the log stopped (nothing more will come)."""
        return self._closed.is_set() or not self.log.enabled


class KVEventService:
    """The ``subscribe_kv_events`` handler over one replay log.

    Args:
        log: The replay log (enabled).
    """

    def __init__(self, log: KVEventLog) -> None:
        self.log = log
        self._lock = threading.Lock()
        self._by_instance: dict[int, KVEventSubscription] = {}
        self.subscriptions = 0

    def handlers(self) -> dict[str, Handler]:
        """Operation name -> handler."""
        return {"subscribe_kv_events": self.subscribe_kv_events}

    def subscribe_kv_events(
        self, _ctx: RequestContext, instance_id: int, model_name: str, cursor: int, max_events: int
    ) -> KVEventSubscription:
        """Open (or replace) ``instance_id``'s subscription to ``model_name``'s records.

        Raises:
            BadRequestError: ``cursor`` < 0 or ``max_events`` not in 1..1024.
        """
        if cursor < 0 or not 0 < max_events <= MAX_EVENTS_PER_BATCH:
            raise BadRequestError(
                f"cursor must be >= 0 and max_events in 1..{MAX_EVENTS_PER_BATCH} "
                f"(got cursor={cursor}, max_events={max_events})",
                "subscribe_kv_events",
            )
        subscription = KVEventSubscription(self.log, model_name, cursor, max_events)
        with self._lock:
            previous = self._by_instance.get(instance_id)
            self._by_instance[instance_id] = subscription
            # Ended subscriptions are dropped here, so the table holds one per live instance.
            for stale in [i for i, s in self._by_instance.items() if s.closed]:
                del self._by_instance[stale]
            self.subscriptions += 1
        if previous is not None:
            previous.close()
        return subscription

    def status(self) -> dict[str, object]:
        """The log's summary and the subscriptions, for ``/status``."""
        with self._lock:
            live = sum(not s.closed for s in self._by_instance.values())
        return {**self.log.status(), "subscribers": live, "subscriptions": self.subscriptions}
