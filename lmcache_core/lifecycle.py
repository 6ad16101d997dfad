"""Ordered start and reverse-ordered, time-bounded stop of server components.

The request server, the HTTP frontend, the runtime plugin launcher and the
controllers are all components: each starts after the ones it needs and stops
before them. A component that fails to start stops everything started before it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

from lmcache_core.errors import StartupError

logger = logging.getLogger("lmcache.server")


@dataclass(frozen=True)
class Health:
    """A component's answer to a health probe."""

    ok: bool
    detail: str = ""


class Component(Protocol):
    """Something the server starts, probes and stops."""

    name: str

    def start(self) -> None:
        """Start; raise :class:`StartupError` (one clear line) when it cannot."""

    def stop(self, timeout: float) -> None:
        """Stop within ``timeout`` seconds, releasing every resource."""

    def health(self) -> Health:
        """Probe the component; must answer quickly and never block."""


class Lifecycle:
    """Starts components in order and stops them in reverse order.

    Args:
        components: In start order.
    """

    def __init__(self, components: list[Component]) -> None:
        self.components = components
        self._started: list[Component] = []

    def start(self) -> None:
        """Start every component; on failure, stop those already started and re-raise."""
        for component in self.components:
            logger.debug("starting %s", component.name)
            try:
                component.start()
            except Exception as exc:
                self.stop(timeout=5.0)
                if isinstance(exc, StartupError):
                    raise
                raise StartupError(f"{component.name} failed to start: {exc}") from exc
            self._started.append(component)

    def stop(self, timeout: float) -> None:
        """Stop the started components in reverse order within ``timeout`` seconds overall."""
        deadline = time.monotonic() + timeout
        while self._started:
            component = self._started.pop()
            remaining = max(0.1, deadline - time.monotonic())
            try:
                component.stop(remaining)
            except Exception:
                logger.exception("%s did not stop cleanly", component.name)

    def health(self) -> dict[str, Health]:
        """The health of every started component, by name."""
        return {component.name: component.health() for component in self._started}
