"""``RawBlockL2Adapter`` on real files: persistence, recovery, corruption, capacity, I/O modes."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lmcache_l2_raw_block.adapter import (
    SLOT_HEADER,
    CheckpointPolicy,
    RawBlockL2Adapter,
    RawBlockLayout,
    build_raw_block,
)
from lmcache_l2_raw_block.block_file import O_DIRECT
from lmcache_l2_raw_block.config import RawBlockAdapterConfig

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import ObjectFormat
from lmcache_core.storage.l2.object_format import HEADER_SIZE, verify
from lmcache_core.testing.l2_conformance import empty_buffers, make_keys, make_payloads, wait

ALIGN = 4096
SLOT = 4 * ALIGN  # 12 KiB of payload per slot
META = 8 * ALIGN  # two containers of 16 KiB
MANUAL = CheckpointPolicy(periodic=False)


class Device:
    """Opens adapters over one file and closes every one it opened."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.opened: list[RawBlockL2Adapter] = []

    def open(
        self,
        *,
        slots: int = 8,
        policy: CheckpointPolicy = MANUAL,
        object_format: ObjectFormat = "framed",
        slot_bytes: int = SLOT,
        capacity_bytes: int | None = None,
        use_odirect: bool = False,
        max_io_bytes: int | None = None,
    ) -> RawBlockL2Adapter:
        adapter = RawBlockL2Adapter(
            RawBlockLayout(str(self.path), slot_bytes, meta_total_bytes=META),
            policy,
            device_bytes=META + slots * SLOT,
            capacity_bytes=capacity_bytes,
            object_format=object_format,
            use_odirect=use_odirect,
            max_io_bytes=max_io_bytes,
        )
        self.opened.append(adapter)
        adapter.start()
        return adapter

    def image(self) -> bytes:
        """The device's bytes now: what a crash at this moment would leave."""
        return self.path.read_bytes()

    def crash_back_to(self, image: bytes) -> None:
        """Put back an image taken earlier (the adapter using it must be closed)."""
        self.path.write_bytes(image)

    def flip(self, offset: int) -> None:
        with open(self.path, "r+b") as file:
            file.seek(offset)
            byte = file.read(1)[0]
            file.seek(offset)
            file.write(bytes([byte ^ 0xFF]))


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    made = Device(tmp_path / "device.img")
    yield made
    for adapter in made.opened:
        adapter.close()


def store(adapter: RawBlockL2Adapter, keys: list[ObjectKey], payloads: list[bytes]) -> list[bool]:
    return wait(adapter.submit_store(keys, payloads))


def load(adapter: RawBlockL2Adapter, keys: list[ObjectKey], sizes: list[int]) -> list[bytes | None]:
    buffers = empty_buffers(sizes)
    found = wait(adapter.submit_load(keys, buffers))
    return [bytes(b) if ok else None for b, ok in zip(buffers, found, strict=True)]


# -- persistence -------------------------------------------------------------------------------


def test_close_and_reopen_keeps_keys_bytes_usage_and_slots(device: Device) -> None:
    adapter = device.open()
    keys = make_keys(5)
    payloads = make_payloads([10, 5000, 12288, 1, 777])
    assert store(adapter, keys, payloads) == [True] * 5
    locations = {key: adapter.location_of(key) for key in keys}
    assert adapter.delete(keys[1:2]) == 1  # a freed slot below the bump counter
    usage = adapter.usage()
    adapter.close()
    assert adapter.checkpoints_written == 1

    again = device.open()
    kept = [keys[0], *keys[2:]]
    assert sorted(again.keys()) == sorted(kept)
    assert again.usage() == usage
    assert {key: again.location_of(key) for key in kept} == {key: locations[key] for key in kept}
    assert again.status()["recovered_objects"] == 4
    assert again.free_slots == 8 - 4
    assert load(again, kept, [10, 12288, 1, 777]) == [payloads[0], *payloads[2:]]
    # The freed slot is reused first, so the recovered objects stay intact.
    assert store(again, make_keys(1, seed=9), make_payloads([64])) == [True]
    freed = locations[keys[1]]
    assert freed is not None
    assert again.location_of(make_keys(1, seed=9)[0]) == (freed[0], 64)
    assert load(again, kept, [10, 12288, 1, 777]) == [payloads[0], *payloads[2:]]


def test_idle_checkpoint_survives_a_crash(device: Device) -> None:
    policy = CheckpointPolicy(interval_s=0.02, idle_quiet_s=0.05)
    adapter = device.open(policy=policy)
    keys = make_keys(3)
    payloads = make_payloads([100, 200, 300])
    assert store(adapter, keys, payloads) == [True] * 3
    deadline = time.monotonic() + 10
    while adapter.dirty and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not adapter.dirty and adapter.checkpoints_written == 1
    crashed = device.image()  # the process dies here: no close, no final checkpoint
    adapter.close()
    device.crash_back_to(crashed)
    again = device.open()
    assert sorted(again.keys()) == sorted(keys)
    assert load(again, keys, [100, 200, 300]) == payloads


def test_no_checkpoint_while_the_device_is_busy(device: Device) -> None:
    adapter = device.open(policy=CheckpointPolicy(interval_s=0.01, idle_quiet_s=30.0))
    assert store(adapter, make_keys(1), make_payloads([10])) == [True]
    time.sleep(0.3)
    assert adapter.dirty and adapter.checkpoints_written == 0
    adapter.close()  # close does not wait for quiet: it writes the final checkpoint
    assert adapter.checkpoints_written == 1


def test_objects_stored_after_the_last_checkpoint_are_lost_by_a_crash(device: Device) -> None:
    adapter = device.open()
    first, second = make_keys(1, seed=1), make_keys(1, seed=2)
    assert store(adapter, first, make_payloads([50])) == [True]
    assert adapter.checkpoint() is True
    assert adapter.checkpoint() is False  # nothing changed since
    assert store(adapter, second, make_payloads([60])) == [True]
    crashed = device.image()
    adapter.close()
    device.crash_back_to(crashed)
    again = device.open()
    assert again.keys() == first
    assert again.free_slots == 7  # the lost object's slot is free again


# -- recovery ----------------------------------------------------------------------------------


def test_corrupt_newest_checkpoint_falls_back_to_the_other(device: Device) -> None:
    adapter = device.open()
    older, newer = make_keys(1, seed=1), make_keys(1, seed=2)
    payloads = make_payloads([100, 200])
    assert store(adapter, older, payloads[:1]) == [True]
    assert adapter.checkpoint()  # seq 1 -> container 1
    assert store(adapter, newer, payloads[1:]) == [True]
    assert adapter.checkpoint()  # seq 2 -> container 0
    adapter.close()  # nothing changed: no third checkpoint
    assert adapter.checkpoints_written == 2
    device.flip(ALIGN + 10)  # a byte of container 0's payload: its CRC fails

    again = device.open()
    assert "seq 1" in again.recovery.reason
    assert again.keys() == older
    assert load(again, older, [100]) == payloads[:1]
    assert load(again, newer, [200]) == [None]


def test_corrupt_checkpoint_header_falls_back_too(device: Device) -> None:
    adapter = device.open()
    keys = make_keys(2)
    assert store(adapter, keys[:1], make_payloads([10])) == [True]
    assert adapter.checkpoint()  # seq 1 -> container 1
    assert store(adapter, keys[1:], make_payloads([20])) == [True]
    adapter.close()  # seq 2 -> container 0
    device.flip(20)  # inside container 0's seq field: the header no longer matches its CRC
    again = device.open()
    assert again.keys() == keys[:1]


def test_both_checkpoints_corrupt_starts_empty(device: Device) -> None:
    adapter = device.open()
    assert store(adapter, make_keys(1), make_payloads([10])) == [True]
    assert adapter.checkpoint()
    assert store(adapter, make_keys(1, seed=3), make_payloads([10])) == [True]
    adapter.close()
    device.flip(0)  # container 0's magic
    device.flip(META // 2)  # container 1's magic
    again = device.open()
    assert again.keys() == []
    assert again.recovery.reason == "no checkpoint"
    assert again.free_slots == 8


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"slot_bytes": 2 * SLOT}, "slot_bytes"),
        ({"object_format": "raw"}, "format"),
    ],
)
def test_checkpoint_with_another_layout_is_ignored(
    device: Device, change: dict[str, object], field: str
) -> None:
    adapter = device.open()
    keys = make_keys(2)
    assert store(adapter, keys, make_payloads([10, 20])) == [True, True]
    adapter.close()
    other = device.open(**change)  # type: ignore[arg-type]
    assert other.keys() == []
    assert field in other.recovery.reason and "ignored" in other.recovery.reason
    assert other.checkpoints_written == 1  # an empty index replaces the ignored one at once
    other.close()
    # The original layout does not get the old index back either: its slots may be reused.
    assert device.open().keys() == []


def test_slot_reused_by_another_key_before_a_crash_is_a_miss(device: Device) -> None:
    adapter = device.open()
    old, new = make_keys(1, seed=1), make_keys(1, seed=2)
    assert store(adapter, old, make_payloads([100], seed=1)) == [True]
    assert adapter.checkpoint()
    assert adapter.delete(old) == 1
    assert store(adapter, new, make_payloads([100], seed=2)) == [True]  # takes old's slot
    crashed = device.image()
    adapter.close()
    device.crash_back_to(crashed)

    again = device.open()  # the checkpoint still says old -> that slot
    assert again.keys() == old
    assert load(again, old, [100]) == [None]
    assert again.status()["corrupt_objects"] == 1
    assert again.keys() == [] and again.usage().used_bytes == 0  # dropped from the index
    assert again.free_slots == 8


def test_verify_on_load_drops_bad_slots_at_start(device: Device) -> None:
    adapter = device.open()
    keys = make_keys(3)
    assert store(adapter, keys, make_payloads([100, 100, 100])) == [True] * 3
    damaged = adapter.location_of(keys[1])
    assert damaged is not None
    adapter.close()
    device.flip(damaged[0] + 9)  # the slot identity
    again = device.open(policy=CheckpointPolicy(periodic=False, verify_on_load=True))
    assert sorted(again.keys()) == sorted([keys[0], keys[2]])
    assert again.status()["dropped_at_recovery"] == 1
    assert again.checkpoints_written == 1  # the trimmed index is checkpointed at once
    assert again.usage().used_bytes == 2 * (100 + HEADER_SIZE)


def test_load_checkpoint_on_init_false_starts_empty(device: Device) -> None:
    adapter = device.open()
    assert store(adapter, make_keys(2), make_payloads([1, 2])) == [True, True]
    adapter.close()
    again = device.open(policy=CheckpointPolicy(periodic=False, load_on_start=False))
    assert again.keys() == [] and again.free_slots == 8
    assert "load_checkpoint_on_init is false" in again.recovery.reason


def test_persist_false_keeps_nothing(device: Device) -> None:
    adapter = device.open(policy=CheckpointPolicy(periodic=False, persist=False))
    assert store(adapter, make_keys(2), make_payloads([1, 2])) == [True, True]
    adapter.close()
    assert adapter.checkpoints_written == 0
    assert device.open().keys() == []


# -- corruption --------------------------------------------------------------------------------


@pytest.mark.parametrize("object_format", ["framed", "raw"])
@pytest.mark.parametrize("byte", [0, 8, 16])  # magic, identity, length
def test_damaged_slot_header_is_a_miss(device: Device, object_format: str, byte: int) -> None:
    adapter = device.open(object_format=object_format)  # type: ignore[arg-type]
    keys = make_keys(2)
    payloads = make_payloads([500, 600])
    assert store(adapter, keys, payloads) == [True, True]
    location = adapter.location_of(keys[0])
    assert location is not None
    device.flip(location[0] + byte)
    assert load(adapter, keys, [500, 600]) == [None, payloads[1]]
    assert adapter.status()["corrupt_objects"] == 1
    assert adapter.keys() == keys[1:]


def test_flipped_frame_byte_in_the_slot_header_is_a_miss(device: Device) -> None:
    adapter = device.open()
    keys = make_keys(1)
    assert store(adapter, keys, make_payloads([500])) == [True]
    location = adapter.location_of(keys[0])
    assert location is not None
    device.flip(location[0] + SLOT_HEADER.size + HEADER_SIZE - 1)  # the frame's checksum
    assert load(adapter, keys, [500]) == [None]
    assert adapter.status()["corrupt_objects"] == 1


# -- capacity and slots ------------------------------------------------------------------------


def test_slots_bound_stores_also_after_a_restart(device: Device) -> None:
    adapter = device.open(slots=3)
    assert adapter.usage().capacity_bytes == 3 * (SLOT - ALIGN + HEADER_SIZE)
    keys = make_keys(5)
    payloads = make_payloads([100] * 5)
    # Small objects: the slots run out long before the bytes do.
    assert store(adapter, keys[:4], payloads[:4]) == [True, True, True, False]
    assert adapter.status()["no_free_slot"] == 1 and adapter.status()["errors"] == 1
    adapter.close()

    again = device.open(slots=3)
    assert again.free_slots == 0
    assert store(again, keys[4:], payloads[4:]) == [False]
    assert again.delete(keys[:1]) == 1
    assert store(again, keys[4:], payloads[4:]) == [True]
    assert load(again, keys[1:3] + keys[4:], [100] * 3) == payloads[1:3] + payloads[4:]


def test_bytes_capacity_holds_after_a_restart(device: Device) -> None:
    capacity = 2 * (5000 + HEADER_SIZE)
    adapter = device.open(capacity_bytes=capacity)
    keys = make_keys(3)
    assert store(adapter, keys, make_payloads([5000] * 3)) == [True, True, False]
    adapter.close()
    again = device.open(capacity_bytes=capacity)
    assert again.usage().used_bytes == capacity
    assert store(again, make_keys(1, seed=7), make_payloads([10])) == [False]
    assert again.free_slots == 6  # refused by bytes, not by slots


def test_object_larger_than_a_slot_fails(device: Device) -> None:
    adapter = device.open()
    keys = make_keys(2)
    limit = SLOT - ALIGN
    assert store(adapter, keys, make_payloads([limit + 1, limit])) == [False, True]
    assert adapter.keys() == keys[1:]
    assert adapter.free_slots == 7


def test_restore_moves_the_key_and_frees_the_old_slot(device: Device) -> None:
    adapter = device.open()
    keys = make_keys(1)
    first, second = make_payloads([50, 60])
    assert store(adapter, keys, [first]) == [True]
    old = adapter.location_of(keys[0])
    assert store(adapter, keys, [second]) == [True]
    new = adapter.location_of(keys[0])
    assert old is not None and new is not None and old[0] != new[0]
    assert adapter.free_slots == 7
    assert load(adapter, keys, [60]) == [second]


def test_a_slot_freed_during_a_load_waits_for_it(device: Device) -> None:
    adapter = device.open(slots=1)
    keys = make_keys(2)
    assert store(adapter, keys[:1], make_payloads([10])) == [True]
    entry = adapter.slots.borrow(keys[0])  # a load in progress
    assert entry is not None
    assert adapter.delete(keys[:1]) == 1
    assert store(adapter, keys[1:], make_payloads([10])) == [False]  # retired, not free
    adapter.slots.end_borrow(entry.slot)
    assert store(adapter, keys[1:], make_payloads([10])) == [True]


# -- the device --------------------------------------------------------------------------------


def test_new_file_is_created_preallocated(tmp_path: Path) -> None:
    path = tmp_path / "new.img"
    config = RawBlockAdapterConfig.model_validate(
        {
            "type": "raw_block",
            "device_path": str(path),
            "slot_bytes": SLOT,
            "meta_total_bytes": META,
            "capacity_bytes": META + 10 * SLOT,
            "use_odirect": False,
        }
    )
    adapter = build_raw_block(config)
    try:
        adapter.start()
        assert path.stat().st_size == META + 10 * SLOT
        assert path.stat().st_blocks * 512 >= META + 10 * SLOT  # blocks reserved, not sparse
        assert adapter.total_slots == 10
    finally:
        adapter.close()


def test_missing_file_without_a_capacity_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="capacity_bytes"):
        RawBlockL2Adapter(RawBlockLayout(str(tmp_path / "none.img"), SLOT, meta_total_bytes=META))
    assert not (tmp_path / "none.img").exists()


def test_device_too_small_for_a_slot_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no slot"):
        RawBlockL2Adapter(
            RawBlockLayout(str(tmp_path / "d.img"), SLOT, meta_total_bytes=META),
            device_bytes=META + SLOT - 1,
        )


def test_second_adapter_on_the_same_device_is_refused(device: Device) -> None:
    device.open()
    with pytest.raises(ValueError, match="in use"):
        device.open()


def test_existing_file_is_used_whole_when_no_capacity_is_given(device: Device) -> None:
    device.open(slots=5).close()
    adapter = RawBlockL2Adapter(RawBlockLayout(str(device.path), SLOT, meta_total_bytes=META))
    device.opened.append(adapter)
    assert adapter.total_slots == 5


def test_odirect_is_really_used_and_round_trips(device: Device) -> None:
    if not O_DIRECT:
        pytest.skip("no O_DIRECT on this platform")
    try:
        adapter = device.open(use_odirect=True, max_io_bytes=ALIGN)
    except ValueError as exc:
        pytest.skip(f"the test directory's file system refuses O_DIRECT: {exc}")
    assert fcntl.fcntl(adapter.file.fd, fcntl.F_GETFL) & O_DIRECT
    keys = make_keys(3)
    payloads = make_payloads([1, 4096, 12288])
    assert store(adapter, keys, payloads) == [True] * 3
    assert load(adapter, keys, [1, 4096, 12288]) == payloads
    adapter.close()
    assert load(device.open(use_odirect=True), keys, [1, 4096, 12288]) == payloads


def test_transfers_split_by_max_io_bytes(device: Device) -> None:
    adapter = device.open(max_io_bytes=ALIGN)
    keys = make_keys(1)
    payloads = make_payloads([12288])
    assert store(adapter, keys, payloads) == [True]
    assert load(adapter, keys, [12288]) == payloads


def test_an_index_too_large_for_a_container_keeps_the_previous_checkpoint(
    tmp_path: Path,
) -> None:
    path = tmp_path / "d.img"
    layout = RawBlockLayout(str(path), ALIGN * 2, header_bytes=ALIGN, meta_total_bytes=4 * ALIGN)
    adapter = RawBlockL2Adapter(layout, MANUAL, device_bytes=4 * ALIGN + 64 * 2 * ALIGN)
    adapter.start()
    first = make_keys(1, seed=1)
    assert store(adapter, first, make_payloads([10])) == [True]
    assert adapter.checkpoint()
    many = make_keys(60, seed=2)  # about 150 bytes each: more than a 4 KiB container holds
    assert store(adapter, many, make_payloads([10] * 60)) == [True] * 60
    adapter.close()
    assert adapter.checkpoint_errors == 1
    again = RawBlockL2Adapter(layout, MANUAL)
    try:
        again.start()
        assert again.keys() == first
    finally:
        again.close()


def test_get_into_fills_the_callers_frame_and_payload_parts(device: Device) -> None:
    adapter = device.open()
    keys = make_keys(1)
    payload = make_payloads([5000])[0]
    assert store(adapter, keys, [payload]) == [True]
    frame_part, payload_part = memoryview(bytearray(HEADER_SIZE)), memoryview(bytearray(5000))
    assert adapter._get_into(keys[0], [frame_part, payload_part])
    verify(keys[0], frame_part, payload_part)  # the frame kept in the slot header matches
    assert bytes(payload_part) == payload
    wrong = memoryview(bytearray(10))
    assert not adapter._get_into(keys[0], [wrong])
    assert bytes(wrong) == bytes(10)  # a size mismatch reads nothing
