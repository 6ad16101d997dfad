"""A bare ZeroMQ DEALER client that sends any frames."""

from __future__ import annotations

import itertools
import time

import msgspec
import zmq

REPLY_TIMEOUT = 2.0
"""Every request must be answered within this (seconds)."""


class RawClient:
    """A bare DEALER socket: sends any frames, waits for the reply with the same uid frame."""

    def __init__(self, url: str) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(url)
        self._uids = itertools.count(10_000_000)
        self.stray: list[list[bytes]] = []

    def uid(self) -> bytes:
        return msgspec.msgpack.encode(next(self._uids))

    def send(self, frames: list[bytes]) -> None:
        self.socket.send_multipart(frames)

    def receive(self, uid: bytes, timeout: float = REPLY_TIMEOUT) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.socket.poll(max(1, int(remaining * 1000))):
                raise AssertionError(f"no reply within {timeout} s")
            reply = self.socket.recv_multipart()
            if reply[0] == uid:
                return reply
            self.stray.append(reply)

    def exchange(self, frames: list[bytes], timeout: float = REPLY_TIMEOUT) -> list[bytes]:
        """Send ``frames`` (uid first) and return the matching reply."""
        self.send(frames)
        try:
            return self.receive(frames[0], timeout)
        except AssertionError:
            raise AssertionError(f"no reply within {timeout} s to {frames!r:.300}") from None

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()
