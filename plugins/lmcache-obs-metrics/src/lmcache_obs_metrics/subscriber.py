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

from lmcache_core.observability.events import (
    CbChunksEvicted,
    CbFingerprintsRegistered,
    CbLookupEnd,
    CbRetrieveEnd,
    L1AllocationFailed,
    L1EvictionLoopTick,
    L1KeysEvicted,
    L1WriteFinished,
    L2AdapterEvent,
    L2KeysEvicted,
    L2LoadCompleted,
    L2PrefetchFailed,
    L2StoreCompleted,
    MpLookupPrefetchEnd,
    MpRequestEnd,
    MpRetrieveEnd,
    MpStoreEnd,
    RequestEvent,
    TransferEvent,
)
from lmcache_core.observability.subscribers import BaseSubscriber
from lmcache_obs_metrics.collector import ServerStateCollector
from lmcache_obs_metrics.exporter import PortInUse, PrometheusExporter
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

    def _salt(self, value: str) -> str:
        return self.caps["cache_salt"](value)

    def _request_labels(self, event: RequestEvent) -> tuple[str, str]:
        return self.caps["model_name"](event.model_name), self._salt(event.cache_salt)

    def _per_salt(self, name: str, counts: Mapping[str, int]) -> None:
        for salt, count in counts.items():
            self.instruments.add(name, count, self._salt(salt))

    # -- requests and lookups -----------------------------------------------------------------

    def on_mp_request_end(self, event: MpRequestEnd) -> None:
        """A request ended: count it and its lifetime."""
        model, salt = self._request_labels(event)
        self.instruments.add("requests", 1, model, salt)
        self.instruments.observe("request_duration_seconds", event.duration_s, model)

    def on_mp_lookup_prefetch_end(self, event: MpLookupPrefetchEnd) -> None:
        """A lookup's result: requested and hit tokens and keys per tier, missed chunks by cause."""
        model, salt = self._request_labels(event)
        add = self.instruments.add
        add("lookups", 1, model, salt)
        add("lookup_requested_tokens", event.requested_tokens, model, salt)
        add("lookup_hit_tokens", event.l1_hit_tokens, model, salt, "l1")
        add("lookup_hit_keys", event.l1_hit_keys, model, salt, "l1")
        add("lookup_hit_tokens", event.l2_hit_tokens, model, salt, "l2")
        add("lookup_hit_keys", event.l2_hit_keys, model, salt, "l2")
        for source in event.l2_hit_sources:
            adapter = source.l2_name, str(source.adapter_index)
            add("lookup_l2_hit_tokens", source.tokens, model, salt, *adapter)
            add("lookup_l2_hit_keys", source.keys, model, salt, *adapter)
        for cause, chunks in event.miss_chunks_by_cause.items():
            add("lookup_miss_chunks", chunks, model, salt, cause)
        self.instruments.observe("lookup_duration_seconds", event.duration_s, model)

    # -- store and retrieve -------------------------------------------------------------------

    def _transfer(
        self, kind: str, event: TransferEvent, done: int, nbytes: int, duration: float, ok: bool
    ) -> None:
        model, salt = self._request_labels(event)
        add = self.instruments.add
        add(f"{kind}s", 1, model, salt)
        add(f"{kind}_chunks", done, model, salt)
        add(f"{kind}_bytes", nbytes, model, salt)
        if not ok:
            add(f"{kind}_failures", 1, model, salt)
        self.instruments.observe(f"{kind}_duration_seconds", duration, model)
        if nbytes > 0 and duration > 0:
            self.instruments.observe(
                f"{kind}_throughput_gigabytes_per_second", nbytes / duration / GB, model
            )

    def on_mp_store_end(self, event: MpStoreEnd) -> None:
        """A store finished: count, chunks written, bytes, failure, duration, throughput."""
        self._transfer("store", event, event.stored_chunks, event.bytes, event.duration_s, event.ok)

    def on_mp_retrieve_end(self, event: MpRetrieveEnd) -> None:
        """A retrieve finished: count, chunks copied, bytes, failure, duration, throughput."""
        self._transfer(
            "retrieve", event, event.retrieved_chunks, event.bytes, event.duration_s, event.ok
        )

    # -- L1 -----------------------------------------------------------------------------------

    def on_l1_write_finished(self, event: L1WriteFinished) -> None:
        """Objects committed to L1: per-salt keys, bytes, and sampled write times."""
        self._per_salt("l1_write_keys", event.key_count_per_salt)
        self.instruments.add("l1_write_bytes", event.bytes)
        if event.keys:
            self.lifetimes.written(event.keys, event.timestamp)

    def on_l1_keys_evicted(self, event: L1KeysEvicted) -> None:
        """Objects evicted: per-salt keys, bytes by reason, sampled lifetimes."""
        self._per_salt("l1_evicted_keys", event.key_count_per_salt)
        self.instruments.add("l1_evicted_bytes", event.bytes, event.reason)
        if event.keys:
            for lifetime in self.lifetimes.removed(event.keys, event.timestamp):
                self.instruments.observe("l1_chunk_lifetime_seconds", lifetime)

    def on_l1_allocation_failed(self, event: L1AllocationFailed) -> None:
        """An L1 reservation was refused."""
        self.instruments.add("l1_allocation_failures", 1, event.during)

    def on_l1_eviction_loop_tick(self, event: L1EvictionLoopTick) -> None:
        """One watermark check of the L1 controller."""
        self.instruments.add("l1_eviction_loop_ticks", 1)
        if event.triggered:
            self.instruments.add("l1_eviction_loop_triggered", 1)

    # -- L2 -----------------------------------------------------------------------------------

    @staticmethod
    def _l2_labels(event: L2AdapterEvent) -> tuple[str, str]:
        return event.l2_name, str(event.adapter_index)

    def _l2_transfer(
        self, kind: str, event: L2StoreCompleted | L2LoadCompleted, succeeded: int
    ) -> None:
        labels = self._l2_labels(event)
        add = self.instruments.add
        add(f"l2_{kind}_completed", 1, *labels)
        add(f"l2_{kind}_succeeded_objects", succeeded, *labels)
        add(f"l2_{kind}_failed_objects", event.failed_count, *labels)
        nbytes, duration = event.bytes_transferred, event.duration_s
        add(f"l2_{kind}_bytes", nbytes, *labels)
        if nbytes > 0 and duration > 0:
            self.instruments.observe(
                f"l2_{kind}_throughput_gigabytes_per_second", nbytes / duration / GB, *labels
            )

    def on_l2_store_completed(self, event: L2StoreCompleted) -> None:
        """One adapter finished a store batch."""
        self._l2_transfer("store", event, event.succeeded_count)

    def on_l2_load_completed(self, event: L2LoadCompleted) -> None:
        """One adapter finished a prefetch load."""
        self._l2_transfer("load", event, event.loaded_count)

    def on_l2_prefetch_failed(self, event: L2PrefetchFailed) -> None:
        """A prefetch was abandoned."""
        self.instruments.add("l2_prefetch_failures", 1, event.reason)
        self.instruments.add("l2_prefetch_failed_keys", event.key_count, event.reason)

    def on_l2_keys_evicted(self, event: L2KeysEvicted) -> None:
        """An adapter's eviction deleted objects."""
        self.instruments.add("l2_evicted_keys", event.key_count, *self._l2_labels(event))

    # -- the blend engine (cb.*) ---------------------------------------------------------------

    def on_cb_lookup_end(self, event: CbLookupEnd) -> None:
        """A unified lookup's result: requested and hit tokens per class, its duration."""
        labels = self._request_labels(event)
        add = self.instruments.add
        add("blend_lookup_requests", 1, *labels)
        add("blend_lookup_requested_tokens", event.requested_tokens, *labels)
        add("blend_lookup_hit_tokens", event.hit_tokens, *labels)
        add("blend_lookup_prefix_hit_tokens", event.prefix_hit_tokens, *labels)
        add("blend_lookup_non_prefix_hit_tokens", event.non_prefix_hit_tokens, *labels)
        add("blend_lookup_segmented_prefix_hit_tokens", event.segmented_prefix_hit_tokens, *labels)
        add("blend_lookup_fingerprint_hits", event.fingerprint_hits, *labels)
        add("blend_lookup_storage_hits", event.storage_hits, *labels)
        add("blend_lookup_stale_chunks", event.stale_chunks, *labels)
        add("blend_lookup_no_gpu_context_errors", int(event.no_gpu_context), *labels)
        add("blend_fingerprint_matches", event.fingerprint_matches, *labels)
        self.instruments.observe("blend_lookup_duration", event.duration_s, labels[0])

    def on_cb_retrieve_end(self, event: CbRetrieveEnd) -> None:
        """A blend retrieve that wrote KV (chunks) or failed."""
        labels = self._request_labels(event)
        self.instruments.add("blend_retrieve_requests", 1, *labels)
        if event.success:
            self.instruments.add("blend_retrieve_chunks", event.num_chunks, *labels)
        else:
            self.instruments.add("blend_retrieve_failures", 1, *labels)
        self.instruments.observe("blend_retrieve_duration", event.duration_s, labels[0])

    def on_cb_fingerprints_registered(self, event: CbFingerprintsRegistered) -> None:
        """Chunks newly fingerprinted by a store."""
        self.instruments.add("blend_fingerprints_registered", event.num_chunks)

    def on_cb_chunks_evicted(self, event: CbChunksEvicted) -> None:
        """Stale fingerprints struck by a lookup."""
        self.instruments.add("blend_chunks_evicted", event.num_chunks, *self._request_labels(event))


def build_metrics_subscriber(context: SubscriberContext) -> MetricsSubscriber:
    """The factory of the ``metrics`` spec: the subscriber, serving ``--prometheus-port``.

    When the port was left at its default and another process (typically a second
    server on the same node) holds it, the subscriber serves ``/metrics`` on the HTTP
    port only, as upstream does, and says so once: several servers per node then
    need only ``--port`` and ``--http-port``. A port given explicitly (flag or
    ``LMCACHE_PROMETHEUS_PORT``) that cannot be bound still fails start-up.

    Raises:
        StartupError: The Prometheus port cannot be bound (and was given explicitly,
            or the failure is not "address in use").
    """
    observability = context.config.plugin_settings(MetricsSettings)
    subscriber = MetricsSubscriber(
        context.instance_id, observability.metrics_sample_rate, (context.server, context.bus)
    )
    exporter = PrometheusExporter(
        subscriber.registry, context.config.http.http_host, observability.prometheus_port
    )
    try:
        exporter.start()
    except PortInUse:
        if "prometheus_port" in observability.model_fields_set:
            raise
        http = context.config.http
        logger.warning(
            "--prometheus-port %d (the default) is in use by another process: Prometheus "
            "metrics are served at http://%s:%d/metrics only; pass --prometheus-port to "
            "open a separate port",
            observability.prometheus_port,
            http.http_host,
            http.http_port,
        )
        return subscriber
    subscriber.exporter = exporter
    return subscriber
