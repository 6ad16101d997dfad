"""Several clients at once, over separate sockets, and a pipelining asyncio client."""

from __future__ import annotations

import asyncio
import random
import threading

import torch

from lmcache_core.client import AsyncMPClient, MPClient
from lmcache_core.client.cpu_worker import CpuKVWorker
from tests.data_path.conftest import Server, WorkerFactory
from tests.data_path.kv import (
    CHUNK,
    fill_blocks,
    fresh_tokens,
    lookup,
    lookup_key,
    make_layout,
    pick_blocks,
    request_id,
    snapshot,
    zero,
)

THREADS = 4
ROUNDS = 10
CHUNKS = 4


def test_threads_store_and_retrieve_shared_and_own_prefixes(
    main_server: Server, make_worker: WorkerFactory
) -> None:
    layout = make_layout(dtype=torch.float16, num_blocks=40)
    bpc = CHUNK // layout.block_size
    # Shared prefixes: the same tokens always carry the same KV bytes (seeded by prefix).
    shared = [(fresh_tokens(CHUNKS * CHUNK), 1000 + s) for s in range(3)]
    workers: list[CpuKVWorker] = []
    for _ in range(THREADS):
        workers.append(make_worker(main_server.client(), layout))
    assert len({w.instance_id for w in workers}) == THREADS
    barrier = threading.Barrier(THREADS)
    failures: list[str] = []

    def run(index: int) -> None:
        worker = workers[index]
        client = worker.client
        rng = random.Random(index)
        try:
            barrier.wait(10)
            for round_ in range(ROUNDS):
                if round_ % 2:
                    tokens, seed = shared[rng.randrange(len(shared))]
                else:
                    tokens, seed = fresh_tokens(CHUNKS * CHUNK), rng.randrange(1 << 30)
                src = pick_blocks(CHUNKS * bpc, num_blocks=40)
                dst = pick_blocks(CHUNKS * bpc, exclude=src, num_blocks=40)
                fill_blocks(worker, src, seed)
                expected = snapshot(worker, src)
                if not worker.store(worker.key(tokens, 0, len(tokens), request_id("t")), src):
                    failures.append(f"thread {index} round {round_}: store refused")
                    continue
                rid = request_id(f"t{index}")
                hits = lookup(client, worker.key(tokens, 0, len(tokens), rid, worker=False))
                if hits != CHUNKS:
                    failures.append(f"thread {index} round {round_}: {hits} hits")
                zero(worker)
                if not worker.retrieve(worker.key(tokens, 0, len(tokens), rid), dst):
                    failures.append(f"thread {index} round {round_}: retrieve failed")
                elif snapshot(worker, dst) != expected:
                    failures.append(f"thread {index} round {round_}: wrong bytes")
                client.end_session(rid)
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(f"thread {index}: {exc!r}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads), "a client thread hung"
    assert failures == []


def test_async_client_pipelines_many_lookups(
    main_server: Server, main_client: MPClient, make_worker: WorkerFactory
) -> None:
    layout = make_layout(num_blocks=24)
    worker = make_worker(main_client, layout)
    bpc = CHUNK // layout.block_size
    blocks = pick_blocks(4 * bpc, num_blocks=24)
    fill_blocks(worker, blocks, 7)
    # Prefixes with 0..4 stored chunks of 4.
    prefixes = []
    for i in range(25):
        tokens = fresh_tokens(4 * CHUNK)
        stored = i % 5
        if stored:
            key = worker.key(tokens, 0, stored * CHUNK, request_id())
            assert worker.store(key, blocks)
        prefixes.append((tokens, stored))
    before = main_server.l1()["locked_objects"]

    async def scenario() -> tuple[list[tuple[int, int | None]], list[object], int]:
        async with AsyncMPClient(main_server.zmq_url, timeout=20.0) as client:

            async def one(i: int) -> tuple[int, int | None]:
                tokens, stored = prefixes[i % len(prefixes)]
                rid = request_id("async")
                await client.lookup(lookup_key(tokens, len(tokens), rid))
                hits = await client.query_prefetch_status(rid)
                await client.end_session(rid)
                return stored, hits

            results = await asyncio.gather(*(one(i) for i in range(250)))
            small = await asyncio.gather(
                *(client.noop() for _ in range(50)),
                *(client.get_chunk_size() for _ in range(50)),
                *(client.ping(None) for _ in range(50)),
            )
            return list(results), list(small), client.pending

    results, small, pending = asyncio.run(scenario())
    assert [r for r in results if r[0] != r[1]] == []
    assert small == ["OK"] * 50 + [CHUNK] * 50 + [True] * 50
    assert pending == 0
    assert main_server.l1()["locked_objects"] == before
