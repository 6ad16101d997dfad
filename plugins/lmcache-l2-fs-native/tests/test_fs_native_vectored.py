"""Framed objects through the client's scatter-gather calls (``submit_batch_setv/getv``).

Stores write header and payload with one ``pwritev`` (no joined copy); loads for
the L2 tier (``buffers_are_scratch``) read straight into the caller's buffer and
verify it afterwards. Real files, buffered and ``O_DIRECT``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_fs_native.adapter import FsNativeL2Adapter
from lmcache_l2_fs_native.client import FsNativeClient

from lmcache_core.storage.l2.key_names import native_key_name
from lmcache_core.storage.l2.object_format import HEADER_SIZE
from lmcache_core.testing.l2_conformance import empty_buffers, make_keys, make_payloads, wait

SIZES = [1, 4096, 65536 + 7, 1 << 20]


class CountingClient(FsNativeClient):
    """The real client, counting which of its batch calls the bridge uses."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: dict[str, int] = {}

    def _count(self, op: str) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1

    def submit_batch_set(self, keys: list[str], buffers: list[memoryview]) -> int:
        self._count("set")
        return super().submit_batch_set(keys, buffers)

    def submit_batch_setv(self, keys: list[str], parts: list[list[memoryview]]) -> int:
        self._count("setv")
        return super().submit_batch_setv(keys, parts)

    def submit_batch_get(self, keys: list[str], buffers: list[memoryview]) -> int:
        self._count("get")
        return super().submit_batch_get(keys, buffers)

    def submit_batch_getv(self, keys: list[str], parts: list[list[memoryview]]) -> int:
        self._count("getv")
        return super().submit_batch_getv(keys, parts)


@pytest.fixture(params=[False, True], ids=["buffered", "odirect"])
def adapter(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    client = CountingClient(tmp_path, num_workers=2, use_odirect=request.param)
    adapter = FsNativeL2Adapter(client)
    adapter.buffers_are_scratch = True  # as the L2 tier uses it
    adapter.start()
    yield adapter
    adapter.close()


def test_framed_objects_move_as_parts_and_round_trip(adapter: Any) -> None:
    keys, payloads = make_keys(len(SIZES)), make_payloads(SIZES)
    assert wait(adapter.submit_store(keys, payloads)) == [True] * len(SIZES)
    for key, payload in zip(keys, payloads, strict=True):
        data = adapter.client.path_of(native_key_name(key)).read_bytes()
        assert len(data) == HEADER_SIZE + len(payload) and data[HEADER_SIZE:] == payload
    buffers = empty_buffers(SIZES)
    assert wait(adapter.submit_load(keys, buffers)) == [True] * len(SIZES)
    assert [bytes(buffer) for buffer in buffers] == payloads
    assert adapter.client.calls == {"setv": 1, "getv": 1}


def test_a_corrupt_object_read_into_scratch_is_still_a_miss(adapter: Any) -> None:
    keys, payloads = make_keys(2), make_payloads([5000, 5000])
    assert wait(adapter.submit_store(keys, payloads)) == [True, True]
    path = adapter.client.path_of(native_key_name(keys[0]))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    buffers = empty_buffers([5000, 5000])
    assert wait(adapter.submit_load(keys, buffers)) == [False, True]
    assert bytes(buffers[1]) == payloads[1]
    assert adapter.status()["corrupt_objects"] == 1


def test_without_scratch_buffers_loads_stage_and_leave_failures_untouched(tmp_path: Path) -> None:
    client = CountingClient(tmp_path)
    adapter = FsNativeL2Adapter(client)
    adapter.start()
    try:
        keys = make_keys(1)
        assert wait(adapter.submit_store(keys, make_payloads([100]))) == [True]
        buffers = empty_buffers([100])
        assert wait(adapter.submit_load(keys, buffers)) == [True]
        assert client.calls == {"setv": 1, "get": 1}
    finally:
        adapter.close()
