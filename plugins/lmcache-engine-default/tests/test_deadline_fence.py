"""Stores and retrieves stop at their request's deadline and then never touch the blocks.

The handlers are called with a :class:`RequestContext` whose deadline is already
past, or passes during the copy (a copy slice that sleeps). A retrieve answered
``ok=False`` leaves the blocks after the cut-off untouched; a store answered
``ok=False`` commits nothing it copied. Slicing itself changes no byte: a
retrieve in one-chunk slices with a skip that ends inside a later chunk writes
exactly what one batched scatter writes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from default_engine_rig import CHUNK, Rig, tokens, wire_key
from lmcache_engine_default import deadline_fence
from lmcache_engine_default.deadline_fence import slices

from lmcache_core.client.cpu_worker import CpuKVWorker
from lmcache_core.engine.contract import RequestContext
from lmcache_core.protocol.codec import encode_device_handle
from lmcache_core.transfer.layout import KVFormat, KVLayout

LAYOUT = KVLayout(KVFormat.NHD, 2, 64, 4, 2, 16, torch.float16)  # 4 blocks per chunk
OBJECT_BYTES = LAYOUT.object_nbytes(CHUNK)


@pytest.fixture
def worker(rig: Rig) -> Iterator[CpuKVWorker]:
    kv = CpuKVWorker(None, LAYOUT, instance_id=7)  # type: ignore[arg-type]  # no server
    try:
        for layer in kv.layers:
            flat = layer.view(-1).view(torch.uint8)
            flat.copy_(torch.randint(0, 256, flat.shape, dtype=torch.uint8))
        handles = [encode_device_handle(h) for h in kv.handles]
        rig.call("register_kv_cache", 7, handles, "model", 1, "vllm", {"kv_layout": "NHD"}, [])
        yield kv
    finally:
        kv.close()


@pytest.fixture
def one_chunk_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deadline_fence, "SLICE_BYTES", OBJECT_BYTES)


def _ctx(seconds: float) -> RequestContext:
    return RequestContext(b"client", "op", time.monotonic() + seconds)


def _call(rig: Rig, ctx: RequestContext, op: str, *args: Any) -> Any:
    return rig.engine.handlers()[op](ctx, *args)


def _bytes(worker: CpuKVWorker, ids: list[int]) -> list[bytes]:
    return [
        layer[:, ids].contiguous().view(torch.uint8).numpy().tobytes() for layer in worker.layers
    ]


def _slow_copies(rig: Rig, monkeypatch: pytest.MonkeyPatch, name: str, pause: float) -> list[int]:
    """Make the worker cache's ``name`` copy sleep ``pause`` s after each call; count calls."""
    cache = rig.engine.workers.mapped[7].cache
    real = getattr(cache, name)
    calls: list[int] = []

    def slow(*args: Any) -> None:
        real(*args)
        calls.append(1)
        time.sleep(pause)

    monkeypatch.setattr(cache, name, slow)
    return calls


def _stored(rig: Rig, ids: list[int], chunks: int, request: str) -> None:
    key = wire_key(ids, 0, chunks * CHUNK, request)
    assert _call(rig, _ctx(60), "store", key, 7, [list(range(1, 1 + 4 * chunks))], b"")[1]
    rig.call("lookup", wire_key(ids, 0, chunks * CHUNK, request, worker_id=None), 1)


def test_slices_cover_the_objects_in_bounded_steps() -> None:
    assert list(slices(5, deadline_fence.SLICE_BYTES // 2)) == [(0, 2), (2, 4), (4, 5)]
    assert list(slices(3, deadline_fence.SLICE_BYTES * 4)) == [(0, 1), (1, 2), (2, 3)]
    assert list(slices(0, 1)) == []


def test_a_retrieve_past_its_deadline_writes_nothing(rig: Rig, worker: CpuKVWorker) -> None:
    ids = tokens(2, seed=40)
    _stored(rig, ids, 2, "late")
    target = list(range(20, 28))
    before = _bytes(worker, target)
    key = wire_key(ids, 0, 2 * CHUNK, "late")
    assert _call(rig, _ctx(-0.01), "retrieve", key, 7, [target], b"", 0) == (b"", False)
    assert _bytes(worker, target) == before
    assert rig.l1.usage().locked_objects == 0  # the lookup's locks were consumed anyway
    assert rig.engine.lmcache_driven.deadline_misses["retrieve"] == 1


def test_a_retrieve_stops_at_the_slice_where_its_deadline_passed(
    rig: Rig, worker: CpuKVWorker, monkeypatch: pytest.MonkeyPatch, one_chunk_slices: None
) -> None:
    ids = tokens(3, seed=41)
    _stored(rig, ids, 3, "mid")
    source = _bytes(worker, list(range(1, 5)))
    target = list(range(30, 42))
    untouched = _bytes(worker, target[4:])
    calls = _slow_copies(rig, monkeypatch, "scatter", 0.3)
    key = wire_key(ids, 0, 3 * CHUNK, "mid")
    assert _call(rig, _ctx(0.15), "retrieve", key, 7, [target], b"", 0) == (b"", False)
    assert calls == [1]  # one slice, then the deadline had passed
    assert _bytes(worker, target[:4]) == source  # written before the failure reply
    time.sleep(0.3)
    assert _bytes(worker, target[4:]) == untouched  # never written, not even late


def test_a_store_past_its_deadline_commits_nothing(
    rig: Rig, worker: CpuKVWorker, monkeypatch: pytest.MonkeyPatch, one_chunk_slices: None
) -> None:
    ids = tokens(3, seed=42)
    key = wire_key(ids, 0, 3 * CHUNK, "s")
    assert _call(rig, _ctx(-0.01), "store", key, 7, [list(range(1, 13))], b"") == (b"", False)
    calls = _slow_copies(rig, monkeypatch, "gather", 0.3)
    assert _call(rig, _ctx(0.15), "store", key, 7, [list(range(1, 13))], b"") == (b"", False)
    assert calls == [1]
    usage = rig.l1.usage()
    assert usage.resident_objects == 0 and usage.staged_objects == 0  # the half-copy was aborted
    assert rig.engine.lmcache_driven.deadline_misses["store"] == 2


def test_sliced_retrieve_with_a_skip_writes_what_one_scatter_writes(
    rig: Rig, worker: CpuKVWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = tokens(3, seed=43)
    key = wire_key(ids, 0, 3 * CHUNK, "s")
    assert _call(rig, _ctx(60), "store", key, 7, [list(range(1, 13))], b"")[1]
    skip = CHUNK + 6  # ends inside chunk 1, in its second block
    results = []
    for request, target, slice_bytes in (
        ("whole", list(range(30, 42)), deadline_fence.SLICE_BYTES),
        ("sliced", list(range(42, 54)), OBJECT_BYTES),  # one chunk per slice
    ):
        monkeypatch.setattr(deadline_fence, "SLICE_BYTES", slice_bytes)
        for layer in worker.layers:
            layer[:, target] = 0
        rig.call("lookup", wire_key(ids, 0, 3 * CHUNK, request, worker_id=None), 1)
        window = wire_key(ids, 0, 3 * CHUNK, request)
        assert _call(rig, _ctx(60), "retrieve", window, 7, [target], b"", skip)[1]
        results.append(_bytes(worker, target))
    assert results[0] == results[1]
    for layer in worker.layers:
        assert layer[:, 48:54].any()  # written
        # The skipped 22 tokens (5 blocks and 2 tokens) are not.
        assert not layer[:, 42:47].any() and not layer[:, 47, :2].any()
