"""engine_driven transfers: PREPARE/COMMIT through the shared L1 pool, or inline bytes."""

from __future__ import annotations

import itertools
import json
import mmap
import os
import pickle
import random
import time
import uuid
from collections.abc import Iterator

import pytest
import torch

from lmcache_core.client import MPClient
from lmcache_core.protocol.errors import (
    BadRequestError,
    NotSupportedError,
    RemoteError,
    ServerInternalError,
)
from lmcache_core.protocol.types import CacheKey, EngineDrivenRegistration
from lmcache_core.transfer.cpu_shm import SHM_DIR
from lmcache_core.transfer.layout import KVFormat
from tests.data_path.conftest import SERVERS, Server, WorkerFactory
from tests.data_path.kv import (
    CHUNK,
    block,
    fresh_tokens,
    lookup,
    lookup_key,
    make_layout,
    pick_blocks,
    probe,
    randomize,
    raw,
    request_id,
    zero,
)
from tests.data_path.l2_helpers import l2_status, wait_for

LAYERS, HEADS, HEAD_DIM, BLOCK = 2, 2, 16, 4
HIDDEN = HEADS * HEAD_DIM


def registration(
    model: str, *, use_mla: bool = False, dtype: str = "bfloat16"
) -> EngineDrivenRegistration:
    return EngineDrivenRegistration(
        instance_id=uuid.uuid4().int >> 65,
        model_name=model,
        world_size=1,
        block_size=BLOCK,
        num_layers=LAYERS,
        hidden_dim_size=HEAD_DIM if use_mla else HIDDEN,
        dtype_str=dtype,
        use_mla=use_mla,
        num_physical_slots=CHUNK,
    )


def object_bytes(payload: EngineDrivenRegistration) -> int:
    kv = 1 if payload.use_mla else 2
    itemsize = torch.empty(0, dtype=getattr(torch, payload.dtype_str)).element_size()
    return kv * payload.num_layers * CHUNK * payload.hidden_dim_size * itemsize


def key(payload: EngineDrivenRegistration, tokens: list[int], end: int, rid: str) -> CacheKey:
    return CacheKey(payload.model_name, 1, 0, tokens, 0, end, rid)


@pytest.fixture
def pool(main_server: Server) -> Iterator[mmap.mmap]:
    """The main server's L1 pool segment, mapped read-write."""
    assert main_server.pool_segment is not None
    fd = os.open(os.path.join(SHM_DIR, main_server.pool_segment), os.O_RDWR)
    try:
        mapping = mmap.mmap(fd, 0)
    finally:
        os.close(fd)
    yield mapping
    mapping.close()


@pytest.mark.parametrize("use_mla", [False, True], ids=["kv", "mla"])
def test_shm_prepare_commit_store_and_retrieve(
    main_server: Server, main_client: MPClient, pool: mmap.mmap, use_mla: bool
) -> None:
    client = main_client
    payload = registration(f"ed-shm-{use_mla}", use_mla=use_mla)
    reply = client.register_engine_driven(payload)
    assert reply.shm_name == main_server.pool_segment
    assert reply.pool_size >= main_server.l1()["capacity_bytes"]
    assert reply.pool_size <= len(pool)
    nbytes = object_bytes(payload)
    shape = [1 if use_mla else 2, LAYERS, CHUNK, payload.hidden_dim_size]
    tokens = fresh_tokens(3 * CHUNK)

    staged = main_server.l1()["staged_objects"]
    store_key = key(payload, tokens, 3 * CHUNK, request_id())
    prepared = client.prepare_store(store_key, payload.instance_id)
    context = prepared.context
    assert context["chunk_indices"] == [0, 1, 2]
    slots = context["slots"]
    assert len(slots) == 3
    assert main_server.l1()["staged_objects"] == staged + 3
    spans = sorted((s["offset"], s["offset"] + s["length"]) for s in slots)
    for slot in slots:
        assert slot["length"] == nbytes
        assert slot["shape"] == shape
        assert slot["dtype"] == "bfloat16"
        assert slot["offset"] >= 0 and slot["offset"] + nbytes <= reply.pool_size
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), "slots overlap"
    # Uncommitted objects are invisible.
    assert probe(client, tokens, model=payload.model_name) == 0

    written = [random.randbytes(nbytes) for _ in slots]
    for slot, data in zip(slots, written, strict=True):
        pool[slot["offset"] : slot["offset"] + nbytes] = data
    assert client.commit_store(store_key, payload.instance_id, b"") is True
    assert main_server.l1()["staged_objects"] == staged
    assert probe(client, tokens, model=payload.model_name) == 3

    # Everything is cached now: nothing to write.
    again = client.prepare_store(key(payload, tokens, 3 * CHUNK, request_id()), payload.instance_id)
    assert again.context.get("slots") == []
    assert again.context["chunk_indices"] == []

    base = main_server.l1()["locked_objects"]
    rid = request_id("edr")
    assert lookup(client, lookup_key(tokens, len(tokens), rid, model=payload.model_name)) == 3
    got = client.prepare_retrieve(key(payload, tokens, 3 * CHUNK, rid), payload.instance_id)
    assert got.success is True
    assert [
        bytes(pool[s["offset"] : s["offset"] + nbytes]) for s in got.context["slots"]
    ] == written
    assert all(s["shape"] == shape for s in got.context["slots"])
    assert client.commit_retrieve(key(payload, tokens, 3 * CHUNK, rid), payload.instance_id) is True
    # commit_retrieve released prepare's locks and the lookup's.
    assert main_server.l1()["locked_objects"] == base
    client.end_session(rid)

    # A prefix missing in L1: prepare_retrieve fails cleanly.
    missing = fresh_tokens(CHUNK)
    failed = client.prepare_retrieve(
        key(payload, missing, CHUNK, request_id()), payload.instance_id
    )
    assert failed.success is False
    assert main_server.l1()["locked_objects"] == base
    client.unregister_engine_driven(payload.instance_id)


def test_shm_prepare_store_only_returns_missing_chunks_and_unregister_releases(
    main_server: Server, main_client: MPClient, pool: mmap.mmap
) -> None:
    client = main_client
    payload = registration("ed-partial", dtype="float16")
    client.register_engine_driven(payload)
    nbytes = object_bytes(payload)
    tokens = fresh_tokens(3 * CHUNK)
    first_key = key(payload, tokens, CHUNK, request_id())
    first = client.prepare_store(first_key, payload.instance_id)
    (slot,) = first.context["slots"]
    pool[slot["offset"] : slot["offset"] + nbytes] = random.randbytes(nbytes)
    assert client.commit_store(first_key, payload.instance_id) is True

    staged = main_server.l1()["staged_objects"]
    rest = client.prepare_store(key(payload, tokens, 3 * CHUNK, request_id()), payload.instance_id)
    assert rest.context["chunk_indices"] == [1, 2]
    assert len(rest.context["slots"]) == 2
    assert main_server.l1()["staged_objects"] == staged + 2
    # The worker goes away before committing: its reservations are released.
    client.unregister_engine_driven(payload.instance_id)
    assert main_server.l1()["staged_objects"] == staged
    assert probe(client, tokens, model=payload.model_name) == 1
    with pytest.raises(Exception, match="not registered"):
        client.prepare_store(key(payload, tokens, 3 * CHUNK, request_id()), payload.instance_id)


@pytest.mark.parametrize("fmt", [KVFormat.NHD, KVFormat.HND, KVFormat.MLA], ids=str)
def test_engine_driven_and_lmcache_driven_objects_are_interchangeable(
    main_client: MPClient, make_worker: WorkerFactory, pool: mmap.mmap, fmt: KVFormat
) -> None:
    """An object written through the pool is read by a paged worker, and the reverse.

    This pins the object layout itself, ``[kv, layers, tokens, heads * head_dim]``
    (upstream's), which a store-then-retrieve round trip alone cannot: a gather and a
    scatter that were wrong in the same way would still round-trip.
    """
    client = main_client
    mla = fmt is KVFormat.MLA
    model = f"ed-cross-{fmt}"
    payload = registration(model, use_mla=mla)
    client.register_engine_driven(payload)
    layout = make_layout(
        fmt,
        torch.bfloat16,
        num_layers=LAYERS,
        block_size=BLOCK,
        num_heads=HEADS,
        head_dim=HEAD_DIM,
        num_blocks=40,
    )
    worker = make_worker(client, layout, model_name=model)
    nbytes = object_bytes(payload)
    assert nbytes == layout.object_nbytes(CHUNK)
    bpc = CHUNK // BLOCK
    heads = layout.num_heads

    def to_blocks(obj: bytes) -> list[list[bytes]]:
        """An object's bytes as the paged blocks (per block, per layer) it scatters into."""
        tensor = torch.frombuffer(bytearray(obj), dtype=torch.bfloat16)
        tensor = tensor.view(layout.kv_size, LAYERS, CHUNK, heads, HEAD_DIM)
        blocks = []
        for j in range(bpc):
            per_layer = []
            for layer in range(LAYERS):
                piece = tensor[:, layer, j * BLOCK : (j + 1) * BLOCK]  # [kv, bs, heads, dim]
                if fmt is KVFormat.HND:
                    piece = piece.permute(0, 2, 1, 3)
                elif mla:
                    piece = piece[0, :, 0]
                per_layer.append(raw(piece))
            blocks.append(per_layer)
        return blocks

    # engine_driven store -> lmcache_driven retrieve.
    tokens = fresh_tokens(2 * CHUNK)
    store_key = key(payload, tokens, 2 * CHUNK, request_id())
    prepared = client.prepare_store(store_key, payload.instance_id)
    objects = [random.randbytes(nbytes) for _ in range(2)]
    for slot, data in zip(prepared.context["slots"], objects, strict=True):
        pool[slot["offset"] : slot["offset"] + nbytes] = data
    assert client.commit_store(store_key, payload.instance_id)
    rid = request_id("cross")
    assert lookup(client, lookup_key(tokens, len(tokens), rid, model=model)) == 2
    dst = pick_blocks(2 * bpc, num_blocks=40)
    assert worker.retrieve(worker.key(tokens, 0, len(tokens), rid), dst)
    expected = [blk for obj in objects for blk in to_blocks(obj)]
    actual = [[raw(block(layer, fmt, b)) for layer in worker.layers] for b in dst]
    assert actual == expected
    client.end_session(rid)

    # lmcache_driven store -> engine_driven retrieve.
    randomize(worker)
    src = pick_blocks(2 * bpc, num_blocks=40)
    tokens = fresh_tokens(2 * CHUNK)
    expected_blocks = [[raw(block(layer, fmt, b)) for layer in worker.layers] for b in src]
    assert worker.store(worker.key(tokens, 0, len(tokens), request_id()), src)
    zero(worker)
    retrieve_key = key(payload, tokens, 2 * CHUNK, request_id())
    got = client.prepare_retrieve(retrieve_key, payload.instance_id)
    assert got.success
    read = [bytes(pool[s["offset"] : s["offset"] + nbytes]) for s in got.context["slots"]]
    assert [blk for obj in read for blk in to_blocks(obj)] == expected_blocks
    assert client.commit_retrieve(retrieve_key, payload.instance_id)
    client.unregister_engine_driven(payload.instance_id)


def test_inline_objects_travel_in_the_request(inline_server: Server) -> None:
    client = inline_server.client()
    payload = registration("ed-inline", dtype="float32")
    reply = client.register_engine_driven(payload)
    assert reply.shm_name == ""
    assert reply.pool_size == 0
    nbytes = object_bytes(payload)
    tokens = fresh_tokens(3 * CHUNK)
    k = key(payload, tokens, 3 * CHUNK, request_id())

    prepared = client.prepare_store(k, payload.instance_id)
    assert prepared.context["chunk_indices"] == [0, 1, 2]
    assert prepared.context["object_nbytes"] == nbytes
    assert "slots" not in prepared.context
    # Upstream's pickle fallback is refused (and never unpickled).
    tensors = [torch.zeros(2, LAYERS, CHUNK, HIDDEN) for _ in range(3)]
    with pytest.raises(BadRequestError):
        client.commit_store(k, payload.instance_id, pickle.dumps(tensors))
    assert inline_server.l1()["staged_objects"] == 0
    assert probe(client, tokens, model=payload.model_name) == 0
    # Empty data without a shared pool is refused too.
    client.prepare_store(k, payload.instance_id)
    with pytest.raises(BadRequestError):
        client.commit_store(k, payload.instance_id, b"")
    assert inline_server.l1()["staged_objects"] == 0

    data = random.randbytes(3 * nbytes)
    client.prepare_store(k, payload.instance_id)
    assert client.commit_store(k, payload.instance_id, data) is True
    assert probe(client, tokens, model=payload.model_name) == 3
    again = client.prepare_store(k, payload.instance_id)
    assert again.context["chunk_indices"] == []

    rid = request_id("inline")
    assert lookup(client, lookup_key(tokens, len(tokens), rid, model=payload.model_name)) == 3
    retrieve_key = key(payload, tokens, 3 * CHUNK, rid)
    got = client.prepare_retrieve(retrieve_key, payload.instance_id)
    assert got.success is True
    assert got.data == data
    assert got.context["object_nbytes"] == nbytes
    assert client.commit_retrieve(retrieve_key, payload.instance_id) is True
    assert inline_server.l1()["locked_objects"] == 0
    client.end_session(rid)
    # A partial window comes back as its own objects.
    mid = CacheKey(payload.model_name, 1, 0, tokens, CHUNK, 2 * CHUNK, request_id())
    assert client.prepare_retrieve(mid, payload.instance_id).data == data[nbytes : 2 * nbytes]
    client.unregister_engine_driven(payload.instance_id)


WRITE_TTL = 1.0  # --l1-write-ttl-seconds of inline_server


def test_late_inline_commit_does_not_overwrite_other_objects(inline_server: Server) -> None:
    client = inline_server.client()
    payload = registration("ed-late", dtype="float16")
    client.register_engine_driven(payload)
    nbytes = object_bytes(payload)
    late = key(payload, fresh_tokens(2 * CHUNK), 2 * CHUNK, request_id("late"))
    client.prepare_store(late, payload.instance_id)
    time.sleep(WRITE_TTL + 0.4)  # the reservation expires; the controller frees it
    assert inline_server.l1()["staged_objects"] == 0

    tokens = fresh_tokens(2 * CHUNK)
    other = key(payload, tokens, 2 * CHUNK, request_id("other"))
    client.prepare_store(other, payload.instance_id)
    data = random.randbytes(2 * nbytes)
    assert client.commit_store(other, payload.instance_id, data) is True

    outcome: object
    try:
        outcome = client.commit_store(late, payload.instance_id, bytes(2 * nbytes))
    except RemoteError as exc:
        outcome = exc
    check = key(payload, tokens, 2 * CHUNK, request_id())
    got = client.prepare_retrieve(check, payload.instance_id)
    assert got.success
    assert got.data == data, "the late commit overwrote another request's objects"
    # The late commit is refused cleanly: False (or a typed error), not an internal error.
    assert outcome is False or (
        isinstance(outcome, RemoteError) and not isinstance(outcome, ServerInternalError)
    ), outcome
    client.unregister_engine_driven(payload.instance_id)


def test_transfer_modes_refuse_the_other_modes_operations(
    sha_server: Server, inline_server: Server, make_worker: WorkerFactory
) -> None:
    # --supported-transfer-mode lmcache_driven: no engine-driven operations.
    client = sha_server.client()
    payload = registration("modes")
    k = key(payload, fresh_tokens(CHUNK), CHUNK, request_id())
    calls = [
        lambda: client.register_engine_driven(payload),
        lambda: client.unregister_engine_driven(payload.instance_id),
        lambda: client.prepare_store(k, payload.instance_id),
        lambda: client.commit_store(k, payload.instance_id, b""),
        lambda: client.prepare_retrieve(k, payload.instance_id),
        lambda: client.commit_retrieve(k, payload.instance_id),
    ]
    for call in calls:
        with pytest.raises(NotSupportedError):
            call()
    assert client.noop() == "OK"

    # --supported-transfer-mode engine_driven: no store/retrieve/register_kv_cache.
    client = inline_server.client()
    worker = make_worker(client, make_layout(), register=False)
    with pytest.raises(NotSupportedError):
        worker.register()
    with pytest.raises(NotSupportedError):
        worker.store(worker.key(fresh_tokens(CHUNK), 0, CHUNK, request_id()), [1, 2, 3, 4])
    with pytest.raises(NotSupportedError):
        worker.retrieve(worker.key(fresh_tokens(CHUNK), 0, CHUNK, request_id()), [1, 2, 3, 4])
    with pytest.raises(NotSupportedError):
        worker.unregister()
    assert client.noop() == "OK"


def test_engine_driven_stores_reach_the_l2_tier() -> None:
    """A COMMIT_STORE hands its objects to the L2 store controller like a normal store."""
    adapter = {"type": "mock", "max_size_gb": 0.01, "mock_bandwidth_gb": 100}
    server = Server("ed-l2", (*SERVERS["inline"], "--l2-adapter", json.dumps(adapter))).wait()
    try:
        client = server.client()
        payload = registration("ed-l2", dtype="float32")
        client.register_engine_driven(payload)
        tokens = fresh_tokens(2 * CHUNK)
        k = key(payload, tokens, 2 * CHUNK, request_id())
        client.prepare_store(k, payload.instance_id)
        data = random.randbytes(2 * object_bytes(payload))
        assert client.commit_store(k, payload.instance_id, data) is True
        wait_for(lambda: l2_status(server.http_url)["stats"]["stored_keys"] == 2)
        client.unregister_engine_driven(payload.instance_id)
    finally:
        server.terminate()
        server.join()
