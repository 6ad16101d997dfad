"""Start a server for a replay (ours or upstream 0.5.6's) and read its process counters."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ProcessCounters:
    """CPU seconds (user + system, threads included) and resident memory of a process."""

    cpu_s: float
    rss_mb: float


def counters(pid: int) -> ProcessCounters:
    """The process's CPU time and RSS (anonymous + file pages; shared L1 pages excluded)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            rss += int(value.split()[0]) / 1024
    return ProcessCounters(cpu, rss)


@dataclass
class ServerProcess:
    """A server this replay started (stopped by its PID)."""

    kind: str
    process: subprocess.Popen[bytes]
    url: str
    http_url: str
    log_path: Path

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM (the server unlinks its shared memory), SIGKILL after 10 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def server_command(kind: str, python: str, args: Sequence[str]) -> list[str]:
    """The command line of our server or of upstream 0.5.6's (``http_server`` module)."""
    if kind == "ours":
        return [python, "-c", "from lmcache_core.cli.main import main; main()", "server", *args]
    if kind == "upstream":
        return [python, "-m", "lmcache.v1.multiprocess.http_server", *args]
    raise ValueError(f"unknown server kind {kind!r} (ours or upstream)")


def start_server(
    kind: str,
    args: Sequence[str],
    log_path: Path,
    *,
    python: str | None = None,
    timeout_s: float = 90.0,
) -> ServerProcess:
    """Start a server on free loopback ports and wait until its HTTP side answers.

    Args:
        kind: ``ours`` or ``upstream``.
        args: Server flags besides the host and port flags.
        log_path: Where its output goes.
        python: The interpreter (upstream's: the compat environment's).
        timeout_s: How long it may take to come up.

    Raises:
        RuntimeError: It exited or did not answer in time (its log's tail is named).
    """
    port, http_port = free_port(), free_port()
    ports = ["--host", "127.0.0.1", "--port", str(port)]
    ports += ["--http-host", "127.0.0.1", "--http-port", str(http_port)]
    env = dict(os.environ)
    env.update(LMCACHE_TRACK_USAGE="false", DO_NOT_TRACK="1", PYTHONUNBUFFERED="1")
    if kind == "upstream":
        env.setdefault("LMCACHE_LOG_LEVEL", "WARNING")
        # upstream's Prometheus exporter would take 9090 on every run
        ports += ["--prometheus-port", str(free_port())]
    command = server_command(kind, python or sys.executable, [*ports, *args])
    log = open(log_path, "wb")  # noqa: SIM115 - the child writes to it until stopped
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    server = ServerProcess(
        kind, process, f"tcp://127.0.0.1:{port}", f"http://127.0.0.1:{http_port}", log_path
    )
    deadline = time.monotonic() + timeout_s
    probe = "/healthcheck" if kind == "ours" else "/"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{kind} server exited ({process.returncode}): {tail(log_path)}")
        try:
            with urllib.request.urlopen(server.http_url + probe, timeout=1):
                return server
        except urllib.error.HTTPError:
            return server  # it answers HTTP: up
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{kind} server not up after {timeout_s} s: {tail(log_path)}")


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
