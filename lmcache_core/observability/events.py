"""The events the server publishes on its event bus: one frozen record per type.

Producers build a record of the event's own class (mypy checks that none omits
a field) and publish it; subscribers read typed attributes. Records carry plain
values (numbers, strings, small mappings of counts, nested frozen records, and
for L1 writes and evictions a tuple of the immutable ``ObjectKey`` values
involved, for sampled per-chunk metrics); they never hold live objects, so a
subscriber cannot change or keep server state alive. Type names follow upstream
LMCache's dotted scheme so dashboards and logs read alike.

The records are :class:`msgspec.Struct` subclasses, not dataclasses: building
one costs about a fifth of a frozen slots dataclass (``__init__`` in C instead
of one ``object.__setattr__`` per field), and the data path builds one per
lookup, store and retrieve (docs/benchmarks.md).

The fields of each type are part of the subscriber contract: fields are only
ever added. ``tests/observability/event_schema.json`` is the snapshot a test
holds the records to; ``python -m tests.observability.event_schema`` records an
added field and refuses a removed, renamed or retyped one.
"""

from __future__ import annotations

import enum
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

if TYPE_CHECKING:
    # Not at run time: storage imports this module, and the packages must not form a cycle.
    # msgspec resolves annotations only to encode or decode, which the bus never does.
    from lmcache_core.storage.keys import ObjectKey


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
    # CacheBlend (the ``blend`` engine).
    CB_FINGERPRINTS_REGISTERED = "cb.fingerprints.registered"
    CB_LOOKUP_START = "cb.lookup.start"
    CB_LOOKUP_END = "cb.lookup.end"
    CB_CHUNKS_EVICTED = "cb.chunks.evicted"
    CB_RETRIEVE_END = "cb.retrieve.end"
    CB_RETRIEVE_NOOP = "cb.retrieve.noop"


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """The base of every published event (a plugin's own events subclass it too).

    Subclasses set the class attribute :attr:`type` to their dotted name; the bus
    and :class:`~lmcache_core.observability.subscribers.BaseSubscriber` route by it.

    Attributes:
        type: What happened (an :class:`EventType` value, or a plugin's own
            dotted name); a class attribute, not a field.
        timestamp: ``time.time()`` when the record was built (at publish).
    """

    type: ClassVar[str]
    timestamp: float = msgspec.field(default_factory=time.time)


class RequestEvent(Event, frozen=True, kw_only=True):
    """An event of one engine request (the ``mp.*`` types)."""

    request_id: str
    model_name: str
    cache_salt: str


class MpRequestStart(RequestEvent, frozen=True, kw_only=True):
    """A request's first lookup (its session was opened)."""

    type: ClassVar[str] = EventType.MP_REQUEST_START


class MpRequestEnd(RequestEvent, frozen=True, kw_only=True):
    """A request's session ended (``end_reason``: ``end_session``, ``expired``, ...)."""

    type: ClassVar[str] = EventType.MP_REQUEST_END
    duration_s: float
    end_reason: str


class MpLookupPrefetchStart(RequestEvent, frozen=True, kw_only=True):
    """A lookup (with its L2 prefetch) began for ``requested_tokens`` tokens."""

    type: ClassVar[str] = EventType.MP_LOOKUP_PREFETCH_START
    requested_tokens: int


class L2HitSource(msgspec.Struct, frozen=True, kw_only=True):
    """Which L2 adapter supplied part of a lookup's hit, and how much of it."""

    l2_name: str
    adapter_index: int
    keys: int
    tokens: float


class FirstMiss(msgspec.Struct, frozen=True, kw_only=True):
    """The first chunk of a lookup that is not a hit, and why.

    Attributes:
        chunk: Its index in the request (0-based; ``requested_tokens //
            chunk_size`` for the partial chunk at the end).
        cause: A :class:`~lmcache_core.observability.miss_causes.MissCause` value.
        tier: For ``evicted``: the tier it left (``l1``, ``l2[1]:fs``, ...).
        policy: For ``evicted``: that tier's eviction policy, when it has one.
        reason: For ``evicted``: ``eviction``, ``quota`` or ``deleted``.
        removed_at: For ``evicted``: when (seconds since the epoch).
    """

    chunk: int
    cause: str
    tier: str | None = None
    policy: str | None = None
    reason: str | None = None
    removed_at: float | None = None


class MpLookupPrefetchEnd(RequestEvent, frozen=True, kw_only=True):
    """A lookup's result: hits per tier and adapter, and why the rest missed.

    The miss fields carry the first missing chunk's cause and a count per cause.
    """

    type: ClassVar[str] = EventType.MP_LOOKUP_PREFETCH_END
    requested_tokens: int
    hit_tokens: int
    l1_hit_tokens: int
    l2_hit_tokens: int
    l1_hit_keys: int
    l2_hit_keys: int
    l2_hit_sources: tuple[L2HitSource, ...]
    duration_s: float
    requested_chunks: int = 0
    """Full chunks the lookup asked for (the partial chunk at the end not counted)."""
    hit_chunks_by_tier: Mapping[str, float] = msgspec.field(default_factory=dict)
    """Hit chunks per tier: ``l1`` and each L2 adapter as ``l2[<index>]:<type>`` (a
    chunk whose ranks came from several adapters counts for each by its share)."""
    first_miss: FirstMiss | None = None
    """The first chunk that is not a hit (None: a full hit with no partial chunk)."""
    miss_chunks_by_cause: Mapping[str, int] = msgspec.field(default_factory=dict)
    """Every chunk that is not a hit, counted by cause (the partial chunk included)."""


class MpLookup(RequestEvent, frozen=True, kw_only=True):
    """The chunk hashes a lookup asked for (only built when a subscriber wants it)."""

    type: ClassVar[str] = EventType.MP_LOOKUP
    chunk_size: int
    seq_len: int
    chunk_hashes: tuple[str, ...]


class TransferEvent(RequestEvent, frozen=True, kw_only=True):
    """A store or retrieve of one worker (``instance_id``) over ``chunks`` chunks."""

    instance_id: int
    chunks: int


class MpStoreStart(TransferEvent, frozen=True, kw_only=True):
    """A store began."""

    type: ClassVar[str] = EventType.MP_STORE_START


class MpStoreEnd(TransferEvent, frozen=True, kw_only=True):
    """A store ended: chunks written, bytes, duration and whether it succeeded."""

    type: ClassVar[str] = EventType.MP_STORE_END
    stored_chunks: int
    bytes: int
    duration_s: float
    ok: bool


class MpRetrieveStart(TransferEvent, frozen=True, kw_only=True):
    """A retrieve began."""

    type: ClassVar[str] = EventType.MP_RETRIEVE_START


class MpRetrieveEnd(TransferEvent, frozen=True, kw_only=True):
    """A retrieve ended: chunks copied, bytes, duration and whether it succeeded."""

    type: ClassVar[str] = EventType.MP_RETRIEVE_END
    retrieved_chunks: int
    bytes: int
    duration_s: float
    ok: bool


class L1WriteFinished(Event, frozen=True, kw_only=True):
    """Objects were committed to L1."""

    type: ClassVar[str] = EventType.L1_WRITE_FINISHED
    key_count: int
    bytes: int
    key_count_per_salt: Mapping[str, int]
    keys: tuple[ObjectKey, ...]


class L1KeysEvicted(Event, frozen=True, kw_only=True):
    """Objects left L1 (``reason``: why)."""

    type: ClassVar[str] = EventType.L1_KEYS_EVICTED
    key_count: int
    bytes: int
    key_count_per_salt: Mapping[str, int]
    reason: str
    keys: tuple[ObjectKey, ...]


class L1AllocationFailed(Event, frozen=True, kw_only=True):
    """L1 refused a reservation (``during``: which path asked)."""

    type: ClassVar[str] = EventType.L1_ALLOCATION_FAILED
    during: str
    key_count: int
    bytes: int


class L1EvictionLoopTick(Event, frozen=True, kw_only=True):
    """One watermark check of the L1 eviction loop (every 0.1 s: subscribers' clock)."""

    type: ClassVar[str] = EventType.L1_EVICTION_LOOP_TICK
    usage: float
    watermark: float
    triggered: bool


class L2AdapterEvent(Event, frozen=True, kw_only=True):
    """An event of one L2 adapter (its name and position in the tier)."""

    l2_name: str
    adapter_index: int


class L2StoreSubmitted(L2AdapterEvent, frozen=True, kw_only=True):
    """A store batch was handed to an adapter."""

    type: ClassVar[str] = EventType.L2_STORE_SUBMITTED
    key_count: int
    total_bytes: int
    key_count_per_salt: Mapping[str, int]


class L2StoreCompleted(L2AdapterEvent, frozen=True, kw_only=True):
    """An adapter finished a store batch."""

    type: ClassVar[str] = EventType.L2_STORE_COMPLETED
    succeeded_count: int
    failed_count: int
    bytes_transferred: int
    duration_s: float
    keys: tuple[ObjectKey, ...] = ()
    """The keys stored (the KV event stream reports them)."""


class L2LoadCompleted(L2AdapterEvent, frozen=True, kw_only=True):
    """An adapter finished a prefetch load."""

    type: ClassVar[str] = EventType.L2_LOAD_COMPLETED
    loaded_count: int
    failed_count: int
    bytes_transferred: int
    duration_s: float


class L2PrefetchFailed(Event, frozen=True, kw_only=True):
    """A prefetch was abandoned (``reason``: e.g. ``l1_oom``)."""

    type: ClassVar[str] = EventType.L2_PREFETCH_FAILED
    reason: str
    key_count: int


class L2KeysEvicted(L2AdapterEvent, frozen=True, kw_only=True):
    """An adapter's eviction deleted objects."""

    type: ClassVar[str] = EventType.L2_KEYS_EVICTED
    key_count: int
    keys: tuple[ObjectKey, ...] = ()
    """The keys deleted (the KV event stream reports them)."""


class CbFingerprintsRegistered(Event, frozen=True, kw_only=True):
    """Stored chunks were newly indexed by content fingerprint (``blend`` engine)."""

    type: ClassVar[str] = EventType.CB_FINGERPRINTS_REGISTERED
    num_chunks: int
    num_tokens: int


class CbLookupStart(RequestEvent, frozen=True, kw_only=True):
    """A ``cb_unified_lookup`` began (its first poll)."""

    type: ClassVar[str] = EventType.CB_LOOKUP_START
    num_tokens: int


class CbLookupEnd(RequestEvent, frozen=True, kw_only=True):
    """A ``cb_unified_lookup`` returned its result.

    Hit tokens are per class (prefix, non-prefix, segmented prefix); ``hit_tokens``
    is their union; ``requested_tokens`` the prompt rounded down to whole chunks.
    ``fingerprint_matches`` counts what the index matched, ``fingerprint_hits`` the
    distinct candidates past the prefix, ``storage_hits`` those whose KV was found,
    ``stale_chunks`` those whose KV exists nowhere; ``segments`` lists the non-prefix
    segments as ``(old_st, cur_st, chunk hash hex)``, ``segmented_segments`` the
    segmented-prefix ones (post-gap chunks at their own place) the same way.
    """

    type: ClassVar[str] = EventType.CB_LOOKUP_END
    num_tokens: int
    requested_tokens: int
    hit_tokens: int
    prefix_hit_tokens: int
    non_prefix_hit_tokens: int
    segmented_prefix_hit_tokens: int
    prefix_chunks: int
    fingerprint_hits: int
    storage_hits: int
    stale_chunks: int
    no_gpu_context: bool
    polls: int
    duration_s: float
    fingerprint_matches: int = 0
    segments: tuple[tuple[int, int, str], ...] = ()
    segmented_segments: tuple[tuple[int, int, str], ...] = ()


class CbChunksEvicted(RequestEvent, frozen=True, kw_only=True):
    """A lookup found stale fingerprints: ``num_chunks`` struck, ``removed`` dropped."""

    type: ClassVar[str] = EventType.CB_CHUNKS_EVICTED
    num_chunks: int
    removed: int


class CbRetrieveEnd(RequestEvent, frozen=True, kw_only=True):
    """A ``cb_retrieve_pre_computed`` wrote (``success``) or failed (``reason``)."""

    type: ClassVar[str] = EventType.CB_RETRIEVE_END
    success: bool
    reason: str
    num_chunks: int
    num_tokens: int
    rotated_tokens: int
    duration_s: float


class CbRetrieveNoop(RequestEvent, frozen=True, kw_only=True):
    """A ``cb_retrieve_pre_computed`` wrote nothing, and why (``already_applied``, ...)."""

    type: ClassVar[str] = EventType.CB_RETRIEVE_NOOP
    reason: str
    dropped_matches: int


EVENT_RECORDS: Mapping[EventType, type[Event]] = {
    EventType(record.type): record
    for record in (
        MpRequestStart,
        MpRequestEnd,
        MpLookupPrefetchStart,
        MpLookupPrefetchEnd,
        MpLookup,
        MpStoreStart,
        MpStoreEnd,
        MpRetrieveStart,
        MpRetrieveEnd,
        L1WriteFinished,
        L1KeysEvicted,
        L1AllocationFailed,
        L1EvictionLoopTick,
        L2StoreSubmitted,
        L2StoreCompleted,
        L2LoadCompleted,
        L2PrefetchFailed,
        L2KeysEvicted,
        CbFingerprintsRegistered,
        CbLookupStart,
        CbLookupEnd,
        CbChunksEvicted,
        CbRetrieveEnd,
        CbRetrieveNoop,
    )
}
"""The record class of each documented event type, in documentation order."""


def event_fields(record: type[Event]) -> tuple[str, ...]:
    """The metadata fields of a record class, in order (``timestamp`` left out)."""
    return tuple(name for name in record.__struct_fields__ if name != "timestamp")


EVENT_FIELDS: Mapping[EventType, tuple[str, ...]] = {
    event_type: event_fields(record) for event_type, record in EVENT_RECORDS.items()
}
"""The metadata fields each event type carries, derived from its record (only ever added)."""


def as_builtins(value: Any) -> Any:
    """A nested record (such as :class:`L2HitSource`) as a dict; anything else unchanged."""
    if isinstance(value, msgspec.Struct):
        return msgspec.structs.asdict(value)
    return value


def count_per_salt(keys: Iterable[Any]) -> dict[str, int]:
    """How many of ``keys`` (objects with a ``cache_salt``) fall under each salt."""
    return dict(Counter(key.cache_salt for key in keys))
