"""The Observability flag group and its Lookup Hash Logging part."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from lmcache_core.config.base import CliMeta, GroupSettings


class LookupHashLogConfig(GroupSettings):
    """Rotating JSONL files of the chunk hashes computed by lookups."""

    panel: ClassVar[str] = "Lookup Hash Logging"
    source: ClassVar[str] = "lmcache/v1/mp_observability/subscribers/logging/lookup_hash.py"
    summary: ClassVar[str] = (
        "When enabled, chunk hashes computed during lookup() are published as MP_LOOKUP events "
        "and written to rotating JSONL files. Disabled by default. Part of the Observability "
        "group."
    )

    lookup_hash_log_dir: Annotated[str, CliMeta(metavar="DIR", default_text='"" (disabled)')] = (
        Field(
            default="",
            description="Directory to write lookup hash JSONL files. An empty string disables it.",
        )
    )
    lookup_hash_log_rotation_interval: float = Field(
        default=21600.0, gt=0, description="Seconds before rotating to a new log file (6 h)."
    )
    lookup_hash_log_rotation_max_size: int = Field(
        default=104857600,
        ge=1,
        description="Maximum file size in bytes before rotating early (100 MB).",
    )
    lookup_hash_log_max_files: int = Field(
        default=100, ge=1, description="Maximum number of log files kept; the oldest are deleted."
    )


class ObservabilityConfig(GroupSettings):
    """Event bus, metrics, logging and tracing switches."""

    panel: ClassVar[str] = "Observability"
    source: ClassVar[str] = "lmcache/v1/mp_observability/config.py"
    summary: ClassVar[str] = "Metrics, logging and tracing subscribers of the event bus."

    disable_observability: bool = Field(
        default=False, description="Master switch: disable the event bus entirely."
    )
    disable_metrics: bool = Field(
        default=False, description="Skip metrics subscribers (no Prometheus endpoint)."
    )
    disable_logging: bool = Field(default=False, description="Skip logging subscribers.")
    enable_tracing: bool = Field(
        default=False, description="Register tracing subscribers. Requires --otlp-endpoint."
    )
    event_bus_queue_size: int = Field(
        default=10000, ge=1, description="Max events in the event-bus queue before tail-drop."
    )
    otlp_endpoint: Annotated[str | None, CliMeta(metavar="URL", default_text="none")] = Field(
        default=None,
        min_length=1,
        description="OTLP gRPC endpoint for exporting metrics and traces.",
    )
    prometheus_port: int = Field(
        default=9090, ge=1, le=65535, description="Port for the Prometheus /metrics endpoint."
    )
    metrics_sample_rate: float = Field(
        default=0.01,
        gt=0.0,
        le=1.0,
        description="Fraction of chunks whose lifecycle is recorded in the per-chunk histograms.",
    )
