"""``--engine-type blend_legacy`` end to end: a real server process, real shared memory.

A worker registers a contiguous ``[2, L, T, D]`` CB buffer (``cpu_shm``), stores
documents from buffer offsets (``cb_store_pre_computed``), looks up a request
that holds them elsewhere and unaligned (``cb_lookup_pre_computed_v2``, by name),
and retrieves the matched chunks into another buffer at ``offset + cur_st``
(``cb_retrieve_pre_computed_v2``), checked bit for bit; ``cb_store_final`` makes a
request reachable by an ordinary ``lookup``. Upstream's scenario of
``test_blend_server_v2.py`` (CUDA there), on a CPU buffer here.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
import torch
from lmcache_engine_blend_legacy.client import CpuCBBuffer

from lmcache_core.client import MPClient
from lmcache_core.protocol.codec import encode_device_handle
from lmcache_core.protocol.errors import (
    BadRequestError,
    NotRegisteredError,
    NotSupportedError,
)
from lmcache_core.protocol.types import CacheKey, CBMatchResult, CudaHandle, TensorMetadata
from tests.server_process import free_port, running_server

pytestmark = pytest.mark.slow

CHUNK = 256
LAYERS, TOKENS, HIDDEN = 2, 2048, 32
MODEL = "legacy/model"


def doc(seed: int, chunks: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1, 50000) for _ in range(chunks * CHUNK)]


def server_args(port: int, *extra: str) -> tuple[str, ...]:
    return (
        "--engine-type",
        "blend_legacy",
        "--l1-size-gb",
        "0.05",
        "--eviction-policy",
        "LRU",
        "--chunk-size",
        str(CHUNK),
        "--port",
        str(port),
        *extra,
    )


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[int, str]]:
    port = free_port()
    with running_server(*server_args(port)) as (_, url):
        yield port, url


@pytest.fixture
def client(server: tuple[int, str]) -> Iterator[MPClient]:
    with MPClient(f"127.0.0.1:{server[0]}", timeout=20) as client:
        yield client


def cb_buffer(client: MPClient, seed: int | None = None) -> CpuCBBuffer:
    buffer = CpuCBBuffer(client, LAYERS, TOKENS, HIDDEN, model_name=MODEL)
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
        buffer.tensor.copy_(torch.randn(buffer.tensor.shape, generator=generator))
    buffer.register()
    return buffer


def slice_of(buffer: CpuCBBuffer, start: int) -> torch.Tensor:
    return buffer.tensor[:, :, start : start + CHUNK, :]


def test_documents_are_found_anywhere_and_retrieved_bit_exactly(client: MPClient) -> None:
    writer, reader = cb_buffer(client, seed=1), cb_buffer(client)
    try:
        d1, d2 = doc(10, 2), doc(11, 1)
        assert writer.store_pre_computed(d1, 0, "d1")  # D1's KV at buffer tokens [0, 512)
        assert writer.store_pre_computed(d2 + [7] * 100, 1024, "d2")  # the partial tail: dropped
        # A request holding D2 at the unaligned position 37, then D1, then new tokens.
        request = [5] * 37 + d2 + d1 + [9] * 300
        matches = writer.lookup(request, "r")
        spans = [(m.old_st, m.old_ed, m.cur_st, m.cur_ed) for m in matches]
        assert spans == [(0, 256, 37, 293), (0, 256, 293, 549), (256, 512, 549, 805)]
        assert all(isinstance(m, CBMatchResult) and len(m.hash) == 32 for m in matches)
        assert reader.retrieve(request, matches, 100, "r")
        # Each chunk lands at offset + cur_st, byte for byte what was stored.
        assert torch.equal(slice_of(reader, 137), slice_of(writer, 1024))  # D2
        assert torch.equal(slice_of(reader, 393), slice_of(writer, 0))  # D1 chunk 0
        assert torch.equal(slice_of(reader, 649), slice_of(writer, 256))  # D1 chunk 1
        untouched = torch.ones(TOKENS, dtype=torch.bool)
        untouched[137 : 649 + CHUNK] = False
        assert not reader.tensor[:, :, untouched, :].any()  # no other token written
        client.end_session("r")
    finally:
        for buffer in (writer, reader):
            buffer.unregister()
            buffer.close()


def test_nothing_matches_when_the_request_holds_no_stored_chunk(client: MPClient) -> None:
    buffer = cb_buffer(client, seed=2)
    try:
        assert buffer.store_pre_computed(doc(20, 1), 0, "s")
        assert buffer.lookup(doc(21, 3), "q") == []
        assert buffer.lookup(doc(20, 1)[: CHUNK - 1], "q") == []  # shorter than a chunk
        assert buffer.lookup(doc(20, 1), "q", cache_salt="other-tenant") == []
        client.end_session("q")
    finally:
        buffer.unregister()
        buffer.close()


def test_store_final_is_reachable_by_an_ordinary_lookup(client: MPClient) -> None:
    buffer = cb_buffer(client, seed=3)
    try:
        request = doc(30, 3)
        assert buffer.store_final(request, 256, "f")
        client.lookup(buffer.key(request, "plain", worker=False))
        assert client.wait_prefetch_status("plain", 10) == 3
        client.end_session("plain")
        # And by the legacy lookup, at its own positions.
        matches = buffer.lookup([1] * 10 + request, "again")
        assert [(m.old_st, m.cur_st) for m in matches] == [(0, 10), (256, 266), (512, 522)]
        client.end_session("again")
    finally:
        buffer.unregister()
        buffer.close()


def test_lookup_locks_hold_until_the_retrieve_and_gone_chunks_leave_the_index(
    client: MPClient, server: tuple[int, str]
) -> None:
    buffer = cb_buffer(client, seed=4)
    try:
        document = doc(40, 2)
        assert buffer.store_pre_computed(document, 0, "s")
        matches = buffer.lookup(document, "held")
        assert len(matches) == 2
        client.clear(False)  # spares what the lookup holds
        assert buffer.retrieve(document, matches, 512, "held")  # consumes the locks
        client.end_session("held")
        client.clear(False)  # now nothing holds them: they go
        before = legacy_status(server[1])["fingerprints"]
        assert buffer.lookup(document, "after") == []
        after = legacy_status(server[1])["fingerprints"]
        assert after["removed_stale"] == before["removed_stale"] + 2
        assert after["entries"] == before["entries"] - 2
        # A retrieve of chunks no longer held fails, writing nothing.
        buffer.tensor.zero_()
        assert not buffer.retrieve(document, matches, 0, "after")
        assert not buffer.tensor.any()
        client.end_session("after")
    finally:
        buffer.unregister()
        buffer.close()


def locked_objects(url: str) -> int:
    return int(httpx.get(f"{url}/status").json()["data_path"]["l1"]["locked_objects"])


def test_end_session_releases_the_locks_no_retrieve_consumed(
    client: MPClient, server: tuple[int, str]
) -> None:
    buffer = cb_buffer(client, seed=8)
    try:
        document = doc(80, 3)
        assert buffer.store_pre_computed(document, 0, "s")
        before = locked_objects(server[1])
        matches = buffer.lookup([3] * 5 + document, "held")
        assert len(matches) == 3
        assert locked_objects(server[1]) == before + 3
        assert buffer.retrieve([3] * 5 + document, matches[:1], 0, "held")  # consumes one
        assert locked_objects(server[1]) == before + 2
        client.end_session("held")
        assert locked_objects(server[1]) == before
    finally:
        buffer.unregister()
        buffer.close()


def test_every_rank_must_have_a_chunk_and_a_missing_rank_is_not_stale(
    client: MPClient, server: tuple[int, str]
) -> None:
    ranks = [
        CpuCBBuffer(client, LAYERS, TOKENS, HIDDEN, model_name=MODEL, world_size=2, worker_id=r)
        for r in range(2)
    ]
    try:
        for rank, buffer in enumerate(ranks):
            generator = torch.Generator().manual_seed(90 + rank)
            buffer.tensor.copy_(torch.randn(buffer.tensor.shape, generator=generator))
            buffer.register()
        document = doc(90, 2)
        assert ranks[0].store_pre_computed(document, 0, "s0")  # rank 1's store not yet here
        assert ranks[0].lookup(document, "early") == []
        client.end_session("early")
        assert ranks[1].store_pre_computed(document, 512, "s1")
        matches = ranks[0].lookup(document, "r")  # the fingerprints survived the early lookup
        assert [(m.old_st, m.cur_st) for m in matches] == [(0, 0), (256, 256)]
        readers = [
            CpuCBBuffer(client, LAYERS, TOKENS, HIDDEN, model_name=MODEL, world_size=2, worker_id=r)
            for r in range(2)
        ]
        try:
            for reader in readers:
                reader.register()
                assert reader.retrieve(document, matches, 100, "r")
            # Each rank gets its own shard back.
            assert torch.equal(readers[0].tensor[:, :, 100:612], ranks[0].tensor[:, :, 0:512])
            assert torch.equal(readers[1].tensor[:, :, 100:612], ranks[1].tensor[:, :, 512:1024])
        finally:
            for reader in readers:
                reader.unregister()
                reader.close()
        client.end_session("r")
    finally:
        for buffer in ranks:
            buffer.unregister()
            buffer.close()


def legacy_status(url: str) -> dict[str, object]:
    status: dict[str, object] = httpx.get(f"{url}/status").json()["data_path"]["engine"][
        "blend_legacy"
    ]
    return status


def test_errors_are_typed_replies(client: MPClient) -> None:
    buffer = cb_buffer(client, seed=5)
    try:
        document = doc(50, 1)
        with pytest.raises(NotRegisteredError, match="no CB buffer"):
            client.call("cb_store_pre_computed", buffer.key(document, "e"), 0, 12345, b"")
        with pytest.raises(BadRequestError, match="outside the CB buffer"):
            buffer.store_pre_computed(document, TOKENS - 100, "e")
        match = CBMatchResult(0, CHUNK, TOKENS - 10, TOKENS - 10 + CHUNK, b"\0" * 32)
        with pytest.raises(BadRequestError, match="outside the CB buffer"):
            buffer.retrieve(document, [match], 0, "e")
        other_model = CacheKey(MODEL + "2", 1, 0, document, 0, CHUNK, "e")
        with pytest.raises(BadRequestError, match="the key is for"):
            client.call("cb_store_final", other_model, 0, buffer.instance_id, b"")
        cuda = CudaHandle(
            version=1,
            metadata=TensorMetadata("bfloat16", (2, 2, 512, 32), (65536, 16384, 32, 1), 0, "gpu"),
            handle=(0, b"\0" * 64, 0, 0, b"", 0, b"", False),
        )
        with pytest.raises(NotSupportedError, match="cpu_shm"):
            client.call("cb_register_kv_cache", 7, [encode_device_handle(cuda)], MODEL, 1)
        with pytest.raises(BadRequestError, match="exactly one"):
            client.call("cb_register_kv_cache", 7, [], MODEL, 1)
        # The old numeric ids are not the legacy ops: 25 is 0.5.6's cb_register_rope.
        with pytest.raises(NotSupportedError):
            client.call("cb_register_rope", 1, [], 64, True, [], [], [], "")
        assert client.ping(None) in (True, False)  # still serving
        client.end_session("e")
    finally:
        buffer.unregister()
        buffer.close()


def test_a_bad_buffer_shape_is_refused(client: MPClient) -> None:
    from lmcache_core.protocol.types import CpuShmHandle

    buffer = CpuCBBuffer(client, LAYERS, TOKENS, HIDDEN, model_name=MODEL)
    try:
        meta = buffer.handle.metadata
        flat = CpuShmHandle(
            version=1,
            metadata=TensorMetadata(meta.dtype, (4, LAYERS * TOKENS * HIDDEN // 2), (0, 1), 0, ""),
            shm_name=buffer.handle.shm_name,
            nbytes=buffer.handle.nbytes,
        )
        with pytest.raises(BadRequestError, match=r"\[2, L, T, D\]"):
            client.call("cb_register_kv_cache", 8, [encode_device_handle(flat)], MODEL, 1)
    finally:
        buffer.close()


def test_l2_reload_keeps_the_leading_run_and_counts_a_failed_load(tmp_path: Path) -> None:
    port = free_port()
    inner = {"type": "fs", "base_path": str(tmp_path)}
    adapter = {"type": "fault_inject", "inner": inner, "gap_indices": [1]}
    with (
        running_server(*server_args(port, "--l2-adapter", json.dumps(adapter))) as (_, url),
        MPClient(f"127.0.0.1:{port}", timeout=20) as client,
    ):
        buffer = cb_buffer(client, seed=6)
        try:
            document = doc(60, 3)
            assert buffer.store_pre_computed(document, 0, "s")
            assert _wait(lambda: _stored(url) >= 3)
            client.clear(True)  # L1 empty: only L2 holds them
            matches = buffer.lookup(document, "r")
            # Position 1 of the reload batch fails: the group keeps chunk 0 only.
            assert [m.old_st for m in matches] == [0]
            assert buffer.retrieve(document, matches, 1024, "r")
            assert torch.equal(slice_of(buffer, 1024), slice_of(buffer, 0))
            client.end_session("r")
        finally:
            buffer.unregister()
            buffer.close()


def _stored(url: str) -> int:
    l2 = httpx.get(f"{url}/status").json()["data_path"]["engine"]["l2"]
    return int(l2["stats"]["stored_keys"])


def _wait(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_token_ids_must_decode(client: MPClient) -> None:
    buffer = cb_buffer(client, seed=7)
    try:
        key = buffer.key(doc(70, 1), "t", worker=False)
        raw = msgspec.msgpack.encode(["x"] * CHUNK)
        bad = CacheKey(key.model_name, 1, None, msgspec.Raw(raw), 0, CHUNK, "t")
        with pytest.raises(BadRequestError, match="token_ids"):
            client.call("cb_lookup_pre_computed_v2", bad)
    finally:
        buffer.unregister()
        buffer.close()


def blend_metric(url: str, name: str) -> float:
    """The sum of every series of ``lmcache_blend_<name>`` in ``/metrics`` (0 when absent)."""
    text = httpx.get(f"{url}/metrics", timeout=5.0).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(f"lmcache_blend_{name}{{") or line.startswith(f"lmcache_blend_{name} "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_legacy_operations_publish_the_blend_events_and_metrics(
    server: tuple[int, str], client: MPClient
) -> None:
    url = server[1]
    counters = (
        "lookup_requests_total",
        "lookup_non_prefix_hit_tokens_total",
        "lookup_fingerprint_hits_total",
        "lookup_storage_hits_total",
        "fingerprint_matches_total",
        "retrieve_requests_total",
        "retrieve_chunks_total",
        "fingerprints_registered_total",
        "lookup_duration_count",
        "retrieve_duration_count",
    )
    before = {name: blend_metric(url, name) for name in counters}
    writer, reader = cb_buffer(client, seed=3), cb_buffer(client)
    try:
        document = doc(40, 2)
        assert writer.store_pre_computed(document, 0, "m-store")
        request = [5] * 11 + document
        matches = writer.lookup(request, "m-read")
        assert len(matches) == 2
        assert reader.retrieve(request, matches, 0, "m-read")
        client.end_session("m-read")
    finally:
        for buffer in (writer, reader):
            buffer.unregister()
            buffer.close()
    expected = {
        "lookup_requests_total": 1,
        "lookup_non_prefix_hit_tokens_total": 2 * CHUNK,
        "lookup_fingerprint_hits_total": 2,
        "lookup_storage_hits_total": 2,
        "fingerprint_matches_total": 2,
        "retrieve_requests_total": 1,
        "retrieve_chunks_total": 2,
        "fingerprints_registered_total": 2,
        "lookup_duration_count": 1,
        "retrieve_duration_count": 1,
    }
    deadline = time.monotonic() + 20
    while True:  # the bus delivers events asynchronously
        grown = {name: blend_metric(url, name) - before[name] for name in counters}
        if grown == expected:
            break
        assert time.monotonic() < deadline, grown
        time.sleep(0.1)
