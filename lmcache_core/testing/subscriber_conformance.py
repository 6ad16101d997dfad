"""A conformance suite every event-bus subscriber's tests subclass (third-party ones too).

It checks the :class:`~lmcache_core.observability.bus.Subscriber` contract: a
``name``, ``event_types`` that are ``None`` or a frozenset of documented types,
``on_event`` that never raises for a documented event carrying its documented
fields (alone, in a whole request's sequence, with fields added later, and for a
type it did not ask for), a ``close()`` that may be called twice, and that a real
:class:`~lmcache_core.observability.bus.EventBus` delivers to it without counting
an error. Subclass it in a class whose name starts with ``Test`` and implement
:meth:`~SubscriberConformance.make_subscriber`::

    from lmcache_core.testing.subscriber_conformance import SubscriberConformance


    class TestMySubscriberConformance(SubscriberConformance):
        def make_subscriber(self, tmp_path):
            return MySubscriber(directory=tmp_path)

Set :attr:`~SubscriberConformance.own_event_types` to the plugin's own dotted
types when the subscriber wants types the core does not publish. The suite closes
every subscriber it made when the test ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, cast, get_type_hints

import msgspec
import pytest

from lmcache_core.observability.bus import EventBus, Subscriber
from lmcache_core.observability.events import (
    EVENT_RECORDS,
    Event,
    EventType,
    FirstMiss,
    L2HitSource,
    event_fields,
)
from lmcache_core.storage.keys import ObjectKey

T0 = 1_700_000_000.0
"""The timestamp of the suite's first event."""

_KEYS = tuple(ObjectKey(bytes([i]) * 32, "conformance/model", 0, 0, "") for i in range(3))

SAMPLE_VALUES: dict[str, Any] = {
    "request_id": "conformance-request",
    "model_name": "conformance/model",
    "cache_salt": "",
    "duration_s": 0.002,
    "end_reason": "end_session",
    "requested_tokens": 48,
    "hit_tokens": 32,
    "l1_hit_tokens": 16,
    "l2_hit_tokens": 16,
    "l1_hit_keys": 1,
    "l2_hit_keys": 1,
    "l2_hit_sources": (L2HitSource(l2_name="fs", adapter_index=0, keys=1, tokens=16.0),),
    "requested_chunks": 3,
    "hit_chunks_by_tier": {"l1": 1.0, "l2[1]:fs": 1.0},
    "first_miss": FirstMiss(chunk=2, cause="evicted", tier="l1", reason="eviction", removed_at=1.0),
    "miss_chunks_by_cause": {"evicted": 1},
    "chunk_size": 16,
    "seq_len": 48,
    "chunk_hashes": tuple("0x" + key.chunk_hash.hex() for key in _KEYS),
    "instance_id": 7,
    "chunks": 3,
    "stored_chunks": 3,
    "retrieved_chunks": 3,
    "bytes": 3072,
    "ok": True,
    "key_count": 3,
    "key_count_per_salt": {"": 3},
    "keys": _KEYS,
    "reason": "eviction",
    "during": "l1_store",
    "usage": 0.5,
    "watermark": 0.8,
    "triggered": False,
    "l2_name": "fs",
    "adapter_index": 0,
    "total_bytes": 3072,
    "succeeded_count": 3,
    "failed_count": 0,
    "loaded_count": 3,
    "bytes_transferred": 3072,
    # The blend engine's cb.* events.
    "num_chunks": 2,
    "num_tokens": 48,
    "prefix_hit_tokens": 16,
    "non_prefix_hit_tokens": 16,
    "segmented_prefix_hit_tokens": 0,
    "prefix_chunks": 1,
    "fingerprint_hits": 1,
    "fingerprint_matches": 2,
    "storage_hits": 1,
    "stale_chunks": 0,
    "no_gpu_context": False,
    "polls": 1,
    "segments": ((32, 16, _KEYS[0].chunk_hash.hex()),),
    "segmented_segments": ((32, 32, _KEYS[1].chunk_hash.hex()),),
    "removed": 0,
    "success": True,
    "rotated_tokens": 16,
    "dropped_matches": 0,
}
"""A plausible value of every documented event field, as producers publish them."""

REQUEST_SEQUENCE: tuple[EventType, ...] = (
    EventType.MP_REQUEST_START,
    EventType.MP_LOOKUP_PREFETCH_START,
    EventType.MP_LOOKUP,
    EventType.L2_LOAD_COMPLETED,
    EventType.MP_LOOKUP_PREFETCH_END,
    EventType.MP_RETRIEVE_START,
    EventType.MP_RETRIEVE_END,
    EventType.MP_STORE_START,
    EventType.L1_WRITE_FINISHED,
    EventType.L2_STORE_SUBMITTED,
    EventType.MP_STORE_END,
    EventType.L2_STORE_COMPLETED,
    EventType.L1_EVICTION_LOOP_TICK,
    EventType.L1_KEYS_EVICTED,
    EventType.L2_KEYS_EVICTED,
    EventType.MP_REQUEST_END,
)
"""One request's events in the order a server publishes them (failures excluded)."""


def documented_event(event_type: EventType, timestamp: float = T0, **override: Any) -> Event:
    """The record of ``event_type`` with a sample value in every field.

    Args:
        event_type: The type (its record: ``EVENT_RECORDS[event_type]``).
        timestamp: When it was published.
        **override: Fields whose sample value to replace.
    """
    record = EVENT_RECORDS[event_type]
    values = {name: SAMPLE_VALUES[name] for name in event_fields(record)}
    values.update(override)
    return record(timestamp=timestamp, **values)


def with_added_fields(event: Event, **added: Any) -> Event:
    """``event`` as a newer producer would publish it: a subclass of its record with ``added``.

    The subclass keeps the record's ``type``, so dispatch and ``isinstance`` still match.
    """
    record = type(event)
    newer = msgspec.defstruct(
        f"Newer{record.__name__}",
        [(name, type(value), value) for name, value in added.items()],
        bases=(record,),
        frozen=True,
        kw_only=True,
    )
    return cast(Event, newer(**msgspec.structs.asdict(event)))


class PluginEvent(Event, frozen=True, kw_only=True):
    """Another plugin's own event type, which no core subscriber asked for."""

    type: ClassVar[str] = "conformance.plugin.event"
    anything: int


class SubscriberConformance:
    """The shared rules of the subscriber contract; subclass it (see the module)."""

    own_event_types: frozenset[str] = frozenset()
    """Types of the plugin's own the subscriber may want besides the documented ones."""

    def make_subscriber(self, tmp_path: Path) -> Subscriber:
        """A new subscriber; ``tmp_path`` is this test's own directory for its files."""
        raise NotImplementedError("subclasses implement make_subscriber(tmp_path)")

    @pytest.fixture
    def subscriber(self, tmp_path: Path) -> Iterator[Subscriber]:
        """The subscriber under test, closed (again, which must be harmless) afterwards."""
        made = self.make_subscriber(tmp_path)
        yield made
        made.close()

    def _wanted(self, subscriber: Subscriber) -> list[EventType]:
        wanted = subscriber.event_types
        return [t for t in EventType if wanted is None or t.value in wanted]

    def test_is_a_subscriber(self, subscriber: Subscriber) -> None:
        """The subscriber satisfies the runtime-checkable ``Subscriber`` protocol."""
        assert isinstance(subscriber, Subscriber)

    def test_has_a_name(self, subscriber: Subscriber) -> None:
        """It has a non-empty name (statistics and logs show it)."""
        assert isinstance(subscriber.name, str) and subscriber.name.strip()

    def test_wants_documented_types_only(self, subscriber: Subscriber) -> None:
        """``event_types`` is None or a frozenset of documented (or its own) types."""
        wanted = subscriber.event_types
        if wanted is None:
            return  # every type: allowed
        assert isinstance(wanted, frozenset), f"event_types is a {type(wanted).__name__}"
        unknown = wanted - {t.value for t in EventType} - self.own_event_types
        assert not unknown, f"wants undocumented types {sorted(unknown)}"

    @pytest.mark.parametrize("event_type", list(EventType), ids=lambda t: t.value)
    def test_handles_each_documented_event(
        self, subscriber: Subscriber, event_type: EventType
    ) -> None:
        """Each documented event, with its documented fields, is handled without raising."""
        subscriber.on_event(documented_event(event_type))

    def test_handlers_take_their_record(self, subscriber: Subscriber) -> None:
        """Each ``on_<type>`` handler is annotated with that type's record (or a base of it)."""
        # Dispatch is by name, so only this check ties a handler's reads to its record's fields.
        for event_type, record in EVENT_RECORDS.items():
            handler = getattr(subscriber, "on_" + event_type.value.replace(".", "_"), None)
            if handler is None:
                continue
            hints = get_type_hints(handler)
            hints.pop("return", None)
            assert len(hints) == 1, f"{handler.__qualname__} takes one annotated event"
            (annotation,) = hints.values()
            assert isinstance(annotation, type) and issubclass(record, annotation), (
                f"{handler.__qualname__} takes {annotation}, not {record.__name__}"
            )

    def test_handles_a_whole_request(self, subscriber: Subscriber) -> None:
        """One request's events in publishing order are handled without raising."""
        for step, event_type in enumerate(REQUEST_SEQUENCE):
            subscriber.on_event(documented_event(event_type, T0 + 0.001 * step))

    def test_tolerates_fields_added_later(self, subscriber: Subscriber) -> None:
        """Fields a newer producer adds do not break it."""
        # "Fields are only ever added" (events.py): the subscriber must read what it knows.
        for event_type in self._wanted(subscriber):
            newer = with_added_fields(
                documented_event(event_type), added_field="new", added_count=1
            )
            subscriber.on_event(newer)

    def test_tolerates_a_type_it_did_not_ask_for(self, subscriber: Subscriber) -> None:
        """An unknown dotted type (another plugin's) does not break it."""
        # The bus filters by event_types, but a subscriber wanting every type (None)
        # receives the dotted types other plugins publish.
        subscriber.on_event(PluginEvent(timestamp=T0, anything=1))

    def test_close_may_be_called_twice(self, subscriber: Subscriber) -> None:
        """``close()`` after events, twice, does not raise."""
        subscriber.on_event(documented_event(EventType.MP_REQUEST_START))
        subscriber.close()
        subscriber.close()

    def test_a_real_bus_delivers_without_errors(self, tmp_path: Path) -> None:
        """A real bus delivers a request's events to it and counts no error."""
        bus = EventBus(queue_size=1000)
        subscriber = self.make_subscriber(tmp_path)
        bus.subscribe(subscriber)
        bus.start()
        try:
            for event_type in REQUEST_SEQUENCE:
                bus.publish(documented_event(event_type))
        finally:
            bus.stop(timeout=10.0)  # delivers what is queued, then closes the subscriber
        expected = sum(1 for t in REQUEST_SEQUENCE if bus.has_subscribers(t.value))
        assert bus.stats.delivered == expected
        assert bus.stats.subscriber_errors == {subscriber.name: 0}
