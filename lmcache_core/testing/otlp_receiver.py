"""A real OTLP gRPC trace receiver for tests: collects the spans it is sent.

Needs ``grpcio`` and ``opentelemetry-proto`` (test dependencies: declare them in the
``test`` extra of a plugin whose tests use it).

It implements ``opentelemetry.proto.collector.trace.v1.TraceService/Export`` with
``grpcio`` on a free local port, as a collector would, and keeps every span with
its resource attributes so tests can check names, parents and attributes of what
a server really exported.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def plain(value: AnyValue) -> Any:
    """An OTLP attribute value as a Python value."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [plain(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: plain(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


@dataclass
class ReceivedSpan:
    """One exported span, decoded."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    status_code: int


@dataclass
class OtlpTraceReceiver:
    """The spans received so far (thread safe)."""

    endpoint: str = ""
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        """Keep the spans of one export request."""
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: plain(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            attributes={a.key: plain(a.value) for a in span.attributes},
                            resource=resource,
                            scope=scope_spans.scope.name,
                            status_code=span.status.code,
                        )
                    )
        with self._lock:
            self.requests += 1
            self.spans.extend(received)

    def snapshot(self) -> list[ReceivedSpan]:
        """A copy of the spans received so far."""
        with self._lock:
            return list(self.spans)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedSpan]:
        """Wait until at least ``count`` spans arrived; returns them all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = self.snapshot()
            if len(spans) >= count:
                return spans
            time.sleep(0.05)
        return self.snapshot()


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpTraceReceiver) -> None:
        self.receiver = receiver

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.receiver.add(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@contextmanager
def otlp_trace_receiver() -> Iterator[OtlpTraceReceiver]:
    """A running receiver on a free port of 127.0.0.1; ``endpoint`` is its ``http://`` URL."""
    receiver = OtlpTraceReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    # The generated gRPC module has no annotations.
    add_servicer = trace_service_pb2_grpc.add_TraceServiceServicer_to_server
    add_servicer(_TraceService(receiver), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    receiver.endpoint = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        server.stop(grace=None).wait(5)
