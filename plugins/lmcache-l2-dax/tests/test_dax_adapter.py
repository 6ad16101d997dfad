"""``DaxL2Adapter`` on regular files: the conformance suite and the slot behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest
from lmcache_l2_dax.adapter import GIB, DaxL2Adapter, DaxRegion, build_dax
from lmcache_l2_dax.config import DaxAdapterConfig

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1, ObjectFormat
from lmcache_core.storage.l2.object_format import HEADER_SIZE
from lmcache_core.testing.l2_conformance import (
    L2AdapterConformance,
    empty_buffers,
    make_keys,
    make_payloads,
    wait,
)

SLOT = 1 << 18  # holds the suite's largest payload (128 KiB) plus the header
DEVICE_BYTES = 256 * SLOT  # 64 MiB, sparse


class TestDaxConformance(L2AdapterConformance):
    """Framed and raw objects in slots of a regular file under ``tmp_path``."""

    __test__ = True

    def make_adapter(
        self, tmp_path: Path, *, capacity_bytes: int = 0, object_format: ObjectFormat = "framed"
    ) -> L2AdapterV1:
        return DaxL2Adapter(
            [DaxRegion(str(tmp_path / "dax0.img"), DEVICE_BYTES)],
            slot_bytes=SLOT,
            capacity_bytes=capacity_bytes,
            object_format=object_format,
        )

    def corrupt(self, adapter: L2AdapterV1, key: ObjectKey) -> bool:
        assert isinstance(adapter, DaxL2Adapter)
        location = adapter.location_of(key)
        assert location is not None
        path, offset, length = location
        # Behind the adapter: through the file, which shares its pages with the mapping.
        with open(path, "r+b") as file:
            file.seek(offset + length - 1)
            byte = file.read(1)[0]
            file.seek(offset + length - 1)
            file.write(bytes([byte ^ 0xFF]))
        return True

    def reopen(self, adapter: L2AdapterV1, tmp_path: Path) -> L2AdapterV1 | None:
        return None  # the index is volatile, like upstream's


@pytest.fixture
def small(tmp_path: Path):  # type: ignore[no-untyped-def]
    adapter = DaxL2Adapter([DaxRegion(str(tmp_path / "d.img"), 4 * 4096)], slot_bytes=4096)
    adapter.start()
    yield adapter
    adapter.close()


def test_capacity_is_slots_times_slot_bytes(tmp_path: Path) -> None:
    adapter = DaxL2Adapter([DaxRegion(str(tmp_path / "d.img"), 10 * 4096 + 100)], slot_bytes=4096)
    try:
        assert adapter.total_slots == 10
        assert adapter.usage().capacity_bytes == 10 * 4096
        assert adapter.status()["free_slots"] == 10
    finally:
        adapter.close()


def test_slot_reuse_after_delete(small: DaxL2Adapter) -> None:
    keys = make_keys(5)
    payloads = make_payloads([100] * 5)
    assert wait(small.submit_store(keys[:4], payloads[:4])) == [True] * 4
    assert small.free_slots == 0
    # All slots taken: the fifth fails (one byte takes a whole slot).
    assert wait(small.submit_store(keys[4:], payloads[4:])) == [False]
    freed = small.location_of(keys[1])
    assert small.delete(keys[1:2]) == 1
    assert small.free_slots == 1
    assert wait(small.submit_store(keys[4:], payloads[4:])) == [True]
    assert small.location_of(keys[4]) == (freed[0], freed[1], 100 + HEADER_SIZE)  # type: ignore[index]
    buffers = empty_buffers([100] * 4)
    mine = [keys[0], keys[2], keys[3], keys[4]]
    assert wait(small.submit_load(mine, buffers)) == [True] * 4
    assert [bytes(b) for b in buffers] == [payloads[i] for i in (0, 2, 3, 4)]


def test_restore_uses_a_new_slot_and_frees_the_old(small: DaxL2Adapter) -> None:
    keys = make_keys(1)
    first, second = make_payloads([50, 60])
    assert wait(small.submit_store(keys, [first])) == [True]
    old = small.location_of(keys[0])
    assert wait(small.submit_store(keys, [second])) == [True]
    new = small.location_of(keys[0])
    assert old is not None and new is not None and old[1] != new[1]
    assert small.free_slots == 3
    buffers = empty_buffers([60])
    assert wait(small.submit_load(keys, buffers)) == [True]
    assert bytes(buffers[0]) == second


def test_freed_slot_waits_for_borrows(small: DaxL2Adapter) -> None:
    keys = make_keys(1)
    assert wait(small.submit_store(keys, make_payloads([10]))) == [True]
    # Two loads in progress borrow the slot.
    entry = small.slots.borrow(keys[0])
    assert entry is not None and small.slots.borrow(keys[0]) == entry
    assert small.delete(keys) == 1
    assert small.free_slots == 3  # retired, not free
    small.slots.end_borrow(entry.slot)
    assert small.free_slots == 3
    small.slots.end_borrow(entry.slot)
    assert small.free_slots == 4
    assert not small.slots.borrowed()


def test_object_larger_than_a_slot_fails(small: DaxL2Adapter) -> None:
    keys = make_keys(2)
    too_big = 4096 - HEADER_SIZE + 1
    assert wait(small.submit_store(keys, make_payloads([too_big, too_big - 1]))) == [False, True]
    assert small.keys() == keys[1:]
    assert small.free_slots == 3
    with pytest.raises(ValueError, match="does not fit"):
        small._put(keys[0], [b"x" * 4097])


def test_two_devices(tmp_path: Path) -> None:
    config = DaxAdapterConfig.model_validate(
        {
            "type": "dax",
            "slot_bytes": 4096,
            "devices": [
                {"device_path": str(tmp_path / "a.img"), "max_dax_size_gb": 2 * 4096 / GIB},
                {"device_path": str(tmp_path / "b.img"), "max_dax_size_gb": 3 * 4096 / GIB},
            ],
        }
    )
    adapter = build_dax(config)
    adapter.start()
    try:
        assert adapter.total_slots == 5
        assert adapter.usage().capacity_bytes == 5 * 4096
        keys = make_keys(5)
        payloads = make_payloads([1000 + i for i in range(5)])
        assert wait(adapter.submit_store(keys, payloads)) == [True] * 5
        paths = {adapter.location_of(key)[0] for key in keys}  # type: ignore[index]
        assert paths == {str(tmp_path / "a.img"), str(tmp_path / "b.img")}
        buffers = empty_buffers([1000 + i for i in range(5)])
        assert wait(adapter.submit_load(keys, buffers)) == [True] * 5
        assert [bytes(b) for b in buffers] == payloads
    finally:
        adapter.close()


def test_regular_file_is_created_at_the_configured_size(tmp_path: Path) -> None:
    path = tmp_path / "dax.img"
    assert not path.exists()
    config = DaxAdapterConfig.model_validate(
        {"type": "dax", "slot_bytes": 1 << 20, "device_path": str(path), "max_dax_size_gb": 0.0625}
    )
    adapter = build_dax(config)
    try:
        assert path.is_file()
        assert path.stat().st_size == GIB // 16
        assert adapter.total_slots == 64
    finally:
        adapter.close()


def test_existing_smaller_file_is_extended(tmp_path: Path) -> None:
    path = tmp_path / "dax.img"
    path.write_bytes(b"\0" * 100)
    adapter = DaxL2Adapter([DaxRegion(str(path), 8192)], slot_bytes=4096)
    try:
        assert path.stat().st_size == 8192
    finally:
        adapter.close()


def test_device_smaller_than_a_slot_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no slot"):
        DaxL2Adapter([DaxRegion(str(tmp_path / "d.img"), 1000)], slot_bytes=4096)


def test_hotplug_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dax.img"
    config = DaxAdapterConfig.model_validate(
        {
            "type": "dax",
            "slot_bytes": 4096,
            "device_path": str(path),
            "max_dax_size_gb": 1 / 1024,
            "hotplug_enabled": True,
        }
    )
    with pytest.raises(ValueError, match="hot-plug is not implemented"):
        build_dax(config)
    assert not path.exists()  # refused before anything was mapped
