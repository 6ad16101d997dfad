"""What a running server exposes once it is assembled.

Two views, both built after every part exists and never changed afterwards:

* :class:`ServerContext`: the whole assembled server, frozen. The core's own HTTP
  routes read it (``request.app.state.context``); nothing else should need it.
* :class:`ServerState`: the narrow, read-only view that plugins get (subscriber
  factories through :class:`~lmcache_core.observability.subscribers.SubscriberContext`,
  HTTP router factories directly): usage snapshots and queue depths, no handle
  that could change server state.

This module sits below ``server`` and ``http`` in the import graph (it imports
their types for checking only), so the HTTP face and the server assembly depend
on it and not on each other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lmcache_core.security.keyring import ApiKeyRing

if TYPE_CHECKING:
    from lmcache_core.config.resolution import Selection
    from lmcache_core.config.server import ServerConfig
    from lmcache_core.lifecycle import Lifecycle
    from lmcache_core.observability.bus import EventBus, Subscriber
    from lmcache_core.plugin.registry import PluginRegistry
    from lmcache_core.runtime_plugins.launcher import RuntimePluginLauncher
    from lmcache_core.server.data_path import DataPath
    from lmcache_core.server.startup import StartupReport
    from lmcache_core.storage.l1 import L1Usage


@dataclass(frozen=True, slots=True)
class L2AdapterState:
    """One L2 adapter's occupancy, as plugins see it.

    Attributes:
        index: Its 1-based ``--l2-adapter`` number (cascade order).
        name: Its adapter type (``fs``, ``resp``, ...).
        used_bytes: Bytes it holds.
        capacity_bytes: Its ``max_capacity_gb`` in bytes (0: unbounded).
    """

    index: int
    name: str
    used_bytes: int
    capacity_bytes: int


class ServerState:
    """Read-only facts about the running server, for plugins.

    Every method answers from the live objects at call time (a scrape sees current
    values) and never blocks on the data path for long: each reads one snapshot
    that its tier takes under its own lock.

    Args:
        config: The validated configuration.
        bus: The event bus (only its subscribers are looked up here).
        data_path: The built data path, or ``None`` in a build without one.
        api_keys: The server's API keys (their refusal counts are read here).
    """

    def __init__(
        self,
        config: ServerConfig,
        bus: EventBus,
        data_path: DataPath | None,
        api_keys: ApiKeyRing | None = None,
    ) -> None:
        self._config = config
        self._bus = bus
        self._data_path = data_path
        self._api_keys = api_keys if api_keys is not None else ApiKeyRing.disabled()

    def auth_rejections(self) -> dict[str, int]:
        """Requests refused for a missing or invalid API key or token, by transport."""
        return self._api_keys.rejections()

    @property
    def config(self) -> ServerConfig:
        """The validated configuration (pydantic models; do not mutate)."""
        return self._config

    @property
    def instance_id(self) -> str:
        """This server's ``--instance-id``."""
        return self._config.mp.instance_id

    @property
    def has_data_path(self) -> bool:
        """Whether this build serves the data path (L1 and an engine)."""
        return self._data_path is not None

    def l1_usage(self) -> L1Usage | None:
        """L1's occupancy now, or ``None`` without a data path or once L1 is closed."""
        if self._data_path is None or self._data_path.l1.closed:
            return None
        return self._data_path.l1.usage()

    def l2_adapters(self) -> tuple[L2AdapterState, ...]:
        """Every L2 adapter in cascade order (empty without L2)."""
        l2 = self._data_path.l2 if self._data_path is not None else None
        if l2 is None:
            return ()
        return tuple(
            L2AdapterState(index, adapter.name, adapter.used_bytes, adapter.capacity_bytes)
            for index, adapter in enumerate(l2.adapters, start=1)
        )

    def l2_store_queue_depth(self) -> int | None:
        """Batches waiting for the L2 store thread, or ``None`` without L2."""
        l2 = self._data_path.l2 if self._data_path is not None else None
        return l2.store_queue_depth() if l2 is not None else None

    def l2_prefetches_in_flight(self) -> int | None:
        """L2 prefetches under way, or ``None`` without L2."""
        l2 = self._data_path.l2 if self._data_path is not None else None
        return l2.prefetches_in_flight() if l2 is not None else None

    def active_sessions(self) -> int | None:
        """Requests with a live session, or ``None`` when the engine keeps no sessions."""
        sessions = self._data_path.sessions if self._data_path is not None else None
        return len(sessions) if sessions is not None else None

    def subscriber(self, name: str) -> Subscriber | None:
        """The bus subscriber called ``name``, if one is attached."""
        for subscriber in self._bus.subscribers:
            if subscriber.name == name:
                return subscriber
        return None


@dataclass(frozen=True)
class ServerContext:
    """The assembled server, for the core's HTTP routes.

    Built once every component exists, so nothing in it is a placeholder.

    Attributes:
        config: The validated configuration.
        registry: The plugin registry of this process.
        selection: The plugins the configuration selected.
        report: What start-up found missing or questionable.
        bus: The event bus.
        lifecycle: Every component in start order (the HTTP frontend last).
        state: The read-only view plugins get.
        data_path: L1, L2, sessions, engine and request server, or ``None`` in a
            build without an engine.
        runtime_plugins: The runtime plugin launcher, when plugins are configured.
        api_keys: The API keys requests must carry (disabled: none configured).
        started_at: Wall-clock start time (seconds since the epoch).
    """

    config: ServerConfig
    registry: PluginRegistry
    selection: Selection
    report: StartupReport
    bus: EventBus
    lifecycle: Lifecycle
    state: ServerState
    data_path: DataPath | None = None
    runtime_plugins: RuntimePluginLauncher | None = None
    api_keys: ApiKeyRing = field(default_factory=ApiKeyRing.disabled)
    started_at: float = field(default_factory=time.time)

    @property
    def instance_id(self) -> str:
        """This server's ``--instance-id``."""
        return self.config.mp.instance_id
