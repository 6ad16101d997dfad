"""``GET /metrics`` on the HTTP frontend.

The route finds the running ``metrics`` subscriber on the event bus by name
(``ServerState.subscriber``) when it is called, so it serves exactly what the
``--prometheus-port`` endpoint serves. With ``--disable-metrics`` or
``--disable-observability`` there is no such subscriber, and the route answers
404 with the reason, rather than an empty page that would look like a server
with nothing to report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from lmcache_obs_metrics.subscriber import NAME, MetricsSubscriber

if TYPE_CHECKING:
    from lmcache_core.state import ServerState


def find_metrics_subscriber(state: ServerState) -> MetricsSubscriber | None:
    """The bus's subscriber named ``metrics``, if one is attached."""
    subscriber = state.subscriber(NAME)
    return subscriber if isinstance(subscriber, MetricsSubscriber) else None


def _why_disabled(state: ServerState) -> str:
    observability = state.config.observability
    if observability.disable_observability:
        return "metrics are disabled (--disable-observability)"
    if observability.disable_metrics:
        return "metrics are disabled (--disable-metrics)"
    return "the metrics subscriber is not running"


def build_router(state: ServerState) -> APIRouter:
    """The factory of the ``metrics`` HTTP router spec."""
    router = APIRouter(tags=["observability"])

    @router.get(
        "/metrics",
        response_class=Response,
        summary="Prometheus metrics",
        responses={404: {"description": "Metrics are disabled."}},
    )
    def metrics() -> Response:
        """The Prometheus text exposition of this server's metrics."""
        subscriber = find_metrics_subscriber(state)
        if subscriber is None:
            return JSONResponse({"detail": _why_disabled(state)}, status_code=404)
        return Response(subscriber.exposition(), media_type=CONTENT_TYPE_LATEST)

    return router
