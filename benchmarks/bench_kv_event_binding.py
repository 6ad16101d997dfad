"""What the KV event stream's token bindings cost on the hashing path.

``TokenHashCache.hashes`` with and without the KV event log bound as its
binder, measured in the same run, interleaved: prompts the token cache has not
seen (decode, hash and bind every chunk) and a prompt it has seen (one look-up).
Prints one JSON line with the p50s and their ratios.

Usage: python benchmarks/bench_kv_event_binding.py [--chunks 64] [--calls 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import msgspec

from benchmarks.common import machine_info
from lmcache_core.engine.token_cache import TokenHashCache
from lmcache_core.hashing import make_hasher
from lmcache_core.kv_events.log import KVEventLog

CHUNK = 256


def p50_us(bound: bool, payloads: list[bytes], chunks: int) -> float:
    cache = TokenHashCache(make_hasher("blake3"), CHUNK)
    cache.binder = KVEventLog() if bound else None
    times = []
    for payload in payloads:
        start = time.perf_counter()
        cache.hashes(payload, chunks)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(1)
    encoder = msgspec.msgpack.Encoder()

    def prompt() -> bytes:
        return encoder.encode([rng.randrange(1 << 31) for _ in range(args.chunks * CHUNK)])

    unseen = [prompt() for _ in range(args.calls)]
    seen = [unseen[0]] * args.calls
    figures: dict[str, list[float]] = {
        k: [] for k in ("unseen", "unseen_bound", "seen", "seen_bound")
    }
    for _ in range(args.rounds):  # interleaved, so drift of the machine hits both sides
        figures["unseen"].append(p50_us(False, unseen, args.chunks))
        figures["unseen_bound"].append(p50_us(True, unseen, args.chunks))
        figures["seen"].append(p50_us(False, seen, args.chunks))
        figures["seen_bound"].append(p50_us(True, seen, args.chunks))
    medians = {k: round(statistics.median(v), 1) for k, v in figures.items()}
    report = {
        "chunks": args.chunks,
        "chunk_size": CHUNK,
        "p50_us": medians,
        "ratio_unseen": round(medians["unseen_bound"] / medians["unseen"], 3),
        "ratio_seen": round(medians["seen_bound"] / medians["seen"], 3),
        "machine": machine_info(),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
