"""Scale-out on a shared L2: a chunk stored through server A is served by server B.

Two real servers share one real Redis (``resp``) or one bucket of a real
S3-protocol server (moto), as a fleet would.
"""

from __future__ import annotations

from typing import Any

import torch
from lmcache_l2_resp.testing import RedisServer

from lmcache_core.client import MPClient
from lmcache_core.client.cpu_worker import CpuKVWorker
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
