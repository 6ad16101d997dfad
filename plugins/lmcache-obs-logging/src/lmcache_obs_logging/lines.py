"""One concise line per event: what happened, to which request, with its counts.

The wording follows upstream's logging subscribers ("L1 write finished: N keys",
"L2 store completed: adapter i, n succeeded, m failed") so log searches carry
over. Each formatter takes its type's record and reads its typed fields: a
producer that adds fields changes nothing here, and none can omit one (mypy and
the records' constructors see to that).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from lmcache_core.observability.events import (
    EventType,
    L1AllocationFailed,
    L1KeysEvicted,
    L1WriteFinished,
    L2AdapterEvent,
    L2KeysEvicted,
    L2LoadCompleted,
    L2PrefetchFailed,
    L2StoreCompleted,
    L2StoreSubmitted,
    MpLookupPrefetchEnd,
    MpLookupPrefetchStart,
    MpRequestEnd,
    MpRequestStart,
    MpRetrieveEnd,
    MpStoreEnd,
    RequestEvent,
    TransferEvent,
)

Formatter = Callable[[Any], str]
"""Formats one record of its type (the mapping below pairs each with its type)."""


def human_bytes(count: Any) -> str:
    """``1536`` -> ``"1.5 KiB"`` (binary units, one decimal above bytes)."""
    try:
        value = float(count)
    except (TypeError, ValueError):
        return str(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def millis(seconds: Any) -> str:
    """``0.0123`` -> ``"12.3 ms"``."""
    try:
        return f"{float(seconds) * 1000:.1f} ms"
    except (TypeError, ValueError):
        return "? ms"


def _request(event: RequestEvent) -> str:
    text = f"request={event.request_id}"
    if event.cache_salt:
        text += f" salt={event.cache_salt}"
    return text


def _request_start(event: MpRequestStart) -> str:
    return f"MP request start: {_request(event)} model={event.model_name}"


def _request_end(event: MpRequestEnd) -> str:
    return f"MP request end: {_request(event)} after {millis(event.duration_s)}"


def _lookup_start(event: MpLookupPrefetchStart) -> str:
    return f"MP lookup start: {_request(event)} requested={event.requested_tokens} tokens"


def _lookup_end(event: MpLookupPrefetchEnd) -> str:
    return (
        f"MP lookup end: {_request(event)} hit {event.hit_tokens}/"
        f"{event.requested_tokens} tokens (L1 {event.l1_hit_tokens}, "
        f"L2 {event.l2_hit_tokens}) in {millis(event.duration_s)}"
    )


def _transfer_start(name: str) -> Callable[[TransferEvent], str]:
    def line(event: TransferEvent) -> str:
        return (
            f"MP {name} start: {_request(event)} instance={event.instance_id} chunks={event.chunks}"
        )

    return line


def _transfer_end(
    event: TransferEvent, name: str, done: int, nbytes: int, duration_s: float, ok: bool
) -> str:
    return (
        f"MP {name} end: {_request(event)} instance={event.instance_id} "
        f"{done}/{event.chunks} chunks, {human_bytes(nbytes)} in {millis(duration_s)}, "
        f"{'ok' if ok else 'FAILED'}"
    )


def _store_end(event: MpStoreEnd) -> str:
    return _transfer_end(
        event, "store", event.stored_chunks, event.bytes, event.duration_s, event.ok
    )


def _retrieve_end(event: MpRetrieveEnd) -> str:
    return _transfer_end(
        event, "retrieve", event.retrieved_chunks, event.bytes, event.duration_s, event.ok
    )


def _keys_and_bytes(key_count: int, nbytes: int) -> str:
    return f"{key_count} keys, {human_bytes(nbytes)}"


def _l1_write_finished(event: L1WriteFinished) -> str:
    return f"L1 write finished: {_keys_and_bytes(event.key_count, event.bytes)}"


def _l1_keys_evicted(event: L1KeysEvicted) -> str:
    return f"L1 keys evicted: {_keys_and_bytes(event.key_count, event.bytes)} ({event.reason})"


def _l1_allocation_failed(event: L1AllocationFailed) -> str:
    return (
        f"L1 allocation failed during {event.during}: "
        f"{_keys_and_bytes(event.key_count, event.bytes)}"
    )


def _adapter(event: L2AdapterEvent) -> str:
    return f"adapter {event.adapter_index} ({event.l2_name})"


def _l2_store_submitted(event: L2StoreSubmitted) -> str:
    return (
        f"L2 store submitted: {_adapter(event)}, {event.key_count} keys, "
        f"{human_bytes(event.total_bytes)}"
    )


def _l2_completed(
    event: L2StoreCompleted | L2LoadCompleted, name: str, done_word: str, done: int
) -> str:
    return (
        f"L2 {name} completed: {_adapter(event)}, {done} {done_word}, "
        f"{event.failed_count} failed, {human_bytes(event.bytes_transferred)} "
        f"in {millis(event.duration_s)}"
    )


def _l2_store_completed(event: L2StoreCompleted) -> str:
    return _l2_completed(event, "store", "succeeded", event.succeeded_count)


def _l2_load_completed(event: L2LoadCompleted) -> str:
    return _l2_completed(event, "load", "loaded", event.loaded_count)


def _l2_prefetch_failed(event: L2PrefetchFailed) -> str:
    return f"L2 prefetch failed: {event.reason}, {event.key_count} keys"


def _l2_keys_evicted(event: L2KeysEvicted) -> str:
    return f"L2 keys evicted: {_adapter(event)}, {event.key_count} keys"


FORMATTERS: Mapping[str, Formatter] = {
    EventType.MP_REQUEST_START: _request_start,
    EventType.MP_REQUEST_END: _request_end,
    EventType.MP_LOOKUP_PREFETCH_START: _lookup_start,
    EventType.MP_LOOKUP_PREFETCH_END: _lookup_end,
    EventType.MP_STORE_START: _transfer_start("store"),
    EventType.MP_STORE_END: _store_end,
    EventType.MP_RETRIEVE_START: _transfer_start("retrieve"),
    EventType.MP_RETRIEVE_END: _retrieve_end,
    EventType.L1_WRITE_FINISHED: _l1_write_finished,
    EventType.L1_KEYS_EVICTED: _l1_keys_evicted,
    EventType.L1_ALLOCATION_FAILED: _l1_allocation_failed,
    EventType.L2_STORE_SUBMITTED: _l2_store_submitted,
    EventType.L2_STORE_COMPLETED: _l2_store_completed,
    EventType.L2_LOAD_COMPLETED: _l2_load_completed,
    EventType.L2_PREFETCH_FAILED: _l2_prefetch_failed,
    EventType.L2_KEYS_EVICTED: _l2_keys_evicted,
}
"""The line of each event type this subscriber logs.

``mp.lookup`` is left out on purpose: subscribing to it makes the engine hex-encode
every chunk hash, and the lookup lines already carry the counts.
"""
