"""The connector's line to the server: one asyncio client on a background thread.

vLLM's scheduler must never block on the network (a lookup is polled across scheduling
steps), so every call is submitted to an event loop running on a daemon thread and
returns a :class:`concurrent.futures.Future`. Blocking callers wait on that future with
their own bound. The same loop runs the heartbeat (:mod:`lmcache_vllm.health`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from lmcache_core.client import AsyncMPClient

T = TypeVar("T")

# A blocking wait adds this to the call's own timeout: the call's timeout fires first
# and its CallTimeout is what the caller sees.
_WAIT_MARGIN_SECONDS = 1.0


class BackgroundClient:
    """An :class:`AsyncMPClient` driven by an event loop on its own thread.

    Args:
        url: The server's ZeroMQ endpoint.
        name: Thread name suffix (``scheduler`` or ``worker``), for stack dumps.
    """

    def __init__(self, url: str, *, name: str) -> None:
        self.url = url
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lmcache-vllm-{name}", daemon=True)
        self._thread.start()
        self._ready.wait()
        self._client: AsyncMPClient = self.run_sync(self._make_client(url), timeout=10.0)
        self._closed = False

    @staticmethod
    async def _make_client(url: str) -> AsyncMPClient:
        # The zmq.asyncio socket must be created on the loop that uses it.
        return AsyncMPClient(url)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._ready.set)
        self._loop.run_forever()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop (for tasks such as the heartbeat)."""
        return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the loop; its future."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def call(self, method: str, *args: Any, timeout: float) -> concurrent.futures.Future[Any]:
        """Call ``AsyncMPClient.<method>(*args, timeout=timeout)`` without waiting."""
        bound: Callable[..., Awaitable[Any]] = getattr(self._client, method)

        async def invoke() -> Any:
            return await bound(*args, timeout=timeout)

        return self.submit(invoke())

    def call_sync(self, method: str, *args: Any, timeout: float) -> Any:
        """Call and wait (at most ``timeout`` plus a margin).

        Raises:
            CallTimeout: No reply within ``timeout``.
            RemoteError: The server answered with an error.
        """
        return self.call(method, *args, timeout=timeout).result(timeout + _WAIT_MARGIN_SECONDS)

    def run_sync(self, coro: Coroutine[Any, Any, T], *, timeout: float) -> T:
        """Run ``coro`` on the loop and wait for it."""
        return self.submit(coro).result(timeout)

    def close(self) -> None:
        """Close the client and stop the loop thread (idempotent)."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        # The loop goes away anyway: a close that fails or hangs changes nothing.
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            self.run_sync(self._client.close(), timeout=5.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
