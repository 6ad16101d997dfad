"""Lazy pinning with the real ``cudaHostRegister``: growth to the target, byte-exact DMA.

Marked ``gpu`` and skipped without CUDA (``conftest.py``). The state machine itself is
tested on the CPU with a FAKE registrar (``tests/storage/test_pinning.py``).
"""

from __future__ import annotations

import random
import time
import uuid

import httpx
import torch

from lmcache_core.client import MPClient
from lmcache_core.storage.arena import Arena
from lmcache_core.storage.pinning import CudaHostRegistrar, LazyPinner
from tests.gpu.cuda_worker import CudaKVWorker, random_kv
from tests.server_process import LiveServer, server_on_free_ports

MIB = 1 << 20
GIB = 1 << 30


def test_pinned_bytes_grow_to_the_target_and_dma_from_a_late_range_is_byte_exact() -> None:
    size, init, step = 256 * MIB, 32 * MIB, 32 * MIB
    with Arena(size, kind="anonymous") as arena:
        grown: list[int] = []
        pinner = LazyPinner(
            arena.data_ptr(),
            size,
            init_bytes=init,
            step_bytes=step,
            registrar=CudaHostRegistrar(),
            on_grow=grown.append,
        )
        tail = arena.view(size - 16 * MIB, 16 * MIB)
        assert not tail.is_pinned()
        pinner.pin_initial()
        assert arena.view(0, MIB).is_pinned() and not tail.is_pinned()
        pinner.start()
        deadline = time.monotonic() + 60
        while pinner.state == "growing" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pinner.state == "done", pinner.status()
        assert pinner.pinned_bytes == size and grown[-1] == size
        assert len(pinner.ranges) == 1 + (size - init) // step
        assert all(arena.view(r.offset, MIB).is_pinned() for r in pinner.ranges)
        # Host -> device -> host through DMA (non_blocking needs page-locked memory):
        # from the last range pinned, into the first one.
        payload = torch.randint(0, 256, (16 * MIB,), dtype=torch.uint8)
        tail.copy_(payload)
        device = tail.to("cuda", non_blocking=True)
        head = arena.view(0, 16 * MIB)
        head.copy_(device, non_blocking=True)
        torch.cuda.synchronize()
        assert torch.equal(head, payload)
        pinner.close()
        assert pinner.state == "closed" and not tail.is_pinned()


def l1_status(server: LiveServer) -> dict[str, object]:
    status = httpx.get(f"{server.http_url}/status", timeout=5).json()
    l1: dict[str, object] = status["data_path"]["l1"]
    return l1


def wait_pinned(server: LiveServer, timeout: float = 120.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        pinning = l1_status(server)["pinning"]
        assert isinstance(pinning, dict)
        if pinning["state"] != "growing" or time.monotonic() > deadline:
            return pinning
        time.sleep(0.2)


def test_server_pins_init_at_start_and_grows_to_l1_size() -> None:
    args = ("--l1-size-gb", "8", "--l1-init-size-gb", "1", "--eviction-policy", "LRU")
    with server_on_free_ports(*args) as server:
        first = l1_status(server)
        pinning = first["pinning"]
        assert isinstance(pinning, dict)
        assert first["kind"] == "anonymous" and pinning["registrar"] == "cuda"
        assert pinning["target_bytes"] == first["capacity_bytes"] == 8 * GIB
        assert pinning["pinned_bytes"] >= GIB
        done = wait_pinned(server)
        assert done["state"] == "done" and done["pinned_bytes"] == 8 * GIB, done
        assert l1_status(server)["limit_bytes"] == 8 * GIB


def test_shared_pool_is_pinned_and_serves_a_cuda_worker() -> None:
    name = f"pin{uuid.uuid4().hex[:8]}"
    args = ("--l1-size-gb", "1", "--shm-name", name, "--eviction-policy", "LRU")
    with server_on_free_ports(*args, "--chunk-size", "64") as server:
        l1 = l1_status(server)
        assert l1["kind"] == "shm" and l1["shm_name"] == f"lmcache_l1_pool_{name}"
        done = wait_pinned(server)
        assert done["registrar"] == "cuda" and done["state"] == "done", done
        tensors = [random_kv((2, 32, 16, 4, 64), torch.bfloat16, seed) for seed in range(2)]
        worker = CudaKVWorker(
            MPClient(server.zmq_url, timeout=60), tensors, {"kv_layout": "NHD"}, model_name="shm"
        )
        worker.register()
        try:
            tokens = [random.randrange(30000) for _ in range(128 + 5)]
            rid = f"shm-{time.monotonic_ns()}"
            original = [t.clone() for t in tensors]
            assert worker.store(worker.key(tokens, 128, rid + "-s"), list(range(1, 9)))
            assert worker.lookup(tokens, len(tokens), rid) == 2
            assert worker.retrieve(worker.key(tokens, 128, rid), list(range(16, 24)))
            for now, before in zip(worker.tensors, original, strict=True):
                assert torch.equal(
                    now[:, 16:24].view(torch.uint8), before[:, 1:9].view(torch.uint8)
                )
            worker.client.end_session(rid)
        finally:
            worker.unregister()
