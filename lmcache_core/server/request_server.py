"""The ZeroMQ request server: decode, dispatch, reply — every request answered.

One loop thread owns the ROUTER socket. It decodes each request, runs trivial
handlers inline and hands the others to the affinity or CPU pool. A pool
handler that offers ``try_inline`` (a lookup that is a full L1 hit) is tried on
the loop first: it serves the request without waiting on anything, or raises
:class:`~lmcache_core.engine.contract.WouldBlock` untouched and goes to the pool. ZeroMQ sockets
must not be shared between threads, so a pool thread sends its reply through its
own inproc DEALER connected to the same ROUTER; the loop recognizes those peers
by a secret identity prefix and forwards their frames to the client. One socket
and a blocking receive (no poller) keep the round trip short. Anything that goes
wrong with a request becomes an error reply; nothing a client sends can stop the
loop.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import zmq

from lmcache_core.engine.contract import Handler, RequestContext, StreamSource, WouldBlock
from lmcache_core.errors import StartupError
from lmcache_core.lifecycle import Health
from lmcache_core.protocol.api_key_frame import is_key_frame, presented_key
from lmcache_core.protocol.codec import ProtocolError, ServerCodec, decode_op
from lmcache_core.protocol.errors import ERROR_OP, ErrorCode, ErrorInfo, RemoteError
from lmcache_core.protocol.multipart import recv_frames, send_frames
from lmcache_core.protocol.ops import KNOWN_UNSUPPORTED, OPS, Execution, OpSpec
from lmcache_core.security.keyring import ApiKeyRing
from lmcache_core.server.affinity import AffinityPool, PoolFull, WorkerPool
from lmcache_core.server.connection_monitor import ConnectionMonitor
from lmcache_core.server.streams import StreamTable

logger = logging.getLogger("lmcache.server")

POLL_INTERVAL_MS = 100
STUCK_AFTER_SECONDS = 5.0
"""The loop beats every poll interval; silence this long means it is stuck."""
MAX_MESSAGE_BYTES = 2 << 30
QUEUE_DEPTH = 1024
UNAUTHORIZED_MESSAGE = "Invalid or missing API key"
"""The error reply's message, the same words as the HTTP API's 401."""
_UID_DECODER = msgspec.msgpack.Decoder(int)
_ERROR_INFO_DECODER = msgspec.msgpack.Decoder(ErrorInfo)


@dataclass
class RequestStats:
    """Counters exposed in ``/status``."""

    requests: int = 0
    errors: int = 0
    undeliverable: int = 0
    malformed: int = 0
    unauthorized: int = 0
    stream_controls_unknown: int = 0
    served_inline: int = 0
    """Pool requests whose handler's ``try_inline`` served them on the loop."""


class RequestServer:
    """Serves the handlers of an engine on ``tcp://host:port``.

    Args:
        host: ``--host``.
        port: ``--port``.
        handlers: Operation name -> ``handler(context, *args)``.
        affinity_workers: ``--max-gpu-workers``.
        cpu_workers: ``--max-cpu-workers``.
        queue_depth: Requests queued per pool thread before "overloaded".
        stuck_after: Seconds without a loop beat after which health fails.
        api_keys: The keys a request must carry (see
            :mod:`lmcache_core.protocol.api_key_frame`); ``None`` or a disabled
            ring: no key is required.
        deadline_s: ``--request-deadline-seconds``: each request's
            :attr:`RequestContext.deadline` is its arrival plus this (the
            handlers bound their waits by it; queue time counts).
    """

    name = "request_server"

    def __init__(
        self,
        host: str,
        port: int,
        handlers: Mapping[str, Handler],
        *,
        affinity_workers: int,
        cpu_workers: int,
        queue_depth: int = QUEUE_DEPTH,
        stuck_after: float = STUCK_AFTER_SECONDS,
        api_keys: ApiKeyRing | None = None,
        deadline_s: float = math.inf,
    ) -> None:
        unknown = set(handlers) - set(OPS)
        if unknown:
            raise ValueError(f"handlers for unknown operations: {sorted(unknown)}")
        self.host, self.port = host, port
        self.handlers = dict(handlers)
        # Pool handlers that may serve a request on the loop first (see WouldBlock).
        self._inline_first: dict[str, Handler] = {
            name: handler.try_inline  # type: ignore[attr-defined]
            for name, handler in self.handlers.items()
            if OPS[name].execution is Execution.POOL
            and callable(getattr(handler, "try_inline", None))
        }
        self.stats = RequestStats()
        self._keys = api_keys if api_keys is not None else ApiKeyRing.disabled()
        self._codec = ServerCodec()
        self._affinity_workers, self._cpu_workers = affinity_workers, cpu_workers
        self._queue_depth, self._stuck_after = queue_depth, stuck_after
        self.deadline_s = deadline_s
        self._context: zmq.Context[Any] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._beat = time.monotonic()
        self._local = threading.local()
        self._reply_address = f"inproc://lmcache-replies-{id(self)}"
        # Replies from pool threads arrive as requests from these identities; a
        # remote peer cannot guess the 16 random bytes to forge one.
        self._secret = os.urandom(16)
        self._reply_ids = itertools.count()
        self._affinity: AffinityPool | None = None
        self._pool: WorkerPool | None = None
        self._monitor: ConnectionMonitor | None = None
        self._crash: BaseException | None = None
        self._ready = threading.Event()
        self._batch_encoder = msgspec.msgpack.Encoder()
        self._streams = StreamTable(
            self._push, self._batch_encoder.encode, release=self._release_push
        )

    @property
    def endpoint(self) -> str:
        """The bound ZeroMQ endpoint."""
        return f"tcp://{self.host}:{self.port}"

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Bind the socket and start the loop and pools."""
        self._context = zmq.Context()
        router = self._context.socket(zmq.ROUTER)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        router.setsockopt(zmq.LINGER, 0)
        try:
            router.bind(self.endpoint)
        except zmq.ZMQError as exc:
            router.close()
            self._context.term()
            raise StartupError(f"--port: cannot bind {self.endpoint}: {exc.strerror}") from None
        router.setsockopt(zmq.RCVTIMEO, POLL_INTERVAL_MS)
        router.bind(self._reply_address)
        # Attached before the loop thread takes the socket over: no connection is missed.
        self._monitor = ConnectionMonitor(router)
        self._affinity = AffinityPool("lmcache-transfer", self._affinity_workers, self._queue_depth)
        self._pool = WorkerPool("lmcache-cpu", self._cpu_workers, self._queue_depth)
        self._thread = threading.Thread(
            target=self._run, args=(router,), name="lmcache-zmq", daemon=True
        )
        self._thread.start()
        self._ready.wait(5.0)
        logger.info("request server listening on %s", self.endpoint)

    def stop(self, timeout: float) -> None:
        """Stop the loop, drain the pools (bounded), close the sockets."""
        deadline = time.monotonic() + timeout
        self._streams.close(timeout / 4)
        if self._affinity is not None:
            self._affinity.stop(max(0.1, (deadline - time.monotonic()) / 2))
        if self._pool is not None:
            self._pool.stop(max(0.1, (deadline - time.monotonic()) / 2))
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic()))
        if self._monitor is not None:
            self._monitor.stop(max(0.1, deadline - time.monotonic()))
        if self._context is not None:
            # destroy() also closes the reply sockets the pool threads created.
            self._context.destroy(linger=0)

    def health(self) -> Health:
        """Unhealthy when the loop thread died or has not beaten for a while."""
        if self._thread is None or not self._thread.is_alive():
            return Health(False, f"request loop stopped: {self._crash!r}")
        silent = time.monotonic() - self._beat
        if silent > self._stuck_after:
            return Health(False, f"request loop stuck for {silent:.1f} s")
        return Health(True, f"serving {self.endpoint}")

    # -- the loop --------------------------------------------------------------------

    def _run(self, router: zmq.Socket[bytes]) -> None:
        self._ready.set()
        secret, id_length = self._secret, len(self._secret) + 8
        try:
            while not self._stop.is_set():
                self._beat = time.monotonic()
                try:
                    frames = recv_frames(router)
                except zmq.Again:
                    continue
                sender = frames[0]
                if len(sender) == id_length and sender.startswith(secret):
                    # A pool thread's or a stream's reply; a stream whose client is gone ends.
                    if not self._send(router, frames[1:]) and len(frames) > 2:
                        self._streams.peer_gone(frames[1], frames[2])
                    continue
                if len(frames) == 4 and not frames[2]:
                    refusal = self._stream_control(frames)
                    if refusal is not None:
                        self._send(router, refusal)
                    continue
                self.stats.requests += 1
                try:
                    reply = self._handle(frames)
                except Exception as exc:  # no request may stop the loop
                    logger.exception("request could not be handled")
                    self.stats.errors += 1
                    reply = self._internal_error(frames, exc)
                if reply is not None:
                    self._send(router, reply)
        except BaseException as exc:
            self._crash = exc
            logger.exception("request loop crashed")
        finally:
            router.close(linger=0)

    def _send(self, router: zmq.Socket[bytes], frames: list[bytes]) -> bool:
        try:
            send_frames(router, frames)
        except zmq.ZMQError as exc:  # the peer went away (ROUTER_MANDATORY)
            self.stats.undeliverable += 1
            # INFO, not DEBUG: a client still waiting for this reply will time out, and this
            # line (with the peer's routing id, the op and the request id) is the only trace
            # of why; requests.connections in /status says whether connections came and went.
            op, uid = describe_reply(frames)
            logger.info(
                "reply to peer %s (op %s, request id %s) dropped (%s): ZeroMQ no longer "
                "knows that connection",
                frames[0].hex() if frames else "?",
                op,
                uid,
                exc.strerror,
            )
            return False
        return True

    def _stream_control(self, frames: list[bytes]) -> list[bytes] | None:
        """``[client, uid, b"", b"ack" | b"cancel"]``: a credit or the end of a stream.

        Not a request: an accepted one is not answered (upstream's clients expect
        no reply). One for no open stream (it ended meanwhile, or never was), or
        with another action, is counted and answered ``bad_request``; a client
        whose stream just ended ignores it (its uid is done).
        """
        client, uid, _, action = frames
        if self._streams.control(client, uid, action):
            return None
        self.stats.stream_controls_unknown += 1
        message = f"no open stream for this uid to {action[:16]!r}"
        return [client, uid, *self._codec.error_frames(ErrorCode.BAD_REQUEST, message)]

    def requests_status(self) -> dict[str, Any]:
        """The request counters and ``connections`` (the ROUTER's TCP peers), for ``/status``."""
        connections = self._monitor.status() if self._monitor is not None else {}
        return {**vars(self.stats), "connections": connections}

    def streams_status(self) -> dict[str, int]:
        """Open and opened streams, for ``/status``."""
        return self._streams.status()

    def _handle(self, frames: list[bytes]) -> list[bytes] | None:
        refused, refusal = self._screen(frames)
        if refused:
            return refusal
        client, uid, op_frame, *args = frames
        head = [client, uid]
        try:
            op = decode_op(op_frame)
            spec = self._spec(op)
            decoded = self._codec.decode_args(spec, args)
        except ProtocolError as exc:
            self.stats.malformed += 1
            return head + self._codec.error_frames(exc.code, str(exc))
        # Counted from arrival: time queued behind other work is part of the budget.
        context = RequestContext(client, op, time.monotonic() + self.deadline_s)
        reply_head = [client, uid, op_frame]
        if spec.execution in (Execution.INLINE, Execution.STREAM):
            return self._call(spec, context, decoded, reply_head)
        attempt = self._inline_first.get(spec.name)
        if attempt is not None:
            # Served now when it needs no wait (a full L1 hit): no hand-off to a pool
            # thread and back, about a third of a small lookup's round trip.
            try:
                reply = self._call(spec, context, decoded, reply_head, attempt)
            except WouldBlock:
                pass
            else:
                self.stats.served_inline += 1
                return reply
        task = self._task(spec, context, decoded, reply_head)
        try:
            if spec.execution is Execution.AFFINITY:
                assert self._affinity is not None
                self._affinity.submit_for(client, task)
            else:
                assert self._pool is not None
                self._pool.submit(task)
        except PoolFull:
            return head + self._codec.error_frames(
                ErrorCode.OVERLOADED, "the server's queue for this work is full; retry later", op
            )
        return None

    def _screen(self, frames: list[bytes]) -> tuple[bool, list[bytes] | None]:
        """Whether the request is refused before decoding, and the reply (``None``: none).

        Too few frames, or (API keys configured) no accepted key; the key frame is
        removed from ``frames``.
        """
        if len(frames) < 3:
            # Without a uid frame there is nothing to address a reply to.
            self.stats.malformed += 1
            if len(frames) == 2:
                return True, [
                    *frames,
                    *self._codec.error_frames(ErrorCode.BAD_REQUEST, "no op frame"),
                ]
            return True, None
        refusal = self._authenticate(frames)
        return refusal is not None, refusal

    def _authenticate(self, frames: list[bytes]) -> list[bytes] | None:
        """Check and strip the API key frame (in place); the refusal, or ``None`` to serve.

        Checked before anything is decoded: an unauthenticated peer gets no further.
        """
        key = None
        if is_key_frame(frames[2]):
            key = presented_key(frames.pop(2))
            if len(frames) < 3:
                self.stats.malformed += 1
                return frames[:2] + self._codec.error_frames(
                    ErrorCode.BAD_REQUEST, "no op frame after the API key frame"
                )
        if self._keys.accepts(key):
            return None
        self._keys.reject("zmq")
        self.stats.unauthorized += 1
        return frames[:2] + self._codec.error_frames(ErrorCode.UNAUTHORIZED, UNAUTHORIZED_MESSAGE)

    def _internal_error(self, frames: list[bytes], exc: Exception) -> list[bytes] | None:
        if len(frames) < 2:
            return None
        message = f"{type(exc).__name__}: {exc}"[:500]
        return frames[:2] + self._codec.error_frames(ErrorCode.INTERNAL, message)

    def _spec(self, op: str) -> OpSpec:
        if op in self.handlers:
            return OPS[op]
        if op in OPS or op in KNOWN_UNSUPPORTED:
            raise ProtocolError(
                ErrorCode.NOT_SUPPORTED,
                f"operation {op!r} is not served with this server's configuration",
            )
        raise ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown operation {op!r}")

    def _call(
        self,
        spec: OpSpec,
        context: RequestContext,
        args: list[Any],
        head: list[bytes],
        handler: Handler | None = None,
    ) -> list[bytes] | None:
        """Run the handler (or ``handler``) and build the reply; WouldBlock passes through."""
        try:
            result = (handler or self.handlers[spec.name])(context, *args)
        except WouldBlock:
            raise
        except RemoteError as exc:
            self.stats.errors += 1
            return head[:2] + self._codec.error_frames(exc.code, exc.message, spec.name)
        except Exception as exc:
            self.stats.errors += 1
            logger.exception("%s failed", spec.name)
            return head[:2] + self._codec.error_frames(
                ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}", spec.name
            )
        if spec.execution is Execution.STREAM:
            source: StreamSource = result
            self._streams.open(head, source)  # its sender sends the batches
            return None
        return head + self._codec.result_frames(spec, result)

    def _task(
        self, spec: OpSpec, context: RequestContext, args: list[Any], head: list[bytes]
    ) -> Callable[[], None]:
        def run() -> None:
            frames = self._call(spec, context, args, head)
            if frames is not None:
                self._push(frames)

        return run

    def _push(self, frames: list[bytes]) -> None:
        socket = getattr(self._local, "push", None)
        if socket is None:
            assert self._context is not None
            socket = self._context.socket(zmq.DEALER)
            socket.setsockopt(
                zmq.ROUTING_ID, self._secret + next(self._reply_ids).to_bytes(8, "big")
            )
            socket.setsockopt(zmq.LINGER, 1000)
            socket.connect(self._reply_address)
            self._local.push = socket
        send_frames(socket, frames)

    def _release_push(self) -> None:
        """Close this thread's reply socket (a stream's sender, before its thread ends)."""
        socket = getattr(self._local, "push", None)
        if socket is not None:
            socket.close(linger=1000)
            self._local.push = None


def describe_reply(frames: list[bytes]) -> tuple[str, str]:
    """The op name and request id of a reply ``[peer, uid, op, ...]``, for a log line.

    Never raises: a frame that does not decode is shown as ``?``.
    """
    uid = "?"
    op = "?"
    with contextlib.suppress(msgspec.DecodeError, ValueError, IndexError):
        uid = str(_UID_DECODER.decode(frames[1]))
    with contextlib.suppress(ProtocolError, IndexError):
        op = decode_op(frames[2])
    if op == ERROR_OP:
        with contextlib.suppress(msgspec.DecodeError, ValueError, IndexError):
            info = _ERROR_INFO_DECODER.decode(frames[3])
            op = f"{info.op or '?'} (error reply: {info.code})"
    return op, uid
