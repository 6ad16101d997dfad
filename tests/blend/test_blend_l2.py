"""The blend engine with an L2 tier: chunks only L2 holds are loaded by the sparse leg.

One server with a slow ``mock`` L2 adapter (so a load takes tens of milliseconds
and the first poll is reliably early) and short sessions (abandoned lookups end
with their session).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from lmcache_core.client import MPClient
from tests.blend.rig import (
    BLOCK,
    CHUNK,
    blend_server,
    docs,
    locked_objects,
    request_id,
    rope_worker,
    segments_of,
    status,
)
from tests.server_process import LiveServer

SLOW_MOCK = {"type": "mock", "max_size_gb": 0.1, "mock_bandwidth_gb": 0.0001}
"""0.1 MB/s: a 4 KiB object takes about 40 ms to load."""
TTL = 2.0


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with blend_server(
        "--l2-adapter", json.dumps(SLOW_MOCK), "--session-ttl-seconds", str(TTL)
    ) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> Iterator[MPClient]:
    with MPClient(server.zmq_url, timeout=20.0) as made:
        yield made


def l2_holds(server: LiveServer, count: int) -> None:
    """Wait until the L2 store controller wrote ``count`` more objects."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stats = status(server)["engine"]["l2"]["stats"]
        if stats["stored_keys"] >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"L2 did not store {count} objects: {status(server)['engine']['l2']}")


def clear_l1(server: LiveServer) -> None:
    response = httpx.post(f"{server.http_url}/cache/clear", json={"tier": "l1"}, timeout=10.0)
    response.raise_for_status()


def test_l2_only_chunks_are_loaded_polls_answer_nil_until_then(
    server: LiveServer, client: MPClient
) -> None:
    with rope_worker(client) as worker:
        d1, d2, d3 = docs(3)
        stored = d1 + d2 + d3
        src = list(range(1, 1 + len(stored) // BLOCK))
        worker.write_prompt(stored, src)
        assert worker.store(stored, src, request_id("store"))
        l2_holds(server, 3)
        clear_l1(server)
        query = docs(1)[0] + d3 + d2
        rid = request_id("l2")
        key = worker.key(query, rid, worker=False)
        answers = []
        deadline = time.monotonic() + 30
        while (result := client.call("cb_unified_lookup", key, 1)) is None:
            answers.append(None)
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert answers, "the first poll came before the L2 loads: it must answer nil"
        assert segments_of(result) == [
            (2 * CHUNK, 3 * CHUNK, CHUNK, 2 * CHUNK),
            (CHUNK, 2 * CHUNK, 2 * CHUNK, 3 * CHUNK),
        ]
        # A repeated poll of the finished lookup starts a new one: the same answer.
        again = client.call("cb_unified_lookup", key, 1)
        while again is None:
            again = client.call("cb_unified_lookup", key, 1)
        assert segments_of(again) == segments_of(result)
        dst = list(range(40, 40 + -(-len(query) // BLOCK)))
        for layer in worker.worker.layers:
            layer.zero_()
        assert worker.retrieve(client, query, rid, result.non_prefix_segments, dst)
        k, _ = worker.read(dst, range(CHUNK, 3 * CHUNK))
        expected = worker.expected_k(query[CHUNK : 3 * CHUNK], range(CHUNK, 3 * CHUNK))
        assert float((k.double() - expected).abs().max()) < 0.1
        client.end_session(rid)


def test_abandoned_lookups_end_with_their_session(server: LiveServer, client: MPClient) -> None:
    with rope_worker(client) as worker:
        d1, d2 = docs(2)
        stored = d1 + d2
        src = list(range(1, 1 + len(stored) // BLOCK))
        worker.write_prompt(stored, src)
        before = locked_objects(server)
        assert worker.store(stored, src, request_id("store"))
        l2_holds(server, 5)
        clear_l1(server)
        rid = request_id("abandoned")
        assert (
            client.call("cb_unified_lookup", worker.key(docs(1)[0] + d2, rid, worker=False), 1)
            is None
        )
        assert status(server)["engine"]["blend"]["active_cb_lookups"] >= 1
        deadline = time.monotonic() + 10 * TTL
        while status(server)["engine"]["blend"]["active_cb_lookups"]:
            assert time.monotonic() < deadline, "the abandoned lookup never expired"
            time.sleep(0.2)
        while locked_objects(server) != before:  # its locks went with the session
            assert time.monotonic() < deadline, "the abandoned lookup's locks were kept"
            time.sleep(0.2)
