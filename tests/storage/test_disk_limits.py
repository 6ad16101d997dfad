"""The disk-limit arithmetic on ``statvfs`` results (what ``df`` reports)."""

from __future__ import annotations

import os

from lmcache_core.storage.l2.disk_limits import DiskLimits

BLOCK = 4096


def stat(total: int, free: int, available: int) -> os.statvfs_result:
    """A file system of ``total`` blocks, ``free`` of them free, ``available`` to users."""
    return os.statvfs_result((BLOCK, BLOCK, total, free, available, 0, 0, 0, 0, 255, 0))


def test_min_free_bytes_leaves_that_much_available() -> None:
    limits = DiskLimits(min_free_bytes=10 * BLOCK)
    assert limits.room_of(stat(100, 50, 50)) == 40 * BLOCK
    assert limits.room_of(stat(100, 5, 5)) == 0  # already below: no room, never negative


def test_the_watermark_is_dfs_used_fraction_root_reserve_excluded() -> None:
    limits = DiskLimits(high_watermark=0.8)
    # 100 blocks, 40 used, 60 free of which 50 available to users: df says 40 / 90 used.
    assert limits.room_of(stat(100, 60, 50)) == int(0.8 * 90 * BLOCK) - 40 * BLOCK
    assert limits.room_of(stat(100, 10, 10)) == 0


def test_the_tighter_limit_wins_and_none_means_unlimited() -> None:
    both = DiskLimits(high_watermark=0.9, min_free_bytes=30 * BLOCK)
    assert both.room_of(stat(100, 50, 50)) == 20 * BLOCK  # min free is tighter than 90 %
    assert both.enabled and not DiskLimits().enabled
    assert DiskLimits().room("/") is None
