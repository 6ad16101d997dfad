"""Observability: the event bus, its event types, and how subscribers are built."""

from __future__ import annotations

from lmcache_core.observability.bus import BusStats, EventBus, Subscriber
from lmcache_core.observability.events import EVENT_FIELDS, Event, EventType
from lmcache_core.observability.subscribers import BaseSubscriber, SubscriberContext

__all__ = [
    "EVENT_FIELDS",
    "BaseSubscriber",
    "BusStats",
    "Event",
    "EventBus",
    "EventType",
    "Subscriber",
    "SubscriberContext",
]
