"""Run one replay: engine-client processes against a server, merged into a summary.

Each engine client is its own process (ours: :mod:`lmcache_bench_trace.engine_client`;
upstream's: :mod:`lmcache_bench_trace.upstream_client`, run with the compat
environment's interpreter), so the clients never share a GIL, as engines do not.
They exchange JSON files with this driver, nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lmcache_bench_trace.servers import counters
from lmcache_bench_trace.settings import ReplaySettings

PACKAGE_SRC = Path(__file__).resolve().parent.parent
CLIENT_MODULES = {
    "ours": "lmcache_bench_trace.engine_client",
    "upstream": "lmcache_bench_trace.upstream_client",
}
LATENCY_QUANTILES = {"p50": 0.5, "p99": 0.99, "p99.9": 0.999}


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` (nearest rank); 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def server_status(http_url: str | None) -> dict[str, Any] | None:
    """Our server's ``/status`` (None without an HTTP URL or for a server without one)."""
    if not http_url:
        return None
    try:
        with urllib.request.urlopen(f"{http_url}/status", timeout=5) as response:
            data: dict[str, Any] = json.loads(response.read())
            return data
    except (OSError, ValueError):
        return None


def l2_prefetched_chunks(status: dict[str, Any] | None) -> int | None:
    """Chunks our server loaded from L2 so far (None when unknown)."""
    try:
        l2 = status["data_path"]["engine"]["l2"]  # type: ignore[index]
    except (KeyError, TypeError):
        return None
    return int(l2["stats"]["prefetched_chunks"]) if l2 else 0


def watch_progress(
    outs: list[Path], procs: list[subprocess.Popen[bytes]], total: int, width: int = 40
) -> None:
    """Draw a progress bar on stderr from the clients' progress files until they exit."""
    while True:
        running = any(proc.poll() is None for proc in procs)
        done = 0
        for out in outs:
            # Not written yet, or caught mid-rewrite: that client counts 0 this round.
            with contextlib.suppress(OSError, ValueError):
                done += int(Path(f"{out}.progress").read_text() or 0)
        filled = width * min(done, total) // max(1, total)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} requests")
        sys.stderr.flush()
        if not running:
            sys.stderr.write("\n")
            return
        time.sleep(0.5)


def run_clients(
    settings: ReplaySettings, python: str | None = None, progress: int | None = None
) -> list[dict[str, Any]]:
    """Start ``settings.concurrency`` engine clients and collect their reports.

    With ``progress`` (the expected request count) a progress bar is drawn on stderr.

    Raises:
        RuntimeError: A client died without a report (its output is named).
    """
    python = python or sys.executable
    module = CLIENT_MODULES[settings.client]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_SRC), env.get("PYTHONPATH")]))
    env.update(LMCACHE_TRACK_USAGE="false", DO_NOT_TRACK="1")
    with tempfile.TemporaryDirectory(prefix="lmcache-trace-") as folder:
        settings.start_at = time.time() + 1.0 + 0.1 * settings.concurrency  # all start together
        text = settings.to_json()
        procs = []
        for shard in range(settings.concurrency):
            out = Path(folder) / f"client-{shard}.json"
            command = [python, "-m", module, str(shard), text, str(out)]
            procs.append(
                (
                    out,
                    subprocess.Popen(
                        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
                    ),
                )
            )
        if progress is not None:
            watch_progress([out for out, _ in procs], [p for _, p in procs], progress)
        reports = []
        for out, proc in procs:
            output, _ = proc.communicate()
            if not out.exists():
                raise RuntimeError(
                    f"engine client exited {proc.returncode} without a report:\n"
                    + output.decode(errors="replace")[-3000:]
                )
            reports.append(json.loads(out.read_text()))
    return reports


def replay(
    settings: ReplaySettings,
    *,
    server_pid: int | None = None,
    http_url: str | None = None,
    python: str | None = None,
    progress: int | None = None,
) -> dict[str, Any]:
    """One replay and its summary (see :func:`summarize`); ``progress``: see :func:`run_clients`."""
    before = counters(server_pid) if server_pid else None
    status_before = server_status(http_url)
    started = time.time()
    reports = run_clients(settings, python, progress)
    wall = time.time() - max(started, settings.start_at)
    after = counters(server_pid) if server_pid else None
    status_after = server_status(http_url)
    summary = summarize(settings, reports, wall)
    if before and after:
        requests = max(1, summary["requests"])
        summary["server"] = {
            "cpu_s": after.cpu_s - before.cpu_s,
            "cpu_ms_per_request": (after.cpu_s - before.cpu_s) * 1e3 / requests,
            "rss_mb_before": before.rss_mb,
            "rss_mb_after": after.rss_mb,
        }
    loaded_before = l2_prefetched_chunks(status_before)
    loaded_after = l2_prefetched_chunks(status_after)
    tokens = max(1, summary["input_tokens"])
    if loaded_before is not None and loaded_after is not None:
        l2_tokens = (loaded_after - loaded_before) * settings.chunk_size
        summary["l2_hit_ratio"] = l2_tokens / tokens
        summary["l1_hit_ratio"] = summary["hit_ratio"] - summary["l2_hit_ratio"]
    return summary


def summarize(
    settings: ReplaySettings, reports: list[dict[str, Any]], wall_s: float
) -> dict[str, Any]:
    """Merge the clients' reports.

    ``l1_hit_ratio`` is the whole hit ratio until the server says how much of it
    came from L2 (:func:`replay` corrects both when it does).
    """
    latencies: dict[str, list[float]] = {}
    hits: dict[str, int] = {}
    errors: list[str] = []
    totals = dict.fromkeys(
        ("requests", "failed", "input_tokens", "hit_tokens", "bytes_stored", "bytes_retrieved"), 0
    )
    for report in reports:
        for name in totals:
            totals[name] += int(report[name])
        for op, values in report["latency_ms"].items():
            latencies.setdefault(op, []).extend(values)
        hits.update(report["hits"])
        errors.extend(report["errors"])
        if report.get("fatal"):
            totals["failed"] += 1
    tokens = max(1, totals["input_tokens"])
    hit_ratio = totals["hit_tokens"] / tokens
    return {
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("start_at",)},
        **totals,
        "hit_ratio": hit_ratio,
        "l1_hit_ratio": hit_ratio,
        "l2_hit_ratio": 0.0,
        "throughput_rps": totals["requests"] / wall_s if wall_s > 0 else 0.0,
        "wall_s": wall_s,
        "bytes_moved": totals["bytes_stored"] + totals["bytes_retrieved"],
        "latency_ms": {
            op: {
                "count": len(values),
                **{name: percentile(values, q) for name, q in LATENCY_QUANTILES.items()},
            }
            for op, values in latencies.items()
        },
        "errors": errors[:20],
        "hits": hits,
    }
