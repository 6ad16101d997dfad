"""Start-to-healthy with lazy L1 pinning against eager pinning, through a real server.

For each mode it starts ``lmcache server --l1-size-gb N`` and measures the seconds from the
launch to a healthy ``/healthcheck``, then (lazy) until ``/status`` says the whole L1 is pinned.
Modes: ``lazy`` (``--l1-use-lazy --l1-init-size-gb I``) and ``eager`` (``--no-l1-use-lazy``,
every page pinned at start, as upstream does). Reports both and the ratio eager / lazy.

On a CUDA host it measures pinning (``tools/device_check.sh`` runs it). On a CPU-only host
there is no pinning: ``lazy`` is downgraded to eager allocation without committing pages, and
``eager`` commits every page at start; the same figures are reported with ``registrar: null``.

Usage: python -m benchmarks.bench_pinning [--l1-gb 32] [--init-gb 1] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import httpx

from benchmarks.common import machine_info
from tests.server_process import clean_env, free_port, start_server, stop_server, wait_healthy


def measure(l1_gb: float, mode_args: tuple[str, ...], timeout: float) -> dict[str, object]:
    """One server start: seconds to healthy, and to fully pinned (``None`` if never)."""
    http_port = free_port()
    args = (
        *("--host", "127.0.0.1", "--port", str(free_port())),
        *("--http-host", "127.0.0.1", "--http-port", str(http_port)),
        *("--l1-size-gb", str(l1_gb), "--eviction-policy", "LRU", "--shm-name", ""),
        *mode_args,
    )
    url = f"http://127.0.0.1:{http_port}"
    started = time.monotonic()
    process = start_server(*args, env=clean_env())
    try:
        healthy_s = wait_healthy(process, url, timeout=timeout)
        pinning: dict[str, object] = {}
        pinned_s: float | None = None
        while time.monotonic() - started < timeout:
            status = httpx.get(f"{url}/status", timeout=5).json()
            pinning = status["data_path"]["l1"]["pinning"]
            if pinning["state"] != "growing":
                if pinning["state"] == "done":
                    pinned_s = time.monotonic() - started
                break
            time.sleep(0.05)
        return {
            "healthy_s": round(healthy_s, 3),
            "pinned_s": None if pinned_s is None else round(pinned_s, 3),
            "pinning": pinning,
        }
    finally:
        stop_server(process)


def main() -> None:
    """Measure both modes and print (and optionally write) the JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--l1-gb", type=float, default=32.0)
    parser.add_argument("--init-gb", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=150.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    lazy = measure(
        args.l1_gb, ("--l1-use-lazy", "--l1-init-size-gb", str(args.init_gb)), args.timeout
    )
    print(json.dumps({"lazy": lazy}), flush=True)
    eager = measure(args.l1_gb, ("--no-l1-use-lazy",), args.timeout)
    print(json.dumps({"eager": eager}), flush=True)
    lazy_s, eager_s = lazy["healthy_s"], eager["healthy_s"]
    assert isinstance(lazy_s, float) and isinstance(eager_s, float)
    results = {
        "machine": machine_info(),
        "l1_gb": args.l1_gb,
        "init_gb": args.init_gb,
        "lazy": lazy,
        "eager": eager,
        "healthy_ratio_eager_over_lazy": round(eager_s / lazy_s, 2),
    }
    text = json.dumps(results, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
