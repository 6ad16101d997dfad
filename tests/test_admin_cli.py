"""``lmcache ping``, ``status``, ``quota ...`` and ``cache clear`` against a real server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from tests.helpers import CliResult, invoke, run_subprocess
from tests.server_process import free_port
from tests.test_admin_api import AdminServer, admin_server, store_chunks

# Starts real servers (seconds each): outside the quick loop, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

TOKEN = "cli-token-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def server() -> Iterator[AdminServer]:
    with admin_server(token=TOKEN) as started:
        yield started


def lmcache(capsys: pytest.CaptureFixture[str], server: AdminServer, *args: str) -> CliResult:
    return invoke(capsys, *args, "--url", server.url, "--token", TOKEN)


def assert_one_line_error(result: CliResult, *needles: str) -> None:
    assert result.code == 1, (result.code, result.out, result.err)
    assert "Traceback" not in result.err + result.out
    [line] = result.err.splitlines()
    assert line.startswith("error: ")
    for needle in needles:
        assert needle in line, (needle, line)


def test_ping(capsys: pytest.CaptureFixture[str], server: AdminServer) -> None:
    result = lmcache(capsys, server, "ping")
    assert result.code == 0, result.err
    assert result.out.startswith(f"healthy: {server.url} answered in ")
    as_json = lmcache(capsys, server, "ping", "--json")
    assert as_json.code == 0
    body = json.loads(as_json.out)
    assert body["status"] == "healthy"
    assert body["components"]["l1"]["ok"] is True
    # /healthcheck needs no token.
    assert invoke(capsys, "ping", "--url", server.url).code == 0


def test_status(capsys: pytest.CaptureFixture[str], server: AdminServer) -> None:
    instance = server.get("/status").json()["instance_id"]
    result = lmcache(capsys, server, "status")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split() == ["instance", instance]
    assert any(line.split()[:2] == ["health", "healthy"] for line in lines)
    assert any(line.startswith("L1") and "objects (shm)" in line for line in lines)
    assert any(line.split()[:3] == ["eviction", "policy", "LRU"] for line in lines)
    as_json = lmcache(capsys, server, "status", "--json")
    assert json.loads(as_json.out)["instance_id"] == instance


def test_status_needs_the_token(capsys: pytest.CaptureFixture[str], server: AdminServer) -> None:
    result = invoke(capsys, "status", "--url", server.url)
    assert_one_line_error(result, "authentication required", "(HTTP 401)")
    wrong = invoke(capsys, "status", "--url", server.url, "--token", "x" * 20)
    assert_one_line_error(wrong, "invalid bearer token", "(HTTP 401)")


def test_url_and_token_from_the_environment(
    capsys: pytest.CaptureFixture[str], server: AdminServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMCACHE_URL", server.url)
    monkeypatch.setenv("LMCACHE_HTTP_ADMIN_TOKEN", TOKEN)
    result = invoke(capsys, "status", "--json")
    assert result.code == 0, result.err
    assert "instance_id" in json.loads(result.out)


def test_unreachable_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (("ping",), ("status",), ("quota", "list"), ("cache", "clear")):
        result = invoke(capsys, *args, "--url", url)
        assert_one_line_error(result, f"cannot reach the server at {url}")


def test_quota_commands(capsys: pytest.CaptureFixture[str], server: AdminServer) -> None:
    salt = "tenant-" + uuid.uuid4().hex[:6]
    result = lmcache(capsys, server, "quota", "set", salt, "1.5")
    assert result.code == 0, result.err
    assert result.out.strip() == f"quota of {salt} set to 1.5 GiB"
    default = lmcache(capsys, server, "quota", "set", "_default", "0.25", "--json")
    assert json.loads(default.out)["cache_salt"] == "_default"

    listed = lmcache(capsys, server, "quota", "list")
    assert listed.code == 0, listed.err
    rows = [line.split() for line in listed.out.splitlines()]
    assert rows[0] == ["SALT", "LIMIT_GB", "USAGE_GB"]
    assert [salt, "1.5", "0.000"] in rows
    assert ["_default", "0.25", "0.000"] in rows
    users = json.loads(lmcache(capsys, server, "quota", "list", "--json").out)["users"]
    assert users[salt]["limit_gb"] == 1.5

    got = lmcache(capsys, server, "quota", "get", salt)
    assert [salt, "1.5", "0.000"] in [line.split() for line in got.out.splitlines()]
    assert json.loads(lmcache(capsys, server, "quota", "get", salt, "--json").out)["exists"]

    removed = lmcache(capsys, server, "quota", "delete", salt)
    assert removed.out.strip() == f"quota of {salt} removed"
    again = lmcache(capsys, server, "quota", "delete", salt, "--json")
    assert json.loads(again.out)["status"] == "not_found"
    assert lmcache(capsys, server, "quota", "delete", salt).out.strip() == f"{salt} had no quota"


def test_quota_errors_are_the_servers_message(
    capsys: pytest.CaptureFixture[str], server: AdminServer
) -> None:
    args = ("quota", "set", "--url", server.url, "--token", TOKEN, "--", "tenant", "-1")
    result = invoke(capsys, *args)
    assert_one_line_error(result, "(HTTP 400)")
    bad_salt = lmcache(capsys, server, "quota", "get", "a@b")
    assert_one_line_error(bad_salt, "invalid cache_salt", "(HTTP 400)")


def test_cache_clear(capsys: pytest.CaptureFixture[str], server: AdminServer) -> None:
    store_chunks(server, "cli-clear-" + uuid.uuid4().hex[:6], 2)
    result = lmcache(capsys, server, "cache", "clear")
    assert result.code == 0, result.err
    rows = [line.split() for line in result.out.splitlines()]
    assert rows[0] == ["TIER", "ADAPTER", "REMOVED", "KEPT_LOCKED"]
    assert rows[1][0] == "l1" and int(rows[1][1]) >= 2 and rows[1][2] == "0"
    assert server.list_all("l1") == []
    as_json = lmcache(capsys, server, "cache", "clear", "--tier", "all", "--force", "--json")
    body = json.loads(as_json.out)
    assert (body["tier"], body["force"]) == ("all", True)
    assert [r["tier"] for r in body["results"]] == ["l1"]  # no L2 adapter configured
    bad = lmcache(capsys, server, "cache", "clear", "--tier", "l3")
    assert_one_line_error(bad, "--tier must be l1, l2 or all")


def test_a_real_process(server: AdminServer) -> None:
    result = run_subprocess(
        "status", "--url", server.url, env={"LMCACHE_HTTP_ADMIN_TOKEN": TOKEN}, timeout=60
    )
    assert result.code == 0, result.err
    assert result.out.startswith("instance")
    refused = run_subprocess("cache", "clear", "--url", server.url, timeout=60)
    assert refused.code == 1
    assert refused.err.strip().startswith("error: authentication required")
