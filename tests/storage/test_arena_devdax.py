"""The ``devdax`` arena: an L1 arena mapped from a Device-DAX device or, here, a file.

No Device-DAX device exists on the test machines, so the device is stood in for
by real files, on the disk and on /dev/shm (tmpfs, as a DAX namespace is memory):
the same ``mmap(MAP_SHARED)`` path, minus the device's 2 MiB alignment.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lmcache_core.storage.arena import DAX_ALIGN, Arena, ArenaError

MIB = 1 << 20


@pytest.fixture(params=["disk", "shm"])
def dax_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if request.param == "disk":
        return tmp_path / "dax0.0"
    path = Path("/dev/shm") / f"lmcache-test-dax-{os.getpid()}-{id(request)}"
    request.addfinalizer(lambda: path.unlink(missing_ok=True))
    return path


def test_the_arena_is_the_file(dax_file: Path) -> None:
    arena = Arena(4 * MIB, kind="devdax", path=dax_file, populate=True)
    try:
        assert (arena.kind, arena.size_bytes, arena.dram_bytes) == ("devdax", 4 * MIB, 0)
        assert arena.devdax_path == dax_file and arena.shm_name is None
        assert os.path.getsize(dax_file) == 4 * MIB  # grown, and allocated
        assert os.stat(dax_file).st_blocks * 512 >= 4 * MIB
        arena.view(3 * MIB, 5).copy_(torch.tensor(list(b"hello"), dtype=torch.uint8))
        with dax_file.open("rb") as handle:
            handle.seek(3 * MIB)
            assert handle.read(5) == b"hello"
    finally:
        arena.close()
    assert dax_file.exists()  # the device or file is the operator's: never deleted


def test_a_larger_file_keeps_its_size_and_bytes(tmp_path: Path) -> None:
    path = tmp_path / "dax"
    path.write_bytes(b"\x07" * (8 * MIB))
    arena = Arena(2 * MIB, kind="devdax", path=path)
    try:
        assert int(arena.tensor[0]) == 7 and arena.size_bytes == 2 * MIB
    finally:
        arena.close()
    assert os.path.getsize(path) == 8 * MIB


def test_hybrid_puts_dram_first_and_the_dax_after_it(dax_file: Path) -> None:
    arena = Arena(3 * MIB + 2 * MIB, kind="devdax", path=dax_file, dram_bytes=3 * MIB)
    try:
        base = arena.data_ptr()
        # The DRAM part grows (by less than the alignment) so that the DAX part is aligned.
        assert 3 * MIB <= arena.dram_bytes < 3 * MIB + DAX_ALIGN
        assert (base + arena.dram_bytes) % DAX_ALIGN == 0
        assert arena.size_bytes == arena.dram_bytes + 2 * MIB
        assert os.path.getsize(dax_file) == 2 * MIB
        arena.tensor[: arena.dram_bytes].fill_(0xAB)  # DRAM: never reaches the file
        arena.view(arena.dram_bytes, 4).copy_(torch.tensor([1, 2, 3, 4], dtype=torch.uint8))
        arena.tensor[-1] = 9
        data = dax_file.read_bytes()
        assert data[:4] == b"\x01\x02\x03\x04" and data[-1] == 9
        assert b"\xab" not in data
    finally:
        arena.close()


def test_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "dax0.0"
    with pytest.raises(ArenaError, match=f"cannot open the DAX path {missing}"):
        Arena(MIB, kind="devdax", path=missing)
    with pytest.raises(ArenaError, match="needs the path"):
        Arena(MIB, kind="devdax")
    with pytest.raises(ArenaError, match="only meaningful for kind 'devdax'"):
        Arena(MIB, kind="anonymous", path=tmp_path / "x")
    with pytest.raises(ArenaError, match="dram_bytes"):
        Arena(MIB, kind="devdax", path=tmp_path / "x", dram_bytes=MIB)


def test_a_device_that_cannot_be_mapped_is_an_error_naming_it() -> None:
    # A character device is mapped as it is (never grown); /dev/null refuses mmap.
    with pytest.raises(ArenaError, match=r"cannot map .* of the DAX path /dev/null"):
        Arena(MIB, kind="devdax", path="/dev/null")
