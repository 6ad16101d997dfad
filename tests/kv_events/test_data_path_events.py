"""Real traffic through an in-process data path (L1, an ``fs`` L2, the default engine).

A worker's store becomes ``stored`` records in L1 (``CPU``) and in the L2
adapter (``L2:1:fs``), with each chunk's tokens and parent hash; with both
tiers' watermark at 0 their evictions become ``removed`` records.
"""

from __future__ import annotations

import time
from pathlib import Path

from lmcache_core.client.cpu_worker import CpuKVWorker
from lmcache_core.observability.events import EventType
from lmcache_core.protocol.codec import encode_device_handle
from lmcache_core.protocol.kv_event_records import KVEventRecord
from lmcache_core.server.data_path import DataPath
from tests.observability.test_published_events import (
    CHUNK,
    CTX,
    LAYOUT,
    assembled,
    key,
    wait_for,
)


def records_until(path: DataPath, wanted: int, timeout: float = 20.0) -> list[KVEventRecord]:
    assert path.kv_events is not None
    deadline = time.monotonic() + timeout
    while True:
        records = path.kv_events.log.read("model", 0, 1024).events
        if len(records) >= wanted or time.monotonic() > deadline:
            return records
        time.sleep(0.02)


def store_three_chunks(path: DataPath) -> list[int]:
    handlers = path.request_server.handlers
    worker = CpuKVWorker(None, LAYOUT, instance_id=5)  # type: ignore[arg-type]  # no client
    try:
        handles = [encode_device_handle(h) for h in worker.handles]
        handlers["register_kv_cache"](CTX, 5, handles, "model", 1, "vllm", {"kv_layout": "NHD"}, [])
        ids = list(range(1000, 1000 + 3 * CHUNK))
        assert handlers["store"](CTX, key(ids, 3 * CHUNK, "w", 0), 5, [list(range(1, 13))], b"")[1]
    finally:
        worker.close()
    return ids


def test_stores_in_both_tiers_with_tokens_and_parents(tmp_path: Path) -> None:
    for path, bus, recorder in assembled(tmp_path):
        assert "kv_event_stream" in path.request_server.handlers["get_experimental"](CTX)
        ids = store_three_chunks(path)
        wait_for(recorder, bus, EventType.L2_STORE_COMPLETED, 1)
        bus.drain()
        records = records_until(path, 6)
        by_medium: dict[str, list[KVEventRecord]] = {}
        for record in records:
            assert record.kind == "stored"
            by_medium.setdefault(record.medium, []).append(record)
        assert set(by_medium) == {"CPU", "L2:1:fs"}
        for chain in by_medium.values():
            assert [r.token_ids for r in chain] == [
                ids[i * CHUNK : (i + 1) * CHUNK] for i in range(3)
            ]
            hashes = [r.block_hashes[0] for r in chain]
            assert [r.parent_block_hash for r in chain] == [None, hashes[0], hashes[1]]
        assert [r.block_hashes for r in by_medium["CPU"]] == [
            r.block_hashes for r in by_medium["L2:1:fs"]
        ]
        assert path.kv_events.status()["unbound_stores"] == 0  # type: ignore[union-attr]


def test_evictions_of_both_tiers_are_removed_records(tmp_path: Path) -> None:
    for path, bus, recorder in assembled(tmp_path, watermark=0.0):
        store_three_chunks(path)
        wait_for(recorder, bus, EventType.L1_KEYS_EVICTED, 1)
        wait_for(recorder, bus, EventType.L2_KEYS_EVICTED, 1)
        bus.drain()
        records = records_until(path, 8)
        removed = {r.medium: r for r in records if r.kind == "removed"}
        assert set(removed) == {"CPU", "L2:1:fs"}, records
        stored = {r.block_hashes[0] for r in records if r.kind == "stored"}
        for record in removed.values():
            assert set(record.block_hashes) <= stored and record.token_ids == []
