"""The metrics subscriber in a really started server: both endpoints, values, switches.

A CPU worker stores, looks up and retrieves through the real ZeroMQ protocol; the
tests then scrape ``GET /metrics`` and the ``--prometheus-port`` endpoint, parse
them with the Prometheus client's parser and compare the values with what the
requests reported and with ``/status``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lmcache_core.client import MPClient
from lmcache_core.client.cpu_worker import CpuKVWorker
from tests.data_path.kv import CHUNK, fresh_tokens, lookup, make_layout, randomize, request_id
from tests.server_process import (
    clean_env,
    drain_output,
    free_port,
    output_of,
    server_on_free_ports,
    start_server,
    stop_server,
    wait_healthy,
)

# Starts real servers (seconds each): outside the quick loop, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class MetricsServer:
    """A running server and its three addresses."""

    process: subprocess.Popen[str]
    http_url: str
    zmq_url: str
    prometheus_port: int
    instance_id: str

    def scrape(self, url: str | None = None) -> Samples:
        """Every sample of ``/metrics`` (or of ``url``), by name and labels."""
        response = httpx.get(url or f"{self.http_url}/metrics", timeout=5.0)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        return parse(response.text)

    def status(self) -> dict[str, object]:
        return dict(httpx.get(f"{self.http_url}/status", timeout=5.0).json())


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def get(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of the one sample with exactly ``labels`` (besides instance_id)."""
    for (sample, sample_labels), v in samples.items():
        if sample == name and {k: x for k, x in sample_labels if k != "instance_id"} == labels:
            return v
    return None


@contextmanager
def launch(*args: str) -> Iterator[MetricsServer]:
    """Start a server with a fresh instance id on free ports; stop it at the end."""
    prometheus_port = free_port()
    instance = f"metrics-{uuid.uuid4().hex[:8]}"
    with server_on_free_ports(
        *("--prometheus-port", str(prometheus_port), "--instance-id", instance),
        *("--chunk-size", str(CHUNK), "--eviction-policy", "LRU"),
        *args,
    ) as running:
        yield MetricsServer(
            running.process, running.http_url, running.zmq_url, prometheus_port, instance
        )


@pytest.fixture(scope="module")
def server() -> Iterator[MetricsServer]:
    # 10 MiB of L1 (the eviction test fills it) and every chunk in the lifetime sample.
    with launch("--l1-size-gb", "0.01", "--metrics-sample-rate", "1") as running:
        yield running


@pytest.fixture
def client(server: MetricsServer) -> Iterator[MPClient]:
    client = MPClient(server.zmq_url, timeout=10.0)
    yield client
    client.close()


@pytest.fixture
def worker(client: MPClient) -> Iterator[CpuKVWorker]:
    # 4 layers x 2 x 16 tokens x 8 heads x 64 x fp16 = 128 KiB per chunk; one block per chunk.
    layout = make_layout(num_layers=4, num_blocks=96, block_size=CHUNK, num_heads=8, head_dim=64)
    worker = CpuKVWorker(client, layout)
    worker.register()
    randomize(worker)
    yield worker
    worker.unregister()
    worker.close()


def eventually(server: MetricsServer, ready: Callable[[Samples], bool]) -> Samples:
    """Scrape until ``ready`` (events reach the subscriber through the bus's drain thread)."""
    deadline = time.monotonic() + 10.0
    while True:
        samples = server.scrape()
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def test_store_lookup_retrieve_show_up_on_both_endpoints(
    server: MetricsServer, client: MPClient, worker: CpuKVWorker
) -> None:
    chunks = 3
    tokens = fresh_tokens(chunks * CHUNK)
    object_bytes = worker.layout.object_nbytes(CHUNK)
    assert worker.store(worker.key(tokens, 0, len(tokens), request_id("store")), [1, 2, 3])
    rid = request_id("lookup")
    hits = lookup(client, worker.key(tokens, 0, len(tokens), rid, worker=False))
    assert hits == chunks
    assert worker.retrieve(worker.key(tokens, 0, len(tokens), rid), [4, 5, 6])
    client.end_session(rid)

    samples = eventually(server, lambda s: (get(s, "lmcache_mp_requests_total", **REQ) or 0) >= 1)
    # The lookup's hit, as the lookup reported it, all of it from L1.
    assert get(samples, "lmcache_mp_lookups_total", **REQ) == 1
    assert get(samples, "lmcache_mp_lookup_requested_tokens_total", **REQ) == len(tokens)
    assert get(samples, "lmcache_mp_lookup_hit_tokens_total", tier="l1", **REQ) == hits * CHUNK
    assert not get(samples, "lmcache_mp_lookup_hit_tokens_total", tier="l2", **REQ)
    assert get(samples, "lmcache_mp_lookup_hit_keys_total", tier="l1", **REQ) == hits
    # What the store wrote and the retrieve copied.
    assert get(samples, "lmcache_mp_stores_total", **REQ) == 1
    assert get(samples, "lmcache_mp_store_chunks_total", **REQ) == chunks
    assert get(samples, "lmcache_mp_store_bytes_total", **REQ) == chunks * object_bytes
    assert get(samples, "lmcache_mp_retrieve_bytes_total", **REQ) == chunks * object_bytes
    assert get(samples, "lmcache_mp_retrieve_chunks_total", **REQ) == chunks
    assert not get(samples, "lmcache_mp_store_failures_total", **REQ)
    assert get(samples, "lmcache_mp_l1_write_keys_total", cache_salt="") == chunks
    assert get(samples, "lmcache_mp_l1_write_bytes_total") == chunks * object_bytes
    assert get(samples, "lmcache_mp_store_duration_seconds_count", model_name="model") == 1
    assert (
        get(samples, "lmcache_mp_store_throughput_gigabytes_per_second_count", model_name="model")
        == 1
    )
    # Every series carries this server's instance id.
    assert {dict(labels).get("instance_id") for _, labels in samples} == {server.instance_id}

    # Gauges are read at scrape time: they equal /status when nothing moves in between.
    data_path = server.status()["data_path"]
    l1 = data_path["l1"]  # type: ignore[index]
    samples = server.scrape()
    assert get(samples, "lmcache_mp_active_sessions") == data_path["engine"]["active_sessions"]  # type: ignore[index]
    assert get(samples, "lmcache_mp_l1_memory_usage_bytes") == l1["used_bytes"]
    assert get(samples, "lmcache_mp_l1_capacity_bytes") == l1["capacity_bytes"]
    assert get(samples, "lmcache_mp_l1_resident_objects") == l1["resident_objects"] == chunks
    assert get(samples, "lmcache_mp_l1_usage_ratio") == pytest.approx(
        l1["used_bytes"] / l1["capacity_bytes"]
    )
    # The --prometheus-port endpoint serves the same registry.
    direct = server.scrape(f"http://127.0.0.1:{server.prometheus_port}/metrics")
    assert {name for name, _ in direct} == {name for name, _ in samples}
    assert get(direct, "lmcache_mp_lookup_hit_tokens_total", tier="l1", **REQ) == hits * CHUNK
    assert get(direct, "lmcache_mp_l1_memory_usage_bytes") == l1["used_bytes"]


def test_filling_l1_evicts_and_records_sampled_lifetimes(
    server: MetricsServer, worker: CpuKVWorker
) -> None:
    # 90 chunks of 128 KiB (11.25 MiB) through a 10 MiB L1, one store per 30 chunks.
    for start in (0, 30, 60):
        tokens = fresh_tokens(30 * CHUNK)
        blocks = list(range(start + 1, start + 31))
        worker.store(worker.key(tokens, 0, len(tokens), request_id("fill")), blocks)
        time.sleep(0.3)  # the L1 controller evicts above the watermark every 0.1 s
    samples = eventually(
        server, lambda s: (get(s, "lmcache_mp_l1_chunk_lifetime_seconds_count") or 0) > 0
    )
    evicted = get(samples, "lmcache_mp_l1_evicted_keys_total", cache_salt="")
    assert evicted and evicted > 0
    object_bytes = worker.layout.object_nbytes(CHUNK)
    assert get(samples, "lmcache_mp_l1_evicted_bytes_total", reason="eviction") == pytest.approx(
        evicted * object_bytes, rel=0.1
    )
    # Sample rate 1: every evicted object written since start-up has a lifetime.
    assert get(samples, "lmcache_mp_l1_chunk_lifetime_seconds_count") == evicted
    assert (get(samples, "lmcache_mp_l1_eviction_loop_triggered_total") or 0) >= 1
    assert get(samples, "lmcache_mp_event_bus_dropped_events_total") == 0
    assert (
        get(samples, "lmcache_mp_event_bus_subscriber_exceptions_total", subscriber_name="metrics")
        == 0
    )


REQ = {"model_name": "model", "cache_salt": ""}


def _port_is_closed(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize(
    ("flag", "reason"),
    [
        ("--disable-metrics", "metrics are disabled (--disable-metrics)"),
        ("--disable-observability", "metrics are disabled (--disable-observability)"),
    ],
)
def test_disabled_metrics_open_no_port_and_answer_404(flag: str, reason: str) -> None:
    with launch("--l1-size-gb", "0.01", flag) as off:
        assert _port_is_closed(off.prometheus_port)
        response = httpx.get(f"{off.http_url}/metrics", timeout=5.0)
        assert response.status_code == 404
        assert response.json() == {"detail": reason}
        assert "metrics" not in off.status()["event_bus"]["subscribers"]  # type: ignore[index]


def test_busy_prometheus_port_fails_start_up_with_one_line() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        process = start_server(
            "--l1-size-gb",
            "0.01",
            "--eviction-policy",
            "LRU",
            "--http-host",
            "127.0.0.1",
            "--http-port",
            str(free_port()),
            "--port",
            str(free_port()),
            "--prometheus-port",
            str(port),
        )
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 1, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: --prometheus-port: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(use another --prometheus-port, or --disable-metrics)"
    ]
    assert "Traceback" not in output


@contextmanager
def default_prometheus_port_taken() -> Iterator[None]:
    """Hold 127.0.0.1:9090 (or find it held already) for the block's duration."""
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 9090))
        holder.listen()
    except OSError:
        pass  # someone else holds it: just as taken
    try:
        yield
    finally:
        holder.close()


def test_two_servers_with_default_prometheus_port_share_the_node() -> None:
    # Only --port and --http-port differ: the default 9090 is taken, so each server
    # serves /metrics on its HTTP port and warns once, instead of dying.
    env = clean_env()
    del env["LMCACHE_PROMETHEUS_PORT"]
    servers: list[tuple[subprocess.Popen[str], str]] = []
    with default_prometheus_port_taken():
        try:
            for _ in range(2):
                http_port = free_port()
                args = ("--l1-size-gb", "0.01", "--eviction-policy", "LRU", "--http-host")
                args += ("127.0.0.1", "--http-port", str(http_port))
                process = start_server(*args, "--port", str(free_port()), env=env)
                drain_output(process)
                servers.append((process, f"http://127.0.0.1:{http_port}"))
            for process, url in servers:
                wait_healthy(process, url)
                scrape = httpx.get(f"{url}/metrics", timeout=5.0)
                assert scrape.status_code == 200
                names = {family.name for family in text_string_to_metric_families(scrape.text)}
                assert any(name.startswith("lmcache") for name in names), names
        finally:
            for process, _ in servers:
                stop_server(process)
    for process, url in servers:
        warnings = [line for line in output_of(process).splitlines() if "is in use" in line]
        assert len(warnings) == 1, output_of(process)
        assert f"served at {url}/metrics only" in warnings[0]


def test_explicit_default_prometheus_port_taken_still_fails() -> None:
    env = clean_env(LMCACHE_PROMETHEUS_PORT="9090")
    args = ("--l1-size-gb", "0.01", "--eviction-policy", "LRU", "--http-host", "127.0.0.1")
    args += ("--http-port", str(free_port()))
    with default_prometheus_port_taken():
        process = start_server(*args, "--port", str(free_port()), env=env)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 1, output
    assert "error: --prometheus-port: cannot listen on 127.0.0.1:9090" in output


def prefetched(client: MPClient, rid: str) -> int:
    """The hit chunks of a lookup whose L2 prefetch may still run (None until it is done)."""
    deadline = time.monotonic() + 10.0
    while (hits := client.query_prefetch_status(rid)) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert isinstance(hits, int), hits
    return hits


def test_l2_store_load_and_usage_per_adapter() -> None:
    # skip_l1: L1 gives objects up once the mock adapter holds them, so the next lookup's
    # hit comes from L2 (a prefetch load).
    mock = json.dumps({"type": "mock", "max_size_gb": 0.01, "mock_bandwidth_gb": 50})
    args = ("--l1-size-gb", "0.01", "--l2-store-policy", "skip_l1", "--l2-adapter", mock)
    with launch(*args) as l2_server:
        client = MPClient(l2_server.zmq_url, timeout=20.0)
        layout = make_layout(num_layers=2, num_blocks=16, block_size=CHUNK)
        worker = CpuKVWorker(client, layout)
        try:
            worker.register()
            randomize(worker)
            chunks, object_bytes = 3, layout.object_nbytes(CHUNK)
            tokens = fresh_tokens(chunks * CHUNK)
            assert worker.store(worker.key(tokens, 0, len(tokens), request_id("s")), [1, 2, 3])
            labels = {"l2_name": "mock", "adapter_index": "0"}
            eventually(
                l2_server,
                lambda s: (
                    get(s, "lmcache_mp_l2_store_succeeded_objects_total", **labels) == chunks
                    and get(s, "lmcache_mp_l1_resident_objects") == 0
                ),
            )
            rid = request_id("l")
            assert client.lookup(worker.key(tokens, 0, len(tokens), rid, worker=False)) is None
            hits = prefetched(client, rid)
            client.end_session(rid)
            assert hits == chunks
            samples = eventually(
                l2_server, lambda s: (get(s, "lmcache_mp_lookups_total", **REQ) or 0) >= 1
            )
            worker.unregister()
        finally:
            worker.close()
            client.close()
        assert get(samples, "lmcache_mp_l2_store_completed_total", **labels) == 1
        assert get(samples, "lmcache_mp_l2_store_bytes_total", **labels) == chunks * object_bytes
        assert not get(samples, "lmcache_mp_l2_store_failed_objects_total", **labels)
        assert get(samples, "lmcache_mp_l2_load_succeeded_objects_total", **labels) == chunks
        assert get(samples, "lmcache_mp_lookup_hit_tokens_total", tier="l2", **REQ) == hits * CHUNK
        # ... all of it supplied by this adapter (one rank: every object is a whole chunk).
        assert get(samples, "lmcache_mp_lookup_l2_hit_tokens_total", **REQ, **labels) == (
            hits * CHUNK
        )
        assert get(samples, "lmcache_mp_lookup_l2_hit_keys_total", **REQ, **labels) == hits
        assert not get(samples, "lmcache_mp_lookup_hit_tokens_total", tier="l1", **REQ)
        assert get(samples, "lmcache_mp_l2_store_throughput_gigabytes_per_second_count", **labels)
        # The usage gauge is the adapter's own count, as /status shows it.
        adapter = l2_server.status()["data_path"]["engine"]["l2"]["adapters"][0]  # type: ignore[index]
        samples = l2_server.scrape()
        assert get(samples, "lmcache_mp_l2_usage_bytes", **labels) == adapter["used_bytes"] > 0
        assert get(samples, "lmcache_mp_l2_capacity_bytes", **labels) == adapter["capacity_bytes"]
        assert get(samples, "lmcache_mp_l2_store_queue_depth") == 0
        assert get(samples, "lmcache_mp_l2_prefetches_in_flight") == 0  # all finished
