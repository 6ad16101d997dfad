"""send_frames / recv_frames over a real loopback socket pair, both sides of the copy threshold."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import zmq

from lmcache_core.protocol.multipart import ZERO_COPY_BYTES, recv_frames, send_frames


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = context.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    for sock in (router, dealer):
        sock.setsockopt(zmq.RCVTIMEO, 10_000)
        sock.setsockopt(zmq.LINGER, 0)
    yield router, dealer
    router.close()
    dealer.close()
    context.term()


@pytest.mark.parametrize(
    "size", [0, 1, ZERO_COPY_BYTES - 1, ZERO_COPY_BYTES, ZERO_COPY_BYTES + 1, 3 * ZERO_COPY_BYTES]
)
def test_frames_arrive_whole_copied_or_not(
    pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]], size: int
) -> None:
    router, dealer = pair
    payload = os.urandom(size)
    sent = [b"uid", b"op", payload, b"tail"]
    send_frames(dealer, sent)
    identity, *received = recv_frames(router)
    assert received == sent
    send_frames(router, [identity, payload, b""])  # and back, through the ROUTER
    assert recv_frames(dealer) == [payload, b""]


def test_recv_frames_times_out_with_again(
    pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]],
) -> None:
    router, _ = pair
    router.setsockopt(zmq.RCVTIMEO, 50)
    with pytest.raises(zmq.Again):
        recv_frames(router)
