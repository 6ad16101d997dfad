"""Every metric the ``metrics`` subscriber exports: name, type, labels, meaning.

One table drives the instruments (:mod:`lmcache_obs_metrics.instruments`), the
scrape-time collector (:mod:`lmcache_obs_metrics.collector`), the metric table
of ``docs/observability.md`` and the dashboard test, so none of them can name a
metric the others do not know.

Names follow upstream LMCache's Prometheus names: the prefix ``lmcache_mp_``, the
unit in the name (``_bytes``, ``_seconds``, ``_gigabytes_per_second``), and
``_total`` after counters (added by the Prometheus client at export).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PREFIX = "lmcache_mp_"
"""Every exported name starts with this, except the blend engine's."""

BLEND_PREFIX = "lmcache_blend_"
"""The blend engine's metrics: upstream's OpenTelemetry names ``lmcache_blend.<name>``,
exported with Prometheus's underscore."""

INSTANCE_LABEL = "instance_id"
"""The label every series carries: ``--instance-id``."""

SCRAPE = "scrape"
"""The ``source`` of metrics read from the server at scrape time, not from events."""

Kind = Literal["counter", "gauge", "histogram"]

DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Seconds: a sub-millisecond lookup to a 10 s transfer."""

THROUGHPUT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
"""GB/s (10^9 bytes per second): a slow remote store to a DMA copy."""

LIFETIME_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 21600.0)
"""Seconds an object stays in L1, from its write to its eviction."""


@dataclass(frozen=True)
class MetricDef:
    """One exported metric.

    Attributes:
        name: Without :data:`PREFIX` and without the counters' ``_total``.
        kind: ``counter``, ``gauge`` or ``histogram``.
        labels: Its labels besides :data:`INSTANCE_LABEL`.
        help: What it measures (the Prometheus HELP text).
        source: The event type that feeds it, or :data:`SCRAPE`.
        buckets: Histogram bucket bounds.
        sampled: Fed only for chunks in the ``--metrics-sample-rate`` sample.
    """

    name: str
    kind: Kind
    labels: tuple[str, ...]
    help: str
    source: str
    buckets: tuple[float, ...] = ()
    sampled: bool = False
    prefix: str = PREFIX

    @property
    def full_name(self) -> str:
        """The metric family's name (``lmcache_mp_<name>``, ``lmcache_blend_<name>``)."""
        return self.prefix + self.name

    @property
    def label_names(self) -> tuple[str, ...]:
        """Every label, :data:`INSTANCE_LABEL` first."""
        return (INSTANCE_LABEL, *self.labels)

    @property
    def series_name(self) -> str:
        """The name a reader looks for: ``_total`` for counters, the family name otherwise."""
        return self.full_name + "_total" if self.kind == "counter" else self.full_name

    def sample_names(self) -> tuple[str, ...]:
        """The series names it exports (what a PromQL query names)."""
        if self.kind == "counter":
            return (self.full_name + "_total",)
        if self.kind == "histogram":
            return tuple(self.full_name + s for s in ("_bucket", "_sum", "_count"))
        return (self.full_name,)


_REQ = ("model_name", "cache_salt")
_L2 = ("l2_name", "adapter_index")
_REQUEST_END = "mp.request.end"
_LOOKUP = "mp.lookup_prefetch.end"
_STORE = "mp.store.end"
_RETRIEVE = "mp.retrieve.end"
_L2_STORE = "l2.store.completed"
_L2_LOAD = "l2.load.completed"


def _transfer(kind: str, source: str, done: str) -> tuple[MetricDef, ...]:
    return (
        MetricDef(f"{kind}s", "counter", _REQ, f"{kind.capitalize()} requests finished.", source),
        MetricDef(
            f"{kind}_chunks", "counter", _REQ, f"Chunks {done} (all KV ranks of a worker).", source
        ),
        MetricDef(f"{kind}_bytes", "counter", _REQ, f"Bytes {done}.", source),
        MetricDef(
            f"{kind}_failures",
            "counter",
            _REQ,
            f"{kind.capitalize()} requests that did not complete.",
            source,
        ),
        MetricDef(
            f"{kind}_duration_seconds",
            "histogram",
            ("model_name",),
            f"Time of a {kind} request, in the server.",
            source,
            DURATION_BUCKETS,
        ),
        MetricDef(
            f"{kind}_throughput_gigabytes_per_second",
            "histogram",
            ("model_name",),
            f"Bytes {done} per second of a {kind} request that moved data, in GB/s.",
            source,
            THROUGHPUT_BUCKETS,
        ),
    )


def _l2_transfer(kind: str, source: str) -> tuple[MetricDef, ...]:
    verb = "stored to" if kind == "store" else "loaded from"
    return (
        MetricDef(f"l2_{kind}_completed", "counter", _L2, f"L2 {kind} batches finished.", source),
        MetricDef(
            f"l2_{kind}_succeeded_objects",
            "counter",
            _L2,
            f"Objects {verb} the adapter.",
            source,
        ),
        MetricDef(
            f"l2_{kind}_failed_objects",
            "counter",
            _L2,
            f"Objects that failed to be {verb} the adapter (errors and timeouts).",
            source,
        ),
        MetricDef(f"l2_{kind}_bytes", "counter", _L2, f"Bytes {verb} the adapter.", source),
        MetricDef(
            f"l2_{kind}_throughput_gigabytes_per_second",
            "histogram",
            _L2,
            f"Bytes {verb} the adapter per second of a batch, submit to completion, in GB/s.",
            source,
            THROUGHPUT_BUCKETS,
        ),
    )


_CB_LOOKUP = "cb.lookup.end"
_CB_RETRIEVE = "cb.retrieve.end"


def _blend(
    name: str, kind: Kind, help_text: str, source: str, buckets: tuple[float, ...] = ()
) -> MetricDef:
    labels: tuple[str, ...] = ("model_name",) if kind == "histogram" else _REQ
    if source == "cb.fingerprints.registered":
        labels = ()  # registration is per store, not per request
    # Short names stay unique across the catalogue ("blend_lookup_hit_tokens" beside the default
    # engine's "lookup_hit_tokens"); the full name is still lmcache_blend_<name>.
    return MetricDef("blend_" + name, kind, labels, help_text, source, buckets, prefix="lmcache_")


_BLEND: tuple[MetricDef, ...] = (
    _blend("lookup_requests", "counter", "cb_unified_lookup results returned.", _CB_LOOKUP),
    _blend(
        "lookup_requested_tokens",
        "counter",
        "Tokens the unified lookups asked for (rounded down to whole chunks).",
        _CB_LOOKUP,
    ),
    _blend(
        "lookup_hit_tokens",
        "counter",
        "Tokens covered by a prefix, non-prefix or segmented-prefix hit.",
        _CB_LOOKUP,
    ),
    _blend("lookup_prefix_hit_tokens", "counter", "Tokens of the exact prefix found.", _CB_LOOKUP),
    _blend(
        "lookup_non_prefix_hit_tokens",
        "counter",
        "Tokens of chunks found by content fingerprint past the prefix.",
        _CB_LOOKUP,
    ),
    _blend(
        "lookup_segmented_prefix_hit_tokens",
        "counter",
        "Tokens of post-gap prefix chunks kept at their own position.",
        _CB_LOOKUP,
    ),
    _blend(
        "lookup_fingerprint_hits",
        "counter",
        "Distinct stored chunks the fingerprint leg proposed past the prefix.",
        _CB_LOOKUP,
    ),
    _blend(
        "lookup_storage_hits",
        "counter",
        "Proposed chunks whose KV was found (L1 or L2) and locked.",
        _CB_LOOKUP,
    ),
    _blend(
        "lookup_stale_chunks",
        "counter",
        "Proposed chunks whose KV exists nowhere (struck in the index).",
        _CB_LOOKUP,
    ),
    _blend(
        "lookup_no_gpu_context_errors",
        "counter",
        "Unified lookups for a model and world size no worker registered.",
        _CB_LOOKUP,
    ),
    _blend(
        "fingerprint_matches",
        "counter",
        "Matches the fingerprint index returned (before the prefix filter).",
        _CB_LOOKUP,
    ),
    _blend(
        "lookup_duration",
        "histogram",
        "Time of a unified lookup, first poll to result, in seconds.",
        _CB_LOOKUP,
        DURATION_BUCKETS,
    ),
    _blend(
        "retrieve_requests",
        "counter",
        "cb_retrieve_pre_computed calls that wrote KV or failed.",
        _CB_RETRIEVE,
    ),
    _blend("retrieve_chunks", "counter", "Chunks written into workers' KV caches.", _CB_RETRIEVE),
    _blend(
        "retrieve_failures",
        "counter",
        "cb_retrieve_pre_computed calls that failed (nothing written).",
        _CB_RETRIEVE,
    ),
    _blend(
        "retrieve_duration",
        "histogram",
        "Time of a cb_retrieve_pre_computed that wrote KV or failed, in seconds.",
        _CB_RETRIEVE,
        DURATION_BUCKETS,
    ),
    _blend(
        "fingerprints_registered",
        "counter",
        "Chunks newly indexed by content fingerprint.",
        "cb.fingerprints.registered",
    ),
    _blend(
        "chunks_evicted",
        "counter",
        "Stale fingerprints struck by lookups (removed at the second consecutive strike).",
        "cb.chunks.evicted",
    ),
)


METRICS: tuple[MetricDef, ...] = (
    # -- requests and lookups -----------------------------------------------------------------
    MetricDef("requests", "counter", _REQ, "Requests ended (end_session).", _REQUEST_END),
    MetricDef(
        "request_duration_seconds",
        "histogram",
        ("model_name",),
        "Time from a request's first lookup to its end_session.",
        _REQUEST_END,
        (*DURATION_BUCKETS, 30.0, 60.0, 300.0),
    ),
    MetricDef("lookups", "counter", _REQ, "Lookups answered (with their L2 prefetch).", _LOOKUP),
    MetricDef("lookup_requested_tokens", "counter", _REQ, "Tokens the lookups asked for.", _LOOKUP),
    MetricDef(
        "lookup_hit_tokens",
        "counter",
        (*_REQ, "tier"),
        "Prefix tokens found, by the tier that held them (tier: l1, l2); their sum over "
        "tiers is the lookup's hit.",
        _LOOKUP,
    ),
    MetricDef(
        "lookup_hit_keys",
        "counter",
        (*_REQ, "tier"),
        "Objects (chunk x KV rank) found, by tier (l1, l2).",
        _LOOKUP,
    ),
    MetricDef(
        "lookup_l2_hit_tokens",
        "counter",
        (*_REQ, *_L2),
        "The L2 part of lookup hits, by the adapter that supplied it (a chunk whose KV ranks "
        "came from several adapters is shared among them); the sum over adapters is the "
        "tier='l2' hit.",
        _LOOKUP,
    ),
    MetricDef(
        "lookup_l2_hit_keys",
        "counter",
        (*_REQ, *_L2),
        "Objects (chunk x KV rank) a lookup's prefetch loaded, by the adapter that supplied them.",
        _LOOKUP,
    ),
    MetricDef(
        "lookup_miss_chunks",
        "counter",
        (*_REQ, "cause"),
        "Chunks of lookups that were not hits, by cause (never_stored, evicted, "
        "other_cache_salt, other_model, other_world_size, l2_timeout, l2_load_failed, "
        "l2_corrupt, prefetch_limit, being_written, prefix_gap, partial_chunk, ...; "
        "docs/observability.md lists them all).",
        _LOOKUP,
    ),
    MetricDef(
        "lookup_duration_seconds",
        "histogram",
        ("model_name",),
        "Time of a lookup, with its L2 prefetch.",
        _LOOKUP,
        DURATION_BUCKETS,
    ),
    # -- store and retrieve -------------------------------------------------------------------
    *_transfer("store", _STORE, "written to L1"),
    *_transfer("retrieve", _RETRIEVE, "copied from L1 to the worker"),
    # -- L1 -----------------------------------------------------------------------------------
    MetricDef(
        "l1_write_keys", "counter", ("cache_salt",), "Objects written to L1.", "l1.write.finished"
    ),
    MetricDef("l1_write_bytes", "counter", (), "Bytes written to L1.", "l1.write.finished"),
    MetricDef(
        "l1_evicted_keys", "counter", ("cache_salt",), "Objects evicted from L1.", "l1.keys.evicted"
    ),
    MetricDef(
        "l1_evicted_bytes",
        "counter",
        ("reason",),
        "Bytes freed by L1 evictions.",
        "l1.keys.evicted",
    ),
    MetricDef(
        "l1_allocation_failures",
        "counter",
        ("during",),
        "L1 reservations refused for lack of memory (during: l1_store, l2_prefetch).",
        "l1.allocation.failed",
    ),
    MetricDef(
        "l1_eviction_loop_ticks",
        "counter",
        (),
        "Checks of the L1 eviction watermark.",
        "l1.eviction.loop_tick",
    ),
    MetricDef(
        "l1_eviction_loop_triggered",
        "counter",
        (),
        "Watermark checks that found L1 above the watermark and evicted.",
        "l1.eviction.loop_tick",
    ),
    MetricDef(
        "l1_chunk_lifetime_seconds",
        "histogram",
        (),
        "Time from an object's write to its eviction; sampled (--metrics-sample-rate).",
        "l1.keys.evicted",
        LIFETIME_BUCKETS,
        sampled=True,
    ),
    # -- L2 -----------------------------------------------------------------------------------
    *_l2_transfer("store", _L2_STORE),
    *_l2_transfer("load", _L2_LOAD),
    MetricDef(
        "l2_prefetch_failures",
        "counter",
        ("reason",),
        "L2 prefetches abandoned (reason: l1_oom, ...).",
        "l2.prefetch.failed",
    ),
    MetricDef(
        "l2_prefetch_failed_keys",
        "counter",
        ("reason",),
        "Objects of the abandoned L2 prefetches.",
        "l2.prefetch.failed",
    ),
    MetricDef(
        "l2_evicted_keys", "counter", _L2, "Objects evicted from the adapter.", "l2.keys.evicted"
    ),
    # -- the blend engine ----------------------------------------------------------------------
    *_BLEND,
    # -- read at scrape time ------------------------------------------------------------------
    MetricDef("l1_memory_usage_bytes", "gauge", (), "L1 bytes allocated (aligned).", SCRAPE),
    MetricDef("l1_capacity_bytes", "gauge", (), "L1 capacity (--l1-size-gb).", SCRAPE),
    MetricDef("l1_usage_ratio", "gauge", (), "L1 used bytes / capacity.", SCRAPE),
    MetricDef("l1_resident_objects", "gauge", (), "Objects committed to L1.", SCRAPE),
    MetricDef("l1_staged_objects", "gauge", (), "L1 reservations not committed yet.", SCRAPE),
    MetricDef("l1_locked_objects", "gauge", (), "L1 objects with a live read lock.", SCRAPE),
    MetricDef("l2_usage_bytes", "gauge", _L2, "Bytes the adapter holds.", SCRAPE),
    MetricDef("l2_capacity_bytes", "gauge", _L2, "The adapter's capacity (0: unlimited).", SCRAPE),
    MetricDef(
        "l2_store_queue_depth",
        "gauge",
        (),
        "Store batches waiting for the L2 store controller.",
        SCRAPE,
    ),
    MetricDef(
        "l2_prefetches_in_flight",
        "gauge",
        (),
        "Lookups asking or loading from the L2 adapters now (at most --l2-prefetch-max-in-flight).",
        SCRAPE,
    ),
    MetricDef("active_sessions", "gauge", (), "Requests with a live session.", SCRAPE),
    MetricDef("event_bus_queue_depth", "gauge", (), "Events waiting for delivery.", SCRAPE),
    MetricDef(
        "event_bus_drain_lag_seconds",
        "gauge",
        (),
        "Age of the oldest undelivered event.",
        SCRAPE,
    ),
    MetricDef(
        "event_bus_dropped_events",
        "counter",
        (),
        "Events dropped because the bus queue was full (tail drop).",
        SCRAPE,
    ),
    MetricDef(
        "event_bus_subscriber_exceptions",
        "counter",
        ("subscriber_name",),
        "Exceptions raised by a subscriber while handling events.",
        SCRAPE,
    ),
    MetricDef(
        "metrics_folded_label_values",
        "counter",
        ("label",),
        "Label values reported as _other because the label reached its cap.",
        SCRAPE,
    ),
    MetricDef(
        "auth_rejected_requests",
        "counter",
        ("transport",),
        "Requests refused for a missing or invalid API key or admin token, by transport "
        "(zmq, http).",
        SCRAPE,
    ),
)
"""Every metric, in the order of the documentation."""

BY_NAME: dict[str, MetricDef] = {m.name: m for m in METRICS}
"""The catalogue by short name."""


def exported_sample_names() -> frozenset[str]:
    """Every series name the subscriber exports (counters with ``_total``)."""
    return frozenset(name for m in METRICS for name in m.sample_names())
