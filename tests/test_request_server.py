"""The request server in-process: replies, error replies, affinity, overload, health."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
import zmq

from lmcache_core.client import AsyncMPClient, CallTimeout, MPClient
from lmcache_core.engine.contract import RequestContext, WouldBlock
from lmcache_core.errors import StartupError
from lmcache_core.protocol.errors import (
    BadRequestError,
    NotSupportedError,
    OverloadedError,
    ServerInternalError,
    UnknownOperationError,
)
from lmcache_core.server.request_server import RequestServer
from tests.server_process import free_port


class Handlers:
    """Test doubles of an engine's handlers (named as such)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.threads: dict[bytes, set[str]] = {}

    def noop(self, ctx: RequestContext) -> str:
        return "OK"

    def ping(self, ctx: RequestContext, instance_id: int | None) -> bool:
        return instance_id != 13

    def get_chunk_size(self, ctx: RequestContext) -> int:
        raise RuntimeError("handler bug")

    def wait_prefetch_status(self, ctx: RequestContext, request_id: str, timeout: float) -> int:
        self.release.wait(timeout)
        return 7

    def unregister_kv_cache(self, ctx: RequestContext, instance_id: int) -> None:
        self.threads.setdefault(ctx.client, set()).add(threading.current_thread().name)

    def table(self) -> dict[str, object]:
        names = ("noop", "ping", "get_chunk_size", "wait_prefetch_status", "unregister_kv_cache")
        return {name: getattr(self, name) for name in names}


@pytest.fixture
def served() -> Iterator[tuple[RequestServer, Handlers, str]]:
    handlers = Handlers()
    port = free_port()
    server = RequestServer(
        "127.0.0.1",
        port,
        handlers.table(),
        affinity_workers=2,
        cpu_workers=1,
        queue_depth=2,
        stuck_after=0.5,
    )
    server.start()
    try:
        yield server, handlers, f"127.0.0.1:{port}"
    finally:
        handlers.release.set()
        server.stop(2.0)


def test_results_and_typed_errors(served: tuple[RequestServer, Handlers, str]) -> None:
    server, _, url = served
    with MPClient(url, timeout=5) as client:
        assert client.noop() == "OK"
        assert client.ping(1) is True and client.ping(13) is False
        with pytest.raises(ServerInternalError, match="get_chunk_size: RuntimeError: handler bug"):
            client.get_chunk_size()
        with pytest.raises(NotSupportedError, match="'lookup' is not served"):
            client.call("lookup", None, 1)
        with pytest.raises(UnknownOperationError, match="'no_such_op'"):
            client.call("no_such_op")
        with pytest.raises(BadRequestError, match="ping argument 1"):
            client.call("ping", "not an int")
        with pytest.raises(ValueError, match="takes 1 arguments"):
            client.call("ping")  # refused locally, never sent
        assert client.noop() == "OK"  # the server kept serving
    assert server.health().ok
    assert server.stats.errors == 1 and server.stats.malformed == 3


def test_every_malformed_message_gets_an_answer(
    served: tuple[RequestServer, Handlers, str],
) -> None:
    _, _, url = served
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.RCVTIMEO, 2000)
    socket.connect(f"tcp://{url}")
    try:
        for frames in (
            [b"\x01", b"\xc1"],
            [b"\x02", b"\x92\x01\x02"],
            [b"\x03", b"\x16", b"\x01", b"\x02"],
            [b"\x04"],
        ):
            socket.send_multipart(frames)
            reply = socket.recv_multipart()
            assert reply[0] == frames[0]
            assert reply[1] == b"\xa9__error__"
    finally:
        socket.close(0)
        context.term()


def test_a_timed_out_call_leaves_nothing_behind(
    served: tuple[RequestServer, Handlers, str],
) -> None:
    _, handlers, url = served
    with MPClient(url) as client:
        with pytest.raises(CallTimeout):
            client.wait_prefetch_status("r", 1.0, timeout=0.2)
        handlers.release.set()
        assert client.noop() == "OK"  # the late reply is recognized and dropped

    async def run() -> int:
        async with AsyncMPClient(url) as aclient:
            handlers.release.clear()
            with pytest.raises(CallTimeout):
                await aclient.wait_prefetch_status("r", 1.0, timeout=0.2)
            handlers.release.set()
            results = await asyncio.gather(*(aclient.noop() for _ in range(50)))
            assert set(results) == {"OK"}
            await asyncio.sleep(0.1)
            return aclient.pending

    assert asyncio.run(run()) == 0


def test_one_client_stays_on_one_affinity_thread(
    served: tuple[RequestServer, Handlers, str],
) -> None:
    _, handlers, url = served
    clients = [MPClient(url) for _ in range(2)]
    try:
        for _ in range(10):
            for client in clients:
                client.unregister_kv_cache(1)
    finally:
        for client in clients:
            client.close()
    threads = list(handlers.threads.values())
    assert [len(names) for names in threads] == [1, 1]
    assert threads[0] != threads[1]  # two clients, two threads while there are enough


def test_a_full_queue_answers_overloaded_at_once(
    served: tuple[RequestServer, Handlers, str],
) -> None:
    _, handlers, url = served

    async def run() -> list[object]:
        async with AsyncMPClient(url, timeout=5) as client:
            tasks = [
                asyncio.ensure_future(client.wait_prefetch_status(f"r{i}", 5.0)) for i in range(6)
            ]
            await asyncio.sleep(0.5)  # 1 runs, 2 queue (depth 2): the rest are refused
            refused = [t.exception() for t in tasks if t.done()]
            assert refused and all(isinstance(e, OverloadedError) for e in refused)
            handlers.release.set()
            return list(await asyncio.gather(*tasks, return_exceptions=True))

    results = asyncio.run(run())
    served_count = results.count(7)  # 1 running + the queue (the first may not be taken yet)
    assert served_count in (2, 3)
    assert sum(isinstance(r, OverloadedError) for r in results) == 6 - served_count


def test_a_stuck_loop_is_unhealthy(served: tuple[RequestServer, Handlers, str]) -> None:
    server, _, url = served
    server.handlers["noop"] = lambda ctx: time.sleep(1.5) or "OK"  # blocks the loop itself
    thread = threading.Thread(target=lambda: MPClient(url).noop(), daemon=True)
    thread.start()
    time.sleep(1.0)
    assert not server.health().ok
    assert "stuck" in server.health().detail
    thread.join(5)
    time.sleep(0.2)
    assert server.health().ok


def test_a_busy_port_is_a_clear_startup_error(served: tuple[RequestServer, Handlers, str]) -> None:
    server, _, _ = served
    other = RequestServer("127.0.0.1", server.port, {}, affinity_workers=1, cpu_workers=1)
    with pytest.raises(StartupError, match=f"--port: cannot bind tcp://127.0.0.1:{server.port}"):
        other.start()


class InlineFirst:
    """A pool handler double with ``try_inline`` (named as such): serves even ids inline."""

    def __init__(self) -> None:
        self.threads: list[tuple[str, str]] = []

    def __call__(self, ctx: RequestContext, request_id: str) -> None:
        self.threads.append(("pool", threading.current_thread().name))

    def try_inline(self, ctx: RequestContext, request_id: str) -> None:
        if request_id == "fails":
            raise BadRequestError("bad inline")
        if request_id.endswith("odd"):
            raise WouldBlock
        self.threads.append(("inline", threading.current_thread().name))


def test_a_pool_op_is_served_inline_when_it_can_and_on_the_pool_when_it_would_block() -> None:
    handler = InlineFirst()
    port = free_port()
    server = RequestServer(
        "127.0.0.1", port, {"end_session": handler}, affinity_workers=1, cpu_workers=1
    )
    server.start()
    try:
        with MPClient(f"127.0.0.1:{port}", timeout=5) as client:
            assert client.end_session("even") is None
            assert client.end_session("odd") is None
            with pytest.raises(BadRequestError, match="bad inline"):
                client.end_session("fails")  # an inline error is the request's answer
    finally:
        server.stop(2.0)
    assert handler.threads == [("inline", "lmcache-zmq"), ("pool", "lmcache-cpu-0")]
    assert server.stats.served_inline == 2  # the error reply too: answered on the loop
