"""Every event a real data path publishes is its type's record, every documented field set.

A real data path (L1, an ``fs`` L2 adapter, the default engine) is assembled in
process with a subscriber that records every type; a worker's store, a lookup
that hits L1, one that prefetches from L2, a retrieve and ``end_session`` run
through the engine's handlers as the request server's threads call them.
"""

from __future__ import annotations

import time
import types
import typing
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import msgspec
import pytest
import torch

from lmcache_core.client.cpu_worker import CpuKVWorker
from lmcache_core.config.loading import load_config
from lmcache_core.config.resolution import resolve_plugins
from lmcache_core.engine.contract import RequestContext
from lmcache_core.observability.bus import EventBus
from lmcache_core.observability.events import EVENT_RECORDS, Event, EventType
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.protocol.codec import encode_device_handle
from lmcache_core.protocol.types import WireCacheKey
from lmcache_core.server.data_path import DataPath, build_data_path
from lmcache_core.transfer.layout import KVFormat, KVLayout
from tests.observability.event_schema import _hints

CHUNK = 16
LAYOUT = KVLayout(KVFormat.NHD, 2, 32, 4, 2, 16, torch.float16)  # 4 blocks per chunk
CTX = RequestContext(b"client", "op")

BLEND_TYPES = frozenset(t for t in EventType if t.value.startswith("cb."))
"""Published by the blend engine only (the blend test below)."""

PRESSURE_TYPES = frozenset({EventType.L1_KEYS_EVICTED, EventType.L2_KEYS_EVICTED})
"""Published by the pressure test: both tiers evict at once (watermark 0)."""
TRAFFIC_TYPES = (
    frozenset(EventType)
    - PRESSURE_TYPES
    - {
        # Failure paths this traffic does not reach; the storage tests drive them.
        EventType.L1_ALLOCATION_FAILED,
        EventType.L2_PREFETCH_FAILED,
        # The blend engine's: test_blend_events_are_their_records_with_every_field_set.
        *BLEND_TYPES,
    }
)
"""The types the normal traffic below must publish."""


class Everything:
    """Records every event (``event_types`` None: the producers build every record)."""

    name = "everything"
    event_types: frozenset[str] | None = None

    def __init__(self) -> None:
        self.events: list[Event] = []

    def on_event(self, event: Event) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


def conforms(value: Any, annotation: Any) -> bool:
    """Whether ``value`` is of the field type ``annotation`` (as far as these records use)."""
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is None:
        if annotation is float:
            return isinstance(value, int | float) and not isinstance(value, bool)
        if annotation is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, annotation)
    if origin is types.UnionType or origin is typing.Union:
        return any(conforms(value, a) for a in arguments)
    if origin is tuple and arguments[-1] is not Ellipsis:  # a fixed-length tuple
        return (
            isinstance(value, tuple)
            and len(value) == len(arguments)
            and all(conforms(v, a) for v, a in zip(value, arguments, strict=True))
        )
    if origin is tuple:
        return isinstance(value, tuple) and all(conforms(v, arguments[0]) for v in value)
    if origin is Mapping or origin is dict:
        key, item = arguments
        return isinstance(value, Mapping) and all(
            conforms(k, key) and conforms(v, item) for k, v in value.items()
        )
    raise AssertionError(f"no rule for {annotation}")


def key(ids: list[int], end: int, request_id: str, worker_id: int | None) -> WireCacheKey:
    return WireCacheKey(
        model_name="model",
        world_size=1,
        worker_id=worker_id,
        token_ids=msgspec.Raw(msgspec.msgpack.encode(ids)),
        start=0,
        end=end,
        request_id=request_id,
    )


def assembled(
    tmp_path: Path, watermark: float | None = None, engine: str = "default"
) -> Iterator[tuple[DataPath, EventBus, Everything]]:
    """A started data path (no request server) whose bus records every event.

    ``watermark``: when given, both L1 and the L2 adapter evict above it.
    """
    adapter: dict[str, Any] = {
        "type": "fs",
        "base_path": str(tmp_path / "l2"),
        "max_capacity_gb": 0.01,
    }
    values: dict[str, Any] = {
        "l1_size_gb": 0.01,
        "eviction_policy": "LRU",
        "chunk_size": CHUNK,
        "shm_name": f"lmcache-test-{uuid.uuid4().hex[:8]}",
        "l2_adapter": [adapter],
        "engine_type": engine,
    }
    if watermark is not None:
        values["eviction_trigger_watermark"] = watermark
        adapter["eviction"] = {"eviction_policy": "LRU", "trigger_watermark": watermark}
    config = load_config(values)
    registry = PluginRegistry(strict=True)
    bus, recorder = EventBus(100_000), Everything()
    bus.subscribe(recorder)
    with ExitStack() as cleanup:
        built = build_data_path(config, registry, resolve_plugins(config, registry), bus, cleanup)
        # Not the request server: the handlers are called directly, no socket is bound.
        started = [c for c in built.components if c is not built.request_server]
        for component in started:
            component.start()
        try:
            yield built, bus, recorder
        finally:
            for component in reversed(started):
                component.stop(5.0)


@pytest.fixture
def data_path(tmp_path: Path) -> Iterator[tuple[DataPath, EventBus, Everything]]:
    yield from assembled(tmp_path)


@pytest.fixture
def blend_path(tmp_path: Path) -> Iterator[tuple[DataPath, EventBus, Everything]]:
    yield from assembled(tmp_path, engine="blend")


@pytest.fixture
def pressured(tmp_path: Path) -> Iterator[tuple[DataPath, EventBus, Everything]]:
    yield from assembled(tmp_path, watermark=0.0)


def wait_for(recorder: Everything, bus: EventBus, event_type: EventType, count: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        bus.drain()
        if sum(e.type == event_type for e in recorder.events) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} {event_type} events")


def test_every_published_event_is_its_record_with_every_field_set(
    data_path: tuple[DataPath, EventBus, Everything],
) -> None:
    path, bus, recorder = data_path
    handlers = path.engine.handlers()
    worker = CpuKVWorker(None, LAYOUT, instance_id=5)  # type: ignore[arg-type]  # no client
    try:
        handles = [encode_device_handle(h) for h in worker.handles]
        handlers["register_kv_cache"](CTX, 5, handles, "model", 1, "vllm", {"kv_layout": "NHD"}, [])
        ids = list(range(3 * CHUNK))
        blocks = list(range(1, 13))
        assert handlers["store"](CTX, key(ids, 3 * CHUNK, "writer", 0), 5, [blocks], b"")[1]
        wait_for(recorder, bus, EventType.L2_STORE_COMPLETED, 1)  # the L2 store thread's copy
        # An L1 hit, retrieved, then the session ends.
        handlers["lookup"](CTX, key(ids, 3 * CHUNK, "reader", None), 1)
        assert handlers["wait_prefetch_status"](CTX, "reader", 10.0) == 3
        assert handlers["retrieve"](CTX, key(ids, 3 * CHUNK, "reader", 0), 5, [blocks], b"", 0)[1]
        handlers["end_session"](CTX, "reader")
        # Chunks 1 and 2 only in L2: the next lookup prefetches them.
        assert path.l1.delete(path.l1.keys()[1:]) == 2
        handlers["lookup"](CTX, key(ids, 3 * CHUNK, "second", None), 1)
        assert handlers["wait_prefetch_status"](CTX, "second", 10.0) == 3
        handlers["end_session"](CTX, "second")
        wait_for(recorder, bus, EventType.L1_EVICTION_LOOP_TICK, 1)  # the L1 controller's tick
    finally:
        worker.close()
    bus.drain()
    seen = {e.type for e in recorder.events}
    assert seen >= TRAFFIC_TYPES, f"not published: {sorted(TRAFFIC_TYPES - seen)}"
    assert_records(recorder.events)


def test_eviction_events_are_their_records_with_every_field_set(
    pressured: tuple[DataPath, EventBus, Everything],
) -> None:
    path, bus, recorder = pressured
    handlers = path.engine.handlers()
    worker = CpuKVWorker(None, LAYOUT, instance_id=5)  # type: ignore[arg-type]  # no client
    try:
        handles = [encode_device_handle(h) for h in worker.handles]
        handlers["register_kv_cache"](CTX, 5, handles, "model", 1, "vllm", {"kv_layout": "NHD"}, [])
        ids = list(range(3 * CHUNK))
        assert handlers["store"](CTX, key(ids, 3 * CHUNK, "w", 0), 5, [list(range(1, 13))], b"")[1]
        # Watermark 0: the L1 controller and the L2 eviction cycle evict what was stored.
        wait_for(recorder, bus, EventType.L1_KEYS_EVICTED, 1)
        wait_for(recorder, bus, EventType.L2_KEYS_EVICTED, 1)
    finally:
        worker.close()
    bus.drain()
    assert {e.type for e in recorder.events} >= PRESSURE_TYPES
    assert_records(recorder.events)


def assert_records(events: list[Event]) -> None:
    """Each event is exactly its type's record, every field of its documented type."""
    for event in events:
        record = EVENT_RECORDS[EventType(event.type)]
        assert type(event) is record, f"{event.type} published as {type(event).__name__}"
        hints = _hints(record)
        for name in record.__struct_fields__:
            value = getattr(event, name)
            assert conforms(value, hints[name]), f"{event.type}.{name} = {value!r}"


def test_blend_events_are_their_records_with_every_field_set(
    blend_path: tuple[DataPath, EventBus, Everything],
) -> None:
    from lmcache_core.testing.rope_reference import cos_sin_cache
    from tests.blend.rig import shm_cache

    path, bus, recorder = blend_path
    handlers = path.engine.handlers()
    worker = CpuKVWorker(None, LAYOUT, instance_id=5)  # type: ignore[arg-type]  # no client
    rope, keep = shm_cache(cos_sin_cache(1024, 16))
    try:
        handles = [encode_device_handle(h) for h in worker.handles]
        handlers["register_kv_cache"](CTX, 5, handles, "model", 1, "vllm", {"kv_layout": "NHD"}, [])
        handlers["cb_register_rope"](CTX, 5, [rope], 16, True, [], [], [], "")
        docs = [list(range(i * 100, i * 100 + CHUNK)) for i in range(1, 4)]
        stored = [t for d in docs for t in d]
        blocks = list(range(1, 13))
        assert handlers["store"](CTX, key(stored, 3 * CHUNK, "writer", 0), 5, [blocks], b"")[1]
        wait_for(recorder, bus, EventType.L2_STORE_COMPLETED, 1)
        # The last document only: stale once it is gone from both tiers.
        gone = path.l1.keys()[2:]
        assert path.l1.delete(gone) == 1
        assert path.l2 is not None and path.l2.adapters[0].delete(gone, force=True) == 1
        query = [7] * CHUNK + docs[2] + docs[1]
        lookup_key = msgspec.structs.replace(
            key(query, len(query), "reader", None), num_kv_readers=1
        )
        deadline = time.monotonic() + 20
        while (result := handlers["cb_unified_lookup"](CTX, lookup_key, 1)) is None:
            assert time.monotonic() < deadline, "the unified lookup never answered"
            time.sleep(0.01)
        assert len(result.non_prefix_segments) == 1
        segments = result.non_prefix_segments
        retrieve = handlers["cb_retrieve_pre_computed"]
        assert retrieve(CTX, key(query, len(query), "reader", 0), segments, [blocks], 5, b"")[1]
        assert retrieve(CTX, key(query, len(query), "reader", 0), segments, [blocks], 5, b"")[1]
        handlers["end_session"](CTX, "reader")
    finally:
        keep[1]()
        worker.close()
    bus.drain()
    seen = {e.type for e in recorder.events}
    assert seen >= BLEND_TYPES, f"not published: {sorted(BLEND_TYPES - seen)}"
    assert_records(recorder.events)
