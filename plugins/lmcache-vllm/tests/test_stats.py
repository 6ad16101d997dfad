"""The connector's stats payload: vLLM's aggregate/reduce/is_empty, interval deltas, Prometheus."""

from __future__ import annotations

import functools

import pytest
from lmcache_vllm.health import Health
from lmcache_vllm.prom import LOOKUP_HISTOGRAM, PromRecorder
from lmcache_vllm.stats import (
    LOOKUP_SECONDS,
    METRICS,
    ConnectorStats,
    IntervalReporter,
    IntervalStats,
    Role,
    empty_payload,
    normalise_payload,
)
from prometheus_client import CollectorRegistry, Counter, Histogram


def payload(**values: object) -> dict[str, object]:
    data = empty_payload()
    data.update(values)
    return data


def test_aggregate_sums_counters_and_concatenates_samples() -> None:
    worker_a = IntervalStats(payload(loads_ok=1, loaded_tokens=512, loaded_bytes=4096))
    worker_b = IntervalStats(payload(loads_ok=2, stores_dropped=1, worker_degraded_seconds=0.5))
    scheduler = IntervalStats(payload(lookups=3, hit_tokens=256, **{LOOKUP_SECONDS: [0.002]}))
    before_b = dict(worker_b.data)
    total = worker_a.aggregate(worker_b).aggregate(scheduler)
    assert total is worker_a, "vLLM uses aggregate's return value as the accumulator"
    assert total.data["loads_ok"] == 3
    assert total.data["loaded_tokens"] == 512 and total.data["loaded_bytes"] == 4096
    assert total.data["stores_dropped"] == 1
    assert total.data["worker_degraded_seconds"] == 0.5
    assert total.data["lookups"] == 3 and total.data["hit_tokens"] == 256
    assert total.data[LOOKUP_SECONDS] == [0.002]
    assert worker_b.data == before_b, "the other side was modified"
    # Aggregating again adds again (vLLM's logger accumulates the steps of an interval).
    total.aggregate(IntervalStats(payload(**{LOOKUP_SECONDS: [0.004]})))
    assert total.data[LOOKUP_SECONDS] == [0.002, 0.004]


def test_aggregate_refuses_foreign_stats() -> None:
    class Other:
        data: dict[str, object] = {}

    with pytest.raises(TypeError, match="cannot aggregate Other"):
        IntervalStats().aggregate(Other())


def test_a_payload_is_copied_before_it_is_added_to() -> None:
    # vLLM passes the same dict to its log and its Prometheus logger.
    shared = payload(lookups=1, **{LOOKUP_SECONDS: [0.01]})
    accumulator = IntervalStats(normalise_payload(shared))
    accumulator.aggregate(IntervalStats(payload(lookups=5, **{LOOKUP_SECONDS: [0.02]})))
    assert shared["lookups"] == 1 and shared[LOOKUP_SECONDS] == [0.01]


def test_normalise_fills_missing_keys_and_rejects_foreign_ones() -> None:
    assert normalise_payload({"loads_ok": 2})["loads_failed"] == 0
    assert normalise_payload(None) == empty_payload()
    with pytest.raises(ValueError, match=r"unknown keys \['num_failed_transfers'\]"):
        normalise_payload({"num_failed_transfers": 1})


def test_reduce_reports_every_counter_the_hit_rate_and_latency_percentiles() -> None:
    samples = [0.001 * i for i in range(1, 11)]  # 1..10 ms
    stats = IntervalStats(
        payload(
            lookups=10,
            lookup_tokens=2048,
            hit_tokens=512,
            degraded_seconds=1.23456,
            **{LOOKUP_SECONDS: samples},
        )
    )
    reduced = stats.reduce()
    assert [name for name in reduced][: len(METRICS)] == [m.name for m in METRICS]
    assert reduced["lookups"] == 10 and reduced["hit_tokens"] == 512
    assert reduced["degraded_seconds"] == 1.235
    assert reduced["hit_rate"] == 0.25
    assert reduced["lookup_avg_ms"] == 5.5
    assert reduced["lookup_p50_ms"] == 5.0
    assert reduced["lookup_p90_ms"] == 9.0
    assert reduced["lookup_max_ms"] == 10.0
    # No lookup answered: no latency keys, hit rate 0.
    quiet = IntervalStats(payload(stores_ok=1)).reduce()
    assert quiet["hit_rate"] == 0.0 and "lookup_avg_ms" not in quiet


def test_is_empty_and_reset() -> None:
    assert IntervalStats().is_empty()
    assert IntervalStats({}).is_empty()  # vLLM's default data
    assert not IntervalStats(payload(reregistrations=1)).is_empty()
    assert not IntervalStats(payload(**{LOOKUP_SECONDS: [0.1]})).is_empty()
    stats = IntervalStats(payload(loads_failed=4))
    stats.reset()
    assert stats.is_empty() and stats.data == empty_payload()


def test_interval_reporter_reports_deltas_and_degraded_time() -> None:
    stats = ConnectorStats()
    health = Health()
    reporter = IntervalReporter(Role.SCHEDULER, stats, health)
    stats.lookups, stats.hit_tokens = 2, 512
    stats.add_lookup_latency(0.003)
    first = reporter.take(now=100.0)
    assert first["lookups"] == 2 and first["hit_tokens"] == 512
    assert first[LOOKUP_SECONDS] == [0.003]
    assert first["loads_ok"] == 0, "a worker counter in a scheduler payload"
    stats.lookups += 1
    health.mark_down("test")
    down_at = health.stats.last_down_at
    during = reporter.take(now=down_at + 2.0)
    assert during["lookups"] == 1 and during[LOOKUP_SECONDS] == []
    assert during["server_down_events"] == 1
    assert during["degraded_seconds"] == pytest.approx(2.0)
    assert reporter.take(now=down_at + 3.0)["degraded_seconds"] == pytest.approx(1.0)
    health.mark_up()
    after = reporter.take()
    outage = health.stats.last_up_at - down_at
    assert after["degraded_seconds"] == pytest.approx(outage - 3.0)
    assert after["server_down_events"] == 0
    assert IntervalStats(reporter.take()).is_empty()


def test_worker_reporter_counts_its_own_health() -> None:
    stats = ConnectorStats(loads_failed=1, load_failed_blocks=4)
    health = Health()
    health.mark_down("test")
    health.stats.reregistrations = 1
    health.mark_up()
    taken = IntervalReporter(Role.WORKER, stats, health).take()
    assert taken["loads_failed"] == 1 and taken["load_failed_blocks"] == 4
    assert taken["worker_down_events"] == 1 and taken["reregistrations"] == 1
    assert taken["worker_degraded_seconds"] > 0
    assert taken["server_down_events"] == 0, "the scheduler's counter in a worker payload"


def test_prometheus_series_follow_the_payloads() -> None:
    registry = CollectorRegistry()
    recorder = PromRecorder(
        functools.partial(Counter, registry=registry),
        functools.partial(Histogram, registry=registry),
        ["model_name", "engine"],
        {0: ["m", "0"], 1: ["m", "1"]},
    )
    recorder.observe(payload(hit_tokens=256, stored_bytes=10, **{LOOKUP_SECONDS: [0.003]}), 0)
    recorder.observe(payload(hit_tokens=512, **{LOOKUP_SECONDS: [0.004, 3.0]}), 0)
    recorder.observe(payload(loads_failed=1), 1)
    recorder.observe(None, 0)

    def value(name: str, engine: str) -> float | None:
        return registry.get_sample_value(name, {"model_name": "m", "engine": engine})

    assert value("vllm:lmcache_mp_hit_tokens_total", "0") == 768
    assert value("vllm:lmcache_mp_stored_bytes_total", "0") == 10
    assert value("vllm:lmcache_mp_loads_failed_total", "1") == 1
    assert value("vllm:lmcache_mp_loads_failed_total", "0") in (None, 0)
    assert value(f"{LOOKUP_HISTOGRAM}_count", "0") == 3
    assert value(f"{LOOKUP_HISTOGRAM}_sum", "0") == pytest.approx(3.007)
    with pytest.raises(KeyError):
        recorder.observe(payload(lookups=1), 7)


def test_every_metric_is_documented() -> None:
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[3] / "docs" / "vllm.md").read_text()
    missing = [m.name for m in METRICS if f"| `{m.name}` |" not in docs]
    assert not missing, f"docs/vllm.md's metrics table lacks {missing}"
    assert LOOKUP_HISTOGRAM in docs
