"""Registers the observability subscriber ``tracing`` with the LMCache server."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmcache_core.errors import StartupError
from lmcache_core.observability.subscribers import SubscriberContext
from lmcache_core.plugin import SubscriberCategory, SubscriberSpec, hookimpl
from lmcache_obs_tracing.settings import TracingSettings

if TYPE_CHECKING:
    from lmcache_obs_tracing.subscriber import TracingSubscriber


def build_tracing_subscriber(context: SubscriberContext) -> TracingSubscriber:
    """The factory: spans exported to ``--otlp-endpoint``.

    Args:
        context: The subscriber context (endpoint, instance id, session TTL).

    Returns:
        The subscriber with its own tracer provider.

    Raises:
        StartupError: No ``--otlp-endpoint`` (the configuration already refuses
            ``--enable-tracing`` without one; this guards other callers).
    """
    endpoint = context.config.plugin_settings(TracingSettings).otlp_endpoint
    if not endpoint:
        raise StartupError("--enable-tracing requires --otlp-endpoint")
    # Imported on use: composing the server's flags (``--help``) must not load the
    # OpenTelemetry SDK and gRPC.
    from lmcache_obs_tracing.provider import otlp_exporter, tracer_provider
    from lmcache_obs_tracing.subscriber import TracingSubscriber

    provider = tracer_provider(otlp_exporter(endpoint), context.instance_id)
    return TracingSubscriber(provider, context.config.mp.session_ttl_seconds)


@hookimpl
def lmcache_register_subscribers() -> list[SubscriberSpec]:
    """Register the observability subscriber ``tracing``.

    Returns:
        Its one spec; it runs with ``--enable-tracing``.
    """
    return [
        SubscriberSpec(
            name="tracing",
            factory=build_tracing_subscriber,
            category=SubscriberCategory.TRACING,
            config_model=TracingSettings,
            description=(
                "OpenTelemetry spans per request (request, mp.lookup_prefetch, mp.store, "
                "mp.retrieve), exported over OTLP gRPC."
            ),
        )
    ]
