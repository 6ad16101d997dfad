"""``lookup_hashes`` (a lookup key carrying chunk hashes) against real servers.

Every case compares with the token form of the same lookup on the same server.
"""

from __future__ import annotations

import msgspec
import pytest
import torch

from lmcache_core.client import MPClient
from lmcache_core.client.hash_lookup import HashLookupForm
from lmcache_core.protocol.errors import BadRequestError, NotSupportedError
from lmcache_core.protocol.hash_lookup import parse_hash_lookup_capability
from lmcache_core.protocol.types import CacheKey, HashLookupKey
from lmcache_core.transfer.layout import KVFormat
from tests.data_path.conftest import Server, WorkerFactory
from tests.data_path.kv import (
    CHUNK,
    fresh_tokens,
    lookup,
    lookup_key,
    make_layout,
    pick_blocks,
    randomize,
    request_id,
    snapshot,
    zero,
)


def offered(client: MPClient) -> None:
    """Skip when this server's engine refuses ``lookup_hashes`` by design, as it says so.

    The conformance suite runs these tests on every engine (``nox -s blend``); an
    engine that needs the token ids (the blend engine fingerprints them) offers
    no capability and answers the op with its typed refusal, which is checked
    here before the skip; any other server must offer it.
    """
    if parse_hash_lookup_capability(client.get_experimental()) is not None:
        return
    form = HashLookupForm()
    form.learn(["lookup_hashes:blake3:256"])  # as if offered: the op itself must refuse
    hashed = form.key_for(lookup_key(fresh_tokens(CHUNK), CHUNK, request_id("offered")))
    assert hashed is not None
    try:
        client.lookup_hashes(hashed)
    except NotSupportedError as exc:
        if "needs the token ids" in str(exc):
            pytest.skip(f"this engine refuses lookup_hashes by design: {exc}")
        raise
    raise AssertionError("the server does not offer lookup_hashes, yet served it")


def fast(client: MPClient, key: CacheKey) -> int:
    """``fast_lookup`` (ack), then the status: the hit chunks."""
    assert client.fast_lookup(key) is None
    hits = client.query_prefetch_status(key.request_id)
    assert isinstance(hits, int), hits
    return hits


def both(client: MPClient, tokens: list[int], **kw: object) -> tuple[int, int]:
    """Hits of the token form and of the hash form of the same lookup."""
    results = []
    for form in (lookup, fast):
        rid = request_id("form")
        try:
            results.append(form(client, lookup_key(tokens, len(tokens), rid, **kw)))  # type: ignore[arg-type]
        finally:
            client.end_session(rid)
    return results[0], results[1]


def hash_key(client: MPClient, tokens: list[int], **changes: object) -> HashLookupKey:
    """The hash key the client would send, with ``changes``."""
    form = HashLookupForm()
    form.learn(client.get_experimental())
    key = form.key_for(lookup_key(tokens, len(tokens), request_id("bad")))
    assert key is not None
    return msgspec.structs.replace(key, **changes)


def test_hash_lookup_matches_token_lookup_and_retrieve_follows(
    main_server: Server, main_client: MPClient, make_worker: WorkerFactory
) -> None:
    offered(main_client)
    assert parse_hash_lookup_capability(main_client.get_experimental()) == ("blake3", CHUNK)
    layout = make_layout(KVFormat.NHD, torch.float32, num_blocks=40)
    worker = make_worker(main_client, layout)
    randomize(worker)
    bpc = CHUNK // layout.block_size
    tokens = fresh_tokens(4 * CHUNK)
    src = pick_blocks(4 * bpc, num_blocks=40)
    dst = pick_blocks(4 * bpc, exclude=src, num_blocks=40)
    expected = snapshot(worker, src)
    assert both(main_client, tokens) == (0, 0)  # miss
    assert worker.store(worker.key(tokens, 0, 3 * CHUNK, request_id()), src)
    assert both(main_client, tokens) == (3, 3)  # partial
    assert both(main_client, tokens[:CHUNK] + fresh_tokens(3 * CHUNK)) == (1, 1)
    assert worker.store(worker.key(tokens, 3 * CHUNK, 4 * CHUNK, request_id()), src[3 * bpc :])
    assert both(main_client, tokens) == (4, 4)  # hit
    assert main_client.hash_form.enabled, main_client.hash_form.refusal

    # The retrieve that follows a hash lookup sends tokens and consumes its locks.
    baseline = int(main_server.l1()["locked_objects"])
    rid = request_id("hash-rt")
    assert fast(main_client, worker.key(tokens, 0, len(tokens), rid, worker=False)) == 4
    assert int(main_server.l1()["locked_objects"]) == baseline + 4
    zero(worker)
    assert worker.retrieve(worker.key(tokens, 0, len(tokens), rid), dst)
    assert snapshot(worker, dst) == expected
    assert int(main_server.l1()["locked_objects"]) == baseline
    main_client.end_session(rid)


def test_hash_lookup_fans_out_to_every_rank(
    main_client: MPClient, make_worker: WorkerFactory
) -> None:
    layout = make_layout(KVFormat.HND, torch.bfloat16, block_size=8, num_blocks=24)
    ranks = [
        make_worker(main_client, layout, model_name="tp2h", world_size=2, worker_id=rank)
        for rank in range(2)
    ]
    tokens = fresh_tokens(4 * CHUNK)
    src = pick_blocks(4 * (CHUNK // 8), num_blocks=24)
    assert ranks[0].store(ranks[0].key(tokens, 0, 4 * CHUNK, request_id()), src)
    assert ranks[1].store(ranks[1].key(tokens, 0, 2 * CHUNK, request_id()), src)
    assert both(main_client, tokens, model="tp2h", world_size=2) == (2, 2)


def test_sha256_cbor_server_serves_hash_lookups(
    sha_server: Server, make_worker: WorkerFactory
) -> None:
    client = sha_server.client()
    offered(client)
    layout = make_layout(KVFormat.NHD, torch.float32, num_blocks=40)
    worker = make_worker(client, layout)
    tokens = fresh_tokens(3 * CHUNK)
    assert worker.store(
        worker.key(tokens, 0, 2 * CHUNK, request_id()),
        pick_blocks(2 * (CHUNK // layout.block_size), num_blocks=40),
    )
    assert both(client, tokens) == (2, 2)
    assert client.hash_form.enabled, client.hash_form.refusal


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hash_algorithm": "sha256_cbor"}, "hashes with 'blake3'"),
        ({"hash_algorithm": "blake3", "hash_seed": "7"}, "seed"),
        ({"end": 3 * CHUNK}, "expected 3"),
        ({"chunk_hashes": [b"x" * 8, b"y" * 8]}, "32 bytes"),
        ({"world_size": 0}, "world_size"),
    ],
)
def test_bad_hash_keys_are_typed_bad_requests(
    main_client: MPClient, changes: dict[str, object], message: str
) -> None:
    offered(main_client)
    key = hash_key(main_client, fresh_tokens(2 * CHUNK), **changes)
    with pytest.raises(BadRequestError, match=message):
        main_client.lookup_hashes(key)


def test_client_falls_back_to_tokens_and_remembers() -> None:
    form = HashLookupForm()
    form.learn(["kv_events", "lookup_hashes:blake3:256"])
    assert form.enabled
    form.refused(BadRequestError("lookup_hashes: 3 hashes for end=4: expected 0"))
    assert form.enabled, "a bad key alone keeps the hash form"
    form.refused(NotSupportedError("lookup_hashes: this server's engine needs the token ids"))
    assert not form.enabled
    assert form.key_for(lookup_key(fresh_tokens(256), 256, "r")) is None
    upstream = HashLookupForm()
    upstream.learn([])  # upstream's servers list no such capability
    assert not upstream.enabled


def test_blend_engine_refuses_hash_lookups_and_the_client_sends_tokens() -> None:
    from tests.server_process import server_on_free_ports

    args = ("--l1-size-gb", "0.05", "--eviction-policy", "LRU", "--chunk-size", str(CHUNK))
    args = (*args, "--engine-type", "blend")
    with (
        server_on_free_ports(*args) as server,
        MPClient(f"tcp://127.0.0.1:{server.zmq_port}", timeout=30) as client,
    ):
        assert parse_hash_lookup_capability(client.get_experimental()) is None
        key = lookup_key(fresh_tokens(2 * CHUNK), 2 * CHUNK, request_id("blend"))
        form = HashLookupForm()
        form.learn(["lookup_hashes:blake3:256"])  # as if offered: the op itself refuses
        hashed = form.key_for(key)
        assert hashed is not None
        with pytest.raises(NotSupportedError, match="needs the token ids"):
            client.lookup_hashes(hashed)
        assert fast(client, key) == 0  # the token form, answered
        assert not client.hash_form.enabled
