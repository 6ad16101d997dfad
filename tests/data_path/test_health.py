"""Health: /healthcheck names the request server; inline ops are never starved by the CPU pool."""

from __future__ import annotations

import time

import httpx
import msgspec

from lmcache_core.client import MPClient
from tests.data_path.conftest import Server
from tests.data_path.kv import CHUNK, fresh_tokens, lookup_key, request_id
from tests.data_path.raw import RawClient

E = msgspec.msgpack.encode
HEAVY_TOKENS = 400_000
"""Tokens of one lookup that keeps the CPU pool busy (about 0.2 s of hashing and locking)."""
HEAVY_LOOKUPS = 12


def test_healthcheck_lists_the_request_server(main_server: Server) -> None:
    response = httpx.get(f"{main_server.http_url}/healthcheck", timeout=5.0)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    component = body["components"]["request_server"]
    assert component["ok"] is True
    assert main_server.zmq_url.split("//")[1] in component["detail"]


def test_ping_and_noop_answer_while_the_cpu_pool_is_busy(
    main_server: Server, main_client: MPClient
) -> None:
    assert main_server.full_status()["config"]["mp"]["max_cpu_workers"] == 1
    raw = RawClient(main_server.zmq_url)
    rids: list[str] = []
    pending: set[bytes] = set()
    try:
        # Queue work on the single CPU-pool thread: heavy lookups (distinct tokens, so the
        # token-hash cache cannot help), then a wait for one of them. Built first, sent at once.
        messages = []
        offset = fresh_tokens(1)[0] % (1 << 20) * 1024
        for i in range(HEAVY_LOOKUPS):
            tokens = [(offset + i * HEAVY_TOKENS + t) % (1 << 31) for t in range(HEAVY_TOKENS)]
            rid = request_id("heavy")
            rids.append(rid)
            uid = raw.uid()
            messages.append([uid, E("lookup"), E(lookup_key(tokens, len(tokens), rid)), E(1)])
            pending.add(uid)
        for message in messages:
            raw.send(message)
        # A wait that can only start once the lookups before it are done.
        wait_uid = raw.uid()
        raw.send([wait_uid, E("wait_prefetch_status"), E(rids[-1]), E(5.0)])
        pending.add(wait_uid)

        # Meanwhile, inline operations answer at once.
        latencies = []
        started = time.monotonic()
        while time.monotonic() - started < 0.6:
            for call in (
                lambda: main_client.ping(None),
                main_client.noop,
                main_client.get_chunk_size,
                lambda: main_client.query_prefetch_status(request_id("unknown")),
            ):
                t0 = time.monotonic()
                call()
                latencies.append(time.monotonic() - t0)
        health = httpx.get(f"{main_server.http_url}/healthcheck", timeout=5.0)
        assert health.status_code == 200
        assert health.json()["components"]["request_server"]["ok"] is True

        # The pool really was busy all along: work queued before the pings is still running.
        while raw.socket.poll(0):
            pending.discard(raw.socket.recv_multipart()[0])
        assert pending, "the CPU pool finished its work before the pings; make it heavier"
        assert max(latencies) < 0.5, f"an inline call took {max(latencies):.3f} s"
        assert len(latencies) >= 8

        # Drain: every queued request is answered (the wait with the hit count, 0).
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            if raw.socket.poll(500):
                reply = raw.socket.recv_multipart()
                pending.discard(reply[0])
                if reply[0] == wait_uid:
                    assert msgspec.msgpack.decode(reply[2]) == 0
        assert not pending
    finally:
        raw.close()
        for rid in rids:
            main_client.end_session(rid)
    # And the queue is empty again: a lookup is answered promptly.
    t0 = time.monotonic()
    main_client.lookup(lookup_key(fresh_tokens(CHUNK), CHUNK, request_id()))
    assert time.monotonic() - t0 < 1.0
