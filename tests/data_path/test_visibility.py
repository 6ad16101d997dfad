"""A store that was acknowledged is visible to the very next lookup."""

from __future__ import annotations

from lmcache_core.client import MPClient
from tests.data_path.conftest import Server, WorkerFactory
from tests.data_path.kv import (
    CHUNK,
    fresh_tokens,
    make_layout,
    pick_blocks,
    probe,
    randomize,
    request_id,
)


def test_acknowledged_store_is_visible_to_the_next_lookup(
    main_server: Server, main_client: MPClient, make_worker: WorkerFactory
) -> None:
    other = main_server.client()  # another connection: visibility is not per socket
    worker = make_worker(main_client, make_layout(num_blocks=24))
    randomize(worker)
    blocks = pick_blocks(16, num_blocks=24)
    misses = []
    for i in range(50):
        chunks = 1 + i % 4
        tokens = fresh_tokens(chunks * CHUNK + i % 3)
        assert worker.store(worker.key(tokens, 0, chunks * CHUNK, request_id("vis")), blocks)
        hits = probe(other if i % 2 else main_client, tokens)
        if hits != chunks:
            misses.append((i, chunks, hits))
    assert misses == []
