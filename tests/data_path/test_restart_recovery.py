"""A server killed with SIGKILL and started again: the same client recovers without a restart.

The restarted server has never heard of the worker, so its first ping answers False
(once): our client and upstream's vLLM adapter take that as "register again". The
test uses a real server process on a fixed loopback port, killed by its PID.
"""

from __future__ import annotations

import signal

import httpx
import pytest

from lmcache_core.client import MPClient
from lmcache_core.client.cpu_worker import CpuKVWorker
from tests.data_path.kv import (
    CHUNK,
    fresh_tokens,
    lookup,
    make_layout,
    pick_blocks,
    probe,
    randomize,
    raw,
    request_id,
)
from tests.server_process import free_port, server_on_free_ports

pytestmark = pytest.mark.slow

ARGS = ("--l1-size-gb", "0.02", "--eviction-policy", "LRU", "--chunk-size", str(CHUNK))


def round_trip(worker: CpuKVWorker, client: MPClient) -> bool:
    """Store two chunks, look them up and retrieve them into other blocks; True if exact."""
    randomize(worker)
    tokens = fresh_tokens(2 * CHUNK)
    source = pick_blocks(8)
    if not worker.store(worker.key(tokens, 0, len(tokens), request_id()), source):
        return False
    assert probe(client, tokens) == 2
    target = pick_blocks(8, exclude=source)
    rid = request_id()
    assert lookup(client, worker.key(tokens, 0, len(tokens), rid, worker=False)) == 2
    try:
        assert worker.retrieve(worker.key(tokens, 0, len(tokens), rid), target)
    finally:
        client.end_session(rid)
    return all(
        raw(layer[:, dst]) == raw(layer[:, src])
        for layer in worker.layers
        for src, dst in zip(source, target, strict=True)
    )


def liveness(http_url: str) -> dict[str, object]:
    """The server's per-instance liveness from ``/status``."""
    status = httpx.get(f"{http_url}/status", timeout=5.0).json()
    return dict(status["data_path"]["engine"]["worker_liveness"])


def test_sigkilled_server_restarted_is_noticed_at_the_next_ping() -> None:
    port = free_port()
    args = (*ARGS, "--port", str(port))
    with server_on_free_ports(*args) as first:
        client = MPClient(first.zmq_url, timeout=10.0)
        worker = CpuKVWorker(client, make_layout())
        try:
            worker.register()
            assert client.ping(worker.instance_id) is True
            assert round_trip(worker, client)
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(10)

            with server_on_free_ports(*args) as second:
                assert second.zmq_port == port
                # The restarted server does not know the worker: one False, then True.
                assert client.ping(worker.instance_id) is False
                assert client.ping(worker.instance_id) is True
                # Not registered: the store is refused, not silently lost.
                tokens = fresh_tokens(CHUNK)
                assert not worker.store(worker.key(tokens, 0, CHUNK, request_id()), [1, 2, 3, 4])
                worker.register()
                assert client.ping(worker.instance_id) is True
                assert round_trip(worker, client)
                assert str(worker.instance_id) in liveness(second.http_url)
        finally:
            worker.close()
            client.close()
