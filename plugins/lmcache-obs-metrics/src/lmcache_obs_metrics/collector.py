"""Gauges and bus counters read from the running server at scrape time.

Usage and queue depths are states, not events: reading them when Prometheus asks
is exact and costs nothing between scrapes. Every read here is a cheap snapshot
under the owner's own lock (``L1Manager.usage``, an adapter's byte count, the
bus counters); nothing is changed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lmcache_obs_metrics.catalogue import BY_NAME
from lmcache_obs_metrics.labels import LabelCap

if TYPE_CHECKING:
    from lmcache_core.observability.bus import EventBus
    from lmcache_core.state import ServerState


class ServerStateCollector(Collector):
    """Collects the ``scrape`` metrics of the catalogue from one server.

    Args:
        server: The running server's read-only state.
        bus: The event bus the metrics subscriber is attached to.
        instance_id: ``--instance-id``.
        caps: The subscriber's label caps by label name (their fold counts are exported).
    """

    def __init__(
        self,
        server: ServerState,
        bus: EventBus,
        instance_id: str,
        caps: Mapping[str, LabelCap],
    ) -> None:
        self.server = server
        self.bus = bus
        self.instance_id = instance_id
        self.caps = caps

    def _gauge(self, name: str) -> GaugeMetricFamily:
        metric = BY_NAME[name]
        return GaugeMetricFamily(metric.full_name, metric.help, labels=list(metric.label_names))

    def _counter(self, name: str) -> CounterMetricFamily:
        metric = BY_NAME[name]
        return CounterMetricFamily(metric.full_name, metric.help, labels=list(metric.label_names))

    def _single(self, name: str, value: float) -> GaugeMetricFamily:
        family = self._gauge(name)
        family.add_metric([self.instance_id], value)
        return family

    def collect(self) -> Iterator[Metric]:
        """Yield the current values."""
        yield from self._bus()
        if not self.server.has_data_path:  # a build without a data path: bus metrics only
            return
        yield from self._l1()
        sessions = self.server.active_sessions()
        if sessions is not None:
            yield self._single("active_sessions", sessions)
        yield from self._l2()

    def _bus(self) -> Iterator[Metric]:
        bus = self.bus
        yield self._single("event_bus_queue_depth", bus.queue_depth())
        yield self._single("event_bus_drain_lag_seconds", bus.drain_lag_seconds())
        dropped = self._counter("event_bus_dropped_events")
        dropped.add_metric([self.instance_id], bus.stats.dropped)
        yield dropped
        errors = self._counter("event_bus_subscriber_exceptions")
        for name, count in sorted(dict(bus.stats.subscriber_errors).items()):
            errors.add_metric([self.instance_id, name], count)
        yield errors
        folded = self._counter("metrics_folded_label_values")
        for label, cap in sorted(self.caps.items()):
            folded.add_metric([self.instance_id, label], cap.folded)
        yield folded
        rejected = self._counter("auth_rejected_requests")
        for transport, count in sorted(self.server.auth_rejections().items()):
            rejected.add_metric([self.instance_id, transport], count)
        yield rejected

    def _l1(self) -> Iterator[Metric]:
        usage = self.server.l1_usage()
        if usage is None:  # closed (shutting down)
            return
        yield self._single("l1_memory_usage_bytes", usage.used_bytes)
        yield self._single("l1_capacity_bytes", usage.capacity_bytes)
        yield self._single("l1_usage_ratio", usage.usage_ratio)
        yield self._single("l1_resident_objects", usage.resident_objects)
        yield self._single("l1_staged_objects", usage.staged_objects)
        yield self._single("l1_locked_objects", usage.locked_objects)

    def _l2(self) -> Iterator[Metric]:
        adapters = self.server.l2_adapters()
        if not adapters:
            return
        used, capacity = self._gauge("l2_usage_bytes"), self._gauge("l2_capacity_bytes")
        for adapter in adapters:
            # The label is the 0-based cascade position, as it always was.
            labels = [self.instance_id, adapter.name, str(adapter.index - 1)]
            used.add_metric(labels, adapter.used_bytes)
            capacity.add_metric(labels, adapter.capacity_bytes)
        yield used
        yield capacity
        yield self._single("l2_store_queue_depth", self.server.l2_store_queue_depth() or 0)
        yield self._single("l2_prefetches_in_flight", self.server.l2_prefetches_in_flight() or 0)
