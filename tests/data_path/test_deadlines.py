"""No request hangs: every server-side wait ends at the request's deadline (issue 14 item 3).

Real server processes started with a short ``--request-deadline-seconds``:

* a slow L2 adapter (the ``mock`` adapter's ``added_latency_ms`` far above the
  deadline): a lookup whose prefetch cannot finish in time answers its L1 hits by
  the deadline, not None forever; the late prefetch leaves no L1 lock and no L2
  pin behind;
* a fault-injecting L2 adapter (the ``mock`` adapter's ``fail_chunk_indices``):
  a load that fails is a hole, the lookup answers the chunks before it, and a
  retrieve of those chunks is exact;
* a store waiting for chunks another worker is still writing answers ok=False at
  its deadline, not after the 5 s visibility wait;
* a retrieve whose deadline passed while it waited in its worker's queue (the
  server stalled with SIGSTOP) answers ok=False and never writes into the
  destination blocks, neither before the reply nor after it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch

from lmcache_core.client import CallTimeout, MPClient
from lmcache_core.client.cpu_worker import CpuKVWorker
from lmcache_core.protocol.types import CacheKey, EngineDrivenRegistration
from tests.data_path.l2_helpers import (
    BPC,
    CHUNK,
    blocks,
    fill_layers,
    l2_status,
    random_tokens,
    small_layout,
    wait_for,
)
from tests.server_process import LiveServer, server_on_free_ports

pytestmark = pytest.mark.slow  # two real servers, and waits of the deadline's length

DEADLINE_S = 1.0
"""``--request-deadline-seconds`` of the servers started here."""
SLACK_S = 1.5
"""What an answer may take beyond the deadline on this loaded 2-core machine."""
LAYOUT = small_layout(64)


def _args(*extra: str) -> tuple[str, ...]:
    return (
        *("--l1-size-gb", "0.05", "--eviction-policy", "LRU", "--chunk-size", str(CHUNK)),
        *("--request-deadline-seconds", str(DEADLINE_S), "--max-gpu-workers", "1"),
        *extra,
    )


def _mock(**settings: Any) -> str:
    return json.dumps({"type": "mock", "max_size_gb": 0.05, "mock_bandwidth_gb": 10.0, **settings})


def _engine(server: LiveServer) -> dict[str, Any]:
    status: dict[str, Any] = httpx.get(f"{server.http_url}/status").json()["data_path"]
    return status


def _l1(server: LiveServer) -> dict[str, Any]:
    usage: dict[str, Any] = _engine(server)["l1"]
    return usage


@pytest.fixture(scope="module")
def slow_l2_server() -> Iterator[LiveServer]:
    """Every call of its L2 adapter takes 3 s: three times the deadline."""
    with server_on_free_ports(*_args("--l2-adapter", _mock(added_latency_ms=3000.0))) as server:
        yield server


@pytest.fixture(scope="module")
def faulty_server() -> Iterator[LiveServer]:
    """The second key of every load batch of its L2 adapter fails (found by lookup)."""
    with server_on_free_ports(*_args("--l2-adapter", _mock(fail_chunk_indices=[1]))) as server:
        yield server


@pytest.fixture
def worker_of() -> Iterator[Any]:
    opened: list[tuple[MPClient, CpuKVWorker]] = []

    def make(server: LiveServer, timeout: float = 20.0) -> tuple[MPClient, CpuKVWorker]:
        client = MPClient(server.zmq_url, timeout=timeout)
        worker = CpuKVWorker(client, LAYOUT)
        worker.register()
        opened.append((client, worker))
        return client, worker

    yield make
    for client, worker in opened:
        worker.close()
        client.close()


def _store_in_l2(server: LiveServer, worker: CpuKVWorker, tokens: list[int]) -> None:
    """Store ``tokens`` from blocks 1.., wait until L2 holds them, then drop them from L1."""
    chunks = len(tokens) // CHUNK
    before = l2_status(server.http_url)["stats"]["stored_keys"]
    assert worker.store(worker.key(tokens, 0, chunks * CHUNK, uuid.uuid4().hex), blocks(1, chunks))
    wait_for(lambda: l2_status(server.http_url)["stats"]["stored_keys"] >= before + chunks, 20)
    worker.client.clear(True)
    assert _l1(server)["resident_objects"] == 0


def _lookup_answer(
    client: MPClient, worker: CpuKVWorker, tokens: list[int], request: str = ""
) -> tuple[Any, float]:
    """Look up and poll the status like upstream's scheduler; (answer, seconds it took)."""
    request = request or uuid.uuid4().hex
    started = time.monotonic()
    client.lookup(worker.key(tokens, 0, len(tokens), request, worker=False))
    while True:
        answer = client.query_prefetch_status(request)
        if answer is not None or time.monotonic() - started > 30:
            return answer, time.monotonic() - started
        time.sleep(0.02)


def test_slow_l2_prefetch_is_given_up_at_the_deadline(
    slow_l2_server: LiveServer, worker_of: Any
) -> None:
    server = slow_l2_server
    client, worker = worker_of(server)
    fill_layers(worker, 1)
    tokens = random_tokens(11, 2)
    _store_in_l2(server, worker, tokens)

    answer, took = _lookup_answer(client, worker, tokens)
    assert answer == 0, "nothing is in L1 and L2 did not answer in time"
    assert DEADLINE_S - 0.1 <= took < DEADLINE_S + SLACK_S
    # The deadline cut the adapter's lookup short (or, had the prefetch not even
    # returned, the status query gave the job up).
    given_up = _engine(server)["engine"]["deadlines"]["lookups_given_up"]
    assert l2_status(server.http_url)["stats"]["adapter_timeouts"] + given_up >= 1

    # The prefetch goes on in the background; once it ends it must leave nothing held.
    def settled() -> bool:
        l2 = l2_status(server.http_url)
        return l2["adapters"][0]["pinned_keys"] == 0 and _l1(server)["locked_objects"] == 0

    wait_for(settled, 10)  # the late lookup answers 3 s after it began; no load follows
    assert _l1(server)["staged_objects"] == 0
    # The server still answers at once.
    assert client.noop(timeout=2) == "OK"


def test_faulty_l2_loads_answer_the_prefix_before_the_hole(
    faulty_server: LiveServer, worker_of: Any
) -> None:
    server = faulty_server
    client, worker = worker_of(server)
    fill_layers(worker, 2)
    tokens = random_tokens(12, 3)
    _store_in_l2(server, worker, tokens)
    expected = [layer[:, blocks(1, 1)].clone() for layer in worker.layers]

    request = uuid.uuid4().hex
    answer, took = _lookup_answer(client, worker, tokens, request)
    assert answer == 1 and took < DEADLINE_S + SLACK_S
    dst = blocks(40, 1)
    for layer in worker.layers:
        layer[:, dst] = 0
    assert worker.retrieve(worker.key(tokens, 0, CHUNK, request), dst)
    assert all(
        torch.equal(layer[:, dst], want)
        for layer, want in zip(worker.layers, expected, strict=True)
    )
    assert (
        l2_status(server.http_url)["adapters"][0]["mock"]["fault_inject"]["injected_failures"] >= 1
    )


def _writer(server: LiveServer) -> tuple[MPClient, EngineDrivenRegistration]:
    """An engine-driven worker of the same model and object size as :data:`LAYOUT`."""
    client = MPClient(server.zmq_url, timeout=20)
    payload = EngineDrivenRegistration(
        instance_id=uuid.uuid4().int >> 65,
        model_name="model",
        world_size=1,
        block_size=LAYOUT.block_size,
        num_layers=LAYOUT.num_layers,
        hidden_dim_size=LAYOUT.num_heads * LAYOUT.head_dim,
        dtype_str="bfloat16",
        use_mla=False,
        num_physical_slots=CHUNK,
    )
    client.register_engine_driven(payload)
    return client, payload


def test_store_waiting_for_another_writer_fails_at_its_deadline(
    faulty_server: LiveServer, worker_of: Any
) -> None:
    server = faulty_server
    _, worker = worker_of(server)
    fill_layers(worker, 3)
    writer, payload = _writer(server)
    try:
        tokens = random_tokens(13, 2)
        # Another worker reserved both chunks and never commits them.
        staged = writer.prepare_store(
            CacheKey("model", 1, 0, tokens, 0, 2 * CHUNK, "w"), payload.instance_id
        )
        assert staged.context["chunk_indices"] == [0, 1]
        started = time.monotonic()
        ok = worker.store(worker.key(tokens, 0, 2 * CHUNK, "s"), blocks(1, 2))
        took = time.monotonic() - started
        assert ok is False
        # The visibility wait alone would take 5 s: the deadline cut it short.
        assert DEADLINE_S - 0.1 <= took < DEADLINE_S + SLACK_S
    finally:
        writer.close()


def test_retrieve_queued_past_its_deadline_never_writes_the_blocks(
    faulty_server: LiveServer, worker_of: Any
) -> None:
    server = faulty_server
    client, worker = worker_of(server)
    fill_layers(worker, 4)
    ready = random_tokens(14, 2)
    assert worker.store(worker.key(ready, 0, 2 * CHUNK, "r0"), blocks(1, 2))
    request = uuid.uuid4().hex
    client.lookup(worker.key(ready, 0, 2 * CHUNK, request, worker=False))
    assert client.wait_prefetch_status(request, 5.0) == 2

    writer, payload = _writer(server)
    try:
        blocked = random_tokens(15, 1)
        writer.prepare_store(CacheKey("model", 1, 0, blocked, 0, CHUNK, "w"), payload.instance_id)
        # A store that waits for the writer's chunk occupies this worker's only
        # transfer thread; its client stops waiting at once.
        with pytest.raises(CallTimeout):
            worker.store(worker.key(blocked, 0, CHUNK, "s"), blocks(1, 1), timeout=0.05)

        dst = blocks(30, 2)
        sentinel = torch.full_like(worker.layers[0][:, dst], 7.0)
        for layer in worker.layers:
            layer[:, dst] = sentinel
        answers: list[bool] = []
        retrieve = threading.Thread(
            target=lambda: answers.append(
                worker.retrieve(worker.key(ready, 0, 2 * CHUNK, request), dst, timeout=20)
            )
        )
        retrieve.start()  # queued behind the store
        time.sleep(0.3)
        # The server stalls (all its threads) until the retrieve's deadline has passed.
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            time.sleep(DEADLINE_S + 0.5)
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        retrieve.join(20)
        assert answers == [False]
        time.sleep(0.5)  # a late copy would land now
        assert all(torch.equal(layer[:, dst], sentinel) for layer in worker.layers)
        misses = _engine(server)["engine"]["deadlines"]["store_retrieve_misses"]
        assert misses["retrieve"] == 1
        # The lookup's locks were consumed: nothing stays locked.
        wait_for(lambda: _l1(server)["locked_objects"] == 0, 5)
        assert len(dst) == BPC * 2
    finally:
        writer.close()
