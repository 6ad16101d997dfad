"""``DirectoryClient``: a native-style L2 client, one file per key, completions on an eventfd.

It shows the contract of :mod:`lmcache_l2_native_plugin.native_client` in pure
Python, the way a C++ connector would implement it: every ``submit_batch_*``
call queues one task and returns its id at once; worker threads do the file
I/O; each finished task is appended to a completion list and the ``eventfd`` is
incremented; ``drain_completions`` resets the eventfd, then hands the list over.
The ``native_plugin`` adapter adds everything else (object framing, pins,
usage, capacity).

Files are named after the key string, percent-quoted (model names may contain
``/``), and written to a temporary name first, then renamed, so a reader never
sees half a value.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

if TYPE_CHECKING:
    from lmcache_l2_native_plugin.native_client import (
        NativeL2Client,
        SupportsBatchDelete,
        SupportsEventFd,
        SupportsListKeys,
    )

SUFFIX = ".bin"
Result = tuple[int, bool, str, list[bool] | None]
_Task = tuple[int, str, list[str], list[memoryview] | None]


class DirectoryClient:
    """Values in files under ``path``, written and read by ``num_workers`` threads.

    Args:
        path: The directory (created if missing).
        num_workers: I/O threads.
        max_queued_tasks: Tasks waiting for a thread, at most; a submit beyond
            that raises instead of blocking the caller.
        use_eventfd: False leaves the client without an event fd, so the server
            re-polls it at ``--periodic-notifier-interval-ms``.
    """

    def __init__(
        self,
        path: str,
        num_workers: int = 2,
        max_queued_tasks: int = 1024,
        use_eventfd: bool = True,
    ) -> None:
        if num_workers < 1 or max_queued_tasks < 1:
            raise ValueError("num_workers and max_queued_tasks must be >= 1")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) if use_eventfd else None
        self._ids = itertools.count(1)
        self._queue: queue.Queue[_Task | None] = queue.Queue(max_queued_tasks)
        self._done: list[Result] = []
        self._lock = threading.Lock()
        self._closed = False
        self._workers = [
            threading.Thread(target=self._work, name=f"example-dir-{n}", daemon=True)
            for n in range(num_workers)
        ]
        for worker in self._workers:
            worker.start()

    # -- the native client contract ---------------------------------------------------

    def event_fd(self) -> int | None:
        """The eventfd signalled when a task completes (None without one)."""
        return self._efd

    def submit_batch_set(self, keys: Sequence[str], buffers: Sequence[memoryview]) -> int:
        """Write each buffer to its key's file."""
        return self._submit("set", keys, buffers)

    def submit_batch_get(self, keys: Sequence[str], buffers: Sequence[memoryview]) -> int:
        """Read each key's file into its buffer (a miss unless the sizes match)."""
        return self._submit("get", keys, buffers)

    def submit_batch_exists(self, keys: Sequence[str]) -> int:
        """Check which keys have a file."""
        return self._submit("exists", keys, None)

    def submit_batch_delete(self, keys: Sequence[str]) -> int:
        """Delete each key's file; the result says whether it was there."""
        return self._submit("delete", keys, None)

    def drain_completions(self) -> list[Result]:
        """Every task finished since the last call; resets the eventfd first."""
        if self._efd is not None:
            # Not signalled: nothing new, or a previous drain already took it.
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._efd)
        with self._lock:
            done, self._done = self._done, []
        return done

    def list_keys(self) -> Iterator[tuple[str, int]]:
        """``(key, size)`` of every stored value."""
        for entry in os.scandir(self.path):
            if entry.name.endswith(SUFFIX) and entry.is_file():
                yield unquote(entry.name[: -len(SUFFIX)]), entry.stat().st_size

    def close(self) -> None:
        """Finish the queued tasks, stop the threads and close the eventfd."""
        if self._closed:
            return
        self._closed = True
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join()
        if self._efd is not None:
            os.close(self._efd)

    # -- internals --------------------------------------------------------------------

    def _submit(self, op: str, keys: Sequence[str], buffers: Sequence[memoryview] | None) -> int:
        if self._closed:
            raise RuntimeError("DirectoryClient is closed")
        task_id = next(self._ids)
        views = list(buffers) if buffers is not None else None
        self._queue.put_nowait((task_id, op, list(keys), views))  # queue.Full when saturated
        return task_id

    def _file(self, key: str) -> Path:
        return self.path / (quote(key, safe="@") + SUFFIX)

    def _work(self) -> None:
        while (task := self._queue.get()) is not None:
            task_id, op, keys, buffers = task
            try:
                results = [
                    self._one(op, key, buffers[i] if buffers else None)
                    for i, key in enumerate(keys)
                ]
                outcome: Result = (task_id, True, "", results)
            except Exception as exc:  # noqa: BLE001 - reported to the bridge, which logs it
                outcome = (task_id, False, f"{type(exc).__name__}: {exc}", None)
            with self._lock:
                self._done.append(outcome)
            if self._efd is not None:
                os.eventfd_write(self._efd, 1)

    def _one(self, op: str, key: str, buffer: memoryview | None) -> bool:
        file = self._file(key)
        if op == "exists":
            return file.is_file()
        if op == "delete":
            return self._delete(file)
        assert buffer is not None
        return self._write(file, buffer) if op == "set" else self._read(file, buffer)

    @staticmethod
    def _delete(file: Path) -> bool:
        try:
            file.unlink()
        except FileNotFoundError:
            return False
        return True

    @staticmethod
    def _write(file: Path, buffer: memoryview) -> bool:
        tmp = file.with_name(f".{file.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(buffer)
        os.replace(tmp, file)  # atomic: readers see the old value or the new one
        return True

    @staticmethod
    def _read(file: Path, buffer: memoryview) -> bool:
        try:
            with file.open("rb") as handle:
                if os.fstat(handle.fileno()).st_size != buffer.nbytes:
                    return False  # another size: a miss, and the buffer stays as it was
                data = handle.read()
        except FileNotFoundError:
            return False
        if len(data) != buffer.nbytes:
            return False
        buffer[:] = data
        return True


if TYPE_CHECKING:

    def _conforms(
        client: DirectoryClient,
    ) -> tuple[NativeL2Client, SupportsEventFd, SupportsBatchDelete, SupportsListKeys]:
        # mypy checks here that the class offers the whole contract, optional parts included.
        return client, client, client, client
