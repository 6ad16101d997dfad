"""A real ``lmcache server`` subprocess on loopback, for the harness and the benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx

SERVER_PYTHON_ENV = "LMCACHE_VLLM_SERVER_PYTHON"
"""The interpreter that runs ``lmcache server`` (default: the current one)."""


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``lmcache server`` on 127.0.0.1; started, killed and restarted by PID.

    Args:
        args: Extra server flags.
        port: The ZeroMQ port (a free one when None; a restart reuses it).
    """

    def __init__(self, *args: str, port: int | None = None) -> None:
        self.args = args
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.http_url = ""
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server

    @property
    def url(self) -> str:
        """The ZeroMQ endpoint."""
        return f"tcp://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> float:
        """Start and wait for ``/healthcheck``; the seconds it took."""
        http_port = free_port()
        self.http_url = f"http://127.0.0.1:{http_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
        env.pop("PYTHONPATH", None)
        env["LMCACHE_PROMETHEUS_PORT"] = str(free_port())
        # The server may run from another environment than the harness (one with vLLM).
        python = os.environ.get(SERVER_PYTHON_ENV) or sys.executable
        command = [python, "-c", "from lmcache_core.cli.main import main; main()"]
        started = time.monotonic()
        self.process = subprocess.Popen(
            [
                *command,
                "server",
                *("--host", "127.0.0.1", "--port", str(self.port)),
                *("--http-host", "127.0.0.1", "--http-port", str(http_port)),
                *self.args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}:\n{self.output()}"
                )
            try:
                if httpx.get(f"{self.http_url}/healthcheck", timeout=1.0).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not healthy after {timeout} s:\n{self.output()}")

    def metrics(self) -> dict[str, object]:
        """``GET /status``'s ``data_path`` part."""
        response = httpx.get(f"{self.http_url}/status", timeout=5.0)
        response.raise_for_status()
        return dict(response.json()["data_path"])

    def kill(self) -> None:
        """SIGKILL (a crash: nothing is cleaned up by the server)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM (the server unlinks its pool), SIGKILL after 15 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def output(self) -> str:
        """What the server printed (the last 8 kB)."""
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - 8192))
        return self._log.read().decode(errors="replace")
