"""The request events an engine publishes (``mp.*``, and the L1 writes it makes), in one place.

Every method is cheap when nobody listens: the bus drops unwanted types before
building anything, and the costly fields (the chunk hashes of ``mp.lookup``) are
only computed when some subscriber wants them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypedDict

from lmcache_core.engine.sessions import Session
from lmcache_core.observability.bus import EventBus
from lmcache_core.observability.events import (
    L1AllocationFailed,
    L1WriteFinished,
    L2HitSource,
    MpLookup,
    MpLookupPrefetchEnd,
    MpLookupPrefetchStart,
    MpRequestEnd,
    MpRequestStart,
    MpRetrieveEnd,
    MpRetrieveStart,
    MpStoreEnd,
    MpStoreStart,
    count_per_salt,
)
from lmcache_core.protocol.types import WireCacheKey
from lmcache_core.storage.keys import ObjectKey

if TYPE_CHECKING:
    from lmcache_core.engine.miss_explainer import LookupExplanation


class RequestIdentity(TypedDict):
    """The fields every request event carries (``RequestEvent``), as keyword arguments."""

    request_id: str
    model_name: str
    cache_salt: str


def identity(key: WireCacheKey) -> RequestIdentity:
    """Whose request an event is about, from its key: ``Event(**identity(key), ...)``."""
    return {
        "request_id": key.request_id,
        "model_name": key.model_name,
        "cache_salt": key.cache_salt,
    }


class RequestEvents:
    """Publishes lookup, store, retrieve, request lifetime and L1 write events.

    Each record is built only when some subscriber wants its type.

    Args:
        bus: The server's event bus.
        chunk_size: Tokens per chunk (hit counts are reported in tokens).
    """

    def __init__(self, bus: EventBus, chunk_size: int) -> None:
        self.bus = bus
        self.chunk_size = chunk_size

    def lookup_started(self, key: WireCacheKey, session: Session, hashes: Sequence[bytes]) -> float:
        """Announce the request (first lookup only), the lookup and its hashes.

        Returns:
            The start time to pass to :meth:`lookup_finished`.
        """
        now = time.time()
        bus = self.bus
        if session.announced is None:
            # Kept whether or not anyone listens: mp.request.end reports this identity.
            session.announced = {
                "request_id": key.request_id,
                "model_name": key.model_name,
                "cache_salt": key.cache_salt,
                "started": now,
            }
            if bus.has_subscribers(MpRequestStart.type):
                bus.publish(
                    MpRequestStart(
                        **identity(key),
                    )
                )
        if bus.has_subscribers(MpLookupPrefetchStart.type):
            bus.publish(
                MpLookupPrefetchStart(
                    **identity(key),
                    requested_tokens=key.end,
                )
            )
        if bus.has_subscribers(MpLookup.type):
            bus.publish(
                MpLookup(
                    **identity(key),
                    chunk_size=self.chunk_size,
                    seq_len=key.end,
                    chunk_hashes=tuple("0x" + h.hex() for h in hashes),
                )
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
        explanation: LookupExplanation | None = None,
    ) -> None:
        """The lookup's result: hit tokens and keys per tier, and why the rest missed.

        ``l2_sources`` says which adapters supplied the L2 part
        (``l2_name``, ``adapter_index``, ``keys``); each also gets its share of
        the hit tokens (``keys * chunk_size / width``: the ranks of one chunk may
        come from different adapters). ``explanation`` fills the miss fields.
        """
        if not self.bus.has_subscribers(MpLookupPrefetchEnd.type):
            return
        hit_tokens = min((l1_chunks + l2_chunks) * self.chunk_size, key.end)
        l1_tokens = min(l1_chunks * self.chunk_size, key.end)
        self.bus.publish(
            MpLookupPrefetchEnd(
                **identity(key),
                requested_tokens=key.end,
                hit_tokens=hit_tokens,
                l1_hit_tokens=l1_tokens,
                l2_hit_tokens=hit_tokens - l1_tokens,
                l1_hit_keys=l1_chunks * width,
                l2_hit_keys=l2_chunks * width,
                l2_hit_sources=tuple(
                    L2HitSource(
                        l2_name=source["l2_name"],
                        adapter_index=source["adapter_index"],
                        keys=source["keys"],
                        tokens=source["keys"] * self.chunk_size / width,
                    )
                    for source in l2_sources
                ),
                duration_s=time.time() - started,
                requested_chunks=key.end // self.chunk_size,
                hit_chunks_by_tier=explanation.hit_chunks_by_tier if explanation else {},
                first_miss=explanation.first_miss if explanation else None,
                miss_chunks_by_cause=explanation.miss_chunks_by_cause if explanation else {},
            )
        )

    def request_ended(self, session: Session, reason: str) -> None:
        """A session ended (``end_session``, idle expiry, ...): its lifetime, if announced."""
        announced = session.announced
        if announced is None or not self.bus.has_subscribers(MpRequestEnd.type):
            return
        self.bus.publish(
            MpRequestEnd(
                request_id=announced["request_id"],
                model_name=announced["model_name"],
                cache_salt=announced["cache_salt"],
                duration_s=time.time() - announced["started"],
                end_reason=reason,
            )
        )

    @contextmanager
    def transfer(
        self, kind: str, key: WireCacheKey, instance_id: int, chunks: int
    ) -> Iterator[dict[str, Any]]:
        """Bracket a store or retrieve with its start and end events.

        Yields a dict the caller fills with ``done_chunks``, ``bytes`` and ``ok``;
        an exception ends the transfer as failed.
        """
        store = kind == "store"
        start: type[MpStoreStart | MpRetrieveStart] = MpStoreStart if store else MpRetrieveStart
        if self.bus.has_subscribers(start.type):
            self.bus.publish(
                start(
                    **identity(key),
                    instance_id=instance_id,
                    chunks=chunks,
                )
            )
        outcome: dict[str, Any] = {"done_chunks": 0, "bytes": 0, "ok": False}
        started = time.monotonic()
        try:
            yield outcome
        finally:
            self._transfer_ended(store, key, instance_id, chunks, outcome, started)

    def _transfer_ended(
        self,
        store: bool,
        key: WireCacheKey,
        instance_id: int,
        chunks: int,
        outcome: dict[str, Any],
        started: float,
    ) -> None:
        # Two constructors, not one with a branching field name: mypy checks each.
        if store and self.bus.has_subscribers(MpStoreEnd.type):
            self.bus.publish(
                MpStoreEnd(
                    **identity(key),
                    instance_id=instance_id,
                    chunks=chunks,
                    stored_chunks=outcome["done_chunks"],
                    bytes=outcome["bytes"],
                    duration_s=time.monotonic() - started,
                    ok=outcome["ok"],
                )
            )
        elif not store and self.bus.has_subscribers(MpRetrieveEnd.type):
            self.bus.publish(
                MpRetrieveEnd(
                    **identity(key),
                    instance_id=instance_id,
                    chunks=chunks,
                    retrieved_chunks=outcome["done_chunks"],
                    bytes=outcome["bytes"],
                    duration_s=time.monotonic() - started,
                    ok=outcome["ok"],
                )
            )

    def l1_write_finished(self, keys: Sequence[ObjectKey], nbytes: int) -> None:
        """A store committed ``keys`` (objects of ``nbytes`` each) to L1."""
        if self.bus.has_subscribers(L1WriteFinished.type):
            self.bus.publish(
                L1WriteFinished(
                    key_count=len(keys),
                    bytes=len(keys) * nbytes,
                    key_count_per_salt=count_per_salt(keys),
                    keys=tuple(keys),
                )
            )

    def l1_allocation_failed(self, during: str, key_count: int, nbytes: int) -> None:
        """L1 could not reserve ``key_count`` objects of ``nbytes`` (``during``: which path)."""
        if self.bus.has_subscribers(L1AllocationFailed.type):
            self.bus.publish(
                L1AllocationFailed(during=during, key_count=key_count, bytes=key_count * nbytes)
            )
