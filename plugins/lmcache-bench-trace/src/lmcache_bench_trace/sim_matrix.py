"""Simulated hit ratios of the whole trace: eviction policies and L2 admission, one table.

``python -m lmcache_bench_trace.sim_matrix TRACE [--requests N]``

Runs :class:`~lmcache_bench_trace.simulator.Simulator` (16 KiB chunks, the
default 0.8 watermark and 0.2 ratio) for ``LRU`` and ``ARC`` at three L1 sizes,
and, with an L2 of bounded size behind each L1 size, for L2 admission after
1 (``default``), 2 and 3 stores (``frequency``). Prints a Markdown table and one
JSON line.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from lmcache_bench_trace.simulator import SimSettings, Simulator
from lmcache_bench_trace.trace import load_trace

OBJECT_BYTES = 16 * 1024
L1_CHUNKS = (2_000, 10_000, 40_000)  # the trace README's 1k / 5k / 20k blocks
L2_CHUNKS = 20_000


def run_one(requests: list[Any], policy_name: str, l1_chunks: int, **l2: Any) -> dict[str, float]:
    """One simulated replay; its hit ratios."""
    from lmcache_core.plugin import PluginKind
    from lmcache_core.plugin.registry import PluginRegistry
    from lmcache_core.storage.eviction import EvictionPolicy, EvictionSettings

    capacity = l1_chunks * OBJECT_BYTES
    policy = PluginRegistry().build(
        PluginKind.EVICTION_POLICY, policy_name, EvictionSettings(0.8, 0.2, capacity)
    )
    assert isinstance(policy, EvictionPolicy)
    result = Simulator(
        SimSettings(capacity_bytes=capacity, object_bytes=OBJECT_BYTES, **l2), policy
    ).run(requests)
    return {
        "hit_ratio": result.hit_ratio,
        "l1_hit_ratio": result.l1_hit_ratio,
        "l2_hit_ratio": result.l2_hit_ratio,
        "l2_stored_chunks": result.l2_stored_chunks,
    }


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace")
    parser.add_argument("--requests", type=int, help="the first N requests (default: all)")
    args = parser.parse_args(argv)
    requests = load_trace(args.trace, args.requests)
    rows: list[dict[str, Any]] = []
    for policy in ("LRU", "ARC"):
        for chunks in L1_CHUNKS:
            rows.append(
                {"policy": policy, "l1_chunks": chunks, **run_one(requests, policy, chunks)}
            )
    for chunks, admit in ((c, a) for c in L1_CHUNKS for a in (1, 2, 3)):
        figures = run_one(
            requests, "LRU", chunks, l2_capacity_chunks=L2_CHUNKS, l2_admit_after=admit
        )
        rows.append(
            {
                "policy": "LRU",
                "l1_chunks": chunks,
                "l2_chunks": L2_CHUNKS,
                "l2_admit_after": admit,
                **figures,
            }
        )
    print(
        "| policy | L1 chunks | L2 chunks (admit at N-th store) | hit ratio | L1 | L2 | L2 writes |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        l2 = f"{row['l2_chunks']:,} (N={row['l2_admit_after']})" if "l2_chunks" in row else "-"
        print(
            f"| {row['policy']} | {row['l1_chunks']:,} | {l2} | {100 * row['hit_ratio']:.2f} % "
            f"| {100 * row['l1_hit_ratio']:.2f} % | {100 * row['l2_hit_ratio']:.2f} % "
            f"| {row['l2_stored_chunks']:,} |"
        )
    print(json.dumps({"requests": len(requests), "rows": rows}))


if __name__ == "__main__":
    main()
