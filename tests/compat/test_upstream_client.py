"""Upstream LMCache 0.5.6's own client drives our server (``nox -s compat``).

Needs a Python with ``lmcache==0.5.6`` and ``torch==2.13.0`` installed, named by
``LMCACHE_COMPAT_PYTHON``; the ``compat`` nox session builds one. Skipped otherwise.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.compat.upstream_run import (
    COMPAT_PYTHON,
    driver_env,
    last_json_line,
    needs_compat_python,
    run_driver,
)
from tests.server_process import free_port, running_server, server_on_free_ports

DRIVER = Path(__file__).with_name("drive_upstream.py")
RESTART_DRIVER = Path(__file__).with_name("drive_upstream_restart.py")

pytestmark = needs_compat_python


def test_upstream_adapters_round_trip_through_our_server() -> None:
    port = free_port()
    with running_server("--l1-size-gb", "1", "--eviction-policy", "LRU", "--port", str(port)):
        report = run_driver(DRIVER, f"tcp://127.0.0.1:{port}")
    assert report["bytes_identical"] is True
    assert report["hit_tokens"] == 3 * report["chunk_size"]
    assert report["noop"] == "OK" and report["ping"] is True


def test_upstream_adapters_recover_from_a_sigkilled_and_restarted_server() -> None:
    port = free_port()
    args = ("--l1-size-gb", "1", "--eviction-policy", "LRU", "--port", str(port))
    driver = subprocess.Popen(
        [COMPAT_PYTHON, str(RESTART_DRIVER), f"tcp://127.0.0.1:{port}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=driver_env(),
    )
    try:
        assert driver.stdin is not None and driver.stdout is not None
        with server_on_free_ports(*args) as first:
            assert driver.stdout.readline().strip() == "READY"
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(10)
        with server_on_free_ports(*args) as second:
            # The adapter's next heartbeat gets False (an unknown instance), the one
            # after True, and its recovery callback registers the KV caches again.
            deadline = time.monotonic() + 60
            while not registered_workers(second.http_url):
                assert time.monotonic() < deadline, "upstream's adapter did not re-register"
                time.sleep(0.2)
            driver.stdin.write("GO\n")
            driver.stdin.flush()
            out, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(10)
    assert driver.returncode == 0, out + err
    report = last_json_line(out)
    assert report["before"] == report["after"] == [3 * 256, True]


def registered_workers(http_url: str) -> list[str]:
    """The lmcache_driven instances the server knows (from ``/status``)."""
    status = httpx.get(f"{http_url}/status", timeout=5.0).json()
    return list(status["data_path"]["engine"]["workers"]["lmcache_driven"])
