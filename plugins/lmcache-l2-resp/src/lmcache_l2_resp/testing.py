"""Real ``redis-server`` processes for tests of the ``resp`` adapter (and of code using it).

:class:`RedisServer` runs one server on 127.0.0.1, on a free port, keeping nothing on
disk (``--save '' --appendonly no``); tests can kill, restart, pause and resume it.
Where ``redis-server`` is not installed, :data:`needs_redis` skips with the reason.
"""

from __future__ import annotations

import contextlib
import os
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
