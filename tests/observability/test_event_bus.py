"""The event bus: bounded tail drop, isolated subscribers, one drain thread."""

from __future__ import annotations

import threading
import time

import pytest

from lmcache_core.observability import BaseSubscriber, EventBus, EventType
from lmcache_core.observability.events import EVENT_FIELDS, L1KeysEvicted, MpStoreEnd
from lmcache_core.testing.subscriber_conformance import documented_event


def evicted(key_count: int) -> L1KeysEvicted:
    """An ``l1.keys.evicted`` record with ``key_count`` (sample values elsewhere)."""
    event = documented_event(EventType.L1_KEYS_EVICTED, key_count=key_count)
    assert isinstance(event, L1KeysEvicted)
    return event


class Recorder(BaseSubscriber):
    """Keeps every event of the types it handles."""

    name = "recorder"

    def __init__(self) -> None:
        super().__init__()
        self.events: list[L1KeysEvicted | MpStoreEnd] = []
        self.threads: set[str] = set()
        self.closed = False

    def on_l1_keys_evicted(self, event: L1KeysEvicted) -> None:
        self.events.append(event)
        self.threads.add(threading.current_thread().name)

    def on_mp_store_end(self, event: MpStoreEnd) -> None:
        self.events.append(event)

    def close(self) -> None:
        self.closed = True


class Failing(BaseSubscriber):
    name = "failing"

    def on_l1_keys_evicted(self, event: L1KeysEvicted) -> None:
        raise RuntimeError("boom")


def test_base_subscriber_declares_the_types_it_handles() -> None:
    assert Recorder().event_types == {"l1.keys.evicted", "mp.store.end"}


def test_events_reach_subscribers_on_the_drain_thread_in_order() -> None:
    bus = EventBus(100)
    recorder = Recorder()
    bus.subscribe(recorder)
    bus.start()
    try:
        for i in range(10):
            bus.publish(evicted(key_count=i))
        deadline = time.monotonic() + 5
        while len(recorder.events) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        bus.stop(2)
    assert [e.key_count for e in recorder.events] == list(range(10))
    assert recorder.threads == {"lmcache-event-bus"}
    assert recorder.closed
    assert bus.stats.delivered == 10


def test_unwanted_types_are_not_even_queued() -> None:
    bus = EventBus(100)
    bus.subscribe(Recorder())
    bus.publish(documented_event(EventType.L2_STORE_COMPLETED))
    assert bus.queue_depth() == 0
    assert not bus.has_subscribers(EventType.L2_STORE_COMPLETED)
    assert bus.has_subscribers(EventType.L1_KEYS_EVICTED)


def test_a_full_queue_drops_new_events_and_counts_them() -> None:
    bus = EventBus(3)  # not started: nothing drains
    recorder = Recorder()
    bus.subscribe(recorder)
    for i in range(5):
        bus.publish(evicted(key_count=i))
    assert bus.queue_depth() == 3
    assert bus.stats.dropped == 2
    assert bus.drain() == 3
    assert [e.key_count for e in recorder.events] == [0, 1, 2]  # tail drop keeps the old


def test_a_failing_subscriber_is_counted_and_isolated(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus(100)
    recorder = Recorder()
    bus.subscribe(Failing())
    bus.subscribe(recorder)
    for _ in range(3):
        bus.publish(evicted(key_count=1))
    bus.drain()
    assert len(recorder.events) == 3
    assert bus.stats.subscriber_errors == {"failing": 3, "recorder": 0}
    warnings = [r for r in caplog.records if "subscriber failing failed" in r.message]
    assert len(warnings) == 1  # rate limited


def test_a_disabled_bus_publishes_nothing_and_runs_no_thread() -> None:
    bus = EventBus(10, enabled=False)
    bus.subscribe(Recorder())
    bus.start()
    bus.publish(evicted(key_count=1))
    assert bus.queue_depth() == 0 and bus.stats.published == 0
    assert bus.health().ok
    bus.stop(1)


def test_health_and_status() -> None:
    bus = EventBus(10)
    assert not bus.health().ok  # not started
    bus.start()
    try:
        assert bus.health().ok
        status = bus.status()
        assert status["queue_size"] == 10 and status["enabled"] is True
    finally:
        bus.stop(1)
    assert not bus.health().ok


def test_every_event_type_documents_its_fields() -> None:
    assert set(EVENT_FIELDS) == set(EventType)


def test_subscribe_rejects_non_subscribers() -> None:
    with pytest.raises(TypeError):
        EventBus(1).subscribe(object())  # type: ignore[arg-type]
