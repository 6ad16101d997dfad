"""The streamed operation over real sockets: credits, cancel, replacement, end, errors, bounds.

An in-process request server serves ``subscribe_kv_events`` over a log these
tests write to directly; our :class:`KVEventSubscriber` and a raw DEALER socket
(upstream's control frames exactly) read it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgspec
import pytest
import zmq

from lmcache_core.client.kv_events import KVEventSubscriber, StreamClosed
from lmcache_core.kv_events.log import KVEventLog
from lmcache_core.kv_events.service import KVEventService
from lmcache_core.protocol.errors import BadRequestError
from lmcache_core.protocol.kv_event_records import MEDIUM_L1, KVEventBatch
from lmcache_core.server.request_server import RequestServer
from tests.server_process import free_port

OP = msgspec.msgpack.encode("subscribe_kv_events")
H = [bytes([i]) * 8 for i in range(40)]


class Served:
    def __init__(self) -> None:
        self.log = KVEventLog(1000)
        self.service = KVEventService(self.log)
        port = free_port()
        self.server = RequestServer(
            "127.0.0.1", port, self.service.handlers(), affinity_workers=1, cpu_workers=1
        )
        self.url = f"tcp://127.0.0.1:{port}"
        self.server.start()


@pytest.fixture
def served() -> Iterator[Served]:
    served = Served()
    try:
        yield served
    finally:
        served.server.stop(2.0)


@pytest.fixture
def raw(served: Served) -> Iterator[zmq.Socket[bytes]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(served.url)
    try:
        yield socket
    finally:
        socket.close()
        context.term()


def subscribe(socket: zmq.Socket[bytes], uid: int, instance: int, cursor: int = 0) -> bytes:
    frame = msgspec.msgpack.encode(uid)
    args = [instance, "m", cursor, 10]
    socket.send_multipart([frame, OP, *(msgspec.msgpack.encode(a) for a in args)])
    return frame


def receive(socket: zmq.Socket[bytes], timeout: float = 5.0) -> list[bytes] | None:
    if not socket.poll(int(timeout * 1000)):
        return None
    return socket.recv_multipart()


def batch_of(reply: list[bytes]) -> KVEventBatch:
    assert len(reply) == 3, reply
    return msgspec.msgpack.decode(reply[2], type=KVEventBatch)


def test_first_batch_at_once_then_one_per_ack(served: Served, raw: zmq.Socket[bytes]) -> None:
    served.log.stored(MEDIUM_L1, "m", [H[0]])
    uid = subscribe(raw, 1, instance=7)
    first = batch_of(receive(raw) or [])
    assert first.enabled and first.next_cursor == 1 and len(first.events) == 1
    served.log.stored(MEDIUM_L1, "m", [H[1]])
    assert receive(raw, 0.5) is None  # no credit yet: nothing is sent
    raw.send_multipart([uid, b"", b"ack"])
    second = batch_of(receive(raw) or [])
    assert [r.block_hashes for r in second.events] == [[H[1]]] and second.next_cursor == 2
    raw.send_multipart([uid, b"", b"ack"])
    assert receive(raw, 0.5) is None  # a credit, but nothing new: still nothing
    served.log.stored(MEDIUM_L1, "other", [H[2]])
    assert receive(raw, 0.5) is None  # another model's record is not sent
    served.log.stored(MEDIUM_L1, "m", [H[3]])
    assert batch_of(receive(raw) or []).next_cursor == 4  # it skipped the other model's
    # cancel: the stream ends with a reply without payload.
    raw.send_multipart([uid, b"", b"cancel"])
    assert receive(raw) == [uid, OP]
    deadline = time.monotonic() + 5
    while served.server.streams_status()["open"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_second_subscription_of_the_instance_ends_the_first(
    served: Served, raw: zmq.Socket[bytes]
) -> None:
    first = subscribe(raw, 1, instance=7)
    assert batch_of(receive(raw) or []).enabled
    second = subscribe(raw, 2, instance=7)
    replies = [receive(raw), receive(raw)]
    assert [first, OP] in replies  # the first one's end
    assert any(r is not None and r[0] == second and len(r) == 3 for r in replies)
    assert served.service.status()["subscribers"] == 1


def test_our_subscriber_resumes_from_its_cursor(served: Served) -> None:
    for index in range(5):
        served.log.stored(MEDIUM_L1, "m", [H[index]])
    with KVEventSubscriber(served.url, 1, "m", cursor=3, max_events=10, timeout=5) as subscriber:
        batch = subscriber.next_batch()
        assert [r.seq for r in batch.events] == [4, 5] and not batch.lost
        served.log.removed(MEDIUM_L1, "m", [H[0], H[1]])
        batch = subscriber.next_batch()
        assert [(r.kind, r.block_hashes) for r in batch.events] == [("removed", [H[0], H[1]])]


def test_the_stream_ends_when_the_log_stops(served: Served) -> None:
    with KVEventSubscriber(served.url, 1, "m", timeout=5) as subscriber:
        subscriber.next_batch()
        served.log.close()
        with pytest.raises(StreamClosed):
            subscriber.next_batch()


def test_bad_arguments_are_a_typed_error(served: Served) -> None:
    subscriber = KVEventSubscriber(served.url, 1, "m", max_events=0, timeout=5)
    with subscriber, pytest.raises(BadRequestError, match="max_events"):
        subscriber.next_batch()
    assert served.server.streams_status()["open"] == 0


def test_streams_are_bounded(served: Served, raw: zmq.Socket[bytes]) -> None:
    served.server._streams.max_streams = 2  # a small bound for the test
    uids = [subscribe(raw, uid, instance=uid) for uid in (1, 2, 3)]
    replies = [receive(raw) for _ in range(4)]  # three first batches and one end
    assert [uids[0], OP] in replies  # the idlest (the first) made room
    assert served.server.streams_status()["ended_for_room"] == 1


def test_a_vanished_subscriber_ends_its_stream(served: Served) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(served.url)
    subscribe(socket, 1, instance=9)
    assert batch_of(receive(socket) or []).enabled
    socket.send_multipart([msgspec.msgpack.encode(1), b"", b"ack"])
    socket.close()
    context.term()
    time.sleep(0.3)  # the ROUTER notices the disconnect
    served.log.stored(MEDIUM_L1, "m", [H[0]])  # the next batch cannot be delivered
    deadline = time.monotonic() + 5
    while served.server.streams_status()["open"]:
        assert time.monotonic() < deadline, "the stream of a vanished client stayed open"
        time.sleep(0.05)
    assert served.server.stats.undeliverable >= 1


def test_an_ack_for_no_stream_is_a_typed_error(served: Served, raw: zmq.Socket[bytes]) -> None:
    uid = msgspec.msgpack.encode(5)
    raw.send_multipart([uid, b"", b"ack"])
    reply = receive(raw) or []
    assert reply[0] == uid and msgspec.msgpack.decode(reply[1]) == "__error__"
    assert msgspec.msgpack.decode(reply[2])["code"] == "bad_request"
    assert served.server.stats.stream_controls_unknown == 1
