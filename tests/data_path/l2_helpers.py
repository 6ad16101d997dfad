"""Shared pieces of the L2 end-to-end tests: a small KV layout, status polling, real backends.

The backends are real: :func:`redis_for_l2` runs ``redis-server``, :func:`moto_bucket`
moto's S3 server; ``tests/data_path/conftest.py`` wraps them in fixtures.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import torch
from lmcache_l2_resp.testing import RedisServer

from lmcache_core.client import MPClient
from lmcache_core.client.cpu_worker import CpuKVWorker
from lmcache_core.transfer.layout import KVFormat, KVLayout
from tests.server_process import free_port

CHUNK = 256
BLOCK = 16
BPC = CHUNK // BLOCK


def small_layout(num_blocks: int) -> KVLayout:
    """Two layers of bf16 NHD KV: 64 KiB per 256-token chunk."""
    return KVLayout(
        KVFormat.NHD,
        num_layers=2,
        num_blocks=num_blocks,
        block_size=BLOCK,
        num_heads=2,
        head_dim=16,
        dtype=torch.bfloat16,
    )


def l2_status(url: str) -> dict[str, Any]:
    """The L2 tier's part of a server's ``/status``."""
    status: dict[str, Any] = httpx.get(f"{url}/status").json()["data_path"]["engine"]["l2"]
    return status


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached")


# -- real backends for the L2 adapters ---------------------------------------------------------

S3_REGION = "us-east-1"
S3_CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}


@contextlib.contextmanager
def redis_for_l2(workdir: Path) -> Iterator[RedisServer]:
    """A real ``redis-server`` on a free port (nothing on disk); stopped at exit."""
    server = RedisServer(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def resp_adapter(server: RedisServer, **extra: Any) -> dict[str, Any]:
    """The ``--l2-adapter`` config of a ``resp`` adapter on ``server``."""
    return {"type": "resp", "host": server.host, "port": server.port, **extra}


@contextlib.contextmanager
def moto_bucket(bucket: str = "fleet", timeout_s: float = 30.0) -> Iterator[dict[str, Any]]:
    """A real S3-protocol server (moto) with one empty bucket; yields an ``s3`` adapter config."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto server exited with {process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        boto3.client(
            "s3", endpoint_url=f"http://127.0.0.1:{port}", region_name=S3_REGION, **S3_CREDENTIALS
        ).create_bucket(Bucket=bucket)
        yield {
            "type": "s3",
            "s3_endpoint": f"{bucket}.127.0.0.1:{port}",
            "s3_region": S3_REGION,
            "disable_tls": True,
            **S3_CREDENTIALS,
        }
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# -- servers, workers and round trips ----------------------------------------------------------


def server_args(port: int, adapter: dict[str, Any], *extra: str) -> tuple[str, ...]:
    """Arguments of an ``lmcache server`` with a 50 MB LRU L1 and one L2 adapter."""
    return (
        "--l1-size-gb",
        "0.05",
        "--eviction-policy",
        "LRU",
        "--port",
        str(port),
        "--l2-adapter",
        json.dumps(adapter),
        *extra,
    )


def random_tokens(seed: int, chunks: int) -> list[int]:
    """``chunks`` full chunks of reproducible token ids."""
    rng = random.Random(seed)
    return [rng.randrange(50000) for _ in range(chunks * CHUNK)]


def fill_layers(worker: CpuKVWorker, seed: int) -> None:
    """Random bf16 KV in every layer of ``worker``."""
    generator = torch.Generator().manual_seed(seed)
    for layer in worker.layers:
        layer.copy_(torch.randn(layer.shape, generator=generator).to(torch.bfloat16))


def blocks(first: int, chunks: int) -> list[int]:
    """The block ids of ``chunks`` chunks starting at block ``first``."""
    return list(range(first, first + chunks * BPC))


def lookup_hits(
    client: MPClient, worker: CpuKVWorker, tokens: list[int], request: str, timeout: float = 10.0
) -> int:
    """Look ``tokens`` up (L1, then L2 prefetch); the leading chunks now held for ``request``."""
    client.lookup(worker.key(tokens, 0, len(tokens) // CHUNK * CHUNK, request, worker=False))
    hits = client.wait_prefetch_status(request, timeout)
    assert hits is not None, "the lookup did not finish in time"
    return int(hits)


def retrieves_identical(
    worker: CpuKVWorker, tokens: list[int], request: str, src: list[int], dst: list[int]
) -> bool:
    """Retrieve ``tokens`` into blocks ``dst``; whether they equal blocks ``src`` byte for byte."""
    expected = [layer[:, src].clone() for layer in worker.layers]
    for layer in worker.layers:
        layer[:, dst] = 0
    if not worker.retrieve(worker.key(tokens, 0, len(dst) // BPC * CHUNK, request), dst):
        return False
    pairs = zip(worker.layers, expected, strict=True)
    return all(torch.equal(layer[:, dst], want) for layer, want in pairs)


def l2_round_trip(
    port: int,
    url: str,
    layout: KVLayout,
    tokens: list[int],
    *,
    store: bool = True,
    seed: int = 5,
    stored: Callable[[dict[str, Any]], bool] | None = None,
) -> tuple[int, bool]:
    """Store (optionally), clear L1, look up, retrieve; (hit chunks, bytes identical).

    The KV written is random but reproducible from ``seed``, so a round trip with
    ``store=False`` against a restarted server compares with the same bytes the
    first one stored. With L1 cleared, every hit can only come from L2. The store
    counts as landed once ``stored(l2_status)`` holds; by default once the tier
    stored every full chunk of ``tokens``.
    """
    chunks = len(tokens) // CHUNK
    with MPClient(f"127.0.0.1:{port}", timeout=20) as client, CpuKVWorker(client, layout) as worker:
        worker.register()
        fill_layers(worker, seed)
        src = blocks(1, chunks)
        if store:
            assert worker.store(worker.key(tokens, 0, chunks * CHUNK, "store"), src)
            landed = stored or (lambda status: status["stats"]["stored_keys"] >= chunks)
            wait_for(lambda: landed(l2_status(url)))
        client.clear(True)
        hits = lookup_hits(client, worker, tokens, "load")
        same = hits == chunks and retrieves_identical(
            worker, tokens, "load", src, blocks(80, chunks)
        )
        client.end_session("load")
        worker.unregister()
    return hits, same
