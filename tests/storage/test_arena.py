"""The L1 arena: real shared memory, anonymous memory, laziness and cleanup."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from lmcache_core.storage.arena import SHM_DIR, SHM_PREFIX, Arena, ArenaError, shm_segment_name
from lmcache_core.storage.errors import L1ClosedError

MIB = 1 << 20

READER = """
import mmap, os, sys
path, offset, length = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_RDWR)
with mmap.mmap(fd, os.fstat(fd).st_size) as mm:
    sys.stdout.write(mm[offset:offset + length].hex())
    mm[0:4] = b"kids"  # written back for the parent to see
os.close(fd)
"""


def proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/self/status")


def allocated_bytes(path: Path) -> int:
    return os.stat(path).st_blocks * 512


@pytest.fixture
def unique_name() -> str:
    return f"test_{uuid.uuid4().hex[:12]}"


def test_shm_segment_is_mappable_by_another_process(unique_name: str) -> None:
    with Arena(2 * MIB, kind="shm", name=unique_name) as arena:
        assert arena.shm_name == SHM_PREFIX + unique_name
        assert arena.path is not None and arena.path.exists()
        payload = torch.arange(256, dtype=torch.uint8)
        arena.view(MIB + 100, 256).copy_(payload)
        child = subprocess.run(
            [sys.executable, "-c", READER, str(arena.path), str(MIB + 100), "256"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        assert bytes.fromhex(child.stdout) == bytes(range(256))
        assert bytes(arena.view(0, 4).tolist()) == b"kids"


def test_auto_name_and_prefix_rules(unique_name: str) -> None:
    with Arena(4096) as arena:
        assert arena.kind == "shm"
        assert arena.shm_name is not None and arena.shm_name.startswith(SHM_PREFIX)
        assert len(arena.shm_name) == len(SHM_PREFIX) + 32
    assert shm_segment_name(unique_name) == SHM_PREFIX + unique_name
    assert shm_segment_name(SHM_PREFIX + unique_name) == SHM_PREFIX + unique_name
    for bad in ("", "a/b", "nul\x00", "x" * 300):
        with pytest.raises(ArenaError):
            shm_segment_name(bad)


def test_close_unlinks_and_is_idempotent(unique_name: str) -> None:
    arena = Arena(MIB, name=unique_name)
    path = arena.path
    assert path is not None and path.exists()
    arena.close()
    assert not path.exists()
    assert arena.closed
    arena.close()
    with pytest.raises(L1ClosedError):
        _ = arena.tensor
    with pytest.raises(L1ClosedError):
        arena.view(0, 1)


def test_views_stay_valid_after_close(unique_name: str) -> None:
    arena = Arena(MIB, name=unique_name)
    view = arena.view(4096, 8)
    view.fill_(7)
    arena.close()
    # The mapping lives as long as a view refers to it: no dangling pointer.
    assert view.tolist() == [7] * 8
    view.fill_(9)
    assert int(view.sum()) == 72


def test_closing_unmaps_when_no_view_is_left(unique_name: str) -> None:
    arena = Arena(MIB, name=unique_name)
    path = str(arena.path)
    assert path in Path("/proc/self/maps").read_text()
    arena.close()
    assert path not in Path("/proc/self/maps").read_text()


def test_stale_segment_with_our_prefix_is_replaced(unique_name: str) -> None:
    stale = SHM_DIR / (SHM_PREFIX + unique_name)
    stale.write_bytes(b"stale data" * 100)
    try:
        with Arena(MIB, name=unique_name) as arena:
            assert arena.path == stale
            assert int(arena.view(0, 1000).sum()) == 0  # a fresh, zeroed segment
            assert stale.stat().st_size == MIB
        assert not stale.exists()
    finally:
        stale.unlink(missing_ok=True)


def test_foreign_segment_without_prefix_is_left_alone(unique_name: str) -> None:
    foreign = SHM_DIR / unique_name
    foreign.write_bytes(b"someone else's")
    try:
        with Arena(MIB, name=unique_name) as arena:
            assert arena.shm_name == SHM_PREFIX + unique_name
        assert foreign.read_bytes() == b"someone else's"
    finally:
        foreign.unlink(missing_ok=True)


def test_anonymous_arena() -> None:
    with Arena(4 * MIB, kind="anonymous") as arena:
        assert arena.shm_name is None and arena.path is None
        assert arena.tensor.dtype == torch.uint8 and arena.tensor.numel() == 4 * MIB
        view = arena.view(MIB, 16)
        view.copy_(torch.full((16,), 3, dtype=torch.uint8))
        # Zero copy: the view and the whole-arena tensor share memory.
        assert int(arena.tensor[MIB : MIB + 16].sum()) == 48
        assert view.data_ptr() == arena.data_ptr() + MIB


def test_bad_arguments() -> None:
    with pytest.raises(ArenaError):
        Arena(0, kind="anonymous")
    with pytest.raises(ArenaError):
        Arena(4096, kind="anonymous", name="x")
    with pytest.raises(ArenaError):
        Arena(4096, kind="bogus")  # type: ignore[arg-type]
    with Arena(4096, kind="anonymous") as arena, pytest.raises(ValueError):
        arena.view(4000, 200)


def test_shm_larger_than_dev_shm_is_refused() -> None:
    stats = os.statvfs(SHM_DIR)
    too_big = stats.f_bavail * stats.f_frsize + (1 << 40)
    with pytest.raises(ArenaError, match="free"):
        Arena(too_big, kind="shm")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_pinned_needs_cuda() -> None:
    with pytest.raises(ArenaError, match="CUDA"):
        Arena(4096, kind="pinned")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pinned_arena() -> None:
    with Arena(4 * MIB, kind="pinned") as arena:
        assert arena.tensor.is_pinned()
        arena.view(0, 8).fill_(5)
        on_gpu = arena.view(0, 8).cuda(non_blocking=False)
        assert on_gpu.tolist() == [5] * 8


def test_lazy_shm_commits_pages_only_when_touched(unique_name: str) -> None:
    before = proc_status_kib("RssShmem")
    with Arena(1024 * MIB, name=unique_name) as arena:
        assert arena.path is not None
        assert allocated_bytes(arena.path) < MIB
        assert proc_status_kib("RssShmem") - before < 8 * 1024
        arena.view(0, 64 * MIB).fill_(1)
        assert allocated_bytes(arena.path) >= 64 * MIB
        assert proc_status_kib("RssShmem") - before >= 60 * 1024


def test_lazy_anonymous_commits_pages_only_when_touched() -> None:
    before = proc_status_kib("RssAnon")
    with Arena(1024 * MIB, kind="anonymous") as arena:
        assert proc_status_kib("RssAnon") - before < 8 * 1024
        arena.view(512 * MIB, 32 * MIB).fill_(1)
        assert proc_status_kib("RssAnon") - before >= 30 * 1024


def test_eager_shm_commits_every_page_at_start(unique_name: str) -> None:
    before = proc_status_kib("RssShmem")
    with Arena(64 * MIB, name=unique_name, populate=True) as arena:
        assert arena.populated
        assert arena.path is not None
        assert allocated_bytes(arena.path) >= 64 * MIB
        assert proc_status_kib("RssShmem") - before >= 60 * 1024


def test_eager_anonymous_commits_every_page_at_start() -> None:
    before = proc_status_kib("RssAnon")
    with Arena(64 * MIB, kind="anonymous", populate=True) as arena:
        assert arena.populated
        assert proc_status_kib("RssAnon") - before >= 60 * 1024


def test_populate_falls_back_to_touching_each_page(monkeypatch: pytest.MonkeyPatch) -> None:
    import lmcache_core.storage.arena as arena_module

    # An advice value no kernel knows: madvise fails as on kernels before 5.14.
    monkeypatch.setattr(arena_module, "_MADV_POPULATE_WRITE", 0x7FFF)
    before = proc_status_kib("RssAnon")
    with Arena(32 * MIB, kind="anonymous", populate=True) as arena:
        assert arena.populated
        assert proc_status_kib("RssAnon") - before >= 30 * 1024
        assert int(arena.view(0, 32 * MIB).sum()) == 0
