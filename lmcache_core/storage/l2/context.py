"""What an L2 adapter factory receives besides its own validated configuration.

An adapter's own options live in its ``--l2-adapter`` JSON (its plugin's config
model). The few server-wide settings an adapter may need are copied into this
small frozen record when the server builds the tier, so an adapter never reaches
into the server configuration or the server's shared state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmcache_core.config.server import ServerConfig
    from lmcache_core.plugin.registry import PluginRegistry

DEFAULT_PERIODIC_NOTIFIER_INTERVAL_MS = 5
"""``--periodic-notifier-interval-ms``'s default (kept equal by a test)."""


@dataclass(frozen=True, kw_only=True)
class L2AdapterContext:
    """Server settings an L2 adapter factory may read: ``factory(config, context)``.

    Every field has a default, so an adapter can be built outside a server (in
    tests, or by a conformance suite) with ``L2AdapterContext()``.

    Attributes:
        index: The adapter's 1-based position in the ``--l2-adapter`` cascade
            (for messages and names).
        periodic_notifier_interval_ms: ``--periodic-notifier-interval-ms``: how
            often an adapter without native completion signalling is polled.
        registry: The server's plugin registry, for an adapter that wraps another
            one it must build by type name (``fault_inject``); None outside a
            server, where such an adapter refuses to build.
        l1_region: ``(address, size)`` of the L1 arena in this process, for an
            adapter that registers it once with its library (``mooncake_store``);
            None outside a server.
        l1_align_bytes: ``--l1-align-bytes``: the L1 page, which an adapter with
            a pool of fixed pages uses as its page size (``nixl_store``, as upstream).
    """

    index: int = 1
    periodic_notifier_interval_ms: int = DEFAULT_PERIODIC_NOTIFIER_INTERVAL_MS
    registry: PluginRegistry | None = field(default=None, compare=False, repr=False)
    l1_region: tuple[int, int] | None = None
    l1_align_bytes: int = 4096

    def __post_init__(self) -> None:
        if self.index < 1:
            raise ValueError(f"index must be >= 1, not {self.index}")
        if self.periodic_notifier_interval_ms < 1:
            raise ValueError(
                "periodic_notifier_interval_ms must be >= 1, "
                f"not {self.periodic_notifier_interval_ms}"
            )
        if self.l1_align_bytes < 1 or self.l1_align_bytes & (self.l1_align_bytes - 1):
            raise ValueError(f"l1_align_bytes must be a power of two, not {self.l1_align_bytes}")

    @classmethod
    def from_config(
        cls,
        config: ServerConfig,
        index: int,
        registry: PluginRegistry | None = None,
        l1_region: tuple[int, int] | None = None,
    ) -> L2AdapterContext:
        """The context of the ``index``-th ``--l2-adapter`` of a server configuration."""
        return cls(
            index=index,
            periodic_notifier_interval_ms=config.l2_policies.periodic_notifier_interval_ms,
            registry=registry,
            l1_region=l1_region,
            l1_align_bytes=config.l1.l1_align_bytes,
        )


DEFAULT_L2_ADAPTER_CONTEXT = L2AdapterContext()
"""The context of an adapter built without a server (immutable, so safe to share)."""
