"""``--enable-blend-reorder`` on a real server: ``cb_reorder_plan`` puts stored documents back.

A worker stores ``[SYS | D1 | D2 | D3]``; a request arrives as
``[SYS | D3 | D1 | D2 | Q]``. The planner proposes ``[SYS | D1 | D2 | D3 | Q]``,
which a unified lookup then finds as one exact prefix of the whole stored prompt
(upstream's measured scenario, reference §10, at 16-token chunks).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lmcache_core.client import MPClient
from lmcache_core.protocol.errors import BadRequestError
from tests.blend.rig import (
    BLOCK,
    CHUNK,
    blend_server,
    fresh_tokens,
    request_id,
    rope_worker,
    status,
    unified_lookup,
)
from tests.server_process import LiveServer

# Starts a real server (seconds): outside the quick loop.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with blend_server("--enable-blend-reorder") as live:
        yield live


def test_a_reordered_prompt_is_planned_back_to_the_stored_order(server: LiveServer) -> None:
    sys_, d1, d2, d3 = (fresh_tokens(2 * CHUNK) for _ in range(4))
    question = fresh_tokens(20)
    stored = sys_ + d1 + d2 + d3
    with MPClient(server.zmq_url, timeout=20.0) as client, rope_worker(client) as worker:
        src = list(range(1, 1 + len(stored) // BLOCK))
        worker.write_prompt(stored, src)
        assert worker.store(stored, src, request_id("store"))
        assert status(server)["engine"]["blend"]["reorder"]["prompts"] >= 1
        query = sys_ + d3 + d1 + d2 + question
        rid = request_id("reorder")
        planned = client.call("cb_reorder_plan", worker.key(query, rid, worker=False), 0, 100)
        assert planned == stored + question
        result = unified_lookup(client, worker.key(planned, rid, worker=False))
        assert result.prefix_coverage_tokens == len(stored)  # a plain prefix hit now
        client.end_session(rid)
        # The stored prompt itself, another salt and a zero budget: keep the prompt.
        same = worker.key(stored + question, request_id("same"), worker=False)
        assert client.call("cb_reorder_plan", same, 0, 100) == []
        salted = worker.key(query, request_id("salt"), worker=False, salt="other")
        assert client.call("cb_reorder_plan", salted, 0, 100) == []
        assert client.call("cb_reorder_plan", worker.key(query, rid, worker=False), 0, 0) == []
        keep = client.call("cb_reorder_plan", worker.key(query, rid, worker=False), CHUNK, 100)
        assert keep == stored + question
        with pytest.raises(BadRequestError):
            client.call("cb_reorder_plan", worker.key(query, rid, worker=False), -1, 100)
