"""The event-fed instruments of one server, in that server's own registry.

Each server (and each test instance in one process) gets its own
``CollectorRegistry``: the Prometheus client's global default registry would
mix the series of several servers and refuse a second registration of a name.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from lmcache_obs_metrics.catalogue import METRICS, SCRAPE, MetricDef


class Instruments:
    """The counters and histograms fed by events, by short name.

    Args:
        registry: The server's registry; every instrument is registered there.
        instance_id: ``--instance-id``; the first label value of every series.
    """

    def __init__(self, registry: CollectorRegistry, instance_id: str) -> None:
        self.registry = registry
        self.instance_id = instance_id
        self.counters: dict[str, Counter] = {}
        self.histograms: dict[str, Histogram] = {}
        # The client's labels() validates and hashes on every call; the children are cached
        # (bounded: every label value is capped or comes from the server itself).
        self._counter_children: dict[tuple[str, tuple[str, ...]], Counter] = {}
        self._histogram_children: dict[tuple[str, tuple[str, ...]], Histogram] = {}
        for metric in METRICS:
            if metric.source == SCRAPE:
                continue
            if metric.kind == "counter":
                self.counters[metric.name] = Counter(
                    metric.full_name, metric.help, metric.label_names, registry=registry
                )
            elif metric.kind == "histogram":
                self.histograms[metric.name] = Histogram(
                    metric.full_name,
                    metric.help,
                    metric.label_names,
                    registry=registry,
                    buckets=metric.buckets,
                )
            else:  # pragma: no cover - the catalogue test keeps event-fed gauges out
                raise ValueError(f"{metric.name}: event-fed gauges are not supported")

    def add(self, name: str, amount: float, *labels: str) -> None:
        """Increase a counter; zero and negative amounts are ignored."""
        if amount > 0:
            child = self._counter_children.get((name, labels))
            if child is None:
                child = self.counters[name].labels(self.instance_id, *labels)
                self._counter_children[(name, labels)] = child
            child.inc(amount)

    def observe(self, name: str, value: float, *labels: str) -> None:
        """Record one histogram observation."""
        child = self._histogram_children.get((name, labels))
        if child is None:
            child = self.histograms[name].labels(self.instance_id, *labels)
            self._histogram_children[(name, labels)] = child
        child.observe(value)


def event_fed(metric: MetricDef) -> bool:
    """Whether events (not the scrape) feed ``metric``."""
    return metric.source != SCRAPE
