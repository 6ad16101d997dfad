"""Time to first token with vLLM's CPU engine: ours, upstream's connector, none, vLLM's own cache.

Usage::

    python benchmarks/bench_vllm_ttft.py --vllm-python /tmp/vllm-venv/bin/python \\
        [--upstream-python /tmp/vllm-up-venv/bin/python] [--passes 2] [--rounds 3] \\
        [--prompt-tokens 2048] [--shape timing] [--work DIR] [--out results.json]

Runs ``examples/vllm_cpu/run_e2e.py timing`` once per connector and pass, the connectors in
a rotated order each pass (A/B interleaved, so a change of the machine's load hits every
connector alike). Every engine runs against this project's server (started by
``run_e2e.py`` on loopback). Each engine warms up, then times ``max_tokens=1`` generations
of fresh prompts: a miss (the prompt is new: full prefill, then the store) and right after
a hit (the same prompt again). The engines:

* ``none``: no connector, vLLM's prefix cache off (both timings are full prefills);
* ``vllm_prefix``: no connector, vLLM's own prefix cache on: the ceiling a connector's hit
  can approach (the KV is already in vLLM's blocks, nothing is copied);
* ``ours``: ``lmcache_vllm.connector.LMCacheMPConnector``;
* ``upstream``: vLLM's built-in ``LMCacheMPConnector`` resolved to upstream LMCache 0.5.6's
  class (needs ``--upstream-python``: a venv with ``lmcache`` next to vLLM).

Every engine is pinned to the same core (``VLLM_CPU_OMP_THREADS_BIND``, default ``0``) with
one OpenMP thread: with a connector configured vLLM reserves one more core, so without the
pin the engines would not compute on the same cores. Prints medians and the ratios to the
no-connector prefill measured in the same run, and the load average around each engine.
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

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "vllm_cpu"


def engine_run(
    python: str, connector: str, model: Path, out: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """One engine's timing scenario under ``python``; its ``runs`` part plus start-up."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    env["VLLM_CPU_OMP_THREADS_BIND"] = args.bind
    env["OMP_NUM_THREADS"] = "1"
    env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    command = [
        python,
        str(EXAMPLE / "run_e2e.py"),
        "timing",
        *("--model", str(model), "--connector", connector),
        *("--server-python", sys.executable, "--out", str(out)),
        *("--vocab", "8192", "--prompt-tokens", str(args.prompt_tokens)),
        *("--rounds", str(args.rounds)),
    ]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, env=env, timeout=args.timeout, stdout=subprocess.DEVNULL)
    result = json.loads(out.read_text())
    runs = dict(result["runs"])
    runs["startup_s"] = result["startup_s"]
    return runs


def summarise(samples: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Median miss and hit per connector, pooled over passes, with ratios to no connector."""
    table: dict[str, dict[str, float]] = {}
    for connector, runs in samples.items():
        misses = [s for run in runs for s in run["miss_s"]]
        hits = [s for run in runs for s in run["hit_s"]]
        table[connector] = {
            "miss_s": statistics.median(misses),
            "hit_s": statistics.median(hits),
            "samples": len(misses),
            "load_min": min(min(run["load"]) for run in runs),
            "load_max": max(max(run["load"]) for run in runs),
        }
    if "none" in table:
        # No connector and no prefix cache: every timing of this engine is a full prefill.
        none = samples["none"]
        prefill = statistics.median([s for run in none for s in run["miss_s"] + run["hit_s"]])
        for row in table.values():
            row["miss_vs_prefill"] = row["miss_s"] / prefill
            row["prefill_vs_hit"] = prefill / row["hit_s"]
    return table


def main() -> None:
    """Build the model, run the engines interleaved, print and save the figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--vllm-python", required=True)
    parser.add_argument("--upstream-python", default="")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=2048)
    parser.add_argument("--shape", default="timing", help="make_model.py shape")
    parser.add_argument("--bind", default="0", help="VLLM_CPU_OMP_THREADS_BIND for every engine")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per engine run")
    parser.add_argument("--work", default="")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="vllm-ttft-"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / f"{args.shape}-llama"
    if not (model / "config.json").exists():
        subprocess.run(
            [args.vllm_python, str(EXAMPLE / "make_model.py"), str(model), args.shape], check=True
        )
    pythons = {"none": args.vllm_python, "vllm_prefix": args.vllm_python, "ours": args.vllm_python}
    if args.upstream_python:
        pythons["upstream"] = args.upstream_python
    order = list(pythons)
    samples: dict[str, list[dict[str, Any]]] = {c: [] for c in order}
    for number in range(args.passes):
        shift = number % len(order)
        for connector in order[shift:] + order[:shift]:
            out = work / f"ttft-{connector}-{number}.json"
            runs = engine_run(pythons[connector], connector, model, out, args)
            samples[connector].append(runs)
            print(f"  pass {number} {connector}: {json.dumps(runs)}", flush=True)
    table = summarise(samples)
    config = json.loads((model / "config.json").read_text())
    print(
        f"\nTTFT, {args.prompt_tokens}-token prompt, {args.shape} model "
        f"({config['num_hidden_layers']} layers, hidden {config['hidden_size']}), "
        f"{args.passes} passes x {args.rounds} rounds, medians"
    )
    for connector, row in table.items():
        ratios = ""
        if "prefill_vs_hit" in row:
            ratios = (
                f"  miss/prefill {row['miss_vs_prefill']:.2f}  prefill/hit "
                f"{row['prefill_vs_hit']:.1f}x"
            )
        print(
            f"  {connector:12s} miss {row['miss_s']:.3f} s  hit {row['hit_s']:.3f} s{ratios}"
            f"  load {row['load_min']:.1f}-{row['load_max']:.1f}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"table": table, "samples": samples}, indent=1))


if __name__ == "__main__":
    main()
