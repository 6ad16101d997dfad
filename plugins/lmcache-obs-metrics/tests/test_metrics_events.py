"""Each event type the metrics subscriber handles, mapped to its series, with hand-made events."""

from __future__ import annotations

import hashlib

import pytest
from lmcache_obs_metrics.catalogue import METRICS, SCRAPE
from lmcache_obs_metrics.labels import MAX_CACHE_SALTS, OTHER
from lmcache_obs_metrics.subscriber import MetricsSubscriber

from lmcache_core.observability.events import EVENT_FIELDS, EventType, L2HitSource
from lmcache_core.storage.keys import ObjectKey
from lmcache_core.testing.subscriber_conformance import documented_event

INSTANCE = "inst-1"
REQ = {"request_id": "r1", "model_name": "m", "cache_salt": "s"}


@pytest.fixture
def sub() -> MetricsSubscriber:
    return MetricsSubscriber(INSTANCE, sample_rate=1.0)


def value(sub: MetricsSubscriber, name: str, **labels: str) -> float | None:
    return sub.registry.get_sample_value(name, {"instance_id": INSTANCE, **labels})


def send(
    sub: MetricsSubscriber, event_type: EventType, timestamp: float = 1000.0, **data: object
) -> None:
    sub.on_event(documented_event(event_type, timestamp, **data))


def test_it_subscribes_to_exactly_the_types_it_handles(sub: MetricsSubscriber) -> None:
    fed = {m.source for m in METRICS if m.source != SCRAPE}
    assert sub.event_types == frozenset(fed)
    # Every source is a published event type with a documented field list.
    assert all(EventType(t) in EVENT_FIELDS for t in fed)


def test_lookup_counts_requested_and_hit_tokens_and_keys_per_tier(sub: MetricsSubscriber) -> None:
    fields = {
        "requested_tokens": 100,
        "hit_tokens": 80,
        "l1_hit_tokens": 48,
        "l2_hit_tokens": 32,
        "l1_hit_keys": 6,
        "l2_hit_keys": 4,
        "duration_s": 0.002,
    }
    send(sub, EventType.MP_LOOKUP_PREFETCH_END, **REQ, **fields)
    send(sub, EventType.MP_LOOKUP_PREFETCH_END, **REQ, **fields)
    labels = {"model_name": "m", "cache_salt": "s"}
    assert value(sub, "lmcache_mp_lookups_total", **labels) == 2
    assert value(sub, "lmcache_mp_lookup_requested_tokens_total", **labels) == 200
    assert value(sub, "lmcache_mp_lookup_hit_tokens_total", tier="l1", **labels) == 96
    assert value(sub, "lmcache_mp_lookup_hit_tokens_total", tier="l2", **labels) == 64
    assert value(sub, "lmcache_mp_lookup_hit_keys_total", tier="l1", **labels) == 12
    assert value(sub, "lmcache_mp_lookup_hit_keys_total", tier="l2", **labels) == 8
    assert value(sub, "lmcache_mp_lookup_duration_seconds_count", model_name="m") == 2
    assert value(sub, "lmcache_mp_lookup_duration_seconds_sum", model_name="m") == pytest.approx(
        0.004
    )


def test_lookup_counts_the_l2_hit_per_supplying_adapter(sub: MetricsSubscriber) -> None:
    sources = (
        L2HitSource(l2_name="fs", adapter_index=0, keys=3, tokens=24.0),
        L2HitSource(l2_name="resp", adapter_index=1, keys=1, tokens=8.0),
    )
    send(sub, EventType.MP_LOOKUP_PREFETCH_END, **REQ, l2_hit_keys=4, l2_hit_sources=sources)
    labels = {"model_name": "m", "cache_salt": "s"}
    fs = {"l2_name": "fs", "adapter_index": "0"}
    resp = {"l2_name": "resp", "adapter_index": "1"}
    assert value(sub, "lmcache_mp_lookup_l2_hit_tokens_total", **labels, **fs) == 24
    assert value(sub, "lmcache_mp_lookup_l2_hit_tokens_total", **labels, **resp) == 8
    assert value(sub, "lmcache_mp_lookup_l2_hit_keys_total", **labels, **fs) == 3
    assert value(sub, "lmcache_mp_lookup_l2_hit_keys_total", **labels, **resp) == 1


def test_request_end_counts_the_request_and_its_duration(sub: MetricsSubscriber) -> None:
    send(sub, EventType.MP_REQUEST_END, duration_s=1.5, **REQ)
    assert value(sub, "lmcache_mp_requests_total", model_name="m", cache_salt="s") == 1
    assert value(sub, "lmcache_mp_request_duration_seconds_sum", model_name="m") == 1.5


@pytest.mark.parametrize(
    ("event_type", "kind", "done_field"),
    [
        (EventType.MP_STORE_END, "store", "stored_chunks"),
        (EventType.MP_RETRIEVE_END, "retrieve", "retrieved_chunks"),
    ],
)
def test_store_and_retrieve_end(
    sub: MetricsSubscriber, event_type: EventType, kind: str, done_field: str
) -> None:
    ok = {"instance_id": 7, "chunks": 4, done_field: 3, "bytes": 3_000_000, "duration_s": 0.001}
    send(sub, event_type, ok=True, **ok, **REQ)
    send(sub, event_type, ok=False, **{**ok, done_field: 0, "bytes": 0}, **REQ)
    labels = {"model_name": "m", "cache_salt": "s"}
    assert value(sub, f"lmcache_mp_{kind}s_total", **labels) == 2
    assert value(sub, f"lmcache_mp_{kind}_chunks_total", **labels) == 3
    assert value(sub, f"lmcache_mp_{kind}_bytes_total", **labels) == 3_000_000
    assert value(sub, f"lmcache_mp_{kind}_failures_total", **labels) == 1
    assert value(sub, f"lmcache_mp_{kind}_duration_seconds_count", model_name="m") == 2
    # Throughput only for the request that moved bytes: 3 MB in 1 ms = 3 GB/s.
    name = f"lmcache_mp_{kind}_throughput_gigabytes_per_second"
    assert value(sub, f"{name}_count", model_name="m") == 1
    assert value(sub, f"{name}_sum", model_name="m") == pytest.approx(3.0)
    assert value(sub, f"{name}_bucket", model_name="m", le="2.0") == 0
    assert value(sub, f"{name}_bucket", model_name="m", le="4.0") == 1


def test_l1_write_and_eviction_per_salt_and_bytes(sub: MetricsSubscriber) -> None:
    send(
        sub,
        EventType.L1_WRITE_FINISHED,
        key_count=3,
        bytes=300,
        key_count_per_salt={"": 1, "a": 2},
    )
    send(
        sub,
        EventType.L1_KEYS_EVICTED,
        key_count=2,
        bytes=200,
        key_count_per_salt={"a": 2},
        reason="eviction",
    )
    assert value(sub, "lmcache_mp_l1_write_keys_total", cache_salt="") == 1
    assert value(sub, "lmcache_mp_l1_write_keys_total", cache_salt="a") == 2
    assert value(sub, "lmcache_mp_l1_write_bytes_total") == 300
    assert value(sub, "lmcache_mp_l1_evicted_keys_total", cache_salt="a") == 2
    assert value(sub, "lmcache_mp_l1_evicted_bytes_total", reason="eviction") == 200


def _key(n: int) -> ObjectKey:
    # Chunk hashes look random; so must the test's (sampling reads the hash's first bytes).
    return ObjectKey(hashlib.sha256(n.to_bytes(8, "little")).digest(), "m", 0)


def test_chunk_lifetime_from_write_to_eviction() -> None:
    sub = MetricsSubscriber(INSTANCE, sample_rate=1.0)
    keys = tuple(_key(n) for n in range(3))
    send(sub, EventType.L1_WRITE_FINISHED, 100.0, key_count=3, bytes=3, keys=keys)
    send(sub, EventType.L1_KEYS_EVICTED, 112.0, key_count=2, bytes=2, keys=keys[:2])
    assert value(sub, "lmcache_mp_l1_chunk_lifetime_seconds_count") == 2
    assert value(sub, "lmcache_mp_l1_chunk_lifetime_seconds_sum") == pytest.approx(24.0)
    assert value(sub, "lmcache_mp_l1_chunk_lifetime_seconds_bucket", le="10.0") == 0
    assert value(sub, "lmcache_mp_l1_chunk_lifetime_seconds_bucket", le="30.0") == 2
    assert len(sub.lifetimes) == 1  # the third key is still resident


def test_chunk_lifetime_is_sampled_but_counters_count_everything() -> None:
    sub = MetricsSubscriber(INSTANCE, sample_rate=0.1)
    keys = tuple(_key(n) for n in range(2000))
    per_salt = {"": len(keys)}
    send(
        sub,
        EventType.L1_WRITE_FINISHED,
        0.0,
        key_count=2000,
        key_count_per_salt=per_salt,
        keys=keys,
    )
    send(
        sub, EventType.L1_KEYS_EVICTED, 5.0, key_count=2000, key_count_per_salt=per_salt, keys=keys
    )
    sampled = value(sub, "lmcache_mp_l1_chunk_lifetime_seconds_count")
    assert sampled is not None and 120 <= sampled <= 280  # about 10 % of 2000
    assert value(sub, "lmcache_mp_l1_write_keys_total", cache_salt="") == 2000
    assert value(sub, "lmcache_mp_l1_evicted_keys_total", cache_salt="") == 2000
    # Deterministic: the same keys are sampled by another subscriber (another server).
    other = MetricsSubscriber(INSTANCE, sample_rate=0.1)
    assert [other.lifetimes.sampler.sampled(k.chunk_hash) for k in keys] == [
        sub.lifetimes.sampler.sampled(k.chunk_hash) for k in keys
    ]


def test_allocation_failures_and_eviction_ticks(sub: MetricsSubscriber) -> None:
    send(sub, EventType.L1_ALLOCATION_FAILED, during="l1_store", key_count=4, bytes=400)
    send(sub, EventType.L1_ALLOCATION_FAILED, during="l2_prefetch", key_count=1, bytes=100)
    send(sub, EventType.L1_EVICTION_LOOP_TICK, usage=0.5, watermark=0.8, triggered=False)
    send(sub, EventType.L1_EVICTION_LOOP_TICK, usage=0.9, watermark=0.8, triggered=True)
    assert value(sub, "lmcache_mp_l1_allocation_failures_total", during="l1_store") == 1
    assert value(sub, "lmcache_mp_l1_allocation_failures_total", during="l2_prefetch") == 1
    assert value(sub, "lmcache_mp_l1_eviction_loop_ticks_total") == 2
    assert value(sub, "lmcache_mp_l1_eviction_loop_triggered_total") == 1


@pytest.mark.parametrize(
    ("event_type", "kind", "count_field"),
    [
        (EventType.L2_STORE_COMPLETED, "store", "succeeded_count"),
        (EventType.L2_LOAD_COMPLETED, "load", "loaded_count"),
    ],
)
def test_l2_transfer_results_per_adapter(
    sub: MetricsSubscriber, event_type: EventType, kind: str, count_field: str
) -> None:
    common = {"l2_name": "fs", "adapter_index": 1, "duration_s": 0.5}
    send(sub, event_type, failed_count=1, bytes_transferred=2e9, **{count_field: 5}, **common)
    send(sub, event_type, failed_count=0, bytes_transferred=0, **{count_field: 0}, **common)
    labels = {"l2_name": "fs", "adapter_index": "1"}
    assert value(sub, f"lmcache_mp_l2_{kind}_completed_total", **labels) == 2
    assert value(sub, f"lmcache_mp_l2_{kind}_succeeded_objects_total", **labels) == 5
    assert value(sub, f"lmcache_mp_l2_{kind}_failed_objects_total", **labels) == 1
    assert value(sub, f"lmcache_mp_l2_{kind}_bytes_total", **labels) == 2e9
    name = f"lmcache_mp_l2_{kind}_throughput_gigabytes_per_second"
    assert value(sub, f"{name}_count", **labels) == 1
    assert value(sub, f"{name}_sum", **labels) == pytest.approx(4.0)


def test_l2_prefetch_failures_and_evictions(sub: MetricsSubscriber) -> None:
    send(sub, EventType.L2_PREFETCH_FAILED, reason="l1_oom", key_count=6)
    send(sub, EventType.L2_KEYS_EVICTED, l2_name="resp", adapter_index=0, key_count=9)
    assert value(sub, "lmcache_mp_l2_prefetch_failures_total", reason="l1_oom") == 1
    assert value(sub, "lmcache_mp_l2_prefetch_failed_keys_total", reason="l1_oom") == 6
    assert value(sub, "lmcache_mp_l2_evicted_keys_total", l2_name="resp", adapter_index="0") == 9


def test_cache_salts_past_the_cap_fold_into_other(sub: MetricsSubscriber) -> None:
    for n in range(MAX_CACHE_SALTS + 10):
        send(sub, EventType.MP_REQUEST_END, duration_s=0.1, **{**REQ, "cache_salt": f"salt{n}"})
    assert value(sub, "lmcache_mp_requests_total", model_name="m", cache_salt="salt0") == 1
    assert value(sub, "lmcache_mp_requests_total", model_name="m", cache_salt=OTHER) == 10
    assert sub.caps["cache_salt"].folded == 10
    total = sum(
        s.value
        for family in sub.registry.collect()
        if family.name == "lmcache_mp_requests"
        for s in family.samples
        if s.name.endswith("_total")
    )
    assert total == MAX_CACHE_SALTS + 10
