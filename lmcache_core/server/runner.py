"""Assemble the server from its parts, then run it until SIGINT or SIGTERM."""

from __future__ import annotations

import gc
import logging
import signal
import threading
from contextlib import ExitStack
from types import FrameType

from lmcache_core.config.resolution import Selection
from lmcache_core.config.server import ServerConfig
from lmcache_core.errors import StartupError
from lmcache_core.http.app import create_app
from lmcache_core.lifecycle import Component, Lifecycle
from lmcache_core.observability.bus import EventBus
from lmcache_core.observability.subscribers import build_subscribers
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.runtime_plugins.launcher import RuntimePluginLauncher
from lmcache_core.security.key_sources import KeySourceError, KeySources
from lmcache_core.security.keyring import ApiKeyRing
from lmcache_core.server.http_frontend import HttpFrontend
from lmcache_core.server.startup import StartupReport
from lmcache_core.state import ServerContext, ServerState

logger = logging.getLogger("lmcache.server")

SHUTDOWN_BUDGET_SECONDS = 4.0
"""Everything must be stopped within this time after a signal (the promise is 5 s)."""


def build_api_keys(config: ServerConfig) -> ApiKeyRing:
    """The keys of ``--api-key-file`` and the environment, loaded once at start-up.

    Raises:
        StartupError: A configured key file cannot be used.
    """
    try:
        ring = ApiKeyRing(KeySources.gather(config.mp.api_key_file))
    except KeySourceError as exc:
        raise StartupError(f"--api-key-file: {exc}") from None
    if ring.enabled:
        logger.info("API keys required on ZeroMQ and HTTP: %d key(s)", ring.key_count)
    return ring


def assemble(
    config: ServerConfig, registry: PluginRegistry, selection: Selection, report: StartupReport
) -> ServerContext:
    """Build every part of the server, in dependency order, into a frozen context.

    Order: the bus (everything publishes on it), the data path (L1, L2, engine,
    request server), the runtime plugin launcher, the subscribers (which read the
    data path through :class:`ServerState`), the HTTP app. Start order is the same,
    so ``/healthcheck`` answers only once requests can be served.

    Raises:
        StartupError: A part cannot be built; nothing built so far stays open.
    """
    observability = config.observability
    bus = EventBus(
        observability.event_bus_queue_size, enabled=not observability.disable_observability
    )
    api_keys = build_api_keys(config)
    with ExitStack() as cleanup:
        data_path = None
        if not selection.engine.not_implemented:
            from lmcache_core.server.data_path import build_data_path  # loads torch

            data_path = build_data_path(config, registry, selection, bus, cleanup, api_keys)
        # First to start and last to stop: every other component may publish until it stops.
        components: list[Component] = [bus, *(data_path.components if data_path else ())]
        runtime_plugins = None
        if config.mp.runtime_plugin_locations:
            # After the data path, before HTTP: plugins stop before the data path they use.
            runtime_plugins = RuntimePluginLauncher(config)
            components.append(runtime_plugins)
        state = ServerState(config, bus, data_path, api_keys)
        build_subscribers(config, registry, selection, state, bus)
        frontend = HttpFrontend(config.http.http_host, config.http.http_port)
        context = ServerContext(
            config=config,
            registry=registry,
            selection=selection,
            report=report,
            bus=bus,
            lifecycle=Lifecycle([*components, frontend]),
            state=state,
            data_path=data_path,
            runtime_plugins=runtime_plugins,
            api_keys=api_keys,
        )
        frontend.mount(create_app(context))
        # Assembled: from here on the lifecycle owns every resource and releases it at stop.
        cleanup.pop_all()
    return context


GC_GEN0_THRESHOLD = 50_000
"""Allocations between young collections (CPython's default is 700)."""


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the request path.

    Profiled under the trace replay with 8 clients (docs/benchmarks.md, "Trace
    replay"), a fifth of the GIL-holding time went to collections triggered by
    the per-chunk records a store allocates: every full collection walked the
    whole start-up heap (torch, the plugins, FastAPI). Freezing what start-up
    built moves it out of every later collection, and a larger young generation
    makes the collections rarer; the data path creates few reference cycles, so
    garbage does not pile up.
    """
    gc.freeze()
    _gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def serve(
    config: ServerConfig, registry: PluginRegistry, selection: Selection, report: StartupReport
) -> int:
    """Assemble and start every component, wait for a stop signal, then stop them.

    Returns:
        The process exit code (0 after a signal-initiated shutdown).
    """
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        context = assemble(config, registry, selection, report)
        lifecycle = context.lifecycle
        lifecycle.start()
        tune_gc()
        for warning in report.warnings:
            logger.warning("%s", warning)
        for pending in report.pending:
            logger.warning("%s", pending)
        logger.info("lmcache server %s is up", context.instance_id)
        while not stop.wait(0.5):
            unhealthy = {n: h for n, h in lifecycle.health().items() if not h.ok}
            if unhealthy:
                for name, health in unhealthy.items():
                    logger.error("%s failed: %s", name, health.detail)
                lifecycle.stop(SHUTDOWN_BUDGET_SECONDS)
                return 1
        lifecycle.stop(SHUTDOWN_BUDGET_SECONDS)
        logger.info("lmcache server stopped")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
