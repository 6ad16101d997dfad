"""The events the server publishes on its event bus, and what each one carries.

Producers publish a type and a few plain fields (numbers, strings, small dicts of
counts, and for L1 writes and evictions a tuple of the immutable ``ObjectKey``
values involved, for sampled per-chunk metrics); they never hand out live
objects, so a subscriber cannot change or keep server state alive. Names follow
upstream LMCache's dotted scheme so dashboards and logs read alike.

The metadata of each type is part of the subscriber contract: fields are only
ever added. Each type's docstring-like entry in :data:`EVENT_FIELDS` lists them.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


class EventType(enum.StrEnum):
    """Every event type the core and the default engine publish."""

    # One request (one engine request id) from its first lookup to end_session.
    MP_REQUEST_START = "mp.request.start"
    MP_REQUEST_END = "mp.request.end"
    # Lookup with its L2 prefetch.
    MP_LOOKUP_PREFETCH_START = "mp.lookup_prefetch.start"
    MP_LOOKUP_PREFETCH_END = "mp.lookup_prefetch.end"
    MP_LOOKUP = "mp.lookup"
    MP_STORE_START = "mp.store.start"
    MP_STORE_END = "mp.store.end"
    MP_RETRIEVE_START = "mp.retrieve.start"
    MP_RETRIEVE_END = "mp.retrieve.end"
    # L1.
    L1_WRITE_FINISHED = "l1.write.finished"
    L1_KEYS_EVICTED = "l1.keys.evicted"
    L1_ALLOCATION_FAILED = "l1.allocation.failed"
    L1_EVICTION_LOOP_TICK = "l1.eviction.loop_tick"
    # L2.
    L2_STORE_SUBMITTED = "l2.store.submitted"
    L2_STORE_COMPLETED = "l2.store.completed"
    L2_LOAD_COMPLETED = "l2.load.completed"
    L2_PREFETCH_FAILED = "l2.prefetch.failed"
    L2_KEYS_EVICTED = "l2.keys.evicted"


EVENT_FIELDS: Mapping[EventType, tuple[str, ...]] = {
    EventType.MP_REQUEST_START: ("request_id", "model_name", "cache_salt"),
    EventType.MP_REQUEST_END: (
        "request_id",
        "model_name",
        "cache_salt",
        "duration_s",
        "end_reason",
    ),
    EventType.MP_LOOKUP_PREFETCH_START: (
        "request_id",
        "model_name",
        "cache_salt",
        "requested_tokens",
    ),
    EventType.MP_LOOKUP_PREFETCH_END: (
        "request_id",
        "model_name",
        "cache_salt",
        "requested_tokens",
        "hit_tokens",
        "l1_hit_tokens",
        "l2_hit_tokens",
        "l1_hit_keys",
        "l2_hit_keys",
        "l2_hit_sources",
        "duration_s",
    ),
    EventType.MP_LOOKUP: (
        "request_id",
        "model_name",
        "cache_salt",
        "chunk_size",
        "seq_len",
        "chunk_hashes",
    ),
    EventType.MP_STORE_START: ("request_id", "model_name", "cache_salt", "instance_id", "chunks"),
    EventType.MP_STORE_END: (
        "request_id",
        "model_name",
        "cache_salt",
        "instance_id",
        "chunks",
        "stored_chunks",
        "bytes",
        "duration_s",
        "ok",
    ),
    EventType.MP_RETRIEVE_START: (
        "request_id",
        "model_name",
        "cache_salt",
        "instance_id",
        "chunks",
    ),
    EventType.MP_RETRIEVE_END: (
        "request_id",
        "model_name",
        "cache_salt",
        "instance_id",
        "chunks",
        "retrieved_chunks",
        "bytes",
        "duration_s",
        "ok",
    ),
    EventType.L1_WRITE_FINISHED: ("key_count", "bytes", "key_count_per_salt", "keys"),
    EventType.L1_KEYS_EVICTED: ("key_count", "bytes", "key_count_per_salt", "reason", "keys"),
    EventType.L1_ALLOCATION_FAILED: ("during", "key_count", "bytes"),
    EventType.L1_EVICTION_LOOP_TICK: ("usage", "watermark", "triggered"),
    EventType.L2_STORE_SUBMITTED: (
        "l2_name",
        "adapter_index",
        "key_count",
        "total_bytes",
        "key_count_per_salt",
    ),
    EventType.L2_STORE_COMPLETED: (
        "l2_name",
        "adapter_index",
        "succeeded_count",
        "failed_count",
        "bytes_transferred",
        "duration_s",
    ),
    EventType.L2_LOAD_COMPLETED: (
        "l2_name",
        "adapter_index",
        "loaded_count",
        "failed_count",
        "bytes_transferred",
        "duration_s",
    ),
    EventType.L2_PREFETCH_FAILED: ("reason", "key_count"),
    EventType.L2_KEYS_EVICTED: ("l2_name", "adapter_index", "key_count"),
}
"""The metadata fields each event type carries (producers may add more, never fewer)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One published event.

    Attributes:
        type: What happened (an :class:`EventType` value; plugins may publish
            their own dotted names).
        timestamp: ``time.time()`` when it was published.
        data: Its metadata; see :data:`EVENT_FIELDS`.
    """

    type: str
    timestamp: float
    data: Mapping[str, Any] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        """One metadata field, or ``default``."""
        return self.data.get(name, default)


def count_per_salt(keys: Iterable[Any]) -> dict[str, int]:
    """How many of ``keys`` (objects with a ``cache_salt``) fall under each salt."""
    return dict(Counter(key.cache_salt for key in keys))
