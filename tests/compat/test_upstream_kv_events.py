"""Upstream LMCache 0.5.6's own client reads our KV event stream (``nox -s compat``).

Needs ``LMCACHE_COMPAT_PYTHON`` (a Python with ``lmcache==0.5.6``); skipped otherwise.
"""

from __future__ import annotations

from pathlib import Path

from tests.compat.upstream_run import needs_compat_python, run_driver
from tests.server_process import free_port, running_server

DRIVER = Path(__file__).with_name("drive_upstream_kv_events.py")

pytestmark = needs_compat_python


def test_upstream_client_subscribes_and_reads_stored_records() -> None:
    port = free_port()
    with running_server("--l1-size-gb", "1", "--eviction-policy", "LRU", "--port", str(port)):
        report = run_driver(DRIVER, f"tcp://127.0.0.1:{port}")
    assert "kv_event_stream" in report["experimental"]
    assert report["first"]["enabled"] is True
    assert report["stored"] >= 3 and report["tokens_match"] and report["parents_chain"]
    assert report["reader_stopped"] is True
