"""The request server's connection counters (ZeroMQ's socket monitor) and undeliverable log."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from lmcache_core.client import MPClient
from lmcache_core.engine.contract import RequestContext
from lmcache_core.server.request_server import RequestServer
from tests.server_process import free_port

WAIT_S = 10.0
"""Only a hang guard: the monitor's events arrive within milliseconds."""


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not the case after {WAIT_S:g} s")
        time.sleep(0.01)


@pytest.fixture
def served() -> Iterator[tuple[RequestServer, threading.Event, str]]:
    release = threading.Event()

    def noop(ctx: RequestContext) -> str:
        return "OK"

    def wait_prefetch_status(ctx: RequestContext, request_id: str, timeout: float) -> int:
        release.wait(timeout)
        return 7

    port = free_port()
    server = RequestServer(
        "127.0.0.1",
        port,
        {"noop": noop, "wait_prefetch_status": wait_prefetch_status},
        affinity_workers=1,
        cpu_workers=1,
    )
    server.start()
    try:
        yield server, release, f"127.0.0.1:{port}"
    finally:
        release.set()
        server.stop(2.0)


def connections(server: RequestServer) -> dict[str, int]:
    return dict(server.requests_status()["connections"])


def test_connects_and_disconnects_are_counted(
    served: tuple[RequestServer, threading.Event, str],
) -> None:
    server, _, url = served
    assert connections(server)["current"] == 0
    first, second = MPClient(url, timeout=5), MPClient(url, timeout=5)
    try:
        assert first.noop() == "OK" and second.noop() == "OK"
        wait_for(lambda: connections(server)["handshake_succeeded"] == 2, "two handshakes")
        counts = connections(server)
        assert counts["accepted"] == 2 and counts["current"] == 2
        assert counts["disconnected"] == 0 and counts["handshake_failed"] == 0
    finally:
        first.close()
    try:
        wait_for(lambda: connections(server)["disconnected"] == 1, "the closed client counted")
        assert connections(server)["current"] == 1
        assert second.noop() == "OK"  # the other connection is untouched
    finally:
        second.close()
    wait_for(lambda: connections(server)["current"] == 0, "both clients gone")
    assert server.requests_status()["requests"] == 3


def test_a_peer_that_does_not_speak_zmtp_is_a_failed_handshake(
    served: tuple[RequestServer, threading.Event, str],
) -> None:
    server, _, _ = served
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        # A ZMTP 3.0 greeting asking for CURVE from a server that speaks NULL: a mechanism
        # mismatch, and ZeroMQ drops the connection.
        raw.sendall(b"\xff" + bytes(8) + b"\x7f\x03\x00" + b"CURVE".ljust(20, b"\0") + bytes(32))
        wait_for(lambda: connections(server)["handshake_failed"] == 1, "the failed handshake")
    wait_for(lambda: connections(server)["current"] == 0, "the raw connection gone")
    counts = connections(server)
    assert counts["accepted"] == 1 and counts["disconnected"] == 1
    assert counts["handshake_succeeded"] == 0


def test_an_undeliverable_reply_is_logged_with_its_op_and_request_id(
    served: tuple[RequestServer, threading.Event, str], caplog: pytest.LogCaptureFixture
) -> None:
    server, release, url = served
    caplog.set_level(logging.INFO, logger="lmcache.server")
    client = MPClient(url, timeout=5)
    client.noop()  # request id 0
    with pytest.raises(TimeoutError):
        client.wait_prefetch_status("r", 5.0, timeout=0.2)  # request id 1, on the pool
    client.close()
    wait_for(lambda: connections(server)["current"] == 0, "the client's connection gone")
    release.set()  # its reply now has no connection to go to
    wait_for(lambda: server.stats.undeliverable == 1, "the reply counted undeliverable")
    lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "op wait_prefetch_status, request id 1" in lines[0]
