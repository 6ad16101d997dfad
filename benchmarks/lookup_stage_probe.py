"""Per-stage timestamps inside a server process, for ``bench_lookup_rtt.py --stages``.

Loaded by path into the server process before ``lmcache server`` starts (the
server tree may be an older one, so this file must not be imported from it). It
wraps the request server's methods so that each request leaves a row of
``time.perf_counter_ns()`` stamps: the loop has received it, decoded and handed
it off; a pool thread has started it; the handler ran; the reply was pushed;
the loop forwarded it to the client. ``perf_counter`` is ``CLOCK_MONOTONIC`` on
Linux, shared by every process, so the client's own stamps line up with these.
At exit the stamps go to the JSON file named by ``LMCACHE_BENCH_STAGES``.

A benchmark tool, never loaded by the server itself.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

STAMPS: list[tuple[str, int]] = []
"""``(stage, ns)`` in the order they happened (one client, one request at a time)."""
_lock = threading.Lock()


def stamp(stage: str) -> None:
    """Record that ``stage`` happened now."""
    now = time.perf_counter_ns()
    with _lock:
        if len(STAMPS) < 2_000_000:  # bounded, whatever the run length
            STAMPS.append((stage, now))


def install() -> None:
    """Wrap the request server's stages (call before the server is built)."""
    from lmcache_core.server import request_server as rs

    cls: Any = rs.RequestServer
    handle, task, push, send = cls._handle, cls._task, cls._push, cls._send
    original_init = cls.__init__

    def _handle(self: Any, frames: list[bytes]) -> Any:
        stamp("loop_in")
        try:
            return handle(self, frames)
        finally:
            stamp("loop_out")

    def _task(self: Any, spec: Any, context: Any, args: Any, head: Any) -> Callable[[], None]:
        run = task(self, spec, context, args, head)

        def timed() -> None:
            stamp("pool_in")
            run()
            stamp("pool_out")

        return timed

    def _push(self: Any, frames: list[bytes]) -> None:
        stamp("push_in")
        push(self, frames)
        stamp("push_out")

    def _send(self: Any, router: Any, frames: list[bytes]) -> bool:
        stamp("send_in")
        try:
            return bool(send(self, router, frames))
        finally:
            stamp("send_out")

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        for name, handler in list(self.handlers.items()):
            self.handlers[name] = _timed_handler(handler)

    from lmcache_core.protocol.codec import ServerCodec
    from lmcache_core.server.affinity import WorkerPool

    decode, submit = ServerCodec.decode_args, WorkerPool.submit

    def decode_args(self: Any, spec: Any, frames: Any) -> Any:
        stamp("decode_in")
        try:
            return decode(self, spec, frames)
        finally:
            stamp("decode_out")

    def pool_submit(self: Any, task: Any, slot: Any = None) -> None:
        stamp("submit_in")
        submit(self, task, slot)

    ServerCodec.decode_args = decode_args  # type: ignore[method-assign]
    WorkerPool.submit = pool_submit  # type: ignore[method-assign]
    cls._handle, cls._task, cls._push, cls._send = _handle, _task, _push, _send
    cls.__init__ = __init__
    path = os.environ.get("LMCACHE_BENCH_STAGES")
    if path:
        atexit.register(_dump, path)


def _timed_handler(handler: Callable[..., Any]) -> Callable[..., Any]:
    def timed(*args: Any) -> Any:
        stamp("handler_in")
        try:
            return handler(*args)
        finally:
            stamp("handler_out")

    return timed


def _dump(path: str) -> None:
    with open(path, "w") as handle:
        json.dump(STAMPS, handle)
