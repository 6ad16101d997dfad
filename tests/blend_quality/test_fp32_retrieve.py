"""fp32 K reused twice: each retrieve rotates from the stored position, not the last one.

With an fp32 paged cache ``rope.rerotate`` once worked on ``values.to(torch.float32)``,
which for fp32 K is the L1 object's own memory: the first retrieve was right, and
the stored chunk was left rotated to that request's positions, so every later reuse
(and the L2 copy, if written after) was wrong. bf16 and fp16 caches were not
affected (``to`` copies), which is why the bf16 blend tests did not see it. The
working copy is now unconditional; this test keeps it so on a real server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from lmcache_core.client import MPClient
from tests.blend.rig import (
    BLOCK,
    CHUNK,
    blend_server,
    docs,
    request_id,
    rope_worker,
    unified_lookup,
)
from tests.server_process import LiveServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with blend_server() as live:
        yield live


def _blocks(tokens: int, first: int) -> list[int]:
    return list(range(first, first + -(-tokens // BLOCK)))


def test_a_second_reuse_of_an_fp32_chunk_is_rotated_from_its_stored_position(
    server: LiveServer,
) -> None:
    with (
        MPClient(server.zmq_url, timeout=20.0) as client,
        rope_worker(client, dtype=torch.float32) as worker,
    ):
        system, document, other = docs(3)
        stored = system + document
        worker.write_prompt(stored, _blocks(len(stored), 1))
        assert worker.store(stored, _blocks(len(stored), 1), request_id("store"))
        query = system + other + document  # the document moves from CHUNK to 2 * CHUNK
        positions = range(2 * CHUNK, 3 * CHUNK)
        expected = worker.expected_k(document, positions).to(torch.float32)
        for attempt in range(2):
            rid = request_id(f"reuse{attempt}")
            result = unified_lookup(client, worker.key(query, rid, worker=False))
            moved = [s for s in result.non_prefix_segments if s.cur_st == 2 * CHUNK]
            assert len(moved) == 1
            blocks = _blocks(len(query), 30)
            worker.clear(blocks, range(len(query)))
            assert worker.retrieve(client, query, rid, moved, blocks)
            client.end_session(rid)
            k, _ = worker.read(blocks, positions)
            torch.testing.assert_close(k, expected, atol=1e-4, rtol=1e-4)
