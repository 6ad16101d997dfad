"""Per-salt quotas on real servers: IsolatedLRU in L1, and in an L2 adapter's eviction block.

Two servers start together for this module: one with ``--eviction-policy
IsolatedLRU`` (L1 enforces), one with an LRU L1 and an ``fs`` adapter without a
capacity whose ``eviction`` block uses IsolatedLRU (only L2 enforces). Each
test drives the allowlist rule (no quota: evicted at the next cycle), a quota
large enough (kept, cycle after cycle) and a lowered quota (evicted down to
below its watermark, later chunks first so the prefix survives), through the
HTTP quota API, real ZeroMQ clients and CPU workers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmcache_core.client import MPClient
from lmcache_core.client.cpu_worker import CpuKVWorker
from tests.data_path.conftest import Server, WorkerFactory
from tests.data_path.kv import (
    CHUNK,
    fresh_tokens,
    lookup_key,
    make_layout,
    pick_blocks,
    request_id,
)
from tests.data_path.l2_helpers import wait_for
from tests.server_process import clean_env, start_server

LAYOUT = make_layout(block_size=CHUNK)  # one block per chunk
OBJECT_BYTES = LAYOUT.object_nbytes(CHUNK)
assert OBJECT_BYTES == 4096  # one 4 KiB-aligned L1 extent per object
L2_OBJECT_BYTES = OBJECT_BYTES + 48  # framed: payload + header
GIB = 1024**3
L1_CYCLE_S = 0.1
L2_CYCLE_S = 1.0


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """Both servers, started in parallel, stopped at the end of the module."""
    base = ("--l1-size-gb", "0.05", "--chunk-size", str(CHUNK))
    fs_dir = tmp_path_factory.mktemp("quota-fs")
    adapter = {
        "type": "fs",
        "base_path": str(fs_dir),
        "eviction": {"eviction_policy": "IsolatedLRU"},  # no max_capacity_gb: quotas only
    }
    started = {
        "l1": Server("quota-l1", (*base, "--eviction-policy", "IsolatedLRU")),
        "l2": Server(
            "quota-l2", (*base, "--eviction-policy", "LRU", "--l2-adapter", json.dumps(adapter))
        ),
    }
    try:
        for server in started.values():
            server.wait()
        yield started
    finally:
        for server in started.values():
            server.terminate()
        for server in started.values():
            server.join()


def put_quota(server: Server, salt: str, limit_gb: float) -> dict[str, Any]:
    response = httpx.put(f"{server.http_url}/quota/{salt}", json={"limit_gb": limit_gb})
    assert response.status_code == 200, response.text
    return dict(response.json())


def get_quota(server: Server, salt: str) -> dict[str, Any]:
    response = httpx.get(f"{server.http_url}/quota/{salt}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def tier_bytes(server: Server, salt: str, tier: str) -> int:
    return round(get_quota(server, salt)["usage_by_tier_gb"][tier] * GIB)


def hits(client: MPClient, tokens: list[int], salt: str) -> int:
    """Leading chunks found (L1, or loaded from L2); the lookup's locks are released."""
    rid = request_id("quota-probe")
    client.lookup(lookup_key(tokens, len(tokens), rid, salt=salt))
    try:
        found = client.wait_prefetch_status(rid, 10.0)
        assert found is not None
        return int(found)
    finally:
        client.end_session(rid)


def store(worker: CpuKVWorker, chunks: int, salt: str) -> list[int]:
    """Store ``chunks`` fresh chunks under ``salt``; returns their tokens."""
    tokens = fresh_tokens(chunks * CHUNK)
    key = worker.key(tokens, 0, len(tokens), request_id("quota-store"), cache_salt=salt)
    assert worker.store(key, pick_blocks(chunks))
    return tokens


def emptied(server: Server, make_worker: WorkerFactory) -> Iterator[tuple[Server, CpuKVWorker]]:
    """The server with L1 emptied before and after, and a registered worker."""
    client = server.client()
    client.clear(True)
    yield server, make_worker(client, LAYOUT)
    client.clear(True)


@pytest.fixture
def l1_worker(
    servers: dict[str, Server], make_worker: WorkerFactory
) -> Iterator[tuple[Server, CpuKVWorker]]:
    """The server whose L1 enforces quotas."""
    yield from emptied(servers["l1"], make_worker)


@pytest.fixture
def l2_worker(
    servers: dict[str, Server], make_worker: WorkerFactory
) -> Iterator[tuple[Server, CpuKVWorker]]:
    """The server whose fs adapter enforces quotas."""
    yield from emptied(servers["l2"], make_worker)


# -- L1 ----------------------------------------------------------------------------------


def test_l1_allowlist_kept_quota_and_lowered_quota(l1_worker: tuple[Server, CpuKVWorker]) -> None:
    server, worker = l1_worker
    client = worker.client
    assert get_quota(server, "nobody")["enforced_by"] == ["l1"]

    # No quota: the store is acknowledged, then gone within about one cycle.
    stranger = store(worker, 3, "nobody")
    wait_for(lambda: hits(client, stranger, "nobody") == 0, timeout=10 * L1_CYCLE_S + 2)
    assert tier_bytes(server, "nobody", "l1") == 0

    # A quota large enough: kept, cycle after cycle.
    put_quota(server, "paid", 1.0)
    paid = store(worker, 6, "paid")
    time.sleep(10 * L1_CYCLE_S)
    assert hits(client, paid, "paid") == 6
    info = get_quota(server, "paid")
    assert info["exists"] is True
    assert round(info["current_usage_gb"] * GIB) == 6 * OBJECT_BYTES

    # Lowered to 3 objects: one cycle evicts to below 80 % of it (2 objects), the
    # later chunks first, so what stays is still a usable prefix.
    put_quota(server, "paid", 3 * OBJECT_BYTES / GIB)
    wait_for(lambda: tier_bytes(server, "paid", "l1") == 2 * OBJECT_BYTES, timeout=5)
    time.sleep(5 * L1_CYCLE_S)
    assert tier_bytes(server, "paid", "l1") == 2 * OBJECT_BYTES
    assert hits(client, paid, "paid") == 2

    # Removing the quota: the salt is back on the allowlist's outside.
    assert httpx.delete(f"{server.http_url}/quota/paid").json()["status"] == "removed"
    wait_for(lambda: hits(client, paid, "paid") == 0, timeout=5)


def test_l1_default_salt_is_named_default(l1_worker: tuple[Server, CpuKVWorker]) -> None:
    server, worker = l1_worker
    client = worker.client
    plain = store(worker, 2, "")
    wait_for(lambda: hits(client, plain, "") == 0, timeout=5)
    assert put_quota(server, "_default", 0.5)["cache_salt"] == "_default"
    try:
        plain = store(worker, 2, "")
        time.sleep(10 * L1_CYCLE_S)
        assert hits(client, plain, "") == 2
        assert tier_bytes(server, "_default", "l1") == 2 * OBJECT_BYTES
    finally:
        httpx.delete(f"{server.http_url}/quota/_default")


# -- L2 ----------------------------------------------------------------------------------


def test_l2_allowlist_kept_quota_and_lowered_quota(l2_worker: tuple[Server, CpuKVWorker]) -> None:
    server, worker = l2_worker
    client = worker.client
    assert get_quota(server, "nobody")["enforced_by"] == ["l2[1]:fs"]

    stranger = store(worker, 3, "nobody")
    # L1 (LRU) keeps it; the adapter gets it, then evicts it at its next cycle.
    assert hits(client, stranger, "nobody") == 3
    wait_for(lambda: tier_bytes(server, "nobody", "l2[1]:fs") == 0, timeout=3 * L2_CYCLE_S + 5)
    assert tier_bytes(server, "nobody", "l1") == 3 * OBJECT_BYTES
    client.clear(True)
    assert hits(client, stranger, "nobody") == 0  # neither tier has it now

    put_quota(server, "paid", 1.0)
    paid = store(worker, 6, "paid")
    wait_for(lambda: tier_bytes(server, "paid", "l2[1]:fs") == 6 * L2_OBJECT_BYTES, timeout=5)
    time.sleep(2 * L2_CYCLE_S + 0.2)  # two cycles: still there
    assert tier_bytes(server, "paid", "l2[1]:fs") == 6 * L2_OBJECT_BYTES
    assert round(get_quota(server, "paid")["current_usage_gb"] * GIB) == 6 * L2_OBJECT_BYTES
    client.clear(True)
    assert hits(client, paid, "paid") == 6  # every chunk loaded back from L2

    put_quota(server, "paid", 3 * L2_OBJECT_BYTES / GIB)
    wait_for(
        lambda: tier_bytes(server, "paid", "l2[1]:fs") == 2 * L2_OBJECT_BYTES,
        timeout=3 * L2_CYCLE_S + 5,
    )
    client.clear(True)
    assert hits(client, paid, "paid") == 2  # the prefix survived
    httpx.delete(f"{server.http_url}/quota/paid")
    wait_for(lambda: tier_bytes(server, "paid", "l2[1]:fs") == 0, timeout=3 * L2_CYCLE_S + 5)


def test_an_adapter_without_capacity_needs_isolated_lru(tmp_path: Path) -> None:
    adapter = {"type": "fs", "base_path": str(tmp_path), "eviction": {"eviction_policy": "LRU"}}
    process = start_server(
        "--l1-size-gb",
        "0.01",
        "--eviction-policy",
        "LRU",
        "--l2-adapter",
        json.dumps(adapter),
        env=clean_env(),
    )
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "needs a capacity" in output
    assert "only IsolatedLRU works without one" in output
