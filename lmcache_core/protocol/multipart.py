"""Multipart send and receive through pyzmq's compiled socket methods only.

pyzmq's ``send_multipart`` / ``recv_multipart`` are Python: per frame they build
an ``IntFlag`` (``SNDMORE | flags``) or convert ``RCVMORE`` to an enum, and go
through the Python ``send`` override. On a lookup's round trip that was about
15 us per message pair (an inproc micro-benchmark: 30 -> 15 us for five
frames), several percent of the server's GIL time under a py-spy profile. These
two functions call the compiled methods with plain ints; behaviour (errors,
timeouts, ``Again``) is the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import zmq
from zmq.backend import Socket as _CompiledSocket

SNDMORE = int(zmq.SNDMORE)
RCVMORE = int(zmq.RCVMORE)
ZERO_COPY_BYTES = 1 << 19
"""Frames at least this long are handed to ZeroMQ without a copy.

pyzmq's zero-copy send keeps the bytes alive until ZeroMQ's I/O thread is done
with them and releases them through its garbage-collection thread: per frame a
message to that thread and its wake-up. Below about 512 KiB that costs more than
the copy it saves (a loopback echo on the 2-core VM, interleaved, median of 8x500:
a 64-chunk key of 65,696 bytes 224 us copied and 251 us zero-copy, 256 KiB 282 and
341 us, 512 KiB 370 and 362 us; 1 MiB zero-copy ahead, 449 against 487 us)."""

# Unbound compiled methods; typed Any (pyzmq's stubs describe them as bound).
_send: Any = _CompiledSocket.send
_recv: Any = _CompiledSocket.recv
_get: Any = _CompiledSocket.get


def send_frames(socket: zmq.Socket[Any], frames: Sequence[bytes]) -> None:
    """Send ``frames`` as one multipart message (blocking, as the socket is set).

    Raises:
        zmq.ZMQError: As ``send_multipart`` (for example an unroutable peer on a
            ROUTER with ``ROUTER_MANDATORY``: then nothing was sent).
    """
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        _send(socket, frame, SNDMORE if index < last else 0, copy=len(frame) < ZERO_COPY_BYTES)


def recv_frames(socket: zmq.Socket[Any]) -> list[bytes]:
    """Receive one multipart message as bytes.

    Raises:
        zmq.Again: Nothing arrived within the socket's ``RCVTIMEO``.
    """
    parts: list[bytes] = [_recv(socket)]
    while _get(socket, RCVMORE):
        parts.append(_recv(socket))
    return parts
