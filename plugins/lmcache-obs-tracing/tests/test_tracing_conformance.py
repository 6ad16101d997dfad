"""The tracing subscriber passes the core's subscriber conformance suite."""

from __future__ import annotations

from pathlib import Path

from lmcache_obs_tracing.subscriber import TracingSubscriber
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lmcache_core.observability.bus import Subscriber
from lmcache_core.testing.subscriber_conformance import SubscriberConformance


class TestTracingSubscriberConformance(SubscriberConformance):
    def make_subscriber(self, tmp_path: Path) -> Subscriber:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        return TracingSubscriber(provider, idle_ttl_s=600.0)
