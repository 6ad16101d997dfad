"""Run the server process until SIGINT or SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from lmcache_core.http.app import create_app
from lmcache_core.lifecycle import Component, Lifecycle
from lmcache_core.observability.bus import EventBus
from lmcache_core.observability.subscribers import build_subscribers
from lmcache_core.runtime_plugins.launcher import RuntimePluginLauncher
from lmcache_core.server.context import ServerContext
from lmcache_core.server.http_frontend import HttpFrontend

logger = logging.getLogger("lmcache.server")

SHUTDOWN_BUDGET_SECONDS = 4.0
"""Everything must be stopped within this time after a signal (the promise is 5 s)."""


def build_components(context: ServerContext) -> list[Component]:
    """The components of this build, in start order.

    The data path (L1, engine, request server) starts before the HTTP frontend,
    so ``/healthcheck`` answers only once requests can be served.
    """
    observability = context.config.observability
    context.bus = EventBus(
        observability.event_bus_queue_size, enabled=not observability.disable_observability
    )
    # First to start and last to stop: every other component may publish until it stops.
    components: list[Component] = [context.bus]
    if not context.selection.engine.not_implemented:
        from lmcache_core.server.data_path import build_data_path  # loads torch

        context.data_path = build_data_path(context)
        components.extend(context.data_path.components)
    if context.config.mp.runtime_plugin_locations:
        # After the data path, before HTTP: plugins stop before the data path they may use.
        context.runtime_plugins = RuntimePluginLauncher(context.config)
        components.append(context.runtime_plugins)
    build_subscribers(context, context.bus)
    app = create_app(context)
    components.append(
        HttpFrontend(app, context.config.http.http_host, context.config.http.http_port)
    )
    return components


def serve(context: ServerContext) -> int:
    """Start every component, wait for a stop signal, then stop them in reverse order.

    Returns:
        The process exit code (0 after a signal-initiated shutdown).
    """
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        context.lifecycle = Lifecycle(build_components(context))
        context.lifecycle.start()
        for warning in context.report.warnings:
            logger.warning("%s", warning)
        for pending in context.report.pending:
            logger.warning("%s", pending)
        logger.info("lmcache server %s is up", context.instance_id)
        while not stop.wait(0.5):
            unhealthy = {n: h for n, h in context.lifecycle.health().items() if not h.ok}
            if unhealthy:
                for name, health in unhealthy.items():
                    logger.error("%s failed: %s", name, health.detail)
                context.lifecycle.stop(SHUTDOWN_BUDGET_SECONDS)
                return 1
        context.lifecycle.stop(SHUTDOWN_BUDGET_SECONDS)
        logger.info("lmcache server stopped")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
