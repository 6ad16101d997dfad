"""The L2 tier under failure, restarts and pressure, on real servers and real backends.

* Redis killed in the middle of a run: L2 stores fail and are counted, L1 keeps
  serving, nothing hangs, and the adapter recovers once Redis is back on its port.
* Persistence: a chunk stored through one server process is served, byte-identical,
  by the next one (``resp`` and ``s3`` here; ``fs`` in ``test_l2_tier.py``).
* Capacity: an adapter with ``max_capacity_gb`` and an eviction block never holds
  more, in its own accounting and in the backend itself, also after a restart that
  seeds its usage from the backend.
* Bytes flipped on disk (``fs``): a miss, never wrong data.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import torch
from lmcache_l2_resp.testing import RedisServer

from lmcache_core.client import MPClient
from lmcache_core.client.cpu_worker import CpuKVWorker
from lmcache_core.storage.l2.object_format import HEADER_SIZE
from tests.data_path.l2_helpers import (
    BPC,
    CHUNK,
    S3_CREDENTIALS,
    S3_REGION,
    blocks,
    fill_layers,
    l2_status,
    lookup_hits,
    random_tokens,
    resp_adapter,
    retrieves_identical,
    server_args,
    small_layout,
    wait_for,
)
from tests.server_process import free_port, running_server

LAYOUT = small_layout(160)
OBJECT_BYTES = LAYOUT.object_nbytes(CHUNK) + HEADER_SIZE
"""One chunk as an L2 object: its payload and the frame header."""
BOUNDED_S = 8.0
"""The longest a lookup may take while a backend is down (the tier's adapter timeout is 5 s)."""


def _session(port: int) -> tuple[MPClient, CpuKVWorker]:
    client = MPClient(f"127.0.0.1:{port}", timeout=20)
    worker = CpuKVWorker(client, LAYOUT)
    worker.register()
    return client, worker


def _close(client: MPClient, worker: CpuKVWorker) -> None:
    worker.unregister()
    worker.close()
    client.close()


def _store(worker: CpuKVWorker, tokens: list[int], request: str, first_block: int = 1) -> None:
    chunks = len(tokens) // CHUNK
    assert worker.store(worker.key(tokens, 0, chunks * CHUNK, request), blocks(first_block, chunks))


# -- Redis killed mid-run ------------------------------------------------------------------


def test_redis_killed_mid_run_fails_l2_stores_keeps_l1_and_recovers(l2_redis: RedisServer) -> None:
    before_kill, during, never, after = (random_tokens(60 + i, 3) for i in range(4))
    port = free_port()
    with running_server(*server_args(port, resp_adapter(l2_redis))) as (process, url):
        client, worker = _session(port)
        try:
            fill_layers(worker, 1)
            _store(worker, before_kill, "s0")
            wait_for(lambda: l2_status(url)["stats"]["stored_keys"] >= 3)

            l2_redis.kill()
            stats = l2_status(url)["stats"]
            errors = l2_status(url)["adapters"][0]["errors"]
            # L1 still takes the store; its L2 copy fails, and the failures are counted.
            _store(worker, during, "s1", first_block=1 + 3 * BPC)
            wait_for(
                lambda: l2_status(url)["stats"]["store_failures"] >= stats["store_failures"] + 3
            )
            status = l2_status(url)
            assert status["stats"]["stored_keys"] == stats["stored_keys"]
            assert status["adapters"][0]["errors"] > errors
            # Chunks in L1 still hit, with the right bytes.
            assert lookup_hits(client, worker, before_kill, "l0") == 3
            assert retrieves_identical(worker, before_kill, "l0", blocks(1, 3), blocks(100, 3))
            client.end_session("l0")
            assert lookup_hits(client, worker, during, "l1") == 3
            client.end_session("l1")
            # A chunk L1 lacks asks the dead L2: a miss, answered in bounded time.
            started = time.monotonic()
            assert lookup_hits(client, worker, never, "l2", timeout=BOUNDED_S) == 0
            assert time.monotonic() - started < BOUNDED_S
            client.end_session("l2")
            assert process.poll() is None
            assert httpx.get(f"{url}/healthcheck", timeout=5).status_code == 200

            l2_redis.start()  # same port, empty: SIGKILL lost what it held
            stored = l2_status(url)["stats"]["stored_keys"]
            fill_layers(worker, 2)
            _store(worker, after, "s3")
            wait_for(lambda: l2_status(url)["stats"]["stored_keys"] >= stored + 3, timeout=15)
            with l2_redis.client() as redis_client:
                assert redis_client.dbsize() == 3
            client.clear(True)  # L1 is empty now: the hits come from the restarted Redis
            prefetched = l2_status(url)["stats"]["prefetched_chunks"]
            assert lookup_hits(client, worker, after, "l3") == 3
            assert retrieves_identical(worker, after, "l3", blocks(1, 3), blocks(100, 3))
            client.end_session("l3")
            assert l2_status(url)["stats"]["prefetched_chunks"] == prefetched + 3
        finally:
            _close(client, worker)


# -- persistence across a server restart ----------------------------------------------------


def _adapter_for(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if backend == "fs":
        return {"type": "fs", "base_path": str(tmp_path / "l2")}
    if backend == "resp":
        return resp_adapter(request.getfixturevalue("l2_redis"))
    return dict(request.getfixturevalue("l2_s3"))


@pytest.mark.parametrize("backend", ["resp", "s3"])
def test_a_chunk_stored_by_one_server_is_served_by_the_next(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    adapter = _adapter_for(backend, request, tmp_path)
    tokens = random_tokens(70, 3)
    port = free_port()
    with running_server(*server_args(port, adapter)) as (_, url):
        client, worker = _session(port)
        try:
            fill_layers(worker, 7)
            _store(worker, tokens, "s")
            wait_for(lambda: l2_status(url)["stats"]["stored_keys"] >= 3, timeout=20)
            expected = [layer[:, blocks(1, 3)].clone() for layer in worker.layers]
        finally:
            _close(client, worker)
    # A new process: L1 is gone; only the backend holds the chunks.
    with running_server(*server_args(port, adapter)) as (_, url):
        assert l2_status(url)["adapters"][0]["objects"] == 3  # the index, listed from the backend
        client, worker = _session(port)
        try:
            fill_layers(worker, 8)  # other bytes: what matches must come from L2
            assert lookup_hits(client, worker, tokens, "l", timeout=20) == 3
            dst = blocks(80, 3)
            assert worker.retrieve(worker.key(tokens, 0, 3 * CHUNK, "l"), dst)
            pairs = zip(worker.layers, expected, strict=True)
            assert all(torch.equal(layer[:, dst], want) for layer, want in pairs)
            client.end_session("l")
            assert l2_status(url)["stats"]["prefetched_chunks"] == 3
        finally:
            _close(client, worker)


# -- capacity, also after a restart ---------------------------------------------------------


def _backend_bytes(adapter: dict[str, Any], request: pytest.FixtureRequest) -> int:
    """What the backend itself holds, in bytes (not the adapter's own accounting)."""
    if adapter["type"] == "fs":
        return sum(f.stat().st_size for f in Path(adapter["base_path"]).glob("*.data"))
    if adapter["type"] == "resp":
        server: RedisServer = request.getfixturevalue("l2_redis")
        with server.client() as redis_client:
            return sum(int(redis_client.strlen(name)) for name in redis_client.scan_iter())
    bucket, _, host = adapter["s3_endpoint"].partition(".")
    s3 = boto3.client("s3", endpoint_url=f"http://{host}", region_name=S3_REGION, **S3_CREDENTIALS)
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return sum(int(item["Size"]) for item in listed)


@pytest.mark.parametrize("backend", ["fs", "resp", "s3"])
def test_capacity_is_never_exceeded_also_after_a_restart(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    capacity = 7 * OBJECT_BYTES
    adapter = {
        **_adapter_for(backend, request, tmp_path),
        "max_capacity_gb": capacity / 2**30,
        "eviction": {"eviction_policy": "LRU", "trigger_watermark": 0.8, "eviction_ratio": 0.4},
    }
    batches = [random_tokens(80 + b, 3) for b in range(6)]
    port = free_port()

    def store_batches(url: str, worker: CpuKVWorker, numbers: range) -> None:
        for number in numbers:
            done = l2_status(url)["stats"]["store_batches"]
            _store(worker, batches[number], f"s{number}")
            wait_for(lambda d=done: l2_status(url)["stats"]["store_batches"] > d, timeout=20)
            used = l2_status(url)["adapters"][0]["used_bytes"]
            held = _backend_bytes(adapter, request)
            assert used <= capacity, f"batch {number}: adapter reports {used} > {capacity}"
            assert held <= capacity, f"batch {number}: backend holds {held} > {capacity}"

    with running_server(*server_args(port, adapter)) as (_, url):
        client, worker = _session(port)
        try:
            store_batches(url, worker, range(3))
            assert l2_status(url)["stats"]["evicted_keys"] > 0
        finally:
            _close(client, worker)
    held = _backend_bytes(adapter, request)
    assert 0 < held <= capacity

    with running_server(*server_args(port, adapter)) as (_, url):
        seeded = l2_status(url)["adapters"][0]
        assert seeded["used_bytes"] == held  # seeded from the backend, not from zero
        assert seeded["objects"] == held // OBJECT_BYTES
        client, worker = _session(port)
        try:
            store_batches(url, worker, range(3, 6))
            assert l2_status(url)["stats"]["evicted_keys"] > 0  # the seeded usage counted
            client.clear(True)
            assert lookup_hits(client, worker, batches[5], "newest", timeout=20) == 3
            client.end_session("newest")
            assert lookup_hits(client, worker, batches[3], "older", timeout=20) == 0
            client.end_session("older")
        finally:
            _close(client, worker)


# -- bytes flipped on disk ------------------------------------------------------------------


def test_flipped_bytes_on_disk_are_a_miss_never_wrong_data(tmp_path: Path) -> None:
    tokens = random_tokens(90, 3)
    port = free_port()
    adapter = {"type": "fs", "base_path": str(tmp_path)}
    with running_server(*server_args(port, adapter)) as (_, url):
        client, worker = _session(port)
        try:
            fill_layers(worker, 9)
            files: list[Path] = []
            for index in range(3):  # one chunk at a time, to know which file is which chunk
                window = worker.key(tokens, index * CHUNK, (index + 1) * CHUNK, f"s{index}")
                assert worker.store(window, blocks(1 + index * BPC, 1))
                wait_for(lambda n=index: len(list(tmp_path.glob("*.data"))) == n + 1)
                files += [f for f in tmp_path.glob("*.data") if f not in files]
            size = files[1].stat().st_size
            with files[1].open("r+b") as handle:  # one payload byte of chunk 1
                handle.seek(HEADER_SIZE + (size - HEADER_SIZE) // 2)
                byte = handle.read(1)[0]
                handle.seek(-1, 1)
                handle.write(bytes([byte ^ 0x01]))
            client.clear(True)
            corrupt = l2_status(url)["adapters"][0]["corrupt_objects"]
            # The prefix stops before the damaged chunk; chunk 0 still comes back intact.
            assert lookup_hits(client, worker, tokens, "l") == 1
            assert l2_status(url)["adapters"][0]["corrupt_objects"] == corrupt + 1
            assert retrieves_identical(worker, tokens[:CHUNK], "l", blocks(1, 1), blocks(100, 1))
            client.end_session("l")
        finally:
            _close(client, worker)
