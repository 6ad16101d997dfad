"""The contract between the server and a cache engine plugin.

An engine plugin's factory receives an :class:`EngineContext` and returns an
:class:`Engine`: the request handlers the ZeroMQ server dispatches to, and the
background components (session expiry, reaper, ...) the server starts and stops
around it.
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from lmcache_core.config.resolution import Selection
from lmcache_core.config.server import ServerConfig
from lmcache_core.engine.miss_explainer import MissExplainer
from lmcache_core.engine.sessions import SessionTable
from lmcache_core.engine.token_cache import TokenHashCache
from lmcache_core.lifecycle import Component
from lmcache_core.observability.bus import EventBus
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.storage.l1 import L1Manager
from lmcache_core.storage.l2.tier import L2Tier

Handler = Callable[..., Any]
"""``handler(request_context, *args)``: one operation of an engine."""


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Who sent a request, and by when its answer is due.

    Attributes:
        client: The sender's ZeroMQ identity.
        op: The operation's name.
        deadline: ``time.monotonic()`` by which the server-side work must be done:
            arrival plus ``--request-deadline-seconds`` (infinite when a handler is
            called outside the request server). Every wait of the request ends at
            it; see docs/operations.md.
    """

    client: bytes
    op: str
    deadline: float = math.inf

    def remaining(self) -> float:
        """Seconds left before the deadline (negative once past it)."""
        return self.deadline - time.monotonic()

    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return time.monotonic() >= self.deadline


@dataclass
class EngineContext:
    """What the core hands an engine.

    Attributes:
        config: The validated configuration.
        registry: The plugin registry (to build further plugins).
        selection: The resolved plugin selection.
        l1: The L1 tier.
        token_cache: Chunk hashes of token lists, by content.
        l2: The L2 tier, or None when no ``--l2-adapter`` is configured.
        events: The event bus to publish request events on.
        explainer: Where lookups explain their misses (the server's, which L1
            and L2 record removals into and ``GET /lookups`` reads).
    """

    config: ServerConfig
    registry: PluginRegistry
    selection: Selection
    l1: L1Manager
    token_cache: TokenHashCache
    l2: L2Tier | None = None
    events: EventBus = field(default_factory=lambda: EventBus(enabled=False))
    explainer: MissExplainer = field(default_factory=MissExplainer)


class Engine(abc.ABC):
    """A cache engine: request handlers plus the components they rely on.

    Attributes:
        sessions: The engine's per-request session table, when it keeps one (the
            server reports its size); ``None`` otherwise.
        needs_tokens: Whether the engine needs a request's token ids themselves,
            not only their chunk hashes (e.g. blend engines fingerprint token
            content). When True the server refuses hash-only lookups
            (``lookup_hashes``) with a typed error, and clients fall back to
            sending tokens.
    """

    sessions: SessionTable | None = None
    needs_tokens: bool = False

    @abc.abstractmethod
    def handlers(self) -> dict[str, Handler]:
        """Operation name -> ``handler(request_context, *args)``.

        Only the operations the configuration enables; the request server answers
        the others with a "not supported" error reply.
        """

    def components(self) -> list[Component]:
        """Background components, started before the request server."""
        return []

    def status(self) -> dict[str, Any]:
        """Engine state for ``/status``."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """Release everything the engine holds (mappings, registrations)."""


class WouldBlock(Exception):
    """Raised by a handler's ``try_inline``: it cannot finish now without waiting.

    A pool operation's handler may offer ``try_inline(context, *args)``, which the
    request loop calls first: it either serves the request at once, without
    waiting on any lock or I/O and within a small work budget, or raises this
    before changing any state, and the request goes to its pool as usual.
    """


class StreamEnded(Exception):
    """Raised by a :class:`StreamSource` when it has nothing more to send, ever."""


class StreamSource(Protocol):
    """What a streamed operation's handler returns."""

    def next_batch(self, timeout: float) -> Any | None:
        """The next batch to send, or ``None`` when none came within ``timeout``.

        Raises:
            StreamEnded: The stream is over (the client then gets its end reply).
        """

    @property
    def ended(self) -> bool:
        """Whether the source is over (looked at while the stream waits for a credit)."""

    def close(self) -> None:
        """Release the source (called once, when the stream ends for any reason)."""
