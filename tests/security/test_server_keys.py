"""A real ``lmcache server`` with API keys: HTTP via httpx, ZeroMQ via our client and a raw socket.

One server for the module: two ``--api-key-file`` keys, ``LMCACHE_API_KEY`` in its
environment and ``--http-admin-token``. The rotation test rewrites the second key
file while the server runs (no restart) and checks the new key is accepted, the
old one refused, a broken file keeps the keys, and the refusals show in
``/status`` and ``/metrics``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from lmcache_core.cli.admin_client import AdminClient, AdminError
from lmcache_core.client import MPClient
from lmcache_core.client.kv_events import KVEventSubscriber
from lmcache_core.protocol.errors import ERROR_OP, ErrorInfo, UnauthorizedError
from lmcache_core.protocol.ops import OPS
from tests.server_process import clean_env, free_port, server_on_free_ports

FILE_KEY = "file-key-0123456789abcdef"
ROTATED_OLD, ROTATED_NEW = "rotating-key-old-000000", "rotating-key-new-111111"
ENV_KEY = "env-key-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789"


@dataclass
class KeyedServer:
    http_url: str
    zmq_url: str
    prometheus_port: int
    rotating_file: Path

    def status(self, key: str = FILE_KEY) -> dict[str, object]:
        response = httpx.get(f"{self.http_url}/status", headers={"X-LMCache-API-Key": key})
        response.raise_for_status()
        return dict(response.json())

    def rejected(self) -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{self.prometheus_port}/metrics").text
        return {
            sample.labels["transport"]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "lmcache_mp_auth_rejected_requests_total"
        }


def rewrite(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyedServer]:
    folder = tmp_path_factory.mktemp("keys")
    first, second = folder / "first.key", folder / "second.key"
    first.write_text(FILE_KEY + "\n")
    second.write_text(ROTATED_OLD)
    prometheus_port = free_port()
    with server_on_free_ports(
        *("--l1-size-gb", "0.01", "--eviction-policy", "LRU"),
        *("--api-key-file", str(first), "--http-api-key-file", str(second)),
        *("--http-admin-token", ADMIN_TOKEN, "--prometheus-port", str(prometheus_port)),
        env=clean_env(LMCACHE_API_KEY=ENV_KEY),
    ) as running:
        yield KeyedServer(running.http_url, running.zmq_url, prometheus_port, second)


def test_healthcheck_stays_public(server: KeyedServer) -> None:
    assert httpx.get(f"{server.http_url}/healthcheck").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"X-LMCache-API-Key": "wrong"},
        {"Authorization": FILE_KEY},
    ],
    ids=["none", "wrong-bearer", "wrong-header", "no-scheme"],
)
def test_http_without_a_valid_key_is_401(server: KeyedServer, headers: dict[str, str]) -> None:
    response = httpx.get(f"{server.http_url}/status", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid or missing API key"}
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {FILE_KEY}"},
        {"authorization": f"bearer {ENV_KEY}"},
        {"X-LMCache-API-Key": FILE_KEY},
        {"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ],
    ids=["bearer-file-key", "bearer-env-key", "header", "admin-token"],
)
def test_http_with_a_valid_key_is_served(server: KeyedServer, headers: dict[str, str]) -> None:
    response = httpx.get(f"{server.http_url}/status", headers=headers)
    assert response.status_code == 200, response.text
    auth = response.json()["auth"]
    assert auth["enabled"] is True and FILE_KEY not in response.text


def test_zmq_our_client(server: KeyedServer) -> None:
    with MPClient(server.zmq_url, timeout=10, api_key=FILE_KEY) as client:
        assert client.get_chunk_size() == 256
    with MPClient(server.zmq_url, timeout=10, api_key=ENV_KEY) as client:
        assert client.noop() == "OK"
    with MPClient(server.zmq_url, timeout=10) as client, pytest.raises(UnauthorizedError):
        client.get_chunk_size()


def test_zmq_upstream_frames_without_a_key(server: KeyedServer) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVTIMEO, 10_000)
    socket.connect(server.zmq_url)
    try:
        uid = msgspec.msgpack.encode(3)
        socket.send_multipart([uid, msgspec.msgpack.encode(OPS["get_chunk_size"].legacy_id)])
        reply = socket.recv_multipart()
    finally:
        socket.close()
        context.term()
    assert reply[0] == uid and msgspec.msgpack.decode(reply[1]) == ERROR_OP
    assert msgspec.msgpack.decode(reply[2], type=ErrorInfo).code == "unauthorized"


def wait_accepted(server: KeyedServer, key: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with MPClient(server.zmq_url, timeout=5, api_key=key) as client:
            try:
                client.get_chunk_size()
                return
            except UnauthorizedError:
                time.sleep(0.2)
    raise AssertionError(f"{key!r} not accepted within {timeout} s")


def test_rotation_without_restart_and_the_counters(server: KeyedServer) -> None:
    before = server.rejected()
    with MPClient(server.zmq_url, timeout=10, api_key=ROTATED_OLD) as client:
        assert client.get_chunk_size() == 256
    rewrite(server.rotating_file, ROTATED_NEW)
    wait_accepted(server, ROTATED_NEW)
    old = MPClient(server.zmq_url, timeout=10, api_key=ROTATED_OLD)
    with old, pytest.raises(UnauthorizedError):
        old.get_chunk_size()
    assert (
        httpx.get(
            f"{server.http_url}/status", headers={"X-LMCache-API-Key": ROTATED_OLD}
        ).status_code
        == 401
    )
    assert server.status(ROTATED_NEW)["auth"]["reloads"] >= 1  # type: ignore[index]
    # A broken file (empty) keeps the keys accepted so far; the failure is counted.
    rewrite(server.rotating_file, "")
    deadline = time.monotonic() + 10
    while server.status()["auth"]["reload_failures"] == 0:  # type: ignore[index]
        assert time.monotonic() < deadline, "the failed reload was not counted"
        time.sleep(0.2)
    with MPClient(server.zmq_url, timeout=10, api_key=ROTATED_NEW) as client:
        assert client.get_chunk_size() == 256
    after = server.rejected()
    assert after["zmq"] >= before.get("zmq", 0) + 1
    assert after["http"] >= before.get("http", 0) + 1
    auth = server.status()["auth"]
    assert auth["rejected"] == {k: int(v) for k, v in server.rejected().items()}  # type: ignore[index]


def test_admin_cli_client_sends_a_key(server: KeyedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LMCACHE_API_KEY", raising=False)
    monkeypatch.delenv("LMCACHE_API_KEY_FILE", raising=False)
    with pytest.raises(AdminError, match=r"Invalid or missing API key \(HTTP 401\)"):
        AdminClient(server.http_url, None, 10).call("GET", "/status")
    assert AdminClient(server.http_url, FILE_KEY, 10).call("GET", "/status").status == 200
    monkeypatch.setenv("LMCACHE_API_KEY", ENV_KEY)  # the environment's key, as our clients read it
    assert AdminClient(server.http_url, None, 10).call("GET", "/status").status == 200


def test_kv_event_stream_needs_the_key(server: KeyedServer) -> None:
    refused = KVEventSubscriber(server.zmq_url, 1, "model", timeout=10)
    with refused, pytest.raises(UnauthorizedError):
        refused.next_batch()
    with KVEventSubscriber(server.zmq_url, 1, "model", timeout=10, api_key=FILE_KEY) as events:
        first = events.next_batch()
        assert first.enabled and not first.lost
