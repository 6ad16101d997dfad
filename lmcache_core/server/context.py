"""State shared by the HTTP frontend and the server's components."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lmcache_core.config.resolution import Selection
from lmcache_core.config.server import ServerConfig
from lmcache_core.lifecycle import Lifecycle
from lmcache_core.observability.bus import EventBus
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.server.startup import StartupReport

if TYPE_CHECKING:
    from lmcache_core.runtime_plugins.launcher import RuntimePluginLauncher
    from lmcache_core.server.data_path import DataPath


@dataclass
class ServerContext:
    """Everything a route or component may need to know about the running server.

    Attributes:
        config: The validated configuration.
        registry: The plugin registry of this process.
        selection: The plugins the configuration selected.
        report: What start-up found missing or questionable.
        lifecycle: The components, once the server builds them.
        started_at: Wall-clock start time (seconds since the epoch).
        data_path: L1, engine and request server, once built.
        runtime_plugins: The runtime plugin launcher, when plugins are configured.
        bus: The event bus (disabled until the server builds its components).
    """

    config: ServerConfig
    registry: PluginRegistry
    selection: Selection
    report: StartupReport
    lifecycle: Lifecycle = field(default_factory=lambda: Lifecycle([]))
    started_at: float = field(default_factory=time.time)
    data_path: DataPath | None = None
    runtime_plugins: RuntimePluginLauncher | None = None
    bus: EventBus = field(default_factory=lambda: EventBus(enabled=False))

    @property
    def instance_id(self) -> str:
        """This server's ``--instance-id``."""
        return self.config.mp.instance_id
