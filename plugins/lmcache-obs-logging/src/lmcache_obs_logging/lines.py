"""One concise line per event: what happened, to which request, with its counts.

The wording follows upstream's logging subscribers ("L1 write finished: N keys",
"L2 store completed: adapter i, n succeeded, m failed") so log searches carry
over. Formatters read fields with defaults: a producer that adds fields changes
nothing here, and one that misses a field still gets a line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from lmcache_core.observability.events import Event, EventType

Formatter = Callable[[Event], str]


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


def _request(event: Event) -> str:
    text = f"request={event.get('request_id', '?')}"
    salt = event.get("cache_salt")
    if salt:
        text += f" salt={salt}"
    return text


def _request_start(event: Event) -> str:
    return f"MP request start: {_request(event)} model={event.get('model_name', '?')}"


def _request_end(event: Event) -> str:
    return f"MP request end: {_request(event)} after {millis(event.get('duration_s'))}"


def _lookup_start(event: Event) -> str:
    return f"MP lookup start: {_request(event)} requested={event.get('requested_tokens')} tokens"


def _lookup_end(event: Event) -> str:
    return (
        f"MP lookup end: {_request(event)} hit {event.get('hit_tokens')}/"
        f"{event.get('requested_tokens')} tokens (L1 {event.get('l1_hit_tokens')}, "
        f"L2 {event.get('l2_hit_tokens')}) in {millis(event.get('duration_s'))}"
    )


def _transfer_start(name: str) -> Formatter:
    def line(event: Event) -> str:
        return (
            f"MP {name} start: {_request(event)} instance={event.get('instance_id')} "
            f"chunks={event.get('chunks')}"
        )

    return line


def _transfer_end(name: str, done_field: str) -> Formatter:
    def line(event: Event) -> str:
        outcome = "ok" if event.get("ok") else "FAILED"
        return (
            f"MP {name} end: {_request(event)} instance={event.get('instance_id')} "
            f"{event.get(done_field)}/{event.get('chunks')} chunks, "
            f"{human_bytes(event.get('bytes', 0))} in {millis(event.get('duration_s'))}, "
            f"{outcome}"
        )

    return line


def _keys_and_bytes(event: Event) -> str:
    return f"{event.get('key_count')} keys, {human_bytes(event.get('bytes', 0))}"


def _l1_write_finished(event: Event) -> str:
    return f"L1 write finished: {_keys_and_bytes(event)}"


def _l1_keys_evicted(event: Event) -> str:
    return f"L1 keys evicted: {_keys_and_bytes(event)} ({event.get('reason', '?')})"


def _l1_allocation_failed(event: Event) -> str:
    return f"L1 allocation failed during {event.get('during', '?')}: {_keys_and_bytes(event)}"


def _adapter(event: Event) -> str:
    return f"adapter {event.get('adapter_index', '?')} ({event.get('l2_name', '?')})"


def _l2_store_submitted(event: Event) -> str:
    return (
        f"L2 store submitted: {_adapter(event)}, {event.get('key_count')} keys, "
        f"{human_bytes(event.get('total_bytes', 0))}"
    )


def _l2_completed(name: str, done_word: str, done_field: str) -> Formatter:
    def line(event: Event) -> str:
        return (
            f"L2 {name} completed: {_adapter(event)}, {event.get(done_field)} {done_word}, "
            f"{event.get('failed_count')} failed, {human_bytes(event.get('bytes_transferred', 0))} "
            f"in {millis(event.get('duration_s'))}"
        )

    return line


def _l2_prefetch_failed(event: Event) -> str:
    return f"L2 prefetch failed: {event.get('reason', '?')}, {event.get('key_count')} keys"


def _l2_keys_evicted(event: Event) -> str:
    return f"L2 keys evicted: {_adapter(event)}, {event.get('key_count')} keys"


FORMATTERS: Mapping[str, Formatter] = {
    EventType.MP_REQUEST_START: _request_start,
    EventType.MP_REQUEST_END: _request_end,
    EventType.MP_LOOKUP_PREFETCH_START: _lookup_start,
    EventType.MP_LOOKUP_PREFETCH_END: _lookup_end,
    EventType.MP_STORE_START: _transfer_start("store"),
    EventType.MP_STORE_END: _transfer_end("store", "stored_chunks"),
    EventType.MP_RETRIEVE_START: _transfer_start("retrieve"),
    EventType.MP_RETRIEVE_END: _transfer_end("retrieve", "retrieved_chunks"),
    EventType.L1_WRITE_FINISHED: _l1_write_finished,
    EventType.L1_KEYS_EVICTED: _l1_keys_evicted,
    EventType.L1_ALLOCATION_FAILED: _l1_allocation_failed,
    EventType.L2_STORE_SUBMITTED: _l2_store_submitted,
    EventType.L2_STORE_COMPLETED: _l2_completed("store", "succeeded", "succeeded_count"),
    EventType.L2_LOAD_COMPLETED: _l2_completed("load", "loaded", "loaded_count"),
    EventType.L2_PREFETCH_FAILED: _l2_prefetch_failed,
    EventType.L2_KEYS_EVICTED: _l2_keys_evicted,
}
"""The line of each event type this subscriber logs.

``mp.lookup`` is left out on purpose: subscribing to it makes the engine hex-encode
every chunk hash, and the lookup lines already carry the counts.
"""
