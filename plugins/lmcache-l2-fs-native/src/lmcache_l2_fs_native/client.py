"""``FsNativeClient``: upstream's native file-system client, in Python on a thread pool.

Upstream LMCache's ``fs_native`` adapter drives ``lmcache.lmcache_fs.LMCacheFSClient``,
a C++ worker pool that signals one eventfd. This client has the same shape, the
native connector contract of :mod:`lmcache_l2_native_plugin.native_client`, so the
same bridge (:class:`~lmcache_l2_native_plugin.native_bridge.NativeClientAdapter`)
turns it into an L2 adapter:

* ``submit_batch_set/get/exists/delete`` return a task id at once; the keys of a
  batch run one per pool task (``os.pwritev`` / ``os.preadv`` release the GIL, so
  the workers really overlap), and the last key to finish queues the batch's
  completion and signals the eventfd;
* a set writes ``<name>.tmp.<16 hex>`` (next to the final file, or in
  ``relative_tmp_dir``) and renames it into place, so a reader sees a whole file
  or none;
* file names are upstream's: the native key string ``model@rank@group@hash[@salt]``
  with ``0x`` before the rank, ``/`` in the model replaced by ``-SEP-`` and
  ``.data`` appended, so a directory written by either is read by the other;
* with ``use_odirect`` every read and write bypasses the page cache: a buffer that
  is block-aligned in address and size moves as is, any other through a per-thread
  aligned bounce buffer (the file is written padded, then truncated to the object's
  size, so the bytes on disk are the same either way). A file system that refuses
  O_DIRECT (tmpfs) is used buffered, with one log line;
* :meth:`list_keys` scans the directory at start, so the index survives a restart,
  and deletes the temporary files a crash left behind.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import mmap
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

logger = logging.getLogger("lmcache.l2.fs_native")

KEY_SEP = "@"
SLASH_REPLACEMENT = "-SEP-"
FILE_SUFFIX = ".data"
NAME_MAX = 255
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)
_TMP_NAME = re.compile(r"\.tmp(\.[0-9a-f]{16})?$")

Completion = tuple[int, bool, str, list[bool] | None]


def key_to_filename(key: str) -> str:
    """The file name upstream's ``fs_native`` stores the native key string ``key`` under.

    Raises:
        ValueError: ``key`` is not a native key string, or its model name contains
            ``-SEP-`` (its file would read back as another model).
    """
    parts = key.split(KEY_SEP)
    if len(parts) not in (4, 5) or not parts[0]:
        raise ValueError(f"not a native key string: {key!r}")
    if SLASH_REPLACEMENT in parts[0]:
        raise ValueError(f"model name {parts[0]!r} contains {SLASH_REPLACEMENT!r}")
    parts[0] = parts[0].replace("/", SLASH_REPLACEMENT)
    parts[1] = "0x" + parts[1]
    return KEY_SEP.join(parts) + FILE_SUFFIX


def filename_to_key(name: str) -> str | None:
    """The native key string of a file name (None unless it is a data file's name).

    The caller checks the string is canonical (``parse_native_key_name``).
    """
    if not name.endswith(FILE_SUFFIX):
        return None
    parts = name[: -len(FILE_SUFFIX)].split(KEY_SEP)
    if len(parts) not in (4, 5) or not parts[1].startswith("0x"):
        return None
    parts[0] = parts[0].replace(SLASH_REPLACEMENT, "/")
    parts[1] = parts[1][2:]
    return KEY_SEP.join(parts)


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a file being written (ours, ``.tmp.<hex>``, or upstream's ``.tmp``)."""
    return _TMP_NAME.search(name) is not None


def _address(view: memoryview) -> int:
    return int(np.frombuffer(view, dtype=np.uint8).ctypes.data) if view.nbytes else 0


def _advance(views: Sequence[memoryview], done: int) -> list[memoryview]:
    """What is left of ``views`` after the first ``done`` bytes moved."""
    left: list[memoryview] = []
    for view in views:
        if done >= view.nbytes:
            done -= view.nbytes
            continue
        left.append(view[done:])
        done = 0
    return left


def _window(parts: Sequence[memoryview], start: int, end: int) -> list[memoryview]:
    """The bytes ``[start, end)`` of ``parts`` laid end to end, as views into them."""
    window: list[memoryview] = []
    offset = 0
    for part in parts:
        low, high = max(start, offset), min(end, offset + part.nbytes)
        if low < high:
            window.append(part[low - offset : high - offset])
        offset += part.nbytes
    return window


def _pwrite_all(fd: int, parts: Sequence[memoryview]) -> None:
    """Write ``parts`` end to end from offset 0 (one ``pwritev`` when the kernel takes it all)."""
    offset, pending = 0, [part for part in parts if part.nbytes]
    while pending:
        wrote = os.pwritev(fd, pending, offset)
        offset += wrote
        pending = _advance(pending, wrote)


def _pread_all(fd: int, parts: Sequence[memoryview]) -> int:
    """Fill ``parts`` end to end from offset 0 until full or the file ends; bytes read."""
    offset, pending = 0, [part for part in parts if part.nbytes]
    while pending:
        got = os.preadv(fd, pending, offset)
        if got == 0:
            break
        offset += got
        pending = _advance(pending, got)
    return offset


class _Batch:
    """One submitted task: per-key results, filled by the workers."""

    def __init__(self, task_id: int, count: int) -> None:
        self.task_id = task_id
        self.results: list[bool] = [False] * count
        self.left = count
        self.lock = threading.Lock()


class FsNativeClient:
    """One file per key under ``base_path``, with batch calls that complete on an eventfd.

    Args:
        base_path: Directory of the data files (created if missing).
        num_workers: Threads doing the file I/O.
        relative_tmp_dir: Directory under ``base_path`` (same file system) for files
            being written; empty writes them next to the final file.
        use_odirect: Bypass the page cache on every read and write.
        read_ahead_size: Read in chunks of this many bytes with ``posix_fadvise``
            will-need hints for the next chunk (buffered reads only).
        stale_tmp_age_s: :meth:`list_keys` deletes temporary files at least this old
            (0: all; use a grace period when several servers share the directory).

    Raises:
        ValueError: A bad argument.
        OSError: The directories cannot be created or the eventfd opened.
    """

    def __init__(
        self,
        base_path: str | os.PathLike[str],
        *,
        num_workers: int = 4,
        relative_tmp_dir: str = "",
        use_odirect: bool = False,
        read_ahead_size: int | None = None,
        stale_tmp_age_s: float = 0.0,
    ) -> None:
        if num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        if read_ahead_size is not None and read_ahead_size <= 0:
            raise ValueError("read_ahead_size must be > 0")
        if Path(relative_tmp_dir).is_absolute():
            raise ValueError("relative_tmp_dir must be relative to base_path")
        self.base_path = Path(base_path)
        self.tmp_dir = self.base_path / relative_tmp_dir if relative_tmp_dir else self.base_path
        self.base_path.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.block_size = os.statvfs(self.base_path).f_bsize
        self.use_odirect = use_odirect and _O_DIRECT != 0
        self.read_ahead_size = read_ahead_size
        self.stale_tmp_age_s = stale_tmp_age_s
        self.odirect_ops = 0
        self.bounced_ops = 0
        self.buffered_ops = 0
        self.failed_keys = 0
        self.last_error = ""
        self._ids = itertools.count(1)
        self._done: list[Completion] = []
        self._done_lock = threading.Lock()
        self._local = threading.local()
        self._event_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._pool = ThreadPoolExecutor(num_workers, thread_name_prefix="lmcache-fs-native")
        self._closed = False

    # -- the native client contract --------------------------------------------------

    def event_fd(self) -> int:
        """The eventfd that becomes readable when a batch completes."""
        return self._event_fd

    def submit_batch_set(self, keys: list[str], buffers: list[memoryview]) -> int:
        """Write each buffer to its key's file (temporary file, then rename)."""
        return self._submit(keys, lambda i: self._set_one(keys[i], [buffers[i]]))

    def submit_batch_get(self, keys: list[str], buffers: list[memoryview]) -> int:
        """Read each key's file into its buffer; a file of another size is a miss."""
        return self._submit(keys, lambda i: self._get_one(keys[i], [buffers[i]]))

    def submit_batch_setv(self, keys: list[str], parts: list[list[memoryview]]) -> int:
        """Write each key's parts, end to end, to its file with ``pwritev`` (nothing joined)."""
        return self._submit(keys, lambda i: self._set_one(keys[i], parts[i]))

    def submit_batch_getv(self, keys: list[str], parts: list[list[memoryview]]) -> int:
        """Read each key's file across its parts with ``preadv``; another size is a miss."""
        return self._submit(keys, lambda i: self._get_one(keys[i], parts[i]))

    def submit_batch_exists(self, keys: list[str]) -> int:
        """Whether each key's file exists."""
        return self._submit(keys, lambda i: self._exists_one(keys[i]))

    def submit_batch_delete(self, keys: list[str]) -> int:
        """Delete each key's file; per key, whether it was there."""
        return self._submit(keys, lambda i: self._delete_one(keys[i]))

    def drain_completions(self) -> list[Completion]:
        """Every batch finished since the last call (the eventfd is reset first)."""
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._event_fd)
        with self._done_lock:
            done, self._done = self._done, []
        return done

    def list_keys(self) -> Iterator[tuple[str, int]]:
        """``(native key, file size)`` of every data file; deletes stale temporary files."""
        now = time.time()
        directories = [self.base_path]
        if self.tmp_dir.resolve() != self.base_path.resolve():
            directories.append(self.tmp_dir)
        for directory in directories:
            with os.scandir(directory) as entries:
                for entry in entries:
                    try:
                        info = entry.stat(follow_symlinks=False)
                        if not stat.S_ISREG(info.st_mode):
                            continue
                        if is_temp_name(entry.name):
                            if now - info.st_mtime >= self.stale_tmp_age_s:
                                os.unlink(entry.path)
                                logger.info("fs_native: deleted leftover %s", entry.path)
                            continue
                    except FileNotFoundError:
                        continue  # renamed or deleted by a concurrent writer
                    key = filename_to_key(entry.name) if directory is self.base_path else None
                    if key is not None:
                        yield key, info.st_size

    def close(self) -> None:
        """Finish the queued I/O, then close the eventfd."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True)
        os.close(self._event_fd)

    # -- batches ---------------------------------------------------------------------

    def _submit(self, keys: Sequence[str], one: Callable[[int], bool]) -> int:
        if self._closed:
            raise RuntimeError("the fs_native client is closed")
        batch = _Batch(next(self._ids), len(keys))
        if not keys:
            self._complete(batch)
            return batch.task_id
        for index in range(len(keys)):
            self._pool.submit(self._run_one, batch, index, one)
        return batch.task_id

    def _run_one(self, batch: _Batch, index: int, one: Callable[[int], bool]) -> None:
        try:
            result = one(index)
        except Exception as exc:  # noqa: BLE001 - one key's failure is that key's False, never the batch's
            self.failed_keys += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            logger.warning("fs_native: %s", self.last_error)
            result = False
        with batch.lock:
            batch.results[index] = result
            batch.left -= 1
            last = batch.left == 0
        if last:
            self._complete(batch)

    def _complete(self, batch: _Batch) -> None:
        with self._done_lock:
            self._done.append((batch.task_id, True, "", batch.results))
        with contextlib.suppress(OSError):  # closed under us: nobody is waiting any more
            os.eventfd_write(self._event_fd, 1)

    # -- one key ---------------------------------------------------------------------

    def path_of(self, key: str) -> Path:
        """The final path of the native key string ``key``."""
        return self.base_path / key_to_filename(key)

    def _set_one(self, key: str, parts: Sequence[memoryview]) -> bool:
        name = key_to_filename(key)
        if len(os.fsencode(name)) > NAME_MAX:
            raise OSError(errno.ENAMETOOLONG, "file name too long", name)
        tmp = self._temp_path(name)
        try:
            self._write(tmp, parts)
            os.replace(tmp, self.base_path / name)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return True

    def _get_one(self, key: str, parts: Sequence[memoryview]) -> bool:
        path = self.path_of(key)
        opened = self._open(path, os.O_RDONLY)
        if opened is None:
            return False
        direct, fd = opened
        try:
            if os.fstat(fd).st_size != sum(part.nbytes for part in parts):
                return False  # a torn, truncated or differently sized object: a miss
            if direct:
                return self._read_direct(fd, parts)
            self.buffered_ops += 1
            return self._read_buffered(fd, parts)
        finally:
            os.close(fd)

    def _exists_one(self, key: str) -> bool:
        try:
            return stat.S_ISREG(os.stat(self.path_of(key)).st_mode)
        except FileNotFoundError:
            return False

    def _delete_one(self, key: str) -> bool:
        try:
            self.path_of(key).unlink()
        except FileNotFoundError:
            return False
        return True

    # -- I/O ---------------------------------------------------------------------------

    def _temp_path(self, name: str) -> Path:
        suffix = f".tmp.{secrets.token_hex(8)}"
        while len(os.fsencode(name + suffix)) > NAME_MAX:
            name = name[:-1]
        return self.tmp_dir / (name + suffix)

    def _open(self, path: Path, flags: int) -> tuple[bool, int] | None:
        """Open with O_DIRECT when configured and accepted; None when the file is missing."""
        if self.use_odirect:
            try:
                return True, os.open(path, flags | _O_DIRECT, 0o644)
            except FileNotFoundError:
                return None
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.use_odirect = False  # e.g. tmpfs: the file system refuses O_DIRECT
                logger.info("fs_native: %s refuses O_DIRECT; using buffered I/O", path.parent)
        try:
            return False, os.open(path, flags, 0o644)
        except FileNotFoundError:
            return None

    def _aligned(self, parts: Sequence[memoryview]) -> bool:
        block = self.block_size
        return all(
            part.nbytes % block == 0 and _address(part) % block == 0
            for part in parts
            if part.nbytes
        )

    def _bounce(self, size: int) -> memoryview:
        """This thread's page-aligned scratch buffer, at least ``size`` bytes."""
        current: mmap.mmap | None = getattr(self._local, "bounce", None)
        if current is None or len(current) < size:
            # The old map closes once its last view is gone (closing it now could fail).
            current = mmap.mmap(-1, max(size, self.block_size))
            self._local.bounce = current
        return memoryview(current)[:size]

    def _padded(self, size: int) -> int:
        return -(-size // self.block_size) * self.block_size

    def _write(self, tmp: Path, parts: Sequence[memoryview]) -> None:
        opened = self._open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        if opened is None:
            raise FileNotFoundError(errno.ENOENT, "directory vanished", str(tmp.parent))
        direct, fd = opened
        try:
            if not direct:
                self.buffered_ops += 1
                _pwrite_all(fd, parts)
            elif self._aligned(parts):
                self.odirect_ops += 1
                _pwrite_all(fd, parts)
            else:
                # Whole blocks through an aligned copy, then cut the padding off.
                self.bounced_ops += 1
                size = sum(part.nbytes for part in parts)
                padded = self._padded(size)
                bounce = self._bounce(padded)
                offset = 0
                for part in parts:
                    bounce[offset : offset + part.nbytes] = part
                    offset += part.nbytes
                bounce[size:] = bytes(padded - size)
                _pwrite_all(fd, [bounce])
                os.ftruncate(fd, size)
        finally:
            os.close(fd)

    def _read_direct(self, fd: int, parts: Sequence[memoryview]) -> bool:
        size = sum(part.nbytes for part in parts)
        if self._aligned(parts):
            self.odirect_ops += 1
            return _pread_all(fd, parts) == size
        self.bounced_ops += 1
        bounce = self._bounce(self._padded(size))
        if _pread_all(fd, [bounce]) < size:
            return False
        offset = 0
        for part in parts:
            part[:] = bounce[offset : offset + part.nbytes]
            offset += part.nbytes
        return True

    def _read_buffered(self, fd: int, parts: Sequence[memoryview]) -> bool:
        size = sum(part.nbytes for part in parts)
        chunk = self.read_ahead_size or size or 1
        if self.read_ahead_size and hasattr(os, "posix_fadvise"):
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        done = 0
        while done < size:
            end = min(done + chunk, size)
            if self.read_ahead_size and end < size and hasattr(os, "posix_fadvise"):
                with contextlib.suppress(OSError):
                    os.posix_fadvise(fd, end, chunk, os.POSIX_FADV_WILLNEED)
            pending = _window(parts, done, end)
            position = done
            while pending:
                got = os.preadv(fd, pending, position)
                if got == 0:
                    return False  # shrank under us: never partial data
                position += got
                pending = _advance(pending, got)
            done = end
        return True
