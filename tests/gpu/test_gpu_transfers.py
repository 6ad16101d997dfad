"""Two processes on one GPU: this test process is the worker, the server a subprocess.

Byte-exact round trips for every layout x dtype, ``skip_first_n_tokens``, a worker killed in
the middle of transfers, 1,000 register/unregister cycles and concurrent workers. Marked
``gpu`` and skipped without CUDA (``conftest.py``); ``tools/device_check.sh`` runs them.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from lmcache_core.client import MPClient
from tests.gpu.cuda_worker import CudaKVWorker, random_kv
from tests.server_process import LiveServer, server_on_free_ports
from tests.transfer.device_layouts import device_layouts

NB, BS, HEADS, DIM, LAYERS = 64, 16, 4, 64, 4
CHUNK = 64  # 4 blocks per chunk
CHUNKS = 3
DTYPES = [torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2]

LAYOUTS = device_layouts(NB, BS, HEADS, DIM, LAYERS)


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    args = ("--l1-size-gb", "2", "--eviction-policy", "LRU", "--chunk-size", str(CHUNK))
    with server_on_free_ports(*args, "--max-gpu-workers", "8") as live:
        yield live


def client_for(server: LiveServer) -> MPClient:
    return MPClient(server.zmq_url, timeout=60)


def blocks_equal(
    name: str, a: list[torch.Tensor], ab: list[int], b: list[torch.Tensor], bb: list[int], kv: int
) -> bool:
    block = LAYOUTS[name][3]
    for layer, k, (x, y) in itertools.product(range(LAYERS), range(kv), zip(ab, bb, strict=True)):
        if not torch.equal(
            block(a, layer, k, x).view(torch.uint8), block(b, layer, k, y).view(torch.uint8)
        ):
            return False
    return True


def make_worker(server: LiveServer, name: str, dtype: torch.dtype, seed: int) -> CudaKVWorker:
    shape, count, hints, _ = LAYOUTS[name]
    tensors = [random_kv(shape, dtype, seed + i) for i in range(count)]
    return CudaKVWorker(client_for(server), tensors, hints, model_name=f"gpu-{name}-{dtype}")


CASES = [(n, d) for n in LAYOUTS for d in DTYPES]


@pytest.mark.parametrize(("name", "dtype"), CASES, ids=[f"{n}-{d}" for n, d in CASES])
def test_round_trip_is_byte_exact(server: LiveServer, name: str, dtype: torch.dtype) -> None:
    worker = make_worker(server, name, dtype, seed=hash((name, str(dtype))) % 1000)
    worker.register()
    try:
        tokens = [random.randrange(30000) for _ in range(CHUNKS * CHUNK + 5)]
        rid = f"rt-{name}-{dtype}-{time.monotonic_ns()}"
        store_blocks = list(range(1, 1 + CHUNKS * CHUNK // BS))
        assert worker.store(worker.key(tokens, CHUNKS * CHUNK, rid + "-s"), store_blocks)
        assert worker.lookup(tokens, len(tokens), rid) == CHUNKS
        original = [t.clone() for t in worker.tensors]
        load_blocks = list(range(30, 30 + CHUNKS * CHUNK // BS))
        assert worker.retrieve(worker.key(tokens, CHUNKS * CHUNK, rid), load_blocks)
        kv = 1 if name == "mla" else 2
        assert blocks_equal(name, worker.tensors, load_blocks, original, store_blocks, kv)
        worker.client.end_session(rid)
    finally:
        worker.unregister()


def test_skip_first_n_tokens_leaves_the_prefix_untouched(server: LiveServer) -> None:
    worker = make_worker(server, "flash_nhd", torch.bfloat16, seed=7)
    worker.register()
    try:
        tokens = [random.randrange(30000) for _ in range(CHUNKS * CHUNK)]
        store_blocks = list(range(1, 1 + CHUNKS * CHUNK // BS))
        assert worker.store(worker.key(tokens, len(tokens), "skip-s"), store_blocks)
        assert worker.lookup(tokens, len(tokens), "skip") == CHUNKS
        load_blocks = list(range(30, 30 + CHUNKS * CHUNK // BS))
        before = [t.clone() for t in worker.tensors]
        skip = 40  # ends inside the third block
        assert worker.retrieve(worker.key(tokens, len(tokens), "skip"), load_blocks, skip)
        for layer, k in itertools.product(range(LAYERS), range(2)):
            got = worker.tensors[layer][k, load_blocks].reshape(-1, HEADS * DIM)
            old = before[layer][k, load_blocks].reshape(-1, HEADS * DIM)
            new = before[layer][k, store_blocks].reshape(-1, HEADS * DIM)
            assert torch.equal(got[:skip].view(torch.uint8), old[:skip].view(torch.uint8))
            assert torch.equal(got[skip:].view(torch.uint8), new[skip:].view(torch.uint8))
        worker.client.end_session("skip")
    finally:
        worker.unregister()


def cuda_status(server: LiveServer) -> dict[str, object]:
    status = httpx.get(f"{server.http_url}/status", timeout=10).json()
    return status["engine"]["cuda"] or {}


def server_rss_kib(server: LiveServer) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_thousand_register_unregister_cycles_stay_flat(server: LiveServer) -> None:
    client = client_for(server)
    tensors = [random_kv((2, NB, BS, HEADS, DIM), torch.bfloat16, i) for i in range(LAYERS)]

    def cycle(i: int) -> None:
        worker = CudaKVWorker(client, tensors, {"kv_layout": "NHD"}, model_name="cycles")
        worker.register()
        if i % 2 == 0:  # half of them import (a store of new tokens), half never transfer
            tokens = [i * CHUNK + t for t in range(CHUNK)]
            assert worker.store(worker.key(tokens, CHUNK, f"cycle-{i}"), [1, 2, 3, 4])
        worker.unregister()

    for i in range(50):  # warm-up: allocator pools, staging sizes, caches
        cycle(i)
    time.sleep(1)
    free_before, _ = torch.cuda.mem_get_info()
    rss_before = server_rss_kib(server)
    for i in range(1000):
        cycle(i)
    deadline = time.monotonic() + 30
    while cuda_status(server).get("imported_allocations") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cuda_status(server).get("imported_allocations") == 0
    free_after, _ = torch.cuda.mem_get_info()
    rss_after = server_rss_kib(server)
    # Flat: within 256 MiB of GPU memory (one staging buffer's slack) and 64 MiB of RSS.
    assert free_before - free_after < 256 << 20, (free_before, free_after)
    assert rss_after - rss_before < 64 << 10, (rss_before, rss_after)


def test_concurrent_workers_transfer_in_parallel(server: LiveServer) -> None:
    workers = [make_worker(server, "flash_nhd", torch.bfloat16, seed=100 + i) for i in range(8)]
    for w in workers:
        w.register()
    errors: list[BaseException] = []

    def run(index: int, worker: CudaKVWorker) -> None:
        try:
            for round_ in range(5):
                tokens = [random.randrange(30000) for _ in range(CHUNKS * CHUNK)]
                rid = f"conc-{index}-{round_}"
                blocks = list(range(1, 1 + CHUNKS * CHUNK // BS))
                assert worker.store(worker.key(tokens, len(tokens), rid + "-s"), blocks)
                assert worker.lookup(tokens, len(tokens), rid) == CHUNKS
                original = [t.clone() for t in worker.tensors]
                load = list(range(30, 30 + len(blocks)))
                assert worker.retrieve(worker.key(tokens, len(tokens), rid), load)
                assert blocks_equal("flash_nhd", worker.tensors, load, original, blocks, 2)
                worker.client.end_session(rid)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, w)) for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for w in workers:
        w.unregister()
    assert not errors, errors


KILLED_WORKER = r"""
import sys, random
import torch
from lmcache_core.client import MPClient
from tests.gpu.cuda_worker import CudaKVWorker, random_kv
worker = CudaKVWorker(MPClient(sys.argv[1], timeout=60),
    [random_kv((2, 64, 16, 4, 64), torch.bfloat16, i) for i in range(4)], {"kv_layout": "NHD"},
    model_name="killed")
worker.register()
worker.client.ping(worker.instance_id)  # a pinged worker is reaped after the reap timeout
print("READY", flush=True)
i = 0
while True:
    tokens = [random.randrange(30000) for _ in range(192)]
    worker.store(worker.key(tokens, 192, f"k{i}"), list(range(1, 13)))
    i += 1
"""


def test_a_worker_killed_mid_transfer_leaves_nothing_mapped_after_reaping() -> None:
    args = ("--l1-size-gb", "1", "--eviction-policy", "LRU", "--chunk-size", str(CHUNK))
    reap = ("--worker-reap-timeout-seconds", "30", "--worker-registration-grace-seconds", "30")
    with server_on_free_ports(*args, *reap) as live:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
        proc = subprocess.Popen(
            [sys.executable, "-c", KILLED_WORKER, live.zmq_url],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "READY"
            time.sleep(2)  # stores in flight
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        # The server keeps answering at once ...
        started = time.monotonic()
        assert MPClient(live.zmq_url, timeout=5).noop() == "OK"
        assert time.monotonic() - started < 5
        # ... and once the worker is reaped, nothing of it stays mapped.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            status = cuda_status(live)
            if (
                status
                and status.get("imported_allocations") == 0
                and status.get("deferred_transfers") == 0
            ):
                break
            time.sleep(1)
        status = cuda_status(live)
        assert status.get("imported_allocations") == 0, status
        assert status.get("references") == 0, status
