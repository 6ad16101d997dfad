"""Store → lookup → retrieve round trips through a real server, byte for byte."""

from __future__ import annotations

import pytest
import torch

from lmcache_core.client import MPClient
from lmcache_core.client.cpu_worker import CpuKVWorker
from lmcache_core.protocol.errors import BadRequestError
from lmcache_core.transfer.layout import KVFormat, KVLayout
from tests.data_path.conftest import Server, WorkerFactory
from tests.data_path.kv import (
    CHUNK,
    fresh_tokens,
    lookup,
    make_layout,
    pick_blocks,
    probe,
    randomize,
    raw,
    request_id,
    snapshot,
    token,
    untouched_blocks,
    zero,
)

FORMATS = [KVFormat.NHD, KVFormat.HND, KVFormat.MLA]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
BLOCK_SIZE = {KVFormat.NHD: 4, KVFormat.HND: 8, KVFormat.MLA: 16}
"""Different blocks per chunk for each format (4, 2 and 1)."""


def sized_layout(fmt: KVFormat, dtype: torch.dtype, chunks: int, num_layers: int = 3) -> KVLayout:
    """A layout with room for two disjoint sets of ``chunks`` chunks of blocks."""
    block_size = BLOCK_SIZE[fmt]
    bpc = CHUNK // block_size
    return make_layout(
        fmt,
        dtype,
        num_layers=num_layers,
        num_blocks=2 * chunks * bpc + 5,
        block_size=block_size,
    )


def mismatches(expected: list[list[bytes]], actual: list[list[bytes]]) -> list[tuple[int, int]]:
    """(block index, layer) pairs whose bytes differ."""
    assert len(expected) == len(actual)
    return [
        (b, layer)
        for b, (exp, act) in enumerate(zip(expected, actual, strict=True))
        for layer in range(len(exp))
        if exp[layer] != act[layer]
    ]


def locked(server: Server) -> int:
    return int(server.l1()["locked_objects"])


def store_all(worker: CpuKVWorker, tokens: list[int], blocks: list[int], **kw: object) -> bool:
    end = len(tokens) // CHUNK * CHUNK
    return worker.store(worker.key(tokens, 0, end, request_id("store"), **kw), blocks)  # type: ignore[arg-type]


@pytest.mark.parametrize("chunks", [1, 3, 16])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_round_trip_is_byte_identical(
    main_server: Server,
    main_client: MPClient,
    make_worker: WorkerFactory,
    fmt: KVFormat,
    dtype: torch.dtype,
    chunks: int,
) -> None:
    layout = sized_layout(fmt, dtype, chunks)
    worker = make_worker(main_client, layout)
    randomize(worker)
    bpc = CHUNK // layout.block_size
    src = pick_blocks(chunks * bpc, num_blocks=layout.num_blocks)
    dst = pick_blocks(chunks * bpc, exclude=src, num_blocks=layout.num_blocks)
    tokens = fresh_tokens(chunks * CHUNK)
    expected = snapshot(worker, src)

    assert store_all(worker, tokens, src)
    baseline = locked(main_server)
    rid = request_id("rt")
    assert lookup(main_client, worker.key(tokens, 0, len(tokens), rid, worker=False)) == chunks
    assert locked(main_server) == baseline + chunks
    # The hit count is reported once; then the job is gone.
    assert main_client.query_prefetch_status(rid) == 0

    zero(worker)
    assert worker.retrieve(worker.key(tokens, 0, len(tokens), rid), dst)
    assert mismatches(expected, snapshot(worker, dst)) == []
    assert untouched_blocks(worker, dst) == [], "retrieve wrote outside its blocks"
    # The retrieve consumed the lookup's read locks.
    assert locked(main_server) == baseline
    main_client.end_session(rid)


def token_bytes(worker: CpuKVWorker, blocks: list[int], count: int) -> list[list[bytes]]:
    """Per token of the block list, per layer: the token's bytes."""
    fmt, size = worker.layout.format, worker.layout.block_size
    return [
        [raw(token(layer, fmt, blocks[t // size], t % size)) for layer in worker.layers]
        for t in range(count)
    ]


@pytest.mark.parametrize("skip", [1, 5, CHUNK, CHUNK + 3, 3 * CHUNK - 1])
@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_skip_first_n_tokens_leaves_them_untouched(
    main_client: MPClient, make_worker: WorkerFactory, fmt: KVFormat, skip: int
) -> None:
    chunks = 3
    layout = sized_layout(fmt, torch.float16, chunks, num_layers=2)
    worker = make_worker(main_client, layout)
    randomize(worker)
    bpc = CHUNK // layout.block_size
    src = pick_blocks(chunks * bpc, num_blocks=layout.num_blocks)
    dst = pick_blocks(chunks * bpc, exclude=src, num_blocks=layout.num_blocks)
    tokens = fresh_tokens(chunks * CHUNK)
    original = token_bytes(worker, src, len(tokens))
    assert store_all(worker, tokens, src)

    rid = request_id("skip")
    assert lookup(main_client, worker.key(tokens, 0, len(tokens), rid, worker=False)) == chunks
    zero(worker)
    assert worker.retrieve(worker.key(tokens, 0, len(tokens), rid), dst, skip)
    got = token_bytes(worker, dst, len(tokens))
    zeros = [bytes(len(b)) for b in original[0]]
    wrong_skipped = [t for t in range(skip) if got[t] != zeros]
    wrong_written = [t for t in range(skip, len(tokens)) if got[t] != original[t]]
    assert wrong_skipped == [], "skipped tokens were written"
    assert wrong_written == [], "tokens after the skip are wrong"
    assert untouched_blocks(worker, dst) == []
    main_client.end_session(rid)


def test_trailing_partial_chunk_is_never_stored(
    main_server: Server, main_client: MPClient, make_worker: WorkerFactory
) -> None:
    layout = make_layout()
    worker = make_worker(main_client, layout)
    randomize(worker)
    bpc = CHUNK // layout.block_size
    tokens = fresh_tokens(3 * CHUNK + 5)
    blocks = pick_blocks(4 * bpc)
    # A store window must be chunk-aligned.
    with pytest.raises(BadRequestError):
        worker.store(worker.key(tokens, 0, len(tokens), request_id()), blocks)
    before = main_server.l1()["resident_objects"]
    assert worker.store(worker.key(tokens, 0, 3 * CHUNK, request_id()), blocks)
    assert main_server.l1()["resident_objects"] == before + 3
    # A lookup over the unaligned end counts complete chunks only.
    assert probe(main_client, tokens) == 3
    # Completing the partial chunk with any tokens: still only the 3 stored chunks.
    assert probe(main_client, tokens + fresh_tokens(CHUNK - 5)) == 3
    assert probe(main_client, tokens, end=3 * CHUNK - 1) == 2


def test_prefix_hits_count_the_contiguous_stored_prefix(
    main_client: MPClient, make_worker: WorkerFactory
) -> None:
    layout = make_layout(num_blocks=40)
    worker = make_worker(main_client, layout)
    randomize(worker)
    bpc = CHUNK // layout.block_size
    tokens = fresh_tokens(4 * CHUNK)
    src = pick_blocks(4 * bpc, num_blocks=40)
    expected = snapshot(worker, src)

    def store(first: int, last: int) -> None:
        key = worker.key(tokens, first * CHUNK, last * CHUNK, request_id())
        assert worker.store(key, src[first * bpc : last * bpc])

    assert probe(main_client, tokens) == 0
    store(0, 2)
    assert probe(main_client, tokens) == 2
    store(3, 4)  # a gap at chunk 2: the hit stays the contiguous prefix
    assert probe(main_client, tokens) == 2
    store(2, 3)
    assert probe(main_client, tokens) == 4
    # A different first chunk invalidates every later chunk (rolling prefix hashes).
    assert probe(main_client, fresh_tokens(CHUNK) + tokens[CHUNK:]) == 0

    # Retrieve the middle window [1, 3) only.
    rid = request_id("mid")
    assert lookup(main_client, worker.key(tokens, 0, len(tokens), rid, worker=False)) == 4
    zero(worker)
    dst = pick_blocks(2 * bpc, exclude=src, num_blocks=40)
    assert worker.retrieve(worker.key(tokens, CHUNK, 3 * CHUNK, rid), dst)
    assert mismatches(expected[bpc : 3 * bpc], snapshot(worker, dst)) == []
    assert untouched_blocks(worker, dst) == []
    main_client.end_session(rid)


def test_world_size_two_hits_only_chunks_every_rank_stored(
    main_server: Server, main_client: MPClient, make_worker: WorkerFactory
) -> None:
    layout = make_layout(KVFormat.HND, torch.bfloat16, block_size=8, num_blocks=24)
    ranks = [
        make_worker(main_client, layout, model_name="tp2", world_size=2, worker_id=rank)
        for rank in range(2)
    ]
    for worker in ranks:
        randomize(worker)
    bpc = CHUNK // layout.block_size
    tokens = fresh_tokens(4 * CHUNK)
    src = pick_blocks(4 * bpc, num_blocks=24)
    dst = pick_blocks(4 * bpc, exclude=src, num_blocks=24)
    expected = [snapshot(worker, src) for worker in ranks]

    def hits() -> int:
        return probe(main_client, tokens, model="tp2", world_size=2)

    assert ranks[0].store(ranks[0].key(tokens, 0, 4 * CHUNK, request_id()), src)
    assert hits() == 0, "rank 1 stored nothing"
    assert ranks[1].store(ranks[1].key(tokens, 0, 2 * CHUNK, request_id()), src)
    assert hits() == 2
    assert ranks[1].store(ranks[1].key(tokens, 2 * CHUNK, 4 * CHUNK, request_id()), src[2 * bpc :])
    assert hits() == 4
    # The single-rank key space is separate.
    assert probe(main_client, tokens, model="tp2", world_size=1) == 0

    baseline = locked(main_server)
    rid = request_id("tp2")
    key = ranks[0].key(tokens, 0, len(tokens), rid, worker=False)
    assert lookup(main_client, key) == 4
    assert locked(main_server) == baseline + 8  # 4 chunks x 2 ranks
    for rank, worker in enumerate(ranks):
        zero(worker)
        assert worker.retrieve(worker.key(tokens, 0, len(tokens), rid), dst)
        assert mismatches(expected[rank], snapshot(worker, dst)) == [], f"rank {rank}"
        assert untouched_blocks(worker, dst) == []
    assert expected[0] != expected[1]
    assert locked(main_server) == baseline
    main_client.end_session(rid)


def test_cache_salt_isolates_tenants(main_client: MPClient, make_worker: WorkerFactory) -> None:
    layout = make_layout(num_blocks=40)
    salted = make_worker(main_client, layout)
    plain = make_worker(main_client, layout)
    randomize(salted)
    randomize(plain)
    bpc = CHUNK // layout.block_size
    tokens = fresh_tokens(2 * CHUNK)
    src = pick_blocks(2 * bpc, num_blocks=40)
    dst = pick_blocks(2 * bpc, exclude=src, num_blocks=40)

    assert salted.store(salted.key(tokens, 0, len(tokens), request_id(), cache_salt="a"), src)
    assert probe(main_client, tokens, salt="a") == 2
    assert probe(main_client, tokens, salt="b") == 0
    assert probe(main_client, tokens) == 0
    # The same tokens without a salt are another object with other bytes.
    assert plain.store(plain.key(tokens, 0, len(tokens), request_id()), src)
    assert probe(main_client, tokens) == 2
    for worker, salt in ((salted, "a"), (plain, "")):
        expected = snapshot(worker, src)
        rid = request_id("salt")
        key = worker.key(tokens, 0, len(tokens), rid, worker=False, cache_salt=salt)
        assert lookup(main_client, key) == 2
        zero(worker)
        assert worker.retrieve(worker.key(tokens, 0, len(tokens), rid, cache_salt=salt), dst)
        assert mismatches(expected, snapshot(worker, dst)) == [], f"salt {salt!r}"
        main_client.end_session(rid)


def test_model_names_are_isolated(main_client: MPClient, make_worker: WorkerFactory) -> None:
    worker = make_worker(main_client, make_layout(), model_name="model-a")
    randomize(worker)
    tokens = fresh_tokens(2 * CHUNK)
    assert store_all(worker, tokens, pick_blocks(2 * CHUNK // 4))
    assert probe(main_client, tokens, model="model-a") == 2
    assert probe(main_client, tokens, model="model-b") == 0
    assert probe(main_client, tokens, model="model-a-") == 0


@pytest.mark.parametrize(
    ("server_fixture", "algorithm"),
    [("sha_server", "sha256_cbor"), ("builtin_ttl_server", "builtin"), ("main_server", "blake3")],
)
def test_hash_algorithms_round_trip(
    request: pytest.FixtureRequest,
    make_worker: WorkerFactory,
    server_fixture: str,
    algorithm: str,
) -> None:
    server: Server = request.getfixturevalue(server_fixture)
    assert server.engine()["hash_algorithm"] == algorithm
    client = server.client()
    layout = make_layout(KVFormat.NHD, torch.float32, num_blocks=40)
    worker = make_worker(client, layout)
    randomize(worker)
    bpc = CHUNK // layout.block_size
    tokens = fresh_tokens(4 * CHUNK)
    src = pick_blocks(4 * bpc, num_blocks=40)
    dst = pick_blocks(4 * bpc, exclude=src, num_blocks=40)
    expected = snapshot(worker, src)
    assert worker.store(worker.key(tokens, 0, 3 * CHUNK, request_id()), src)
    assert probe(client, tokens) == 3
    assert probe(client, tokens[:CHUNK] + fresh_tokens(3 * CHUNK)) == 1
    assert worker.store(worker.key(tokens, 3 * CHUNK, 4 * CHUNK, request_id()), src[3 * bpc :])
    rid = request_id("hash")
    assert lookup(client, worker.key(tokens, 0, len(tokens), rid, worker=False)) == 4
    zero(worker)
    assert worker.retrieve(worker.key(tokens, 0, len(tokens), rid), dst)
    assert mismatches(expected, snapshot(worker, dst)) == []
    client.end_session(rid)


def test_null_block_chunks_are_skipped(
    main_server: Server, main_client: MPClient, make_worker: WorkerFactory
) -> None:
    """A chunk made only of the null block (id 0) carries no KV: never stored (upstream too)."""
    layout = make_layout(num_blocks=24)
    worker = make_worker(main_client, layout)
    randomize(worker)
    tokens = fresh_tokens(3 * CHUNK)
    real = pick_blocks(8, num_blocks=24)
    ids = [*real[:4], 0, 0, 0, 0, *real[4:]]
    before = main_server.l1()["resident_objects"]
    assert worker.store(worker.key(tokens, 0, len(tokens), request_id()), ids)
    assert main_server.l1()["resident_objects"] == before + 2
    assert probe(main_client, tokens) == 1


def test_retrieve_without_lookup_and_of_missing_chunks(
    main_client: MPClient, make_worker: WorkerFactory
) -> None:
    layout = make_layout(num_blocks=40)
    worker = make_worker(main_client, layout)
    randomize(worker)
    tokens = fresh_tokens(3 * CHUNK)
    src = pick_blocks(8, num_blocks=40)
    dst = pick_blocks(12, exclude=src, num_blocks=40)
    expected = snapshot(worker, src)
    assert worker.store(worker.key(tokens, 0, 2 * CHUNK, request_id()), src)
    zero(worker)
    # No lookup first: the retrieve still copies (it locks for the copy itself).
    assert worker.retrieve(worker.key(tokens, 0, 2 * CHUNK, request_id()), dst[:8])
    assert mismatches(expected, snapshot(worker, dst[:8])) == []
    # A window with a chunk that is not cached fails, and writes nothing at all.
    zero(worker)
    assert not worker.retrieve(worker.key(tokens, 0, 3 * CHUNK, request_id()), dst)
    assert untouched_blocks(worker, []) == []
