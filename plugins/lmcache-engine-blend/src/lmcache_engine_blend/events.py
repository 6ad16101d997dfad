"""The ``cb.*`` events the blend engine publishes (each built only when someone listens)."""

from __future__ import annotations

from lmcache_core.engine.request_events import identity
from lmcache_core.observability.bus import EventBus
from lmcache_core.observability.events import (
    CbChunksEvicted,
    CbFingerprintsRegistered,
    CbLookupEnd,
    CbLookupStart,
    CbRetrieveEnd,
    CbRetrieveNoop,
)
from lmcache_core.protocol.types import WireCacheKey


class BlendEvents:
    """Publishes the blend engine's events on the server's bus.

    Args:
        bus: The event bus.
    """

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus

    def fingerprints_registered(self, num_chunks: int, num_tokens: int) -> None:
        """Chunks newly indexed by a store."""
        if self.bus.has_subscribers(CbFingerprintsRegistered.type):
            self.bus.publish(CbFingerprintsRegistered(num_chunks=num_chunks, num_tokens=num_tokens))

    def lookup_started(self, key: WireCacheKey, num_tokens: int) -> None:
        """The first poll of a unified lookup."""
        if self.bus.has_subscribers(CbLookupStart.type):
            self.bus.publish(
                CbLookupStart(
                    **identity(key),
                    num_tokens=num_tokens,
                )
            )

    def wants_lookup_end(self) -> bool:
        """Whether anyone listens to :class:`CbLookupEnd` (it takes some work to fill)."""
        return self.bus.has_subscribers(CbLookupEnd.type)

    def lookup_ended(self, record: CbLookupEnd) -> None:
        """A unified lookup's result."""
        self.bus.publish(record)

    def chunks_evicted(self, key: WireCacheKey, num_chunks: int, removed: int) -> None:
        """Stale fingerprints struck (and removed at their second strike)."""
        if self.bus.has_subscribers(CbChunksEvicted.type):
            self.bus.publish(
                CbChunksEvicted(
                    **identity(key),
                    num_chunks=num_chunks,
                    removed=removed,
                )
            )

    def retrieve_ended(
        self,
        key: WireCacheKey,
        *,
        success: bool,
        reason: str,
        num_chunks: int,
        num_tokens: int,
        rotated_tokens: int,
        duration_s: float,
    ) -> None:
        """A retrieve that tried to write KV."""
        if self.bus.has_subscribers(CbRetrieveEnd.type):
            self.bus.publish(
                CbRetrieveEnd(
                    **identity(key),
                    success=success,
                    reason=reason,
                    num_chunks=num_chunks,
                    num_tokens=num_tokens,
                    rotated_tokens=rotated_tokens,
                    duration_s=duration_s,
                )
            )

    def retrieve_noop(self, key: WireCacheKey, reason: str, dropped: int) -> None:
        """A retrieve that wrote nothing, and why."""
        if self.bus.has_subscribers(CbRetrieveNoop.type):
            self.bus.publish(
                CbRetrieveNoop(
                    **identity(key),
                    reason=reason,
                    dropped_matches=dropped,
                )
            )
