"""The chaos run: a server, a worker process and a Redis killed and restarted under load.

One real ``lmcache server`` on fixed loopback ports with a cascade of two L2
adapters: ``fs`` (the persistent tier, adapter 1) and ``resp`` on a real
``redis-server`` (adapter 2, volatile). Load comes from
:mod:`tests.chaos.load_worker` processes. In a loop, one fault at a time, in
turn: the worker process is SIGKILLed and a new one started, Redis is SIGKILLed
and started again on its port a moment later, the server is SIGKILLed and
started again on its ports (same ``--shm-name``, so the stale L1 segment is
reclaimed). Every process is stopped by its PID.

Afterwards :func:`verify` starts nothing new: it reads the journals and checks,
against the same server (L1 cleared, so every hit comes from ``fs``), that every
store journalled as durable is still found and byte-identical; :func:`hangs`
finds requests that took longer than the deadline allows while the server was
up; the server's anonymous RSS is sampled at the end of every round.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from lmcache_l2_resp.testing import RedisServer

from lmcache_core.client import MPClient
from lmcache_core.client.cpu_worker import CpuKVWorker
from tests.chaos.load_worker import LAYOUT, chunks_of, kv_of, salt_of, tokens_of
from tests.data_path.l2_helpers import BPC, CHUNK
from tests.server_process import clean_env, free_port, start_server, stop_server, wait_healthy

DEADLINE_S = 2.0
"""``--request-deadline-seconds`` of the chaos server."""
HANG_AFTER_S = DEADLINE_S + 3.0
"""A request answered later than this by a server that was up all along hung (slack for a
loaded 2-core machine)."""
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Faults:
    """What was injected, and when the server could not answer."""

    worker_kills: int = 0
    redis_kills: int = 0
    server_kills: int = 0
    down: list[tuple[float, float]] = field(default_factory=list)
    """``(killed, healthy again)`` of every server restart, on ``time.monotonic()``."""

    @property
    def total(self) -> int:
        return self.worker_kills + self.redis_kills + self.server_kills


class ChaosCluster:
    """The processes of a chaos run, all under ``workdir``.

    Args:
        workdir: Where the fs tier, Redis, the journals and the logs live.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.fs_dir = workdir / "fs"
        self.redis = RedisServer(workdir / "redis")
        self.port, self.http_port = free_port(), free_port()
        self.shm_name = f"chaos_{uuid.uuid4().hex[:12]}"
        self.server: subprocess.Popen[str] | None = None
        self.server_log: Any = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.journals: list[Path] = []
        self.faults = Faults()
        self.rss: list[tuple[int, int]] = []
        """``(server incarnation, RssAnon bytes)`` samples."""
        self.incarnation = 0
        self._seed = 0

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def args(self) -> list[str]:
        fs = {"type": "fs", "base_path": str(self.fs_dir)}
        resp = {"type": "resp", "host": self.redis.host, "port": self.redis.port}
        return [
            *("--host", "127.0.0.1", "--port", str(self.port)),
            *("--http-host", "127.0.0.1", "--http-port", str(self.http_port)),
            *("--l1-size-gb", "0.02", "--eviction-policy", "LRU", "--chunk-size", str(CHUNK)),
            *("--shm-name", self.shm_name, "--max-gpu-workers", "2"),
            *("--request-deadline-seconds", str(DEADLINE_S)),
            *("--worker-reap-timeout-seconds", "30"),
            *("--l2-adapter", json.dumps(fs), "--l2-adapter", json.dumps(resp)),
        ]

    # -- processes ---------------------------------------------------------------------

    def start_server(self) -> None:
        self.incarnation += 1
        self.server = start_server(*self.args(), env=clean_env())
        wait_healthy(self.server, self.http_url, timeout=60.0)
        # Drain its output into a file (a full pipe would block its logging).
        log = (self.workdir / f"server-{self.incarnation}.log").open("w")
        assert self.server.stdout is not None
        drain = subprocess.Popen(["cat"], stdin=self.server.stdout, stdout=log)
        self.server_log = (log, drain)

    def kill_server(self) -> None:
        assert self.server is not None
        self.server.kill()  # SIGKILL, by its PID
        self.server.wait(10)
        self._close_log()

    def stop_server(self) -> None:
        if self.server is not None:
            stop_server(self.server)
            self._close_log()

    def _close_log(self) -> None:
        if self.server_log is not None:
            log, drain = self.server_log
            drain.wait(10)
            log.close()
            self.server_log = None

    def start_worker(self) -> None:
        self._seed += 1
        journal = self.workdir / f"worker-{self._seed}.jsonl"
        self.journals.append(journal)
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "tests.chaos.load_worker"),
                *(self.url, self.http_url, str(journal), str(self._seed)),
            ],
            cwd=REPO,
            env=clean_env(),
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / f"worker-{self._seed}.err").open("w"),
        )
        self.workers.append(process)

    def kill_worker(self) -> None:
        process = self.workers[-1]
        process.kill()  # SIGKILL: its shared memory stays behind, as after a crash
        process.wait(10)
        for leftover in glob.glob(f"/dev/shm/lmcache_kv_{process.pid}_*"):
            os.unlink(leftover)

    def stop_worker(self) -> None:
        process = self.workers[-1]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def sample_rss(self) -> None:
        assert self.server is not None
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{self.server.pid}/status").read_text()
            for line in status.splitlines():
                if line.startswith("RssAnon:"):
                    self.rss.append((self.incarnation, int(line.split()[1]) * 1024))

    # -- faults ------------------------------------------------------------------------

    def inject(self, fault: str) -> None:
        """One fault: ``worker``, ``redis`` or ``server``."""
        if fault == "worker":
            self.kill_worker()
            self.faults.worker_kills += 1
            self.start_worker()
        elif fault == "redis":
            self.redis.kill()
            self.faults.redis_kills += 1
            time.sleep(1.0)  # the resp adapter sees it gone under load
            self.redis.start()
        else:
            killed = time.monotonic()
            self.kill_server()
            self.faults.server_kills += 1
            self.start_server()
            self.faults.down.append((killed, time.monotonic()))

    @contextlib.contextmanager
    def running(self) -> Iterator[ChaosCluster]:
        """Redis, the server and a first worker; everything stopped at exit."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis.start()
        try:
            self.start_server()
            self.start_worker()
            yield self
        finally:
            for process in self.workers:
                if process.poll() is None:
                    process.kill()
                    process.wait(10)
                for leftover in glob.glob(f"/dev/shm/lmcache_kv_{process.pid}_*"):
                    os.unlink(leftover)
            self.stop_server()
            self.redis.stop()


def run_chaos(cluster: ChaosCluster, *, faults: int, round_s: float) -> None:
    """Inject ``faults`` faults in turn (worker, Redis, server, ...), one per round of load."""
    order = ["worker", "redis", "server"]
    time.sleep(round_s)
    cluster.sample_rss()
    for index in range(faults):
        cluster.inject(order[index % len(order)])
        time.sleep(round_s)
        cluster.sample_rss()


# -- the checks ------------------------------------------------------------------------


@dataclass
class Journals:
    """What the workers wrote."""

    requests: list[dict[str, Any]]
    durable: list[tuple[int, int]]
    reads: list[dict[str, Any]]


def read_journals(paths: list[Path]) -> Journals:
    requests, durable, reads = [], [], []
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the last line of a killed worker may be torn
                continue
            if "op" in record:
                requests.append(record)
            elif "durable" in record:
                durable.append((record["durable"][0], record["durable"][1]))
            elif "read" in record:
                reads.append(record)
    return Journals(requests, durable, reads)


def hangs(journals: Journals, faults: Faults) -> list[dict[str, Any]]:
    """Requests that took too long (or got no answer) without a server restart to excuse them."""

    def excused(start: float, end: float) -> bool:
        return any(start <= up and end >= killed for killed, up in faults.down)

    return [
        r
        for r in journals.requests
        if (r["dt"] > HANG_AFTER_S or r["r"] == "timeout") and not excused(r["t"], r["t"] + r["dt"])
    ]


def misses(journals: Journals) -> list[dict[str, Any]]:
    """Read-backs of durable stores that found fewer chunks than were stored.

    Not losses (an L1 too full for the prefetch, a deadline cut short, a read
    during a restart): each names its ``request`` id, which is what a miss
    explanation (``GET /lookups/{request_id}``, issue 14 item 1) is asked for.
    """
    return [r for r in journals.reads if r["hits"] < r.get("chunks", r["hits"])]


def unexplained(missed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Missed read-backs the server did not explain, although it was reachable to ask.

    A miss whose explanation could not be asked for because the server was down
    (``explain_error`` starting with ``unreachable``: it was being restarted, and
    a restarted server has no record of the lookups of its predecessor) is excused.
    """
    return [
        r
        for r in missed
        if not r.get("cause") and not str(r.get("explain_error", "")).startswith("unreachable")
    ]


def verify(cluster: ChaosCluster, durable: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Every durable store, read back from ``fs`` by a fresh client; returns those lost."""
    client = MPClient(cluster.url, timeout=20)
    worker = CpuKVWorker(client, LAYOUT)
    lost: list[tuple[int, int]] = []
    try:
        worker.register()
        client.clear(True)  # L1 emptied: every hit must come from the persistent tier
        for seed, n in durable:
            chunks, request = chunks_of(n), uuid.uuid4().hex
            tokens, salt = tokens_of(seed, n), salt_of(seed, n)
            client.lookup(
                worker.key(tokens, 0, chunks * CHUNK, request, worker=False, cache_salt=salt)
            )
            hits = client.wait_prefetch_status(request, 10.0)
            dst = list(range(1, 1 + chunks * BPC))
            ok = hits == chunks and worker.retrieve(
                worker.key(tokens, 0, chunks * CHUNK, request, cache_salt=salt), dst
            )
            client.end_session(request)
            expected = kv_of(seed, n)
            if not ok or not all(
                bool((layer[:, dst] == want).all())
                for layer, want in zip(worker.layers, expected, strict=True)
            ):
                lost.append((seed, n))
            if len(durable) > 50:
                client.clear(True)  # keep L1 from filling with the read-backs
    finally:
        with contextlib.suppress(Exception):
            worker.unregister()
        worker.close()
        client.close()
    return lost


def rss_growth(samples: list[tuple[int, int]]) -> int:
    """The largest anonymous-RSS growth within one server incarnation (first sample to last)."""
    growth = 0
    by_incarnation: dict[int, list[int]] = {}
    for incarnation, rss in samples:
        by_incarnation.setdefault(incarnation, []).append(rss)
    for values in by_incarnation.values():
        if len(values) >= 2:
            growth = max(growth, values[-1] - values[0])
    return growth


def l2_status(cluster: ChaosCluster) -> dict[str, Any]:
    status: dict[str, Any] = httpx.get(f"{cluster.http_url}/status", timeout=5).json()
    return status
