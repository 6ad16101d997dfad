"""L1 and the engine as server components (started, probed and stopped by the lifecycle)."""

from __future__ import annotations

from lmcache_core.engine import Engine
from lmcache_core.lifecycle import Health
from lmcache_core.storage.l1 import L1Controller, L1Manager


class L1Component:
    """L1 as a server component: its upkeep thread, and its memory at stop."""

    name = "l1"

    def __init__(self, manager: L1Manager) -> None:
        self.manager = manager
        self.controller = L1Controller(manager)

    def start(self) -> None:
        """Start expiry and watermark eviction, and the background pinning (CUDA host)."""
        self.controller.start()
        if self.manager.pinning is not None:
            self.manager.pinning.start()

    def stop(self, timeout: float) -> None:
        """Stop upkeep and pinning, unpin, release the arena (unlinking its shared segment)."""
        self.controller.stop(timeout)
        if self.manager.pinning is not None:
            self.manager.pinning.close(timeout)  # unregister before the memory is unmapped
        self.manager.close()

    def health(self) -> Health:
        """Healthy while upkeep runs; a crash shows its error in ``/healthcheck``."""
        usage = self.manager.usage()
        detail = (
            f"{usage.used_bytes}/{usage.capacity_bytes} bytes in {usage.resident_objects} objects"
        )
        return self.controller.health(detail)  # a crashed controller names its error


class EngineComponent:
    """Closes the engine after the request server has stopped."""

    name = "engine"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def start(self) -> None:
        """Nothing to start: the engine's own components start separately."""

    def stop(self, timeout: float) -> None:
        """Release the engine's registrations and mappings."""
        self.engine.close()

    def health(self) -> Health:
        """Always healthy: the engine has no thread of its own."""
        return Health(True, type(self.engine).__name__)
