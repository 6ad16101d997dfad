"""Lifetime of a worker's imported CUDA KV tensors (device-independent bookkeeping).

**Decision: handles are imported lazily, at the worker's first store or retrieve**, on the
worker's own affinity thread, not at registration. A worker that registers and dies during
warm-up (the most common upstream report: vLLM crashing in its first forward pass) leaves
nothing mapped, registration answers at once (an import can take tens of milliseconds per
allocation), and the request loop never touches the driver.

**Release**: on unregister, when the worker is reaped, and at shutdown. The release never
runs on the request loop: :class:`MappingReleaser` does it on its own thread, after the
worker's in-flight copies completed (the copies hold the imported memory), and never
while holding a lock that a transfer needs (upstream deadlocked in unregister holding the GIL
across a driver call that waited for a copy).

**Sharing**: the CUDA driver maps an allocation once per process however often it is
opened, and one ``cudaIpcCloseMemHandle`` unmaps it for every user, so the process-wide
:class:`MappingTable` counts references per allocation and closes it with the last one.
Several layers (or several workers' registrations of the same pool) share one mapping.

The device work is behind :class:`AllocationImporter`; the CUDA importer is
:class:`~lmcache_core.transfer.cuda_import.CudaIpcImporter`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from lmcache_core.transfer.cuda_handles import CudaTensorRecord

__all__ = [
    "AllocationImporter",
    "MappingReleaser",
    "MappingTable",
    "WorkerMappings",
]

logger = logging.getLogger("lmcache.transfer")


class AllocationImporter(Protocol):
    """Opens and closes exported allocations and builds tensors over them."""

    def key(self, record: CudaTensorRecord) -> Hashable:
        """What identifies the mapping ``record`` needs (records with one key share it)."""
        ...

    def open(self, record: CudaTensorRecord, ordinal: int) -> Any:
        """Map the allocation of ``record`` on device ``ordinal``; returns the mapping."""
        ...

    def tensor(self, mapping: Any, record: CudaTensorRecord, ordinal: int) -> torch.Tensor:
        """The layer tensor ``record`` describes, over ``mapping`` (no copy)."""
        ...

    def close(self, mapping: Any, record: CudaTensorRecord, ordinal: int) -> None:
        """Unmap (called once, when the last reference went)."""
        ...


@dataclass
class _Entry:
    mapping: Any
    record: CudaTensorRecord
    ordinal: int
    refs: int


class MappingTable:
    """Process-wide imported allocations, reference-counted by key (thread-safe).

    Args:
        importer: Does the device work.
    """

    def __init__(self, importer: AllocationImporter) -> None:
        self.importer = importer
        self._entries: dict[Hashable, _Entry] = {}
        self._lock = threading.Lock()

    def acquire(self, record: CudaTensorRecord, ordinal: int) -> tuple[Hashable, Any]:
        """Take a reference on the mapping ``record`` needs (opening it if it is the first).

        Raises:
            Exception: Whatever the importer raises (nothing is counted then).
        """
        key = self.importer.key(record)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                # Opened under the lock: two first users must not both open (the second
                # open of a raw handle in one process fails on CUDA).
                entry = _Entry(self.importer.open(record, ordinal), record, ordinal, 0)
                self._entries[key] = entry
            entry.refs += 1
            return key, entry.mapping

    def release(self, key: Hashable) -> None:
        """Drop a reference; the last one closes the mapping (errors are logged)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            entry.refs -= 1
            if entry.refs > 0:
                return
            del self._entries[key]
        try:
            self.importer.close(entry.mapping, entry.record, entry.ordinal)
        except Exception:
            # Teardown goes on for the other mappings; a failed unmap is worth a log line.
            logger.exception("closing an imported CUDA allocation failed")

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def references(self) -> int:
        """References held, all mappings together (for tests and ``/status``)."""
        with self._lock:
            return sum(e.refs for e in self._entries.values())


class WorkerMappings:
    """One worker's layer tensors: imported at first use, released once.

    Args:
        records: The registration's checked records, by layer.
        table: The process-wide table.
        resolve_ordinal: Maps the records' device UUID to the local ordinal (called at
            import, so an unknown GPU fails the first transfer with a clear message).
    """

    def __init__(
        self,
        records: Sequence[CudaTensorRecord],
        table: MappingTable,
        resolve_ordinal: Callable[[str], int],
    ) -> None:
        self.records = list(records)
        self._table = table
        self._resolve = resolve_ordinal
        self._keys: list[Hashable] = []
        self._tensors: list[torch.Tensor] | None = None
        self._released = False
        self._lock = threading.Lock()
        self.ordinal: int | None = None

    @property
    def imported(self) -> bool:
        """Whether the tensors are mapped now."""
        return self._tensors is not None

    @property
    def released(self) -> bool:
        """Whether :meth:`release` ran."""
        return self._released

    def tensors(self) -> list[torch.Tensor]:
        """The layer tensors, importing them on the first call.

        Raises:
            ValueError: Released already, or the worker's GPU is not visible here.
            Exception: An import failure (whatever was opened is released again).
        """
        with self._lock:
            if self._released:
                raise ValueError("the worker's KV cache was released (it unregistered)")
            if self._tensors is not None:
                return self._tensors
            uuids = {r.view.device_uuid for r in self.records}
            if len(uuids) != 1:
                raise ValueError(f"a worker's KV tensors must be on one GPU, got {sorted(uuids)}")
            ordinal = self._resolve(uuids.pop())
            tensors = []
            try:
                for record in self.records:
                    key, mapping = self._table.acquire(record, ordinal)
                    self._keys.append(key)
                    tensors.append(self._table.importer.tensor(mapping, record, ordinal))
            except BaseException:
                self._drop_keys()
                raise
            self.ordinal = ordinal
            self._tensors = tensors
            return tensors

    def release(self) -> None:
        """Drop the tensors and this worker's references. Idempotent."""
        with self._lock:
            if self._released:
                return
            self._released = True
            self._tensors = None
            self._drop_keys()

    def _drop_keys(self) -> None:
        keys, self._keys = self._keys, []
        for key in keys:
            self._table.release(key)


class MappingReleaser:
    """Releases workers' mappings on a background thread, after their copies completed.

    Args:
        drain_timeout: How long to wait for a worker's in-flight copies before releasing
            anyway (a copy that never completes means a dead device; logged).
    """

    def __init__(self, drain_timeout: float = 30.0) -> None:
        self._drain_timeout = drain_timeout
        self._queue: queue.SimpleQueue[
            tuple[WorkerMappings, Callable[[float], bool] | None, str] | None
        ] = queue.SimpleQueue()
        self._pending = 0
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="lmcache-cuda-release", daemon=True)
        self._thread.start()

    def release(
        self,
        mappings: WorkerMappings,
        drained: Callable[[float], bool] | None = None,
        why: str = "unregistered",
    ) -> None:
        """Release ``mappings`` soon; returns at once.

        Args:
            mappings: The worker's mappings.
            drained: Waits up to its argument (seconds) for the worker's in-flight copies;
                True once none is left.
            why: For the log (``"unregistered"``, ``"reaped"``, ``"shutdown"``).
        """
        with self._cond:
            self._pending += 1
        self._queue.put((mappings, drained, why))

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every requested release is done (True) or ``timeout`` passed."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Finish the queued releases, then stop."""
        self.wait_idle(timeout)
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            mappings, drained, why = item
            try:
                if drained is not None and not drained(self._drain_timeout):
                    logger.warning(
                        "a worker's copies did not complete within %.0f s; releasing its "
                        "KV mappings anyway (%s)",
                        self._drain_timeout,
                        why,
                    )
                mappings.release()
                logger.info("released a worker's CUDA KV mappings (%s)", why)
            except Exception:
                logger.exception("releasing a worker's CUDA KV mappings failed")
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()
