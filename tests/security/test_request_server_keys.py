"""The ZeroMQ request server with API keys, in-process, over real sockets.

Our clients (sync and asyncio) and a raw DEALER socket sending upstream 0.5.6's
frames exactly: without a key a request gets the typed ``unauthorized`` error
reply (never silence), and the refusal is counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import msgspec
import pytest
import zmq

from lmcache_core.client import AsyncMPClient, MPClient
from lmcache_core.engine.contract import RequestContext
from lmcache_core.protocol.api_key_frame import KEY_FRAME_MARKER, MAX_KEY_BYTES, key_frame
from lmcache_core.protocol.errors import (
    ERROR_OP,
    ErrorInfo,
    UnauthorizedError,
)
from lmcache_core.protocol.ops import OPS
from lmcache_core.security.key_sources import KeySources
from lmcache_core.security.keyring import ApiKeyRing
from lmcache_core.server.request_server import UNAUTHORIZED_MESSAGE, RequestServer
from tests.server_process import free_port

KEY = "a-test-key-of-some-length"


def noop(ctx: RequestContext) -> str:
    return "OK"


def ping(ctx: RequestContext, instance_id: int | None) -> bool:
    return True


def serve(ring: ApiKeyRing) -> tuple[RequestServer, str]:
    port = free_port()
    server = RequestServer(
        "127.0.0.1",
        port,
        {"noop": noop, "ping": ping},
        affinity_workers=1,
        cpu_workers=1,
        api_keys=ring,
    )
    server.start()
    return server, f"tcp://127.0.0.1:{port}"


@pytest.fixture
def keyed() -> Iterator[tuple[RequestServer, ApiKeyRing, str]]:
    ring = ApiKeyRing(KeySources.gather((), env={"LMCACHE_API_KEY": KEY}))
    server, url = serve(ring)
    try:
        yield server, ring, url
    finally:
        server.stop(2.0)


@pytest.fixture
def raw(keyed: tuple[RequestServer, ApiKeyRing, str]) -> Iterator[zmq.Socket[bytes]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVTIMEO, 5000)
    socket.connect(keyed[2])
    try:
        yield socket
    finally:
        socket.close()
        context.term()


def exchange(socket: zmq.Socket[bytes], frames: list[bytes]) -> list[bytes]:
    socket.send_multipart(frames)
    return socket.recv_multipart()


def error_of(reply: list[bytes]) -> ErrorInfo:
    assert msgspec.msgpack.decode(reply[1]) == ERROR_OP, reply
    return msgspec.msgpack.decode(reply[2], type=ErrorInfo)


def test_our_clients_with_the_key_are_served(keyed: tuple[RequestServer, ApiKeyRing, str]) -> None:
    server, ring, url = keyed
    with MPClient(url, timeout=5, api_key=KEY) as client:
        assert client.noop() == "OK" and client.ping(1) is True

    async def run() -> str:
        async with AsyncMPClient(url, timeout=5, api_key=KEY) as client:
            return str(await client.noop())

    assert asyncio.run(run()) == "OK"
    assert server.stats.unauthorized == 0 and ring.rejections() == {}


def test_our_client_without_or_with_a_wrong_key_gets_unauthorized(
    keyed: tuple[RequestServer, ApiKeyRing, str],
) -> None:
    server, ring, url = keyed
    with MPClient(url, timeout=5) as client, pytest.raises(UnauthorizedError) as missing:
        client.noop()
    assert UNAUTHORIZED_MESSAGE in str(missing.value)
    with MPClient(url, timeout=5, api_key=KEY + "x") as client, pytest.raises(UnauthorizedError):
        client.ping(1)
    assert server.stats.unauthorized == 2 and ring.rejections() == {"zmq": 2}


def test_upstream_frames_without_a_key_get_a_typed_error(
    keyed: tuple[RequestServer, ApiKeyRing, str], raw: zmq.Socket[bytes]
) -> None:
    uid = msgspec.msgpack.encode(7)
    # Upstream 0.5.6's request exactly: [uid, legacy op id, args...].
    reply = exchange(raw, [uid, msgspec.msgpack.encode(OPS["noop"].legacy_id)])
    assert reply[0] == uid
    info = error_of(reply)
    assert info.code == "unauthorized" and info.message == UNAUTHORIZED_MESSAGE
    # The same request with the key frame is served.
    reply = exchange(raw, [uid, key_frame(KEY), msgspec.msgpack.encode(OPS["noop"].legacy_id)])
    assert msgspec.msgpack.decode(reply[2]) == "OK"


@pytest.mark.parametrize(
    "presented",
    [b"", b"wrong", KEY.encode() + b"\x00", b"k" * (MAX_KEY_BYTES + 1)],
    ids=["empty", "wrong", "suffix", "too-long"],
)
def test_bad_key_frames_are_refused(
    keyed: tuple[RequestServer, ApiKeyRing, str], raw: zmq.Socket[bytes], presented: bytes
) -> None:
    uid = msgspec.msgpack.encode(1)
    reply = exchange(raw, [uid, KEY_FRAME_MARKER + presented, msgspec.msgpack.encode("noop")])
    assert error_of(reply).code == "unauthorized"


def test_a_key_frame_without_an_op_is_a_bad_request(
    keyed: tuple[RequestServer, ApiKeyRing, str], raw: zmq.Socket[bytes]
) -> None:
    reply = exchange(raw, [msgspec.msgpack.encode(1), key_frame(KEY)])
    assert error_of(reply).code == "bad_request"
    assert keyed[0].stats.malformed == 1


def test_a_server_without_keys_serves_clients_that_send_one() -> None:
    server, url = serve(ApiKeyRing.disabled())
    try:
        with (
            MPClient(url, timeout=5, api_key=KEY) as keyed_client,
            MPClient(url, timeout=5) as plain,
        ):
            assert keyed_client.noop() == "OK" and plain.noop() == "OK"
        assert server.stats.unauthorized == 0
    finally:
        server.stop(2.0)


def test_a_key_frame_on_its_own_is_never_an_op() -> None:
    # 0xc1 is the one byte msgpack never uses: a server unaware of keys cannot misread it.
    with pytest.raises(msgspec.DecodeError):
        msgspec.msgpack.decode(key_frame(KEY))
