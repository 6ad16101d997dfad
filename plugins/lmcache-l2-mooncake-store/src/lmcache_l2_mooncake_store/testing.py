"""A real Mooncake cluster on loopback for tests and benchmarks: master and store nodes.

:class:`MooncakeCluster` starts ``mooncake_master`` (RPC and metrics on
127.0.0.1, no HTTP metadata server: clients use ``P2PHANDSHAKE``, so nothing
binds every interface for metadata) and, optionally, standalone store nodes
(``mooncake_client`` lending a segment to the pool, so stored objects outlive the
processes that stored them). Every process is recorded by PID and stopped by it;
the master can be killed and restarted on the same ports. Where the library is
not installed, :data:`needs_mooncake` skips with the install command.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from lmcache_l2_mooncake_store.client import INSTALL

START_TIMEOUT_S = 15.0
SKIP_REASON = (
    "the Mooncake store library is not installed: apt-get install -y libibverbs1 && "
    "pip install mooncake-transfer-engine-non-cuda==0.3.13.post1 (or nox -s mooncake)"
)


def _binary(name: str) -> str | None:
    """A console script of the Mooncake wheel, next to this interpreter or on PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name)


def mooncake_installed() -> bool:
    """Whether the library and its ``mooncake_master`` can be found (imports nothing)."""
    return (
        importlib.util.find_spec("mooncake") is not None and _binary("mooncake_master") is not None
    )


needs_mooncake = pytest.mark.skipif(not mooncake_installed(), reason=SKIP_REASON)
"""Mark a test that needs a real Mooncake cluster."""


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[bytes] | None, signum: int = signal.SIGTERM) -> None:
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signum)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """The TCP ``(address, port)`` pairs process ``pid`` listens on (Linux ``/proc``).

    IPv4 addresses are dotted quads; an IPv6 one is its 32 hex digits (``0`` * 32 is
    every interface).
    """
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found: set[tuple[str, int]] = set()
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            address, port = local.split(":")
            if table == "tcp":
                address = socket.inet_ntoa(bytes.fromhex(address)[::-1])
            found.add((address, int(port, 16)))
    return found


class MooncakeCluster:
    """``mooncake_master`` plus standalone store nodes on 127.0.0.1, stopped by PID.

    Args:
        workdir: Directory for the processes' logs.
        client_ttl_s: The master's ``client_ttl``: how long a dead client's segment
            (and the objects in it) stays listed.
    """

    def __init__(self, workdir: Path, *, client_ttl_s: int = 3) -> None:
        self.workdir = workdir
        self.client_ttl_s = client_ttl_s
        self.rpc_port = free_port()
        self.metrics_port = free_port()
        self.master: subprocess.Popen[bytes] | None = None
        self.nodes: list[subprocess.Popen[bytes]] = []
        self._node_bytes = 0

    @property
    def master_address(self) -> str:
        """``host:port`` of the master's RPC service."""
        return f"127.0.0.1:{self.rpc_port}"

    def adapter_config(self, **overrides: Any) -> dict[str, Any]:
        """An ``--l2-adapter`` JSON for this cluster (a pure client unless overridden)."""
        config: dict[str, Any] = {
            "type": "mooncake_store",
            "local_hostname": "127.0.0.1",
            "metadata_server": "P2PHANDSHAKE",
            "master_server_addr": self.master_address,
            "protocol": "tcp",
            "global_segment_size": 0,
            "local_buffer_size": 0,
        }
        config.update(overrides)
        return config

    # -- the master ------------------------------------------------------------------------

    def start_master(self) -> None:
        """Start the master (on the same ports as before) and wait until it accepts RPCs."""
        binary = _binary("mooncake_master")
        assert binary is not None, INSTALL
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            binary,
            "--rpc_address=127.0.0.1",
            f"--rpc_port={self.rpc_port}",
            "--metrics_host=127.0.0.1",
            f"--metrics_port={self.metrics_port}",
            f"--client_ttl={self.client_ttl_s}",
            "--enable_http_metadata_server=false",
        ]
        log = (self.workdir / "master.log").open("ab")
        self.master = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self._wait_for(lambda: self._accepts(self.rpc_port), "mooncake_master")
        self._wait_for(lambda: self.metric("master_key_count") is not None, "master metrics")

    def kill_master(self) -> None:
        """SIGKILL the master (its index of objects is lost) and wait until it is gone."""
        _stop(self.master, signal.SIGKILL)

    def metric(self, name: str) -> float | None:
        """One gauge of the master's Prometheus endpoint (None when unreachable)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                text = response.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    # -- store nodes ------------------------------------------------------------------------

    def add_store_node(self, segment_bytes: int = 256 << 20) -> subprocess.Popen[bytes]:
        """Start a standalone store node lending ``segment_bytes``; wait until it is mounted."""
        binary = _binary("mooncake_client")
        assert binary is not None, INSTALL
        index = len(self.nodes)
        args = [
            binary,
            "--host=127.0.0.1",
            f"--port={free_port()}",
            f"--master_server_address={self.master_address}",
            "--metadata_server=P2PHANDSHAKE",
            f"--global_segment_size={segment_bytes}",
            "--protocol=tcp",
        ]
        log = (self.workdir / f"node-{index}.log").open("ab")
        node = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.nodes.append(node)
        self._node_bytes += segment_bytes
        self._wait_for(
            lambda: (self.metric("master_total_capacity_bytes") or 0) >= self._node_bytes,
            f"store node {index}",
        )
        return node

    def kill_node(self, node: subprocess.Popen[bytes]) -> None:
        """SIGKILL one store node (the objects in its segment are lost)."""
        _stop(node, signal.SIGKILL)

    # -- lifetime ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every node, then the master."""
        for node in self.nodes:
            _stop(node)
        self.nodes.clear()
        _stop(self.master)

    def __enter__(self) -> MooncakeCluster:
        self.start_master()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _accepts(self, port: int) -> bool:
        with socket.socket() as probe:
            probe.settimeout(0.2)
            return probe.connect_ex(("127.0.0.1", port)) == 0

    def _wait_for(self, ready: Any, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            if self.master is not None and self.master.poll() is not None:
                log = (self.workdir / "master.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"mooncake_master exited with {self.master.returncode}:\n{log}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{what} not ready within {START_TIMEOUT_S} s")
            time.sleep(0.05)
