"""The simulator: chunk mapping, capacity, just-enough eviction, the watermark round, L2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lmcache_bench_trace.simulator import SimSettings, Simulator, aligned, l1_capacity_bytes
from lmcache_bench_trace.trace import TraceRequest, load_trace
from lmcache_eviction_lru.policy import LRUEvictionPolicy

CHUNK = 256
OBJ = 16 * 1024  # one chunk of the default small layout


def request(index: int, *blocks: int, length: int | None = None) -> TraceRequest:
    return TraceRequest(index, float(index), length or 512 * len(blocks), tuple(blocks))


def sim(slots: int, watermark: float = 1.0, ratio: float = 0.0, **kw: object) -> Simulator:
    settings = SimSettings(
        capacity_bytes=slots * OBJ,
        object_bytes=OBJ,
        trigger_watermark=watermark,
        eviction_ratio=ratio,
        **kw,  # type: ignore[arg-type]
    )
    return Simulator(settings, LRUEvictionPolicy())


def test_blocks_map_to_two_chunks_and_partial_blocks_lose_their_tail() -> None:
    r = request(0, 7, 9, length=512 + 300)
    assert r.full_chunks(CHUNK) == 3
    assert r.chunk_ids(CHUNK) == [14, 15, 18]
    tokens = r.tokens()
    assert len(tokens) == 812
    assert tokens[:2] == [7 * 512, 7 * 512 + 1]
    assert tokens[512] == 9 * 512
    # Equal block ids give equal tokens; different ids never share one.
    assert request(1, 7).tokens() == tokens[:512]
    assert not set(request(2, 8).tokens()) & set(tokens)


def test_a_repeated_prefix_hits_and_a_new_suffix_is_stored() -> None:
    s = sim(slots=100)
    assert s.request(request(0, 1, 2)) == 0
    assert s.request(request(1, 1, 2, 3)) == 4
    assert s.request(request(2, 1, 5)) == 2
    result = s.result
    assert result.stored_chunks == 4 + 2 + 2
    assert result.l1_hit_tokens == 6 * CHUNK
    assert result.hit_ratio == pytest.approx(6 * CHUNK / (512 * 7))


def test_a_full_l1_evicts_just_enough_least_recent_chunks_last_chunk_first() -> None:
    s = sim(slots=4)
    s.request(request(0, 1))  # chunks 2, 3
    s.request(request(1, 2))  # chunks 4, 5: full
    s.request(request(2, 3))  # chunks 6, 7 evict request 0's two chunks
    assert s.resident == {s.key_of(c) for c in (4, 5, 6, 7)}
    assert s.result.evicted_chunks == 2
    s.request(request(3, 2))  # a hit refreshes request 1's chunks
    s.request(request(4, 9, length=256))  # one chunk: evicts one
    # LRU keeps prefixes: of the least recent batch (6, 7) its last chunk goes first.
    assert s.resident == {s.key_of(c) for c in (4, 5, 6, 18)}


def test_a_batch_larger_than_l1_is_refused_and_nothing_is_evicted() -> None:
    s = sim(slots=3)
    s.request(request(0, 1))
    s.request(request(1, 4, 5))
    assert s.resident == {s.key_of(2), s.key_of(3)}
    assert s.result.stored_chunks == 2


def test_the_watermark_round_frees_the_ratio_of_capacity_after_the_request() -> None:
    s = sim(slots=10, watermark=0.5, ratio=0.3)
    s.request(request(0, 1, 2))  # 4 chunks: 40 % used, below the watermark
    assert s.result.watermark_rounds == 0
    s.request(request(1, 3))  # 6 chunks: 60 % > 50 %: frees 3 chunks (30 %)
    assert s.result.watermark_rounds == 1
    assert len(s.resident) == 3
    assert s.result.evicted_chunks == 3


def test_the_l2_serves_what_l1_evicted_and_frequency_admission_holds_back_first_stores() -> None:
    s = sim(slots=2, l2_capacity_chunks=0)
    s.request(request(0, 1))
    s.request(request(1, 2))  # evicts block 1 from L1; L2 keeps it
    assert s.request(request(2, 1)) == 2
    assert s.result.l2_hit_tokens == 2 * CHUNK
    f = sim(slots=2, l2_capacity_chunks=0, l2_admit_after=2)
    f.request(request(0, 1))
    f.request(request(1, 2))
    assert f.request(request(2, 1)) == 0  # stored once before: not admitted; now twice
    f.request(request(3, 2))  # evicts block 1 from L1 again
    assert f.request(request(4, 1)) == 2


def test_capacity_follows_the_servers_rounding() -> None:
    assert l1_capacity_bytes(0.25) == 1 << 28
    assert aligned(16 * 1024 + 1) == 20 * 1024
    assert sim(slots=5).slots == 5


def test_the_trace_loader_keeps_order_and_names_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    lines = [{"timestamp": 1500, "input_length": 600, "hash_ids": [3, 4]}] * 3
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{}\n")
    assert [r.index for r in load_trace(path, 2)] == [0, 1]
    assert load_trace(path, 1)[0].arrival_s == 1.5
    with pytest.raises(ValueError, match=":4:"):
        load_trace(path)
