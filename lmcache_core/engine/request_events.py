"""The request events an engine publishes (``mp.*``, and the L1 writes it makes), in one place.

Every method is cheap when nobody listens: the bus drops unwanted types before
building anything, and the costly fields (the chunk hashes of ``mp.lookup``) are
only computed when some subscriber wants them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from lmcache_core.engine.sessions import Session
from lmcache_core.observability.bus import EventBus
from lmcache_core.observability.events import EventType, count_per_salt
from lmcache_core.protocol.types import WireCacheKey
from lmcache_core.storage.keys import ObjectKey


class RequestEvents:
    """Publishes lookup, store, retrieve, request lifetime and L1 write events.

    Args:
        bus: The server's event bus.
        chunk_size: Tokens per chunk (hit counts are reported in tokens).
    """

    def __init__(self, bus: EventBus, chunk_size: int) -> None:
        self.bus = bus
        self.chunk_size = chunk_size

    @staticmethod
    def _identity(key: WireCacheKey) -> dict[str, Any]:
        return {
            "request_id": key.request_id,
            "model_name": key.model_name,
            "cache_salt": key.cache_salt,
        }

    def lookup_started(self, key: WireCacheKey, session: Session, hashes: Sequence[bytes]) -> float:
        """Announce the request (first lookup only), the lookup and its hashes.

        Returns:
            The start time to pass to :meth:`lookup_finished`.
        """
        now = time.time()
        identity = self._identity(key)
        if session.announced is None:
            session.announced = {**identity, "started": now}
            self.bus.publish(EventType.MP_REQUEST_START, **identity)
        self.bus.publish(EventType.MP_LOOKUP_PREFETCH_START, requested_tokens=key.end, **identity)
        if self.bus.has_subscribers(EventType.MP_LOOKUP):
            self.bus.publish(
                EventType.MP_LOOKUP,
                chunk_size=self.chunk_size,
                seq_len=key.end,
                chunk_hashes=["0x" + h.hex() for h in hashes],
                **identity,
            )
        return now

    def lookup_finished(
        self,
        key: WireCacheKey,
        started: float,
        l1_chunks: int,
        l2_chunks: int,
        width: int,
        l2_sources: Sequence[dict[str, Any]] = (),
    ) -> None:
        """The lookup's result: hit tokens and keys per tier.

        ``l2_sources`` says which adapters supplied the L2 part
        (``l2_name``, ``adapter_index``, ``keys``); each also gets its share of
        the hit tokens (``keys * chunk_size / width``: the ranks of one chunk may
        come from different adapters).
        """
        hit_tokens = min((l1_chunks + l2_chunks) * self.chunk_size, key.end)
        l1_tokens = min(l1_chunks * self.chunk_size, key.end)
        self.bus.publish(
            EventType.MP_LOOKUP_PREFETCH_END,
            requested_tokens=key.end,
            hit_tokens=hit_tokens,
            l1_hit_tokens=l1_tokens,
            l2_hit_tokens=hit_tokens - l1_tokens,
            l1_hit_keys=l1_chunks * width,
            l2_hit_keys=l2_chunks * width,
            l2_hit_sources=[
                {**source, "tokens": source["keys"] * self.chunk_size / width}
                for source in l2_sources
            ],
            duration_s=time.time() - started,
            **self._identity(key),
        )

    def request_ended(self, session: Session, reason: str) -> None:
        """A session ended (``end_session``, idle expiry, ...): its lifetime, if announced."""
        if session.announced is None:
            return
        identity = dict(session.announced)
        started = identity.pop("started")
        self.bus.publish(
            EventType.MP_REQUEST_END,
            duration_s=time.time() - started,
            end_reason=reason,
            **identity,
        )

    @contextmanager
    def transfer(
        self, kind: str, key: WireCacheKey, instance_id: int, chunks: int
    ) -> Iterator[dict[str, Any]]:
        """Bracket a store or retrieve with its start and end events.

        Yields a dict the caller fills with ``done_chunks``, ``bytes`` and ``ok``;
        an exception ends the transfer as failed.
        """
        start_type, end_type, done_name = (
            (EventType.MP_STORE_START, EventType.MP_STORE_END, "stored_chunks")
            if kind == "store"
            else (EventType.MP_RETRIEVE_START, EventType.MP_RETRIEVE_END, "retrieved_chunks")
        )
        identity = {**self._identity(key), "instance_id": instance_id, "chunks": chunks}
        self.bus.publish(start_type, **identity)
        outcome: dict[str, Any] = {"done_chunks": 0, "bytes": 0, "ok": False}
        started = time.monotonic()
        try:
            yield outcome
        finally:
            self.bus.publish(
                end_type,
                duration_s=time.monotonic() - started,
                bytes=outcome["bytes"],
                ok=outcome["ok"],
                **{done_name: outcome["done_chunks"]},
                **identity,
            )

    def l1_write_finished(self, keys: Sequence[ObjectKey], nbytes: int) -> None:
        """A store committed ``keys`` (objects of ``nbytes`` each) to L1."""
        self.bus.publish(
            EventType.L1_WRITE_FINISHED,
            key_count=len(keys),
            bytes=len(keys) * nbytes,
            key_count_per_salt=count_per_salt(keys),
            keys=tuple(keys),
        )

    def l1_allocation_failed(self, during: str, key_count: int, nbytes: int) -> None:
        """L1 could not reserve ``key_count`` objects of ``nbytes`` (``during``: which path)."""
        self.bus.publish(
            EventType.L1_ALLOCATION_FAILED,
            during=during,
            key_count=key_count,
            bytes=key_count * nbytes,
        )
