"""The ``cb.*`` events of the legacy CacheBlend operations (each built only when someone listens).

The legacy operations publish the blend engine's event records, so the
``lmcache_blend_*`` metrics, the lookup-hash log and any other subscriber see
them without knowing which engine served them. How the legacy operations map:

* ``cb_store_pre_computed`` / ``cb_store_final``: ``cb.fingerprints.registered``
  for the chunks newly indexed;
* ``cb_lookup_pre_computed_v2``: ``cb.lookup.start`` and ``cb.lookup.end``. It
  has no prefix leg: every chunk it holds is a non-prefix hit
  (``prefix_hit_tokens`` 0), ``fingerprint_hits`` counts the non-overlapping
  matches, ``storage_hits`` those held in L1 or loaded from L2, ``stale_chunks``
  those shown to be gone, ``no_gpu_context`` a lookup answered ``[]`` because no
  CB buffer of the model is registered, and ``polls`` is 1 (it never polls);
  stale chunks also give ``cb.chunks.evicted``;
* ``cb_retrieve_pre_computed_v2``: ``cb.retrieve.end`` (``rotated_tokens`` 0:
  the legacy engine copies KV as stored and recomputes).
"""

from __future__ import annotations

from collections.abc import Sequence

from lmcache_core.engine.request_events import identity
from lmcache_core.observability.bus import EventBus
from lmcache_core.observability.events import (
    CbChunksEvicted,
    CbFingerprintsRegistered,
    CbLookupEnd,
    CbLookupStart,
    CbRetrieveEnd,
)
from lmcache_core.protocol.types import CBMatchResult, WireCacheKey


class LegacyEvents:
    """Publishes the legacy operations' events on the server's bus.

    Args:
        bus: The event bus.
        chunk_size: Tokens per chunk.
    """

    def __init__(self, bus: EventBus, chunk_size: int) -> None:
        self.bus = bus
        self.chunk_size = chunk_size

    def registered(self, num_chunks: int) -> None:
        """A store indexed ``num_chunks`` new chunks."""
        if num_chunks and self.bus.has_subscribers(CbFingerprintsRegistered.type):
            self.bus.publish(
                CbFingerprintsRegistered(
                    num_chunks=num_chunks, num_tokens=num_chunks * self.chunk_size
                )
            )

    def lookup_started(self, key: WireCacheKey) -> None:
        """A lookup arrived."""
        if self.bus.has_subscribers(CbLookupStart.type):
            self.bus.publish(CbLookupStart(**identity(key), num_tokens=key.end))

    def lookup_ended(
        self,
        key: WireCacheKey,
        result: Sequence[CBMatchResult],
        *,
        matches: int,
        fingerprint_hits: int,
        stale: int,
        removed: int,
        no_context: bool,
        duration_s: float,
    ) -> None:
        """A lookup's answer: ``result`` (the chunks held), and what it found on the way."""
        if stale and self.bus.has_subscribers(CbChunksEvicted.type):
            self.bus.publish(CbChunksEvicted(**identity(key), num_chunks=stale, removed=removed))
        if not self.bus.has_subscribers(CbLookupEnd.type):
            return
        size = self.chunk_size
        hit = sum(m.cur_ed - m.cur_st for m in result)
        self.bus.publish(
            CbLookupEnd(
                **identity(key),
                num_tokens=key.end,
                requested_tokens=key.end // size * size,
                hit_tokens=hit,
                prefix_hit_tokens=0,
                non_prefix_hit_tokens=hit,
                segmented_prefix_hit_tokens=0,
                prefix_chunks=0,
                fingerprint_hits=fingerprint_hits,
                storage_hits=len(result),
                stale_chunks=stale,
                no_gpu_context=no_context,
                polls=1,
                duration_s=duration_s,
                fingerprint_matches=matches,
                segments=tuple((m.old_st, m.cur_st, m.hash.hex()) for m in result),
            )
        )

    def retrieve_ended(
        self,
        key: WireCacheKey,
        matches: Sequence[CBMatchResult],
        *,
        success: bool,
        duration_s: float,
    ) -> None:
        """A retrieve into the CB buffer finished (``success``: every chunk copied)."""
        if self.bus.has_subscribers(CbRetrieveEnd.type):
            self.bus.publish(
                CbRetrieveEnd(
                    **identity(key),
                    success=success,
                    reason="" if success else "missing_objects",
                    num_chunks=len(matches),
                    num_tokens=sum(m.cur_ed - m.cur_st for m in matches),
                    rotated_tokens=0,
                    duration_s=duration_s,
                )
            )
