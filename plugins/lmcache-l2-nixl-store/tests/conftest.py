"""A real S3-protocol server for the OBJ tests: moto's server, in a subprocess on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

REGION = "us-east-1"
KEY, SECRET = "testing", "testing"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MotoS3:
    """moto's S3 server on ``port`` (stopped by PID at the end of the session)."""

    port: int
    process: subprocess.Popen[bytes]

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


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """One moto server for the session; tests isolate themselves with buckets of their own."""
    pytest.importorskip("moto.server", reason="moto is not installed (pip install 'moto[server]')")
    port = _free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto server exited with {process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield MotoS3(port, process)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
