"""Registers the observability subscriber ``logging`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.plugin import SubscriberCategory, SubscriberSpec, hookimpl, pending_factory

REASON = "lands with the observability issue (#5)"
"""Why it cannot be built yet."""


@hookimpl
def lmcache_register_subscribers() -> list[SubscriberSpec]:
    """Register the observability subscriber ``logging``.

    Returns:
        Its one spec; building it raises until its behaviour lands.
    """
    return [
        SubscriberSpec(
            name="logging",
            factory=pending_factory("observability subscriber 'logging'", REASON),
            category=SubscriberCategory.LOGGING,
            description="DEBUG one-line logs of cache events.",
            not_implemented=REASON,
        )
    ]
