"""The base adapter's data path: per-key concurrency, ordered admission, scratch-buffer loads.

A small in-memory adapter (a dict behind a lock, implementing only the required
hooks) exercises what :class:`L2AdapterV1` itself does; the backends' own
``_get_into`` overrides are tested in their plugins.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1
from lmcache_core.storage.l2.object_format import HEADER_SIZE

WAIT_S = 10.0


class SlowDictAdapter(L2AdapterV1):
    """Objects in a dict; every put sleeps, so concurrent puts overlap measurably."""

    def __init__(self, *, capacity_bytes: int = 0, put_s: float = 0.0) -> None:
        super().__init__("dict", capacity_bytes=capacity_bytes, num_workers=4)
        self.put_s = put_s
        self.objects: dict[ObjectKey, bytes] = {}
        self.gets = 0
        self.concurrent = 0
        self.max_concurrent = 0
        self._state = threading.Lock()

    def _put(self, key: ObjectKey, parts: Sequence[bytes | memoryview]) -> None:
        with self._state:
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        time.sleep(self.put_s)
        with self._state:
            self.concurrent -= 1
            self.objects[key] = b"".join(parts)

    def _exists(self, key: ObjectKey) -> bool:
        return key in self.objects

    def _get(self, key: ObjectKey, size: int) -> bytes | None:
        self.gets += 1
        return self.objects.get(key)

    def _remove(self, key: ObjectKey) -> bool:
        return self.objects.pop(key, None) is not None


@pytest.fixture
def adapters() -> Iterator[list[SlowDictAdapter]]:
    made: list[SlowDictAdapter] = []
    yield made
    for adapter in made:
        adapter.close()


def keys(count: int) -> list[ObjectKey]:
    return [ObjectKey(bytes([i]) * 32, "m", 0) for i in range(count)]


def test_a_batch_is_written_concurrently_and_admitted_in_key_order(
    adapters: list[SlowDictAdapter],
) -> None:
    size = 1000
    adapter = SlowDictAdapter(capacity_bytes=3 * (size + HEADER_SIZE), put_s=0.2)
    adapters.append(adapter)
    adapter.start()
    started = time.monotonic()
    results = adapter.submit_store(keys(5), [bytes([i]) * size for i in range(5)]).result(WAIT_S)
    elapsed = time.monotonic() - started
    assert results == [True, True, True, False, False]  # the first keys that fit
    assert adapter.max_concurrent == 3
    assert elapsed < 0.5, f"three 0.2 s puts took {elapsed:.2f} s: not concurrent"
    assert adapter.used_bytes == 3 * (size + HEADER_SIZE)
    assert adapter.refused_full == 2


def test_an_empty_batch_and_an_all_refused_batch_complete(adapters: list[SlowDictAdapter]) -> None:
    adapter = SlowDictAdapter(capacity_bytes=10)
    adapters.append(adapter)
    adapter.start()
    assert adapter.submit_store([], []).result(WAIT_S) == []
    assert adapter.submit_load([], []).result(WAIT_S) == []
    assert adapter.submit_store(keys(2), [b"x" * 100] * 2).result(WAIT_S) == [False, False]


@pytest.mark.parametrize("scratch", [False, True])
def test_loads_verify_in_both_modes_and_only_safe_mode_keeps_a_missed_buffer(
    adapters: list[SlowDictAdapter], scratch: bool
) -> None:
    adapter = SlowDictAdapter()
    adapters.append(adapter)
    adapter.start()
    adapter.buffers_are_scratch = scratch  # the default _get_into reads through _get
    stored = keys(2)
    payloads = [b"a" * 500, b"b" * 700]
    assert adapter.submit_store(stored, payloads).result(WAIT_S) == [True, True]
    buffers = [bytearray(500), bytearray(700)]
    views = [memoryview(b) for b in buffers]
    assert adapter.submit_load(stored, views).result(WAIT_S) == [True, True]
    assert [bytes(b) for b in buffers] == payloads
    damaged = bytearray(adapter.objects[stored[1]])
    damaged[HEADER_SIZE + 10] ^= 0xFF
    adapter.objects[stored[1]] = bytes(damaged)
    buffer = bytearray(b"\xa5" * 700)
    assert adapter.submit_load(stored[1:], [memoryview(buffer)]).result(WAIT_S) == [False]
    assert adapter.corrupt == 1
    if not scratch:
        assert buffer == b"\xa5" * 700, "a corrupt object wrote into a caller's buffer"
    wrong_size = [memoryview(bytearray(499))]
    assert adapter.submit_load(stored[:1], wrong_size).result(WAIT_S) == [False]


# -- the tier: a load that timed out keeps its L1 reservations until it finished --------------


class GatedDictAdapter(SlowDictAdapter):
    """Loads wait for a gate, writing the buffer as they go (as ``_get_into`` may)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def _get_into(self, key: ObjectKey, parts: Sequence[memoryview]) -> bool:
        self.gate.wait(WAIT_S)
        return super()._get_into(key, parts)


class StoreEverywhere:
    keep_in_l1 = True

    def targets(self, adapter_count: int) -> Sequence[int]:
        return range(adapter_count)


class FirstHolder:
    temporary = True

    def choose(self, holders: Sequence[int]) -> int:
        return holders[0]


def test_a_timed_out_load_frees_its_l1_reservations_only_once_it_finished() -> None:
    from lmcache_core.storage.l2.tier import L2Tier
    from tests.storage.doubles import make_l1

    l1 = make_l1()
    adapter = GatedDictAdapter()
    adapter.start()
    tier = L2Tier([adapter], l1, StoreEverywhere(), FirstHolder(), max_in_flight=2, timeout_s=0.2)
    try:
        assert adapter.buffers_are_scratch  # the tier asks for in-place loads
        stored = keys(2)
        assert adapter.submit_store(stored, [b"k" * 4096] * 2).result(WAIT_S) == [True, True]
        assert tier.prefetch([[k] for k in stored], 4096, readers=1).chunks == 0  # timed out
        assert tier.stats.adapter_timeouts == 1
        # The adapter may still write into those reservations: they are not freed yet.
        assert l1.usage().staged_objects == 2
        adapter.gate.set()
        deadline = time.monotonic() + WAIT_S
        while l1.usage().staged_objects and time.monotonic() < deadline:
            time.sleep(0.01)
        assert l1.usage().staged_objects == 0
        assert l1.usage().used_bytes == 0
    finally:
        adapter.gate.set()
        adapter.close()
        l1.close()


def test_prefetches_in_flight_count_while_a_load_runs() -> None:
    from lmcache_core.storage.l2.tier import L2Tier
    from tests.storage.doubles import make_l1

    l1 = make_l1()
    adapter = GatedDictAdapter()
    adapter.start()
    tier = L2Tier([adapter], l1, StoreEverywhere(), FirstHolder(), max_in_flight=2, timeout_s=5)
    try:
        stored = keys(1)
        assert adapter.submit_store(stored, [b"k" * 4096]).result(WAIT_S) == [True]
        assert tier.prefetches_in_flight() == 0
        results: list[int] = []
        loader = threading.Thread(
            target=lambda: results.append(tier.prefetch([stored], 4096, readers=1).chunks)
        )
        loader.start()
        deadline = time.monotonic() + WAIT_S
        while tier.prefetches_in_flight() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert tier.prefetches_in_flight() == 1  # held by the gated load
        adapter.gate.set()
        loader.join(WAIT_S)
        assert results == [1]
        assert tier.prefetches_in_flight() == 0
    finally:
        adapter.gate.set()
        adapter.close()
        l1.close()


def test_the_tier_publishes_store_and_load_events_per_adapter() -> None:
    from lmcache_core.observability import BaseSubscriber, EventBus
    from lmcache_core.observability.events import (
        L2AdapterEvent,
        L2LoadCompleted,
        L2StoreCompleted,
        L2StoreSubmitted,
    )
    from lmcache_core.storage.l2.tier import L2Tier
    from tests.storage.doubles import make_l1

    class Recorder(BaseSubscriber):
        name = "recorder"

        def __init__(self) -> None:
            super().__init__()
            self.seen: list[L2AdapterEvent] = []

        def on_l2_store_submitted(self, event: L2AdapterEvent) -> None:
            self.seen.append(event)

        def on_l2_store_completed(self, event: L2AdapterEvent) -> None:
            self.seen.append(event)

        def on_l2_load_completed(self, event: L2AdapterEvent) -> None:
            self.seen.append(event)

    bus, recorder = EventBus(100), Recorder()
    bus.subscribe(recorder)
    l1 = make_l1()
    adapters = [SlowDictAdapter(), SlowDictAdapter()]
    for adapter in adapters:
        adapter.start()
    tier = L2Tier(adapters, l1, StoreEverywhere(), FirstHolder(), max_in_flight=2, timeout_s=5)
    tier.events = bus
    try:
        stored = [k._replace(cache_salt="t") for k in keys(2)]
        reservations = [r for r in l1.reserve(stored, 4096) if r is not None]
        l1.commit(reservations)
        assert tier.store_now(stored, 4096) == [True, True]
        l1.delete(stored)
        assert tier.prefetch([[k] for k in stored], 4096, readers=1).keys_by_adapter == (2, 0)
        bus.drain()
        summary = [(e.type, e.adapter_index) for e in recorder.seen]
        assert summary == [
            ("l2.store.submitted", 0),
            ("l2.store.submitted", 1),
            ("l2.store.completed", 0),
            ("l2.store.completed", 1),
            ("l2.load.completed", 0),
        ]
        submitted, completed, loaded = recorder.seen[0], recorder.seen[2], recorder.seen[4]
        assert isinstance(submitted, L2StoreSubmitted)
        assert submitted.total_bytes == 2 * 4096
        assert submitted.key_count_per_salt == {"t": 2}
        assert isinstance(completed, L2StoreCompleted) and completed.succeeded_count == 2
        assert isinstance(loaded, L2LoadCompleted) and loaded.loaded_count == 2
    finally:
        for adapter in adapters:
            adapter.close()
        l1.close()
