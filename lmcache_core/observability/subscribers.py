"""How subscriber plugins are built, and a small base class for writing one.

A subscriber spec's factory receives a :class:`SubscriberContext`:
``spec.factory(context)``. The context gives read access to the configuration,
the bus (for its own statistics) and the running server's read-only
:class:`~lmcache_core.state.ServerState` (for gauges such as L1 usage).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lmcache_core.errors import StartupError
from lmcache_core.observability.bus import EventBus
from lmcache_core.observability.events import EVENT_RECORDS, Event

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
    """Dispatches each event record to the ``on_<type with dots as underscores>`` method.

    Subclasses set :attr:`name` and define handlers taking the record class of
    their type, such as ``on_l1_keys_evicted(self, event: L1KeysEvicted)``;
    :attr:`event_types` defaults to the types that have a handler, so the bus
    skips the rest. Handlers are resolved once, per type, when the subscriber is
    built; delivery is one dictionary lookup on ``event.type``.
    """

    name: str = "subscriber"
    event_types: frozenset[str] | None = None

    def __init__(self) -> None:
        self._by_name: dict[str, Callable[[Any], None]] = {}
        for attribute in dir(type(self)):
            if attribute.startswith("on_") and attribute != "on_event":
                self._by_name[attribute[3:]] = getattr(self, attribute)
        self._by_type: dict[str, Callable[[Any], None]] = {
            event_type.value: self._by_name[_handler_name(event_type.value)]
            for event_type in EVENT_RECORDS
            if _handler_name(event_type.value) in self._by_name
        }
        if self.event_types is None:
            self.event_types = frozenset(self._by_type)

    def on_event(self, event: Event) -> None:
        """Call the handler of ``event.type`` (a plugin's own type: by its name), if any."""
        handler = self._by_type.get(event.type)
        if handler is None:
            handler = self._by_name.get(_handler_name(event.type))
            if handler is None:
                return
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
