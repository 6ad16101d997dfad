"""Python clients of the MP server: :class:`MPClient` (sync) and :class:`AsyncMPClient`."""

from __future__ import annotations

from lmcache_core.client.api import CallTimeout, ConnectionLost, normalize_url
from lmcache_core.client.async_client import AsyncMPClient
from lmcache_core.client.sync_client import MPClient

__all__ = ["AsyncMPClient", "CallTimeout", "ConnectionLost", "MPClient", "normalize_url"]
