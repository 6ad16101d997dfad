"""The blend engine end to end: a real server process, real cpu_shm KV caches, real sockets.

Each test builds prompts from fresh random documents, stores one order with K
carrying real RoPE at its positions, asks ``cb_unified_lookup`` for another
order and checks the segments, then ``cb_retrieve_pre_computed`` into fresh
blocks and checks the KV actually written: K equals K computed at the new
position (bf16 tolerance), V is bit-identical, no other slot was touched.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import msgspec
import pytest
import torch

from lmcache_core.client import MPClient
from lmcache_core.engine.lookup import INLINE_MAX_KEYS
from lmcache_core.protocol.errors import BadRequestError, NotRegisteredError
from lmcache_core.protocol.types import (
    CBMatchResult,
    CBUnifiedLookupResult,
    pack_token_blob,
    pack_token_ids,
)
from lmcache_core.storage.keys import pack_kv_rank
from lmcache_core.transfer.layout import KVFormat
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


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with blend_server() as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> Iterator[MPClient]:
    with MPClient(server.zmq_url, timeout=20.0) as made:
        yield made


def blocks_for(tokens: int, first: int) -> list[int]:
    return list(range(first, first + -(-tokens // BLOCK)))


def assert_written(
    worker: RopeWorker, prompt: list[int], blocks: list[int], positions: range
) -> None:
    """K at each position equals K computed there; V is the document's own V, bit for bit."""
    tokens = [prompt[p] for p in positions]
    k, v = worker.read(blocks, positions)
    expected = worker.expected_k(tokens, positions)
    torch.testing.assert_close(k.to(torch.float64), expected, atol=4e-2, rtol=2e-2)
    _, raw_v = worker.raw(tokens)
    assert torch.equal(v, raw_v.to(worker.layout.dtype))


def zero_at(worker: RopeWorker, blocks: list[int], positions: range) -> bool:
    """Whether no byte of K or V was written at these positions."""
    k, v = worker.read(blocks, positions)
    return not bool(k.view(torch.uint8).any()) and not bool(v.view(torch.uint8).any())


# -- small operations ------------------------------------------------------------------------


def test_handshake(client: MPClient) -> None:
    assert client.call("cb_protocol_handshake", 1) == (1, True)
    assert client.call("cb_protocol_handshake", 2) == (1, False)


def test_rope_registration_is_validated(client: MPClient) -> None:
    with pytest.raises(NotRegisteredError, match="register_kv_cache before cb_register_rope"):
        client.call("cb_register_rope", 987654321, [], 16, True, [], [], [], "")
    with rope_worker(client, register_rope=False) as worker:
        for overrides, message in (
            ({"kv_quant": "int4"}, "kv_quant"),
            ({"group_rot": [[0, 0]]}, "group_rot"),
            ({"group_to_cache": [3]}, "group_to_cache"),
        ):
            with pytest.raises(BadRequestError, match=message):
                worker.register_rope(client, **overrides)
        worker.register_rope(client)  # valid
        worker.register_rope(client, caches=[])  # NoPE is legal
        assert client.call("cb_unregister_rope", worker.worker.instance_id) is None
        assert client.call("cb_unregister_rope", 123456789) is None  # unknown: nil


def test_rope_ids_in_status(server: LiveServer, client: MPClient) -> None:
    with rope_worker(client) as worker:
        blend = status(server)["engine"]["blend"]
        assert worker.worker.instance_id in blend["registered_cb_rope_instances"]
        worker.worker.unregister()
        blend = status(server)["engine"]["blend"]
        assert worker.worker.instance_id not in blend["registered_cb_rope_instances"]


def test_reorder_plan_keeps_the_prompt(client: MPClient) -> None:
    with rope_worker(client) as worker:
        key = worker.key(docs(1)[0], request_id())
        assert client.call("cb_reorder_plan", key, 0, 100) == []


# -- lookup and retrieve -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("neox", "fmt"),
    [(True, KVFormat.NHD), (False, KVFormat.NHD), (True, KVFormat.HND)],
    ids=["neox-nhd", "gptj-nhd", "neox-hnd"],
)
def test_reordered_documents_are_found_and_written_with_k_rerotated(
    server: LiveServer, client: MPClient, neox: bool, fmt: KVFormat
) -> None:
    with rope_worker(client, neox=neox, fmt=fmt) as worker:
        sys_, d1, d2, d3 = docs(4)
        stored = sys_ + d1 + d2 + d3
        src = blocks_for(len(stored), 1)
        worker.write_prompt(stored, src)
        assert worker.store(stored, src, request_id("store"))
        query = sys_ + d3 + d1 + d2 + docs(1)[0][:5]
        rid = request_id("query")
        before = locked_objects(server)
        result = unified_lookup(client, worker.key(query, rid, worker=False))
        assert result.prefix_coverage_tokens == CHUNK
        assert segments_of(result) == [
            (3 * CHUNK, 4 * CHUNK, CHUNK, 2 * CHUNK),
            (CHUNK, 2 * CHUNK, 2 * CHUNK, 3 * CHUNK),
            (2 * CHUNK, 3 * CHUNK, 3 * CHUNK, 4 * CHUNK),
        ]
        assert result.segmented_prefix_segments == []
        # The segment hash is the stored chunk's chain hash: the store's keys hold it.
        assert all(len(s.hash) == 32 for s in result.non_prefix_segments)
        assert locked_objects(server) == before + 4  # 1 prefix + 3 sparse
        dst = blocks_for(len(query), 40)
        for layer in worker.worker.layers:
            layer.zero_()
        assert worker.retrieve(client, query, rid, result.non_prefix_segments, dst)
        assert_written(worker, query, dst, range(CHUNK, 4 * CHUNK))
        # Nothing else written: not the prefix (the standard retrieve's), the tail, other blocks.
        worker.clear(dst, range(CHUNK, 4 * CHUNK))
        assert worker.all_zero()
        # The retrieve consumed the sparse locks; the prefix lock is the standard retrieve's.
        assert locked_objects(server) == before + 1
        client.end_session(rid)
        assert locked_objects(server) == before


def test_unaligned_position_and_a_same_position_chunk(client: MPClient) -> None:
    with rope_worker(client) as worker:
        d1, d2, d3 = docs(3)
        stored = d1 + d2 + d3
        src = blocks_for(len(stored), 1)
        worker.write_prompt(stored, src)
        assert worker.store(stored, src, request_id("store"))
        lead = docs(1)[0][:5]
        query = lead + d2 + d3  # D2 at 5, D3 at 21
        rid = request_id("query")
        result = unified_lookup(client, worker.key(query, rid, worker=False))
        assert result.prefix_coverage_tokens == 0
        assert segments_of(result) == [
            (CHUNK, 2 * CHUNK, 5, 5 + CHUNK),
            (2 * CHUNK, 3 * CHUNK, 5 + CHUNK, 5 + 2 * CHUNK),
        ]
        dst = blocks_for(len(query), 50)
        for layer in worker.worker.layers:
            layer.zero_()
        assert worker.retrieve(client, query, rid, result.non_prefix_segments, dst)
        assert_written(worker, query, dst, range(5, 5 + 2 * CHUNK))
        worker.clear(dst, range(5, 5 + 2 * CHUNK))
        assert worker.all_zero()  # the 5 leading slots, in the same block, untouched
        client.end_session(rid)


def test_other_tenants_never_see_or_erase_the_fingerprints(client: MPClient) -> None:
    with rope_worker(client) as worker:
        d1, d2 = docs(2)
        stored = d1 + d2
        src = blocks_for(len(stored), 1)
        worker.write_prompt(stored, src)
        assert worker.store(stored, src, request_id("store"))
        query = docs(1)[0] + d2
        for _ in range(3):  # upstream: two foreign lookups erased the owner's fingerprints
            rid = request_id("foreign")
            foreign = unified_lookup(client, worker.key(query, rid, worker=False, salt="other"))
            assert (foreign.prefix_coverage_tokens, foreign.non_prefix_segments) == (0, [])
            client.end_session(rid)
        rid = request_id("owner")
        owner = unified_lookup(client, worker.key(query, rid, worker=False))
        assert segments_of(owner) == [(CHUNK, 2 * CHUNK, CHUNK, 2 * CHUNK)]
        client.end_session(rid)


def test_exact_prompt_is_all_prefix_and_chunk_zero_is_not_fingerprinted(client: MPClient) -> None:
    with rope_worker(client) as worker:
        d1, d2 = docs(2)
        stored = d1 + d2
        src = blocks_for(len(stored), 1)
        worker.write_prompt(stored, src)
        assert worker.store(stored, src, request_id("store"))
        rid = request_id("exact")
        exact = unified_lookup(client, worker.key(stored, rid, worker=False))
        assert (exact.prefix_coverage_tokens, exact.non_prefix_segments) == (2 * CHUNK, [])
        client.end_session(rid)
        rid = request_id("moved-first")
        moved = unified_lookup(client, worker.key(docs(1)[0] + d1, rid, worker=False))
        assert (moved.prefix_coverage_tokens, moved.non_prefix_segments) == (0, [])  # upstream H
        client.end_session(rid)


def test_retrieve_re_call_semantics_and_all_or_nothing(
    server: LiveServer, client: MPClient
) -> None:
    with rope_worker(client) as worker:
        d1, d2, d3 = docs(3)
        stored = d1 + d2 + d3
        src = blocks_for(len(stored), 1)
        worker.write_prompt(stored, src)
        assert worker.store(stored, src, request_id("store"))
        query = docs(1)[0] + d3 + d2
        rid = request_id("query")
        result = unified_lookup(client, worker.key(query, rid, worker=False))
        segments = result.non_prefix_segments
        assert [s.cur_st for s in segments] == [CHUNK, 2 * CHUNK]
        held = locked_objects(server)
        for layer in worker.worker.layers:
            layer.zero_()
        dst = blocks_for(len(query), 60)
        # A table that ends before both segments: nothing to do yet, locks kept.
        assert worker.retrieve(client, query, rid, segments, dst[:4])
        assert locked_objects(server) == held
        # A table that ends inside a segment: refused, nothing written.
        assert not worker.retrieve(client, query, rid, segments, dst[:6])
        assert zero_at(worker, dst, range(len(query)))
        # The full table: written.
        assert worker.retrieve(client, query, rid, segments, dst)
        assert_written(worker, query, dst, range(CHUNK, 3 * CHUNK))
        # The same call again: already applied, nothing written.
        for layer in worker.worker.layers:
            layer.zero_()
        assert worker.retrieve(client, query, rid, segments, dst)
        assert zero_at(worker, dst, range(len(query)))
        # Another destination block: written again (from L1; its locks were consumed).
        moved_dst = [*dst[:4], 90, *dst[5:]]
        assert worker.retrieve(client, query, rid, segments[:1], moved_dst)
        assert_written(worker, query, moved_dst, range(CHUNK, 2 * CHUNK))
        client.end_session(rid)


def test_a_missing_object_fails_the_retrieve_and_writes_nothing(client: MPClient) -> None:
    with rope_worker(client) as worker:
        query = docs(3)
        tokens = [t for d in query for t in d]
        bogus = CBMatchResult(0, CHUNK, CHUNK, 2 * CHUNK, b"\x01" * 32)
        dst = blocks_for(len(tokens), 1)
        for layer in worker.worker.layers:
            layer.zero_()
        assert not worker.retrieve(client, tokens, request_id(), [bogus], dst)
        assert zero_at(worker, dst, range(len(tokens)))
        # No matches at all: nothing to do.
        assert worker.retrieve(client, tokens, request_id(), [], dst)


def test_retrieve_without_rope_state_fails_at_once(client: MPClient) -> None:
    with rope_worker(client, register_rope=False) as worker:
        tokens = docs(1)[0]
        seg = CBMatchResult(0, CHUNK, 0, CHUNK, b"\x02" * 32)
        assert not worker.retrieve(client, tokens, request_id(), [seg], [1, 2, 3, 4])


def test_sparse_locks_are_released_at_end_session(server: LiveServer, client: MPClient) -> None:
    with rope_worker(client) as worker:
        d1, d2, d3 = docs(3)
        stored = d1 + d2 + d3
        src = blocks_for(len(stored), 1)
        worker.write_prompt(stored, src)
        assert worker.store(stored, src, request_id("store"))
        before = locked_objects(server)
        rid = request_id("sparse")
        result = unified_lookup(client, worker.key(docs(1)[0] + d3 + d2, rid, worker=False))
        assert len(result.non_prefix_segments) == 2
        assert locked_objects(server) == before + 2
        # A new lookup under the same id replaces the stash (and its locks).
        again = unified_lookup(client, worker.key(docs(1)[0] + d2, rid, worker=False))
        assert len(again.non_prefix_segments) == 1
        assert locked_objects(server) == before + 1
        client.end_session(rid)
        assert locked_objects(server) == before


def test_bad_requests_get_typed_errors(client: MPClient) -> None:
    with rope_worker(client) as worker:
        key = worker.key(docs(1)[0], request_id(), worker=False)
        key.num_kv_readers = 0
        with pytest.raises(BadRequestError, match="num_kv_readers"):
            client.call("cb_unified_lookup", key, 1)


def test_no_worker_of_the_model_means_no_context(client: MPClient) -> None:
    with rope_worker(client) as worker:
        key = worker.key(docs(2)[0], request_id(), worker=False)
        key.model_name = "nobody-serves-this"
        result = unified_lookup(client, key)
        assert (result.prefix_coverage_tokens, result.non_prefix_segments) == (0, [])


def test_num_kv_readers_locks_are_consumed_one_per_retrieve(
    server: LiveServer, client: MPClient
) -> None:
    """MLA-style sharing: N readers lock each chunk N times; each retrieve consumes one."""
    with rope_worker(client) as worker:
        d1, d2 = docs(2)
        stored = d1 + d2
        src = blocks_for(len(stored), 1)
        worker.write_prompt(stored, src)
        assert worker.store(stored, src, request_id("store"))
        before = locked_objects(server)
        rid = request_id("readers")
        query = docs(1)[0] + d2
        key = worker.key(query, rid, worker=False)
        key.num_kv_readers = 2
        result = unified_lookup(client, key)
        assert len(result.non_prefix_segments) == 1
        assert locked_objects(server) == before + 1
        dst = blocks_for(2 * CHUNK, 60)
        assert worker.retrieve(client, query, rid, result.non_prefix_segments, dst)
        assert locked_objects(server) == before + 1  # the second reader's lock is still held
        client.end_session(rid)
        assert locked_objects(server) == before


def test_blend_metrics_are_exported(server: LiveServer, client: MPClient) -> None:
    with rope_worker(client) as worker:
        d1, d2 = docs(2)
        stored = d1 + d2
        src = blocks_for(len(stored), 1)
        worker.write_prompt(stored, src)
        assert worker.store(stored, src, request_id("store"))
        rid = request_id("metrics")
        query = docs(1)[0] + d2
        result = unified_lookup(client, worker.key(query, rid, worker=False))
        assert worker.retrieve(client, query, rid, result.non_prefix_segments, blocks_for(32, 70))
        client.end_session(rid)
    deadline = time.monotonic() + 20
    # Every counter and histogram of the reference's section 15.2 (upstream's coordinator
    # counters excepted: there is no coordinator here), each with a series once used.
    wanted = (
        *(
            f"lmcache_blend_{name}_total"
            for name in (
                "lookup_requests",
                "lookup_requested_tokens",
                "lookup_hit_tokens",
                "lookup_prefix_hit_tokens",
                "lookup_non_prefix_hit_tokens",
                "lookup_segmented_prefix_hit_tokens",
                "lookup_fingerprint_hits",
                "lookup_storage_hits",
                "lookup_stale_chunks",
                "lookup_no_gpu_context_errors",
                "retrieve_requests",
                "retrieve_chunks",
                "retrieve_failures",
                "fingerprints_registered",
                "chunks_evicted",
                "fingerprint_matches",
            )
        ),
        "lmcache_blend_lookup_duration_bucket",
        "lmcache_blend_retrieve_duration_bucket",
    )
    while True:  # the bus delivers events asynchronously
        text = httpx.get(f"{server.http_url}/metrics", timeout=5.0).text
        if all(name in text for name in wanted):
            break
        assert time.monotonic() < deadline, [n for n in wanted if n not in text]
        time.sleep(0.1)


def served_inline(server: LiveServer) -> int:
    return int(status(server)["requests"]["served_inline"])


def test_documents_in_l1_are_answered_on_the_first_poll_inline_as_the_pool_would(
    server: LiveServer, client: MPClient
) -> None:
    with rope_worker(client) as worker:
        sys_, d1, d2, d3 = docs(4)
        stored = sys_ + d1 + d2 + d3
        src = blocks_for(len(stored), 1)
        worker.write_prompt(stored, src)
        assert worker.store(stored, src, request_id("store"))
        query = sys_ + d3 + d1 + d2 + docs(1)[0][:5]
        key = worker.key(query, request_id("inline"), worker=False)
        before, inline = locked_objects(server), served_inline(server)
        first = client.call("cb_unified_lookup", key, 1)  # one call: no nil first
        assert isinstance(first, CBUnifiedLookupResult)
        assert served_inline(server) == inline + 1
        assert first.prefix_coverage_tokens == CHUNK
        assert segments_of(first) == [
            (3 * CHUNK, 4 * CHUNK, CHUNK, 2 * CHUNK),
            (CHUNK, 2 * CHUNK, 2 * CHUNK, 3 * CHUNK),
            (2 * CHUNK, 3 * CHUNK, 3 * CHUNK, 4 * CHUNK),
        ]
        assert locked_objects(server) == before + 4  # 1 prefix + 3 sparse, winners only
        # The prefix leg's misses are explained from what the inline lock round saw.
        why = httpx.get(f"{server.http_url}/lookups/{key.request_id}", timeout=5.0).json()
        assert why["hit_chunks"] == 1
        assert why["first_miss"]["chunk"] == 1
        assert sum(why["miss_chunks_by_cause"].values()) == 4  # 3 full chunks, 1 partial
        # The same id again has a stash to release: the pool serves it, with the same result.
        again = unified_lookup(client, key)
        assert served_inline(server) == inline + 1
        assert again == first
        assert locked_objects(server) == before + 4
        client.end_session(key.request_id)
        assert locked_objects(server) == before


def test_a_prompt_over_the_inline_budget_is_served_by_the_pool(
    server: LiveServer, client: MPClient
) -> None:
    """A prompt bigger than the inline budget goes to the pool whole, and is answered."""
    with rope_worker(client) as worker:
        d0, d1 = docs(2)  # chunk 0 of a stored prompt is not fingerprinted
        src = blocks_for(2 * CHUNK, 1)
        worker.write_prompt(d0 + d1, src)
        assert worker.store(d0 + d1, src, request_id("store"))
        filler = [t for d in docs(INLINE_MAX_KEYS) for t in d]
        key = worker.key(filler + d1, request_id("big"), worker=False)
        inline = served_inline(server)
        result = unified_lookup(client, key)
        assert served_inline(server) == inline
        assert result.prefix_coverage_tokens == 0
        assert segments_of(result) == [(CHUNK, 2 * CHUNK, len(filler), len(filler) + CHUNK)]
        client.end_session(key.request_id)


def test_a_winner_missing_from_l1_hands_the_started_job_to_the_pool(
    server: LiveServer, client: MPClient
) -> None:
    """The inline attempt's prefix leg is kept; the pool's sparse leg strikes the missing chunk."""
    with rope_worker(client) as worker:
        d0, d1, d2 = docs(3)
        stored = d0 + d1 + d2
        src = blocks_for(len(stored), 1)
        worker.write_prompt(stored, src)
        assert worker.store(stored, src, request_id("store"))
        query = docs(1)[0] + d2 + d1
        probe = worker.key(query, request_id("probe"), worker=False)
        found = client.call("cb_unified_lookup", probe, 1)
        assert isinstance(found, CBUnifiedLookupResult) and len(found.non_prefix_segments) == 2
        client.end_session(probe.request_id)
        gone = next(s for s in found.non_prefix_segments if s.old_st == CHUNK)  # d1's chunk
        body = {
            "tier": "l1",
            "keys": [
                {
                    "chunk_hash_hex": gone.hash.hex(),
                    "model_name": probe.model_name,
                    "kv_rank": pack_kv_rank(probe.world_size, 0),
                }
            ],
        }
        deleted = httpx.request(
            "DELETE", f"{server.http_url}/cache/objects", json=body, timeout=5.0
        )
        assert deleted.status_code == 200, deleted.text
        before, inline = locked_objects(server), served_inline(server)
        key = worker.key(query, request_id("after"), worker=False)
        result = unified_lookup(client, key)
        assert served_inline(server) == inline  # the inline attempt gave way after its prefix leg
        assert result.prefix_coverage_tokens == 0
        assert segments_of(result) == [(2 * CHUNK, 3 * CHUNK, CHUNK, 2 * CHUNK)]
        assert locked_objects(server) == before + 1  # d2's chunk; the missing one struck
        client.end_session(key.request_id)
        assert locked_objects(server) == before


def test_the_uint32_blob_token_form_answers_as_the_list_form(
    server: LiveServer, client: MPClient
) -> None:
    """Our client's blob form (``pack_token_blob``): the same segments, retrieve and locks."""
    with rope_worker(client) as worker:
        sys_, d1, d2 = docs(3)
        stored = sys_ + d1 + d2
        src = blocks_for(len(stored), 1)
        worker.write_prompt(stored, src)
        assert worker.worker.store(
            worker.key(pack_token_blob(stored), request_id("store"), end=len(stored)), src
        )  # a store in the blob form is fingerprinted like a list's
        query = sys_ + d2 + d1 + docs(1)[0][:5]
        answers = []
        before = locked_objects(server)
        for packed in (pack_token_ids(query), pack_token_blob(query)):
            rid = request_id("query")
            key = worker.worker.key(packed, 0, len(query), rid, worker=False)
            result = unified_lookup(client, key)
            answers.append((result.prefix_coverage_tokens, segments_of(result)))
            dst = blocks_for(len(query), 40)
            for layer in worker.worker.layers:
                layer.zero_()
            _, ok = client.call(
                "cb_retrieve_pre_computed",
                worker.worker.key(packed, 0, len(query), rid, worker=True),
                list(result.non_prefix_segments),
                [dst],
                worker.worker.instance_id,
                b"",
            )
            assert ok
            assert_written(worker, query, dst, range(CHUNK, 3 * CHUNK))
            client.end_session(rid)
        assert answers[0] == answers[1] == (CHUNK, answers[0][1]) and len(answers[0][1]) == 2
        assert locked_objects(server) == before
        bad = worker.worker.key(pack_token_blob(query), 0, len(query), request_id("bad"))
        bad.token_ids = msgspec.Raw(bytes(bad.token_ids)[:-2])  # not whole uint32 values
        with pytest.raises(BadRequestError):
            client.call("cb_unified_lookup", bad, 1)
