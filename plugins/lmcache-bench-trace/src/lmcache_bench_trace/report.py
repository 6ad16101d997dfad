"""The replay's summary as a Markdown table."""

from __future__ import annotations

from typing import Any


def _pct(value: float) -> str:
    return f"{100 * value:.2f} %"


def rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(measure, value) pairs of every figure of the summary."""
    out = [
        ("requests (failed)", f"{summary['requests']} ({summary['failed']})"),
        ("hit ratio, tokens: total", _pct(summary["hit_ratio"])),
        ("hit ratio: L1", _pct(summary["l1_hit_ratio"])),
        ("hit ratio: L2", _pct(summary["l2_hit_ratio"])),
    ]
    if "simulated_hit_ratio" in summary:
        out.append(("hit ratio: simulator (total)", _pct(summary["simulated_hit_ratio"])))
        diff = 100 * (summary["hit_ratio"] - summary["simulated_hit_ratio"])
        out.append(("server - simulator", f"{diff:+.2f} points"))
    out.append(("throughput", f"{summary['throughput_rps']:.1f} requests/s"))
    for op, stats in summary["latency_ms"].items():
        if stats["count"]:
            out.append(
                (
                    f"{op} latency (n={stats['count']})",
                    f"p50 {stats['p50']:.3f} / p99 {stats['p99']:.3f} / "
                    f"p99.9 {stats['p99.9']:.3f} ms",
                )
            )
    server = summary.get("server")
    if server:
        out.append(("server CPU per request", f"{server['cpu_ms_per_request']:.3f} ms"))
        out.append(
            (
                "server RSS before / after",
                f"{server['rss_mb_before']:.0f} / {server['rss_mb_after']:.0f} MB",
            )
        )
    out.append(
        (
            "bytes moved (stored + retrieved)",
            f"{summary['bytes_moved'] / 1e6:.1f} MB ({summary['bytes_stored'] / 1e6:.1f} + "
            f"{summary['bytes_retrieved'] / 1e6:.1f})",
        )
    )
    return out


def print_table(summary: dict[str, Any]) -> None:
    """Print the summary (and the first errors, if any)."""
    print("| measure | value |")
    print("| --- | --- |")
    for name, value in rows(summary):
        print(f"| {name} | {value} |")
    for error in summary.get("errors", [])[:5]:
        print(f"error: {error}")
