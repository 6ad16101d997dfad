"""Registers the observability subscriber ``metrics`` and its ``/metrics`` route.

Only the factories' modules import the Prometheus client and the server's
storage types, and only when the server builds them: ``lmcache plugins list``
loads this module without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmcache_core.plugin import HttpRouterSpec, SubscriberCategory, SubscriberSpec, hookimpl
from lmcache_obs_metrics.settings import MetricsSettings

if TYPE_CHECKING:
    from fastapi import APIRouter

    from lmcache_core.observability.bus import Subscriber
    from lmcache_core.observability.subscribers import SubscriberContext
    from lmcache_core.state import ServerState


def _build_subscriber(context: SubscriberContext) -> Subscriber:
    from lmcache_obs_metrics.subscriber import build_metrics_subscriber

    return build_metrics_subscriber(context)


def _build_router(state: ServerState) -> APIRouter:
    from lmcache_obs_metrics.router import build_router

    return build_router(state)


@hookimpl
def lmcache_register_subscribers() -> list[SubscriberSpec]:
    """Register the observability subscriber ``metrics``.

    Returns:
        Its one spec.
    """
    return [
        SubscriberSpec(
            name="metrics",
            factory=_build_subscriber,
            category=SubscriberCategory.METRICS,
            config_model=MetricsSettings,
            description=(
                "Prometheus metrics of cache events and server state, on /metrics and "
                "--prometheus-port."
            ),
        )
    ]


@hookimpl
def lmcache_register_http_routers() -> list[HttpRouterSpec]:
    """Register ``GET /metrics`` on the HTTP frontend.

    Returns:
        Its one spec (always mounted; it answers 404 while metrics are disabled).
    """
    return [
        HttpRouterSpec(
            name="metrics",
            factory=_build_router,
            description="GET /metrics: the Prometheus exposition of the metrics subscriber.",
        )
    ]
