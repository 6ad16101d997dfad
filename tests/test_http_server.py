"""The HTTP frontend of a really started server, and its shutdown."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from tests.server_process import clean_env, free_port, output_of, running_server, start_server

# Starts real servers (seconds each): outside the quick loop, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

BASE = ("--l1-size-gb", "1", "--eviction-policy", "LRU")


def test_healthcheck_status_and_plugins() -> None:
    instance = str(uuid.uuid4())
    with running_server(*BASE, "--instance-id", instance, "--chunk-size", "512") as (_, url):
        health = httpx.get(f"{url}/healthcheck")
        assert health.status_code == 200
        assert health.json()["status"] == "healthy"
        components = health.json()["components"]
        for name in ("http", "request_server", "l1", "sessions", "liveness", "engine"):
            assert components[name]["ok"] is True, name

        status = httpx.get(f"{url}/status").json()
        assert status["instance_id"] == instance
        assert status["config"]["mp"]["chunk_size"] == 512
        assert status["config"]["l1"]["l1_size_gb"] == 1.0
        assert status["plugins"]["engine"]["distribution"] == "lmcache-engine-default"
        assert status["plugins"]["eviction_policy"]["name"] == "LRU"
        assert not any("no data path yet" in w for w in status["startup"]["warnings"])
        # The metrics subscriber is implemented: it is no longer reported as pending.
        assert not any("subscriber 'metrics'" in p for p in status["startup"]["pending"])
        data_path = status["data_path"]
        assert data_path["l1"]["capacity_bytes"] == 1 << 30
        assert data_path["l1"]["kind"] == "shm"
        assert data_path["engine"]["chunk_size"] == 512

        rows = httpx.get(f"{url}/plugins").json()
        names = {(row["kind"], row["name"]) for row in rows}
        for expected in [
            ("engine", "default"),
            ("eviction_policy", "IsolatedLRU"),
            ("l2_adapter", "s3"),
            ("subscriber", "metrics"),
        ]:
            assert expected in names
        assert all(row["distribution"].startswith("lmcache-") for row in rows)

        assert httpx.get(f"{url}/openapi.json").status_code == 200
        assert httpx.get(f"{url}/no-such-endpoint").status_code == 404


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_server_cleanly_within_five_seconds(sig: signal.Signals) -> None:
    with running_server(*BASE) as (process, url):
        sent = time.monotonic()
        process.send_signal(sig)
        code = process.wait(timeout=10)
        elapsed = time.monotonic() - sent
        time.sleep(0.1)
        output = output_of(process)
    assert code == 0, output
    assert elapsed < 5.0
    assert "Traceback" not in output
    assert "lmcache server stopped" in output
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthcheck", timeout=1.0)


def test_busy_http_port_fails_with_one_line() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        process = start_server(
            *BASE, "--http-host", "127.0.0.1", "--http-port", str(port), "--port", str(free_port())
        )
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 1
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: --http-port: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert "Traceback" not in output


@pytest.mark.parametrize(
    "extra, expected",
    [
        (
            ("--l2-adapter", '{"type": "aerospike", "hosts": "127.0.0.1:3000"}'),
            "--l2-adapter #1: l2_adapter 'aerospike' is not implemented yet: needs the Python "
            "package 'aerospike'",
        ),
    ],
    ids=["l2-adapter"],
)
def test_explicitly_enabled_pending_features_refuse_to_start(
    extra: tuple[str, ...], expected: str
) -> None:
    process = start_server(*BASE, "--http-port", str(free_port()), *extra, env=clean_env())
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 1
    assert output.strip().splitlines()[-1].startswith(f"error: {expected}")


def test_secrets_never_appear_in_dry_run_output() -> None:
    adapter = json.dumps(
        {
            "type": "resp",
            "host": "127.0.0.1",
            "port": 6379,
            "username": "u",
            "password": "hunter2-secret",
        }
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from lmcache_core.cli.main import main; main()",
            "server",
            *BASE,
            "--l2-adapter",
            adapter,
            "--runtime-plugin-config",
            '{"api_token": "tok-secret-42"}',
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "hunter2-secret" not in result.stdout and "tok-secret-42" not in result.stdout
    document = json.loads(result.stdout)
    assert document["config"]["l2_adapters"]["l2_adapter"][0]["password"] == "**********"
    assert document["plugins"]["l2_adapters"][0]["config"]["password"] == "**********"
    assert document["config"]["mp"]["runtime_plugin_config"]["api_token"] == "**********"
    assert document["config"]["l2_adapters"]["l2_adapter"][0]["username"] == "u"
