"""Real servers, clients and CPU workers for the end-to-end data-path tests.

Starting a server costs several seconds of CPU (imports), so every server
configuration the selected tests need is launched at once, in parallel, when the
first data-path test runs, and shared by all tests for the whole session. Tests
get a server through a ``<name>_server`` fixture; :data:`SERVERS` lists the
configurations. Every server runs the engine that ``--engine-type NAME`` names
(default ``default``), so an engine plugin runs this same suite
(:mod:`lmcache_core.testing.engine_suite`). Each server's output is drained on a
thread (a full pipe would block its logging) and kept for failure messages.

The reaping test needs a worker that pinged once and then stayed silent for 30 s:
:class:`SilentWorker` does that on a thread from the start of the session, and
the test (marked ``slow``, moved to the end of the run) only checks the outcome.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmcache_core.client import MPClient
from lmcache_core.client.cpu_worker import CpuKVWorker
from lmcache_core.plugin import PluginKind
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.protocol.types import EngineDrivenRegistration
from lmcache_core.testing.engine_suite import engine_server_args
from lmcache_core.transfer.cpu_shm import SHM_DIR
from lmcache_core.transfer.layout import KVLayout
from tests.data_path.kv import CHUNK, make_layout
from tests.server_process import free_port, start_server

_L1 = ("--l1-size-gb", "0.25", "--eviction-policy", "LRU", "--chunk-size", str(CHUNK))

SERVERS: dict[str, tuple[str, ...]] = {
    # The shared server: blake3, both transfer modes, an auto-named shm L1 pool, one
    # CPU-pool thread (the health test relies on it) and a transfer thread per client.
    "main": (*_L1, "--max-gpu-workers", "4", "--max-cpu-workers", "1"),
    # Hash algorithms, and lmcache_driven only (engine-driven ops: NotSupportedError).
    "sha": (*_L1, "--hash-algorithm", "sha256_cbor", "--supported-transfer-mode", "lmcache_driven"),
    # builtin hashes, and read locks that expire after 1 s (crashed clients).
    "builtin_ttl": (*_L1, "--hash-algorithm", "builtin", "--l1-read-ttl-seconds", "1"),
    # A 10 MiB L1 for eviction under pressure.
    "tiny": ("--l1-size-gb", "0.01", "--eviction-policy", "LRU", "--chunk-size", str(CHUNK)),
    # The shortest reap timeout allowed.
    "reap": (
        "--l1-size-gb",
        "0.05",
        "--eviction-policy",
        "LRU",
        "--chunk-size",
        str(CHUNK),
        "--worker-reap-timeout-seconds",
        "30",
    ),
    # No shared pool (objects travel inline), engine_driven only (store: NotSupportedError),
    # and reservations that expire after 1 s.
    "inline": (
        *_L1,
        "--shm-name",
        "",
        "--supported-transfer-mode",
        "engine_driven",
        "--l1-write-ttl-seconds",
        "1",
    ),
    # A throwaway server for requests that (because of a bug) may kill the server.
    "victim": ("--l1-size-gb", "0.01", "--eviction-policy", "LRU", "--chunk-size", str(CHUNK)),
}

START_TIMEOUT = 120.0
CALL_TIMEOUT = 10.0


class Server:
    """One ``lmcache server`` subprocess on free ports."""

    def __init__(self, name: str, args: tuple[str, ...]) -> None:
        self.name = name
        self.args = args
        http_port, zmq_port = free_port(), free_port()
        self.http_url = f"http://127.0.0.1:{http_port}"
        self.zmq_url = f"tcp://127.0.0.1:{zmq_port}"
        self.process = start_server(
            "--http-host",
            "127.0.0.1",
            "--http-port",
            str(http_port),
            "--host",
            "127.0.0.1",
            "--port",
            str(zmq_port),
            *args,
        )
        self.log: collections.deque[str] = collections.deque(maxlen=3000)
        self._drain = threading.Thread(target=self._read_output, daemon=True)
        self._drain.start()
        self._healthy = False
        self._wait_lock = threading.Lock()
        self.pool_segment: str | None = None
        self._clients: list[MPClient] = []

    def _read_output(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line.rstrip("\n"))

    def output(self, lines: int = 60) -> str:
        """The last lines the server printed."""
        return "\n".join(list(self.log)[-lines:])

    def wait(self) -> Server:
        """Block until ``/healthcheck`` answers 200."""
        with self._wait_lock:
            if self._healthy:
                return self
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    self._drain.join(5)
                    raise AssertionError(
                        f"server {self.name} exited with {self.process.returncode}:\n"
                        f"{self.output()}"
                    )
                try:
                    if httpx.get(f"{self.http_url}/healthcheck", timeout=1.0).status_code == 200:
                        self._healthy = True
                        l1 = self.status()["l1"]
                        self.pool_segment = l1["shm_name"] if l1["kind"] == "shm" else None
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
            raise AssertionError(f"server {self.name} not healthy after {START_TIMEOUT} s")

    def full_status(self) -> dict[str, Any]:
        """GET /status."""
        response = httpx.get(f"{self.http_url}/status", timeout=5.0)
        response.raise_for_status()
        return dict(response.json())

    def status(self) -> dict[str, Any]:
        """The ``data_path`` part of /status."""
        return dict(self.full_status()["data_path"])

    def l1(self) -> dict[str, Any]:
        """L1 usage from /status."""
        return dict(self.status()["l1"])

    def engine(self) -> dict[str, Any]:
        """Engine state from /status."""
        return dict(self.status()["engine"])

    def client(self, timeout: float = CALL_TIMEOUT) -> MPClient:
        """A new client, closed when the server stops."""
        client = MPClient(self.zmq_url, timeout=timeout)
        self._clients.append(client)
        return client

    def terminate(self) -> None:
        """SIGTERM (the server unlinks its pool)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def join(self) -> None:
        """Wait for exit (SIGKILL after 15 s), close clients."""
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._drain.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        for client in self._clients:
            client.close()
        self._clients.clear()


class SilentWorker:
    """On the reap server: register a worker, ping once, then stay silent.

    A second worker registers and never pings (it must outlive the first); an
    engine-driven worker pings once and goes silent too.

    Started on a thread at the beginning of the session, so the 30 s of silence
    the reaper needs overlap the other tests.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self.client: MPClient | None = None
        self.worker: CpuKVWorker | None = None
        self.unpinged: CpuKVWorker | None = None
        self.driven = EngineDrivenRegistration(
            instance_id=uuid.uuid4().int >> 65,
            model_name="reaped-ed",
            world_size=1,
            block_size=4,
            num_layers=2,
            hidden_dim_size=32,
            dtype_str="float16",
            use_mla=False,
            num_physical_slots=CHUNK,
        )
        self.pinged_at: float | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="silent-worker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.server.wait()
            self.client = self.server.client()
            self.worker = CpuKVWorker(self.client, make_layout())
            self.worker.register()
            # Registered but never pinged: the registration grace (1 h) applies to it.
            self.unpinged = CpuKVWorker(self.client, make_layout())
            self.unpinged.register()
            # An engine-driven worker that goes silent too.
            self.client.register_engine_driven(self.driven)
            assert self.client.ping(self.worker.instance_id) is True
            assert self.client.ping(self.driven.instance_id) is True
            self.pinged_at = time.monotonic()
            listed = self.server.engine()["worker_liveness"]
            assert listed[str(self.worker.instance_id)]["pinged"] is True
            assert listed[str(self.unpinged.instance_id)]["pinged"] is False
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            self.error = exc

    def ready(self) -> SilentWorker:
        """Wait for the set-up; re-raise its failure."""
        self._thread.join(START_TIMEOUT + 30)
        if self.error is not None:
            raise self.error
        assert self.pinged_at is not None, "the silent worker was not set up"
        return self

    def close(self) -> None:
        """Unlink the worker's shared memory."""
        self._thread.join(START_TIMEOUT + 30)
        for worker in (self.worker, self.unpinged):
            if worker is not None:
                worker.close()


class ServerPool:
    """The session's servers, launched together, stopped together.

    Args:
        engine: The engine every server runs (``--engine-type``; see
            :mod:`lmcache_core.testing.engine_suite`).
    """

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.servers: dict[str, Server] = {}
        self.silent_worker: SilentWorker | None = None
        spec = PluginRegistry(strict=True).resolve(PluginKind.ENGINE, engine)
        self.transfer_modes = getattr(spec, "transfer_modes", frozenset())

    def refused(self, name: str) -> str | None:
        """Why the engine cannot run server ``name`` (a transfer mode it refuses), or None."""
        args = SERVERS[name]
        if "--supported-transfer-mode" not in args:
            return None
        mode = args[args.index("--supported-transfer-mode") + 1]
        if mode in self.transfer_modes:
            return None
        return f"engine {self.engine!r} refuses --supported-transfer-mode {mode} by design"

    def launch(self, name: str) -> Server:
        """Start the server ``name`` unless it runs already."""
        if name not in self.servers:
            args = (*engine_server_args(self.engine), *SERVERS[name])
            self.servers[name] = Server(name, args)
        return self.servers[name]

    def get(self, name: str) -> Server:
        """The healthy server ``name`` (the test is skipped if the engine refuses it)."""
        reason = self.refused(name)
        if reason is not None:
            pytest.skip(reason)
        return self.launch(name).wait()

    def stop_all(self) -> list[str]:
        """Stop every server (in parallel); returns shared-memory segments left behind."""
        if self.silent_worker is not None:
            self.silent_worker.close()
        for server in self.servers.values():
            server.terminate()
        leaked = []
        for server in self.servers.values():
            server.join()
            segment = server.pool_segment
            if segment and os.path.exists(os.path.join(SHM_DIR, segment)):
                leaked.append(segment)
        return leaked


_ACTIVE: list[ServerPool] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the logs of the servers a failing data-path test used to its report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _ACTIVE:
        for name, server in _ACTIVE[0].servers.items():
            if f"{name}_server" in getattr(item, "fixturenames", ()):
                report.sections.append((f"server {name} output", server.output(200)))


def _kv_segments() -> set[str]:
    """The KV segments this test process's CpuKVWorkers created and did not unlink."""
    prefix = f"lmcache_kv_{os.getpid()}_"
    return {name for name in os.listdir(SHM_DIR) if name.startswith(prefix)}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the marked-slow data-path tests last, and mark every server-using one slow.

    The ones marked in their module (reaping) go last: their waiting overlaps the
    others. Every test that uses a server of the pool is then marked ``slow`` too,
    so ``pytest -m "not slow"`` leaves the servers unstarted.
    """
    here = Path(__file__).parent
    ours = [item for item in items if here in Path(str(item.path)).parents]
    slow = [item for item in ours if item.get_closest_marker("slow") is not None]
    if slow:
        chosen = set(map(id, slow))
        items[:] = [item for item in items if id(item) not in chosen] + slow
    for item in ours:
        if "server_pool" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def server_pool(request: pytest.FixtureRequest, engine_type: str) -> Iterator[ServerPool]:
    """Every server the selected tests use, launched in parallel up front (``engine_type``)."""
    fixtures = {name for item in request.session.items for name in item.fixturenames}
    pool = ServerPool(engine_type)
    for name in SERVERS:
        if f"{name}_server" in fixtures and pool.refused(name) is None:
            pool.launch(name)
    if "silent_worker" in fixtures:
        pool.silent_worker = SilentWorker(pool.launch("reap"))
    _ACTIVE.append(pool)
    yield pool
    _ACTIVE.remove(pool)
    leaked = pool.stop_all()
    assert not leaked, f"servers left their L1 pool segments behind: {leaked}"
    left = _kv_segments()
    assert not left, f"CpuKVWorkers left shared-memory segments behind: {sorted(left)}"


@pytest.fixture(scope="session")
def main_server(server_pool: ServerPool) -> Server:
    """The shared server (see :data:`SERVERS`)."""
    return server_pool.get("main")


@pytest.fixture(scope="session")
def sha_server(server_pool: ServerPool) -> Server:
    """sha256_cbor hashes, lmcache_driven only."""
    return server_pool.get("sha")


@pytest.fixture(scope="session")
def builtin_ttl_server(server_pool: ServerPool) -> Server:
    """builtin hashes, 1 s read-lock TTL."""
    return server_pool.get("builtin_ttl")


@pytest.fixture(scope="session")
def tiny_server(server_pool: ServerPool) -> Server:
    """A 10 MiB L1."""
    return server_pool.get("tiny")


@pytest.fixture(scope="session")
def reap_server(server_pool: ServerPool) -> Server:
    """Reap timeout 30 s."""
    return server_pool.get("reap")


@pytest.fixture(scope="session")
def inline_server(server_pool: ServerPool) -> Server:
    """``--shm-name ""``, engine_driven only."""
    return server_pool.get("inline")


@pytest.fixture(scope="session")
def victim_server(server_pool: ServerPool) -> Server:
    """A server no other test uses: requests that may crash a server go there."""
    return server_pool.get("victim")


@pytest.fixture(scope="session")
def silent_worker(server_pool: ServerPool, reap_server: Server) -> SilentWorker:
    """The reap server's worker that pinged once at the start of the session."""
    assert server_pool.silent_worker is not None
    return server_pool.silent_worker.ready()


@pytest.fixture(scope="session")
def main_client(main_server: Server) -> MPClient:
    """A client of the shared server."""
    return main_server.client()


WorkerFactory = Callable[..., CpuKVWorker]


@pytest.fixture
def make_worker() -> Iterator[WorkerFactory]:
    """``make_worker(client, layout, register=True, **CpuKVWorker kwargs)``; cleaned up after."""
    made: list[tuple[CpuKVWorker, bool]] = []

    def factory(
        client: MPClient, layout: KVLayout, *, register: bool = True, **kwargs: Any
    ) -> CpuKVWorker:
        worker = CpuKVWorker(client, layout, **kwargs)
        made.append((worker, register))
        if register:
            worker.register()
        return worker

    yield factory
    for worker, registered in made:
        if registered:
            # The server may be gone or have reaped it; the unlink below is what matters.
            with contextlib.suppress(Exception):
                worker.unregister()
        worker.close()


@pytest.fixture
def l2_redis(tmp_path: Path) -> Iterator[Any]:
    """A real ``redis-server`` of this test's own (it may kill and restart it), or a skip."""
    from lmcache_l2_resp.testing import REDIS_SERVER, SKIP_REASON

    from tests.data_path.l2_helpers import redis_for_l2

    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    with redis_for_l2(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def l2_s3() -> Iterator[dict[str, Any]]:
    """A real S3-protocol server (moto) of this test's own, one bucket: an ``s3`` adapter config."""
    from tests.data_path.l2_helpers import moto_bucket

    with moto_bucket() as adapter:
        yield adapter
