"""Upstream LMCache 0.5.6's own client reads our KV event stream (``nox -s compat``).

Needs ``LMCACHE_COMPAT_PYTHON`` (a Python with ``lmcache==0.5.6``); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.server_process import free_port, running_server

COMPAT_PYTHON = os.environ.get("LMCACHE_COMPAT_PYTHON", "")
DRIVER = Path(__file__).with_name("drive_upstream_kv_events.py")

pytestmark = pytest.mark.skipif(
    not COMPAT_PYTHON, reason="set LMCACHE_COMPAT_PYTHON (nox -s compat) to run it"
)


def test_upstream_client_subscribes_and_reads_stored_records() -> None:
    port = free_port()
    with running_server("--l1-size-gb", "1", "--eviction-policy", "LRU", "--port", str(port)):
        env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
        result = subprocess.run(
            [COMPAT_PYTHON, str(DRIVER), f"tcp://127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            check=False,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "kv_event_stream" in report["experimental"]
    assert report["first"]["enabled"] is True
    assert report["stored"] >= 3 and report["tokens_match"] and report["parents_chain"]
    assert report["reader_stopped"] is True
