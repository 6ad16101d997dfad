"""L2 behind L1 on a real server: store-through, prefetch on lookup, buffer mode, restart."""

from __future__ import annotations

import json
import random
from pathlib import Path

import httpx

from lmcache_core.client import MPClient
from lmcache_core.client.cpu_worker import CpuKVWorker
from tests.data_path.l2_helpers import (
    BPC,
    CHUNK,
    l2_round_trip,
    l2_status,
    lookup_hits,
    server_args,
    small_layout,
    wait_for,
)
from tests.server_process import free_port, running_server

LAYOUT = small_layout(160)


def test_fs_tier_serves_after_l1_is_cleared_and_after_a_restart(tmp_path: Path) -> None:
    tokens = [random.Random(3).randrange(50000) for _ in range(3 * CHUNK + 7)]
    adapter = {"type": "fs", "base_path": str(tmp_path)}
    port = free_port()
    args = server_args(port, adapter)
    with running_server(*args) as (_, url):
        assert l2_round_trip(port, url, LAYOUT, tokens, store=True) == (3, True)
        stats = l2_status(url)["stats"]
        assert stats["prefetched_chunks"] == 3
    assert len(list(tmp_path.glob("*.data"))) == 3
    with running_server(*args) as (_, url):  # a new process: the fs index is rebuilt from disk
        assert l2_status(url)["adapters"][0]["objects"] == 3
        assert l2_round_trip(port, url, LAYOUT, tokens, store=False) == (3, True)


def test_skip_l1_buffer_mode_and_a_failing_adapter_is_a_miss(tmp_path: Path) -> None:
    tokens = [random.Random(4).randrange(50000) for _ in range(3 * CHUNK)]
    port = free_port()
    mock = json.dumps(
        {"type": "mock", "max_size_gb": 0.01, "mock_bandwidth_gb": 50, "fail_chunk_indices": [1]}
    )
    args = (
        "--l1-size-gb",
        "0.05",
        "--eviction-policy",
        "noop",
        "--l2-store-policy",
        "skip_l1",
        "--port",
        str(port),
        "--l2-adapter",
        mock,
    )
    with (
        running_server(*args) as (_, url),
        MPClient(f"127.0.0.1:{port}", timeout=20) as client,
        CpuKVWorker(client, LAYOUT) as worker,
    ):
        worker.register()
        assert worker.store(worker.key(tokens, 0, 3 * CHUNK, "s"), list(range(1, 1 + 3 * BPC)))
        wait_for(lambda: l2_status(url)["stats"]["stored_keys"] >= 3)
        # Buffer mode: L1 gave the objects up once L2 held them.
        wait_for(
            lambda: httpx.get(f"{url}/status").json()["data_path"]["l1"]["resident_objects"] == 0
        )
        # The mock fails the load of batch position 1: the prefix stops before it.
        assert lookup_hits(client, worker, tokens, "l") == 1
        client.end_session("l")
        worker.unregister()


def test_an_eviction_block_keeps_the_adapter_within_its_capacity(tmp_path: Path) -> None:
    object_bytes = LAYOUT.object_nbytes(CHUNK) + 48  # payload + frame header
    capacity = 7 * object_bytes
    adapter = {
        "type": "fs",
        "base_path": str(tmp_path),
        "max_capacity_gb": capacity / 2**30,
        "eviction": {"eviction_policy": "LRU", "trigger_watermark": 0.8, "eviction_ratio": 0.4},
    }
    port = free_port()
    args = server_args(port, adapter)
    batches = [[random.Random(50 + b).randrange(50000) for _ in range(3 * CHUNK)] for b in range(4)]
    with (
        running_server(*args) as (_, url),
        MPClient(f"127.0.0.1:{port}", timeout=20) as client,
        CpuKVWorker(client, LAYOUT) as worker,
    ):
        worker.register()
        for number, tokens in enumerate(batches):
            assert worker.store(
                worker.key(tokens, 0, 3 * CHUNK, f"s{number}"), list(range(1, 1 + 3 * BPC))
            )
            wait_for(lambda n=number: l2_status(url)["stats"]["store_batches"] >= n + 1)
            used = l2_status(url)["adapters"][0]["used_bytes"]
            assert used <= capacity, f"batch {number}: {used} > {capacity}"
        assert l2_status(url)["stats"]["evicted_keys"] > 0
        client.clear(True)
        assert lookup_hits(client, worker, batches[-1], "newest") == 3  # the newest batch survived
        assert lookup_hits(client, worker, batches[0], "oldest") == 0  # the oldest was evicted
        client.end_session("newest")
        worker.unregister()
    assert sum(f.stat().st_size for f in tmp_path.glob("*.data")) <= capacity
