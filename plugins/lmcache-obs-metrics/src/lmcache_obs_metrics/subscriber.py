"""The ``metrics`` subscriber: events in, Prometheus series out.

Handlers run on the event bus's drain thread, one event at a time; they only
add to counters and histograms (thread-safe in the Prometheus client). Gauges
are read at scrape time by :class:`~lmcache_obs_metrics.collector.ServerStateCollector`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest

from lmcache_core.observability.events import Event
from lmcache_core.observability.subscribers import BaseSubscriber
from lmcache_obs_metrics.collector import ServerStateCollector
from lmcache_obs_metrics.exporter import PrometheusExporter
from lmcache_obs_metrics.instruments import Instruments
from lmcache_obs_metrics.labels import MAX_CACHE_SALTS, MAX_MODEL_NAMES, LabelCap
from lmcache_obs_metrics.sampling import ChunkSampler, LifetimeTracker
from lmcache_obs_metrics.settings import MetricsSettings

if TYPE_CHECKING:
    from lmcache_core.observability.bus import EventBus
    from lmcache_core.observability.subscribers import SubscriberContext
    from lmcache_core.state import ServerState

logger = logging.getLogger("lmcache.observability.metrics")

NAME = "metrics"
"""The subscriber's name (its spec name): ``/metrics`` finds it on the bus by this."""

GB = 1e9
"""Throughput histograms are in GB/s (10^9 bytes), as upstream's."""


def _number(event: Event, field: str) -> float:
    """A numeric field of ``event`` (0 when missing or not a number)."""
    value = event.get(field, 0)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


class MetricsSubscriber(BaseSubscriber):
    """Counts events into one server's Prometheus registry.

    Args:
        instance_id: ``--instance-id`` (label ``instance_id`` of every series).
        sample_rate: ``--metrics-sample-rate``, for the per-chunk histograms.
        server: The running server's read-only state and its event bus, for
            scrape-time gauges; None for bare use (tests).
    """

    name = NAME

    def __init__(
        self,
        instance_id: str,
        sample_rate: float,
        server: tuple[ServerState, EventBus] | None = None,
    ) -> None:
        super().__init__()
        self.instance_id = instance_id
        self.registry = CollectorRegistry()
        self.instruments = Instruments(self.registry, instance_id)
        self.caps: dict[str, LabelCap] = {
            "cache_salt": LabelCap(MAX_CACHE_SALTS),
            "model_name": LabelCap(MAX_MODEL_NAMES),
        }
        self.lifetimes = LifetimeTracker(ChunkSampler(sample_rate))
        self.exporter: PrometheusExporter | None = None
        if server is not None:
            state, bus = server
            self.registry.register(ServerStateCollector(state, bus, instance_id, self.caps))

    # -- exposition ---------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (what ``/metrics`` serves)."""
        return generate_latest(self.registry)

    def close(self) -> None:
        """Stop the ``--prometheus-port`` endpoint, if this subscriber serves one."""
        if self.exporter is not None:
            self.exporter.stop()
            self.exporter = None

    # -- labels -------------------------------------------------------------------------------

    def _model(self, event: Event) -> str:
        return self.caps["model_name"](event.get("model_name"))

    def _salt(self, value: object) -> str:
        return self.caps["cache_salt"](value)

    def _request_labels(self, event: Event) -> tuple[str, str]:
        return self._model(event), self._salt(event.get("cache_salt"))

    def _per_salt(self, name: str, counts: object) -> None:
        if isinstance(counts, Mapping):
            for salt, count in counts.items():
                if isinstance(count, int):
                    self.instruments.add(name, count, self._salt(salt))

    # -- requests and lookups -----------------------------------------------------------------

    def on_mp_request_end(self, event: Event) -> None:
        """A request ended: count it and its lifetime."""
        model, salt = self._request_labels(event)
        self.instruments.add("requests", 1, model, salt)
        self.instruments.observe("request_duration_seconds", _number(event, "duration_s"), model)

    def on_mp_lookup_prefetch_end(self, event: Event) -> None:
        """A lookup's result: requested and hit tokens and keys per tier."""
        model, salt = self._request_labels(event)
        add = self.instruments.add
        add("lookups", 1, model, salt)
        add("lookup_requested_tokens", _number(event, "requested_tokens"), model, salt)
        for tier in ("l1", "l2"):
            add("lookup_hit_tokens", _number(event, f"{tier}_hit_tokens"), model, salt, tier)
            add("lookup_hit_keys", _number(event, f"{tier}_hit_keys"), model, salt, tier)
        sources = event.get("l2_hit_sources") or ()
        for source in sources if isinstance(sources, list | tuple) else ():
            if not isinstance(source, Mapping):
                continue
            adapter = str(source.get("l2_name", "")), str(source.get("adapter_index", ""))
            tokens, keys = source.get("tokens", 0), source.get("keys", 0)
            if isinstance(tokens, int | float) and isinstance(keys, int):
                add("lookup_l2_hit_tokens", tokens, model, salt, *adapter)
                add("lookup_l2_hit_keys", keys, model, salt, *adapter)
        self.instruments.observe("lookup_duration_seconds", _number(event, "duration_s"), model)

    # -- store and retrieve -------------------------------------------------------------------

    def _transfer(self, kind: str, done_field: str, event: Event) -> None:
        model, salt = self._request_labels(event)
        add = self.instruments.add
        add(f"{kind}s", 1, model, salt)
        add(f"{kind}_chunks", _number(event, done_field), model, salt)
        nbytes = _number(event, "bytes")
        add(f"{kind}_bytes", nbytes, model, salt)
        if not event.get("ok", False):
            add(f"{kind}_failures", 1, model, salt)
        duration = _number(event, "duration_s")
        self.instruments.observe(f"{kind}_duration_seconds", duration, model)
        if nbytes > 0 and duration > 0:
            self.instruments.observe(
                f"{kind}_throughput_gigabytes_per_second", nbytes / duration / GB, model
            )

    def on_mp_store_end(self, event: Event) -> None:
        """A store finished: count, chunks written, bytes, failure, duration, throughput."""
        self._transfer("store", "stored_chunks", event)

    def on_mp_retrieve_end(self, event: Event) -> None:
        """A retrieve finished: count, chunks copied, bytes, failure, duration, throughput."""
        self._transfer("retrieve", "retrieved_chunks", event)

    # -- L1 -----------------------------------------------------------------------------------

    def on_l1_write_finished(self, event: Event) -> None:
        """Objects committed to L1: per-salt keys, bytes, and sampled write times."""
        self._per_salt("l1_write_keys", event.get("key_count_per_salt"))
        self.instruments.add("l1_write_bytes", _number(event, "bytes"))
        keys = event.get("keys")
        if keys:
            self.lifetimes.written(keys, event.timestamp)

    def on_l1_keys_evicted(self, event: Event) -> None:
        """Objects evicted: per-salt keys, bytes by reason, sampled lifetimes."""
        self._per_salt("l1_evicted_keys", event.get("key_count_per_salt"))
        reason = str(event.get("reason", "eviction"))
        self.instruments.add("l1_evicted_bytes", _number(event, "bytes"), reason)
        keys = event.get("keys")
        if keys:
            for lifetime in self.lifetimes.removed(keys, event.timestamp):
                self.instruments.observe("l1_chunk_lifetime_seconds", lifetime)

    def on_l1_allocation_failed(self, event: Event) -> None:
        """An L1 reservation was refused."""
        self.instruments.add("l1_allocation_failures", 1, str(event.get("during", "unknown")))

    def on_l1_eviction_loop_tick(self, event: Event) -> None:
        """One watermark check of the L1 controller."""
        self.instruments.add("l1_eviction_loop_ticks", 1)
        if event.get("triggered", False):
            self.instruments.add("l1_eviction_loop_triggered", 1)

    # -- L2 -----------------------------------------------------------------------------------

    def _l2_labels(self, event: Event) -> tuple[str, str]:
        return str(event.get("l2_name", "")), str(event.get("adapter_index", ""))

    def _l2_transfer(self, kind: str, succeeded_field: str, event: Event) -> None:
        labels = self._l2_labels(event)
        add = self.instruments.add
        add(f"l2_{kind}_completed", 1, *labels)
        add(f"l2_{kind}_succeeded_objects", _number(event, succeeded_field), *labels)
        add(f"l2_{kind}_failed_objects", _number(event, "failed_count"), *labels)
        nbytes, duration = _number(event, "bytes_transferred"), _number(event, "duration_s")
        add(f"l2_{kind}_bytes", nbytes, *labels)
        if nbytes > 0 and duration > 0:
            self.instruments.observe(
                f"l2_{kind}_throughput_gigabytes_per_second", nbytes / duration / GB, *labels
            )

    def on_l2_store_completed(self, event: Event) -> None:
        """One adapter finished a store batch."""
        self._l2_transfer("store", "succeeded_count", event)

    def on_l2_load_completed(self, event: Event) -> None:
        """One adapter finished a prefetch load."""
        self._l2_transfer("load", "loaded_count", event)

    def on_l2_prefetch_failed(self, event: Event) -> None:
        """A prefetch was abandoned."""
        reason = str(event.get("reason", "unknown"))
        self.instruments.add("l2_prefetch_failures", 1, reason)
        self.instruments.add("l2_prefetch_failed_keys", _number(event, "key_count"), reason)

    def on_l2_keys_evicted(self, event: Event) -> None:
        """An adapter's eviction deleted objects."""
        self.instruments.add(
            "l2_evicted_keys", _number(event, "key_count"), *self._l2_labels(event)
        )


def build_metrics_subscriber(context: SubscriberContext) -> MetricsSubscriber:
    """The factory of the ``metrics`` spec: the subscriber, serving ``--prometheus-port``.

    Raises:
        StartupError: The Prometheus port cannot be bound.
    """
    observability = context.config.plugin_settings(MetricsSettings)
    subscriber = MetricsSubscriber(
        context.instance_id, observability.metrics_sample_rate, (context.server, context.bus)
    )
    subscriber.exporter = PrometheusExporter(
        subscriber.registry, context.config.http.http_host, observability.prometheus_port
    )
    subscriber.exporter.start()
    return subscriber
