"""What the registry knows about each entry point, and the rows it lists.

:class:`PluginRecord` is one entry point of the ``lmcache.plugins`` group and
what became of it; :class:`SpecRow` is one line of ``lmcache plugins list`` and
``GET /plugins``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from lmcache_core.plugin.specs import PluginSpec


class PluginStatus(enum.StrEnum):
    """Load status of one entry point."""

    OK = "ok"
    DISABLED = "disabled"
    BROKEN = "broken"


@dataclass
class PluginRecord:
    """One entry point of the ``lmcache.plugins`` group and what became of it.

    Attributes:
        name: The entry point's name.
        distribution: The distribution that declares it.
        version: That distribution's version.
        module: The entry point's value (the module holding the hooks).
        status: Whether it loaded, was disabled, or is broken.
        error: Why it is broken, in one line.
        specs: The specs it registered (empty unless ``status`` is OK).
    """

    name: str
    distribution: str
    version: str
    module: str
    status: PluginStatus = PluginStatus.OK
    error: str | None = None
    specs: list[PluginSpec] = field(default_factory=list)

    @property
    def label(self) -> str:
        """``distribution version`` for messages."""
        return f"{self.distribution} {self.version}"


@dataclass(frozen=True)
class SpecRow:
    """One line of ``lmcache plugins list`` and ``GET /plugins``."""

    name: str
    kind: str
    distribution: str
    version: str
    status: str
    description: str = ""
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON-ready data."""
        return {
            "name": self.name,
            "kind": self.kind,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "description": self.description,
            "error": self.error,
        }
