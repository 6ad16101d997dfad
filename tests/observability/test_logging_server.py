"""The ``logging`` subscriber in a real server: its lines in the server's log."""

from __future__ import annotations

import httpx
import pytest

from tests.observability.request_flow import obs_server, run_request

# Starts real servers (seconds each): outside the quick loop, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


def test_debug_level_logs_the_request_events() -> None:
    with obs_server(LMCACHE_LOG_LEVEL="DEBUG") as server:
        status = httpx.get(f"{server.http_url}/status").json()
        assert "logging" in status["event_bus"]["subscribers"]
        flow = run_request(server.zmq_url)
        assert flow.hit_chunks == flow.chunks and flow.retrieved
    events = [line for line in server.output().splitlines() if " lmcache.events: " in line]
    text = "\n".join(events)
    rid, store_rid = flow.request, flow.store_request
    expected = [
        f"DEBUG lmcache.events: MP store start: request={store_rid} "
        f"instance={flow.instance_id} chunks=3",
        # The commit (L1 write) happens inside the store.
        "DEBUG lmcache.events: L1 write finished: 3 keys,",
        f"DEBUG lmcache.events: MP store end: request={store_rid} instance={flow.instance_id} "
        "3/3 chunks,",
        f"DEBUG lmcache.events: MP request start: request={rid} model=model",
        f"DEBUG lmcache.events: MP lookup start: request={rid} requested=48 tokens",
        f"DEBUG lmcache.events: MP lookup end: request={rid} hit 48/48 tokens (L1 48, L2 0)",
        f"DEBUG lmcache.events: MP retrieve start: request={rid} instance={flow.instance_id} "
        "chunks=3",
        f"DEBUG lmcache.events: MP retrieve end: request={rid} instance={flow.instance_id} "
        "3/3 chunks,",
        f"DEBUG lmcache.events: MP request end: request={rid} after ",
    ]
    missing = [fragment for fragment in expected if fragment not in text]
    assert missing == [], f"missing log lines {missing} in:\n{text}"
    # Published in this order by one engine: the log keeps it.
    positions = [text.index(fragment) for fragment in expected]
    assert positions == sorted(positions), text


def test_info_level_logs_no_per_request_lines() -> None:
    with obs_server(LMCACHE_LOG_LEVEL="INFO") as server:
        run_request(server.zmq_url)
    output = server.output()
    assert "observability subscriber logging attached" in output, output
    assert " lmcache.events: " not in output, output


def test_disable_logging_skips_the_subscriber() -> None:
    with obs_server("--disable-logging", LMCACHE_LOG_LEVEL="DEBUG") as server:
        status = httpx.get(f"{server.http_url}/status").json()
        assert "logging" not in status["event_bus"]["subscribers"]
        flow = run_request(server.zmq_url)
        assert flow.retrieved
    output = server.output()
    assert " DEBUG " in output, output  # the level was in force ...
    assert " lmcache.events: " not in output, output  # ... and no event line was written
