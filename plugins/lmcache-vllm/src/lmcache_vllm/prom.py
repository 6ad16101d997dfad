"""The connector's Prometheus metrics, fed by vLLM with each step's stats payload.

vLLM's ``PrometheusStatLogger`` asks the connector class for its metrics
(``build_prom_metrics``) and passes it the metric classes to use (prometheus_client's, or
Ray's wrappers) and its label names (``model_name``, ``engine``). Every step's aggregated
payload (:mod:`lmcache_vllm.stats`) then goes to ``observe``: each counter of
:data:`~lmcache_vllm.stats.METRICS` becomes ``vllm:lmcache_mp_<name>_total`` and the
lookup latencies fill ``vllm:lmcache_mp_lookup_duration_seconds`` (the name upstream's
connector uses for the same histogram). This module does not import vLLM: the shim
subclasses vLLM's ``KVConnectorPromMetrics`` around :class:`PromRecorder`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lmcache_vllm.stats import LOOKUP_SECONDS, METRICS, normalise_payload

PREFIX = "vllm:lmcache_mp_"
"""The prefix of every metric name (vLLM's metrics are all ``vllm:``)."""
LOOKUP_HISTOGRAM = f"{PREFIX}lookup_duration_seconds"
"""The lookup-to-hit latency histogram."""
LOOKUP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
"""Seconds; a lookup is answered within a few scheduler steps, or at lookup_timeout."""


class PromRecorder:
    """Registers the counters and the histogram; records payloads into them.

    Args:
        counter_cls: The counter class (prometheus_client's ``Counter`` or a wrapper).
        histogram_cls: The histogram class.
        labelnames: vLLM's label names.
        per_engine_labelvalues: The label values of each engine index.
    """

    def __init__(
        self,
        counter_cls: Any,
        histogram_cls: Any,
        labelnames: Sequence[str],
        per_engine_labelvalues: Mapping[int, Sequence[object]],
    ) -> None:
        names = list(labelnames)
        self._engines = {index: list(values) for index, values in per_engine_labelvalues.items()}
        self._counters = {
            metric.name: counter_cls(
                name=f"{PREFIX}{metric.name}", documentation=metric.help, labelnames=names
            )
            for metric in METRICS
        }
        self._lookup = histogram_cls(
            name=LOOKUP_HISTOGRAM,
            documentation="LMCache lookup-to-hit latency as the vLLM scheduler saw it.",
            labelnames=names,
            buckets=list(LOOKUP_BUCKETS),
        )

    def observe(self, data: Mapping[str, Any] | None, engine_idx: int = 0) -> None:
        """Add one step's payload to the engine's series.

        Raises:
            KeyError: ``engine_idx`` is not one of the engines vLLM declared.
            ValueError: ``data`` is not an lmcache_vllm payload.
        """
        if not data:
            return
        labels = self._engines[engine_idx]
        payload = normalise_payload(dict(data))
        for name, counter in self._counters.items():
            amount = payload[name]
            if amount > 0:
                counter.labels(*labels).inc(amount)
        histogram = self._lookup.labels(*labels)
        for seconds in payload[LOOKUP_SECONDS]:
            histogram.observe(seconds)
