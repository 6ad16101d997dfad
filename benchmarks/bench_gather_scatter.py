"""Benchmark: batched CPU gather/scatter between a paged KV cache and L1 objects.

Layout: Llama-3-8B (32 layers, 8 KV heads, head_dim 128, bf16), vLLM block size 16, 256-token
chunks (32 MiB per chunk). The KV layer tensors live in POSIX shared memory, as on the CPU
transfer path. Block ids are a random permutation, so no two blocks of a chunk are adjacent.

The ceiling is measured in the same run: a single-thread memcpy of the same number of bytes
(torch ``dst.copy_(src)`` with one intra-op thread; numpy ``copyto`` for reference, which uses
glibc's memcpy with non-temporal stores on large copies). Gather and scatter run with torch's
default thread count unless the line says otherwise.

The ``others`` column is the number of cores other processes kept busy during that
measurement; on a shared 2-core machine a busy neighbour makes multi-threaded figures collapse
(torch's intra-op threads wait for each other), so read a line only where it is near 0.

Run: ``.venv/bin/python benchmarks/bench_gather_scatter.py`` (about 20 s).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from lmcache_core.transfer import KVFormat, KVLayout, PagedKVCache, create_shm_tensor

NUM_LAYERS = 32
NUM_HEADS = 8
HEAD_DIM = 128
BLOCK_SIZE = 16
CHUNK_TOKENS = 256
NUM_BLOCKS = 512  # 32 MiB per layer, 1 GiB in all
DTYPE = torch.bfloat16
GB = 1e9


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_ticks() -> tuple[int, int]:
    """(busy ticks of the whole machine, ticks of this process) so far."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()
    return busy, int(own[11]) + int(own[12])  # utime + stime


# Cores kept busy by other processes during the last measurement: this 2-core machine is
# shared, and a busy neighbour wrecks multi-threaded figures. Printed with every line.
others = {"last": 0.0, "worst": 0.0}


def median_seconds(fn: Callable[[], object], runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    busy0, own0 = _cpu_ticks()
    wall0 = time.perf_counter()
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    busy1, own1 = _cpu_ticks()
    ticks = (time.perf_counter() - wall0) * os.sysconf("SC_CLK_TCK")
    others["last"] = max(0.0, ((busy1 - busy0) - (own1 - own0)) / ticks)
    others["worst"] = max(others["worst"], others["last"])
    return statistics.median(times)


def runs_for(nbytes: int) -> int:
    return 25 if nbytes <= 64 << 20 else 7


def memcpy_ceilings(nbytes: int) -> tuple[float, float, float, float]:
    """GB/s of torch copy_ (1 thread), torch copy_ (default threads), numpy copyto; others."""
    src = torch.empty(nbytes, dtype=torch.uint8).fill_(1)
    dst = torch.empty(nbytes, dtype=torch.uint8).fill_(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch_1t = nbytes / median_seconds(lambda: dst.copy_(src), runs_for(nbytes)) / GB
    finally:
        torch.set_num_threads(threads)
    busy = others["last"]
    torch_mt = nbytes / median_seconds(lambda: dst.copy_(src), runs_for(nbytes)) / GB
    busy = max(busy, others["last"])
    a, b = src.numpy(), dst.numpy()
    numpy_1t = nbytes / median_seconds(lambda: np.copyto(b, a), runs_for(nbytes)) / GB
    return torch_1t, torch_mt, numpy_1t, max(busy, others["last"])


def main() -> None:
    print("== bench_gather_scatter ==")
    print(
        f"cpu: {cpu_model()}; os.cpu_count={os.cpu_count()}, "
        f"affinity={len(os.sched_getaffinity(0))}"
    )
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"torch threads (default) {torch.get_num_threads()}"
    )
    layout = KVLayout(
        format=KVFormat.NHD,
        num_layers=NUM_LAYERS,
        num_blocks=NUM_BLOCKS,
        block_size=BLOCK_SIZE,
        num_heads=NUM_HEADS,
        head_dim=HEAD_DIM,
        dtype=DTYPE,
    )
    hnd = KVLayout(**{**layout.__dict__, "format": KVFormat.HND})
    chunk_bytes = layout.object_nbytes(CHUNK_TOKENS)
    bpc = layout.blocks_per_chunk(CHUNK_TOKENS)
    print(
        f"layout: {NUM_LAYERS} layers, {NUM_HEADS} KV heads, head_dim {HEAD_DIM}, {DTYPE}, "
        f"block {BLOCK_SIZE}, chunk {CHUNK_TOKENS} tokens = {chunk_bytes / 2**20:.0f} MiB, "
        f"{NUM_BLOCKS} blocks/layer in /dev/shm"
    )

    cleanups = []
    layers = []
    try:
        for i in range(NUM_LAYERS):
            tensor, _, cleanup = create_shm_tensor(
                f"lmcache_bench_{os.getpid()}_{i}", layout.layer_shape(), DTYPE
            )
            cleanups.append(cleanup)
            tensor.view(torch.int16).fill_(i)  # fault the pages in
            layers.append(tensor)
        caches = {
            "NHD": PagedKVCache(layers, layout),
            # The same bytes read as HND: the copy cost is what matters here.
            "HND": PagedKVCache([t.view(hnd.layer_shape()) for t in layers], hnd),
        }
        gen = torch.Generator().manual_seed(0)
        block_ids = torch.randperm(NUM_BLOCKS, generator=gen)[: 16 * bpc].tolist()

        # Objects of one batch allocation (adjacent: one op per layer) and objects scattered
        # over an arena in shuffled order (one op per object and layer).
        arena = torch.empty(17 * chunk_bytes, dtype=torch.uint8).fill_(0)
        adjacent = [arena[i * chunk_bytes : (i + 1) * chunk_bytes] for i in range(16)]
        slots = torch.randperm(17, generator=gen)[:16].tolist()
        scattered = [arena[s * chunk_bytes : (s + 1) * chunk_bytes] for s in slots]

        ceilings = {n: memcpy_ceilings(n * chunk_bytes) for n in (1, 16)}
        for n, (t1, tmt, npy, busy) in ceilings.items():
            print(
                f"memcpy {n * chunk_bytes / 2**20:>4.0f} MiB: torch copy_ 1 thread {t1:6.2f} GB/s"
                f" | torch copy_ {torch.get_num_threads()} threads {tmt:6.2f} GB/s"
                f" | numpy copyto {npy:6.2f} GB/s | others {busy:.2f} cores"
            )

        print(
            f"{'op':<8}{'format':<7}{'chunks':>6}  {'objects':<10}{'threads':>7}"
            f"{'GB/s':>8}{'/torch 1t':>11}{'/numpy':>8}{'others':>8}"
        )

        def report(
            op: str, fmt: str, objects: list[torch.Tensor], kind: str, threads: int | None
        ) -> None:
            cache = caches[fmt]
            n = len(objects)
            ids = block_ids[: n * bpc]
            if op == "gather":
                fn: Callable[[], None] = lambda: cache.gather(ids, CHUNK_TOKENS, objects)  # noqa: E731
            else:
                fn = lambda: cache.scatter(objects, ids, CHUNK_TOKENS)  # noqa: E731
            default = torch.get_num_threads()
            if threads is not None:
                torch.set_num_threads(threads)
            try:
                seconds = median_seconds(fn, runs_for(n * chunk_bytes))
                used = torch.get_num_threads()
            finally:
                torch.set_num_threads(default)
            rate = n * chunk_bytes / seconds / GB
            t1, _, npy, _ = ceilings[n]
            print(
                f"{op:<8}{fmt:<7}{n:>6}  {kind:<10}{used:>7}{rate:8.2f}{rate / t1:10.0%}"
                f"{rate / npy:8.0%}{others['last']:8.2f}"
            )

        for fmt in ("NHD", "HND"):
            for op in ("gather", "scatter"):
                report(op, fmt, adjacent[:1], "single", None)
                report(op, fmt, adjacent, "adjacent", None)
                report(op, fmt, scattered, "scattered", None)
                report(op, fmt, adjacent, "adjacent", 1)

        # What the design replaced: one op per (chunk, kv, layer) in the KV dtype
        # (index_select into the object view; index_copy_ back), NHD, 16 adjacent objects.
        idx = [
            torch.tensor(block_ids[c * bpc : (c + 1) * bpc], dtype=torch.int64) for c in range(16)
        ]
        views = [
            o.view(DTYPE).view(2, NUM_LAYERS, bpc, BLOCK_SIZE, NUM_HEADS, HEAD_DIM)
            for o in adjacent
        ]

        def per_op_gather() -> None:
            for c in range(16):
                for kv in range(2):
                    for layer in range(NUM_LAYERS):
                        torch.index_select(layers[layer][kv], 0, idx[c], out=views[c][kv, layer])

        def per_op_scatter() -> None:
            for c in range(16):
                for kv in range(2):
                    for layer in range(NUM_LAYERS):
                        layers[layer][kv].index_copy_(0, idx[c], views[c][kv, layer])

        t1 = ceilings[16][0]
        for name, fn in (("gather", per_op_gather), ("scatter", per_op_scatter)):
            rate = 16 * chunk_bytes / median_seconds(fn, runs_for(16 * chunk_bytes)) / GB
            print(
                f"reference: {name} NHD 16 chunks, one bf16 op per (chunk, kv, layer): "
                f"{rate:.2f} GB/s ({rate / t1:.0%} of torch 1t memcpy), others "
                f"{others['last']:.2f} cores"
            )
        if others["worst"] > 0.2:
            print(
                f"WARNING: other processes kept up to {others['worst']:.2f} cores busy during a "
                "measurement; the figures of those lines are not representative"
            )
    finally:
        for cleanup in cleanups:
            cleanup()


if __name__ == "__main__":
    main()
