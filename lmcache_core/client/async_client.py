"""The asyncio client: many calls in flight over one DEALER socket."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence
from typing import Any, cast

import msgspec
import zmq
import zmq.asyncio

from lmcache_core.client.api import (
    DEFAULT_TIMEOUT_SECONDS,
    CallTimeout,
    ClientMethods,
    ConnectionLost,
    normalize_url,
)
from lmcache_core.client.connection_watch import RESENDABLE_OPS, ConnectionWatch
from lmcache_core.protocol.codec import ClientCodec
from lmcache_core.security.key_sources import client_api_key

_uid_decoder = msgspec.msgpack.Decoder(int)


class AsyncMPClient(ClientMethods):
    """An asyncio client of one MP server; every method returns an awaitable.

    A reader task routes replies to their calls by uid. A call that times out or
    is cancelled removes its own entry, so the pending map never leaks. A watch
    task re-sends the idempotent calls in flight when the connection breaks and
    fails the others with :class:`ConnectionLost` (see
    :mod:`lmcache_core.client.connection_watch`).

    Args:
        url: ``tcp://host:port`` or ``host:port``.
        timeout: Default per-call timeout in seconds.
        api_key: The API key every request carries. ``None``: the environment's
            (``LMCACHE_API_KEY`` or ``LMCACHE_API_KEY_FILE``, as upstream's
            clients read them), else none.

    Raises:
        KeySourceError: ``api_key`` is empty, or the environment's key source
            cannot be used.
    """

    def __init__(
        self, url: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS, api_key: str | None = None
    ) -> None:
        self.url = normalize_url(url)
        self.timeout = timeout
        self._codec = ClientCodec(client_api_key(api_key))
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._watch = ConnectionWatch(self._socket)
        self._socket.connect(self.url)
        self._uids = itertools.count()
        # uid -> (op, its reply's future, its request frames once sent).
        self._pending: dict[int, tuple[str, asyncio.Future[Any], list[bytes] | None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Calls waiting for a reply."""
        return len(self._pending)

    async def call(self, op: str, *args: Any, timeout: float | None = None) -> Any:
        """Send one request and await its reply (see :class:`MPClient.call`)."""
        return await self._invoke(op, args, timeout)

    async def _invoke(self, op: str, args: Sequence[Any], timeout: float | None) -> Any:
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read())
            self._watcher = asyncio.get_running_loop().create_task(self._watch_connection())
        budget = self.timeout if timeout is None else timeout
        uid = next(self._uids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[uid] = (op, future, None)
        try:
            frames = self._codec.request_frames(uid, op, args)
            await self._socket.send_multipart(frames)
            if uid in self._pending:
                self._pending[uid] = (op, future, frames)
            return await asyncio.wait_for(future, budget)
        except ConnectionLost:
            raise  # a TimeoutError too, but not a timeout: said at once, as it is
        except TimeoutError:
            raise CallTimeout(
                f"{op}: no reply from {self.url} within {budget:g} s{self._stuck_detail()}"
            ) from None
        finally:
            self._pending.pop(uid, None)

    def _stuck_detail(self) -> str:
        """What the client itself knows about a call that timed out (for its message)."""
        notes = []
        if self._reader is not None and self._reader.done():
            stopped = None if self._reader.cancelled() else self._reader.exception()
            notes.append(f"the client's reader stopped ({stopped!r})")
        if int(self._socket.get(zmq.EVENTS)) & zmq.POLLIN:
            notes.append("a message waits unread on the client's socket")
        if self._watch.broken:
            notes.append(f"{self._watch.broken} broken connection(s) so far")
        return f" ({'; '.join(notes)})" if notes else ""

    async def _read(self) -> None:
        while True:
            reply = await self._socket.recv_multipart()
            try:
                uid = _uid_decoder.decode(reply[0])
            except msgspec.DecodeError:
                continue
            entry = self._pending.pop(uid, None)
            if entry is None:
                continue  # a call that already timed out
            op, future, _ = entry
            if future.done():
                continue
            try:
                future.set_result(self._codec.decode_reply(op, reply[1:]))
            except Exception as exc:  # noqa: BLE001 - a typed error reply, or an undecodable result
                future.set_exception(exc)

    async def _watch_connection(self) -> None:
        # The monitor socket of an asyncio socket is an asyncio socket.
        events = cast(zmq.asyncio.Socket, self._watch.events)
        while True:
            if self._watch.count(await events.recv_multipart()):
                await self._after_break()

    async def _after_break(self) -> None:
        """The connection broke: re-send the idempotent calls in flight, fail the others."""
        for uid, (op, future, frames) in list(self._pending.items()):
            if frames is None or future.done():
                continue  # not sent yet: ZeroMQ sends it over the next connection
            if op in RESENDABLE_OPS:
                await self._socket.send_multipart(frames)  # the same uid
                continue
            self._pending.pop(uid, None)
            future.set_exception(
                ConnectionLost(
                    f"{op}: the connection to {self.url} broke with the call in flight "
                    "(its reply cannot arrive; whether the server ran it is unknown)"
                )
            )

    @property
    def broken_connections(self) -> int:
        """Connections to the server that broke so far (ZeroMQ reconnected after each)."""
        return self._watch.broken

    async def close(self) -> None:
        """Stop the reader and the watch and close the sockets."""
        for task in (self._reader, self._watcher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._watch.close()
        self._socket.close(linger=0)
        self._context.term()

    async def __aenter__(self) -> AsyncMPClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
