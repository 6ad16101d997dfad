"""``RespClusterL2Adapter``: the ``resp`` adapter on a Redis Cluster (``"cluster": true``).

The same values under the same key names as on one server (one string per key,
upstream's native key string, ``framed`` or ``raw``), spread over the cluster's
shards by hash slot. Every command goes to the primary of its key's slot through
:class:`~lmcache_l2_resp.cluster.ClusterRouter`, which follows ``MOVED`` and
``ASK`` and re-reads the slot map when a shard dies. Each operation touches one
key, so no command ever spans two slots (a multi-key ``DEL`` would be refused
with ``CROSSSLOT``). At start every primary is scanned to rebuild the index; a
shard that cannot be reached is left out (its keys are counted once they are
stored again), and an unreachable cluster starts the adapter degraded, with an
empty index, working as soon as a seed answers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any, cast

import redis
from redis.crc import key_slot

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1, ObjectFormat
from lmcache_core.storage.l2.key_names import native_key_name
from lmcache_l2_resp.adapter import DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_SOCKET_TIMEOUT_S
from lmcache_l2_resp.cluster import ClusterRouter, ClusterUnavailable, Node, format_node
from lmcache_l2_resp.node_clients import NodeClients, check_settings, scan_sizes

logger = logging.getLogger("lmcache.l2.resp")


class RespClusterL2Adapter(L2AdapterV1):
    """One Redis string per key on a Redis Cluster.

    Args:
        seeds: Nodes the slot map is first read from (any nodes of the cluster).
        username: ACL user for ``AUTH`` (None: the default user).
        password: Password for ``AUTH`` (None: no ``AUTH``).
        capacity_bytes: Capacity to report and enforce (0: unlimited).
        object_format: ``framed`` or ``raw`` (upstream-compatible values).
        num_workers: Threads running the blocking calls, and connections per shard.
        socket_timeout_s: Longest wait for one reply.
        connect_timeout_s: Longest wait for a connection to open.
        persist: False deletes the keys this adapter indexes when it closes.

    Raises:
        ValueError: No seed, a username without a password, or a non-positive timeout.
    """

    def __init__(
        self,
        seeds: Sequence[Node],
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
        self.username = username
        self.persist = persist
        self.router = ClusterRouter(
            seeds,
            username=username,
            password=password,
            pool_size=num_workers,
            connect_timeout_s=connect_timeout_s,
            socket_timeout_s=socket_timeout_s,
        )

    # -- the adapter -----------------------------------------------------------------

    def _put(self, key: ObjectKey, parts: Sequence[bytes | memoryview]) -> None:
        name = native_key_name(key).encode()
        views = [memoryview(part).cast("B") for part in parts]

        def put(node: NodeClients, asking: bool) -> None:
            def send(connection: Any) -> None:
                if asking:
                    connection.asking()
                connection.set(name, views)

            node.bulk.run(send)

        self.router.run(name, put)

    def submit_lookup_and_lock(self, keys: Sequence[ObjectKey]) -> Future[list[bool]]:
        """Which keys the cluster holds: one pipelined ``EXISTS`` round trip per shard.

        Keys are grouped by their slot's primary in the current slot map. A key whose
        group fails, or whose reply is a redirect (``MOVED``, ``ASK``), is looked up
        again on its own through the router, which follows redirects and failovers.
        """
        self._check(keys)
        batch = list(keys)
        return self._submit(lambda: self._lookup_batch(batch))

    def _lookup_batch(self, keys: list[ObjectKey]) -> list[bool]:
        names = [native_key_name(key).encode() for key in keys]
        groups: dict[Node, list[int]] = {}
        again: list[int] = []
        for index, name in enumerate(names):
            try:
                groups.setdefault(self.router.owner(key_slot(name)), []).append(index)
            except ClusterUnavailable:
                again.append(index)  # the router's own path counts the failure
        found = [False] * len(keys)
        for node, indices in groups.items():
            try:
                pipe = self.router.clients(node).client.pipeline(transaction=False)
                for index in indices:
                    pipe.exists(names[index])
                replies = pipe.execute(raise_on_error=False)
            except (redis.RedisError, OSError):
                again.extend(indices)
                continue
            for index, reply in zip(indices, replies, strict=True):
                if isinstance(reply, int):
                    found[index] = reply > 0
                else:
                    again.append(index)
        with self._lock:
            for index, hit in enumerate(found):
                if hit:
                    self._pins[keys[index]] = self._pins.get(keys[index], 0) + 1
        for index in again:
            found[index] = self._lookup_one(keys[index])  # pins and counts by itself
        return found

    def _exists(self, key: ObjectKey) -> bool:
        name = native_key_name(key).encode()
        return bool(self.router.run(name, lambda node, ask: node.command(ask, "EXISTS", name)))

    def _get(self, key: ObjectKey, size: int) -> bytes | None:
        buffer = bytearray(size)
        if not self._get_into(key, [memoryview(buffer)]):
            return None
        return cast(bytes, buffer)

    def _get_into(self, key: ObjectKey, parts: Sequence[memoryview]) -> bool:
        name = native_key_name(key).encode()

        def get(node: NodeClients, asking: bool) -> bool:
            def receive(connection: Any) -> bool:
                if asking:
                    connection.asking()
                return bool(connection.get_into(name, parts))

            return node.bulk.run(receive)

        return self.router.run(name, get)

    def _remove(self, key: ObjectKey) -> bool:
        name = native_key_name(key).encode()
        return bool(self.router.run(name, lambda node, ask: node.command(ask, "DEL", name)))

    def _known_objects(self) -> dict[ObjectKey, int]:
        """The keys on every reachable primary, each with its value's length.

        Raises:
            RuntimeError: A node refused the credentials or the listing commands.
        """
        if not self.router.refresh(force=True):
            self.errors += 1
            logger.warning(
                "resp cluster: no seed reachable at start (%s); starting with an empty index",
                ", ".join(format_node(seed) for seed in self.router.seeds),
            )
            return {}
        known: dict[ObjectKey, int] = {}
        for node in self.router.primaries():
            try:
                known.update(scan_sizes(self.router.clients(node).client))
            except redis.AuthenticationError as exc:
                who = self.username or "default"
                raise RuntimeError(
                    f"resp: {format_node(node)} refused AUTH as user {who!r}: {exc}"
                ) from exc
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.errors += 1
                logger.warning(
                    "resp cluster: shard %s unreachable at start (%s); its keys are not indexed",
                    format_node(node),
                    exc,
                )
            except redis.RedisError as exc:
                raise RuntimeError(
                    f"resp: {format_node(node)} refused to list the keys: {exc}"
                ) from exc
        return known

    def _close(self) -> None:
        try:
            if not self.persist:
                for key in self.keys():
                    try:
                        self._remove(key)
                    except (redis.RedisError, OSError):
                        self.errors += 1
                        logger.warning("resp cluster: could not delete %s at close", key)
        finally:
            self.router.close()

    def status(self) -> dict[str, Any]:
        """The base status, plus the shards and the redirects followed."""
        router = self.router
        return {
            **super().status(),
            "cluster": True,
            "server": ",".join(format_node(node) for node in router.primaries())
            or ",".join(format_node(seed) for seed in router.seeds),
            "shards": len(router.primaries()),
            "moved_redirects": router.moved,
            "ask_redirects": router.asked,
            "failovers_followed": router.failed_over,
            "slot_map_reads": router.refreshes,
        }
