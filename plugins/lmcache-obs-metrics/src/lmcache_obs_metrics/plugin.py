"""Registers the observability subscriber ``metrics`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import SubscriberCategory, SubscriberSpec, hookimpl, pending_factory

REASON = "lands with the observability issue (#5)"
"""Why it cannot be built yet."""


@hookimpl
def lmcache_register_subscribers() -> list[SubscriberSpec]:
    """Register the observability subscriber ``metrics``.

    Returns:
        Its one spec; building it raises until its behaviour lands.
    """
    return [
        SubscriberSpec(
            name="metrics",
            factory=pending_factory("observability subscriber 'metrics'", REASON),
            category=SubscriberCategory.METRICS,
            description="OpenTelemetry metrics of cache events, for Prometheus or OTLP.",
            not_implemented=REASON,
        )
    ]
