"""Registers the observability subscriber ``logging`` with the LMCache server."""

from __future__ import annotations

from lmcache_core.observability.subscribers import SubscriberContext
from lmcache_core.plugin import SubscriberCategory, SubscriberSpec, hookimpl
from lmcache_obs_logging.subscriber import EventLogSubscriber


def build_logging_subscriber(_context: SubscriberContext) -> EventLogSubscriber:
    """The factory: a subscriber logging to ``lmcache.events`` at the level in force.

    Args:
        _context: The subscriber context (unused: the level comes from
            ``LMCACHE_LOG_LEVEL``, applied before subscribers are built).

    Returns:
        The subscriber.
    """
    return EventLogSubscriber()


@hookimpl
def lmcache_register_subscribers() -> list[SubscriberSpec]:
    """Register the observability subscriber ``logging``.

    Returns:
        Its one spec.
    """
    return [
        SubscriberSpec(
            name="logging",
            factory=build_logging_subscriber,
            category=SubscriberCategory.LOGGING,
            description=(
                "One-line logs of cache events on the lmcache.events logger: DEBUG per request, "
                "INFO for failures and eviction summaries; rate limited."
            ),
        )
    ]
