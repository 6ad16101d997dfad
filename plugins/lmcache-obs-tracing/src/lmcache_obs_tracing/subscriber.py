"""The ``tracing`` subscriber: request spans exported over OTLP gRPC.

It runs on the event bus's drain thread; the batch span processor exports on its
own thread, so a slow collector costs neither requests nor event delivery
(spans beyond the processor's queue are dropped by the SDK, which logs it).
"""

from __future__ import annotations

import threading
import time

from opentelemetry.sdk.trace import TracerProvider

from lmcache_core.observability.events import Event, EventType
from lmcache_core.observability.subscribers import BaseSubscriber
from lmcache_obs_tracing.provider import TRACER_NAME, shutdown_within
from lmcache_obs_tracing.spans import CHILDREN, RequestSpans

WANTED = frozenset(
    {
        EventType.MP_REQUEST_START.value,
        EventType.MP_REQUEST_END.value,
        *CHILDREN,
        # Published by L1 every 0.1 s: the clock that ends idle spans when no
        # request event arrives.
        EventType.L1_EVICTION_LOOP_TICK.value,
    }
)


class TracingSubscriber(BaseSubscriber):
    """Feeds request events to :class:`~lmcache_obs_tracing.spans.RequestSpans`.

    Args:
        provider: The tracer provider (closed with the subscriber).
        idle_ttl_s: ``--session-ttl-seconds``: when an idle request's span ends.
    """

    name = "tracing"
    event_types: frozenset[str] | None = WANTED

    def __init__(self, provider: TracerProvider, idle_ttl_s: float) -> None:
        super().__init__()
        self.provider = provider
        self.spans = RequestSpans(provider.get_tracer(TRACER_NAME), idle_ttl_s)
        # close() may run while a late drain still delivers (bus stop timed out).
        self._lock = threading.Lock()
        self._closed = False

    def on_event(self, event: Event) -> None:
        """Open, end or expire spans."""
        with self._lock:
            if not self._closed:
                self.spans.handle(event)

    def close(self) -> None:
        """End every open span, then flush within the shutdown budget."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.spans.close(time.time())
        shutdown_within(self.provider)
