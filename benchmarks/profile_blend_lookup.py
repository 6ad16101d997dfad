"""Where a ``cb_unified_lookup``'s server-side time goes: the handler in-process.

Run: ``.venv/bin/python benchmarks/profile_blend_lookup.py [--chunks N..] [--lookups N] [--fresh]
[--blob] [--profile [--sort cumulative]] [--inline] [--events] [--alternate PATCH.py]``

Assembles the real data path with ``--engine-type blend`` (real L1, token hash
cache, lookup service, fingerprint index; no request server, no socket), stores
``--chunks`` 256-token documents through a CPU worker, and calls the
``cb_unified_lookup`` handler with them reordered (the first kept, the others
reversed: one prefix chunk, the rest non-prefix hits), then ``end_session``, as
``bench_blend.py`` does over ZeroMQ. Prints the median of the lookup alone; with
``--profile`` the functions by own time under cProfile (which inflates small
calls: use it to find what to optimise, the median to measure it). The cyclic GC is tuned
as the server tunes it (``tune_gc``: start-up frozen, rarer young collections).

``--alternate PATCH.py`` measures a change on this host, where two runs of the
same tree one after the other differ by up to 40 %: the file's ``install(switch)``
patches the code so that it behaves the other way (usually: as before the change)
while ``switch.on`` is true, and the lookups alternate, one with the switch on,
the next off; the medians of both sides are printed. ``benchmarks/alternates/``
keeps the patches used for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import msgspec
import torch

sys.path.append(str(Path(__file__).resolve().parent.parent))

from lmcache_obs_metrics.subscriber import MetricsSubscriber

from benchmarks.alternate_patch import Switch, load_patch
from lmcache_core.client.cpu_worker import CpuKVWorker
from lmcache_core.config.loading import load_config
from lmcache_core.config.resolution import resolve_plugins
from lmcache_core.engine.contract import RequestContext, WouldBlock
from lmcache_core.observability.bus import EventBus
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.protocol.codec import encode_device_handle
from lmcache_core.protocol.types import WireCacheKey, pack_token_blob
from lmcache_core.server.data_path import build_data_path
from lmcache_core.server.runner import tune_gc
from lmcache_core.transfer.layout import KVFormat, KVLayout

CHUNK = 256
BLOCK = 16
CTX = RequestContext(b"client", "cb_unified_lookup")


def wire_key(
    tokens: list[int], rid: str, worker_id: int | None, blob: bool = False
) -> WireCacheKey:
    return WireCacheKey(
        model_name="profile",
        world_size=1,
        worker_id=worker_id,
        token_ids=pack_token_blob(tokens) if blob else msgspec.Raw(msgspec.msgpack.encode(tokens)),
        start=0,
        end=len(tokens),
        request_id=rid,
        num_kv_readers=1,
    )


def served_inline(pool: Any, fallbacks: list[int]) -> Callable[..., Any]:
    """The request loop's order: ``try_inline``, the pool's handler when it would block.

    A background thread holding the L1 lock at that moment makes ``try_inline``
    decline (the server then runs the pool's handler); each such call is counted.
    """

    def lookup(ctx: RequestContext, key: WireCacheKey, tp_size: int) -> Any:
        try:
            return pool.try_inline(ctx, key, tp_size)
        except WouldBlock:
            fallbacks.append(1)
            return pool(ctx, key, tp_size)

    return lookup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[5, 17, 29, 64])
    parser.add_argument("--lookups", type=int, default=500)
    parser.add_argument("--profile", action="store_true", help="cProfile the largest size")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--sort", default="tottime", help="--profile's order (pstats key: tottime, cumulative)"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="40 new random tokens at the end of every prompt"
    )
    parser.add_argument(
        "--blob", action="store_true", help="the lookups' tokens as a uint32 blob (pack_token_blob)"
    )
    parser.add_argument(
        "--inline",
        action="store_true",
        help="call the handler's try_inline (what the request loop runs first), not the pool's",
    )
    parser.add_argument(
        "--alternate",
        metavar="PATCH.py",
        help="alternate lookups with the patch's switch on and off; print both medians",
    )
    parser.add_argument(
        "--events",
        action="store_true",
        help="the event bus on, with the metrics subscriber (a default server's events); "
        "off by default, so the figure is the handler's own",
    )
    args = parser.parse_args()
    tune_gc()  # as the server does: cProfile would charge young collections to their callers
    switch = Switch()
    if args.alternate:
        load_patch(args.alternate).install(switch)
    fallbacks: list[int] = []
    values = {
        "l1_size_gb": 0.2,
        "eviction_policy": "LRU",
        "chunk_size": CHUNK,
        "shm_name": f"lmcache-prof-{uuid.uuid4().hex[:8]}",
        "engine_type": "blend",
    }
    config = load_config(values)
    registry = PluginRegistry(strict=True)
    layout = KVLayout(KVFormat.NHD, 1, 64 * 16 * 2 + 1, BLOCK, 1, 8, torch.bfloat16)
    with ExitStack() as cleanup, tempfile.TemporaryDirectory():
        bus = EventBus(enabled=args.events)
        if args.events:  # what a default server publishes to: its metrics subscriber
            bus.subscribe(MetricsSubscriber("profile", 0.01))
            bus.start()
            cleanup.callback(bus.stop, 5.0)
        built = build_data_path(config, registry, resolve_plugins(config, registry), bus, cleanup)
        started = [c for c in built.components if c is not built.request_server]
        for component in started:
            component.start()
        handlers = built.engine.handlers()
        worker = CpuKVWorker(None, layout, instance_id=7)  # type: ignore[arg-type]  # no client
        try:
            handles = [encode_device_handle(h) for h in worker.handles]
            handlers["register_kv_cache"](
                CTX, 7, handles, "profile", 1, "vllm", {"kv_layout": "NHD"}, []
            )
            rng = random.Random(5)
            for size in args.chunks:
                docs = [[rng.randrange(128000) for _ in range(CHUNK)] for _ in range(size)]
                stored = [t for d in docs for t in d]
                blocks = list(range(1, 1 + len(stored) // BLOCK))
                ok = handlers["store"](CTX, wire_key(stored, f"s{size}", 0), 7, [blocks], b"")
                assert ok[1]
                query = docs[0] + [t for d in reversed(docs[1:]) for t in d] + docs[0][:40]
                pool, end = handlers["cb_unified_lookup"], handlers["end_session"]
                lookup = served_inline(pool, fallbacks) if args.inline else pool
                fallbacks.clear()
                times: dict[bool, list[float]] = {False: [], True: []}
                for i in range(args.lookups):
                    rid = f"l{size}-{i}"
                    tail = [rng.randrange(128000) for _ in range(40)] if args.fresh else []
                    key = wire_key(query + tail, rid, None, args.blob)
                    switch.on = bool(args.alternate) and i % 2 == 1
                    begin = time.perf_counter()
                    result = lookup(CTX, key, 1)
                    times[switch.on].append(time.perf_counter() - begin)
                    assert result is not None
                    end(CTX, rid)
                switch.on = False
                hits = len(result.non_prefix_segments) + result.prefix_coverage_tokens // CHUNK
                assert hits == size, (size, hits)
                served = f", {len(fallbacks)} served by the pool" if args.inline else ""
                median = statistics.median(times[False]) * 1e6
                if args.alternate:
                    patched = statistics.median(times[True]) * 1e6
                    print(
                        f"{size} chunks: median {median:.1f} us as is, {patched:.1f} us patched "
                        f"({median / patched:.3f}){served}"
                    )
                else:
                    print(f"{size} chunks: median {median:.0f} us{served}")
            if args.profile:
                profile = cProfile.Profile()
                for i in range(args.lookups):
                    rid = f"p-{i}"
                    tail = [rng.randrange(128000) for _ in range(40)] if args.fresh else []
                    key = wire_key(query + tail, rid, None, args.blob)
                    profile.enable()
                    lookup(CTX, key, 1)
                    profile.disable()
                    end(CTX, rid)
                pstats.Stats(profile).sort_stats(args.sort).print_stats(args.top)
        finally:
            worker.close()
            for component in reversed(started):
                component.stop(5.0)


if __name__ == "__main__":
    main()
