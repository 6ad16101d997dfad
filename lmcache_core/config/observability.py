"""The Observability flag group: the event bus and the subscriber switches.

The subscribers' own flags (the OTLP endpoint, the Prometheus port, the metrics
sample rate, the lookup-hash log) are declared by their plugins and join this
group's panel (or a panel of their own) when those plugins are installed.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from lmcache_core.config.base import GroupSettings


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
