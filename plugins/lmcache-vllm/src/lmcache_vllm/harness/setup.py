"""The harness's standard geometry and connector options (tests and benchmarks share them)."""

from __future__ import annotations

import os
from typing import Any

from lmcache_vllm.harness.replay import MiniScheduler, WorkerProcess
from lmcache_vllm.harness.server import ServerProcess
from lmcache_vllm.scheduler import SchedulerSide
from lmcache_vllm.settings import ConnectorSettings

BLOCK = 128
"""vLLM's CPU block size."""
CHUNK = 256
"""The server's chunk size (a multiple of :data:`BLOCK`)."""
GEOMETRY: dict[str, int] = {"layers": 2, "blocks": 48, "heads": 2, "head": 16}
"""The worker's KV cache: layers, blocks per layer, KV heads, head size."""
SERVER_ARGS = ("--chunk-size", str(CHUNK), "--l1-size-gb", "0.1", "--eviction-policy", "LRU")


def extra_config(server: ServerProcess, **overrides: Any) -> dict[str, Any]:
    """The connector's ``kv_connector_extra_config`` for ``server``.

    The timeouts are the connector's defaults (a 10 s heartbeat, 30 s lookups and
    transfers), far above what a loaded machine needs: each of them, when it fires, puts
    the connector in degraded mode, and a test of hits or stores must not fail because a
    2-core machine answered a ping late. Tests of outages and stalls set short ones
    themselves. ``overrides`` are ``lmcache.mp.*`` keys without the prefix.
    """
    config: dict[str, Any] = {
        "lmcache.mp.host": "tcp://127.0.0.1",
        "lmcache.mp.port": server.port,
        "lmcache.mp.mq_timeout": 30,
        "lmcache.mp.heartbeat_interval": 10.0,
        "lmcache.mp.lookup_timeout": 30.0,
        "lmcache.mp.transfer_timeout": 30.0,
    }
    config.update({f"lmcache.mp.{k}": v for k, v in overrides.items()})
    return config


def make_pair(
    server: ServerProcess,
    worker: WorkerProcess,
    *,
    layout: str = "LBHNC",
    model: str | None = None,
    geometry: dict[str, int] | None = None,
    **overrides: Any,
) -> MiniScheduler:
    """A scheduler side here and a freshly initialised worker side in ``worker``."""
    config = extra_config(server, **overrides)
    name = model or f"harness-{os.urandom(4).hex()}"
    shape = dict(GEOMETRY, **(geometry or {}))
    side = SchedulerSide(
        ConnectorSettings.from_extra_config(config),
        model_name=name,
        world_size=1,
        block_size=BLOCK,
    )
    worker.request(
        "init", extra_config=config, model=name, block_size=BLOCK, layout=layout, **shape
    )
    return MiniScheduler(side, worker, block_size=BLOCK, num_blocks=shape["blocks"])
