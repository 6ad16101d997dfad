"""``raw_block`` on a file never fills its disk: ``high_watermark`` and ``min_free_bytes``.

A file-backed device takes its disk space either when it is created or extended
(preallocated: then the limits are checked before allocating, and a file that
would break them is refused) or, for a sparse file, slot by slot as stores land
(then every admission measures the file system, as the ``fs`` adapter does). A
block device has no file system to protect: limits given for one are refused.

The file system is a real, small ``tmpfs`` mounted for the test (root needed, as
on CI and this machine; skipped, saying so, where mounting is not allowed). The
block device is a real loop device (skipped where ``losetup`` cannot make one).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from lmcache_l2_raw_block.adapter import CheckpointPolicy, RawBlockL2Adapter, RawBlockLayout
from lmcache_l2_raw_block.config import RawBlockAdapterConfig

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.disk_limits import DiskLimits
from lmcache_core.testing.small_disk import available_bytes, mounted_tmpfs

KIB = 1024
MIB = 1024 * KIB
DISK = 4 * MIB  # the tmpfs
ALIGN = 4096
SLOT = 64 * KIB + ALIGN  # 64 KiB of payload and a header block
META = 4 * ALIGN
OBJECT = 60 * KIB  # fits a framed slot
MANUAL = CheckpointPolicy(periodic=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "disk", DISK) as mount_point:
        yield mount_point


def _open(path: Path, size: int, limits: DiskLimits) -> RawBlockL2Adapter:
    adapter = RawBlockL2Adapter(
        RawBlockLayout(str(path), SLOT, meta_total_bytes=META, block_align=ALIGN),
        MANUAL,
        device_bytes=size,
        disk_limits=limits,
    )
    adapter.start()
    return adapter


def _fill(adapter: RawBlockL2Adapter, count: int) -> list[bool]:
    results: list[bool] = []
    for _ in range(count):
        key = ObjectKey(uuid.uuid4().bytes * 2, "model", 0, 0, "")
        results += adapter.submit_store([key], [os.urandom(OBJECT)]).result(30)
    return results


def test_a_file_that_would_break_the_limits_is_refused_before_it_is_allocated(
    small_disk: Path,
) -> None:
    path = small_disk / "cache.img"
    with pytest.raises(ValueError, match=r"min_free_bytes 2097152\); lower capacity_bytes"):
        _open(path, 3 * MIB, DiskLimits(min_free_bytes=2 * MIB))
    assert not path.exists()  # nothing half-made is left
    with pytest.raises(ValueError, match=r"high_watermark 0\.5"):
        _open(path, 3 * MIB, DiskLimits(high_watermark=0.5))
    adapter = _open(path, 1 * MIB, DiskLimits(min_free_bytes=2 * MIB))
    try:
        # Preallocated within the limits: writing its slots takes no more space.
        assert adapter.status()["allocated_bytes"] >= 1 * MIB
        assert all(_fill(adapter, 8))
        assert adapter.status()["refused_no_room"] == 0
    finally:
        adapter.close()


def test_a_sparse_file_is_gated_at_every_admission(small_disk: Path) -> None:
    path = small_disk / "sparse.img"
    with path.open("wb") as file:
        file.truncate(3 * MIB)  # larger than the room the limit leaves: holes fill as stores land
    keep = 2 * MIB
    adapter = _open(path, 0, DiskLimits(min_free_bytes=keep))
    try:
        results = _fill(adapter, 40)
        stored = sum(results)
        assert 0 < stored < 40 and results == [True] * stored + [False] * (40 - stored)
        assert available_bytes(small_disk) >= keep
        status = adapter.status()
        assert status["refused_no_room"] == 40 - stored and status["min_free_bytes"] == keep
        # After a restart the index comes back from the checkpoint and the room is
        # measured afresh: the limit still holds.
        adapter.close()
        adapter = _open(path, 0, DiskLimits(min_free_bytes=keep))
        assert len(adapter.keys()) == stored
        assert not any(_fill(adapter, 10))
        assert available_bytes(small_disk) >= keep
    finally:
        adapter.close()


def test_without_limits_nothing_is_measured(tmp_path: Path) -> None:
    adapter = _open(tmp_path / "plain.img", META + 4 * SLOT, DiskLimits())
    try:
        assert adapter._room_bytes() is None
        assert all(_fill(adapter, 3))
    finally:
        adapter.close()


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    backing = tmp_path / "loop.img"
    with backing.open("wb") as file:
        file.truncate(2 * MIB)
    done = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot make a loop device here: {done.stderr.strip()}")
    device = done.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


def test_a_block_device_refuses_disk_limits(loop_device: str) -> None:
    with pytest.raises(ValueError, match="is a block device: high_watermark and min_free_bytes"):
        _open(Path(loop_device), 0, DiskLimits(high_watermark=0.9))


def test_the_config_takes_the_limits_and_checks_them() -> None:
    base = {"type": "raw_block", "device_path": "/tmp/x.img", "slot_bytes": SLOT}
    config = RawBlockAdapterConfig.model_validate({**base, "min_free_bytes": 5})
    assert config.disk_limits() == DiskLimits(min_free_bytes=5)
    with pytest.raises(ValueError, match="less than or equal to 1"):
        RawBlockAdapterConfig.model_validate({**base, "high_watermark": 1.5})
