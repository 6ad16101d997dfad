"""Real ``redis-server`` processes for tests of the ``resp`` adapter (and of code using it).

:class:`RedisServer` runs one server on 127.0.0.1, on a free port, keeping nothing on
disk (``--save '' --appendonly no``); tests can kill, restart, pause and resume it.
Where ``redis-server`` is not installed, :data:`needs_redis` skips with the reason.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

REDIS_SERVER = shutil.which("redis-server")
SKIP_REASON = (
    "redis-server is not installed (apt-get install redis-server); "
    "the resp adapter is tested against a real server only"
)
needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason=SKIP_REASON)
"""Mark a test that needs a real ``redis-server``."""

PASSWORD = "default-secret"
"""The ``default`` user's password (``--requirepass``) of the tests' AUTH server."""
ACL_USER = "lmcache"
ACL_PASSWORD = "lmcache-secret"
"""An ACL user of the tests' AUTH server, allowed every command and key."""

START_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process that tests can kill, restart, pause and resume.

    Args:
        workdir: Directory for its working files and log.
        extra_args: More ``redis-server`` options (e.g. ``--requirepass``).
    """

    def __init__(self, workdir: Path, *extra_args: str) -> None:
        assert REDIS_SERVER is not None
        self.workdir = workdir
        self.extra_args = extra_args
        self.host = "127.0.0.1"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.username: str | None = None
        self.password: str | None = None

    def start(self) -> None:
        """Start it (on the same port as before) and wait until it answers PING."""
        assert REDIS_SERVER is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [REDIS_SERVER, "--bind", self.host, "--port", str(self.port)]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        args += ["--logfile", str(self.workdir / "redis.log"), *self.extra_args]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                log = (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{log}")
            try:
                with self.client(socket_timeout=0.5) as client:
                    if client.ping():
                        return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.02)

    def client(self, **kwargs: object) -> redis.Redis:
        """A client of this server, with its credentials."""
        kwargs.setdefault("username", self.username)
        kwargs.setdefault("password", self.password)
        return redis.Redis(host=self.host, port=self.port, **kwargs)  # type: ignore[arg-type]

    def _signal(self, signum: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL it (its data is lost) and wait until it is gone."""
        if self.process is not None and self.process.poll() is None:
            self._signal(signal.SIGKILL)
            self.process.wait(timeout=START_TIMEOUT_S)

    def pause(self) -> None:
        """SIGSTOP it: connections open, but nothing answers."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT it after :meth:`pause`."""
        self._signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop it (resuming it first if paused)."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self._signal(signal.SIGCONT)
            self.process.terminate()
        try:
            self.process.wait(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def flush(self) -> None:
        """Delete every key."""
        with self.client() as client:
            client.flushall()


CLUSTER_BUS_OFFSET = 10000
"""A cluster node also listens on its port + 10000 (the cluster bus)."""


def free_cluster_port() -> int:
    """A port <= 55535 that is free, and whose cluster-bus port (+10000) is free too."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 55536)
        try:
            for candidate in (port, port + CLUSTER_BUS_OFFSET):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


CLUSTER_NODE_TIMEOUT_MS = 1000
"""``cluster-node-timeout`` of the tests' clusters: a dead shard is noticed within seconds."""


class RedisClusterServers:
    """A Redis Cluster of ``shards`` primaries (no replicas), each a real ``redis-server``.

    The slots are split evenly; ``cluster-require-full-coverage no`` keeps the other
    shards serving while one is down, as a production cluster with a failed shard
    and no replica would be configured to. Each node keeps its ``nodes.conf`` in
    its own directory, so a killed shard restarted on its port rejoins with its
    slots (and no data: nothing is saved).

    Args:
        workdir: Directory for the nodes' working directories.
        shards: Number of primaries.
    """

    def __init__(self, workdir: Path, shards: int = 3) -> None:
        self.nodes = [
            RedisServer(
                workdir / f"node-{i}",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(CLUSTER_NODE_TIMEOUT_MS),
                "--cluster-require-full-coverage",
                "no",
            )
            for i in range(shards)
        ]
        for node in self.nodes:
            node.port = free_cluster_port()

    @property
    def seeds(self) -> list[str]:
        """``host:port`` of every node."""
        return [f"{node.host}:{node.port}" for node in self.nodes]

    def start(self) -> None:
        """Start the nodes, assign the slots, join them and wait until the cluster is ok."""
        for node in self.nodes:
            node.start()
        share = 16384 // len(self.nodes)
        first = self.nodes[0]
        for i, node in enumerate(self.nodes):
            start = i * share
            end = 16383 if i == len(self.nodes) - 1 else start + share - 1
            with node.client() as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", start, end)
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        with first.client() as client:
            for node in self.nodes[1:]:
                client.execute_command("CLUSTER", "MEET", node.host, node.port)
        self.wait_ok()

    def wait_ok(self, timeout_s: float = 20.0) -> None:
        """Wait until every running node says ``cluster_state:ok`` and knows every slot."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = []
            for node in self.nodes:
                if node.process is None or node.process.poll() is not None:
                    continue
                with node.client(socket_timeout=1) as client:
                    info = client.execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                states.append("cluster_state:ok" in text and "cluster_slots_assigned:16384" in text)
            if states and all(states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not become ok in time")
            time.sleep(0.05)

    def owner_of(self, name: bytes) -> RedisServer:
        """The node that serves the key ``name``'s slot now."""
        with self.nodes[0].client() as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", name))
            for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    port = int(primary[1])
                    return next(node for node in self.nodes if node.port == port)
        raise LookupError(f"no node serves slot {slot}")

    def node_id(self, node: RedisServer) -> str:
        """The cluster node id of ``node``."""
        with node.client() as client:
            return str(client.execute_command("CLUSTER", "MYID").decode())

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()
