"""Malformed requests over a raw DEALER socket: every one answered, none fatal."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmcache_core.client import MPClient
from lmcache_core.protocol.codec import encode_device_handle
from lmcache_core.protocol.errors import (
    ERROR_OP,
    BadRequestError,
    ErrorCode,
    ErrorInfo,
)
from lmcache_core.protocol.ops import KNOWN_UNSUPPORTED, LEGACY_IDS, OPS, Execution
from lmcache_core.protocol.types import CpuShmHandle, CudaHandle, TensorMetadata
from tests.data_path.conftest import Server, WorkerFactory
from tests.data_path.kv import (
    CHUNK,
    fresh_tokens,
    lookup,
    lookup_key,
    make_layout,
    pick_blocks,
    probe,
    randomize,
    request_id,
    snapshot,
    zero,
)
from tests.data_path.raw import RawClient

E = msgspec.msgpack.encode
ERROR_FRAME = E(ERROR_OP)
FUZZ_EXAMPLES = int(os.environ.get("DATA_PATH_FUZZ_EXAMPLES", "200"))
"""Hypothesis examples of the fuzz test (raise it for a longer hunt)."""
CODES = {code.value for code in ErrorCode}
OK = "ok"


def check_reply(request: list[bytes], reply: list[bytes]) -> ErrorInfo | None:
    """A well-formed reply to ``request``: its ErrorInfo if it is an error reply."""
    assert reply[0] == request[0]
    assert 2 <= len(reply) <= 3, reply
    if reply[1] == ERROR_FRAME:
        assert len(reply) == 3, reply
        info = msgspec.msgpack.decode(reply[2], type=ErrorInfo)
        assert info.code in CODES, info
        assert info.message
        return info
    assert len(request) >= 2 and reply[1] == request[1], "a normal reply echoes the op frame"
    return None


@pytest.fixture
def raw_client(main_server: Server) -> Iterator[RawClient]:
    client = RawClient(main_server.zmq_url)
    yield client
    # Exactly one reply per request: nothing else arrives.
    assert not client.socket.poll(100)
    assert client.stray == []
    client.close()


# -- table of malformed requests ------------------------------------------------------------


def key_dict(**changes: Any) -> dict[str, Any]:
    key: dict[str, Any] = {
        "model_name": "fuzz",
        "world_size": 1,
        "worker_id": None,
        "token_ids": list(range(1, 2 * CHUNK + 1)),
        "start": 0,
        "end": 2 * CHUNK,
        "request_id": "fuzz-req",
        "cache_salt": "",
        "request_configs": None,
        "num_kv_readers": 1,
    }
    key.update(changes)
    return key


def lookup_frames(**changes: Any) -> list[bytes]:
    return [E("lookup"), E(key_dict(**changes)), E(1)]


START_TOKENS = ([42355, 116, 97, 114, 116] * CHUNK)[: 2 * CHUNK]
"""Tokens whose bytes hold the ``start`` name (0xcd a5 73 't' 'a' 'r' 't'), many times."""


def fake_tail(padding: int) -> dict[str, Any]:
    """request_configs holding a whole fake key tail (start to configs), after ``padding``."""
    fake = E(
        {"start": 0, "end": 4, "request_id": "evil", "cache_salt": "", "request_configs": None}
    )
    return {"pad": "p" * padding, "x": fake[1:]}


def tokens_last(**changes: Any) -> bytes:
    """A key with the tokens as its map's last entry (our client's order), encoded."""
    key = key_dict(**changes)
    key["token_ids"] = key.pop("token_ids")
    return E(key)


def tokens_last_lookup(tail: bytes = b"", **changes: Any) -> list[bytes]:
    """A lookup whose key has the tokens last; ``tail``: bytes after the key."""
    return [E("lookup"), tokens_last(**changes) + tail, E(1)]


META = TensorMetadata("float16", (2, 4, 4, 2, 16), (2048, 512, 128, 16, 1), 0, "cpu")


def register_frames(handles: list[Any]) -> list[bytes]:
    return [E("register_kv_cache"), E(1), E(handles), E("m"), E(1), E("vllm"), E({}), E([])]


def engine_driven(**changes: Any) -> list[bytes]:
    payload = {
        "instance_id": 5,
        "model_name": "m",
        "world_size": 1,
        "block_size": 4,
        "num_layers": 2,
        "hidden_dim_size": 32,
        "dtype_str": "float16",
        "use_mla": False,
        "num_physical_slots": CHUNK,
    }
    payload.update(changes)
    return [E(14), E(payload)]


BAD = ErrorCode.BAD_REQUEST.value
UNKNOWN = ErrorCode.UNKNOWN_OP.value
UNSUPPORTED = ErrorCode.NOT_SUPPORTED.value
missing_request_id = key_dict()
del missing_request_id["request_id"]

CASES: list[tuple[str, list[bytes], str, Any]] = [
    # (id, frames after the uid, expected error code or OK, expected result when OK)
    ("one-frame", [], BAD, None),
    ("unknown-name", [E("no_such_op")], UNKNOWN, None),
    ("retired-id-11", [E(11)], UNKNOWN, None),
    ("unknown-id", [E(999)], UNKNOWN, None),
    ("negative-id", [E(-1)], UNKNOWN, None),
    ("huge-id", [E(2**64 - 1)], UNKNOWN, None),
    ("unsupported-name", [E("p2p_lookup_and_lock"), E([])], UNSUPPORTED, None),
    ("unsupported-id", [E(29), E([])], UNSUPPORTED, None),
    ("stream-bad-page", [E("subscribe_kv_events"), E(1), E("m"), E(0), E(0)], BAD, None),
    ("stream-bad-cursor", [E("subscribe_kv_events"), E(1), E("m"), E(-1), E(9)], BAD, None),
    ("float-op", [E(8.0)], BAD, None),
    ("nil-op", [E(None)], BAD, None),
    ("bool-op", [E(True)], BAD, None),
    ("list-op", [E([8])], BAD, None),
    ("map-op", [E({"op": "lookup"})], BAD, None),
    ("bin-op", [E(b"lookup")], BAD, None),
    ("raw-text-op", [b"lookup"], BAD, None),
    ("invalid-msgpack-op", [b"\xc1"], BAD, None),
    ("upstream-stream-ack", [b"", b"ack"], BAD, None),
    ("two-frames-missing-args", [E("lookup")], BAD, None),
    ("two-frames-missing-args-id", [E(8)], BAD, None),
    ("two-frames-noop", [E("noop")], OK, "OK"),
    ("two-frames-noop-id", [E(24)], OK, "OK"),
    ("extra-frame", [E("noop"), E(1)], BAD, None),
    # An id the server never saw: its first ping says "register again" (False).
    ("ping-huge-int", [E("ping"), E(2**64 - 1)], OK, False),
    ("ping-str", [E("ping"), E("x")], BAD, None),
    ("ping-trailing-bytes", [E("ping"), b"\x00\xff\xfe"], BAD, None),
    ("query-int", [E("query_prefetch_status"), E(5)], BAD, None),
    ("wait-str-timeout", [E("wait_prefetch_status"), E("r"), E("soon")], BAD, None),
    ("clear-str", [E("clear"), E("yes")], BAD, None),
    ("lookup-worker-id-ge-world-size", lookup_frames(worker_id=1), BAD, None),
    ("lookup-worker-id-negative", lookup_frames(worker_id=-1), BAD, None),
    ("lookup-end-past-tokens", lookup_frames(end=2 * CHUNK + 1), BAD, None),
    ("lookup-start-after-end", lookup_frames(start=CHUNK, end=CHUNK - 1), BAD, None),
    ("lookup-token-2^32", lookup_frames(token_ids=[2**32] * 2 * CHUNK), BAD, None),
    ("lookup-token-u64", lookup_frames(token_ids=[2**64 - 1] * 2 * CHUNK), BAD, None),
    ("lookup-token-negative", lookup_frames(token_ids=[-1] * 2 * CHUNK), BAD, None),
    ("lookup-token-str", lookup_frames(token_ids=["a"] * 2 * CHUNK), BAD, None),
    ("lookup-tokens-map", lookup_frames(token_ids={"a": 1}, end=0), BAD, None),
    # Tokens last: the server does not walk them at decode; they are checked when hashed.
    ("lookup-tokens-last-ok", tokens_last_lookup(), OK, None),
    ("lookup-tokens-last-trailing-bytes", tokens_last_lookup(b"\x01"), BAD, None),
    ("lookup-tokens-last-trailing-garbage", tokens_last_lookup(b"\xc1\xc1"), BAD, None),
    ("lookup-tokens-last-truncated", [E("lookup"), tokens_last()[:-3], E(1)], BAD, None),
    ("lookup-tokens-last-token-2^32", tokens_last_lookup(token_ids=[2**32] * 2 * CHUNK), BAD, None),
    ("lookup-tokens-last-token-str", tokens_last_lookup(token_ids=["a"] * 2 * CHUNK), BAD, None),
    ("lookup-tokens-last-map", tokens_last_lookup(token_ids={"a": 1}, end=0), BAD, None),
    ("lookup-tokens-last-end-past", tokens_last_lookup(end=2 * CHUNK + 1), BAD, None),
    # Upstream's order: the tokens' end is found from the "start" name after them (codec).
    (
        "lookup-upstream-order-start-bytes-in-tokens",
        lookup_frames(token_ids=START_TOKENS),
        OK,
        None,
    ),
    ("lookup-upstream-order-fake-tail-near", lookup_frames(request_configs=fake_tail(0)), OK, None),
    # Beyond the window a fake place is taken: the tokens then fail, never a wrong key.
    (
        "lookup-upstream-order-fake-tail-far",
        lookup_frames(request_configs=fake_tail(5000)),
        BAD,
        None,
    ),
    ("lookup-salt-at", lookup_frames(cache_salt="a@b"), BAD, None),
    ("lookup-salt-slash", lookup_frames(cache_salt="a/b"), BAD, None),
    ("lookup-salt-nul", lookup_frames(cache_salt="a\x00"), BAD, None),
    ("lookup-salt-long", lookup_frames(cache_salt="s" * 129), BAD, None),
    ("lookup-model-at", lookup_frames(model_name="m@x"), BAD, None),
    ("lookup-model-empty", lookup_frames(model_name=""), BAD, None),
    ("lookup-world-size-0", lookup_frames(world_size=0), BAD, None),
    ("lookup-world-size-256", lookup_frames(world_size=256), BAD, None),
    ("lookup-world-size-u64", lookup_frames(world_size=2**64 - 1), BAD, None),
    ("lookup-readers-negative", lookup_frames(num_kv_readers=-1), BAD, None),
    ("lookup-key-array", [E("lookup"), E([1, 2, 3]), E(1)], BAD, None),
    ("lookup-key-missing-field", [E("lookup"), E(missing_request_id), E(1)], BAD, None),
    ("lookup-tp-size-str", [E("lookup"), E(key_dict()), E("x")], BAD, None),
    ("register-no-tensors", register_frames([]), BAD, None),
    ("register-ext-type-2", register_frames([msgspec.msgpack.Ext(2, b"x")]), BAD, None),
    ("register-ext-garbage", register_frames([msgspec.msgpack.Ext(1, b"\xc1")]), BAD, None),
    (
        "register-cuda-handle-malformed",  # the event-sync flag is an int, not a bool
        register_frames(
            [
                encode_device_handle(
                    CudaHandle(version=1, metadata=META, handle=(0, b"h", 1, 0, b"", 0, b"", 0))
                )
            ]
        ),
        BAD,
        None,
    ),
    (
        "register-cuda-handle-without-cuda",  # well formed; this host has no CUDA device
        register_frames(
            [
                encode_device_handle(
                    CudaHandle(
                        version=1,
                        metadata=META,
                        handle=(0, b"h" * 64, 8192, 0, b"/ref", 0, b"e" * 64, True),
                    )
                )
            ]
        ),
        UNSUPPORTED,
        None,
    ),
    (
        "register-missing-segment",
        register_frames(
            [
                encode_device_handle(
                    CpuShmHandle(
                        version=1, metadata=META, shm_name="lmcache_no_such_seg", nbytes=4096
                    )
                )
            ]
        ),
        BAD,
        None,
    ),
    (
        "register-path-traversal",
        register_frames(
            [
                encode_device_handle(
                    CpuShmHandle(version=1, metadata=META, shm_name="../../etc/passwd", nbytes=4096)
                )
            ]
        ),
        BAD,
        None,
    ),
    ("engine-driven-bad-dtype", engine_driven(dtype_str="not_a_dtype"), BAD, None),
    ("engine-driven-dtype-path", engine_driven(dtype_str="nn.Module"), BAD, None),
    ("engine-driven-zero-layers", engine_driven(num_layers=0), BAD, None),
    ("engine-driven-odd-slots", engine_driven(num_physical_slots=5), BAD, None),
    (
        "engine-driven-block-not-dividing-chunk",
        engine_driven(block_size=5, num_physical_slots=None),
        BAD,
        None,
    ),
    ("report-bad-records", [E(23), E(1), E("m"), E([{"req_id": 1}])], BAD, None),
    ("report-ok", [E(23), E(1), E("m"), E([])], OK, None),
    ("commit-store-unprepared", [E(17), E(key_dict(worker_id=0)), E(7), E(b"")], OK, False),
    ("query-unknown-request", [E(9), E("never-looked-up")], OK, 0),
    ("end-unknown-session", [E(13), E("never-looked-up")], OK, None),
]


@pytest.mark.parametrize(
    ("frames", "expected", "result"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_malformed_request_gets_a_typed_reply(
    raw_client: RawClient, frames: list[bytes], expected: str, result: Any
) -> None:
    request = [raw_client.uid(), *frames]
    reply = raw_client.exchange(request)
    info = check_reply(request, reply)
    if expected == OK:
        assert info is None, info
        assert (msgspec.msgpack.decode(reply[2]) if len(reply) == 3 else None) == result
    else:
        assert info is not None and info.code == expected, info


def test_non_msgpack_uid_is_echoed(raw_client: RawClient) -> None:
    for uid in (b"\xc1\xc1", b"", b"x" * 100):
        reply = raw_client.exchange([uid, E("noop")])
        assert reply == [uid, E("noop"), E("OK")]


def test_window_errors_of_a_registered_worker(
    main_server: Server, main_client: MPClient, make_worker: WorkerFactory, raw_client: RawClient
) -> None:
    worker = make_worker(main_client, make_layout())
    iid = worker.instance_id
    tokens = fresh_tokens(2 * CHUNK)
    store = lambda key, ids: [E("store"), E(key), E(iid), E(ids), E(b"")]  # noqa: E731
    cases = [
        (store(key_dict(worker_id=0, token_ids=tokens, start=1), [[1] * 8]), BAD),
        (store(key_dict(worker_id=0, token_ids=tokens, end=CHUNK + 1), [[1] * 8]), BAD),
        (store(key_dict(worker_id=None, token_ids=tokens), [[1] * 8]), BAD),
        (store(key_dict(worker_id=0, token_ids=tokens), [1, 2]), BAD),
        (store(key_dict(worker_id=0, token_ids=tokens), [["a"]]), BAD),
        (store(key_dict(worker_id=0, token_ids=tokens), [[1, 2]]), [b"", False]),  # too few ids
        (store(key_dict(worker_id=0, token_ids=tokens), []), [b"", False]),
        # The tokens last (not walked at decode), bytes after them: refused when hashed.
        (
            [
                E("store"),
                tokens_last(worker_id=0, token_ids=tokens) + b"\x00",
                E(iid),
                E([[1] * 8]),
                E(b""),
            ],
            BAD,
        ),
        (
            [
                E("retrieve"),
                E(key_dict(worker_id=0, token_ids=tokens)),
                E(iid),
                E([[1] * 8]),
                E(b""),
                E(-1),
            ],
            BAD,  # a negative skip is the client's error, said as such
        ),
    ]
    for frames, expected in cases:
        request = [raw_client.uid(), *frames]
        reply = raw_client.exchange(request)
        info = check_reply(request, reply)
        if isinstance(expected, str):
            assert info is not None and info.code == expected, (frames, info)
        else:
            assert info is None, (frames, info)
            assert msgspec.msgpack.decode(reply[2]) == expected
    assert main_client.noop() == "OK"


def test_store_with_out_of_range_block_ids_is_a_bad_request(
    main_server: Server, main_client: MPClient, make_worker: WorkerFactory
) -> None:
    worker = make_worker(main_client, make_layout(num_blocks=16))
    tokens = fresh_tokens(CHUNK)
    with pytest.raises(BadRequestError, match="block id 99"):
        worker.store(worker.key(tokens, 0, CHUNK, request_id()), [1, 2, 3, 99])
    assert probe(main_client, tokens) == 0
    assert main_server.l1()["staged_objects"] == 0


def test_retrieve_with_out_of_range_block_ids_is_a_bad_request(
    main_server: Server, main_client: MPClient, make_worker: WorkerFactory
) -> None:
    worker = make_worker(main_client, make_layout(num_blocks=16))
    randomize(worker)
    tokens = fresh_tokens(CHUNK)
    assert worker.store(worker.key(tokens, 0, CHUNK, request_id()), [1, 2, 3, 4])
    rid = request_id("oob")
    assert lookup(main_client, worker.key(tokens, 0, CHUNK, rid, worker=False)) == 1
    locked = main_server.l1()["locked_objects"]
    zero(worker)
    with pytest.raises(BadRequestError, match="block id -1"):
        worker.retrieve(worker.key(tokens, 0, CHUNK, rid), [5, 6, 7, -1])
    for layer in worker.layers:
        assert not layer.view(-1).view(torch.uint8).any(), "a refused retrieve wrote blocks"
    # The refused retrieve still consumed the lookup's lock.
    assert main_server.l1()["locked_objects"] == locked - 1
    main_client.end_session(rid)


def test_failed_lookup_does_not_leave_a_running_job(main_client: MPClient) -> None:
    rid = request_id("badlookup")
    key = lookup_key([2**32 + 1] * CHUNK, CHUNK, rid)
    with pytest.raises(BadRequestError):
        main_client.lookup(key)
    started = time.monotonic()
    assert main_client.wait_prefetch_status(rid, 1.0) == 0
    assert time.monotonic() - started < 0.5
    assert main_client.query_prefetch_status(rid) == 0


DEEP = b"\x91" * 100_000 + b"\xc0"
"""A msgpack array nested 100 000 deep (msgspec's untyped decode: RecursionError)."""


def deep_lookup_key() -> bytes:
    """A lookup key whose ``request_configs`` (``dict[str, Any]``) nests 100 000 deep."""
    fields = key_dict()
    del fields["request_configs"]
    body = b"".join(E(name) + E(value) for name, value in fields.items())
    return bytes([0x80 | (len(fields) + 1)]) + body + E("request_configs") + b"\x81\xa1a" + DEEP


FATAL_FRAMES = {
    "op-frame-invalid-utf8": [b"\xa1\xff"],
    "op-frame-nested-100000": [DEEP],
    "lookup-request-configs-nested-100000": [E("lookup"), deep_lookup_key(), E(1)],
}


def test_undecodable_frames_do_not_kill_the_request_loop(victim_server: Server) -> None:
    raw = RawClient(victim_server.zmq_url)
    try:
        broken = []
        for name, frames in FATAL_FRAMES.items():
            request = [raw.uid(), *frames]
            try:
                info = check_reply(request, raw.exchange(request))
                assert info is not None and info.code == BAD, info
                noop = [raw.uid(), E("noop")]
                assert raw.exchange(noop) == [*noop, E("OK")]
            except AssertionError as exc:
                broken.append(f"{name}: {exc}")
                break  # the server is gone
        assert broken == [], broken
    finally:
        raw.close()


# -- property-based fuzzing ---------------------------------------------------------------------

INTS = st.one_of(st.integers(-3, 300), st.integers(-(2**63), 2**64 - 1))
TEXT = st.text(max_size=12)
VALUES = st.recursive(
    st.none() | st.booleans() | INTS | st.floats() | TEXT | st.binary(max_size=24),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
TOKENS = st.lists(st.integers(0, 100) | st.integers(0, 2**33) | INTS, max_size=3 * CHUNK)
KEYS = st.fixed_dictionaries(
    {
        "model_name": st.sampled_from(["fuzz", "", "a@b", "model"]) | TEXT,
        "world_size": st.integers(-1, 3) | INTS,
        "worker_id": st.none() | st.integers(-1, 3) | INTS,
        "token_ids": TOKENS | VALUES,
        "start": st.sampled_from([0, CHUNK, 2 * CHUNK]) | INTS,
        "end": st.sampled_from([0, CHUNK, 2 * CHUNK, 3 * CHUNK]) | INTS,
        "request_id": TEXT,
    },
    optional={
        "cache_salt": st.sampled_from(["", "a@b", "x/y", "s" * 200, "ok"]) | TEXT,
        "request_configs": st.none() | st.dictionaries(TEXT, VALUES, max_size=2),
        "num_kv_readers": st.integers(-2, 4) | INTS,
        "extra": VALUES,
    },
)
HASH_KEYS = st.fixed_dictionaries(
    {
        "model_name": st.sampled_from(["fuzz", "", "a@b", "model"]) | TEXT,
        "world_size": st.integers(-1, 3) | INTS,
        "worker_id": st.none() | st.integers(-1, 3) | INTS,
        "chunk_hashes": st.lists(st.binary(min_size=0, max_size=40), max_size=4) | VALUES,
        "start": st.sampled_from([0, CHUNK]) | INTS,
        "end": st.sampled_from([0, CHUNK, 2 * CHUNK, 3 * CHUNK]) | INTS,
        "request_id": TEXT,
        "hash_algorithm": st.sampled_from(["blake3", "sha256_cbor", "builtin", ""]) | TEXT,
    },
    optional={"hash_seed": st.none() | st.sampled_from(["", "0"]) | TEXT, "extra": VALUES},
)
BLOCK_IDS = st.lists(st.lists(st.integers(-2, 80) | INTS, max_size=12), max_size=3) | VALUES
HANDLES = st.lists(
    st.builds(msgspec.msgpack.Ext, st.integers(-128, 127), st.binary(max_size=24))
    | st.builds(
        lambda name, nbytes: encode_device_handle(
            CpuShmHandle(version=1, metadata=META, shm_name=name, nbytes=nbytes)
        ),
        st.sampled_from(["lmcache_nope", "../x", "a" * 300]) | TEXT.filter(bool),
        st.integers(0, 2**20),
    ),
    max_size=3,
)
REGISTRATIONS = st.fixed_dictionaries(
    {
        "instance_id": INTS,
        "model_name": TEXT,
        "world_size": INTS,
        "block_size": st.integers(-1, 20) | INTS,
        "num_layers": st.integers(-1, 4) | INTS,
        "hidden_dim_size": st.integers(-1, 64) | INTS,
        "dtype_str": st.sampled_from(["float16", "bfloat16", "int8", "nope", "Tensor", ""]) | TEXT,
        "use_mla": st.booleans() | VALUES,
    },
    optional={"num_physical_slots": st.none() | st.integers(-1, 64) | INTS},
)
MATCHES = (
    st.lists(
        st.fixed_dictionaries(
            {
                "old_st": st.integers(-2, 80) | INTS,
                "old_ed": st.integers(-2, 96) | INTS,
                "cur_st": st.integers(-2, 80) | INTS,
                "cur_ed": st.integers(-2, 96) | INTS,
                "hash": st.binary(max_size=40),
            }
        ),
        max_size=3,
    )
    | VALUES
)
# The wait itself may take its timeout: keep it short so every reply is due within 2 s.
WAIT_TIMEOUTS = (
    st.floats(-1.0, 0.3)
    | st.just(math.nan)
    | VALUES.filter(lambda v: not isinstance(v, (int, float)) or isinstance(v, bool))
)

ARGS: dict[str, list[st.SearchStrategy[Any]]] = {
    "register_kv_cache": [
        INTS,
        HANDLES,
        TEXT,
        INTS,
        TEXT,
        st.dictionaries(TEXT, VALUES, max_size=3),
        VALUES,
    ],
    "unregister_kv_cache": [INTS],
    "store": [KEYS, INTS, BLOCK_IDS, st.binary(max_size=16)],
    "retrieve": [KEYS, INTS, BLOCK_IDS, st.binary(max_size=16), INTS],
    "lookup": [KEYS, INTS],
    "lookup_hashes": [HASH_KEYS, INTS],
    "query_prefetch_status": [TEXT],
    "wait_prefetch_status": [TEXT, WAIT_TIMEOUTS],
    "free_lookup_locks": [KEYS, INTS],
    "end_session": [TEXT],
    "register_kv_cache_engine_driven_context": [REGISTRATIONS],
    "unregister_kv_cache_engine_driven_context": [INTS],
    "prepare_store": [KEYS, INTS],
    "commit_store": [KEYS, INTS, st.binary(max_size=64)],
    "prepare_retrieve": [KEYS, INTS],
    "commit_retrieve": [KEYS, INTS],
    "clear": [st.just("not a bool") | st.just(None) | INTS],  # never a real clear: it drops data
    "get_chunk_size": [],
    "ping": [st.none() | INTS],
    "report_block_allocation": [INTS, TEXT, st.lists(VALUES, max_size=3)],
    "noop": [],
    "get_experimental": [],
    "subscribe_kv_events": [INTS, TEXT, INTS, INTS],
    "cb_register_rope": [
        INTS,
        HANDLES,
        INTS,
        st.booleans() | VALUES,
        st.lists(INTS, max_size=3),
        st.lists(st.lists(INTS, max_size=3), max_size=2),
        st.lists(INTS, max_size=2),
        st.sampled_from(["", "fp8_e4m3", "int4"]) | TEXT,
    ],
    "cb_unregister_rope": [INTS],
    "cb_retrieve_pre_computed": [KEYS, MATCHES, BLOCK_IDS, INTS, st.binary(max_size=16)],
    "cb_unified_lookup": [KEYS, INTS],
    "cb_protocol_handshake": [INTS],
    "cb_reorder_plan": [KEYS, INTS, INTS],
    # The original CacheBlend (engine ``blend_legacy``), by name only.
    "cb_register_kv_cache": [INTS, HANDLES, TEXT, INTS],
    "cb_unregister_kv_cache": [INTS],
    "cb_store_pre_computed": [KEYS, INTS, INTS, st.binary(max_size=16)],
    "cb_lookup_pre_computed_v2": [KEYS],
    "cb_retrieve_pre_computed_v2": [KEYS, MATCHES, INTS, INTS, st.binary(max_size=16)],
    "cb_store_final": [KEYS, INTS, INTS, st.binary(max_size=16)],
}
assert set(ARGS) == set(OPS)
NAMES = sorted(OPS) + sorted(KNOWN_UNSUPPORTED)
NAME_TO_ID = {name: op_id for op_id, name in LEGACY_IDS.items()}
STREAM_OPS = {
    frame
    for name, spec in OPS.items()
    if spec.execution is Execution.STREAM
    for frame in (E(name), *([E(NAME_TO_ID[name])] if name in NAME_TO_ID else []))
}
"""Op frames of the streamed operations: a well-formed request opens a stream."""
JUNK_FRAME = st.binary(max_size=48) | VALUES.map(E)


@st.composite
def fuzz_requests(draw: st.DrawFn) -> list[bytes]:
    """Frames after the uid: mostly well-shaped requests with one thing wrong."""
    kind = draw(st.sampled_from(["shaped", "shaped", "shaped", "junk", "short"]))
    if kind == "short":
        return draw(st.sampled_from([[], [b""]]) | st.lists(JUNK_FRAME, max_size=1))
    if kind == "junk":
        op = draw(
            st.sampled_from(NAMES).map(E)
            | st.sampled_from(sorted(LEGACY_IDS)).map(E)
            | TEXT.map(E)
            | INTS.map(E)
            | VALUES.map(E)
            | st.binary(max_size=16)
        )
        return [op, *draw(st.lists(JUNK_FRAME, max_size=8))]
    name = draw(st.sampled_from(NAMES))
    use_id = name in NAME_TO_ID and draw(st.booleans())
    op = E(NAME_TO_ID[name] if use_id else name)
    templates = ARGS.get(name, [VALUES, VALUES])
    frames = [E(draw(strategy)) for strategy in templates]
    mutation = draw(st.sampled_from(["none", "none", "replace", "drop", "add"]))
    if mutation == "replace" and frames:
        index = draw(st.integers(0, len(frames) - 1))
        replacement = draw(JUNK_FRAME)
        if name == "clear" and replacement in (E(True), E(False)):
            replacement = E("no")
        if name == "wait_prefetch_status" and index == 1:
            replacement = E(0.0)
        frames[index] = replacement
    elif mutation == "drop" and frames:
        frames.pop(draw(st.integers(0, len(frames) - 1)))
    elif mutation == "add":
        frames.append(draw(JUNK_FRAME))
    return [op, *frames]


def test_fuzzed_requests_are_all_answered_and_harmless(
    main_server: Server, main_client: MPClient, make_worker: WorkerFactory, raw_client: RawClient
) -> None:
    layout = make_layout(num_blocks=32)
    worker = make_worker(main_client, layout)
    randomize(worker)
    tokens = fresh_tokens(3 * CHUNK)
    src = pick_blocks(12, num_blocks=32)
    expected = snapshot(worker, src)
    assert worker.store(worker.key(tokens, 0, len(tokens), request_id()), src)
    before = main_server.status()["requests"]
    answered = {"error": 0, "normal": 0}

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(frames=fuzz_requests())
    def fuzz(frames: list[bytes]) -> None:
        # Known to kill the server: test_undecodable_frames_do_not_kill_the_request_loop.
        if (
            frames
            and frames[0] in (E("unregister_kv_cache"), E(2))
            and E(worker.instance_id) in frames
        ):
            return  # would legitimately unregister our worker
        request = [raw_client.uid(), *frames]
        info = check_reply(request, raw_client.exchange(request))
        answered["error" if info is not None else "normal"] += 1
        if info is None and frames[0] in STREAM_OPS:
            streams.add(request[0])  # a well-formed subscription: its batches follow

    streams: set[bytes] = set()
    fuzz()
    assert sum(answered.values()) >= FUZZ_EXAMPLES // 2 and answered["error"] > 0, answered
    # A subscription the fuzzer opened streams batches under its uid, not stray replies.
    time.sleep(0.2)
    while raw_client.socket.poll(0):
        raw_client.stray.append(raw_client.socket.recv_multipart())
    batches = [m for m in raw_client.stray if m[0] in streams]
    assert all(m[1] in STREAM_OPS for m in batches), batches
    raw_client.stray = [m for m in raw_client.stray if m[0] not in streams]

    # Still serving, nothing crashed, the data stored before is intact.
    assert main_client.noop() == "OK"
    assert main_client.ping(worker.instance_id) is True
    health = main_server.full_status()["components"]
    assert all(component["ok"] for component in health.values()), health
    after = main_server.status()["requests"]
    assert after["malformed"] > before["malformed"]
    rid = request_id("after-fuzz")
    assert lookup(main_client, worker.key(tokens, 0, len(tokens), rid, worker=False)) == 3
    zero(worker)
    dst = pick_blocks(12, exclude=src, num_blocks=32)
    assert worker.retrieve(worker.key(tokens, 0, len(tokens), rid), dst)
    assert snapshot(worker, dst) == expected
    main_client.end_session(rid)
