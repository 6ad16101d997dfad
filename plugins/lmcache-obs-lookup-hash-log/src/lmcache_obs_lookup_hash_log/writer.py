"""Rotating JSONL files in one directory, bounded in size, age and count.

Names are ``lookup_hashes_<UTC YYYYMMDD_HHMMSS>_<6-digit seq>.jsonl``: the time the
file was opened and a sequence number, so two files opened in the same second
still differ and sort in opening order. Before each line is written the current
file is rotated when it is at least ``rotation_interval_s`` old or at least
``max_size`` bytes long (a file may therefore end one line past ``max_size``).
At most ``max_files`` files are kept; the oldest (by modification time, files
already there at start-up included) are deleted.

A write error (full disk, directory removed, permissions) is counted and logged
(at most one warning per :data:`WARN_INTERVAL_SECONDS`) and never raised: the
lookup that produced the line has been answered long ago, and the next line
tries again with a fresh file.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger("lmcache.observability.lookup_hash_log")

PREFIX = "lookup_hashes_"
SUFFIX = ".jsonl"
NAME_PATTERN = re.compile(r"^lookup_hashes_(\d{8}_\d{6})_(\d{6})\.jsonl$")
"""File names this writer creates and, at start-up, recognises as its own."""

SEQ_MODULUS = 1_000_000
MAX_NAME_ATTEMPTS = 1000
"""Names tried per rotation before giving up (each taken name bumps the sequence)."""
WARN_INTERVAL_SECONDS = 10.0


def file_name(opened_at: float, seq: int) -> str:
    """The name of a file opened at ``opened_at`` (epoch seconds) with sequence ``seq``."""
    stamp = datetime.fromtimestamp(opened_at, UTC).strftime("%Y%m%d_%H%M%S")
    return f"{PREFIX}{stamp}_{seq % SEQ_MODULUS:06d}{SUFFIX}"


class RotatingJsonlWriter:
    """Writes one line at a time to rotating files; never raises on a write error.

    Args:
        directory: Where the files go (created when missing).
        rotation_interval_s: Rotate a file once it is this old (seconds, > 0).
        max_size: Rotate a file once it holds this many bytes (>= 1).
        max_files: Keep at most this many files (>= 1), the current one included.
        clock: Wall-clock time source (epoch seconds); tests inject their own.

    Raises:
        OSError: The directory cannot be created or is not writable (start-up
            must fail then: the operator asked for the log).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        rotation_interval_s: float,
        max_size: int,
        max_files: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if rotation_interval_s <= 0 or max_size < 1 or max_files < 1:
            raise ValueError(
                "rotation_interval_s must be > 0, max_size and max_files >= 1; got "
                f"{rotation_interval_s}, {max_size}, {max_files}"
            )
        self.directory = Path(directory)
        self.rotation_interval_s = rotation_interval_s
        self.max_size = max_size
        self.max_files = max_files
        self.clock = clock
        self.directory.mkdir(parents=True, exist_ok=True)
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise PermissionError(f"{self.directory} is not writable")
        self.lines_written = 0
        self.bytes_written = 0
        self.write_errors = 0
        self.files_deleted = 0
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._opened_at = 0.0
        self._size = 0
        self._last_warning: float | None = None
        self._files: deque[Path] = deque(self._existing_files())
        self._seq = self._next_seq()

    # -- discovery -------------------------------------------------------------------

    def _existing_files(self) -> list[Path]:
        """Files of an earlier run, oldest first (by modification time, then name)."""
        found: list[tuple[float, str, Path]] = []
        for entry in os.scandir(self.directory):
            if NAME_PATTERN.match(entry.name) and entry.is_file(follow_symlinks=False):
                try:
                    found.append((entry.stat().st_mtime, entry.name, Path(entry.path)))
                except OSError:
                    continue  # removed meanwhile
        return [path for _, _, path in sorted(found)]

    def _next_seq(self) -> int:
        """One past the highest sequence number on disk (so names keep sorting)."""
        seqs = [int(m.group(2)) for p in self._files if (m := NAME_PATTERN.match(p.name))]
        return (max(seqs) + 1) % SEQ_MODULUS if seqs else 0

    @property
    def files(self) -> list[Path]:
        """The files kept, oldest first (the current one last)."""
        return list(self._files)

    @property
    def current_path(self) -> Path | None:
        """The file lines go to now (None before the first line or after an error)."""
        return self._path

    # -- writing ---------------------------------------------------------------------

    def write_line(self, line: bytes) -> bool:
        """Append one line (``line`` must end with a newline) and flush it.

        Returns:
            True when the line reached the file; False after a write error (counted
            and logged).
        """
        try:
            if self._needs_rotation():
                self._rotate()
            assert self._file is not None
            self._file.write(line)
            self._file.flush()
        except OSError as exc:
            self._failed(exc)
            return False
        self._size += len(line)
        self.lines_written += 1
        self.bytes_written += len(line)
        return True

    def _needs_rotation(self) -> bool:
        if self._file is None:
            return True
        age = self.clock() - self._opened_at
        return age >= self.rotation_interval_s or self._size >= self.max_size

    def _rotate(self) -> None:
        self._close_file()
        now = self.clock()
        for attempt in range(MAX_NAME_ATTEMPTS):
            path = self.directory / file_name(now, self._seq)
            self._seq = (self._seq + 1) % SEQ_MODULUS
            try:
                # "x": never append to (or clobber) a file someone else wrote.
                handle = open(path, "xb")  # noqa: SIM115 - kept open across writes
                break
            except FileExistsError:
                if attempt == MAX_NAME_ATTEMPTS - 1:
                    raise
        self._file, self._path, self._opened_at, self._size = handle, path, now, 0
        self._files.append(path)
        self._prune()

    def _prune(self) -> None:
        """Delete the oldest files beyond ``max_files`` (never the current one)."""
        while len(self._files) > self.max_files:
            oldest = self._files.popleft()
            try:
                oldest.unlink()
                self.files_deleted += 1
            except FileNotFoundError:
                pass  # someone removed it already: it no longer counts
            except OSError as exc:
                self._warn(f"cannot delete old lookup-hash log {oldest}: {exc}")

    def _failed(self, exc: OSError) -> None:
        self.write_errors += 1
        self._warn(f"lookup-hash log write failed ({self.write_errors} failures so far): {exc}")
        # The next line starts a fresh file, which also works after the directory
        # was recreated or space was freed.
        self._close_file()

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if self._last_warning is None or now - self._last_warning >= WARN_INTERVAL_SECONDS:
            self._last_warning = now
            logger.warning("%s", message)

    def _close_file(self) -> None:
        handle, self._file, self._path = self._file, None, None
        if handle is not None:
            try:
                handle.close()
            except OSError as exc:  # the flush of an already failed file
                logger.debug("closing lookup-hash log: %s", exc)

    def close(self) -> None:
        """Close the current file."""
        self._close_file()
