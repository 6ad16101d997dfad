"""Run the vLLM CPU end-to-end scenarios and check them. Run with this project's python.

Usage::

    python examples/vllm_cpu/check_e2e.py --vllm-python /tmp/vllm-venv/bin/python \
        [--work DIR] [--skip-timing] [--upstream [--upstream-python PY]]

Builds the models, runs ``run_e2e.py`` under the vLLM interpreter (one engine per
connector; ``VLLM_CPU_OMP_THREADS_BIND`` is pinned so runs with and without a connector
use the same cores) and checks: a hit gives the tokens and logprobs of the miss and of a
run without a connector; a zeroed pool changes the output; with the server killed the
request is recomputed correctly; after the restart the connector stores and hits again.
Exits non-zero when a check fails. Prints the time to first token table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def engine(vllm_python: str, work: Path, scenario: str, connector: str, model: Path) -> Any:
    """Run one engine scenario under the vLLM interpreter; its JSON results."""
    out = work / f"{scenario}-{connector}.json"
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0")
    env["VLLM_CPU_KVCACHE_SPACE"] = env.get("VLLM_CPU_KVCACHE_SPACE", "1")
    command = [
        vllm_python,
        str(HERE / "run_e2e.py"),
        scenario,
        *("--model", str(model), "--connector", connector),
        *("--server-python", sys.executable, "--out", str(out)),
    ]
    if scenario == "timing":
        command += ["--vocab", "8192", "--prompt-tokens", "2048"]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, env=env, timeout=1200)
    return json.loads(out.read_text())


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same tokens and logprobs."""
    return bool(a["tokens"] == b["tokens"] and a["logprobs"] == b["logprobs"])


def check_reuse(none: dict[str, Any], prefix: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """Check the reuse scenario of a connector; the failed checks.

    ``prefix`` is vLLM's own prefix cache (no connector): a connector's hit must equal
    vLLM's own hit of the same prefix bit for bit, and in float32 also the miss.
    """
    runs, base, own = ours["runs"], none["runs"], prefix["runs"]
    failures = []

    def expect(condition: bool, what: str) -> None:
        print(("ok   " if condition else "FAIL ") + what)
        if not condition:
            failures.append(what)

    hit = (runs["hit"]["stats"] or {}).get("hit_tokens", 0)
    expect(hit > 0, f"the second request hit the cache ({hit} tokens)")
    expect(same(runs["hit"], runs["miss"]), "hit == miss (tokens and logprobs)")
    expect(same(runs["miss"], base["miss"]), "miss == no connector")
    expect(same(runs["hit"], base["miss"]), "hit == no connector")
    expect(same(runs["hit"], own["hit"]), "hit == vLLM's own prefix-cache hit")
    corrupt_hit = (runs["corrupt"]["stats"] or {}).get("hit_tokens", 0)
    expect(corrupt_hit > 0, "the corrupted run loaded from the cache")
    expect(not same(runs["corrupt"], runs["miss"]), "zeroed KV changes the output (sensitive)")
    down = runs["down"]
    expect((down["stats"] or {}).get("hit_tokens", 0) == 0, "server down: a miss")
    expect(same(down, base["second"]), "server down: recomputed output == no connector")
    expect(same(runs["after_restart"], base["second"]), "after restart: correct output")
    late_hit = (runs["hit_after_restart"]["stats"] or {}).get("hit_tokens", 0)
    expect(late_hit > 0, f"after restart: hits resume ({late_hit} tokens)")
    expect(same(runs["hit_after_restart"], base["second"]), "after restart: hit == no connector")
    expect(
        same(runs["hit_after_restart"], own["second_hit"]),
        "after restart: hit == vLLM's own prefix-cache hit",
    )
    return failures


def check_metrics(ours: dict[str, Any]) -> list[str]:
    """Our connector's stats, as vLLM's Prometheus logger recorded the reuse sequence."""
    metrics = ours.get("connector_metrics") or {}
    runs = ours["runs"]
    failures = []

    def expect(condition: bool, what: str) -> None:
        print(("ok   " if condition else "FAIL ") + what)
        if not condition:
            failures.append(what)

    print(f"connector metrics: {metrics}")
    hits = sum((run["stats"] or {}).get("hit_tokens", 0) for run in runs.values())
    expect(metrics.get("hit_tokens") == hits, f"hit tokens == the requests' sum ({hits})")
    expect(metrics.get("lookups") == len(runs), f"one lookup per request ({len(runs)})")
    expect(metrics.get("loads_ok", 0) >= 3, "hit, corrupt and hit after restart loaded")
    expect(metrics.get("loaded_bytes", 0) > 0, "loaded bytes counted")
    expect(metrics.get("stored_tokens", 0) >= 2 * CHUNK_TOKENS, "miss and after-restart stored")
    expect(metrics.get("lookups_degraded", 0) >= 1, "server down: a degraded-mode lookup")
    expect(metrics.get("server_down_events", 0) >= 1, "server down: the scheduler noticed")
    expect(metrics.get("worker_down_events", 0) >= 1, "server down: the worker noticed")
    expect(metrics.get("reregistrations", 0) >= 1, "after restart: re-registered")
    expect(metrics.get("lookup_duration_seconds", 0) >= 1, "lookup latencies observed")
    lines = ours.get("kv_transfer_log") or []
    logged = [
        dict(part.split("=", 1) for part in line.split(": ", 1)[1].split(", ")) for line in lines
    ]
    logged_hits = sum(int(fields.get("hit_tokens", 0)) for fields in logged)
    expect(
        bool(lines) and logged_hits == hits,
        f"vLLM's 'KV Transfer metrics' lines add up to the same hit tokens ({logged_hits})",
    )
    return failures


CHUNK_TOKENS = 512
"""Whole chunks of the reuse prompt (600 tokens, chunk 256)."""


def main() -> None:
    """Build the models, run the engines, check, print the timings."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--vllm-python", required=True)
    parser.add_argument("--work", default="")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--upstream", action="store_true", help="also run upstream's connector")
    parser.add_argument(
        "--upstream-python",
        default="",
        help="the interpreter of a vLLM venv with upstream's lmcache (default: --vllm-python)",
    )
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="vllm-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    small, big = work / "small-llama", work / "timing-llama"
    for path, shape in ((small, "small"), (big, "timing")):
        if not (path / "config.json").exists() and not (args.skip_timing and shape == "timing"):
            subprocess.run(
                [args.vllm_python, str(HERE / "make_model.py"), str(path), shape], check=True
            )
    connectors = ["none", "ours"] + (["upstream"] if args.upstream else [])

    def python(connector: str) -> str:
        return (
            (args.upstream_python or args.vllm_python)
            if connector == "upstream"
            else args.vllm_python
        )

    reuse = {c: engine(python(c), work, "reuse", c, small) for c in ["vllm_prefix", *connectors]}
    failures = check_reuse(reuse["none"], reuse["vllm_prefix"], reuse["ours"])
    failures += check_metrics(reuse["ours"])
    if args.upstream:
        failures += [
            f"upstream: {f}"
            for f in check_reuse(reuse["none"], reuse["vllm_prefix"], reuse["upstream"])
        ]
    if not args.skip_timing:
        print("\nTTFT (s, median of rounds; 2048-token prompt, 32M-param Llama, bf16)")
        for connector in connectors:
            runs = engine(python(connector), work, "timing", connector, big)["runs"]
            miss, hit = statistics.median(runs["miss_s"]), statistics.median(runs["hit_s"])
            label = "no connector" if connector == "none" else connector
            extra = "" if connector == "none" else f"  hit {hit:.3f}  (miss/hit {miss / hit:.1f}x)"
            print(f"  {label:14s} miss {miss:.3f}{extra}   rounds {runs}")
    if failures:
        print(f"\n{len(failures)} check(s) failed: {failures}")
        sys.exit(1)
    print("\nall end-to-end checks passed")


if __name__ == "__main__":
    main()
