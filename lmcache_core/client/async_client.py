"""The asyncio client: many calls in flight over one DEALER socket."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from lmcache_core.client.api import (
    DEFAULT_TIMEOUT_SECONDS,
    CallTimeout,
    ClientMethods,
    normalize_url,
)
from lmcache_core.protocol.codec import ClientCodec
from lmcache_core.security.key_sources import client_api_key

_uid_decoder = msgspec.msgpack.Decoder(int)


class AsyncMPClient(ClientMethods):
    """An asyncio client of one MP server; every method returns an awaitable.

    A reader task routes replies to their calls by uid. A call that times out or
    is cancelled removes its own entry, so the pending map never leaks.

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
        self._socket.connect(self.url)
        self._uids = itertools.count()
        self._pending: dict[int, tuple[str, asyncio.Future[Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

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
        budget = self.timeout if timeout is None else timeout
        uid = next(self._uids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[uid] = (op, future)
        try:
            await self._socket.send_multipart(self._codec.request_frames(uid, op, args))
            return await asyncio.wait_for(future, budget)
        except TimeoutError:
            raise CallTimeout(f"{op}: no reply from {self.url} within {budget:g} s") from None
        finally:
            self._pending.pop(uid, None)

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
            op, future = entry
            if future.done():
                continue
            try:
                future.set_result(self._codec.decode_reply(op, reply[1:]))
            except Exception as exc:  # noqa: BLE001 - a typed error reply, or an undecodable result
                future.set_exception(exc)

    async def close(self) -> None:
        """Stop the reader and close the socket."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._socket.close(linger=0)
        self._context.term()

    async def __aenter__(self) -> AsyncMPClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
