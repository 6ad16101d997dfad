"""The OpenTelemetry pipeline: a tracer provider exporting over OTLP gRPC in batches.

The provider is the subscriber's own, never the process-global one, so nothing
else in the process (a plugin, a library) starts exporting spans by accident,
and closing it flushes exactly this subscriber's spans.
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import urlparse

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

logger = logging.getLogger("lmcache.observability.tracing")

SERVICE_NAME = "lmcache-mp-server"
TRACER_NAME = "lmcache_mp.server"

EXPORT_TIMEOUT_SECONDS = 2.0
"""One OTLP export call, retries included, gives up after this long (a dead collector
must not hold the server's shutdown)."""

CLOSE_TIMEOUT_SECONDS = 2.5
"""Flushing at shutdown waits at most this long; spans still unsent are lost (logged)."""


def otlp_exporter(endpoint: str) -> OTLPSpanExporter:
    """An OTLP gRPC span exporter for ``--otlp-endpoint``.

    ``http://host:port`` (or a bare ``host:port``) is a plaintext channel, ``https://``
    a TLS one, as OTLP clients conventionally read the scheme.
    """
    insecure = urlparse(endpoint).scheme != "https"
    return OTLPSpanExporter(endpoint=endpoint, insecure=insecure, timeout=EXPORT_TIMEOUT_SECONDS)


def tracer_provider(exporter: SpanExporter, instance_id: str) -> TracerProvider:
    """A provider with the server's resource and a batch processor over ``exporter``.

    Args:
        exporter: Where finished spans go.
        instance_id: ``--instance-id``, the resource's ``service.instance.id``.
    """
    resource = Resource.create({"service.name": SERVICE_NAME, "service.instance.id": instance_id})
    # shutdown_on_exit=False: the subscriber's close() flushes within the shutdown budget.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def shutdown_within(provider: TracerProvider, timeout_s: float = CLOSE_TIMEOUT_SECONDS) -> bool:
    """Flush and shut ``provider`` down, waiting at most ``timeout_s``.

    The SDK's own shutdown has no overall deadline (one per export call only), so
    it runs on a helper thread that is left behind (a daemon) when it is late.

    Returns:
        True when everything was flushed in time.
    """
    done = threading.Event()

    def run() -> None:
        try:
            provider.shutdown()
        except Exception:
            logger.exception("tracing: shutting the span exporter down failed")
        finally:
            done.set()

    threading.Thread(target=run, name="lmcache-tracing-flush", daemon=True).start()
    if done.wait(timeout_s):
        return True
    logger.warning("tracing: spans not exported within %.1f s at shutdown were dropped", timeout_s)
    return False
