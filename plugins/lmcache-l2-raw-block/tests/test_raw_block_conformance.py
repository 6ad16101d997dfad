"""The L2 adapter conformance suite, run against ``RawBlockL2Adapter`` on real files."""

from __future__ import annotations

from pathlib import Path

import pytest
from lmcache_l2_raw_block.adapter import CheckpointPolicy, RawBlockL2Adapter, RawBlockLayout

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1, ObjectFormat
from lmcache_core.testing.l2_conformance import L2AdapterConformance

SLOT = 34 * 4096  # the suite's largest payload (128 KiB) plus a 4 KiB slot header
META = 64 * 4096  # two containers of 128 KiB: the suite's largest index fits
DEVICE = META + 128 * SLOT  # 128 slots (the concurrency test stores 96 objects)


def open_raw_block(
    path: Path,
    *,
    capacity_bytes: int | None,
    object_format: ObjectFormat,
    use_odirect: bool = False,
) -> RawBlockL2Adapter:
    """An adapter over ``path`` (created and preallocated to ``DEVICE`` bytes)."""
    return RawBlockL2Adapter(
        RawBlockLayout(str(path), SLOT, meta_total_bytes=META),
        CheckpointPolicy(periodic=False),
        device_bytes=DEVICE,
        capacity_bytes=capacity_bytes,
        object_format=object_format,
        use_odirect=use_odirect,
    )


def flip_last_payload_byte(adapter: RawBlockL2Adapter, key: ObjectKey) -> None:
    """Flip the last stored payload byte of ``key`` through the file, behind the adapter."""
    location = adapter.location_of(key)
    assert location is not None
    offset, length = location
    position = offset + adapter.layout.header_bytes + length - 1
    with open(adapter.layout.device_path, "r+b") as file:
        file.seek(position)
        byte = file.read(1)[0]
        file.seek(position)
        file.write(bytes([byte ^ 0xFF]))


class TestRawBlockConformance(L2AdapterConformance):
    """Buffered I/O (pwritev/preadv) on a preallocated file under ``tmp_path``."""

    use_odirect = False

    def make_adapter(
        self, tmp_path: Path, *, capacity_bytes: int = 0, object_format: ObjectFormat = "framed"
    ) -> L2AdapterV1:
        return open_raw_block(
            tmp_path / "device.img",
            capacity_bytes=capacity_bytes,
            object_format=object_format,
            use_odirect=self.use_odirect,
        )

    def corrupt(self, adapter: L2AdapterV1, key: ObjectKey) -> bool:
        assert isinstance(adapter, RawBlockL2Adapter)
        flip_last_payload_byte(adapter, key)
        return True

    def reopen(self, adapter: L2AdapterV1, tmp_path: Path) -> L2AdapterV1 | None:
        assert isinstance(adapter, RawBlockL2Adapter)
        return open_raw_block(
            tmp_path / "device.img",
            capacity_bytes=adapter.capacity_bytes,
            object_format=adapter.object_format,
            use_odirect=self.use_odirect,
        )


class TestRawBlockODirectConformance(TestRawBlockConformance):
    """The same with O_DIRECT: aligned bounce buffers for the unaligned payloads."""

    use_odirect = True

    @pytest.fixture(autouse=True)
    def _needs_odirect(self, tmp_path: Path) -> None:
        import os

        flag = getattr(os, "O_DIRECT", 0)
        probe = tmp_path / "probe"
        try:
            os.close(os.open(probe, os.O_RDWR | os.O_CREAT | flag))
        except OSError:
            pytest.skip(f"the file system of {tmp_path} refuses O_DIRECT")
        finally:
            probe.unlink(missing_ok=True)
        if not flag:
            pytest.skip("no O_DIRECT on this platform")
