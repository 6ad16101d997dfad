"""CacheBlend on a GPU: two processes, a worker with real CUDA KV and cos/sin caches.

This test process is the worker: its paged KV cache and its rotary cos/sin cache are CUDA
tensors shared through CUDA IPC (``cuda`` handles), the server a real ``--engine-type blend``
subprocess. A prompt ``[s, d0, d1]`` is stored; a new prompt ``[y, d1, d0, z]`` is looked up
(``cb_unified_lookup``) and its non-prefix segments written by ``cb_retrieve_pre_computed``
into fresh blocks on the GPU: K at the new positions must equal K computed directly there
within bf16 tolerance, V bit for bit, no other slot touched, every lock released. Marked
``gpu`` and skipped without CUDA (``conftest.py``); ``tools/device_check.sh tests`` runs it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch

from lmcache_core.client import MPClient
from lmcache_core.client.cpu_worker import shared_copy
from lmcache_core.protocol.codec import encode_device_handle
from lmcache_core.protocol.types import CacheKey, CBMatchResult, CBUnifiedLookupResult
from tests.gpu.cuda_worker import CudaKVWorker, export_cuda, random_kv
from tests.server_process import LiveServer, server_on_free_ports

NB, BS, HEADS, DIM, LAYERS = 48, 16, 4, 64, 4
CHUNK = 32  # 2 blocks per chunk
MAX_POSITION = 4096
SOURCE = list(range(1, 7))  # the stored prompt's 3 chunks
TARGET = list(range(10, 18))  # the new prompt's 4 chunks
MODEL = "blend-gpu"


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    args = ("--engine-type", "blend", "--l1-size-gb", "1", "--eviction-policy", "LRU")
    with server_on_free_ports(*args, "--chunk-size", str(CHUNK)) as live:
        yield live


def cos_sin_cache(rot_dim: int) -> torch.Tensor:
    """vLLM's ``[max_position, rot_dim]`` cache (cos, then sin), fp32 on the GPU."""
    inv = 1.0 / (10000.0 ** (torch.arange(0, rot_dim, 2, dtype=torch.float64) / rot_dim))
    freqs = torch.outer(torch.arange(MAX_POSITION, dtype=torch.float64), inv)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(torch.float32).cuda()


def apply_rope(x: torch.Tensor, positions: torch.Tensor, cache: torch.Tensor, neox: bool) -> Any:
    """``x`` ``[layers, tokens, heads * DIM]`` rotated at ``positions``, in fp64."""
    half = cache.shape[1] // 2
    view = x.to(torch.float64).reshape(*x.shape[:-1], HEADS, DIM).clone()
    rows = cache.to(torch.float64)[positions.to(cache.device)]
    cos, sin = rows[:, :half].unsqueeze(1), rows[:, half:].unsqueeze(1)
    if neox:
        a, b = view[..., :half].clone(), view[..., half:].clone()
        view[..., :half], view[..., half:] = a * cos - b * sin, b * cos + a * sin
    else:
        a, b = view[..., 0::2].clone(), view[..., 1::2].clone()
        view[..., 0::2], view[..., 1::2] = a * cos - b * sin, b * cos + a * sin
    return view.reshape(x.shape)


def key(tokens: list[int], rid: str, worker: bool) -> CacheKey:
    return CacheKey(
        model_name=MODEL,
        world_size=1,
        worker_id=0 if worker else None,
        token_ids=tokens,
        start=0,
        end=len(tokens),
        request_id=rid,
        cache_salt="",
        num_kv_readers=1,
    )


def slots(table: list[int], positions: range) -> tuple[torch.Tensor, torch.Tensor]:
    where = torch.tensor(list(positions))
    return torch.tensor(table)[where // BS], where % BS


def status(server: LiveServer) -> dict[str, Any]:
    response = httpx.get(f"{server.http_url}/status", timeout=5.0)
    response.raise_for_status()
    return dict(response.json()["data_path"])


def unified_lookup(client: MPClient, lookup_key: CacheKey) -> CBUnifiedLookupResult:
    for _ in range(500):
        result = client.call("cb_unified_lookup", lookup_key, 1)
        if result is not None:
            assert isinstance(result, CBUnifiedLookupResult)
            return result
        time.sleep(0.01)
    raise AssertionError("cb_unified_lookup never answered")


SHARES = [(True, "cuda"), (False, "cuda"), (True, "cpu_shm")]


@pytest.mark.parametrize(("neox", "share"), SHARES, ids=["neox", "gptj", "neox-cpu-shm-cos-sin"])
def test_reused_chunks_land_re_rotated_on_the_gpu(
    server: LiveServer, neox: bool, share: str
) -> None:
    """With the cos/sin cache shared as CUDA IPC (copied on the GPU at registration) or as
    ``cpu_shm`` (moved to the GPU once, at the first retrieve)."""
    client = MPClient(server.zmq_url, timeout=60)
    layers = [random_kv((2, NB, BS, HEADS, DIM), torch.bfloat16, 90 + i) for i in range(LAYERS)]
    worker = CudaKVWorker(client, layers, {}, model_name=MODEL)
    worker.register()
    try:
        cache = cos_sin_cache(DIM)
        cleanup = None
        if share == "cuda":
            ext = encode_device_handle(export_cuda(cache))
        else:
            handle, _host, cleanup = shared_copy(cache.cpu())
            ext = encode_device_handle(handle)
        client.call(
            "cb_register_rope",
            worker.instance_id,
            [ext],
            DIM,
            neox,
            [],
            [],
            [],
            "",
        )
        if cleanup is not None:
            cleanup()  # the server copied the cache at registration
        base = 7_000_000 + 1_000_000 * SHARES.index((neox, share))
        s, d0, d1, y, z = ([base + 100 * c + i for i in range(CHUNK)] for c in range(5))
        stored = s + d0 + d1
        gen = torch.Generator(device="cuda").manual_seed(5 if neox else 6)
        raw_k = torch.randn(LAYERS, len(stored), HEADS * DIM, generator=gen, device="cuda")
        raw_v = torch.randn(LAYERS, len(stored), HEADS * DIM, generator=gen, device="cuda")
        k = apply_rope(raw_k, torch.arange(len(stored)), cache, neox).to(torch.bfloat16)
        blk, off = slots(SOURCE, range(len(stored)))
        for index, layer in enumerate(layers):
            layer[0][blk, off] = k[index].view(-1, HEADS, DIM)
            layer[1][blk, off] = raw_v[index].to(torch.bfloat16).view(-1, HEADS, DIM)
        torch.cuda.synchronize()
        assert worker.store(worker.key(stored, len(stored), "blend-store"), SOURCE)

        prompt = y + d1 + d0 + z
        result = unified_lookup(client, key(prompt, "blend-q", worker=False))
        got = sorted((m.old_st, m.cur_st) for m in result.non_prefix_segments)
        assert got == [(CHUNK, 2 * CHUNK), (2 * CHUNK, CHUNK)]  # d0 moved ahead, d1 back
        before = [layer.clone() for layer in layers]
        keep, handle = worker._event()
        reply, ok = client.call(
            "cb_retrieve_pre_computed",
            key(prompt, "blend-q", worker=True),
            list(result.non_prefix_segments),
            [TARGET],
            worker.instance_id,
            handle,
        )
        worker._wait(reply)
        del keep
        assert ok is True and reply  # a server event, freshly recorded
        check_written(layers, before, result.non_prefix_segments, raw_k, raw_v, cache, neox)
        assert int(status(server)["l1"]["locked_objects"]) == 0
    finally:
        worker.unregister()
        client.close()


def check_written(
    layers: list[torch.Tensor],
    before: list[torch.Tensor],
    segments: list[CBMatchResult],
    raw_k: torch.Tensor,
    raw_v: torch.Tensor,
    cache: torch.Tensor,
    neox: bool,
) -> None:
    """K re-rotated within bf16 tolerance, V bit for bit, every other slot as it was."""
    untouched = [torch.ones(layer.shape[:3], dtype=torch.bool, device="cuda") for layer in layers]
    for m in segments:
        blk, off = slots(TARGET, range(m.cur_st, m.cur_ed))
        old = torch.arange(m.old_st, m.old_ed)
        expected = apply_rope(raw_k[:, old], torch.arange(m.cur_st, m.cur_ed), cache, neox)
        for index, layer in enumerate(layers):
            k = layer[0][blk, off].reshape(len(old), -1).to(torch.float64)
            torch.testing.assert_close(k, expected[index], rtol=1e-2, atol=2e-2)
            v = layer[1][blk, off].reshape(len(old), -1)
            assert torch.equal(v, raw_v[index, old].to(torch.bfloat16))
            untouched[index][:, blk, off] = False
    for layer, old_layer, keep in zip(layers, before, untouched, strict=True):
        assert torch.equal(layer.view(torch.int16)[keep], old_layer.view(torch.int16)[keep])
