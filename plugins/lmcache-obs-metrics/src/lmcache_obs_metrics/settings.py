"""The metrics subscriber's own flags (in the Observability panel).

Only this module is imported to compose the server's flags; the Prometheus
client loads when the subscriber is built.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from lmcache_core.config.plugin_settings import PluginSettings


class MetricsSettings(PluginSettings):
    """The Prometheus endpoint and the per-chunk sampling rate."""

    group: ClassVar[str] = "observability"
    # After the tracing plugin's --otlp-endpoint, as in the reference; last without it.
    after: ClassVar[str] = "otlp_endpoint"

    prometheus_port: int = Field(
        default=9090, ge=1, le=65535, description="Port for the Prometheus /metrics endpoint."
    )
    metrics_sample_rate: float = Field(
        default=0.01,
        gt=0.0,
        le=1.0,
        description="Fraction of chunks whose lifecycle is recorded in the per-chunk histograms.",
    )
