"""The lookup handler in-process: what one lookup costs the server, without ZeroMQ.

Run: ``.venv/bin/python benchmarks/bench_lookup_path.py [--rounds N]``

Builds the real data-path objects (an L1 on anonymous memory, the token hash
cache, the default lookup service with its sessions and prefetch pool, an event
bus without subscribers) and times ``lookup`` + ``end_session`` of a 64-chunk
prefix: a full L1 hit (the case the 5 % budget of issue 14 is about), and a
prefix never stored (every chunk's miss cause classified). The ceiling is the
same loop's token hashing alone (the token hash cache's lookup of the same
bytes), measured in the same run. The script only uses constructor arguments
every version of the lookup service takes, so the same file times an older
tree too (``PYTHONPATH=OLD_TREE python benchmarks/bench_lookup_path.py``).
Prints a Markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import msgspec

# Appended, not prepended: PYTHONPATH (an older tree) decides where lmcache_core comes from.
sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine_info
from lmcache_core.engine.chunk_keys import ChunkKeys
from lmcache_core.engine.contract import RequestContext
from lmcache_core.engine.lookup import LookupService
from lmcache_core.engine.prefetch_pool import PrefetchPool
from lmcache_core.engine.request_events import RequestEvents
from lmcache_core.engine.token_cache import TokenHashCache
from lmcache_core.hashing import make_hasher
from lmcache_core.observability.bus import EventBus
from lmcache_core.plugin import PluginKind
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.protocol.types import WireCacheKey
from lmcache_core.storage.arena import Arena
from lmcache_core.storage.eviction import EvictionSettings
from lmcache_core.storage.l1 import L1Manager

CHUNK = 256
CHUNKS = 64
OBJECT = 4096
CONTEXT = RequestContext(b"bench", "lookup")


def wire_key(tokens: list[int], request: str) -> WireCacheKey:
    return WireCacheKey(
        model_name="bench",
        world_size=1,
        worker_id=None,
        token_ids=msgspec.Raw(msgspec.msgpack.encode(tokens)),
        start=0,
        end=len(tokens),
        request_id=request,
    )


def build() -> tuple[LookupService, L1Manager, TokenHashCache]:
    capacity = 64 << 20
    policy = PluginRegistry(strict=True).build(
        PluginKind.EVICTION_POLICY,
        "LRU",
        EvictionSettings(trigger_watermark=0.95, eviction_ratio=0.1, capacity_bytes=capacity),
    )
    l1 = L1Manager(
        arena=Arena(capacity + 4096, kind="anonymous"),
        capacity_bytes=capacity,
        init_bytes=capacity,
        align_bytes=4096,
        write_ttl_s=600,
        read_ttl_s=600,
        policy=policy,
        trigger_watermark=0.95,
        eviction_ratio=0.1,
    )
    tokens = TokenHashCache(make_hasher("blake3"), CHUNK)
    pool = PrefetchPool(1)
    pool.start()
    service = LookupService(
        l1=l1,
        l2=None,
        chunk_keys=ChunkKeys(tokens),
        request_events=RequestEvents(EventBus(), CHUNK),
        prefetch_pool=pool,
        object_nbytes=lambda _model, _ws: OBJECT,
        session_ttl_s=600,
    )
    return service, l1, tokens


def fill(service: LookupService, l1: L1Manager, toks: list[int]) -> None:
    """Commit every chunk of ``toks`` to L1 (what a store leaves behind)."""
    key = wire_key(toks, "fill")
    session = service.sessions.get("fill")
    hashes = service.chunk_keys.hashes(key, session, len(toks) // CHUNK)
    keys = service.chunk_keys.keys(key, hashes, 0)
    reservations = [r for r in l1.reserve(keys, OBJECT) if r is not None]
    l1.commit(reservations)
    service.sessions.end("fill")


def time_lookups(service: LookupService, toks: list[int], samples: int, tag: str) -> float:
    """Median seconds of ``lookup`` + ``end_session`` of ``toks``."""
    key = wire_key(toks, tag)
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        service.lookup(CONTEXT, key, 1)
        service.end_session(CONTEXT, tag)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_hashing(tokens: TokenHashCache, toks: list[int], samples: int) -> float:
    raw = bytes(msgspec.msgpack.encode(toks))
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        tokens.hashes(raw, CHUNKS)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of 2,000 lookups each")
    args = parser.parse_args()
    rng = random.Random(5)
    hit = [rng.randrange(50000) for _ in range(CHUNKS * CHUNK)]
    cold = [rng.randrange(50000) for _ in range(CHUNKS * CHUNK)]
    service, l1, tokens = build()
    fill(service, l1, hit)
    rows: dict[str, list[float]] = {"hit": [], "miss": [], "hash": []}
    for _ in range(args.rounds):  # interleaved, so drifting load hits every figure alike
        rows["hit"].append(time_lookups(service, hit, 2000, "hit"))
        rows["miss"].append(time_lookups(service, cold, 2000, "miss"))
        rows["hash"].append(time_hashing(tokens, hit, 2000))
    best = {name: min(values) * 1e6 for name, values in rows.items()}
    print("| measure | best median of the rounds |")
    print("| --- | --- |")
    print(f"| lookup + end_session, 64-chunk full L1 hit | {best['hit']:.1f} us |")
    print(f"| lookup + end_session, 64 chunks never stored | {best['miss']:.1f} us |")
    print(f"| ceiling: token hash cache lookup of the same tokens | {best['hash']:.1f} us |")
    rounds = {name: [v * 1e6 for v in values] for name, values in rows.items()}
    print(json.dumps({"machine": machine_info(), "us": best, "rounds_us": rounds}))


if __name__ == "__main__":
    main()
