"""``FsL2Adapter``: one file per key under a directory (the L2 adapter ``fs``).

File names are upstream LMCache's, so a store written with ``"format": "raw"`` is
byte-compatible with upstream's ``fs`` and ``fs_native`` adapters::

    <model, '/' replaced by '-SEP->@0x<kv_rank, 8 hex>@<group, hex>@<chunk hash, hex>[@<salt>].data

A store writes a temporary file (``<name>.tmp.<16 hex>``, next to the final file or
in ``relative_tmp_dir``) and renames it into place with :func:`os.replace`, so a
reader sees either the old complete file or the new complete one, never a partial
one. At start the directory is scanned to rebuild the index (key -> file size) and
the temporary files a crash left behind are deleted.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from lmcache_core.storage.keys import ObjectKey, validate_cache_salt
from lmcache_core.storage.l2.adapter import L2AdapterV1, ObjectFormat
from lmcache_core.storage.l2.context import DEFAULT_L2_ADAPTER_CONTEXT, L2AdapterContext
from lmcache_core.storage.l2.disk_limits import NO_DISK_LIMITS, DiskLimits
from lmcache_l2_fs.config import FSAdapterConfig

logger = logging.getLogger("lmcache.l2.fs")

KEY_SEP = "@"
SLASH_REPLACEMENT = "-SEP-"
FILE_SUFFIX = ".data"
NAME_MAX = 255
GIB = 1 << 30
SHARED_TMP_GRACE_S = 3600.0
"""On a shared directory, only temporary files older than this are deleted at start."""

_TMP_NAME = re.compile(r"\.tmp(\.[0-9a-f]{16})?$")
_HEX = re.compile(r"[0-9a-f]+")
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)


def object_key_to_filename(key: ObjectKey) -> str:
    """The file name upstream LMCache's ``fs`` adapters store ``key`` under."""
    model = key.model_name.replace("/", SLASH_REPLACEMENT)
    name = f"{model}{KEY_SEP}{key.kv_rank:#010x}{KEY_SEP}{key.object_group_id:x}"
    name += f"{KEY_SEP}{key.chunk_hash.hex()}"
    if key.cache_salt:
        name += f"{KEY_SEP}{key.cache_salt}"
    return name + FILE_SUFFIX


def filename_to_object_key(name: str) -> ObjectKey | None:
    """Parse a file name back to its key; None unless ``name`` is exactly a key's name.

    Only canonical names are accepted (lowercase hex, ``0x`` and 8 digits for the
    rank, a valid salt), so a parsed key always maps back to the same file.
    """
    if not name.endswith(FILE_SUFFIX):
        return None
    parts = name[: -len(FILE_SUFFIX)].split(KEY_SEP)
    if len(parts) not in (4, 5):
        return None
    model, rank, group, chunk = parts[:4]
    salt = parts[4] if len(parts) == 5 else ""
    if not model or not rank.startswith("0x") or not (len(parts) == 4 or salt):
        return None
    if not all(_HEX.fullmatch(text) for text in (rank[2:], group, chunk)):
        return None
    try:
        validate_cache_salt(salt)
        key = ObjectKey(
            chunk_hash=bytes.fromhex(chunk),
            model_name=model.replace(SLASH_REPLACEMENT, "/"),
            kv_rank=int(rank[2:], 16),
            object_group_id=int(group, 16),
            cache_salt=salt,
        )
    except ValueError:
        return None
    return key if object_key_to_filename(key) == name else None


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a file being written (this adapter's or upstream's ``.tmp``)."""
    return _TMP_NAME.search(name) is not None


def _byte_view(part: bytes | memoryview) -> memoryview:
    view = memoryview(part)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


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


def _window(views: Sequence[memoryview], start: int, end: int) -> list[memoryview]:
    """The bytes ``[start, end)`` of the concatenation of ``views``, as views of them."""
    window: list[memoryview] = []
    offset = 0
    for view in views:
        low, high = max(start - offset, 0), min(end - offset, view.nbytes)
        if low < high:
            window.append(view[low:high])
        offset += view.nbytes
    return window


def _readv_all(fd: int, views: Sequence[memoryview]) -> bool:
    """Fill ``views`` from ``fd``'s position; False at an early end of file."""
    pending = [view for view in views if view.nbytes]
    while pending:
        got = os.readv(fd, pending)
        if got == 0:
            return False
        pending = _advance(pending, got)
    return True


class FsL2Adapter(L2AdapterV1):
    """One file per key under ``base_path``.

    Args:
        base_path: Directory of the stored files (created if missing).
        relative_tmp_dir: Directory under ``base_path`` for files being written
            (must be on the same file system); empty writes them next to the final file.
        read_ahead_size: Read loads in chunks of this many bytes, with
            ``posix_fadvise`` hints (sequential, will-need for the next chunk).
        use_odirect: Write with O_DIRECT when every buffer is aligned to and sized in
            multiples of the file system's block size; buffered I/O otherwise, or when
            the file system refuses O_DIRECT.
        capacity_bytes: Capacity to report (0: unlimited). A single object larger than
            it is refused; eviction is the controllers' job.
        object_format: ``framed`` or ``raw`` (upstream-compatible bytes).
        num_workers: Threads running the blocking I/O.
        persist: Keep the files at close; False deletes the files this adapter indexes.
        stale_tmp_age_s: At start, delete leftover temporary files at least this old
            (0: all of them; use a grace period when several servers share the directory).
        disk_limits: The file system's watermark and minimum free space, checked at
            each admission (default: none).
    """

    def __init__(
        self,
        base_path: str | os.PathLike[str],
        *,
        relative_tmp_dir: str = "",
        read_ahead_size: int | None = None,
        use_odirect: bool = False,
        capacity_bytes: int = 0,
        object_format: ObjectFormat = "framed",
        num_workers: int = 4,
        persist: bool = True,
        stale_tmp_age_s: float = 0.0,
        disk_limits: DiskLimits = NO_DISK_LIMITS,
    ) -> None:
        if read_ahead_size is not None and read_ahead_size <= 0:
            raise ValueError("read_ahead_size must be > 0")
        if Path(relative_tmp_dir).is_absolute():
            raise ValueError("relative_tmp_dir must be relative to base_path")
        super().__init__(
            "fs",
            capacity_bytes=capacity_bytes,
            object_format=object_format,
            num_workers=num_workers,
        )
        self.base_path = Path(base_path)
        self.tmp_dir = self.base_path / relative_tmp_dir if relative_tmp_dir else None
        self.read_ahead_size = read_ahead_size
        self.use_odirect = use_odirect and _O_DIRECT != 0
        self.persist = persist
        self.stale_tmp_age_s = stale_tmp_age_s
        self.odirect_writes = 0
        self.buffered_writes = 0
        self._odirect_refused = False
        self.base_path.mkdir(parents=True, exist_ok=True)
        if self.tmp_dir is not None:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.block_size = os.statvfs(self.tmp_dir or self.base_path).f_bsize
        self.disk_limits = disk_limits
        self.room_unit = os.statvfs(self.base_path).f_frsize  # files take whole blocks
        room = disk_limits.room(self.base_path)
        if room == 0:
            logger.warning(
                "fs: %s is at its disk limits already (%s); stores are refused until space "
                "is freed",
                self.base_path,
                disk_limits,
            )

    # -- paths -----------------------------------------------------------------------

    def path_of(self, key: ObjectKey) -> Path:
        """The final path of ``key``'s file."""
        return self.base_path / object_key_to_filename(key)

    def _temp_path(self, name: str) -> Path:
        suffix = f".tmp.{secrets.token_hex(8)}"
        while len(os.fsencode(name + suffix)) > NAME_MAX:
            name = name[:-1]
        return (self.tmp_dir or self.base_path) / (name + suffix)

    # -- the adapter -----------------------------------------------------------------

    def _put(self, key: ObjectKey, parts: Sequence[bytes | memoryview]) -> None:
        if SLASH_REPLACEMENT in key.model_name:
            # Its file name would read back as another model (upstream's naming is lossy).
            raise ValueError(f"model name {key.model_name!r} contains {SLASH_REPLACEMENT!r}")
        views = [_byte_view(part) for part in parts]
        size = sum(len(view) for view in views)
        if self.capacity_bytes and size > self.capacity_bytes:
            raise ValueError(f"object of {size} bytes exceeds the capacity {self.capacity_bytes}")
        name = object_key_to_filename(key)
        if len(os.fsencode(name)) > NAME_MAX:
            raise OSError(errno.ENAMETOOLONG, "file name too long", name)
        final = self.base_path / name
        tmp = self._temp_path(name)
        try:
            if not self._write_odirect(tmp, views, size):
                self._write_buffered(tmp, views)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def _room_bytes(self) -> int | None:
        return self.disk_limits.room(self.base_path)

    def _exists(self, key: ObjectKey) -> bool:
        return self.path_of(key).is_file()

    def _get(self, key: ObjectKey, size: int) -> bytes | None:
        buffer = bytearray(size)
        if not self._get_into(key, [memoryview(buffer)]):
            return None
        # The base class only takes a memoryview of it: no copy into a bytes object.
        return cast(bytes, buffer)

    def _get_into(self, key: ObjectKey, parts: Sequence[memoryview]) -> bool:
        """Read the file straight into ``parts`` (scatter read: header, payload)."""
        size = sum(part.nbytes for part in parts)
        try:
            fd = os.open(self.path_of(key), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            if os.fstat(fd).st_size != size:
                return False  # a torn, truncated or differently sized object: a miss
            chunk = self.read_ahead_size or size or 1
            if self.read_ahead_size:
                self._advise(fd, 0, chunk, sequential=True)
            done = 0
            while done < size:
                end = min(done + chunk, size)
                if self.read_ahead_size and end < size:
                    self._advise(fd, end, chunk)
                if not _readv_all(fd, _window(parts, done, end)):
                    return False  # shrank under us: never partial data
                done = end
            return True
        finally:
            os.close(fd)

    def _remove(self, key: ObjectKey) -> bool:
        try:
            self.path_of(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def _close(self) -> None:
        if self.persist:
            return
        for key in self.keys():
            with contextlib.suppress(OSError):
                self._remove(key)

    def _known_objects(self) -> dict[ObjectKey, int]:
        known: dict[ObjectKey, int] = {}
        now = time.time()
        dirs = [self.base_path]
        if self.tmp_dir is not None and self.tmp_dir.resolve() != self.base_path.resolve():
            dirs.append(self.tmp_dir)
        for directory in dirs:
            with os.scandir(directory) as entries:
                for entry in entries:
                    try:
                        if not entry.is_file(follow_symlinks=False):
                            continue
                        stat = entry.stat(follow_symlinks=False)
                        if is_temp_name(entry.name):
                            if now - stat.st_mtime >= self.stale_tmp_age_s:
                                os.unlink(entry.path)
                                logger.info("fs: deleted leftover temporary file %s", entry.path)
                            continue
                        if directory is not self.base_path:
                            continue
                        key = filename_to_object_key(entry.name)
                        if key is not None:
                            known[key] = stat.st_size
                    except FileNotFoundError:
                        continue  # renamed or deleted by a concurrent writer
        return known

    def status(self) -> dict[str, Any]:
        """The base status plus the directory and the write paths taken."""
        status = super().status()
        status.update(
            base_path=str(self.base_path),
            high_watermark=self.disk_limits.high_watermark,
            min_free_bytes=self.disk_limits.min_free_bytes,
            odirect_writes=self.odirect_writes,
            buffered_writes=self.buffered_writes,
        )
        return status

    # -- I/O ---------------------------------------------------------------------------

    def _aligned(self, views: Sequence[memoryview]) -> bool:
        block = self.block_size
        for view in views:
            if len(view) % block:
                return False
            if np.frombuffer(view, dtype=np.uint8).ctypes.data % block:
                return False
        return True

    def _write_odirect(self, tmp: Path, views: Sequence[memoryview], size: int) -> bool:
        """Write with O_DIRECT; False (nothing left behind) when it does not apply."""
        if not self.use_odirect or self._odirect_refused or size == 0:
            return False
        if size % self.block_size or not self._aligned(views):
            return False
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_DIRECT, 0o644)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self._odirect_refused = True  # e.g. tmpfs: the file system refuses O_DIRECT
            logger.info("fs: %s refuses O_DIRECT; using buffered I/O", tmp.parent)
            return False
        try:
            self._write_all(fd, views)
        except OSError as exc:
            os.close(fd)
            tmp.unlink()
            if exc.errno != errno.EINVAL:
                raise
            return False
        os.close(fd)
        self.odirect_writes += 1
        return True

    def _write_buffered(self, tmp: Path, views: Sequence[memoryview]) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            self._write_all(fd, views)
        finally:
            os.close(fd)
        self.buffered_writes += 1

    @staticmethod
    def _write_all(fd: int, views: Sequence[memoryview]) -> None:
        # One gathering write for header and payload; a short write resumes where it stopped.
        pending = [view for view in views if view.nbytes]
        while pending:
            pending = _advance(pending, os.writev(fd, pending))

    @staticmethod
    def _advise(fd: int, offset: int, length: int, *, sequential: bool = False) -> None:
        if not hasattr(os, "posix_fadvise"):
            return
        with contextlib.suppress(OSError):
            if sequential:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)


def build_fs(
    config: FSAdapterConfig, context: L2AdapterContext = DEFAULT_L2_ADAPTER_CONTEXT
) -> FsL2Adapter:
    """Build the ``fs`` adapter from its validated ``--l2-adapter`` JSON.

    Args:
        config: The adapter's configuration.
        context: The adapter context (unused: this adapter needs no server setting).
    """
    del context
    return FsL2Adapter(
        config.base_path,
        relative_tmp_dir=config.relative_tmp_dir,
        read_ahead_size=config.read_ahead_size,
        use_odirect=config.use_odirect,
        capacity_bytes=int(config.max_capacity_gb * GIB),
        object_format=config.format,
        persist=config.persist_enabled,
        stale_tmp_age_s=SHARED_TMP_GRACE_S if config.shared else 0.0,
        disk_limits=config.disk_limits(),
    )
