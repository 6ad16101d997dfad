"""Redis Cluster routing for the ``resp`` adapter: the slot map, redirects and failed shards.

A Redis Cluster splits the key space into 16384 hash slots (CRC16 of the key, or of
its ``{hash tag}``), each served by one primary. :class:`ClusterRouter` keeps:

* the **slot map**, read with ``CLUSTER SLOTS`` from any reachable node (the seeds
  first time, then every known primary), so each command goes straight to the
  primary of its key's slot;
* per primary, the same two connection pools as the single-server adapter (a
  :class:`~lmcache_l2_resp.bulk.BulkPool` for values, a ``redis`` client for the
  rest), opened on first use.

A command that meets ``-MOVED <slot> <host:port>`` (the slot has moved for good: a
reshard or a failover) updates that slot, re-reads the map in the background of
the next call, and is sent again to the new owner; ``-ASK <slot> <host:port>``
(the slot is being migrated and this key is already on the target) sends
``ASKING`` and the command to the target once, without touching the map. A
command whose node refuses the connection (the shard died) re-reads the map from
the other nodes and goes to the slot's new owner when there is one (a replica
promoted); otherwise it fails at once, as a failed store or a miss, while the
other shards keep working. A shard restarted on its address serves again from
the next command. Timeouts are not retried: a hung shard costs one socket timeout
per call, never more. At most :data:`MAX_REDIRECTS` hops are followed per command.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from lmcache_l2_resp.bulk import RespServerError
from lmcache_l2_resp.node_clients import NodeClients

logger = logging.getLogger("lmcache.l2.resp")

T = TypeVar("T")
Node = tuple[str, int]
"""A node's ``(host, port)``."""

SLOTS = 16384
MAX_REDIRECTS = 5
"""MOVED / ASK / failed-node hops followed for one command before it fails."""
REFRESH_MIN_INTERVAL_S = 0.1
"""Shortest time between two reads of the slot map (a dead shard does not flood the others)."""


class ClusterUnavailable(ConnectionError):
    """No node of the cluster answered ``CLUSTER SLOTS``, or a slot has no owner."""


@dataclass(frozen=True)
class Redirect:
    """A ``MOVED`` or ``ASK`` error reply, parsed."""

    slot: int
    node: Node
    ask: bool


def parse_redirect(message: str, replied: Node) -> Redirect | None:
    """The redirect an error reply's text asks for; None when it is another error.

    Args:
        message: The error text without its ``-`` (``MOVED 3999 127.0.0.1:6381``).
        replied: The node that answered (an empty host in the reply means its host).
    """
    parts = message.split()
    if len(parts) < 3 or parts[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = parts[2].rpartition(":")
    try:
        return Redirect(
            int(parts[1]), (host.strip("[]") or replied[0], int(port)), parts[0] == "ASK"
        )
    except ValueError:
        return None


def redirect_of(exc: Exception, replied: Node) -> Redirect | None:
    """The redirect an error asks for (redis-py's MovedError or AskError, or a reply's text)."""
    if isinstance(exc, redis.exceptions.AskError):  # MovedError is an AskError
        moved = isinstance(exc, redis.exceptions.MovedError)
        return Redirect(int(exc.slot_id), (exc.host or replied[0], int(exc.port)), not moved)
    return parse_redirect(str(exc), replied)


def format_node(node: Node) -> str:
    """``host:port`` (``[v6]:port`` for an IPv6 address)."""
    host, port = node
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ClusterRouter:
    """Sends each command to the primary of its key's slot, following redirects.

    Args:
        seeds: Nodes to read the slot map from first (any node of the cluster).
        username: ACL user for ``AUTH`` (None: the default user).
        password: Password for ``AUTH`` (None: no ``AUTH``).
        pool_size: Connections per primary and per kind (values, other commands).
        connect_timeout_s: Bound on opening a connection.
        socket_timeout_s: Bound on every reply.
    """

    def __init__(
        self,
        seeds: Sequence[Node],
        *,
        username: str | None,
        password: str | None,
        pool_size: int,
        connect_timeout_s: float,
        socket_timeout_s: float,
    ) -> None:
        if not seeds:
            raise ValueError("a cluster needs at least one seed node")
        self.seeds = list(seeds)
        self._username = username
        self._password = password
        self._pool_size = pool_size
        self._connect_timeout_s = connect_timeout_s
        self._socket_timeout_s = socket_timeout_s
        self._slots: list[Node | None] = [None] * SLOTS
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._last_refresh = float("-inf")
        self._clients: dict[Node, NodeClients] = {}
        self._closed = False
        self.moved = 0
        self.asked = 0
        self.failed_over = 0
        self.refreshes = 0

    # -- the slot map ------------------------------------------------------------------

    def primaries(self) -> list[Node]:
        """The primaries of the current slot map, in address order."""
        with self._lock:
            return sorted({node for node in self._slots if node is not None})

    def refresh(self, *, avoid: Node | None = None, force: bool = False) -> bool:
        """Re-read the slot map from the first node that answers; False if none did.

        Rate-limited to one read per :data:`REFRESH_MIN_INTERVAL_S` unless forced.
        ``avoid`` (a node that just failed) is asked last.
        """
        with self._refresh_lock:
            now = time.monotonic()
            if not force and now - self._last_refresh < REFRESH_MIN_INTERVAL_S:
                return True
            self._last_refresh = now
            candidates = list(dict.fromkeys([*self.primaries(), *self.seeds]))
            if avoid in candidates:
                candidates.remove(avoid)
                candidates.append(avoid)
            errors: list[str] = []
            for node in candidates:
                try:
                    layout = self._read_slots(node)
                except (redis.RedisError, OSError) as exc:
                    errors.append(f"{format_node(node)}: {exc}")
                    continue
                with self._lock:
                    self._slots = layout
                self.refreshes += 1
                return True
            logger.warning("resp cluster: no node answered CLUSTER SLOTS (%s)", "; ".join(errors))
            return False

    def _read_slots(self, node: Node) -> list[Node | None]:
        host, port = node
        with redis.Redis(
            host=host,
            port=port,
            username=self._username,
            password=self._password,
            socket_timeout=self._socket_timeout_s,
            socket_connect_timeout=self._connect_timeout_s,
            # redis-py's default retries a refused connection with backoff for about 4 s
            # per node: a cluster down at start-up then held start() for 4 s per seed.
            retry=Retry(NoBackoff(), 0),
        ) as client:
            reply = client.execute_command("CLUSTER SLOTS")
        layout: list[Node | None] = [None] * SLOTS
        for entry in _slot_ranges(reply):
            start, end, owner = entry
            owner_host = owner[0] or host  # an empty host means the node that answered
            for slot in range(start, end + 1):
                layout[slot] = (owner_host, owner[1])
        return layout

    def owner(self, slot: int) -> Node:
        """The primary of ``slot``, reading the map when it is unknown.

        Raises:
            ClusterUnavailable: No node knows an owner for the slot.
        """
        with self._lock:
            node = self._slots[slot]
        if node is None:
            self.refresh()
            with self._lock:
                node = self._slots[slot]
        if node is None:
            raise ClusterUnavailable(f"no reachable node of the cluster serves slot {slot}")
        return node

    # -- commands ----------------------------------------------------------------------

    def run(self, name: bytes, work: Callable[[NodeClients, bool], T]) -> T:
        """``work(clients of the slot's primary, asking)``, following MOVED, ASK and failover.

        Raises:
            ClusterUnavailable: No owner for the key's slot, or too many redirects.
            OSError, redis.RedisError, RespServerError: The command failed on its node.
        """
        slot = key_slot(name)
        node, asking = self.owner(slot), False
        for _hop in range(MAX_REDIRECTS):
            try:
                return work(self.clients(node), asking)
            except (RespServerError, redis.ResponseError) as exc:
                redirect = redirect_of(exc, node)
                if redirect is None:
                    raise
                if redirect.ask:
                    self.asked += 1
                else:
                    self.moved += 1
                    with self._lock:
                        self._slots[redirect.slot] = redirect.node
                    self._last_refresh = float("-inf")  # the map is stale: re-read it next
                node, asking = redirect.node, redirect.ask
            except (ConnectionError, redis.ConnectionError):
                # The shard is gone: maybe a replica took its slots over.
                if not self.refresh(avoid=node):
                    raise
                moved_to = self.owner(slot)
                if moved_to == node:
                    raise  # still its slot: fail now, the other shards keep serving
                self.failed_over += 1
                node, asking = moved_to, False
        raise ClusterUnavailable(f"slot {slot}: more than {MAX_REDIRECTS} redirects")

    def clients(self, node: Node) -> NodeClients:
        """The connection pools of ``node``, opened on first use."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the cluster router is closed")
            clients = self._clients.get(node)
            if clients is None:
                clients = NodeClients(
                    node,
                    username=self._username,
                    password=self._password,
                    pool_size=self._pool_size,
                    connect_timeout_s=self._connect_timeout_s,
                    socket_timeout_s=self._socket_timeout_s,
                )
                self._clients[node] = clients
            return clients

    def close(self) -> None:
        """Close every connection to every node."""
        with self._lock:
            self._closed = True
            clients, self._clients = list(self._clients.values()), {}
        for one in clients:
            one.close()


def _slot_ranges(reply: Any) -> Iterable[tuple[int, int, tuple[str, int]]]:
    """``(first slot, last slot, (primary host, port))`` of each ``CLUSTER SLOTS`` entry."""
    for entry in reply:
        start, end, primary = entry[0], entry[1], entry[2]
        host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
        yield int(start), int(end), (host, int(primary[1]))
