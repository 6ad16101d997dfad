"""One contiguous host-memory region backing the L1 tier.

Four backings:

* ``shm``: a POSIX shared-memory segment, ``/dev/shm/lmcache_l1_pool_<name>``, that
  engine processes on the same host map by name (the CPU transfer path).
* ``anonymous``: private anonymous memory, for ``--shm-name ""``.
* ``pinned``: private memory registered with CUDA (page-locked), for DMA to and
  from a GPU; every page is committed at start.
* ``devdax``: a Device-DAX character device (``/dev/daxX.Y``) or a file mapped
  shared (``--l1-devdax-path``), optionally behind a front of private DRAM (the
  reference's hybrid L1: DRAM first, the DAX mapping as overflow). Both parts are
  one contiguous address range, the DAX mapping placed at a fixed address right
  after the DRAM, so the first-fit allocator fills the DRAM before the DAX.

``shm`` and ``anonymous`` are lazy by nature: the kernel commits a page when it is
first touched, so a 100 GiB arena costs nothing until objects land in it. With
``populate=True`` every page is committed at start instead (no page faults on the
data path, and a clear error at start if the memory is not there).

We use :mod:`mmap` and :mod:`os` directly rather than
:mod:`multiprocessing.shared_memory`: the latter registers segments with the
resource tracker, which unlinks them behind our back when some process that
merely attached exits.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import stat
import uuid
import weakref
from pathlib import Path
from typing import Any, Literal

import torch

from lmcache_core.storage.errors import ArenaError, L1ClosedError

__all__ = ["SHM_PREFIX", "Arena", "ArenaError", "ArenaKind", "shm_segment_name"]

ArenaKind = Literal["shm", "anonymous", "pinned", "devdax"]

SHM_PREFIX = "lmcache_l1_pool_"
"""Every segment we create is named with this prefix; only such stale segments are unlinked."""

SHM_DIR = Path("/dev/shm")

PAGE_SIZE = mmap.PAGESIZE

# Not exported by Python 3.11's mmap module; the values are Linux's.
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)
_MAP_FIXED = 0x10
DAX_ALIGN = 2 << 20
"""Device-DAX maps in multiples of its alignment (2 MiB unless the device says otherwise):
the DAX part of a hybrid arena starts on such a boundary."""

logger = logging.getLogger("lmcache.storage")


def shm_segment_name(name: str | None) -> str:
    """The segment name for ``name``: the prefix is added when missing.

    Args:
        name: A name (with or without :data:`SHM_PREFIX`), or ``None`` for a new,
            unique one.

    Returns:
        ``lmcache_l1_pool_<name>``.

    Raises:
        ArenaError: The name is empty or holds a ``/`` or NUL.
    """
    if name is None:
        return f"{SHM_PREFIX}{uuid.uuid4().hex}"
    if not name or "/" in name or "\x00" in name:
        raise ArenaError(f"invalid shared-memory name {name!r}")
    full = name if name.startswith(SHM_PREFIX) else f"{SHM_PREFIX}{name}"
    if len(full) > 255:
        raise ArenaError(f"shared-memory name is longer than 255 characters: {full!r}")
    return full


def _unlink_segment(path: Path, owner_pid: int) -> None:
    # Registered with weakref.finalize: runs at close(), at garbage collection or at
    # interpreter exit, whichever comes first. A forked child that inherited the
    # arena must not remove the parent's segment.
    if os.getpid() != owner_pid:
        return
    path.unlink(missing_ok=True)


def _cudart() -> Any:
    return torch.cuda.cudart()  # type: ignore[no-untyped-call]  # untyped in torch


def _unpin(pointer: int, owner_pid: int) -> None:
    # Like _unlink_segment: at close(), garbage collection or exit. Views that
    # outlive it still work, as ordinary pageable memory.
    if os.getpid() == owner_pid:
        _cudart().cudaHostUnregister(pointer)


class Arena:
    """A contiguous region of ``size_bytes`` host memory, viewed as a uint8 tensor.

    Args:
        size_bytes: Size of the region (> 0).
        kind: ``shm``, ``anonymous`` or ``pinned`` (see the module docstring).
        name: ``shm`` only: the segment name; the prefix ``lmcache_l1_pool_`` is
            added when missing; ``None`` picks a unique one. A stale segment of
            that name (left by a crashed server) is unlinked first.
        populate: Commit every page now instead of on first touch.
        path: ``devdax`` only: the Device-DAX device or file to map. A file is
            created if missing and grown (allocated, not sparse) to the size it
            must hold; it is never deleted.
        dram_bytes: ``devdax`` only: bytes of private DRAM before the DAX part
            (0: the whole arena is the DAX mapping). The DAX part is then
            ``size_bytes - dram_bytes``; the DRAM part may grow by less than
            :data:`DAX_ALIGN` so that the DAX part starts aligned.

    Attributes:
        size_bytes: Size of the region.
        kind: The backing.
        shm_name: The segment name under /dev/shm (``None`` unless ``shm``).
        populated: Whether the pages were committed at start.

    Raises:
        ArenaError: Bad size or name, /dev/shm too small, ``pinned`` without
            CUDA, or a DAX path that cannot be opened, grown or mapped (named).
        OSError: The kernel refused the mapping.
    """

    def __init__(
        self,
        size_bytes: int,
        *,
        kind: ArenaKind = "shm",
        name: str | None = None,
        populate: bool = False,
        path: str | os.PathLike[str] | None = None,
        dram_bytes: int = 0,
    ) -> None:
        if size_bytes <= 0:
            raise ArenaError(f"arena size must be > 0, not {size_bytes}")
        if name is not None and kind != "shm":
            raise ArenaError(f"a name is only meaningful for kind 'shm', not {kind!r}")
        if (path is not None or dram_bytes) and kind != "devdax":
            raise ArenaError(f"a path is only meaningful for kind 'devdax', not {kind!r}")
        self.size_bytes = size_bytes
        self.kind: ArenaKind = kind
        self.shm_name: str | None = None
        self.devdax_path: Path | None = None
        self.dram_bytes = 0
        self.populated = False
        self._mmap: mmap.mmap | None = None
        self._tensor: torch.Tensor | None = None
        self._finalizer: weakref.finalize[..., Arena] | None = None
        if kind == "shm":
            self._open_shm(shm_segment_name(name), populate)
        elif kind == "anonymous":
            flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
            self._mmap = mmap.mmap(-1, size_bytes, flags=flags)
            self._tensor = torch.frombuffer(self._mmap, dtype=torch.uint8)
            if populate:
                self._populate()
        elif kind == "pinned":
            self._open_pinned()
        elif kind == "devdax":
            if path is None:
                raise ArenaError("a devdax arena needs the path of its device or file")
            if not 0 <= dram_bytes < size_bytes:
                raise ArenaError(f"dram_bytes must be in [0, {size_bytes}) bytes, not {dram_bytes}")
            self._open_devdax(Path(path), dram_bytes, populate)
        else:
            raise ArenaError(
                f"unknown arena kind {kind!r}; expected shm, anonymous, pinned or devdax"
            )

    def _open_shm(self, segment: str, populate: bool) -> None:
        path = SHM_DIR / segment
        if path.exists():
            if not segment.startswith(SHM_PREFIX):  # unreachable today; kept as the rule
                raise ArenaError(f"shared-memory segment {segment!r} exists and is not ours")
            logger.warning("unlinking stale shared-memory segment %s", path)
            path.unlink(missing_ok=True)
        if not populate:
            # A lazy tmpfs file larger than the free space in /dev/shm would make the
            # first touch past that space kill the server with SIGBUS; refuse now.
            stats = os.statvfs(SHM_DIR)
            free = stats.f_bavail * stats.f_frsize
            if free < self.size_bytes:
                raise ArenaError(
                    f"{SHM_DIR} has {free} bytes free, less than the {self.size_bytes} bytes "
                    "the L1 arena needs"
                )
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self.shm_name = segment
        self._finalizer = weakref.finalize(self, _unlink_segment, path, os.getpid())
        try:
            if populate:
                try:
                    # Allocates the tmpfs pages up front: ENOSPC now instead of SIGBUS later.
                    os.posix_fallocate(fd, 0, self.size_bytes)
                except OSError as exc:
                    raise ArenaError(
                        f"cannot allocate {self.size_bytes} bytes in {SHM_DIR}: {exc}"
                    ) from exc
            else:
                os.ftruncate(fd, self.size_bytes)
            self._mmap = mmap.mmap(fd, self.size_bytes, flags=mmap.MAP_SHARED)
        except BaseException:
            self._finalizer()
            raise
        finally:
            os.close(fd)  # the mapping keeps the segment alive; the fd is not needed
        self._tensor = torch.frombuffer(self._mmap, dtype=torch.uint8)
        if populate:
            self._populate()

    def _open_pinned(self) -> None:
        if not torch.cuda.is_available():
            raise ArenaError("a pinned arena needs CUDA, and torch sees no CUDA device")
        # Not torch.empty(pin_memory=True): torch's caching host allocator rounds
        # every block up to a power of two (100 GiB would pin 128 GiB). Registering
        # our own mapping pins exactly size_bytes, and commits every page.
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
        self._mmap = mmap.mmap(-1, self.size_bytes, flags=flags)
        self._tensor = torch.frombuffer(self._mmap, dtype=torch.uint8)
        pointer = int(self._tensor.data_ptr())
        code = int(_cudart().cudaHostRegister(pointer, self.size_bytes, 1))  # portable
        if code != 0:
            self._tensor = None
            self._mmap = None
            raise ArenaError(f"cudaHostRegister of {self.size_bytes} bytes failed: error {code}")
        self._finalizer = weakref.finalize(self, _unpin, pointer, os.getpid())
        self.populated = True

    def _open_devdax(self, path: Path, dram_bytes: int, populate: bool) -> None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ArenaError(f"cannot open the DAX path {path}: {exc.strerror}") from None
        try:
            device = stat.S_ISCHR(os.fstat(fd).st_mode)
            if dram_bytes:
                self._map_hybrid(fd, path, dram_bytes, device)
            else:
                self._grow_file(fd, path, self.size_bytes, device)
                self._mmap = self._map_dax(fd, path, self.size_bytes)
        finally:
            os.close(fd)  # the mapping keeps the device or file open
        self.devdax_path = path
        assert self._mmap is not None
        self._tensor = torch.frombuffer(self._mmap, dtype=torch.uint8)[: self.size_bytes]
        if populate:
            self._populate()

    @staticmethod
    def _grow_file(fd: int, path: Path, size: int, device: bool) -> None:
        """Allocate ``size`` bytes of a regular file (a device keeps its own size)."""
        if device or os.fstat(fd).st_size >= size:
            return
        try:
            # Allocated, not sparse: ENOSPC now instead of SIGBUS on first touch.
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            raise ArenaError(
                f"cannot allocate {size} bytes in the DAX file {path}: {exc.strerror}"
            ) from None

    @staticmethod
    def _map_dax(fd: int, path: Path, size: int) -> mmap.mmap:
        try:
            return mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
        except OSError as exc:
            raise ArenaError(
                f"cannot map {size} bytes of the DAX path {path}: {exc.strerror} (a Device-DAX "
                f"device maps in multiples of its alignment, usually {DAX_ALIGN >> 20} MiB)"
            ) from None

    def _map_hybrid(self, fd: int, path: Path, dram_bytes: int, device: bool) -> None:
        """DRAM, then the DAX mapping at a fixed address right after it: one range."""
        dax_bytes = self.size_bytes - dram_bytes
        # Reserve the whole range as private memory (with room to align the DAX part),
        # then map the DAX over its tail with MAP_FIXED. Unmapping the reservation
        # (when the last tensor goes) unmaps both.
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
        reservation = mmap.mmap(-1, self.size_bytes + DAX_ALIGN, flags=flags)
        probe = ctypes.c_char.from_buffer(reservation)
        base = ctypes.addressof(probe)
        del probe  # releases the buffer export
        front = -(-(base + dram_bytes) // DAX_ALIGN) * DAX_ALIGN - base
        self._grow_file(fd, path, dax_bytes, device)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        ]
        protection = mmap.PROT_READ | mmap.PROT_WRITE
        placed = libc.mmap(base + front, dax_bytes, protection, mmap.MAP_SHARED | _MAP_FIXED, fd, 0)
        if placed != base + front:
            error = ctypes.get_errno()
            raise ArenaError(
                f"cannot map {dax_bytes} bytes of the DAX path {path} after {front} bytes of "
                f"DRAM: {os.strerror(error)}"
            )
        self._mmap = reservation
        self.dram_bytes = front
        self.size_bytes = front + dax_bytes

    def _populate(self) -> None:
        """Commit every page now: MADV_POPULATE_WRITE, else write one byte per page."""
        assert self._mmap is not None
        try:
            self._mmap.madvise(_MADV_POPULATE_WRITE)
        except OSError:
            # Kernels before 5.14 lack MADV_POPULATE_WRITE: fault the pages in by
            # writing the first byte of each (the memory is zero, so 0 keeps it).
            tensor = self.tensor
            tensor[::PAGE_SIZE] = 0
        self.populated = True

    @property
    def tensor(self) -> torch.Tensor:
        """The whole region as a 1-D uint8 tensor (no copy).

        Raises:
            L1ClosedError: After :meth:`close`.
        """
        if self._tensor is None:
            raise L1ClosedError("the arena is closed")
        return self._tensor

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._tensor is None

    @property
    def path(self) -> Path | None:
        """The segment's path under /dev/shm (``None`` unless ``shm``)."""
        return SHM_DIR / self.shm_name if self.shm_name else None

    def data_ptr(self) -> int:
        """The address of the region's first byte in this process."""
        return int(self.tensor.data_ptr())

    def view(self, offset: int, nbytes: int) -> torch.Tensor:
        """``nbytes`` of the region from ``offset``, as a uint8 tensor (no copy).

        Raises:
            ValueError: The range is not inside the region.
            L1ClosedError: After :meth:`close`.
        """
        if offset < 0 or nbytes < 0 or offset + nbytes > self.size_bytes:
            raise ValueError(
                f"view [{offset}, {offset + nbytes}) is outside the arena of {self.size_bytes}"
            )
        return self.tensor[offset : offset + nbytes]

    def close(self) -> None:
        """Release the arena; idempotent.

        A shared-memory segment this arena created is unlinked at once (processes
        that mapped it keep their mapping; new ones can no longer open it). The
        memory itself is unmapped as soon as no tensor refers to it: views handed
        out earlier stay valid (they keep the mapping alive) rather than dangle,
        so closing with outstanding views is safe, it only delays the unmap.
        """
        if self._finalizer is not None:
            self._finalizer()
        # Never call mmap.close() here: torch.frombuffer does not hold a buffer
        # export, so close() would unmap under live views. Dropping our references
        # lets the last tensor that uses the mapping unmap it.
        self._tensor = None
        self._mmap = None

    def __enter__(self) -> Arena:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f" {self.shm_name or self.devdax_path or ''}".rstrip()
        state = " closed" if self.closed else ""
        return f"<Arena {self.kind}{where} {self.size_bytes} bytes{state}>"
