"""A real server for subscriber tests, and one request driven through it.

The subscriber tests need what a real engine publishes, so they start a real
``lmcache server`` subprocess and send it a store, a lookup, a retrieve and an
``end_session`` from a registered CPU KV worker, the way vLLM would.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from lmcache_core.client import MPClient
from lmcache_core.client.cpu_worker import CpuKVWorker
from tests.data_path.kv import (
    CHUNK,
    fresh_tokens,
    lookup,
    make_layout,
    pick_blocks,
    randomize,
    request_id,
)
from tests.server_process import LiveServer, clean_env, server_on_free_ports

BASE_ARGS = ("--l1-size-gb", "0.1", "--eviction-policy", "LRU", "--chunk-size", str(CHUNK))
START_TIMEOUT = 120.0


@contextmanager
def obs_server(*args: str, **env: str) -> Iterator[LiveServer]:
    """A healthy server on free ports with ``args`` and extra environment; stopped at exit.

    The server is stopped with SIGTERM, so subscribers flush and close as in
    production; after the ``with`` block its whole output is in ``output()``.
    """
    with server_on_free_ports(
        *BASE_ARGS, *args, env=clean_env(**env), timeout=START_TIMEOUT
    ) as server:
        yield server


@dataclass
class Flow:
    """What :func:`run_request` did."""

    tokens: list[int]
    store_request: str
    request: str
    chunks: int
    instance_id: int
    hit_chunks: int
    retrieved: bool


def run_request(zmq_url: str, chunks: int = 3, *, end_session: bool = True) -> Flow:
    """Store ``chunks`` chunks, then look them up, retrieve them and end the session.

    The store runs under its own request id (as a prefill would), the lookup,
    retrieve and ``end_session`` under a second one.
    """
    client = MPClient(zmq_url, timeout=30.0)  # the test machine may be busy
    layout = make_layout()
    worker = CpuKVWorker(client, layout)
    try:
        worker.register()
        randomize(worker)
        bpc = CHUNK // layout.block_size
        src = pick_blocks(chunks * bpc, num_blocks=layout.num_blocks)
        dst = pick_blocks(chunks * bpc, exclude=src, num_blocks=layout.num_blocks)
        tokens = fresh_tokens(chunks * CHUNK)
        store_rid = request_id("obs-store")
        assert worker.store(worker.key(tokens, 0, len(tokens), store_rid), src)
        rid = request_id("obs")
        hits = lookup(client, worker.key(tokens, 0, len(tokens), rid, worker=False))
        retrieved = worker.retrieve(worker.key(tokens, 0, len(tokens), rid), dst)
        if end_session:
            client.end_session(rid)
        worker.unregister()
        return Flow(tokens, store_rid, rid, chunks, worker.instance_id, hits, retrieved)
    finally:
        worker.close()
        client.close()
