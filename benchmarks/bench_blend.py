"""Benchmarks of the blend engine against a real server process (issue 11's targets).

Run: ``.venv/bin/python benchmarks/bench_blend.py [--quick] [--lookup-only | --retrieve-only]
[--rounds N]``

* ``cb_unified_lookup`` latency p50/p99 over ZeroMQ for prompts of 5 to 64 chunks
  whose documents are all in L1, stored in another order (so every chunk but the
  first is a non-prefix hit); each lookup's session is ended outside the timing.
  Upstream 0.5.6 measured 1.46 / 1.63 / 2.02 ms p50 at 5 / 17 / 29 chunks; the
  target is <= 0.5 ms.
* ``cb_retrieve_pre_computed`` on CPU: the bytes written per second for 16
  reordered chunks of a Llama-3-8B-like layout (32 layers, 8 KV heads, head dim
  128, bf16, 256-token chunks: 32 MiB per chunk), K re-rotated, next to a
  single-thread memcpy of the same bytes measured in the same run (the ratio is
  the figure to compare across machines).

Prints a Markdown report and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine_info, memcpy_gbps, percentile
from lmcache_core.client import MPClient
from lmcache_core.client.cpu_worker import CpuKVWorker, shared_copy
from lmcache_core.protocol.codec import encode_device_handle
from lmcache_core.protocol.errors import BadRequestError
from lmcache_core.protocol.types import CacheKey, pack_token_blob, pack_token_ids
from lmcache_core.transfer.layout import KVFormat, KVLayout
from tests.server_process import server_on_free_ports

CHUNK = 256
BLOCK = 16


def rope_cache(max_position: int, rot: int) -> torch.Tensor:
    inv = 1.0 / (10000.0 ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))
    freqs = torch.outer(torch.arange(max_position, dtype=torch.float64), inv)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(torch.float32)


def register_rope(client: MPClient, worker: CpuKVWorker, head_dim: int) -> Any:
    cache = rope_cache(32768, head_dim)
    handle, tensor, cleanup = shared_copy(cache)
    client.call(
        "cb_register_rope",
        worker.instance_id,
        [encode_device_handle(handle)],
        head_dim,
        True,
        [],
        [],
        [],
        "",
    )
    return tensor, cleanup


def key(
    worker: CpuKVWorker, tokens: list[int], rid: str, *, rank: bool, blob: bool = False
) -> CacheKey:
    """A key of ``tokens``: upstream's msgpack list, or with ``blob`` the uint32 blob form."""
    packed = pack_token_blob(tokens) if blob else pack_token_ids(tokens)
    return worker.key(packed, 0, len(tokens), rid, worker=rank)


class TokenForm:
    """Which token form a server takes: the blob until it answers one with ``bad_request``.

    Try once and remember: the handshake's reply is upstream's fixed
    ``[version, compatible]`` (no room to announce more), so a blob key is sent
    first and, if the server refuses it (an older blend engine, another engine),
    the list form from then on, the request sent again as a list.
    """

    def __init__(self, prefer_blob: bool = True) -> None:
        self.blob = prefer_blob

    def key(self, worker: CpuKVWorker, tokens: list[int], rid: str) -> CacheKey:
        """A lookup key of ``tokens`` in the form this server is believed to take."""
        return key(worker, tokens, rid, rank=False, blob=self.blob)

    def lookup(
        self, client: MPClient, lookup_key: CacheKey, worker: CpuKVWorker, tokens: list[int]
    ) -> Any:
        """``cb_unified_lookup`` of ``lookup_key`` (from :meth:`key`), polled until it answers.

        A blob refused with ``bad_request`` is asked again as a list, and lists from then on.
        """
        if not self.blob:
            return poll(client, lookup_key)
        try:
            return poll(client, lookup_key)
        except BadRequestError:
            self.blob = False
        return poll(client, key(worker, tokens, lookup_key.request_id, rank=False))


def poll(client: MPClient, lookup_key: CacheKey) -> Any:
    while True:
        result = client.call("cb_unified_lookup", lookup_key, 1)
        if result is not None:
            return result


def bench_lookup(
    client: MPClient, sizes: list[int], rounds: int, form: TokenForm | None = None
) -> dict[str, Any]:
    """p50/p99 of cb_unified_lookup with every document in L1 (tiny KV: the lookup only).

    ``form``: the lookups' tokens as :class:`TokenForm` sends them (the blob where the
    server takes it); None: upstream's msgpack list.
    """
    layout = KVLayout(KVFormat.NHD, 1, 64 * 16 + 1, BLOCK, 1, 8, torch.bfloat16)
    figures: dict[str, Any] = {}
    with CpuKVWorker(client, layout, model_name="bench-lookup") as worker:
        worker.register()
        rng = random.Random(5)
        for size in sizes:
            docs = [[rng.randrange(128000) for _ in range(CHUNK)] for _ in range(size)]
            stored = [t for d in docs for t in d]
            blocks = list(range(1, 1 + len(stored) // BLOCK))
            assert worker.store(key(worker, stored, f"s{size}", rank=True), blocks)
            # The same documents, the first kept, the others reversed: 1 prefix chunk + the rest.
            query = docs[0] + [t for d in reversed(docs[1:]) for t in d] + docs[0][:40]
            times = []
            for i in range(rounds):
                rid = f"l{size}-{i}"
                if form is None:
                    lookup_key = key(worker, query, rid, rank=False)
                    started = time.perf_counter()
                    result = poll(client, lookup_key)
                else:
                    lookup_key = form.key(worker, query, rid)
                    started = time.perf_counter()
                    result = form.lookup(client, lookup_key, worker, query)
                times.append(time.perf_counter() - started)
                client.end_session(rid)
            hits = len(result.non_prefix_segments) + result.prefix_coverage_tokens // CHUNK
            assert hits == size, (size, hits)
            figures[str(size)] = {
                "p50_ms": percentile(times, 0.5) * 1e3,
                "p99_ms": percentile(times, 0.99) * 1e3,
                "hit_chunks": hits,
            }
    return figures


def bench_retrieve(client: MPClient, chunks: int, rounds: int) -> dict[str, Any]:
    """CPU retrieve of ``chunks`` reordered 32 MiB chunks, against memcpy of the same bytes."""
    # Room for the stored prompt and, after it, the reordered one (block 0 is the null block).
    layout = KVLayout(
        KVFormat.NHD, 32, 2 * (chunks + 1) * CHUNK // BLOCK + 1, BLOCK, 8, 128, torch.bfloat16
    )
    with CpuKVWorker(client, layout, model_name="bench-retrieve") as worker:
        worker.register()
        keep = register_rope(client, worker, 128)
        try:
            for layer in worker.layers:
                layer.normal_()
            rng = random.Random(9)
            docs = [[rng.randrange(128000) for _ in range(CHUNK)] for _ in range(chunks + 1)]
            stored = [t for d in docs for t in d]
            src = list(range(1, 1 + len(stored) // BLOCK))
            assert worker.store(key(worker, stored, "r-store", rank=True), src)
            query = docs[0] + [t for d in reversed(docs[1:]) for t in d]
            dst = list(range(1 + len(stored) // BLOCK, 1 + 2 * len(stored) // BLOCK))
            nbytes = layout.object_nbytes(CHUNK) * chunks
            times = []
            for i in range(rounds):
                rid = f"r-{i}"
                result = poll(client, key(worker, query, rid, rank=False))
                segments = result.non_prefix_segments
                assert len(segments) == chunks, len(segments)
                started = time.perf_counter()
                _, ok = client.call(
                    "cb_retrieve_pre_computed",
                    key(worker, query, rid, rank=True),
                    segments,
                    [dst],
                    worker.instance_id,
                    b"",
                )
                times.append(time.perf_counter() - started)
                assert ok
                client.end_session(rid)
        finally:
            keep[1]()
    seconds = sorted(times)[len(times) // 2]
    gbps = nbytes / seconds / 1e9
    ceiling = memcpy_gbps(nbytes)
    return {
        "chunks": chunks,
        "bytes": nbytes,
        "median_s": seconds,
        "gbps": gbps,
        "memcpy_gbps": ceiling,
        "ratio_to_memcpy": gbps / ceiling,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and sizes")
    parser.add_argument(
        "--lookup-only", action="store_true", help="only cb_unified_lookup (no retrieve)"
    )
    parser.add_argument(
        "--retrieve-only", action="store_true", help="only the CPU retrieve (no lookups)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="lookups per size")
    parser.add_argument(
        "--token-form",
        choices=("list", "blob"),
        default="list",
        help="the lookups' tokens: upstream's msgpack list, or the uint32 blob (TokenForm)",
    )
    args = parser.parse_args()
    sizes = [5, 17, 29, 64] if not args.quick else [5, 29]
    rounds = args.rounds or (200 if not args.quick else 40)
    report: dict[str, Any] = {"machine": machine_info()}
    with (
        server_on_free_ports(
            "--engine-type",
            "blend",
            "--l1-size-gb",
            "2",
            "--eviction-policy",
            "LRU",
            "--max-cpu-workers",
            "1",
            "--max-gpu-workers",
            "1",
        ) as server,
        MPClient(server.zmq_url, timeout=120.0) as client,
    ):
        if not args.retrieve_only:
            form = TokenForm() if args.token_form == "blob" else None
            report["unified_lookup"] = bench_lookup(client, sizes, rounds, form)
            report["token_form"] = "blob" if form is not None and form.blob else "list"
        if not args.lookup_only:
            report["retrieve"] = bench_retrieve(
                client, 16 if not args.quick else 4, 5 if not args.quick else 3
            )
    if "unified_lookup" in report:
        print(f"## cb_unified_lookup (documents in L1; tokens as a {report['token_form']})\n")
        print("| chunks | p50 ms | p99 ms | upstream p50 ms |")
        print("| --- | --- | --- | --- |")
        upstream = {"5": "1.46", "17": "1.63", "29": "2.02"}
        for size, row in report["unified_lookup"].items():
            p50, p99 = row["p50_ms"], row["p99_ms"]
            print(f"| {size} | {p50:.3f} | {p99:.3f} | {upstream.get(size, '-')} |")
    if "retrieve" in report:
        r = report["retrieve"]
        print("\n## cb_retrieve_pre_computed on CPU\n")
        print(
            f"{r['chunks']} chunks, {r['bytes'] / 2**20:.0f} MiB: {r['median_s'] * 1e3:.1f} ms, "
            f"{r['gbps']:.2f} GB/s; memcpy {r['memcpy_gbps']:.2f} GB/s; "
            f"ratio {r['ratio_to_memcpy']:.2f}"
        )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
