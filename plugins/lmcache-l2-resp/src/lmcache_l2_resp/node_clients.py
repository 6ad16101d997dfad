"""The connections to one Redis node, and what both ``resp`` adapters do with them.

:class:`NodeClients` is one node's pair of pools (bulk values through
:mod:`lmcache_l2_resp.bulk`, other commands through redis-py); the single-server
adapter holds one, the cluster adapter one per primary. :func:`scan_sizes` lists a
node's keys with their lengths (the index rebuilt at start), and
:func:`check_settings` is the constructor check both adapters share.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.key_names import parse_native_key_name
from lmcache_l2_resp.bulk import BulkConnection, BulkPool

Node = tuple[str, int]
"""A node's ``(host, port)``."""

SCAN_PATTERN = "*@" + "[0-9a-f]" * 8 + "@*@*"
"""Names shaped like upstream's key strings (``model@rank8hex@group@hash[@salt]``)."""
SCAN_COUNT = 1000
"""Keys per SCAN step, and per pipeline of STRLEN."""


def check_settings(
    username: str | None, password: str | None, socket_timeout_s: float, connect_timeout_s: float
) -> None:
    """Refuse a username without a password and non-positive timeouts.

    Raises:
        ValueError: Either.
    """
    if username is not None and password is None:
        raise ValueError("username needs a password")
    if socket_timeout_s <= 0 or connect_timeout_s <= 0:
        raise ValueError("socket_timeout_s and connect_timeout_s must be > 0")


def redis_key_to_object_key(name: bytes | str) -> ObjectKey | None:
    """The key a Redis key name stores, or None when it is not one of ours."""
    if isinstance(name, bytes):
        try:
            name = name.decode()
        except UnicodeDecodeError:
            return None
    return parse_native_key_name(name)


def scan_sizes(client: redis.Redis) -> dict[ObjectKey, int]:
    """Every key of ours on ``client``'s node with its value's length (``SCAN`` + ``STRLEN``).

    Keys deleted between the two are left out. Errors propagate (the caller decides
    what an unreachable node or a refused command means).
    """
    known: dict[ObjectKey, int] = {}
    batch: list[tuple[ObjectKey, bytes]] = []

    def measure() -> None:
        pipe = client.pipeline(transaction=False)
        for _, name in batch:
            pipe.strlen(name)
        sizes = pipe.execute(raise_on_error=False)
        for (key, _), size in zip(batch, sizes, strict=True):
            if isinstance(size, int) and size > 0:
                known[key] = size
        batch.clear()

    for name in client.scan_iter(match=SCAN_PATTERN, count=SCAN_COUNT, _type="string"):
        key = redis_key_to_object_key(name)
        if key is not None:
            batch.append((key, name))
        if len(batch) >= SCAN_COUNT:
            measure()
    if batch:
        measure()
    return known


class NodeClients:
    """The connections to one primary: bulk values and a ``redis`` client for the rest."""

    def __init__(
        self,
        node: Node,
        *,
        username: str | None,
        password: str | None,
        pool_size: int,
        connect_timeout_s: float,
        socket_timeout_s: float,
    ) -> None:
        host, port = node
        self.node = node
        retry = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
        self.connections = redis.BlockingConnectionPool(  # type: ignore[no-untyped-call]
            max_connections=pool_size,
            timeout=connect_timeout_s + socket_timeout_s,
            host=host,
            port=port,
            username=username,
            password=password,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            socket_keepalive=True,
            retry=retry,
        )
        self.client = redis.Redis(connection_pool=self.connections)

        def connect() -> BulkConnection:
            return BulkConnection(
                host,
                port,
                username=username,
                password=password,
                connect_timeout_s=connect_timeout_s,
                socket_timeout_s=socket_timeout_s,
            )

        self.bulk = BulkPool(connect, pool_size, wait_s=connect_timeout_s + socket_timeout_s)

    def command(self, asking: bool, name: str, *args: Any) -> Any:
        """Run one command on this node (after ``ASKING`` when redirected by ``ASK``)."""
        if not asking:
            return self.client.execute_command(name, *args)  # type: ignore[no-untyped-call]
        pipe = self.client.pipeline(transaction=False)
        pipe.execute_command("ASKING")  # type: ignore[no-untyped-call]
        pipe.execute_command(name, *args)  # type: ignore[no-untyped-call]
        return pipe.execute()[1]

    def close(self) -> None:
        """Close every connection."""
        self.bulk.close()
        self.connections.disconnect()
