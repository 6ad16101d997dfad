"""Request spans from events: parents, times, attributes, and the bounds on open spans."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from lmcache_obs_tracing.provider import (
    SERVICE_NAME,
    TRACER_NAME,
    otlp_exporter,
    shutdown_within,
    tracer_provider,
)
from lmcache_obs_tracing.spans import RequestSpans, nanos, to_attribute
from lmcache_obs_tracing.subscriber import TracingSubscriber
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from lmcache_core.observability.events import Event, EventType
from lmcache_core.testing.otlp_receiver import otlp_trace_receiver
from lmcache_core.testing.subscriber_conformance import documented_event

T0 = 1_700_000_000.0
IDENT = {"request_id": "r1", "model_name": "m", "cache_salt": ""}


@pytest.fixture
def exported() -> Iterator[tuple[InMemorySpanExporter, TracerProvider]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter, provider
    provider.shutdown()


def ev(event_type: EventType, ts: float, **data: object) -> Event:
    return documented_event(event_type, ts, **{**IDENT, **data})


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


def test_a_request_becomes_a_root_with_children(
    exported: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    exporter, provider = exported
    spans = RequestSpans(provider.get_tracer(TRACER_NAME), idle_ttl_s=600)
    for event in [
        ev(EventType.MP_REQUEST_START, T0),
        ev(EventType.MP_LOOKUP_PREFETCH_START, T0 + 0.001, requested_tokens=64),
        ev(
            EventType.MP_LOOKUP_PREFETCH_END,
            T0 + 0.002,
            requested_tokens=64,
            hit_tokens=48,
            duration_s=0.001,
        ),
        ev(EventType.MP_RETRIEVE_START, T0 + 0.003, instance_id=5, chunks=3),
        ev(EventType.MP_RETRIEVE_END, T0 + 0.005, instance_id=5, chunks=3, ok=False, bytes=9),
        ev(EventType.MP_REQUEST_END, T0 + 0.01, duration_s=0.01),
    ]:
        spans.handle(event)
    got = by_name(exporter.get_finished_spans())
    assert set(got) == {"request", "mp.lookup_prefetch", "mp.retrieve"}
    root = got["request"]
    assert root.parent is None
    for child in ("mp.lookup_prefetch", "mp.retrieve"):
        assert got[child].parent is not None
        assert got[child].parent.span_id == root.context.span_id
        assert got[child].context.trace_id == root.context.trace_id
    assert (root.start_time, root.end_time) == (nanos(T0), nanos(T0 + 0.01))
    retrieve = got["mp.retrieve"]
    assert (retrieve.start_time, retrieve.end_time) == (nanos(T0 + 0.003), nanos(T0 + 0.005))
    assert retrieve.status.status_code is StatusCode.ERROR
    assert retrieve.attributes is not None and root.attributes is not None
    assert retrieve.attributes["session_id"] == "r1"
    assert retrieve.attributes["instance_id"] == 5
    assert retrieve.attributes["bytes"] == 9
    assert root.attributes["hit_tokens"] == 48
    assert root.attributes["requested_tokens"] == 64
    assert root.attributes["hit_rate"] == pytest.approx(0.75)
    assert root.attributes["session_id"] == "r1"
    assert "lmcache.end_reason" not in root.attributes
    assert spans.open_roots == spans.open_children == 0
    # The lookup's miss explanation: the nested fields as JSON, the first miss also flat.
    lookup = got["mp.lookup_prefetch"].attributes
    assert lookup is not None
    assert (lookup["first_miss_cause"], lookup["first_miss_chunk"]) == ("evicted", 2)
    assert lookup["miss_chunks_by_cause"] == '{"evicted":1}'
    assert '"tier":"l1"' in str(lookup["first_miss"])


def test_concurrent_workers_pair_their_own_start_and_end(
    exported: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    exporter, provider = exported
    spans = RequestSpans(provider.get_tracer(TRACER_NAME), idle_ttl_s=600)
    spans.handle(ev(EventType.MP_REQUEST_START, T0))
    spans.handle(ev(EventType.MP_STORE_START, T0 + 1, instance_id=1, chunks=1))
    spans.handle(ev(EventType.MP_STORE_START, T0 + 2, instance_id=2, chunks=2))
    spans.handle(ev(EventType.MP_STORE_END, T0 + 3, instance_id=2, chunks=2, ok=True))
    spans.handle(ev(EventType.MP_STORE_END, T0 + 4, instance_id=1, chunks=1, ok=True))
    stores = sorted(exporter.get_finished_spans(), key=lambda s: s.start_time or 0)
    assert [(s.start_time, s.end_time) for s in stores] == [
        (nanos(T0 + 1), nanos(T0 + 4)),
        (nanos(T0 + 2), nanos(T0 + 3)),
    ]


def test_a_child_without_a_root_is_its_own_trace_and_stray_ends_are_counted(
    exported: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    exporter, provider = exported
    spans = RequestSpans(provider.get_tracer(TRACER_NAME), idle_ttl_s=600)
    spans.handle(ev(EventType.MP_STORE_START, T0, instance_id=1, chunks=1))
    spans.handle(ev(EventType.MP_STORE_END, T0 + 1, instance_id=1, chunks=1, ok=True))
    spans.handle(ev(EventType.MP_STORE_END, T0 + 2, instance_id=1, chunks=1, ok=True))
    spans.handle(ev(EventType.MP_REQUEST_END, T0 + 3))
    (store,) = exporter.get_finished_spans()
    assert store.parent is None
    assert spans.stats.unmatched_ends == 2


def test_idle_roots_and_abandoned_children_end_after_the_ttl(
    exported: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    exporter, provider = exported
    spans = RequestSpans(provider.get_tracer(TRACER_NAME), idle_ttl_s=10)
    spans.handle(ev(EventType.MP_REQUEST_START, T0))
    spans.handle(ev(EventType.MP_STORE_START, T0 + 1, instance_id=1, chunks=1))  # end lost
    spans.handle(documented_event(EventType.L1_EVICTION_LOOP_TICK, T0 + 10.5))
    assert exporter.get_finished_spans() == ()
    spans.handle(documented_event(EventType.L1_EVICTION_LOOP_TICK, T0 + 11.5))
    got = by_name(exporter.get_finished_spans())
    assert got["request"].attributes is not None and got["mp.store"].attributes is not None
    assert got["request"].attributes["lmcache.end_reason"] == "session_expired"
    assert got["request"].end_time == nanos(T0 + 1)  # its last activity
    assert got["mp.store"].attributes["lmcache.end_reason"] == "abandoned"
    assert spans.open_roots == spans.open_children == 0


def test_open_spans_are_bounded(exported: tuple[InMemorySpanExporter, TracerProvider]) -> None:
    exporter, provider = exported
    spans = RequestSpans(provider.get_tracer(TRACER_NAME), 600, max_roots=3, max_children=2)
    for i in range(5):
        spans.handle(ev(EventType.MP_REQUEST_START, T0 + i, request_id=f"r{i}"))
        spans.handle(ev(EventType.MP_STORE_START, T0 + i, request_id=f"r{i}", instance_id=1))
    assert (spans.open_roots, spans.open_children) == (3, 2)
    assert spans.stats.ended == {"evicted": 5}
    evicted_roots = [s for s in exporter.get_finished_spans() if s.name == "request"]
    assert [s.attributes["request_id"] for s in evicted_roots if s.attributes] == ["r0", "r1"]
    # A late end of an evicted child is only counted.
    spans.handle(ev(EventType.MP_STORE_END, T0 + 9, request_id="r0", instance_id=1))
    assert spans.stats.unmatched_ends == 1
    spans.close(T0 + 10)
    assert (spans.open_roots, spans.open_children) == (0, 0)
    assert spans.stats.ended == {"evicted": 5, "shutdown": 5}


def test_attribute_conversion() -> None:
    assert to_attribute(3) == 3
    assert to_attribute(True) is True
    assert to_attribute(None) is None
    assert to_attribute({"b": 1, "a": 2}) == '{"a":2,"b":1}'
    assert to_attribute(1 << 70) == str(1 << 70)


def test_the_subscriber_exports_over_otlp_grpc_and_flushes_at_close() -> None:
    with otlp_trace_receiver() as receiver:
        provider = tracer_provider(otlp_exporter(receiver.endpoint), "instance-7")
        subscriber = TracingSubscriber(provider, idle_ttl_s=600)
        subscriber.on_event(ev(EventType.MP_REQUEST_START, T0))
        subscriber.on_event(ev(EventType.MP_STORE_START, T0 + 1, instance_id=1, chunks=1))
        # Still open at shutdown: close ends and flushes both.
        subscriber.close()
        spans = receiver.wait_for(2)
    assert sorted(s.name for s in spans) == ["mp.store", "request"]
    for span in spans:
        assert span.resource["service.name"] == SERVICE_NAME
        assert span.resource["service.instance.id"] == "instance-7"
        assert span.scope == TRACER_NAME
        assert span.attributes["lmcache.end_reason"] == "shutdown"


def test_a_dead_collector_does_not_hold_the_shutdown() -> None:
    with otlp_trace_receiver() as receiver:
        endpoint = receiver.endpoint  # stopped at the end of the block: nobody listens
    provider = tracer_provider(otlp_exporter(endpoint), "x")
    provider.get_tracer(TRACER_NAME).start_span("request").end()
    import time

    started = time.monotonic()
    shutdown_within(provider, timeout_s=1.0)
    assert time.monotonic() - started < 1.5
