"""Registers the observability subscriber ``tracing`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import SubscriberCategory, SubscriberSpec, hookimpl, pending_factory

REASON = "lands with the observability issue (#5)"
"""Why it cannot be built yet."""


@hookimpl
def lmcache_register_subscribers() -> list[SubscriberSpec]:
    """Register the observability subscriber ``tracing``.

    Returns:
        Its one spec; building it raises until its behaviour lands.
    """
    return [
        SubscriberSpec(
            name="tracing",
            factory=pending_factory("observability subscriber 'tracing'", REASON),
            category=SubscriberCategory.TRACING,
            description="OpenTelemetry spans per request, exported over OTLP.",
            not_implemented=REASON,
        )
    ]
