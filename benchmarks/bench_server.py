"""Benchmarks of a real server process on the CPU data path (issue #3's targets).

Run: ``.venv/bin/python benchmarks/bench_server.py [--quick] [--parts lookups ...]``

Measures, against a server started here: start-to-healthy time; idle RSS; store and
retrieve of 16 x 32 MiB and 1 x 32 MiB chunks (Llama-3-8B layout: 32 layers, 8 KV
heads, head dim 128, bf16, 256-token chunks, block size 16; lmcache_driven with
cpu_shm KV caches) next to single-thread memcpy of the same size; lookup latency
p50/p99 for 1 to 64-chunk prefixes, and for a 64-chunk prefix never stored (every
chunk's miss cause classified); ping/noop rates from 1 and 8 clients; RSS after
1,000 register/unregister cycles. Prints a Markdown report and one JSON line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import random
import statistics
import sys
import time
import timeit
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import torch
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine_info, memcpy_gbps, percentile
from lmcache_core.client import MPClient
from lmcache_core.client.cpu_worker import CpuKVWorker
from lmcache_core.protocol.types import pack_token_ids
from lmcache_core.transfer.layout import KVFormat, KVLayout
from tests.server_process import drain_output, free_port, start_server, stop_server, wait_healthy

CHUNK = 256
LLAMA = {"num_layers": 32, "block_size": 16, "num_heads": 8, "head_dim": 128}
MIB = 1 << 20
PARTS = ("small_ops", "lookups", "transfer", "register")
"""What ``--parts`` can pick."""


def rss_mb(pid: int) -> dict[str, float]:
    """The server's resident memory by kind (MB); shared L1 pages are RssShmem."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def tokens(n_chunks: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(128000) for _ in range(n_chunks * CHUNK)]


def timed(fn: Callable[[], object], setup: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``fn`` over ``repeat`` runs (after one warm-up), ``setup`` untimed."""
    times = []
    for index in range(repeat + 1):
        setup()
        start = time.perf_counter()
        fn()
        if index:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def transfer(client: MPClient, repeat: int) -> dict[str, float]:
    chunks = 16
    bpc = CHUNK // LLAMA["block_size"]
    layout = KVLayout(KVFormat.NHD, num_blocks=2 * chunks * bpc, dtype=torch.bfloat16, **LLAMA)
    results: dict[str, float] = {"object_mib": layout.object_nbytes(CHUNK) / MIB}
    with CpuKVWorker(client, layout) as worker:
        worker.register()
        for layer in worker.layers:
            layer.normal_()
        src = list(range(chunks * bpc))
        dst = list(range(chunks * bpc, 2 * chunks * bpc))
        for n in (16, 1):
            nbytes = n * layout.object_nbytes(CHUNK)
            seeds = itertools.count(n * 1000)
            window = n * CHUNK

            def store(n: int = n, seeds: Iterator[int] = seeds, window: int = window) -> None:
                key = worker.key(tokens(n, next(seeds)), 0, window, f"s{time.time_ns()}")
                assert worker.store(key, src[: n * bpc], timeout=120)

            # Cleared before each store (untimed) so every store really copies.
            seconds = timed(store, client.clear, repeat)
            results[f"store_{n}_gbps"] = nbytes / seconds / 1e9
            toks = tokens(n, 10**6 + n)
            assert worker.store(worker.key(toks, 0, window, "seed"), src[: n * bpc], timeout=120)

            def retrieve(n: int = n, toks: list[int] = toks, window: int = window) -> None:
                key = worker.key(toks, 0, window, "r")
                assert worker.retrieve(key, dst[: n * bpc], timeout=120)

            seconds = timed(retrieve, lambda: None, repeat)
            results[f"retrieve_{n}_gbps"] = nbytes / seconds / 1e9
            results[f"memcpy_{n}_gbps"] = memcpy_gbps(nbytes)
            client.clear()
        worker.unregister()
    return results


def lookups(client: MPClient, samples: int) -> dict[str, float]:
    layout = KVLayout(
        KVFormat.NHD,
        num_layers=2,
        num_blocks=64 * 16,
        block_size=16,
        num_heads=1,
        head_dim=8,
        dtype=torch.bfloat16,
    )
    results: dict[str, float] = {}
    with CpuKVWorker(client, layout) as worker:
        worker.register()
        toks = tokens(64, 99)
        assert worker.store(worker.key(toks, 0, 64 * CHUNK, "fill"), list(range(64 * 16)))
        for n in (1, 4, 16, 64):
            latencies = []
            # The client encodes a request's tokens once (every message carries them all).
            packed = pack_token_ids(toks[: n * CHUNK])
            prefix = toks[: n * CHUNK]
            encode = timeit.timeit(lambda: pack_token_ids(prefix), number=20) / 20  # noqa: B023
            results[f"client_token_encode_{n}_ms"] = encode * 1e3
            for i in range(samples):
                key = worker.key(packed, 0, n * CHUNK, f"l{n}-{i}", worker=False)
                start = time.perf_counter()
                client.lookup(key)
                latencies.append(time.perf_counter() - start)
                assert client.query_prefetch_status(key.request_id) == n
                client.end_session(key.request_id)
            results[f"lookup_{n}_p50_ms"] = percentile(latencies, 0.5) * 1e3
            results[f"lookup_{n}_p99_ms"] = percentile(latencies, 0.99) * 1e3
        # A full miss: every chunk goes through the miss classification.
        cold = pack_token_ids(tokens(64, 7))
        latencies = []
        for i in range(samples):
            key = worker.key(cold, 0, 64 * CHUNK, f"miss-{i}", worker=False)
            start = time.perf_counter()
            client.lookup(key)
            latencies.append(time.perf_counter() - start)
            assert client.query_prefetch_status(key.request_id) == 0
            client.end_session(key.request_id)
        results["lookup_64_miss_p50_ms"] = percentile(latencies, 0.5) * 1e3
        results["lookup_64_miss_p99_ms"] = percentile(latencies, 0.99) * 1e3
        worker.unregister()
    return results


def _op_loop(url: str, op: str, seconds: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    client = MPClient(url)
    call = getattr(client, op)
    call()
    count, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        call()
        count += 1
    out.put(count / seconds)
    client.close()


def _echo_server(port: int, ready: Any) -> None:
    """A bare ROUTER that echoes: the ceiling of one Python ZeroMQ round trip."""
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    socket.bind(f"tcp://127.0.0.1:{port}")
    ready.set()
    while True:
        frames = socket.recv_multipart()
        if frames[-1] == b"stop":
            break
        socket.send_multipart(frames)
    socket.close(0)
    context.term()


def echo_ceiling(seconds: float) -> float:
    """Round trips per second of a bare DEALER/ROUTER echo between two processes."""
    port = free_port()
    ready = multiprocessing.Event()
    proc = multiprocessing.Process(target=_echo_server, args=(port, ready))
    proc.start()
    ready.wait(10)
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.connect(f"tcp://127.0.0.1:{port}")
    socket.send_multipart([b"\x00", b"\x18"])
    socket.recv_multipart()
    count, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        socket.send_multipart([b"\x00", b"\x18"])
        socket.recv_multipart()
        count += 1
    socket.send_multipart([b"stop"])
    socket.close(0)
    context.term()
    proc.join(10)
    return count / seconds


def small_ops(url: str, seconds: float) -> dict[str, float]:
    results: dict[str, float] = {"zmq_echo_per_s": echo_ceiling(seconds)}
    for op in ("noop", "ping"):
        for clients in (1, 8):
            queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
            procs = [
                multiprocessing.Process(target=_op_loop, args=(url, op, seconds, queue))
                for _ in range(clients)
            ]
            for proc in procs:
                proc.start()
            total = sum(queue.get(timeout=seconds + 30) for _ in procs)
            for proc in procs:
                proc.join()
            results[f"{op}_{clients}_clients_per_s"] = total
    return results


def register_cycles(client: MPClient, pid: int, cycles: int) -> dict[str, float]:
    layout = KVLayout(
        KVFormat.NHD,
        num_layers=32,
        num_blocks=64,
        block_size=16,
        num_heads=8,
        head_dim=128,
        dtype=torch.bfloat16,
    )
    before = rss_mb(pid)
    with CpuKVWorker(client, layout) as worker:
        for _ in range(cycles):
            worker.register()
            worker.unregister()
    time.sleep(0.5)
    after = rss_mb(pid)
    return {
        "register_cycles": cycles,
        "rss_before_cycles_mb": before["RssAnon"] + before["RssFile"],
        "rss_after_cycles_mb": after["RssAnon"] + after["RssFile"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra 'lmcache server' argument (repeat; e.g. --server-arg=--disable-metrics)",
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="what to measure (default: everything)",
    )
    args = parser.parse_args()
    repeat, samples, seconds, cycles = (2, 50, 1.0, 100) if args.quick else (5, 500, 3.0, 1000)
    port, http_port = free_port(), free_port()
    url = f"127.0.0.1:{port}"
    started = time.perf_counter()
    process = start_server(
        "--l1-size-gb",
        "4",
        "--eviction-policy",
        "LRU",
        "--port",
        str(port),
        "--http-host",
        "127.0.0.1",
        "--http-port",
        str(http_port),
        *args.server_arg,
    )
    report: dict[str, object] = {"machine": machine_info(), "server_args": args.server_arg}
    try:
        wait_healthy(process, f"http://127.0.0.1:{http_port}")
        report["start_to_healthy_s"] = time.perf_counter() - started
        drain_output(process)
        time.sleep(1.0)
        idle = rss_mb(process.pid)
        report["rss_idle_mb"] = idle["RssAnon"] + idle["RssFile"]
        client = MPClient(url, timeout=120)
        if "small_ops" in args.parts:
            report.update(small_ops(url, seconds))
        if "lookups" in args.parts:
            report.update(lookups(client, samples))
        if "transfer" in args.parts:
            report.update(transfer(client, repeat))
        if "register" in args.parts:
            report.update(register_cycles(client, process.pid, cycles))
        report["status_requests"] = httpx.get(f"http://127.0.0.1:{http_port}/status").json()[
            "data_path"
        ]["requests"]
        client.close()
    finally:
        stop_server(process)
    print_report(report)
    print(json.dumps(report))


def print_report(r: dict[str, Any]) -> None:
    """The figures measured, as a Markdown table, each next to its ceiling or target."""
    rows: list[tuple[str, str, str]] = []
    if "store_16_gbps" in r:
        _transfer_rows(r, rows)
    if "lookup_64_p50_ms" in r:
        _lookup_rows(r, rows)
    if "noop_1_clients_per_s" in r:
        _op_rows(r, rows)
    rows.append(("start to healthy", f"{r['start_to_healthy_s']:.2f} s", "<= 2.5 s"))
    rows.append(("RSS idle, beyond L1", f"{r['rss_idle_mb']:.0f} MB", "<= 300 MB"))
    if "register_cycles" in r:
        rows.append(
            (
                f"RSS before / after {r['register_cycles']} register cycles",
                f"{r['rss_before_cycles_mb']:.0f} / {r['rss_after_cycles_mb']:.0f} MB",
                "flat",
            )
        )
    print("| measure | value | ceiling or target |")
    print("| --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def _transfer_rows(r: dict[str, Any], rows: list[tuple[str, str, str]]) -> None:
    for n in (16, 1):
        ceiling = r[f"memcpy_{n}_gbps"]
        for kind in ("store", "retrieve"):
            value = r[f"{kind}_{n}_gbps"]
            rows.append(
                (
                    f"{kind} {n} x 32 MiB",
                    f"{value:.2f} GB/s",
                    f"memcpy {ceiling:.2f} GB/s, ratio {value / ceiling:.2f} (target >= 0.5)",
                )
            )


def _lookup_rows(r: dict[str, Any], rows: list[tuple[str, str, str]]) -> None:
    for n in (1, 4, 16, 64):
        p50, p99 = r[f"lookup_{n}_p50_ms"], r[f"lookup_{n}_p99_ms"]
        rows.append(
            (
                f"lookup, {n}-chunk prefix",
                f"p50 {p50:.3f} ms, p99 {p99:.3f} ms",
                "64 chunks: p50 <= 0.3 ms, p99 <= 1 ms; client-side token encode "
                f"{r[f'client_token_encode_{n}_ms']:.3f} ms (once per request)",
            )
        )
    if "lookup_64_miss_p50_ms" in r:
        p50, p99 = r["lookup_64_miss_p50_ms"], r["lookup_64_miss_p99_ms"]
        rows.append(
            (
                "lookup, 64-chunk prefix never stored",
                f"p50 {p50:.3f} ms, p99 {p99:.3f} ms",
                "every chunk's miss cause classified (never_stored)",
            )
        )


def _op_rows(r: dict[str, Any], rows: list[tuple[str, str, str]]) -> None:
    for op in ("noop", "ping"):
        for clients in (1, 8):
            rate = r[f"{op}_{clients}_clients_per_s"]
            ceiling = r["zmq_echo_per_s"]
            rows.append(
                (
                    f"{op}, {clients} client(s)",
                    f"{rate:,.0f} /s",
                    f"bare ZeroMQ echo {ceiling:,.0f} /s (one client), ratio {rate / ceiling:.2f}; "
                    "target >= 10,000/s from one client",
                )
            )


if __name__ == "__main__":
    main()
