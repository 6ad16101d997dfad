"""A CPU-only server answers a CUDA registration with one clear error, never a hang.

A real server process; the registration carries the exact bytes upstream LMCache 0.5.6's
encoder produced (``upstream_device_handles.json``), sent over a real ZeroMQ socket. The same
check with upstream's own client is in ``tests/compat/test_upstream_cuda_handles.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import torch

from lmcache_core.protocol.errors import ErrorCode, ErrorInfo
from lmcache_core.transfer.cuda_handles import NO_CUDA_MESSAGE
from tests.data_path.raw import RawClient
from tests.server_process import LiveServer, server_on_free_ports

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the answer of a server without CUDA"
)

FIXTURE = json.loads(Path(__file__).with_name("upstream_device_handles.json").read_text())
E = msgspec.msgpack.encode


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with server_on_free_ports(
        "--l1-size-gb", "0.05", "--eviction-policy", "LRU", "--chunk-size", "256"
    ) as live:
        yield live


def register(client: RawClient, tag: str, layers: int = 4) -> tuple[ErrorInfo | None, float]:
    ext = msgspec.msgpack.Ext(1, bytes.fromhex(FIXTURE[tag]))
    frames = [
        client.uid(),
        E("register_kv_cache"),
        E(77),
        E([ext] * layers),
        E("gpu-model"),
        E(1),
        E("vllm"),
        E({"kv_layout": "NHD"}),
        E([]),
    ]
    started = time.monotonic()
    reply = client.exchange(frames, timeout=5.0)
    elapsed = time.monotonic() - started
    if reply[1] == E(frames[1]) or len(reply) == 2:
        return None, elapsed
    return msgspec.msgpack.decode(reply[2], type=ErrorInfo), elapsed


@pytest.mark.parametrize("tag", ["cuda", "cuda_raw"])
def test_cuda_handles_get_the_no_cuda_error(server: LiveServer, tag: str) -> None:
    client = RawClient(server.zmq_url)
    try:
        info, elapsed = register(client, tag)
        assert info is not None, "a CPU-only server must refuse CUDA handles"
        assert info.code == ErrorCode.NOT_SUPPORTED.value
        assert NO_CUDA_MESSAGE in info.message
        assert elapsed < 5.0
        # Exactly one reply, and the server still serves.
        time.sleep(0.2)
        assert not client.socket.poll(0) and not client.stray
        ping = [client.uid(), E("ping"), E(None)]
        assert client.exchange(ping)[1] == E("ping")
    finally:
        client.close()
    assert server.process.poll() is None


@pytest.mark.parametrize("tag", ["cuda_vmm", "musa", "npu"])
def test_other_device_tags_are_refused_naming_the_tag(server: LiveServer, tag: str) -> None:
    client = RawClient(server.zmq_url)
    try:
        info, _ = register(client, tag, layers=1)
    finally:
        client.close()
    assert info is not None and info.code == ErrorCode.NOT_SUPPORTED.value
    assert f"device handle type {tag} not supported" in info.message
