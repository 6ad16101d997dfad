"""A client's connection breaks with a call in flight: answered or failed at once, never a hang.

The client talks to a real request server through a TCP relay (real sockets) that cuts
the connection on demand; ZeroMQ reconnects by itself, and the server knows the client
under a new routing id. Before the clients watched their connection, the reply to the
call in flight was undeliverable (the server counted it) and the call waited out its
whole timeout (``CallTimeout``, not ``ConnectionLost``): what a vLLM worker saw after a
server stall (docs/operations.md, "Connections and undeliverable replies").
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from lmcache_core.client import AsyncMPClient, ConnectionLost, MPClient
from lmcache_core.engine.contract import RequestContext
from lmcache_core.server.request_server import RequestServer
from tests.server_process import free_port
from tests.tcp_relay import TcpRelay

CALL_TIMEOUT_S = 30.0
"""Far longer than the test: a call that waited it out would fail the test by its type."""
HANG_GUARD_S = 10.0


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not the case after {HANG_GUARD_S:g} s")
        time.sleep(0.01)


@dataclass
class Held:
    """Test-double handlers (named as such) that hold their first call until released."""

    release: threading.Event = field(default_factory=threading.Event)
    entered: dict[str, threading.Event] = field(
        default_factory=lambda: {
            "ping": threading.Event(),
            "wait_prefetch_status": threading.Event(),
        }
    )
    calls: dict[str, int] = field(default_factory=dict)

    def _hold(self, op: str) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1
        if self.calls[op] == 1:
            self.entered[op].set()
            self.release.wait(HANG_GUARD_S)

    def ping(self, ctx: RequestContext, instance_id: int | None) -> bool:
        self._hold("ping")  # inline: the request loop waits with it
        return True

    def wait_prefetch_status(self, ctx: RequestContext, request_id: str, timeout: float) -> int:
        self._hold("wait_prefetch_status")  # on the pool
        return 7

    def noop(self, ctx: RequestContext) -> str:
        return "OK"


@pytest.fixture
def rig() -> Iterator[tuple[RequestServer, Held, TcpRelay]]:
    held = Held()
    port = free_port()
    server = RequestServer(
        "127.0.0.1",
        port,
        {"ping": held.ping, "wait_prefetch_status": held.wait_prefetch_status, "noop": held.noop},
        affinity_workers=1,
        cpu_workers=1,
    )
    server.start()
    relay = TcpRelay(port)
    try:
        yield server, held, relay
    finally:
        held.release.set()
        relay.stop()
        server.stop(2.0)


def cut_when_held(held: Held, relay: TcpRelay, *ops: str) -> threading.Thread:
    """Once the server holds the calls of ``ops``: cut the connection, then let them finish."""

    def run() -> None:
        for op in ops:
            assert held.entered[op].wait(HANG_GUARD_S)
        assert relay.cut() == 1
        time.sleep(0.2)  # the server's reply goes out after the break
        held.release.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_sync_call_in_flight_fails_at_once_with_connection_lost(
    rig: tuple[RequestServer, Held, TcpRelay],
) -> None:
    server, held, relay = rig
    with MPClient(relay.url, timeout=CALL_TIMEOUT_S) as client:
        assert client.noop() == "OK"
        cutter = cut_when_held(held, relay, "wait_prefetch_status")
        with pytest.raises(ConnectionLost, match="wait_prefetch_status: the connection"):
            client.wait_prefetch_status("r", 5.0)
        cutter.join(HANG_GUARD_S)
        assert client.broken_connections == 1
        assert client.noop() == "OK"  # over the new connection
        wait_for(lambda: server.stats.undeliverable == 1, "the held reply undeliverable")
        connections = server.requests_status()["connections"]
        assert connections["accepted"] == 2 and connections["disconnected"] == 1


def test_sync_idempotent_call_in_flight_is_resent_and_answered(
    rig: tuple[RequestServer, Held, TcpRelay],
) -> None:
    server, held, relay = rig
    with MPClient(relay.url, timeout=CALL_TIMEOUT_S) as client:
        cutter = cut_when_held(held, relay, "ping")
        assert client.ping(1) is True
        cutter.join(HANG_GUARD_S)
        assert held.calls["ping"] == 2, "the ping was not re-sent"
        wait_for(lambda: server.stats.undeliverable == 1, "the first reply undeliverable")


def test_async_calls_in_flight_are_resent_or_fail_at_once(
    rig: tuple[RequestServer, Held, TcpRelay],
) -> None:
    _, held, relay = rig

    async def run() -> tuple[object, object, int, int]:
        async with AsyncMPClient(relay.url, timeout=CALL_TIMEOUT_S) as client:
            assert await client.noop() == "OK"
            # Both held by the server when the connection breaks: the wait on a pool
            # thread first (a held ping holds the request loop too).
            cutter = cut_when_held(held, relay, "wait_prefetch_status", "ping")
            wait = asyncio.ensure_future(client.wait_prefetch_status("r", 5.0))
            while not held.entered["wait_prefetch_status"].is_set():
                await asyncio.sleep(0.01)
            ping = asyncio.ensure_future(client.ping(1))
            results = await asyncio.gather(ping, wait, return_exceptions=True)
            cutter.join(HANG_GUARD_S)
            assert await client.noop() == "OK"
            return results[0], results[1], client.broken_connections, client.pending

    pinged, waited, broken, pending = asyncio.run(run())
    assert pinged is True
    assert isinstance(waited, ConnectionLost), waited
    assert broken == 1 and pending == 0
    assert held.calls["ping"] == 2
