"""Read locks: freed by free_lookup_locks, end_session and retrieve; expiring for dead clients."""

from __future__ import annotations

import time

import torch

from lmcache_core.client import MPClient
from lmcache_core.transfer.layout import KVFormat
from tests.data_path.conftest import Server, WorkerFactory
from tests.data_path.kv import (
    CHUNK,
    fresh_tokens,
    lookup,
    lookup_key,
    make_layout,
    pick_blocks,
    probe,
    randomize,
    request_id,
    snapshot,
    zero,
)

READ_TTL = 1.0  # --l1-read-ttl-seconds of builtin_ttl_server


def locked(server: Server) -> int:
    return int(server.l1()["locked_objects"])


def wait_for(predicate, timeout: float, interval: float = 0.05) -> float:  # type: ignore[no-untyped-def]
    """Poll until ``predicate()``; returns the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - started


def test_free_lookup_locks_and_end_session_release_at_once(
    main_server: Server, main_client: MPClient, make_worker: WorkerFactory
) -> None:
    worker = make_worker(main_client, make_layout())
    randomize(worker)
    tokens = fresh_tokens(4 * CHUNK)
    assert worker.store(worker.key(tokens, 0, len(tokens), request_id()), pick_blocks(16))
    base = locked(main_server)

    rid = request_id("free")
    assert lookup(main_client, lookup_key(tokens, len(tokens), rid)) == 4
    assert locked(main_server) == base + 4
    # [0, 2 chunks - 3): the end is rounded up to whole chunks (start floored).
    main_client.free_lookup_locks(lookup_key(tokens, 2 * CHUNK - 3, rid))
    assert locked(main_server) == base + 2
    main_client.free_lookup_locks(lookup_key(tokens, len(tokens), rid))
    assert locked(main_server) == base
    # Freeing again, or for an unknown request, is harmless.
    main_client.free_lookup_locks(lookup_key(tokens, len(tokens), rid))
    main_client.free_lookup_locks(lookup_key(tokens, len(tokens), request_id("nobody")))
    assert locked(main_server) == base

    rid = request_id("end")
    assert lookup(main_client, lookup_key(tokens, len(tokens), rid)) == 4
    assert locked(main_server) == base + 4
    main_client.end_session(rid)
    assert locked(main_server) == base
    main_client.end_session(rid)  # twice: harmless

    # A second lookup of the same request replaces the first one's locks.
    rid = request_id("again")
    assert lookup(main_client, lookup_key(tokens, len(tokens), rid)) == 4
    assert lookup(main_client, lookup_key(tokens, 2 * CHUNK, rid)) == 2
    assert locked(main_server) == base + 2
    main_client.end_session(rid)
    assert locked(main_server) == base


def test_num_kv_readers_locks_until_every_reader_retrieved(
    main_server: Server, main_client: MPClient, make_worker: WorkerFactory
) -> None:
    layout = make_layout(KVFormat.MLA, torch.bfloat16, block_size=8, num_blocks=20)
    # Two tensor-parallel ranks of an MLA model: the same KV, one KV rank.
    first = make_worker(main_client, layout, model_name="mla")
    second = make_worker(main_server.client(), layout, model_name="mla")
    randomize(first)
    src = pick_blocks(6, num_blocks=20)
    dst = pick_blocks(6, exclude=src, num_blocks=20)
    expected = snapshot(first, src)
    tokens = fresh_tokens(3 * CHUNK)
    assert first.store(first.key(tokens, 0, len(tokens), request_id()), src)
    base = locked(main_server)

    rid = request_id("readers")
    key = lookup_key(tokens, len(tokens), rid, model="mla", readers=2)
    assert lookup(main_client, key) == 3
    assert locked(main_server) == base + 3
    for n, worker in enumerate((first, second)):
        zero(worker)
        assert worker.retrieve(worker.key(tokens, 0, len(tokens), rid), dst)
        assert snapshot(worker, dst) == expected
        assert locked(main_server) == (base + 3 if n == 0 else base)
    main_client.end_session(rid)


def test_crashed_clients_locks_expire(
    builtin_ttl_server: Server, make_worker: WorkerFactory
) -> None:
    server = builtin_ttl_server
    client = server.client()
    worker = make_worker(client, make_layout())
    randomize(worker)
    tokens = fresh_tokens(4 * CHUNK)
    assert worker.store(worker.key(tokens, 0, len(tokens), request_id()), pick_blocks(16))
    assert locked(server) == 0

    crashed = server.client()
    assert lookup(crashed, lookup_key(tokens, len(tokens), request_id("crash"))) == 4
    crashed.close()  # never retrieves, frees or ends its session
    taken = time.monotonic()
    assert locked(server) == 4
    # While locked, a (non-forced) clear must keep them.
    resident = server.l1()["resident_objects"]
    client.clear(False)
    if time.monotonic() - taken < READ_TTL * 0.8:
        assert server.l1()["resident_objects"] == resident
    wait_for(lambda: locked(server) == 0, timeout=READ_TTL + 3)
    assert time.monotonic() - taken >= READ_TTL * 0.9
    # Evictable again: a clear now drops them.
    client.clear(False)
    assert probe(client, tokens) == 0


def test_late_release_of_expired_locks_keeps_other_readers_locks(
    builtin_ttl_server: Server, make_worker: WorkerFactory
) -> None:
    server = builtin_ttl_server
    client = server.client()
    worker = make_worker(client, make_layout())
    randomize(worker)
    tokens = fresh_tokens(4 * CHUNK)
    assert worker.store(worker.key(tokens, 0, len(tokens), request_id()), pick_blocks(16))
    slow = request_id("slow")
    assert lookup(client, lookup_key(tokens, len(tokens), slow)) == 4
    # The slow request's grant expires (1 s), then its orphan record too (1 s more).
    time.sleep(2 * READ_TTL + 0.3)
    assert locked(server) == 0
    live = request_id("live")
    assert lookup(client, lookup_key(tokens, len(tokens), live)) == 4
    assert locked(server) == 4
    client.end_session(slow)  # the slow request finally ends
    assert locked(server) == 4, "the live request lost its read locks"
    client.end_session(live)
