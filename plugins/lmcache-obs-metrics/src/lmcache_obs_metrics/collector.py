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
    from lmcache_core.server.context import ServerContext


class ServerStateCollector(Collector):
    """Collects the ``scrape`` metrics of the catalogue from one server.

    Args:
        server: The running server's shared state (read only).
        instance_id: ``--instance-id``.
        caps: The subscriber's label caps by label name (their fold counts are exported).
    """

    def __init__(
        self, server: ServerContext, instance_id: str, caps: Mapping[str, LabelCap]
    ) -> None:
        self.server = server
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
        data_path = self.server.data_path
        if data_path is None:  # a build without a data path: bus metrics only
            return
        yield from self._l1(data_path.l1)
        from lmcache_core.engine.sessions import SessionTable
        from lmcache_core.storage.l2.tier import L2Tier

        sessions = [c for c in data_path.components if isinstance(c, SessionTable)]
        if sessions:
            yield self._single("active_sessions", sum(len(s) for s in sessions))
        for component in data_path.components:
            if isinstance(component, L2Tier):
                yield from self._l2(component)

    def _bus(self) -> Iterator[Metric]:
        bus = self.server.bus
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

    def _l1(self, l1: object) -> Iterator[Metric]:
        from lmcache_core.storage.l1 import L1Manager

        if not isinstance(l1, L1Manager) or l1.closed:
            return
        usage = l1.usage()
        yield self._single("l1_memory_usage_bytes", usage.used_bytes)
        yield self._single("l1_capacity_bytes", usage.capacity_bytes)
        yield self._single("l1_usage_ratio", usage.usage_ratio)
        yield self._single("l1_resident_objects", usage.resident_objects)
        yield self._single("l1_staged_objects", usage.staged_objects)
        yield self._single("l1_locked_objects", usage.locked_objects)

    def _l2(self, tier: object) -> Iterator[Metric]:
        from lmcache_core.storage.l2.tier import L2Tier

        assert isinstance(tier, L2Tier)
        used, capacity = self._gauge("l2_usage_bytes"), self._gauge("l2_capacity_bytes")
        for index, adapter in enumerate(tier.adapters):
            labels = [self.instance_id, adapter.name, str(index)]
            used.add_metric(labels, adapter.used_bytes)
            capacity.add_metric(labels, adapter.capacity_bytes)
        yield used
        yield capacity
        yield self._single("l2_store_queue_depth", tier.store_queue_depth())
        yield self._single("l2_prefetches_in_flight", tier.prefetches_in_flight())
