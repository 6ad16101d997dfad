"""The server's hit ratio on a trace prefix matches the offline simulator's (issue 15).

A real server (LRU, an L1 that holds a fraction of the prefix's chunks, the
default watermark and ratio) replays the first requests of the Mooncake trace
through our client; ``--sync-eviction`` makes each request wait for the eviction
controller's round, which the simulator runs after every request. Every lost
hit (a locking, visibility or eviction bug) shows as a gap between the two.
Longer parity runs (more requests, other policies and sizes): ``nox -s trace``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TRACE = Path(__file__).resolve().parents[2] / "shared" / "traces" / "mooncake_synthetic_trace.jsonl"
TRACE = Path(os.environ.get("LMCACHE_TRACE", TRACE))
REQUESTS = int(os.environ.get("LMCACHE_TRACE_PARITY_REQUESTS", "80"))
POLICIES = os.environ.get("LMCACHE_TRACE_PARITY_POLICIES", "LRU").split(",")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not TRACE.exists(), reason=f"the trace is not at {TRACE} (LMCACHE_TRACE)"),
]

# 768 chunks of 16 KiB: a fifth of the 80-request prefix's 3,900 chunks, above its largest request.
L1_GB = f"{768 * 16 * 1024 / (1 << 30):.10g}"


def unlimited_hit_ratio(policy: str) -> float:
    """The simulator's hit ratio for the same prefix with an L1 that never evicts."""
    from lmcache_bench_trace.simulator import SimSettings, Simulator
    from lmcache_bench_trace.trace import load_trace

    from lmcache_core.plugin import PluginKind
    from lmcache_core.plugin.registry import PluginRegistry
    from lmcache_core.storage.eviction import EvictionSettings

    settings = SimSettings(capacity_bytes=1 << 40, object_bytes=16 * 1024)
    built = PluginRegistry().build(
        PluginKind.EVICTION_POLICY, policy, EvictionSettings(0.8, 0.2, 1 << 40)
    )
    return Simulator(settings, built).run(load_trace(TRACE, REQUESTS)).hit_ratio  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", POLICIES)
def test_the_server_hit_ratio_is_within_one_point_of_the_simulator(
    policy: str, tmp_path: Path
) -> None:
    from lmcache_bench_trace.cli import run

    out = tmp_path / "summary.json"
    summary = run(
        [
            "--trace",
            str(TRACE),
            "--max-requests",
            str(REQUESTS),
            "--as-fast-as-possible",
            "--l1-size-gb",
            L1_GB,
            "--eviction-policy",
            policy,
            "--sync-eviction",
            "--simulate",
            "--quiet",
            "--json-out",
            str(out),
        ]
    )
    assert summary["failed"] == 0, summary["errors"]
    assert summary["requests"] == REQUESTS
    simulated = summary["simulated"]
    # The prefix must exercise both kinds of eviction, or the match proves little.
    assert simulated["evicted_chunks"] > 0 and simulated["watermark_rounds"] > 0
    hit_requests = [i for i, hit in summary["simulated_hits"].items() if hit]
    assert len(hit_requests) >= 2, hit_requests
    # The L1 size costs hits here, so which chunks eviction keeps shows in the ratio.
    assert summary["simulated_hit_ratio"] < unlimited_hit_ratio(policy)
    assert abs(summary["hit_ratio"] - summary["simulated_hit_ratio"]) <= 0.01, (
        summary["hit_ratio"],
        summary["simulated_hit_ratio"],
    )
    differing = [i for i, hit in summary["simulated_hits"].items() if summary["hits"].get(i) != hit]
    assert len(differing) <= REQUESTS // 50, differing[:10]
    assert out.exists()
