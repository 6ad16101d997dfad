"""``RespL2Adapter``: one Redis (or Valkey) string per key (the L2 adapter ``resp``).

Key names are upstream LMCache's native-connector strings
(:mod:`lmcache_core.storage.l2.key_names`), so a store written with ``"format": "raw"``
is byte-compatible with upstream's ``resp`` connector::

    <model>@<kv_rank, 8 hex>@<group, hex>@<chunk hash, hex>[@<salt>]

A store is one ``SET`` of the whole object (header and payload, or the bare payload),
so a reader sees the old value or the new one, never a partial one. A load is a
``GET``; a value of any length but the expected one is a miss. At start the keys are
listed with ``SCAN`` (and sized with ``STRLEN``) to rebuild the index, so usage and
per-salt accounting hold across server and adapter restarts.

Values move through :mod:`.bulk` (``SET`` sent scatter-gather, ``GET`` received
straight into the caller's buffers); lookups, deletes and the index listing go
through the ``redis`` client. Each keeps a pool of at most ``num_workers``
connections. Socket timeouts bound every call, so a dead or hung server makes
operations fail fast (a failed store, a miss; counted in ``errors``) instead of
hanging, and a connection broken by a server restart is reconnected once,
transparently.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, cast

import redis

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1, ObjectFormat
from lmcache_core.storage.l2.context import DEFAULT_L2_ADAPTER_CONTEXT, L2AdapterContext
from lmcache_core.storage.l2.key_names import native_key_name
from lmcache_l2_resp.config import RespAdapterConfig
from lmcache_l2_resp.node_clients import (
    SCAN_COUNT,
    NodeClients,
    check_settings,
    scan_sizes,
)

if TYPE_CHECKING:
    from lmcache_l2_resp.cluster_adapter import RespClusterL2Adapter

logger = logging.getLogger("lmcache.l2.resp")

GIB = 1 << 30
DEFAULT_SOCKET_TIMEOUT_S = 5.0
DEFAULT_CONNECT_TIMEOUT_S = 2.0


class RespL2Adapter(L2AdapterV1):
    """One Redis string per key on a Redis or Valkey server.

    Args:
        host: Server host name or address.
        port: Server TCP port.
        username: ACL user for ``AUTH`` (None: the default user).
        password: Password for ``AUTH`` (None: no ``AUTH``).
        capacity_bytes: Capacity to report and enforce (0: unlimited); eviction is
            the controllers' job.
        object_format: ``framed`` or ``raw`` (upstream-compatible values).
        num_workers: Threads running the blocking calls, and connections in the pool.
        socket_timeout_s: Longest wait for one reply (a hung server fails the call).
        connect_timeout_s: Longest wait for a connection to open.
        persist: Keep the values at close; False deletes the keys this adapter
            indexes when it closes.

    Raises:
        ValueError: A username without a password, or a non-positive timeout.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        capacity_bytes: int = 0,
        object_format: ObjectFormat = "framed",
        num_workers: int = 8,
        socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        persist: bool = True,
    ) -> None:
        check_settings(username, password, socket_timeout_s, connect_timeout_s)
        super().__init__(
            "resp",
            capacity_bytes=capacity_bytes,
            object_format=object_format,
            num_workers=num_workers,
        )
        self.host = host
        self.port = port
        self.username = username
        self.persist = persist
        self._node = NodeClients(
            (host, port),
            username=username,
            password=password,
            pool_size=num_workers,
            connect_timeout_s=connect_timeout_s,
            socket_timeout_s=socket_timeout_s,
        )
        self._connections = self._node.connections
        self._client = self._node.client
        self._bulk = self._node.bulk

    @property
    def server(self) -> str:
        """``host:port`` of the server (for logs and status)."""
        return f"{self.host}:{self.port}"

    # -- the adapter -----------------------------------------------------------------

    def _put(self, key: ObjectKey, parts: Sequence[bytes | memoryview]) -> None:
        name = native_key_name(key).encode()
        views = [memoryview(part).cast("B") for part in parts]
        self._bulk.run(lambda connection: connection.set(name, views))

    def submit_lookup_and_lock(self, keys: Sequence[ObjectKey]) -> Future[list[bool]]:
        """Which keys the server holds, in one pipelined round trip of ``EXISTS``.

        One round trip per batch instead of one per key (64 keys: one instead of 64
        network round trips); each hit is pinned, each failure counted per key.
        """
        self._check(keys)
        batch = list(keys)
        return self._submit(lambda: self._lookup_batch(batch))

    def _lookup_batch(self, keys: list[ObjectKey]) -> list[bool]:
        if not keys:
            return []
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.exists(native_key_name(key))
        try:
            replies = pipe.execute(raise_on_error=False)
        except redis.RedisError:
            logger.warning("resp: lookup failed", exc_info=True)
            replies = [None] * len(keys)
        found = [isinstance(reply, int) and reply > 0 for reply in replies]
        with self._lock:
            self.errors += sum(1 for reply in replies if not isinstance(reply, int))
            for key, hit in zip(keys, found, strict=True):
                if hit:
                    self._pins[key] = self._pins.get(key, 0) + 1
        return found

    def _exists(self, key: ObjectKey) -> bool:
        return bool(self._client.exists(native_key_name(key)))

    def _get(self, key: ObjectKey, size: int) -> bytes | None:
        buffer = bytearray(size)
        if not self._get_into(key, [memoryview(buffer)]):
            return None  # missing, or not the object the caller expects: a miss
        # The base class only takes a memoryview of it: no copy into a bytes object.
        return cast(bytes, buffer)

    def _get_into(self, key: ObjectKey, parts: Sequence[memoryview]) -> bool:
        name = native_key_name(key).encode()
        return self._bulk.run(lambda connection: connection.get_into(name, parts))

    def _remove(self, key: ObjectKey) -> bool:
        return bool(self._client.delete(native_key_name(key)))

    def _known_objects(self) -> dict[ObjectKey, int]:
        """The keys already on the server, each with its value's length.

        A server that cannot be reached leaves the index empty (the adapter starts,
        and works once the server is up); a refused ``AUTH`` raises.

        Raises:
            RuntimeError: The server refused the credentials, or the commands that
                list the keys (an ACL user needs ``SCAN`` and ``STRLEN``).
        """
        try:
            return scan_sizes(self._client)
        except redis.AuthenticationError as exc:
            who = self.username or "default"
            raise RuntimeError(f"resp: {self.server} refused AUTH as user {who!r}: {exc}") from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.errors += 1
            logger.warning(
                "resp: %s unreachable at start (%s); starting with an empty index",
                self.server,
                exc,
            )
            return {}
        except redis.RedisError as exc:  # e.g. NOPERM: an ACL user without SCAN or STRLEN
            raise RuntimeError(f"resp: {self.server} refused to list the keys: {exc}") from exc

    def _close(self) -> None:
        try:
            if not self.persist:
                names = [native_key_name(key) for key in self.keys()]
                for start in range(0, len(names), SCAN_COUNT):
                    self._client.delete(*names[start : start + SCAN_COUNT])
        except redis.RedisError:
            self.errors += 1
            logger.warning("resp: could not delete the keys at close", exc_info=True)
        finally:
            self._node.close()

    def status(self) -> dict[str, Any]:
        """The base status, plus the server's address."""
        return {**super().status(), "server": self.server}


def build_resp(
    config: RespAdapterConfig, context: L2AdapterContext = DEFAULT_L2_ADAPTER_CONTEXT
) -> RespL2Adapter | RespClusterL2Adapter:
    """Build the ``resp`` adapter from its validated ``--l2-adapter`` JSON.

    Args:
        config: The adapter's configuration.
        context: The adapter context (unused: this adapter needs no server setting).

    Returns:
        A :class:`RespL2Adapter`, or with ``"cluster": true`` a
        :class:`~lmcache_l2_resp.cluster_adapter.RespClusterL2Adapter`.
    """
    del context
    password = config.password.get_secret_value() if config.password is not None else None
    if config.cluster:
        from lmcache_l2_resp.cluster_adapter import RespClusterL2Adapter

        return RespClusterL2Adapter(
            config.seeds(),
            username=config.username,
            password=password,
            capacity_bytes=int(config.max_capacity_gb * GIB),
            object_format=config.format,
            num_workers=config.num_workers,
            persist=config.persist_enabled,
        )
    assert config.host is not None and config.port is not None  # checked by the config
    return RespL2Adapter(
        config.host,
        config.port,
        username=config.username,
        password=password,
        capacity_bytes=int(config.max_capacity_gb * GIB),
        object_format=config.format,
        num_workers=config.num_workers,
        persist=config.persist_enabled,
    )
