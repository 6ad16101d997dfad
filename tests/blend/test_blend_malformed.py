"""Crafted key frames against a real blend server: typed bad_request replies, not internal.

Our client sends a key's tokens as the map's last entry, and the server takes the
rest of the frame as the raw tokens without walking them (``protocol/codec.py``).
The default engine refuses such a frame with trailing bytes, truncated or
non-uint32 tokens as ``bad_request`` when it hashes the tokens; every blend
operation that reads a key's tokens must answer the same, on a server with a
registered worker and the reorder planner on (so each handler gets past its
early outs to the token decode).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from lmcache_core.client import MPClient
from lmcache_core.protocol.errors import ERROR_OP, ErrorCode, ErrorInfo
from tests.blend.rig import CHUNK, blend_server, rope_worker
from tests.data_path.raw import RawClient
from tests.server_process import LiveServer

pytestmark = pytest.mark.slow

E = msgspec.msgpack.encode
MODEL = "blend-malformed"
TOKENS = list(range(1, 2 * CHUNK + 1))


@pytest.fixture(scope="module")
def rig() -> Iterator[tuple[LiveServer, int]]:
    with (
        blend_server("--enable-blend-reorder") as live,
        MPClient(live.zmq_url, timeout=20.0) as client,
        rope_worker(client, model=MODEL) as worker,
    ):
        blocks = [list(range(1, 2 * CHUNK // 4 + 1))]
        # The same tokens stored and fingerprinted: a lookup of them would be a full hit.
        key = tokens_last(worker_id=0, request_id="stored")
        raw = RawClient(live.zmq_url)
        try:
            reply = raw.exchange(
                [raw.uid(), E("store"), key, E(worker.worker.instance_id), E(blocks), E(b"")],
                timeout=10.0,
            )
            assert msgspec.msgpack.decode(reply[2]) == [b"", True], reply
        finally:
            raw.close()
        yield live, worker.worker.instance_id


@pytest.fixture
def raw(rig: tuple[LiveServer, int]) -> Iterator[RawClient]:
    client = RawClient(rig[0].zmq_url)
    yield client
    assert not client.socket.poll(100), "exactly one reply per request"
    client.close()


def tokens_last(**changes: Any) -> bytes:
    """A key map with ``token_ids`` as its last entry (our client's order), encoded."""
    key: dict[str, Any] = {
        "model_name": MODEL,
        "world_size": 1,
        "worker_id": None,
        "start": 0,
        "end": 2 * CHUNK,
        "request_id": "malformed",
        "cache_salt": "",
        "request_configs": None,
        "num_kv_readers": 1,
    }
    key.update(changes)
    key["token_ids"] = key.pop("token_ids", TOKENS)
    return E(key)


BROKEN: dict[str, tuple[bytes, dict[str, Any]]] = {
    "trailing-byte": (b"\x01", {}),
    "trailing-garbage": (b"\xc1\xc1", {}),
    "token-2^32": (b"", {"token_ids": [2**32] * 2 * CHUNK}),
    "token-negative": (b"", {"token_ids": [-1] * 2 * CHUNK}),
    "token-str": (b"", {"token_ids": ["a"] * 2 * CHUNK}),
    "tokens-map": (b"", {"token_ids": {"a": 1}, "end": 0}),
}


def frames_of(op: str, key: bytes, instance_id: int) -> list[bytes]:
    """The op's frames after the uid around one key frame."""
    if op == "lookup":
        return [E(op), key, E(1)]
    if op == "cb_unified_lookup":
        return [E(op), key, E(1)]
    if op == "cb_reorder_plan":
        return [E(op), key, E(0), E(50)]
    if op == "store":
        return [E(op), key, E(instance_id), E([list(range(40, 48))]), E(b"")]
    assert op == "retrieve"
    return [E(op), key, E(instance_id), E([list(range(40, 48))]), E(b""), E(0)]


def reply_info(request: list[bytes], reply: list[bytes]) -> ErrorInfo | None:
    assert reply[0] == request[0] and 2 <= len(reply) <= 3, reply
    if reply[1] != E(ERROR_OP):
        return None
    return msgspec.msgpack.decode(reply[2], type=ErrorInfo)


OPS = ("lookup", "cb_unified_lookup", "cb_reorder_plan", "store", "retrieve")


@pytest.mark.parametrize("case", sorted(BROKEN))
@pytest.mark.parametrize("op", OPS)
def test_a_broken_tokens_last_key_is_a_bad_request(
    rig: tuple[LiveServer, int], raw: RawClient, op: str, case: str
) -> None:
    tail, changes = BROKEN[case]
    worker = {"worker_id": 0} if op in ("store", "retrieve") else {}
    key = tokens_last(request_id=f"{op}-{case}", **worker, **changes) + tail
    request = [raw.uid(), *frames_of(op, key, rig[1])]
    info = reply_info(request, raw.exchange(request, timeout=10.0))
    assert info is not None and info.code == ErrorCode.BAD_REQUEST.value, info


@pytest.mark.parametrize("op", OPS)
def test_the_same_key_without_the_fault_is_served(
    rig: tuple[LiveServer, int], raw: RawClient, op: str
) -> None:
    # The control: the frames above differ from a served request only in the fault.
    worker = {"worker_id": 0} if op in ("store", "retrieve") else {}
    key = tokens_last(request_id=f"{op}-ok", **worker)
    request = [raw.uid(), *frames_of(op, key, rig[1])]
    assert reply_info(request, raw.exchange(request, timeout=10.0)) is None
