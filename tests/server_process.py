"""Start a real ``lmcache server`` subprocess and talk to it over real sockets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The test environment without stray LMCACHE_* settings.

    Each server gets a free ``--prometheus-port`` (the metrics subscriber binds
    it; the default 9090 would collide between servers running at once). A
    ``--prometheus-port`` flag still overrides it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    env["LMCACHE_PLUGINS_STRICT"] = "1"
    env["LMCACHE_PROMETHEUS_PORT"] = str(free_port())
    env.update(extra)
    return env


def start_server(
    *args: str, env: dict[str, str] | None = None, cwd: str | None = None
) -> subprocess.Popen[str]:
    """Launch ``lmcache server ARGS`` with its output captured.

    ``cwd``: the server's working directory. ``python -c`` puts it first on
    ``sys.path``, before ``PYTHONPATH``: a server meant to run another tree's code
    (its path in ``env``'s ``PYTHONPATH``) must not start in this checkout.
    """
    return subprocess.Popen(
        [sys.executable, "-c", "from lmcache_core.cli.main import main; main()", "server", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env or clean_env(),
        cwd=cwd,
    )


def wait_healthy(process: subprocess.Popen[str], url: str, timeout: float = 30.0) -> float:
    """Poll ``url/healthcheck`` until 200; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"server exited with {process.returncode}:\n{output}")
        try:
            if httpx.get(f"{url}/healthcheck", timeout=1.0).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"server not healthy after {timeout} s")


def stop_server(process: subprocess.Popen[str]) -> None:
    """SIGTERM (so the server unlinks its shared memory), SIGKILL if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait(10)


_OUTPUT: dict[int, list[str]] = {}
_DRAINS: dict[int, threading.Thread] = {}


def drain_output(process: subprocess.Popen[str]) -> None:
    """Keep reading the server's output on a thread (a full pipe would block its logging)."""
    lines = _OUTPUT.setdefault(process.pid, [])

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)

    thread = threading.Thread(target=read, daemon=True)
    _DRAINS[process.pid] = thread
    thread.start()


def output_of(process: subprocess.Popen[str]) -> str:
    """What a drained server printed so far."""
    return "".join(_OUTPUT.get(process.pid, []))


@dataclass(frozen=True)
class LiveServer:
    """A server started by :func:`server_on_free_ports`: the process and where to reach it."""

    process: subprocess.Popen[str]
    http_url: str
    zmq_port: int

    @property
    def zmq_url(self) -> str:
        """The ZeroMQ endpoint clients connect to."""
        return f"tcp://127.0.0.1:{self.zmq_port}"

    def output(self) -> str:
        """Everything the server printed so far (all of it once the ``with`` block ended)."""
        return output_of(self.process)


@contextmanager
def server_on_free_ports(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60.0, cwd: str | None = None
) -> Iterator[LiveServer]:
    """A healthy ``lmcache server ARGS`` on free loopback ports, its output drained.

    HTTP and ZeroMQ both bind 127.0.0.1. ZeroMQ takes a free port unless ``args``
    name one with ``--port`` (a test that restarts a server on the same port).
    At exit the server gets SIGTERM, so subscribers and plugins shut down as in
    production, and the drain thread is joined: ``output()`` then holds the
    server's last lines too.
    """
    http_port = free_port()
    if "--port" in args:
        zmq_port = int(args[args.index("--port") + 1])
    else:
        zmq_port = free_port()
        args = ("--port", str(zmq_port), *args)
    process = start_server(
        *("--http-host", "127.0.0.1", "--http-port", str(http_port), "--host", "127.0.0.1"),
        *args,
        env=env,
        cwd=cwd,
    )
    server = LiveServer(process, f"http://127.0.0.1:{http_port}", zmq_port)
    try:
        wait_healthy(process, server.http_url, timeout=timeout)
        drain_output(process)
        yield server
    finally:
        stop_server(process)
        drain = _DRAINS.pop(process.pid, None)
        if drain is not None:
            drain.join(5.0)  # the pipe is at EOF once the process is gone


@contextmanager
def running_server(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A healthy server on free ports, its output drained; stopped at exit."""
    with server_on_free_ports(*args, timeout=30.0) as server:
        yield server.process, server.http_url
