"""A real S3-protocol server for tests: moto's server, in a subprocess on 127.0.0.1.

The ``s3`` adapter's tests and ``nixl_store``'s OBJ back-end tests both run against
it. moto and boto3 are imported only when used, so the core does not depend on
them; :func:`running_moto_s3` skips the test, saying why, where moto is missing.
A conftest turns it into fixtures::

    @pytest.fixture(scope="session")
    def moto_s3() -> Iterator[MotoS3Server]:
        yield from running_moto_s3(MotoS3Server())
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any, TypeVar

import pytest

from lmcache_core.testing.unavailable_adapter import free_port

REGION = "us-east-1"
"""The region every client of the test server names (moto accepts any)."""

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
"""Static credentials; moto checks none, but the clients must send some."""


class MotoS3Server:
    """``python -m moto.server`` on a fixed port, which can be stopped and started again.

    The port is chosen once, so a restarted server is found at the same URL (moto
    keeps nothing across a restart: buckets and objects are gone). The process is
    stopped by its PID.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the server and wait until its port accepts connections.

        Raises:
            RuntimeError: The server exited, or did not listen within ``timeout_s``.
        """
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self._process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"moto server did not listen on {self.host} within {timeout_s} s")

    def stop(self) -> None:
        """Terminate the server (kill it if it lingers); a no-op when it is not running."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None

    def client(self) -> Any:
        """A plain boto3 client (path style, one attempt), for setting up and inspecting."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def make_bucket(self) -> str:
        """A new, empty bucket (the name starts with a letter and holds no dot)."""
        name = f"lmcache-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name


S = TypeVar("S", bound=MotoS3Server)


def running_moto_s3(server: S) -> Iterator[S]:
    """Start ``server``, yield it, and stop it afterwards (a fixture's body).

    Raises:
        pytest.skip.Exception: moto's server is not installed.
    """
    pytest.importorskip("moto.server", reason="moto is not installed (pip install 'moto[server]')")
    server.start()
    try:
        yield server
    finally:
        server.stop()
