"""Turns the event bus's store and eviction records into KV event log records.

A subscriber like any other (on the bus's drain thread): L1 commits and
evictions become records of medium ``CPU``, each L2 adapter's completed stores
and evictions records of its own medium (``L2:<n>:<type>``), so a router sees
the whole node's cache. When the bus dropped events (its queue was full) some
changes never arrive: the next event appends a ``lost`` marker first, and
subscribers resynchronize.
"""

from __future__ import annotations

from collections.abc import Iterable

from lmcache_core.kv_events.log import KVEventLog
from lmcache_core.observability.bus import EventBus
from lmcache_core.observability.events import (
    Event,
    L1KeysEvicted,
    L1WriteFinished,
    L2KeysEvicted,
    L2StoreCompleted,
)
from lmcache_core.protocol.kv_event_records import MEDIUM_L1, l2_medium
from lmcache_core.storage.keys import ObjectKey


def _by_model(keys: Iterable[ObjectKey]) -> dict[str, list[bytes]]:
    """Chunk hashes per model, in order, each once (a chunk has one entry per rank)."""
    result: dict[str, dict[bytes, None]] = {}
    for key in keys:
        result.setdefault(key.model_name, {})[key.chunk_hash] = None
    return {model: list(hashes) for model, hashes in result.items()}


class KVEventRecorder:
    """The bus subscriber that feeds a :class:`KVEventLog`.

    Args:
        log: Where records go.
        bus: The bus it is subscribed to (its drop counter reveals lost events).
    """

    name = "kv_events"
    event_types: frozenset[str] | None = frozenset(
        {L1WriteFinished.type, L1KeysEvicted.type, L2StoreCompleted.type, L2KeysEvicted.type}
    )

    def __init__(self, log: KVEventLog, bus: EventBus) -> None:
        self.log = log
        self.bus = bus
        self._dropped_seen = bus.stats.dropped

    def on_event(self, event: Event) -> None:
        """Append the records of one bus event (a lost marker first, when events were dropped)."""
        dropped = self.bus.stats.dropped
        if dropped > self._dropped_seen:
            self._dropped_seen = dropped
            self.log.lost()
        if isinstance(event, L1WriteFinished):
            for model, hashes in _by_model(event.keys).items():
                self.log.stored(MEDIUM_L1, model, hashes)
        elif isinstance(event, L1KeysEvicted):
            for model, hashes in _by_model(event.keys).items():
                self.log.removed(MEDIUM_L1, model, hashes)
        elif isinstance(event, L2StoreCompleted):
            medium = l2_medium(event.adapter_index, event.l2_name)
            for model, hashes in _by_model(event.keys).items():
                self.log.stored(medium, model, hashes)
        elif isinstance(event, L2KeysEvicted):
            medium = l2_medium(event.adapter_index, event.l2_name)
            for model, hashes in _by_model(event.keys).items():
                self.log.removed(medium, model, hashes)

    def close(self) -> None:
        """Stop the log: subscribers get their end of stream."""
        self.log.close()
