"""The ``L2AdapterV1`` base class, through an in-test dict adapter double.

The double subclasses the conformance suite too, so the suite itself is tested
against the simplest possible backend (including the restart test: the double's
dict outlives the adapter, like files outlive a process).
"""

from __future__ import annotations

import array
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1, L2Usage, ObjectFormat
from lmcache_core.storage.l2.object_format import HEADER_SIZE
from lmcache_core.testing.l2_conformance import (
    L2AdapterConformance,
    empty_buffers,
    make_keys,
    make_payloads,
    untouched,
    wait,
)


class DictAdapterDouble(L2AdapterV1):
    """An adapter over a plain dict that may outlive it (its "backend")."""

    def __init__(
        self,
        backend: dict[ObjectKey, bytes] | None = None,
        *,
        capacity_bytes: int = 0,
        object_format: ObjectFormat = "framed",
    ) -> None:
        super().__init__("dict", capacity_bytes=capacity_bytes, object_format=object_format)
        self.backend: dict[ObjectKey, bytes] = {} if backend is None else backend
        self.backend_lock = threading.Lock()
        self.closed_backend = False

    def _put(self, key: ObjectKey, parts: Sequence[bytes | memoryview]) -> None:
        data = b"".join(parts)
        with self.backend_lock:
            self.backend[key] = data

    def _exists(self, key: ObjectKey) -> bool:
        with self.backend_lock:
            return key in self.backend

    def _get(self, key: ObjectKey, size: int) -> bytes | None:
        with self.backend_lock:
            return self.backend.get(key)

    def _remove(self, key: ObjectKey) -> bool:
        with self.backend_lock:
            return self.backend.pop(key, None) is not None

    def _close(self) -> None:
        self.closed_backend = True

    def _known_objects(self) -> dict[ObjectKey, int]:
        with self.backend_lock:
            return {key: len(data) for key, data in self.backend.items()}


class TestDictDoubleConformance(L2AdapterConformance):
    # The double's dict has no limit: the capacity tests check the base class's own refusal.

    def make_adapter(
        self, tmp_path: Path, *, capacity_bytes: int = 0, object_format: ObjectFormat = "framed"
    ) -> L2AdapterV1:
        return DictAdapterDouble(capacity_bytes=capacity_bytes, object_format=object_format)

    def corrupt(self, adapter: L2AdapterV1, key: ObjectKey) -> bool:
        assert isinstance(adapter, DictAdapterDouble)
        data = bytearray(adapter.backend[key])
        data[-1] ^= 0xFF
        adapter.backend[key] = bytes(data)
        return True

    def reopen(self, adapter: L2AdapterV1, tmp_path: Path) -> L2AdapterV1 | None:
        assert isinstance(adapter, DictAdapterDouble)
        return DictAdapterDouble(adapter.backend, object_format=adapter.object_format)


class FailingDouble(DictAdapterDouble):
    """Every backend call raises."""

    def _put(self, key: ObjectKey, parts: Sequence[bytes | memoryview]) -> None:
        raise OSError("disk on fire")

    def _exists(self, key: ObjectKey) -> bool:
        raise OSError("disk on fire")

    def _get(self, key: ObjectKey, size: int) -> bytes | None:
        raise OSError("disk on fire")

    def _remove(self, key: ObjectKey) -> bool:
        raise OSError("disk on fire")


@pytest.fixture
def double() -> Iterator[DictAdapterDouble]:
    adapter = DictAdapterDouble()
    adapter.start()
    yield adapter
    adapter.close()


def test_rejects_bad_construction_arguments() -> None:
    with pytest.raises(ValueError):
        DictAdapterDouble(capacity_bytes=-1)
    with pytest.raises(ValueError):
        L2AdapterV1.__init__(DictAdapterDouble(), "dict", num_workers=0)


def test_usage_fraction() -> None:
    assert L2Usage(0, 0).usage_fraction == -1.0
    assert L2Usage(25, 100).usage_fraction == 0.25


def test_framed_objects_carry_the_header(double: DictAdapterDouble) -> None:
    keys = make_keys(1)
    payloads = make_payloads([100])
    assert wait(double.submit_store(keys, payloads)) == [True]
    stored = double.backend[keys[0]]
    assert len(stored) == 100 + HEADER_SIZE
    assert stored[HEADER_SIZE:] == payloads[0]
    assert stored[:8] == b"LMCL2OB1"


def test_raw_objects_are_bare_bytes() -> None:
    adapter = DictAdapterDouble(object_format="raw")
    try:
        keys = make_keys(1)
        payloads = make_payloads([100])
        assert wait(adapter.submit_store(keys, payloads)) == [True]
        assert adapter.backend[keys[0]] == payloads[0]
    finally:
        adapter.close()


def test_start_seeds_usage_from_the_backend() -> None:
    keys = make_keys(2, salt="tenant-a")
    adapter = DictAdapterDouble({keys[0]: b"x" * 10, keys[1]: b"y" * 30})
    assert adapter.usage().used_bytes == 0
    adapter.start()
    try:
        assert adapter.usage() == L2Usage(40, 0, {"tenant-a": 40})
        assert sorted(adapter.keys()) == sorted(keys)
    finally:
        adapter.close()


def test_close_closes_the_backend_once(double: DictAdapterDouble) -> None:
    double.close()
    assert double.closed_backend
    double.closed_backend = False
    double.close()
    assert not double.closed_backend


def test_backend_failures_are_per_key_misses_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    adapter = FailingDouble()
    adapter.start()
    try:
        keys = make_keys(2)
        with caplog.at_level(logging.WARNING, logger="lmcache.l2"):
            assert wait(adapter.submit_store(keys, make_payloads([8, 8]))) == [False, False]
            assert wait(adapter.submit_lookup_and_lock(keys)) == [False, False]
            buffers = empty_buffers([8, 8])
            assert wait(adapter.submit_load(keys, buffers)) == [False, False]
            assert adapter.delete(keys) == 0
        assert all(untouched(buffer) for buffer in buffers)
        assert adapter.status()["errors"] == 8
        assert adapter.usage().used_bytes == 0
        assert adapter.keys() == []
        assert "store failed" in caplog.text
    finally:
        adapter.close()


def test_a_truncated_object_is_a_corrupt_miss(double: DictAdapterDouble) -> None:
    keys = make_keys(2)
    assert wait(double.submit_store(keys, make_payloads([100, 100]))) == [True, True]
    double.backend[keys[0]] = double.backend[keys[0]][:-1]
    double.backend[keys[1]] = double.backend[keys[1]][: HEADER_SIZE - 1]
    buffers = empty_buffers([100, 100])
    assert wait(double.submit_load(keys, buffers)) == [False, False]
    assert all(untouched(buffer) for buffer in buffers)
    assert double.status()["corrupt_objects"] == 2


def test_an_object_stored_under_another_key_is_a_miss(double: DictAdapterDouble) -> None:
    keys = make_keys(2)
    payloads = make_payloads([100, 100])
    assert wait(double.submit_store(keys, payloads)) == [True, True]
    double.backend[keys[1]] = double.backend[keys[0]]  # e.g. a file renamed by hand
    buffers = empty_buffers([100, 100])
    assert wait(double.submit_load(keys, buffers)) == [True, False]
    assert untouched(buffers[1])


def test_raw_format_cannot_detect_a_flipped_byte() -> None:
    # Why "framed" is the default: raw objects are byte-compatible, not protected.
    adapter = DictAdapterDouble(object_format="raw")
    try:
        keys = make_keys(1)
        assert wait(adapter.submit_store(keys, [b"\x00" * 16])) == [True]
        adapter.backend[keys[0]] = b"\x01" + b"\x00" * 15
        buffers = empty_buffers([16])
        assert wait(adapter.submit_load(keys, buffers)) == [True]
        assert bytes(buffers[0]) == b"\x01" + b"\x00" * 15
    finally:
        adapter.close()


# -- defects of the base class these tests found (fixed) --


def test_a_non_byte_memoryview_payload_round_trips(double: DictAdapterDouble) -> None:
    keys = make_keys(2)
    payload = memoryview(array.array("H", range(100)))  # 100 items, 200 bytes
    assert wait(double.submit_store(keys, [b"\x07" * 200, payload])) == [True, True]
    buffers = empty_buffers([200, 200])
    assert wait(double.submit_load(keys, buffers)) == [True, True]
    assert bytes(buffers[1]) == payload.tobytes()


def test_raw_usage_counts_bytes_of_a_non_byte_memoryview() -> None:
    adapter = DictAdapterDouble(object_format="raw")
    try:
        keys = make_keys(1)
        payload = memoryview(array.array("H", range(100)))
        assert wait(adapter.submit_store(keys, [payload])) == [True]
        assert adapter.usage().used_bytes == payload.nbytes == 200
    finally:
        adapter.close()


def test_a_wrong_size_buffer_does_not_count_a_healthy_object_as_corrupt(
    double: DictAdapterDouble,
) -> None:
    keys = make_keys(1)
    assert wait(double.submit_store(keys, make_payloads([100]))) == [True]
    assert wait(double.submit_load(keys, empty_buffers([99]))) == [False]
    assert double.status()["corrupt_objects"] == 0
