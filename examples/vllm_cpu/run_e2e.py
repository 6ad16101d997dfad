"""vLLM (CPU) with a KV connector and our server, end to end. Run with the vLLM venv's python.

Usage::

    python run_e2e.py reuse  --model DIR --connector ours|upstream|none --out res.json
    python run_e2e.py timing --model DIR --connector ours|upstream|none --out res.json

``--server-python`` is the interpreter of an environment with this project installed
(it runs ``lmcache server``); this script starts the server on loopback, kills and
restarts it by PID, and stops it at the end.

``reuse`` (small model, run in float32: vLLM's CPU backend downcasts a float32 model to
bfloat16 by default, and in bfloat16 vLLM's own prefix-cache hit already gives logprobs a
little different from a full prefill, so "hit == miss" would test vLLM's kernels, not the
connector; ``--connector vllm_prefix`` runs no connector with vLLM's prefix cache on, the
reference a connector's hit must equal bit for bit in either dtype): run 0 stores the
prompt's chunks, run 1 must hit and give the same tokens and logprobs; then the server's L1
pool is zeroed and run 2 (a hit on garbage) must differ; then the server is SIGKILLed: run 3
recomputes (degraded mode); after a restart run 4 stores again and run 5 hits. With our
connector the reuse engine logs stats: the results hold our ``vllm:lmcache_mp_*``
Prometheus series and vLLM's "KV Transfer metrics" log lines. ``timing``:
time to first token on a miss and on a hit (``max_tokens=1``), several rounds with fresh
prompts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

CHUNK = 256  # a multiple of vLLM's CPU block size (128)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """Our ``lmcache server`` on 127.0.0.1, controlled by PID."""

    def __init__(self, python: str, log: str) -> None:
        self.python = python
        self.port = free_port()
        self.http = free_port()
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or restart, on the same port) and wait until healthy."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
        env["LMCACHE_PROMETHEUS_PORT"] = str(free_port())
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    self.python,
                    "-c",
                    "from lmcache_core.cli.main import main; main()",
                    "server",
                    *("--host", "127.0.0.1", "--port", str(self.port)),
                    *("--http-host", "127.0.0.1", "--http-port", str(self.http)),
                    *("--chunk-size", str(CHUNK), "--l1-size-gb", "1"),
                    *("--eviction-policy", "LRU"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/healthcheck", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server did not become healthy")

    def status(self) -> dict[str, Any]:
        """``GET /status``'s ``data_path`` part."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/status", timeout=5) as r:
            return dict(json.load(r)["data_path"])

    def corrupt_pool(self) -> None:
        """Zero the L1 pool in place: every cached object becomes garbage."""
        name = self.status()["l1"]["shm_name"]
        path = os.path.join("/dev/shm", name.lstrip("/"))
        size = os.path.getsize(path)
        with open(path, "r+b") as pool:
            step = 64 << 20
            for offset in range(0, size, step):
                pool.seek(offset)
                pool.write(bytes(min(step, size - offset)))

    def kill(self) -> None:
        """SIGKILL the server and remove the pool segment it leaves behind."""
        assert self.process is not None
        pool = ""
        with contextlib.suppress(OSError):
            pool = self.status()["l1"].get("shm_name") or ""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        if pool:  # a SIGKILLed server leaves its pool behind
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join("/dev/shm", pool.lstrip("/")))

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 15 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def kv_transfer_config(connector: str, server: Server) -> dict[str, Any] | None:
    """The ``kv_transfer_config`` vLLM gets for a connector (None: no connector)."""
    extra = {
        "lmcache.mp.host": "tcp://127.0.0.1",
        "lmcache.mp.port": server.port,
        "lmcache.mp.mq_timeout": 30,
        "lmcache.mp.heartbeat_interval": 1,
    }
    if connector in ("none", "vllm_prefix"):
        return None
    config: dict[str, Any] = {
        "kv_connector": "LMCacheMPConnector",
        "kv_role": "kv_both",
        "kv_load_failure_policy": "recompute",
        "kv_connector_extra_config": extra,
    }
    if connector == "ours":
        config["kv_connector_module_path"] = "lmcache_vllm.connector"
        extra["lmcache.mp.lookup_timeout"] = 5
        extra["lmcache.mp.transfer_timeout"] = 5
    return config


def prompt(length: int, seed: int, vocab: int) -> list[int]:
    """A deterministic random prompt."""
    rng = random.Random(seed)
    return [rng.randrange(3, vocab) for _ in range(length)]


def run(llm: Any, tokens: list[int], max_tokens: int) -> dict[str, Any]:
    """One greedy generation: tokens, logprobs, wall seconds and our hit statistics."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=0.0,
        logprobs=3,
        detokenize=False,
        # Upstream's connector reports its hit only when a request asks for it; ours
        # always reports lmcache_stats and ignores the key.
        extra_args={"kv_transfer_params": {"cached_token_stats": True}},
    )
    started = time.perf_counter()
    result = llm.generate([TokensPrompt(prompt_token_ids=tokens)], params, use_tqdm=False)[0]
    seconds = time.perf_counter() - started
    out = result.outputs[0]
    logprobs = [sorted((t, round(v.logprob, 6)) for t, v in d.items()) for d in out.logprobs or []]
    returned = result.kv_transfer_params or {}
    stats = returned.get("lmcache_stats")
    if stats is None and "cached_token_stats" in returned:  # upstream's connector
        cached = returned["cached_token_stats"]
        stats = {"hit_tokens": cached["num_lmcache_cached_tokens"], "upstream": cached}
    return {"tokens": list(out.token_ids), "logprobs": logprobs, "s": seconds, "stats": stats}


def main() -> None:
    """Start the server and the engine, run the scenario, write the results."""
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["reuse", "timing"])
    parser.add_argument("--model", required=True)
    parser.add_argument(
        "--connector", choices=["ours", "upstream", "none", "vllm_prefix"], required=True
    )
    parser.add_argument("--server-python", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=600)
    parser.add_argument(
        "--dtype",
        default="",
        help="vLLM's dtype (default: float32 for reuse, the model's own for timing)",
    )
    args = parser.parse_args()

    from vllm import LLM

    with_stats = args.scenario == "reuse" and args.connector == "ours"
    log_lines: list[str] = []
    server = Server(args.server_python, args.out + ".server.log")
    server.start()
    results: dict[str, Any] = {"connector": args.connector, "scenario": args.scenario}
    try:
        started = time.monotonic()
        llm = LLM(
            model=args.model,
            skip_tokenizer_init=True,
            max_model_len=4096,
            enforce_eager=True,
            enable_prefix_caching=args.connector == "vllm_prefix",
            dtype=args.dtype or ("float32" if args.scenario == "reuse" else "auto"),
            max_num_seqs=4,
            gpu_memory_utilization=0.3,
            kv_transfer_config=kv_transfer_config(args.connector, server),
            # Our connector's stats: vLLM's log line and its Prometheus series (reuse only,
            # the timing runs keep vLLM's offline default).
            disable_log_stats=not with_stats,
        )
        results["startup_s"] = time.monotonic() - started
        if with_stats:
            # After LLM(): creating it applies vLLM's logging config, which drops handlers.
            log_lines = capture_kv_transfer_log()
        if args.scenario == "reuse":
            results["runs"] = reuse(llm, server, args)
            if with_stats:
                llm.llm_engine.do_log_stats()  # the interval's "KV Transfer metrics" line
                results["connector_metrics"] = connector_metrics(llm)
                results["kv_transfer_log"] = list(log_lines)
        else:
            results["runs"] = timing(llm, args)
        results["server"] = (
            server.status() if server.process and server.process.poll() is None else {}
        )
    finally:
        server.stop()
    with open(args.out, "w") as out:
        json.dump(results, out)
    print(json.dumps({k: v for k, v in results.items() if k != "server"})[:4000])


def capture_kv_transfer_log() -> list[str]:
    """Collect vLLM's "KV Transfer metrics" log lines (the list fills as they come)."""
    import logging

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if message.startswith("KV Transfer metrics"):
                lines.append(message)

    # vLLM's stat logger passes its own logger's info() to KVConnectorLogging.log, and
    # vLLM's loggers stop at the "vllm" logger (no propagation to the root logger).
    logging.getLogger("vllm").addHandler(Collect())
    return lines


def connector_metrics(llm: Any) -> dict[str, float]:
    """Our ``vllm:lmcache_mp_*`` Prometheus series, summed over labels (histograms: count)."""
    totals: dict[str, float] = {}
    for metric in llm.get_metrics():
        if not metric.name.startswith("vllm:lmcache_mp_"):
            continue
        name = metric.name.removeprefix("vllm:lmcache_mp_").removesuffix("_total")
        value = getattr(metric, "value", None)
        if value is None:
            value = getattr(metric, "count", 0)
        totals[name] = totals.get(name, 0) + float(value)
    return totals


def reuse(llm: Any, server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """The reuse, sensitivity and restart sequence."""
    first = prompt(args.prompt_tokens, 1, args.vocab)
    second = prompt(args.prompt_tokens, 2, args.vocab)
    runs: dict[str, Any] = {}
    runs["miss"] = run(llm, first, 8)
    runs["hit"] = run(llm, first, 8)
    if args.connector in ("none", "vllm_prefix"):
        runs["second"] = run(llm, second, 8)
        runs["second_hit"] = run(llm, second, 8)
        return runs
    server.corrupt_pool()
    runs["corrupt"] = run(llm, first, 8)
    server.kill()
    time.sleep(3)  # a few heartbeats: the connector notices
    runs["down"] = run(llm, second, 8)
    server.start()
    time.sleep(4)  # re-registration at the next heartbeats
    runs["after_restart"] = run(llm, second, 8)
    runs["hit_after_restart"] = run(llm, second, 8)
    return runs


def timing(llm: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Time to first token on misses and hits, fresh prompts each round."""
    warm = prompt(args.prompt_tokens, 99, args.vocab)
    run(llm, warm, 1)
    run(llm, warm, 1)
    misses, hits, hit_stats = [], [], []
    load_before = os.getloadavg()[0]
    for number in range(args.rounds):
        tokens = prompt(args.prompt_tokens, 1000 + number, args.vocab)
        misses.append(run(llm, tokens, 1)["s"])
        hit = run(llm, tokens, 1)
        hits.append(hit["s"])
        hit_stats.append(hit["stats"])  # ours only; upstream reports no lmcache_stats
    return {
        "miss_s": misses,
        "hit_s": hits,
        "hit_stats": hit_stats,
        # The 1-minute load average around the timed rounds: the machine is shared.
        "load": [load_before, os.getloadavg()[0]],
    }


if __name__ == "__main__":
    sys.exit(main())
