"""Scale-out on a shared L2: a chunk stored through one server is served by the others.

Real servers share one real Redis (``resp``), one bucket of a real S3-protocol
server (moto), a three-shard Redis Cluster, or a Mooncake cluster (a master and a
standalone store node, every server a pure client), as a fleet would. The fleet
tests run three servers ("nodes", each with its own L1 and ports): a prefix stored
through A is hit from L2 by B and C, bytes identical, and a node killed mid-run
loses nothing the others stored.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from lmcache_l2_resp.testing import REDIS_SERVER, RedisClusterServers, RedisServer
from lmcache_l2_resp.testing import SKIP_REASON as REDIS_SKIP_REASON

from lmcache_core.client import MPClient
from lmcache_core.client.cpu_worker import CpuKVWorker
from lmcache_core.storage.arena import SHM_DIR
from tests.data_path.l2_helpers import (
    CHUNK,
    blocks,
    fill_layers,
    l2_status,
    lookup_hits,
    random_tokens,
    resp_adapter,
    server_args,
    small_layout,
    wait_for,
)
from tests.server_process import free_port, running_server

LAYOUT = small_layout(112)


def fleet_round_trip(adapter: dict[str, Any]) -> None:
    tokens = random_tokens(9, 3)
    ports = free_port(), free_port()
    with (
        running_server(*server_args(ports[0], adapter)) as (_, url_a),
        running_server(*server_args(ports[1], adapter)) as (_, url_b),
        MPClient(f"127.0.0.1:{ports[0]}", timeout=20) as client_a,
        MPClient(f"127.0.0.1:{ports[1]}", timeout=20) as client_b,
        CpuKVWorker(client_a, LAYOUT) as worker_a,
        CpuKVWorker(client_b, LAYOUT) as worker_b,
    ):
        worker_a.register()
        worker_b.register()
        fill_layers(worker_a, 2)
        src = blocks(1, 3)
        assert worker_a.store(worker_a.key(tokens, 0, 3 * CHUNK, "a"), src)
        wait_for(lambda: l2_status(url_a)["stats"]["stored_keys"] >= 3, timeout=20)
        # Server B never saw these chunks: its L1 is empty, the hits come from the shared L2.
        assert lookup_hits(client_b, worker_b, tokens, "b", timeout=20.0) == 3
        dst = blocks(60, 3)
        assert worker_b.retrieve(worker_b.key(tokens, 0, 3 * CHUNK, "b"), dst)
        for layer_a, layer_b in zip(worker_a.layers, worker_b.layers, strict=True):
            assert torch.equal(layer_b[:, dst], layer_a[:, src])
        assert l2_status(url_b)["stats"]["prefetched_chunks"] == 3
        client_b.end_session("b")


def test_two_servers_share_one_redis(l2_redis: RedisServer) -> None:
    fleet_round_trip(resp_adapter(l2_redis))


def test_two_servers_share_one_bucket(l2_s3: dict[str, Any]) -> None:
    fleet_round_trip(l2_s3)


# -- three nodes, one of them killed -------------------------------------------------------


class Node:
    """One server of the fleet with its client and CPU worker (own L1, own ports)."""

    def __init__(self, stack: contextlib.ExitStack, name: str, adapter: dict[str, Any]) -> None:
        self.name = name
        self.port = free_port()
        # A named pool, so a SIGKILLed node's segment can be unlinked by the test.
        self.shm = f"lmcache_l1_pool_scaleout_{uuid.uuid4().hex[:12]}"
        self.process, self.url = stack.enter_context(
            running_server(*server_args(self.port, adapter, "--shm-name", self.shm))
        )
        self.client = stack.enter_context(MPClient(f"127.0.0.1:{self.port}", timeout=20))
        self.worker = stack.enter_context(CpuKVWorker(self.client, LAYOUT))
        self.worker.register()
        self.last_l2: dict[str, Any] = {}

    def store(self, tokens: list[int], seed: int) -> None:
        """Store ``tokens``' chunks from random KV and wait until L2 holds them."""
        chunks = len(tokens) // CHUNK
        fill_layers(self.worker, seed)
        before = l2_status(self.url)["stats"]["stored_keys"]
        key = self.worker.key(tokens, 0, chunks * CHUNK, f"{self.name}-store-{seed}")
        assert self.worker.store(key, blocks(1, chunks))
        wait_for(lambda: l2_status(self.url)["stats"]["stored_keys"] >= before + chunks, 20)

    def stored_kv(self, chunks: int) -> list[torch.Tensor]:
        """What :meth:`store` stored last, per layer (blocks of the first ``chunks``)."""
        return [layer[:, blocks(1, chunks)].clone() for layer in self.worker.layers]

    def hits_from_l2(self, tokens: list[int], request: str, expected: list[torch.Tensor]) -> int:
        """Look ``tokens`` up and retrieve them; the hit chunks, checked byte for byte."""
        chunks = len(tokens) // CHUNK
        hits = lookup_hits(self.client, self.worker, tokens, request, timeout=20.0)
        if hits == chunks:
            dst = blocks(60, chunks)
            assert self.worker.retrieve(self.worker.key(tokens, 0, chunks * CHUNK, request), dst)
            for layer, want in zip(self.worker.layers, expected, strict=True):
                assert torch.equal(layer[:, dst], want), f"{self.name}: bytes differ"
        self.client.end_session(request)
        return hits

    def kill(self) -> None:
        """SIGKILL the server mid-run and remove the pool it could not unlink."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        with contextlib.suppress(FileNotFoundError):
            (SHM_DIR / self.shm).unlink()


def fleet_of_three(adapter: dict[str, Any]) -> list[Node]:
    """A stores P (B and C hit it from L2); B stores Q; A is killed; C still hits P and Q.

    Returns:
        The nodes (stopped), for checks of their last status.
    """
    prefix_p, prefix_q = random_tokens(31, 3), random_tokens(32, 2)
    with contextlib.ExitStack() as stack:
        a, b, c = nodes = [Node(stack, name, adapter) for name in ("a", "b", "c")]
        a.store(prefix_p, seed=3)
        kv_p = a.stored_kv(3)
        assert b.hits_from_l2(prefix_p, "b-p", kv_p) == 3
        assert c.hits_from_l2(prefix_p, "c-p", kv_p) == 3
        assert l2_status(b.url)["stats"]["prefetched_chunks"] >= 3
        b.store(prefix_q, seed=4)
        kv_q = b.stored_kv(2)
        a.kill()
        # The data lives in the shared L2, not in A: nothing anyone stored is lost.
        c.client.clear(True)  # C's own L1 copy of P must not answer for L2
        assert c.hits_from_l2(prefix_p, "c-p-again", kv_p) == 3
        assert c.hits_from_l2(prefix_q, "c-q", kv_q) == 2
        for node in (b, c):
            node.last_l2 = l2_status(node.url)
    return nodes


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    if REDIS_SERVER is None:
        pytest.skip(REDIS_SKIP_REASON)
    cluster = RedisClusterServers(tmp_path / "cluster")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def test_three_nodes_share_one_redis_cluster(redis_cluster: RedisClusterServers) -> None:
    fleet_of_three({"type": "resp", "cluster": True, "seed_nodes": redis_cluster.seeds})


def test_three_nodes_share_one_mooncake_cluster(tmp_path: Path) -> None:
    from lmcache_l2_mooncake_store.testing import SKIP_REASON, MooncakeCluster, mooncake_installed

    if not mooncake_installed():
        pytest.skip(SKIP_REASON)
    with MooncakeCluster(tmp_path / "mooncake") as cluster:
        cluster.add_store_node(256 << 20)
        nodes = fleet_of_three(cluster.adapter_config(shared=True))
    # Each server registered its L1 arena with Mooncake once (the zero-copy path).
    for node in nodes[1:]:
        (adapter,) = node.last_l2["adapters"]
        assert adapter["registered_bytes"] > 0, adapter
