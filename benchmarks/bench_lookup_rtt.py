"""A 64-chunk lookup's round trip through our client, A/B between trees, with its ceiling.

Run::

    .venv/bin/python benchmarks/bench_lookup_rtt.py [--tree LABEL=PATH ...] [--rounds N]
        [--samples N] [--stages] [--server-arg ARG ...] [--tree-arg LABEL=ARG ...]

For each tree (default: this one, labelled ``this``) a real ``lmcache server`` and
a client process run with ``PYTHONPATH=PATH``, so both ends are that tree's code.
A client stores a 64-chunk prefix once, then each round times, one call at a
time: ``noop`` (the ceiling: ZeroMQ, the request loop, the client, nothing
else), a 1-chunk and a 64-chunk full-hit ``lookup`` (each followed, untimed, by
its status query and ``end_session``), and, in a tree whose client has
``fast_lookup``, the 64-chunk lookup sent as chunk hashes (``lookup_hashes``,
the client's hashing included; "lookup 64 (hashes)"). Rounds alternate between the trees, so a
neighbour's load hits every tree alike; the report gives each figure's median
over the rounds of the per-round p50, and the ratio lookup / noop (which moves
much less with load than either figure). The ceiling below both, measured in the
same rounds, is a plain pyzmq round trip to an echo process carrying the same
token list (:class:`RawEcho`): the host's cost of moving those bytes, with no
project code.

``--stages`` loads ``lookup_stage_probe.py`` into the servers and splits the
64-chunk lookup into its stages (client send, loop receive and hand-off, pool
wake-up, handler, reply push, loop forward, client receive), medians in us.
Prints a Markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHUNK = 256
PROBE = HERE / "lookup_stage_probe.py"


# -- the client process (one per tree) ---------------------------------------------------


def client_main(url: str, samples: int) -> None:
    """Serve rounds on request: read a line from stdin, answer one JSON line."""
    import msgspec
    import torch

    from lmcache_core.client import MPClient
    from lmcache_core.client.cpu_worker import CpuKVWorker
    from lmcache_core.protocol.types import pack_token_ids
    from lmcache_core.transfer.layout import KVFormat, KVLayout

    client = MPClient(url, timeout=60)
    layout = KVLayout(
        KVFormat.NHD,
        num_layers=2,
        num_blocks=64 * 16,
        block_size=16,
        num_heads=1,
        head_dim=8,
        dtype=torch.bfloat16,
    )
    rng = random.Random(99)
    toks = [rng.randrange(128000) for _ in range(64 * CHUNK)]
    with CpuKVWorker(client, layout) as worker:
        worker.register()
        assert worker.store(worker.key(toks, 0, 64 * CHUNK, "fill"), list(range(64 * 16)))
        packed: dict[int, msgspec.Raw] = {n: pack_token_ids(toks[: n * CHUNK]) for n in (1, 64)}
        print(json.dumps({"ready": True}), flush=True)
        counter = 0
        for line in sys.stdin:
            if line.strip() == "stop":
                break
            result: dict[str, Any] = {
                "noop": [],
                "lookup_1": [],
                "lookup_64": [],
                "lookup_64h": [],
                "lookup_64hk": [],
                "calls": [],
            }
            for _ in range(samples):
                start = time.perf_counter_ns()
                client.noop()
                result["noop"].append(time.perf_counter_ns() - start)
            for n in (1, 64):
                for _ in range(samples):
                    counter += 1
                    key = worker.key(packed[n], 0, n * CHUNK, f"r{counter}", worker=False)
                    start = time.perf_counter_ns()
                    client.lookup(key)
                    end = time.perf_counter_ns()
                    result[f"lookup_{n}"].append(end - start)
                    if n == 64:
                        result["calls"].append((start, end))
                    assert client.query_prefetch_status(key.request_id) == n
                    client.end_session(key.request_id)
            # The hash-carrying key (a tree that has it): tokens as a list, as an engine
            # holds them; the client's hashing is inside the timed call.
            fast = getattr(client, "fast_lookup", None)
            if fast is not None:
                for _ in range(samples):
                    counter += 1
                    key = worker.key(toks, 0, 64 * CHUNK, f"r{counter}", worker=False)
                    start = time.perf_counter_ns()
                    fast(key)
                    result["lookup_64h"].append(time.perf_counter_ns() - start)
                    assert client.query_prefetch_status(key.request_id) == 64
                    client.end_session(key.request_id)
                result["hash_form"] = client.hash_form.refusal or "hashes"
                # The same key with its hashes already made (an engine that has them): the
                # wire and server part of the hash form alone.
                hashed = client.hash_form.key_for(
                    worker.key(toks, 0, 64 * CHUNK, "h", worker=False)
                )
                if hashed is not None:
                    for _ in range(samples):
                        counter += 1
                        key_h = msgspec.structs.replace(hashed, request_id=f"r{counter}")
                        start = time.perf_counter_ns()
                        client.lookup_hashes(key_h)
                        result["lookup_64hk"].append(time.perf_counter_ns() - start)
                        assert client.query_prefetch_status(key_h.request_id) == 64
                        client.end_session(key_h.request_id)
            print(json.dumps(result), flush=True)
        worker.unregister()
    client.close()


# -- the ceiling: plain pyzmq, no server code ---------------------------------------------

ECHO_SERVER = """
import sys, zmq
socket = zmq.Context().socket(zmq.ROUTER)
socket.bind(sys.argv[1])
while True:
    frames = socket.recv_multipart()
    if frames[-1] == b"stop":
        break
    socket.send_multipart([frames[0], frames[1], b"ok"])
"""


class RawEcho:
    """Plain pyzmq round trips to a process that answers at once: the transport's ceiling.

    The request carries the 64-chunk lookup's token list, msgpack-encoded as our
    client sends it (the same bytes), or 100 bytes; the reply is two bytes. No
    project code on either side, so ``lookup 64 / echo`` is what the server and
    the client add to moving those bytes on this host.
    """

    def __init__(self) -> None:
        import msgspec
        import zmq

        from tests.server_process import free_port

        self.url = f"tcp://127.0.0.1:{free_port()}"
        self.process = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, self.url])
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(self.url)
        rng = random.Random(99)  # the client's tokens
        tokens = [rng.randrange(128000) for _ in range(64 * CHUNK)]
        self.payloads = {"echo_100b": b"x" * 100, "echo_tokens": msgspec.msgpack.encode(tokens)}
        self.socket.send_multipart([b"0", b"warm"])
        if not self.socket.poll(30_000):
            raise RuntimeError("the echo process did not answer")
        self.socket.recv_multipart()

    def round(self, samples: int) -> dict[str, float]:
        """p50 in ms of ``samples`` round trips of each payload."""
        result = {}
        for name, payload in self.payloads.items():
            times = []
            for _ in range(samples):
                start = time.perf_counter_ns()
                self.socket.send_multipart([b"1", payload])
                self.socket.recv_multipart()
                times.append(time.perf_counter_ns() - start)
            result[name] = statistics.median(times) / 1e6
        return result

    def stop(self) -> None:
        self.socket.send_multipart([b"2", b"stop"])
        self.process.wait(30)
        self.socket.close(linger=0)
        self.context.term()


# -- the coordinator ---------------------------------------------------------------------


class Tree:
    """One tree's server and client processes."""

    def __init__(self, label: str, path: Path, server_args: list[str], stages: bool) -> None:
        sys.path.insert(0, str(ROOT))
        from tests.server_process import clean_env, free_port

        self.label, self.path = label, path
        port, http_port = free_port(), free_port()
        self.url = f"127.0.0.1:{port}"
        self.http = f"http://127.0.0.1:{http_port}"
        env = clean_env(PYTHONPATH=str(path))
        self.stage_file = None
        boot = "from lmcache_core.cli.main import main; main()"
        if stages:
            self.stage_file = tempfile.mktemp(prefix=f"stages-{label}-", suffix=".json")
            env["LMCACHE_BENCH_STAGES"] = self.stage_file
            boot = (
                "import importlib.util as u; "
                f"s = u.spec_from_file_location('lookup_stage_probe', {str(PROBE)!r}); "
                "m = u.module_from_spec(s); s.loader.exec_module(m); m.install(); " + boot
            )
        self.server = subprocess.Popen(
            [
                sys.executable,
                "-c",
                boot,
                "server",
                "--l1-size-gb",
                "0.25",
                "--eviction-policy",
                "LRU",
                "--port",
                str(port),
                "--http-host",
                "127.0.0.1",
                "--http-port",
                str(http_port),
                *server_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            # `python -c` puts the working directory first on sys.path, before
            # PYTHONPATH: started from another tree's root, the server would run
            # that tree's lmcache_core. Run it from the tree itself.
            cwd=path,
        )
        self.env = env

    def start_client(self, samples: int) -> None:
        from tests.server_process import wait_healthy

        wait_healthy(self.server, self.http)  # type: ignore[arg-type]
        self.client = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "bench_lookup_rtt.py"),
                "--client",
                self.url,
                "--samples",
                str(samples),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        assert self.client.stdout is not None
        json.loads(self.client.stdout.readline())

    def round(self) -> dict[str, Any]:
        assert self.client.stdin is not None and self.client.stdout is not None
        self.client.stdin.write("go\n")
        self.client.stdin.flush()
        return json.loads(self.client.stdout.readline())  # type: ignore[no-any-return]

    def requests_status(self) -> Any:
        """The server's request counters (``/status``), e.g. how many were served inline."""
        import httpx

        return httpx.get(f"{self.http}/status", timeout=10).json()["data_path"]["requests"]

    def stop(self) -> list[tuple[str, int]]:
        from tests.server_process import stop_server

        if getattr(self, "client", None) is not None:
            assert self.client.stdin is not None
            self.client.stdin.write("stop\n")
            self.client.stdin.close()
            self.client.wait(30)
        stop_server(self.server)  # type: ignore[arg-type]
        if self.stage_file and os.path.exists(self.stage_file):
            stamps = json.loads(Path(self.stage_file).read_text())
            os.unlink(self.stage_file)
            return [(s, int(t)) for s, t in stamps]
        return []


def split_stages(
    calls: list[tuple[int, int]], stamps: list[tuple[str, int]]
) -> dict[str, tuple[float, int]]:
    """Median us between consecutive stamps of the timed 64-chunk lookups, and how many.

    One request is in flight at a time, so the stamps inside a call's window are
    that request's (a pool hop's stages appear only when it took one).
    """
    stamps.sort(key=lambda item: item[1])
    times = [t for _, t in stamps]
    parts: dict[str, list[float]] = {}
    for start, end in calls:
        lo, hi = bisect.bisect_left(times, start), bisect.bisect_right(times, end)
        points = [("client_send", start), *stamps[lo:hi], ("client_recv", end)]
        for (a, ta), (b, tb) in itertools.pairwise(points):
            parts.setdefault(f"{a} -> {b}", []).append((tb - ta) / 1e3)
    # Only intervals a quarter of the calls have (a stray stamp of another thread: noise).
    return {
        name: (statistics.median(values), len(values))
        for name, values in parts.items()
        if len(values) >= len(calls) // 4
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=300, help="calls per figure per round")
    parser.add_argument("--stages", action="store_true", help="split the lookup into stages")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG")
    parser.add_argument(
        "--tree-arg",
        action="append",
        default=[],
        metavar="LABEL=ARG",
        help="a server argument for one tree only (e.g. obsoff=--disable-observability)",
    )
    parser.add_argument("--client", help=argparse.SUPPRESS)  # the client process's mode
    args = parser.parse_args()
    if args.client:
        client_main(args.client, args.samples)
        return
    specs = [t.split("=", 1) for t in args.tree] or [["this", str(ROOT)]]
    own: dict[str, list[str]] = {}
    for item in args.tree_arg:
        label, arg = item.split("=", 1)
        own.setdefault(label, []).append(arg)
    trees = [
        Tree(label, Path(path), [*args.server_arg, *own.get(label, [])], args.stages)
        for label, path in specs
    ]
    p50s: dict[str, dict[str, list[float]]] = {t.label: {} for t in trees}
    calls: dict[str, list[tuple[int, int]]] = {t.label: [] for t in trees}
    stamps: dict[str, list[tuple[str, int]]] = {}
    loads = []
    echo = RawEcho()
    echoes: dict[str, list[float]] = {}
    try:
        for tree in trees:
            tree.start_client(args.samples)
        for _ in range(args.rounds):
            loads.append(os.getloadavg()[0])
            for name, p50 in echo.round(args.samples).items():
                echoes.setdefault(name, []).append(p50)
            for tree in trees:
                result = tree.round()
                for name in ("noop", "lookup_1", "lookup_64", "lookup_64h", "lookup_64hk"):
                    if not result.get(name):
                        continue
                    p50 = statistics.median(result[name]) / 1e6
                    p50s[tree.label].setdefault(name, []).append(p50)
                calls[tree.label] += [tuple(c) for c in result["calls"]]
        for tree in trees:
            p50s[tree.label]["status"] = tree.requests_status()
    finally:
        echo.stop()
        for tree in trees:
            stamps[tree.label] = tree.stop()
    raw = {name: statistics.median(values) for name, values in echoes.items()}
    report: dict[str, Any] = {
        "load_avg_1m": loads,
        "samples": args.samples,
        "raw_echo_p50_ms": raw,
        "trees": {},
    }
    print(f"load average (1 min) during the rounds: {min(loads):.2f} - {max(loads):.2f}")
    print(
        f"ceiling, plain pyzmq echo (no project code): 100 B {raw['echo_100b']:.3f} ms, "
        f"the 64-chunk token list ({len(echo.payloads['echo_tokens']) // 1024} KB) "
        f"{raw['echo_tokens']:.3f} ms"
    )
    print(
        "| tree | noop p50 | lookup 1 p50 | lookup 64 p50 | lookup 64 / noop "
        "| lookup 64 / echo of its tokens "
        "| lookup 64 (hashes) p50 | hashes / noop | hashes made before p50 | that / noop |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for tree in trees:
        rounds = p50s[tree.label]
        status = rounds.pop("status", None)
        med = {name: statistics.median(values) for name, values in rounds.items()}
        ratios = [a / b for a, b in zip(rounds["lookup_64"], rounds["noop"], strict=True)]
        entry: dict[str, Any] = {"median_p50_ms": med, "rounds_p50_ms": rounds}
        entry["server_requests"] = status
        entry["lookup_64_over_noop"] = statistics.median(ratios)
        over_echo = zip(rounds["lookup_64"], echoes["echo_tokens"], strict=True)
        entry["lookup_64_over_echo"] = statistics.median(a / b for a, b in over_echo)
        hashed = "- | - | - | -"
        if "lookup_64h" in rounds:
            over = zip(rounds["lookup_64h"], rounds["noop"], strict=True)
            entry["lookup_64h_over_noop"] = statistics.median(a / b for a, b in over)
            hashed = f"{med['lookup_64h']:.3f} ms | {entry['lookup_64h_over_noop']:.2f}"
        if "lookup_64hk" in rounds:
            over = zip(rounds["lookup_64hk"], rounds["noop"], strict=True)
            entry["lookup_64hk_over_noop"] = statistics.median(a / b for a, b in over)
            hashed += f" | {med['lookup_64hk']:.3f} ms | {entry['lookup_64hk_over_noop']:.2f}"
        elif "lookup_64h" in rounds:
            hashed += " | - | -"
        print(
            f"| {tree.label} | {med['noop']:.3f} ms | {med['lookup_1']:.3f} ms "
            f"| {med['lookup_64']:.3f} ms | {entry['lookup_64_over_noop']:.2f} "
            f"| {entry['lookup_64_over_echo']:.2f} | {hashed} |"
        )
        if stamps.get(tree.label):
            entry["stages_us"] = split_stages(calls[tree.label], stamps[tree.label])
        report["trees"][tree.label] = entry
    for label, entry in report["trees"].items():
        if "stages_us" in entry:
            print(f"\nstages of the 64-chunk lookup, {label} (median us):")
            for name, (value, count) in entry["stages_us"].items():
                print(f"  {name:28s} {value:8.1f}  ({count} calls)")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
