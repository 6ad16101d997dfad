"""The ``fs`` adapter never fills its disk: a watermark and a minimum free space.

The file system is a real, small ``tmpfs`` mounted for the test (it needs root, as
CI and this machine have; the test is skipped, saying so, where mounting is not
allowed), so ``statvfs`` reports real usage and the refused stores really did not
fit.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from lmcache_l2_fs.adapter import FsL2Adapter, build_fs
from lmcache_l2_fs.config import FSAdapterConfig

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.disk_limits import DiskLimits
from lmcache_core.testing.small_disk import available_bytes, mounted_tmpfs

KIB = 1024
SIZE = 4 * 1024 * KIB  # the tmpfs
OBJECT = 64 * KIB


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "disk", SIZE) as mount_point:
        yield mount_point


def keys(n: int) -> list[ObjectKey]:
    return [ObjectKey(uuid.uuid4().bytes * 2, "model", 0, 0, "") for _ in range(n)]


def fill(adapter: FsL2Adapter, count: int) -> list[bool]:
    """Store ``count`` objects one batch at a time; per-object success."""
    results: list[bool] = []
    for key in keys(count):
        results += adapter.submit_store([key], [bytes(OBJECT)]).result(30)
    return results


def test_min_free_bytes_is_kept(small_disk: Path) -> None:
    keep = 1024 * KIB
    config = FSAdapterConfig.model_validate(
        {"type": "fs", "base_path": str(small_disk / "cache"), "min_free_bytes": keep}
    )
    adapter = build_fs(config)
    try:
        results = fill(adapter, 80)  # 5 MiB offered to a 4 MiB disk
        stored = sum(results)
        assert 0 < stored < 80 and results == [True] * stored + [False] * (80 - stored)
        assert available_bytes(small_disk) >= keep
        assert available_bytes(small_disk) < keep + 2 * (OBJECT + 4 * KIB)  # it used the rest
        status = adapter.status()
        assert status["refused_no_room"] == 80 - stored and status["errors"] == 0
        assert status["min_free_bytes"] == keep
        # Room comes back when objects go: the next store fits again.
        adapter.delete(adapter.keys()[:4])
        assert fill(adapter, 1) == [True]
    finally:
        adapter.close()


def test_high_watermark_is_kept(small_disk: Path) -> None:
    adapter = FsL2Adapter(small_disk / "cache", disk_limits=DiskLimits(high_watermark=0.5))
    try:
        results = fill(adapter, 80)
        assert 0 < sum(results) < 80
        stat = os.statvfs(small_disk)
        used = stat.f_blocks - stat.f_bfree
        assert used / (used + stat.f_bavail) <= 0.5
        assert adapter.status()["refused_no_room"] == 80 - sum(results)
    finally:
        adapter.close()


def test_a_batch_is_admitted_in_order_within_the_room(small_disk: Path) -> None:
    adapter = FsL2Adapter(small_disk / "cache", disk_limits=DiskLimits(min_free_bytes=SIZE // 2))
    try:
        batch = keys(60)
        results = adapter.submit_store(batch, [bytes(OBJECT)] * 60).result(30)
        stored = sum(results)
        # Stores in flight count against the room: the first ones fit, the rest are refused.
        assert 0 < stored < 60 and results == [True] * stored + [False] * (60 - stored)
        assert available_bytes(small_disk) >= SIZE // 2
    finally:
        adapter.close()


def test_no_limits_means_no_statvfs_gate(tmp_path: Path) -> None:
    adapter = FsL2Adapter(tmp_path / "cache")
    try:
        assert adapter.disk_limits.room(tmp_path) is None
        assert fill(adapter, 3) == [True] * 3
    finally:
        adapter.close()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"high_watermark": 0}, "greater than 0"),
        ({"high_watermark": 1.5}, "less than or equal to 1"),
        ({"min_free_bytes": -1}, "greater than or equal to 0"),
        ({"min_free_byte": 1}, "Extra inputs are not permitted"),
    ],
)
def test_bad_limits_are_refused_naming_the_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FSAdapterConfig.model_validate({"type": "fs", "base_path": "/tmp/x", **fields})
