"""A real S3-protocol server for the tests: moto's server, in a subprocess on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoServer:
    """``python -m moto.server`` on a fixed port, which can be stopped and started again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> None:
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
        raise RuntimeError("moto server did not start in time")

    def stop(self) -> None:
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
        """A plain boto3 client on the server (path style), for setup and inspection."""
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
            **CREDENTIALS,
        )

    def make_bucket(self) -> str:
        """A new, empty bucket (the name starts with a letter and holds no dot)."""
        name = f"lmcache-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name


def _start() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One server for the session; tests isolate themselves with their own buckets."""
    yield from _start()


@pytest.fixture
def own_moto_server() -> Iterator[MotoServer]:
    """A server of this test's own, which it may stop and restart."""
    yield from _start()


@pytest.fixture
def bucket(moto_server: MotoServer) -> str:
    """A fresh bucket on the session's server."""
    return moto_server.make_bucket()


@pytest.fixture
def s3_client(moto_server: MotoServer) -> Any:
    """A plain boto3 client on the session's server."""
    return moto_server.client()


@pytest.fixture
def adapter_kwargs() -> Callable[..., dict[str, Any]]:
    """Constructor arguments of a test adapter: static keys, short timeouts, few retries."""

    def make(**overrides: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "region": REGION,
            "disable_tls": True,
            "access_key_id": CREDENTIALS["aws_access_key_id"],
            "secret_access_key": CREDENTIALS["aws_secret_access_key"],
            "num_io_threads": 8,
            "connect_timeout_s": 2.0,
            "read_timeout_s": 10.0,
            "max_attempts": 2,
        }
        kwargs.update(overrides)
        return kwargs

    return make
