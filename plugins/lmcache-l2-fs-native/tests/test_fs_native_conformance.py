"""The L2 adapter conformance suite, run against ``fs_native`` on a real directory."""

from __future__ import annotations

from pathlib import Path

from lmcache_l2_fs_native.adapter import FsNativeL2Adapter
from lmcache_l2_fs_native.client import FsNativeClient

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1, ObjectFormat
from lmcache_core.storage.l2.key_names import native_key_name
from lmcache_core.testing.l2_conformance import L2AdapterConformance


def _adapter(
    tmp_path: Path, capacity_bytes: int, object_format: ObjectFormat, *, odirect: bool
) -> FsNativeL2Adapter:
    client = FsNativeClient(tmp_path, num_workers=3, relative_tmp_dir=".tmp", use_odirect=odirect)
    return FsNativeL2Adapter(client, capacity_bytes=capacity_bytes, object_format=object_format)


class TestFsNativeConformance(L2AdapterConformance):
    """Framed and raw objects through the eventfd bridge, buffered I/O."""

    odirect = False

    def make_adapter(
        self, tmp_path: Path, *, capacity_bytes: int = 0, object_format: ObjectFormat = "framed"
    ) -> L2AdapterV1:
        return _adapter(tmp_path, capacity_bytes, object_format, odirect=self.odirect)

    def corrupt(self, adapter: L2AdapterV1, key: ObjectKey) -> bool:
        assert isinstance(adapter, FsNativeL2Adapter)
        path = adapter.client.path_of(native_key_name(key))
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
        return True

    def reopen(self, adapter: L2AdapterV1, tmp_path: Path) -> L2AdapterV1 | None:
        assert isinstance(adapter, FsNativeL2Adapter)
        # Not started: the suite calls start(), which rebuilds the index from the files.
        return _adapter(
            tmp_path, adapter.capacity_bytes, adapter.object_format, odirect=self.odirect
        )


class TestFsNativeODirectConformance(TestFsNativeConformance):
    """The same with O_DIRECT: unaligned objects (every framed one) go through the bounce buffer."""

    odirect = True
