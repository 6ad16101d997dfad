"""GPU data path: store and retrieve GB/s through a real server, next to raw pinned cudaMemcpy.

Run on a CUDA host (``tools/device_check.sh`` does): it starts a server subprocess, registers a
Llama-3-8B-shaped KV cache (32 layers, 8 KV heads, head dim 128, bf16, 16-token blocks:
32 MiB per 256-token chunk) from this process over CUDA IPC, and times STORE (device ->
pinned L1) and RETRIEVE (pinned L1 -> device) of 1, 16 and 64 chunks, each measured from the
request to the completion of the server's copies (the worker waits on the returned event).
In the same run it times one raw pinned ``cudaMemcpy`` of the same bytes each way (the
ceiling) and reports the ratios. Finishes in well under 4 minutes on an H100/H200.

Usage: python -m benchmarks.bench_gpu [--out FILE.json] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import machine_info
from lmcache_core.client import MPClient
from tests.gpu.cuda_worker import CudaKVWorker
from tests.server_process import server_on_free_ports

LAYERS, HEADS, DIM, BLOCK, CHUNK = 32, 8, 128, 16, 256
CHUNK_COUNTS = (1, 16, 64)
CHUNK_BYTES = 2 * LAYERS * CHUNK * HEADS * DIM * 2  # 32 MiB


def raw_copy_gbps(nbytes: int, repeat: int) -> tuple[float, float]:
    """Raw pinned cudaMemcpy of ``nbytes``: (device->host, host->device) GB/s, median."""
    device = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    out = []
    for dst, src in ((host, device), (device, host)):
        times = []
        for _ in range(repeat + 1):
            torch.cuda.synchronize()
            start = time.perf_counter()
            dst.copy_(src, non_blocking=True)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        out.append(nbytes / statistics.median(times[1:]) / 1e9)
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu needs a CUDA device")
    max_chunks = max(CHUNK_COUNTS)
    blocks_per_chunk = CHUNK // BLOCK
    num_blocks = 2 * max_chunks * blocks_per_chunk + 1
    kv = [
        torch.randn(2, num_blocks, BLOCK, HEADS, DIM, device="cuda").to(torch.bfloat16)
        for _ in range(LAYERS)
    ]
    # L1 holds every stored chunk of the run (repeat x sum of counts) with room to spare.
    l1_gb = max(8, (args.repeat + 1) * sum(CHUNK_COUNTS) * CHUNK_BYTES * 1.5 / 2**30)
    # Eager pinning: the copies are timed into a fully pinned L1, with no background
    # registration competing (benchmarks/bench_pinning.py measures lazy pinning).
    server_args = ("--l1-size-gb", f"{l1_gb:.0f}", "--eviction-policy", "LRU", "--no-l1-use-lazy")
    results: dict[str, object] = {"machine": machine_info(), "gpu": torch.cuda.get_device_name()}
    with server_on_free_ports(*server_args, "--chunk-size", str(CHUNK), timeout=180) as server:
        worker = CudaKVWorker(MPClient(server.zmq_url, timeout=120), kv, {"kv_layout": "NHD"})
        worker.register()
        rows = []
        for chunks in CHUNK_COUNTS:
            nbytes = chunks * CHUNK_BYTES
            store_t, retrieve_t = [], []
            for rep in range(args.repeat + 1):  # the first is a warm-up (import, staging)
                tokens = [random.randrange(100_000) for _ in range(chunks * CHUNK)]
                rid = f"bench-{chunks}-{rep}"
                blocks = list(range(1, 1 + chunks * blocks_per_chunk))
                torch.cuda.synchronize()
                start = time.perf_counter()
                assert worker.store(worker.key(tokens, len(tokens), rid + "-s"), blocks)
                stored = time.perf_counter() - start
                assert worker.lookup(tokens, len(tokens), rid) == chunks
                load = list(
                    range(
                        1 + max_chunks * blocks_per_chunk,
                        1 + (max_chunks + chunks) * blocks_per_chunk,
                    )
                )
                torch.cuda.synchronize()
                start = time.perf_counter()
                assert worker.retrieve(worker.key(tokens, len(tokens), rid), load)
                retrieved = time.perf_counter() - start
                worker.client.end_session(rid)
                if rep:
                    store_t.append(stored)
                    retrieve_t.append(retrieved)
            raw_d2h, raw_h2d = raw_copy_gbps(nbytes, args.repeat)
            store_gbps = nbytes / statistics.median(store_t) / 1e9
            retrieve_gbps = nbytes / statistics.median(retrieve_t) / 1e9
            rows.append(
                {
                    "chunks": chunks,
                    "bytes": nbytes,
                    "store_gbps": round(store_gbps, 2),
                    "retrieve_gbps": round(retrieve_gbps, 2),
                    "raw_d2h_gbps": round(raw_d2h, 2),
                    "raw_h2d_gbps": round(raw_h2d, 2),
                    "store_ratio": round(store_gbps / raw_d2h, 3),
                    "retrieve_ratio": round(retrieve_gbps / raw_h2d, 3),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        worker.unregister()
    results["rows"] = rows
    text = json.dumps(results, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
