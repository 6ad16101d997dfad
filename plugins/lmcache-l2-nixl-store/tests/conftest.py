"""A real S3-protocol server for the OBJ tests: moto's server, in a subprocess on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

REGION = "us-east-1"
KEY, SECRET = "testing", "testing"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoS3:
    """moto's S3 server on a fixed port, which can be stopped and started again (by PID)."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        """A boto3 client, for setting buckets up and looking at what NIXL wrote."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
        )

    def make_bucket(self) -> str:
        name = f"lmcache-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def obj_params(self, bucket: str) -> dict[str, str]:
        """NIXL OBJ ``backend_params`` for ``bucket`` on this server (path-style, plain HTTP)."""
        return {
            "access_key": KEY,
            "secret_key": SECRET,
            "bucket": bucket,
            "endpoint_override": self.url,
            "scheme": "http",
            "region": REGION,
            "use_virtual_addressing": "false",
            "req_checksum": "supported",
        }


def _running() -> Iterator[MotoS3]:
    pytest.importorskip("moto.server", reason="moto is not installed (pip install 'moto[server]')")
    server = MotoS3()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """One moto server for the session; tests isolate themselves with buckets of their own."""
    yield from _running()


@pytest.fixture
def own_moto_s3() -> Iterator[MotoS3]:
    """A moto server of this test's own, which it may stop and start again."""
    yield from _running()
