"""``BlockFile``: positioned I/O on a block device or a preallocated regular file.

Writes go out with :func:`os.pwritev` straight from the caller's buffers and reads
land with :func:`os.preadv` straight in the caller's buffers: no intermediate
``bytes`` object on either path. Each transfer is split into pieces of at most
``max_io`` bytes when a limit is set, and a short transfer is resumed where it
stopped (a read that reaches the end of the device fails).

With ``direct`` the device is opened with ``O_DIRECT``, which needs the buffer
address, the length and the offset aligned to ``align``. Offsets are the caller's
duty (the slot layout keeps them aligned). Buffers that are aligned already go
straight to the kernel; anything else goes through a page-aligned bounce buffer,
padded with zeros to the next multiple of ``align``, which costs one copy. At most
``bounce_limit`` bounce buffers of ``bounce_bytes`` exist at a time (larger
transfers, such as index checkpoints, take a one-off buffer of their own).

The file is locked with ``flock(LOCK_EX)`` while open: two servers writing the same
device would corrupt each other's slots, so the second one fails to start.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from lmcache_core.storage.l2.disk_limits import NO_DISK_LIMITS, DiskLimits

O_DIRECT: int = getattr(os, "O_DIRECT", 0)
IOV_MAX = 1024
"""The most buffers one ``preadv``/``pwritev`` call takes on Linux."""


def round_up(value: int, align: int) -> int:
    """``value`` rounded up to a multiple of ``align`` (a power of two)."""
    return (value + align - 1) & ~(align - 1)


def address_of(view: memoryview) -> int:
    """The memory address of the first byte of ``view``."""
    return int(np.frombuffer(view, dtype=np.uint8).ctypes.data)


def aligned_buffer(nbytes: int, align: int) -> memoryview:
    """A zeroed, writable buffer of ``nbytes`` whose address is a multiple of ``align``."""
    raw = mmap.mmap(-1, nbytes + align)  # page-aligned already; the slack covers larger aligns
    view = memoryview(raw)
    skew = -address_of(view) % align
    return view[skew : skew + nbytes]


class BlockFile:
    """An open block device or regular file, locked for this process.

    Args:
        path: The block device or regular file.
        size_bytes: Bytes to use from offset 0; 0 uses the whole device or the
            existing file. A regular file that does not exist is created and
            preallocated to this size; a smaller existing one is extended.
        direct: Open with ``O_DIRECT``.
        align: I/O alignment in bytes (a power of two; used with ``direct``).
        max_io: Largest single transfer in bytes (None: no limit).
        bounce_bytes: Size of the pooled bounce buffers (``direct`` only).
        bounce_limit: Most pooled bounce buffers at a time.
        disk_limits: The watermark and minimum free space of the file system
            holding a regular file: creating or extending the file must keep
            them (checked before it is allocated). A block device refuses any.

    Raises:
        ValueError: The path is neither a block device nor a regular file, does not
            exist and no size is given, is smaller than ``size_bytes`` (a device),
            refuses ``O_DIRECT``, is locked by another process, is a block device
            with disk limits, or cannot grow to ``size_bytes`` within them.
    """

    def __init__(
        self,
        path: str,
        *,
        size_bytes: int = 0,
        direct: bool = False,
        align: int = 4096,
        max_io: int | None = None,
        bounce_bytes: int = 0,
        bounce_limit: int = 1,
        disk_limits: DiskLimits = NO_DISK_LIMITS,
    ) -> None:
        if direct and not O_DIRECT:
            raise ValueError("O_DIRECT is not available on this platform; set use_odirect false")
        self.path = path
        self.direct = direct
        self.align = align
        self.max_io = max_io
        self._bounce_bytes = bounce_bytes
        self._bounce_slots = threading.BoundedSemaphore(bounce_limit)
        self._idle_bounces: list[memoryview] = []
        self._bounce_lock = threading.Lock()
        self._created = False
        self.disk_limits = disk_limits
        self.fd, self.is_block_device = self._open(Path(path), size_bytes)
        try:
            self._lock_exclusively()
            if self.is_block_device and disk_limits.enabled:
                raise ValueError(
                    f"{path} is a block device: high_watermark and min_free_bytes limit the file "
                    "system under a file, and a device's space is all the cache's; remove them "
                    "and size the cache with capacity_bytes"
                )
            self.size_bytes = self._size(size_bytes)
        except BaseException:
            os.close(self.fd)
            if self._created:  # do not leave a half-made file behind
                Path(path).unlink(missing_ok=True)
            raise

    # -- opening ---------------------------------------------------------------------------

    def _open(self, path: Path, size_bytes: int) -> tuple[int, bool]:
        flags = os.O_RDWR | (O_DIRECT if self.direct else 0)
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            if not size_bytes:
                raise ValueError(
                    f"{path} does not exist; give capacity_bytes to create a file of that size"
                ) from None
            flags |= os.O_CREAT | os.O_EXCL
            is_block = False
            self._created = True
        else:
            if not (stat.S_ISBLK(mode) or stat.S_ISREG(mode)):
                raise ValueError(f"{path} is neither a block device nor a regular file")
            is_block = stat.S_ISBLK(mode)
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            if self.direct and exc.errno == errno.EINVAL:
                raise ValueError(
                    f"{path}: the file system refuses O_DIRECT; set use_odirect false"
                ) from exc
            raise
        return fd, is_block

    def _size(self, size_bytes: int) -> int:
        if self.is_block_device:
            device_bytes = os.lseek(self.fd, 0, os.SEEK_END)
            if size_bytes > device_bytes:
                raise ValueError(
                    f"{self.path} holds {device_bytes} bytes, fewer than capacity_bytes "
                    f"({size_bytes})"
                )
            return size_bytes or device_bytes
        current = os.fstat(self.fd).st_size
        if not size_bytes:
            if not current:
                raise ValueError(f"{self.path} is empty; give capacity_bytes to size it")
            return current
        if current < size_bytes:
            self._preallocate(size_bytes)
        return size_bytes

    @property
    def directory(self) -> Path:
        """The directory holding the file (where the file system is measured)."""
        return Path(self.path).resolve().parent

    def allocated_bytes(self) -> int:
        """Bytes of disk the file occupies now (a sparse file: fewer than its size)."""
        return os.fstat(self.fd).st_blocks * 512

    def fully_allocated(self) -> bool:
        """Whether writing anywhere in the file can take no further disk space."""
        return self.is_block_device or self.allocated_bytes() >= self.size_bytes

    def _preallocate(self, size_bytes: int) -> None:
        """Reserve the file's blocks now, so a full disk fails here rather than mid-store.

        With disk limits, the growth must fit in their room first: a cache file
        that would take the file system past its watermark or minimum free space
        is refused, not created.
        """
        room = self.disk_limits.room(self.directory)
        growth = size_bytes - self.allocated_bytes()
        if room is not None and growth > room:
            raise ValueError(
                f"{self.path}: allocating {size_bytes} bytes needs {growth} more on its file "
                f"system, which has {room} within its limits (high_watermark "
                f"{self.disk_limits.high_watermark:g}, min_free_bytes "
                f"{self.disk_limits.min_free_bytes}); lower capacity_bytes or free space"
            )
        try:
            os.posix_fallocate(self.fd, 0, size_bytes)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise ValueError(
                    f"{self.path}: cannot preallocate {size_bytes} bytes: {exc}"
                ) from exc
            os.ftruncate(self.fd, size_bytes)  # the file system cannot: a sparse file

    def _lock_exclusively(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"{self.path} is in use by another raw_block adapter (locked)"
            ) from None

    # -- I/O -----------------------------------------------------------------------------------

    def write(self, offset: int, views: Sequence[memoryview]) -> None:
        """Write the concatenation of ``views`` at ``offset``.

        With ``direct``, unaligned data is padded with zeros to a multiple of ``align``.
        """
        if not self.direct or self._aligned(views):
            self._transfer(os.pwritev, offset, views, "write")
            return
        total = sum(view.nbytes for view in views)
        padded = round_up(total, self.align)
        with self._bounce(padded) as bounce:
            position = 0
            for view in views:
                bounce[position : position + view.nbytes] = view
                position += view.nbytes
            bounce[total:padded] = bytes(padded - total)
            self._transfer(os.pwritev, offset, [bounce[:padded]], "write")

    def read_into(self, offset: int, views: Sequence[memoryview]) -> None:
        """Fill ``views`` in order with the bytes starting at ``offset``.

        Raises:
            OSError: The device ended before every view was filled.
        """
        if not self.direct or self._aligned(views):
            self._transfer(os.preadv, offset, views, "read")
            return
        total = sum(view.nbytes for view in views)
        padded = round_up(total, self.align)
        with self._bounce(padded) as bounce:
            self._transfer(os.preadv, offset, [bounce[:padded]], "read")
            position = 0
            for view in views:
                view[:] = bounce[position : position + view.nbytes]
                position += view.nbytes

    def sync(self) -> None:
        """Make the written data durable (``fdatasync``)."""
        os.fdatasync(self.fd)

    def close(self) -> None:
        """Unlock and close the device (closing twice is harmless)."""
        if self.fd >= 0:
            os.close(self.fd)  # closing releases the flock
            self.fd = -1
        with self._bounce_lock:
            self._idle_bounces.clear()

    def _aligned(self, views: Sequence[memoryview]) -> bool:
        return all(
            view.nbytes % self.align == 0 and address_of(view) % self.align == 0 for view in views
        )

    @contextlib.contextmanager
    def _bounce(self, nbytes: int) -> Iterator[memoryview]:
        if nbytes > self._bounce_bytes:
            yield aligned_buffer(nbytes, self.align)  # rare and large: not pooled
            return
        with self._bounce_slots:
            with self._bounce_lock:
                buffer = (
                    self._idle_bounces.pop()
                    if self._idle_bounces
                    else aligned_buffer(self._bounce_bytes, self.align)
                )
            try:
                yield buffer
            finally:
                with self._bounce_lock:
                    self._idle_bounces.append(buffer)

    def _transfer(
        self,
        call: Callable[[int, Sequence[memoryview], int], int],
        offset: int,
        views: Sequence[memoryview],
        what: str,
    ) -> None:
        """Move every byte of ``views`` with ``call`` (pwritev or preadv), resuming short ones."""
        pending = [view for view in views if view.nbytes]
        limit = self.max_io or (1 << 62)
        while pending:
            batch: list[memoryview] = []
            budget = limit
            for view in pending[:IOV_MAX]:
                if budget <= 0:
                    break
                piece = view if view.nbytes <= budget else view[:budget]
                batch.append(piece)
                budget -= piece.nbytes
            done = call(self.fd, batch, offset)
            if done <= 0:
                raise OSError(errno.EIO, f"{self.path}: {what} stopped at offset {offset}")
            offset += done
            while done:
                head = pending[0]
                if head.nbytes <= done:
                    done -= head.nbytes
                    pending.pop(0)
                else:
                    pending[0] = head[done:]
                    done = 0
