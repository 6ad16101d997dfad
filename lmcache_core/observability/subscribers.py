"""How subscriber plugins are built, and a small base class for writing one.

A subscriber spec's factory receives a :class:`SubscriberContext`:
``spec.factory(context)``. The context gives read access to the configuration,
the bus (for its own statistics) and the running server's read-only
:class:`~lmcache_core.state.ServerState` (for gauges such as L1 usage).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lmcache_core.errors import StartupError
from lmcache_core.observability.bus import EventBus
from lmcache_core.observability.events import Event

if TYPE_CHECKING:
    from lmcache_core.config.resolution import Selection
    from lmcache_core.config.server import ServerConfig
    from lmcache_core.plugin.registry import PluginRegistry
    from lmcache_core.state import ServerState

logger = logging.getLogger("lmcache.observability")


@dataclass(frozen=True)
class SubscriberContext:
    """What a subscriber factory receives.

    Attributes:
        config: The validated server configuration.
        instance_id: ``--instance-id`` (every metric series and span carries it).
        bus: The event bus the subscriber is attached to.
        server: The running server's read-only state (L1 and L2 usage, queue
            depths, sessions), answered live at each call.
    """

    config: ServerConfig
    instance_id: str
    bus: EventBus
    server: ServerState


class BaseSubscriber:
    """Dispatches events to ``on_<type with dots as underscores>`` methods.

    Subclasses set :attr:`name` and define handlers such as
    ``on_l1_keys_evicted(self, event)``; :attr:`event_types` defaults to the types
    that have a handler, so the bus skips the rest.
    """

    name: str = "subscriber"
    event_types: frozenset[str] | None = None

    def __init__(self) -> None:
        self._handlers: dict[str, Any] = {}
        for attribute in dir(type(self)):
            if attribute.startswith("on_") and attribute not in ("on_event",):
                self._handlers[attribute[3:]] = getattr(self, attribute)
        if self.event_types is None:
            self.event_types = self._declared_types()

    def _declared_types(self) -> frozenset[str] | None:
        from lmcache_core.observability.events import EventType

        declared = {t.value for t in EventType if _handler_name(t.value) in self._handlers}
        return frozenset(declared)

    def on_event(self, event: Event) -> None:
        """Call the handler of ``event.type``, if any."""
        handler = self._handlers.get(_handler_name(event.type))
        if handler is not None:
            handler(event)

    def close(self) -> None:
        """Nothing to release by default."""


def _handler_name(event_type: str) -> str:
    return event_type.replace(".", "_")


def build_subscribers(
    config: ServerConfig,
    registry: PluginRegistry,
    selection: Selection,
    server: ServerState,
    bus: EventBus,
) -> list[Any]:
    """Build and attach every subscriber the configuration selected.

    Nothing is built when the bus is disabled (``--disable-observability``).

    Raises:
        StartupError: A selected subscriber failed to build.
    """
    if not bus.enabled:
        return []
    context = SubscriberContext(config, server.instance_id, bus, server)
    built = []
    for spec in selection.subscribers:
        if spec.not_implemented:
            continue  # start-up already reported it (startup.py decides whether that is fatal)
        try:
            subscriber = registry.builder.subscriber(spec, context)
        except StartupError:
            raise
        except Exception as exc:
            raise StartupError(f"observability subscriber {spec.name!r}: {exc}") from exc
        bus.subscribe(subscriber)
        built.append(subscriber)
        logger.info("observability subscriber %s attached", spec.name)
    return built
