"""The trace replay's plots (PNG) from the JSON summaries of ``benchmarks/trace_matrix.sh``.

``python -m lmcache_bench_trace.plots RESULTS_DIR OUT_DIR`` writes
``trace_hit_ratio_vs_l1.png`` (hit ratio against L1 size: our server, upstream's,
the simulator, per policy) and ``trace_latency_vs_concurrency.png`` (request and
lookup latency, p50 and p99, against engine clients). Needs the plugin's ``plot``
extra (matplotlib).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

MIB = 1 << 20


def load(folder: Path, prefix: str) -> dict[str, dict[str, Any]]:
    """Summaries whose file name starts with ``prefix``, by the rest of the name."""
    return {
        path.stem[len(prefix) :]: json.loads(path.read_text())
        for path in sorted(folder.glob(f"{prefix}*.json"))
    }


def l1_mib(summary: dict[str, Any]) -> float:
    """The run's L1 size in MiB (from the server flags it started)."""
    flags = summary["server_flags"]
    return float(flags[flags.index("--l1-size-gb") + 1]) * 1024


def hit_ratio_plot(folder: Path, out: Path) -> Path:
    """Hit ratio against L1 size; returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load(folder, "size-")
    series: dict[str, list[tuple[float, float]]] = {}
    for name, summary in runs.items():
        server, policy, _slots = name.split("-")
        size = l1_mib(summary)
        series.setdefault(f"{server} server, {policy.upper()}", []).append(
            (size, 100 * summary["hit_ratio"])
        )
        if server == "ours":
            series.setdefault(f"simulator, {policy.upper()}", []).append(
                (size, 100 * summary["simulated_hit_ratio"])
            )
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, points in sorted(series.items()):
        points.sort()
        style = "--" if label.startswith("simulator") else "-"
        axes.plot(*zip(*points, strict=True), style, marker="o", label=label)
    requests = next(iter(runs.values()))["requests"] if runs else 0
    axes.set(
        xscale="log",
        xlabel="L1 size (MiB; 16 KiB per 256-token chunk)",
        ylabel="token hit ratio (%)",
        title=f"Mooncake trace, first {requests} requests, 4 engine clients",
    )
    axes.grid(True, alpha=0.3)
    axes.legend()
    path = out / "trace_hit_ratio_vs_l1.png"
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def latency_plot(folder: Path, out: Path) -> Path:
    """Latency (p50, p99) against concurrency; returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load(folder, "conc-")
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    for server in ("ours", "upstream"):
        points = sorted(
            (int(name.split("-")[1]), s) for name, s in runs.items() if name.startswith(server)
        )
        if not points:
            continue
        clients = [n for n, _ in points]
        for axes, op in ((left, "request"), (right, "lookup")):
            for quantile, style in (("p50", "-"), ("p99", "--")):
                values = [s["latency_ms"][op][quantile] for _, s in points]
                axes.plot(clients, values, style, marker="o", label=f"{server} {quantile}")
    for axes, op in ((left, "whole request"), (right, "lookup call")):
        axes.set(xlabel="engine clients", ylabel="ms", title=op, yscale="log")
        axes.set_xticks([1, 4, 8, 16])
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.suptitle("Latency against concurrency (our client, as fast as possible)")
    path = out / "trace_latency_vs_concurrency.png"
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``RESULTS_DIR OUT_DIR``."""
    args = sys.argv[1:] if argv is None else argv
    folder, out = Path(args[0]), Path(args[1])
    for path in (hit_ratio_plot(folder, out), latency_plot(folder, out)):
        print(path)


if __name__ == "__main__":
    main()
