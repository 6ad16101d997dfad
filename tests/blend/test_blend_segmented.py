"""``--enable-segmented-prefix`` end to end: a real server, a load failed mid-prefix.

The scenario of upstream's segmented check (reference §11.2), scaled to 16-token
chunks: ``[SYS | D1 | D2 | D3]`` is stored, written through to L2 and cleared from
L1; the L2 adapter is ``fault_inject`` around ``mock`` with ``rate`` 0.25 and a
seed chosen (by the adapter's own rule, :meth:`FaultInjectL2Adapter.drops_key`)
so that exactly D1's object fails every load. A unified lookup of the same prompt
then gives the prefix SYS, and, with the flag, D2 and D3 as same-position
segmented-prefix segments carrying the request's own chain hashes (and no
non-prefix segment); the retrieve writes them bit for bit and only D1's slots
stay to recompute. Without the flag (upstream's 0.5.6 behaviour) D2 and D3 come
back through the fingerprint leg as same-position non-prefix matches.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from lmcache_l2_fault_inject.adapter import FaultInjectL2Adapter

from lmcache_core.client import MPClient
from lmcache_core.engine.token_cache import TokenHashCache
from lmcache_core.hashing import make_hasher
from lmcache_core.plugin import L2AdapterSpec, PluginKind
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.protocol.types import CBUnifiedLookupResult, pack_token_ids
from lmcache_core.storage.keys import ObjectKey, pack_kv_rank
from lmcache_core.storage.l2.context import L2AdapterContext
from tests.blend.rig import (
    BLOCK,
    CHUNK,
    RopeWorker,
    blend_server,
    docs,
    locked_objects,
    request_id,
    rope_worker,
    segments_of,
    status,
    unified_lookup,
)
from tests.server_process import LiveServer

# Starts real servers (seconds each): outside the quick loop.
pytestmark = pytest.mark.slow

MODEL = "blend-seg"
RATE = 0.25
MOCK = {"type": "mock", "max_size_gb": 0.1, "mock_bandwidth_gb": 10}
GAP = 1
"""The chunk whose loads fail (D1)."""


def chain_keys(tokens: list[int]) -> list[ObjectKey]:
    """The server's object keys of the prompt's chunks (rank 0 of 1, no salt)."""
    cache = TokenHashCache(make_hasher("blake3"), CHUNK)
    hashes = cache.hashes(bytes(pack_token_ids(tokens)), len(tokens) // CHUNK)
    return [ObjectKey(h, MODEL, pack_kv_rank(1, 0), 0, "") for h in hashes]


def seed_dropping_only(keys: list[ObjectKey], gap: int) -> int:
    """A seed whose ``rate`` drop set holds ``keys[gap]`` and no other key."""
    registry = PluginRegistry(strict=True)
    spec = registry.resolve(PluginKind.L2_ADAPTER, "fault_inject")
    assert isinstance(spec, L2AdapterSpec) and spec.config_model is not None
    config = spec.config_model.model_validate({"type": "fault_inject", "inner": MOCK, "rate": RATE})
    adapter = registry.builder.l2_adapter(spec, config, L2AdapterContext(registry=registry))
    assert isinstance(adapter, FaultInjectL2Adapter)
    try:
        for seed in range(100_000):
            adapter.seed = seed
            if [adapter.drops_key(k) for k in keys] == [i == gap for i in range(len(keys))]:
                return seed
    finally:
        adapter.close()
    raise AssertionError("no seed drops exactly the gap chunk")


class Scenario:
    """The prompt, its keys, and the seed that makes D1 the gap."""

    def __init__(self) -> None:
        self.sys, self.d1, self.d2, self.d3 = docs(4)
        self.prompt = self.sys + self.d1 + self.d2 + self.d3
        self.keys = chain_keys(self.prompt)
        self.seed = seed_dropping_only(self.keys, GAP)

    def adapter(self) -> str:
        return json.dumps({"type": "fault_inject", "inner": MOCK, "rate": RATE, "seed": self.seed})


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return Scenario()


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hashes")


@dataclass
class Rig:
    """A server, a client, and a worker that stored the prompt (written through to L2)."""

    server: LiveServer
    client: MPClient
    worker: RopeWorker


@contextmanager
def stored(scenario: Scenario, *extra: str) -> Iterator[Rig]:
    with (
        blend_server("--l2-adapter", scenario.adapter(), *extra) as server,
        MPClient(server.zmq_url, timeout=20.0) as client,
        rope_worker(client, model=MODEL) as worker,
    ):
        src = list(range(1, 1 + len(scenario.prompt) // BLOCK))
        worker.write_prompt(scenario.prompt, src)
        assert worker.store(scenario.prompt, src, request_id("store"))
        deadline = time.monotonic() + 30
        while status(server)["engine"]["l2"]["stats"]["stored_keys"] < len(scenario.keys):
            assert time.monotonic() < deadline, status(server)["engine"]["l2"]
            time.sleep(0.05)
        yield Rig(server, client, worker)


@pytest.fixture(scope="module")
def segmented(scenario: Scenario, log_dir: Path) -> Iterator[Rig]:
    with stored(
        scenario, "--enable-segmented-prefix", "--lookup-hash-log-dir", str(log_dir)
    ) as rig:
        yield rig


def clear_l1(server: LiveServer) -> None:
    """Only L2 holds the prompt now: every lookup loads it (and D1 fails)."""
    response = httpx.post(f"{server.http_url}/cache/clear", json={"tier": "l1"}, timeout=10.0)
    response.raise_for_status()


def same_position(result: CBUnifiedLookupResult) -> list[tuple[int, int, int, int]]:
    return [(s.old_st, s.old_ed, s.cur_st, s.cur_ed) for s in result.segmented_prefix_segments]


POST_GAP = [
    (2 * CHUNK, 3 * CHUNK, 2 * CHUNK, 3 * CHUNK),
    (3 * CHUNK, 4 * CHUNK, 3 * CHUNK, 4 * CHUNK),
]
"""D2 and D3 at their own positions."""


def test_segmented_prefix_returns_the_post_gap_chunks_and_the_retrieve_writes_them(
    scenario: Scenario, segmented: Rig, log_dir: Path
) -> None:
    srv, client, worker = segmented.server, segmented.client, segmented.worker
    clear_l1(srv)
    before = locked_objects(srv)
    rid = request_id("seg")
    result = unified_lookup(client, worker.key(scenario.prompt, rid, worker=False))
    assert result.prefix_coverage_tokens == CHUNK  # SYS: the run before the gap
    assert segments_of(result) == []  # D2 and D3 are not blended chunks
    assert same_position(result) == POST_GAP
    assert [s.hash for s in result.segmented_prefix_segments] == [
        scenario.keys[2].chunk_hash,
        scenario.keys[3].chunk_hash,
    ]
    # SYS (prefix leg) and D2, D3 (post-gap) are held for the request.
    assert locked_objects(srv) == before + 3
    dst = list(range(40, 40 + len(scenario.prompt) // BLOCK))
    for layer in worker.worker.layers:
        layer.zero_()
    assert worker.retrieve(client, scenario.prompt, rid, result.segmented_prefix_segments, dst)
    tail = range(2 * CHUNK, 4 * CHUNK)
    k, v = worker.read(dst, tail)
    # Same place, no rotation: exactly the rows the model wrote at store time.
    stored_k = worker.expected_k(scenario.prompt[2 * CHUNK :], tail)
    _, stored_v = worker.raw(scenario.prompt[2 * CHUNK :])
    assert bool((k == stored_k.to(k.dtype)).all())
    assert bool((v == stored_v.to(v.dtype)).all())
    gap_k, gap_v = worker.read(dst, range(CHUNK, 2 * CHUNK))
    assert not bool(gap_k.any()) and not bool(gap_v.any())  # D1: left to recompute
    # The retrieve consumed the post-gap locks; SYS's waits for end_session.
    assert locked_objects(srv) == before + 1
    client.end_session(rid)
    assert locked_objects(srv) == before
    fault = status(srv)["engine"]["l2"]["adapters"][0]["fault_inject"]
    assert fault["injected_failures"] >= 2  # D1 failed in the prefix leg and the sparse one
    wanted = "lmcache_blend_lookup_segmented_prefix_hit_tokens_total"
    deadline = time.monotonic() + 20
    while True:  # the bus delivers events asynchronously
        text = httpx.get(f"{srv.http_url}/metrics", timeout=5.0).text
        values = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(wanted) and f'model_name="{MODEL}"' in line
        ]
        if values and sum(values) >= 2 * CHUNK:
            break
        assert time.monotonic() < deadline, [ln for ln in text.splitlines() if wanted in ln]
        time.sleep(0.1)
    while True:  # the log line is written on the bus's drain thread
        lines = [line for path in log_dir.iterdir() for line in path.read_text().splitlines()]
        records = [json.loads(line) for line in lines]
        blend = [r for r in records if r.get("event") == "cb.lookup.end" and r["request_id"] == rid]
        if blend:
            break
        assert time.monotonic() < deadline, records
        time.sleep(0.1)
    assert len(blend) == 1, blend
    assert blend[0]["prefix_hit_tokens"] == CHUNK
    assert blend[0]["segmented_prefix_hit_tokens"] == 2 * CHUNK
    assert blend[0]["non_prefix_hit_tokens"] == 0
    hashes = ["0x" + scenario.keys[i].chunk_hash.hex() for i in (2, 3)]
    assert blend[0]["segments"] == []
    assert blend[0]["segmented_segments"] == [
        [2 * CHUNK, 2 * CHUNK, hashes[0]],
        [3 * CHUNK, 3 * CHUNK, hashes[1]],
    ]


def test_segmented_locks_are_replaced_by_a_newer_lookup_and_released_at_end_session(
    scenario: Scenario, segmented: Rig
) -> None:
    srv, client, worker = segmented.server, segmented.client, segmented.worker
    clear_l1(srv)
    before = locked_objects(srv)
    rid = request_id("seg-abandoned")
    key = worker.key(scenario.prompt, rid, worker=False)
    first = unified_lookup(client, key)
    assert same_position(first) == POST_GAP
    assert locked_objects(srv) == before + 3
    # A newer lookup under the same id replaces the old one's locks, not adds to them.
    again = unified_lookup(client, key)
    assert same_position(again) == POST_GAP
    assert locked_objects(srv) == before + 3
    client.end_session(rid)  # no retrieve: the session releases everything
    assert locked_objects(srv) == before


def test_without_the_flag_the_post_gap_chunks_come_back_as_non_prefix_matches(
    scenario: Scenario,
) -> None:
    # Upstream 0.5.6's answer with or without the flag (reference §11.2, measured).
    with stored(scenario) as rig:
        clear_l1(rig.server)
        before = locked_objects(rig.server)
        rid = request_id("no-seg")
        result = unified_lookup(rig.client, rig.worker.key(scenario.prompt, rid, worker=False))
        assert result.prefix_coverage_tokens == CHUNK
        assert segments_of(result) == POST_GAP  # same-position blended chunks, not prefix
        assert result.segmented_prefix_segments == []
        rig.client.end_session(rid)
        assert locked_objects(rig.server) == before
