"""The trace replay's command line (``benchmarks/bench_trace.py`` and ``lmcache bench trace``).

With ``--url`` it replays against a running server; without, it starts one
itself (``--server ours|upstream``) with the L1 size, eviction settings and L2
flags given, and stops it by PID at the end. ``--simulate`` runs the offline
model of the same replay (:mod:`lmcache_bench_trace.simulator`) and reports its
hit ratio next to the server's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmcache_bench_trace.replay import replay
from lmcache_bench_trace.report import print_table
from lmcache_bench_trace.servers import ServerProcess, start_server
from lmcache_bench_trace.settings import KVShape, ReplaySettings
from lmcache_bench_trace.simulator import SimSettings, Simulator, l1_capacity_bytes
from lmcache_bench_trace.trace import iter_trace, load_trace

MAX_CONCURRENCY = 16


def parser() -> argparse.ArgumentParser:
    """The options (see ``--help``)."""
    p = argparse.ArgumentParser(
        prog="lmcache bench trace",
        description="Replay a Mooncake-format trace against an LMCache MP server.",
    )
    p.add_argument("--trace", required=True, type=Path, help="the trace file (JSONL)")
    p.add_argument(
        "--url", help="a running server's tcp://HOST:PORT (default: start one, see --server)"
    )
    p.add_argument("--http-url", help="the running server's HTTP base URL (status, L2 counters)")
    p.add_argument("--server-pid", type=int, help="the running server's PID (its CPU time, RSS)")
    p.add_argument("--server", choices=("ours", "upstream"), default="ours", help="which to start")
    p.add_argument("--client", choices=("ours", "upstream"), default="ours")
    p.add_argument(
        "--compat-python",
        default=os.environ.get("LMCACHE_COMPAT_PYTHON", ""),
        help="the upstream 0.5.6 environment's python (default: $LMCACHE_COMPAT_PYTHON)",
    )
    p.add_argument("--concurrency", type=int, default=1, help="engine clients, 1-16")
    p.add_argument("--max-requests", type=int, help="replay only the first N requests")
    p.add_argument("--time-budget-s", type=float, help="stop issuing requests after S seconds")
    p.add_argument("--as-fast-as-possible", action="store_true", help="ignore arrival times")
    p.add_argument("--time-scale", type=float, default=1.0, help="arrivals N times faster")
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--num-layers", type=int, default=KVShape.num_layers)
    p.add_argument("--num-heads", type=int, default=KVShape.num_heads)
    p.add_argument("--head-dim", type=int, default=KVShape.head_dim)
    p.add_argument("--l1-size-gb", type=float, default=0.25, help="L1 of a started server")
    p.add_argument("--eviction-policy", default="LRU")
    p.add_argument("--eviction-trigger-watermark", type=float, default=0.8)
    p.add_argument("--eviction-ratio", type=float, default=0.2)
    p.add_argument(
        "--l2-adapter", action="append", default=[], metavar="JSON", help="L2 of a started server"
    )
    p.add_argument("--l2-store-policy", help="L2 store policy of a started server")
    p.add_argument(
        "--server-arg", action="append", default=[], metavar="ARG", help="another server flag"
    )
    p.add_argument("--simulate", action="store_true", help="also run the offline simulator")
    p.add_argument(
        "--sim-l2-chunks",
        type=int,
        help="the simulator's L2 capacity in chunks (0: unbounded; default: no L2)",
    )
    p.add_argument(
        "--sim-l2-admit-after", type=int, default=1, help="simulated frequency admission N"
    )
    p.add_argument(
        "--sync-eviction",
        action="store_true",
        help="after each request wait for the eviction controller's round (parity runs; "
        "needs --concurrency 1)",
    )
    p.add_argument("--json-out", type=Path, help="write the summary here")
    p.add_argument("--quiet", action="store_true", help="no table, no progress bar")
    return p


def count_requests(trace: Path, max_requests: int | None) -> int:
    """How many requests the replay will issue (at most; a time budget may stop it sooner)."""
    return sum(1 for _ in iter_trace(trace, max_requests))


def server_flags(args: argparse.Namespace) -> list[str]:
    """The flags of a server this run starts."""
    flags = ["--l1-size-gb", f"{args.l1_size_gb:g}", "--eviction-policy", args.eviction_policy]
    flags += ["--eviction-trigger-watermark", f"{args.eviction_trigger_watermark:g}"]
    flags += ["--eviction-ratio", f"{args.eviction_ratio:g}", "--chunk-size", str(args.chunk_size)]
    for adapter in args.l2_adapter:
        flags += ["--l2-adapter", adapter]
    if args.l2_store_policy:
        flags += ["--l2-store-policy", args.l2_store_policy]
    return flags + list(args.server_arg)


def simulate(args: argparse.Namespace, shape: KVShape) -> dict[str, Any]:
    """The simulator's totals for this run's trace prefix and settings."""
    from lmcache_core.plugin import PluginKind
    from lmcache_core.plugin.registry import PluginRegistry
    from lmcache_core.storage.eviction import EvictionPolicy, EvictionSettings

    capacity = l1_capacity_bytes(args.l1_size_gb)
    policy = PluginRegistry().build(
        PluginKind.EVICTION_POLICY,
        args.eviction_policy,
        EvictionSettings(args.eviction_trigger_watermark, args.eviction_ratio, capacity),
    )
    if not isinstance(policy, EvictionPolicy):
        raise TypeError(f"{args.eviction_policy} did not build an eviction policy")
    sim = Simulator(
        SimSettings(
            capacity_bytes=capacity,
            object_bytes=shape.object_bytes(args.chunk_size),
            trigger_watermark=args.eviction_trigger_watermark,
            eviction_ratio=args.eviction_ratio,
            chunk_size=args.chunk_size,
            l2_capacity_chunks=args.sim_l2_chunks,
            l2_admit_after=args.sim_l2_admit_after,
        ),
        policy,
    )
    result = sim.run(load_trace(args.trace, args.max_requests))
    return {
        "simulated_hit_ratio": result.hit_ratio,
        "simulated_l1_hit_ratio": result.l1_hit_ratio,
        "simulated_l2_hit_ratio": result.l2_hit_ratio,
        "simulated": {
            "requests": result.requests,
            "slots": sim.slots,
            "stored_chunks": result.stored_chunks,
            "evicted_chunks": result.evicted_chunks,
            "watermark_rounds": result.watermark_rounds,
        },
        "simulated_hits": {str(i): h for i, h in enumerate(result.per_request_hits)},
    }


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run the replay (and the simulator), print and return the summary.

    Raises:
        SystemExit: Bad options (argparse's message).
    """
    p = parser()
    args = p.parse_args(argv)
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        p.error(f"--concurrency must be in 1..{MAX_CONCURRENCY}")
    if args.sync_eviction and args.concurrency != 1:
        p.error("--sync-eviction needs --concurrency 1")
    if args.time_scale <= 0:
        p.error("--time-scale must be > 0")
    needs_compat = args.client == "upstream" or (args.server == "upstream" and not args.url)
    if needs_compat and not args.compat_python:
        p.error("upstream needs --compat-python or LMCACHE_COMPAT_PYTHON")
    shape = KVShape(num_layers=args.num_layers, num_heads=args.num_heads, head_dim=args.head_dim)
    server: ServerProcess | None = None
    url, http_url, pid = args.url, args.http_url, args.server_pid
    summary: dict[str, Any]
    with tempfile.TemporaryDirectory(prefix="lmcache-trace-server-") as folder:
        if url is None:
            python = args.compat_python if args.server == "upstream" else None
            server = start_server(
                args.server, server_flags(args), Path(folder) / "server.log", python=python
            )
            url, http_url, pid = server.url, server.http_url, server.pid
        try:
            settings = ReplaySettings(
                trace=str(args.trace),
                url=url,
                client=args.client,
                concurrency=args.concurrency,
                max_requests=args.max_requests,
                time_budget_s=args.time_budget_s,
                as_fast_as_possible=args.as_fast_as_possible,
                time_scale=args.time_scale,
                chunk_size=args.chunk_size,
                kv=shape,
                status_url=http_url if args.sync_eviction else None,
                watermark=args.eviction_trigger_watermark,
            )
            python = args.compat_python if args.client == "upstream" else None
            expected = None if args.quiet else count_requests(args.trace, args.max_requests)
            summary = replay(
                settings,
                server_pid=pid,
                http_url=http_url if (server is None or server.kind == "ours") else None,
                python=python,
                progress=expected,
            )
        finally:
            if server is not None:
                server.stop()
    summary["server_kind"] = server.kind if server is not None else "external"
    summary["server_flags"] = server_flags(args) if server is not None else None
    summary["command"] = " ".join(shlex.quote(a) for a in (sys.argv[:1] + list(argv or [])))
    summary["machine"] = {"cpu": platform.processor(), "cores": os.cpu_count()}
    if args.simulate:
        summary.update(simulate(args, shape))
    if not args.quiet:
        print_table(summary)
    if args.json_out:
        out = {k: v for k, v in summary.items() if k not in ("hits", "simulated_hits")}
        args.json_out.write_text(json.dumps(out, indent=2))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit status 1 when any request failed."""
    summary = run(argv)
    return 1 if summary["failed"] else 0
