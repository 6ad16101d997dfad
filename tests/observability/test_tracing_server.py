"""The ``tracing`` subscriber in a real server, exporting to a real OTLP gRPC receiver."""

from __future__ import annotations

import httpx
import pytest

from lmcache_core.testing.otlp_receiver import otlp_trace_receiver
from tests.observability.request_flow import obs_server, run_request

# Starts real servers (seconds each): outside the quick loop, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow


def test_a_request_is_exported_as_a_span_tree() -> None:
    with otlp_trace_receiver() as receiver:
        with obs_server(
            "--enable-tracing",
            "--otlp-endpoint",
            receiver.endpoint,
            "--instance-id",
            "trace-test-instance",
        ) as server:
            status = httpx.get(f"{server.http_url}/status").json()
            assert "tracing" in status["event_bus"]["subscribers"]
            assert status["startup"]["errors"] == []
            flow = run_request(server.zmq_url)
            # A request still open at shutdown must be ended and flushed too.
            open_flow = run_request(server.zmq_url, chunks=1, end_session=False)
        # The server stopped (SIGTERM): its close flushed every span.
        spans = receiver.snapshot()
    names = sorted(s.name for s in spans)
    assert names.count("request") == 2, names
    assert all(s.resource["service.instance.id"] == "trace-test-instance" for s in spans)
    assert all(s.resource["service.name"] == "lmcache-mp-server" for s in spans)
    assert all(s.scope == "lmcache_mp.server" for s in spans)

    (root,) = [
        s for s in spans if s.name == "request" and s.attributes["session_id"] == flow.request
    ]
    children = {s.name: s for s in spans if s.parent_span_id == root.span_id}
    assert set(children) == {"mp.lookup_prefetch", "mp.retrieve"}, [
        (s.name, s.parent_span_id) for s in spans
    ]
    for child in children.values():
        assert child.trace_id == root.trace_id
        assert child.attributes["session_id"] == flow.request
        assert root.start_ns <= child.start_ns <= child.end_ns <= root.end_ns
    assert root.attributes["requested_tokens"] == 48
    assert root.attributes["hit_tokens"] == 48
    assert root.attributes["hit_rate"] == 1.0
    assert root.attributes["model_name"] == "model"
    assert "lmcache.end_reason" not in root.attributes
    retrieve = children["mp.retrieve"]
    assert retrieve.attributes["retrieved_chunks"] == 3
    assert retrieve.attributes["ok"] is True
    assert retrieve.attributes["instance_id"] == flow.instance_id

    # The store ran under its own request id, which never looked up: a trace of its own.
    (store,) = [
        s
        for s in spans
        if s.name == "mp.store" and s.attributes["session_id"] == flow.store_request
    ]
    assert store.parent_span_id == ""
    assert store.attributes["stored_chunks"] == 3

    (late,) = [
        s for s in spans if s.name == "request" and s.attributes["session_id"] == open_flow.request
    ]
    assert late.attributes["lmcache.end_reason"] == "shutdown"
    assert late.attributes["hit_tokens"] == 16
