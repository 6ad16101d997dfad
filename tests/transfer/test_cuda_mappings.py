"""Mapping lifetime bookkeeping with a FAKE importer (no GPU here; CPU tensors as mappings)."""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Any

import pytest
import torch

from lmcache_core.transfer.cuda_handles import CudaTensorRecord, TensorView
from lmcache_core.transfer.cuda_mappings import MappingReleaser, MappingTable, WorkerMappings

UUID = "GPU-1234"


class FakeImporter:
    """FAKE allocation importer: a "mapping" is a CPU byte tensor; counts opens and closes."""

    def __init__(self, fail_on_open: int | None = None) -> None:
        self.opens: list[bytes] = []
        self.closes: list[bytes] = []
        self.open_threads: set[str] = set()
        self.close_threads: set[str] = set()
        self._fail_on_open = fail_on_open

    def key(self, record: CudaTensorRecord) -> Hashable:
        return record.allocation_key

    def open(self, record: CudaTensorRecord, ordinal: int) -> Any:
        if self._fail_on_open is not None and len(self.opens) == self._fail_on_open:
            raise RuntimeError("cudaIpcOpenMemHandle failed (fake)")
        self.opens.append(record.allocation_key)
        self.open_threads.add(threading.current_thread().name)
        return torch.zeros(record.alloc_offset + record.range_nbytes, dtype=torch.uint8)

    def tensor(self, mapping: Any, record: CudaTensorRecord, ordinal: int) -> torch.Tensor:
        view = record.view
        flat = mapping[record.alloc_offset : record.alloc_offset + record.range_nbytes]
        return flat.view(view.dtype).as_strided(view.shape, view.stride, view.storage_offset)

    def close(self, mapping: Any, record: CudaTensorRecord, ordinal: int) -> None:
        self.closes.append(record.allocation_key)
        self.close_threads.add(threading.current_thread().name)


def record(allocation: int, offset: int = 0, uuid: str = UUID) -> CudaTensorRecord:
    view = TensorView(torch.bfloat16, (2, 4, 8), (32, 8, 1), 0, uuid)
    return CudaTensorRecord("cuda_raw", view, None, bytes([allocation]) * 64, offset, view.nbytes)


def resolve(uuid: str) -> int:
    if uuid != UUID:
        raise ValueError(f"the worker's GPU {uuid!r} is not visible to this server")
    return 0


def test_nothing_is_imported_until_first_use_and_layers_share_an_allocation() -> None:
    importer = FakeImporter()
    table = MappingTable(importer)
    # Three layers in one allocation (at different offsets), one in another.
    worker = WorkerMappings(
        [record(1, 0), record(1, 128), record(1, 256), record(2)], table, resolve
    )
    assert not worker.imported and importer.opens == [] and len(table) == 0
    tensors = worker.tensors()
    assert len(tensors) == 4 and worker.ordinal == 0
    assert importer.opens == [b"\x01" * 64, b"\x02" * 64]
    assert table.references() == 4
    assert worker.tensors() is tensors  # no second import
    worker.release()
    assert sorted(importer.closes) == sorted(importer.opens) and len(table) == 0
    with pytest.raises(ValueError, match="released"):
        worker.tensors()
    worker.release()  # idempotent
    assert len(importer.closes) == 2


def test_two_workers_on_one_allocation_unmap_with_the_last() -> None:
    importer = FakeImporter()
    table = MappingTable(importer)
    a = WorkerMappings([record(7)], table, resolve)
    b = WorkerMappings([record(7)], table, resolve)
    a.tensors()
    b.tensors()
    assert importer.opens == [b"\x07" * 64]
    a.release()
    assert importer.closes == [] and len(table) == 1
    b.release()
    assert importer.closes == [b"\x07" * 64] and len(table) == 0


def test_a_failed_import_leaves_nothing_mapped() -> None:
    importer = FakeImporter(fail_on_open=1)
    table = MappingTable(importer)
    worker = WorkerMappings([record(1), record(2), record(3)], table, resolve)
    with pytest.raises(RuntimeError, match="fake"):
        worker.tensors()
    assert importer.closes == importer.opens == [b"\x01" * 64] and len(table) == 0
    assert not worker.imported


def test_an_unknown_gpu_fails_the_import_clearly_and_opens_nothing() -> None:
    importer = FakeImporter()
    worker = WorkerMappings([record(1, uuid="GPU-other")], MappingTable(importer), resolve)
    with pytest.raises(ValueError, match="not visible"):
        worker.tensors()
    assert importer.opens == []


def test_a_worker_that_never_transferred_releases_without_touching_the_driver() -> None:
    importer = FakeImporter()
    worker = WorkerMappings([record(1)], MappingTable(importer), resolve)
    worker.release()
    assert importer.opens == importer.closes == []


def test_the_releaser_runs_off_the_caller_thread_after_copies_drained() -> None:
    importer = FakeImporter()
    table = MappingTable(importer)
    worker = WorkerMappings([record(1)], table, resolve)
    worker.tensors()
    copies_done = threading.Event()
    releaser = MappingReleaser(drain_timeout=10)
    try:
        releaser.release(worker, copies_done.wait, "unregistered")  # returns at once
        assert not releaser.wait_idle(0.2)  # a copy is still in flight: still mapped
        assert importer.closes == [] and not worker.released
        copies_done.set()
        assert releaser.wait_idle(10)
        assert importer.closes == [b"\x01" * 64]
        assert importer.close_threads == {"lmcache-cuda-release"}
    finally:
        releaser.close()


def test_a_thousand_register_use_release_cycles_leave_nothing_behind() -> None:
    importer = FakeImporter()
    table = MappingTable(importer)
    releaser = MappingReleaser()
    try:
        for cycle in range(1000):
            worker = WorkerMappings([record(cycle % 5), record(cycle % 5, 128)], table, resolve)
            if cycle % 3:  # some workers die before their first transfer
                worker.tensors()
            releaser.release(worker, None, "reaped")
        assert releaser.wait_idle(30)
    finally:
        releaser.close()
    assert len(table) == 0 and table.references() == 0
    assert len(importer.opens) == len(importer.closes)
