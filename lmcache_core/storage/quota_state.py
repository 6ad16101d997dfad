"""The quota table on disk (``--quota-state-file``), so a restart keeps every tenant's limits.

Without it the table lives in memory only, and a restarted server starts with no
quotas: under the allowlist rule an ``IsolatedLRU`` tier then evicts every salt
at its next cycle, including a persistent L2 tier's data that survived the
restart. With it the table is read at start-up (before any tier evicts) and
rewritten after every change.

The file is JSON, ``{"version": 1, "quotas": {"<salt>": <limit_gb>, ...}}`` (the
empty salt is written as ``""``). Writes go to a temporary file in the same
directory, are flushed to disk, then renamed over the old file, so a crash at
any moment leaves either the old table or the new one, never a torn file. A file
that cannot be read or does not parse is a start-up error naming the file: the
server never starts with an empty table in its place, which would evict data.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from lmcache_core.storage.keys import validate_cache_salt
from lmcache_core.storage.quota import check_limit_gb

VERSION = 1
"""The file format written (and the only one read)."""

MAX_FILE_BYTES = 16 * 1024 * 1024
"""Largest file read: 10,000 salts of at most a few hundred bytes each fit easily."""


class QuotaStateError(ValueError):
    """The quota state file cannot be read, or its contents are invalid."""


class QuotaStateFile:
    """Reads and atomically rewrites one quota state file.

    Args:
        path: The file; its directory must exist. A missing file is an empty table.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, float]:
        """The saved limits, ``salt -> limit_gb`` (empty if the file does not exist yet).

        Raises:
            QuotaStateError: The directory is missing, or the file is unreadable, too
                large, not JSON, of another version, or holds an invalid salt or limit.
        """
        if not self.path.parent.is_dir():
            raise QuotaStateError(f"{self.path}: the directory {self.path.parent} does not exist")
        try:
            with self.path.open("rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise QuotaStateError(f"{self.path}: cannot read it: {exc.strerror or exc}") from None
        if len(data) > MAX_FILE_BYTES:
            raise QuotaStateError(f"{self.path}: larger than {MAX_FILE_BYTES} bytes")
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise QuotaStateError(f"{self.path}: not valid JSON ({exc})") from None
        return self._parse(document)

    def _parse(self, document: object) -> dict[str, float]:
        if not isinstance(document, dict) or document.get("version") != VERSION:
            raise QuotaStateError(f'{self.path}: not a version {VERSION} quota file ("version")')
        quotas = document.get("quotas")
        if not isinstance(quotas, dict):
            raise QuotaStateError(f'{self.path}: "quotas" must be an object')
        limits: dict[str, float] = {}
        for salt, limit in quotas.items():
            try:
                limits[validate_cache_salt(salt)] = check_limit_gb(limit)
            except ValueError as exc:
                raise QuotaStateError(f"{self.path}: salt {salt!r}: {exc}") from None
        return limits

    def save(self, limits: Mapping[str, float]) -> None:
        """Replace the file with ``limits`` (atomically, durably).

        Raises:
            OSError: The file could not be written (the old one is left in place).
        """
        document = {"version": VERSION, "quotas": dict(sorted(limits.items()))}
        payload = json.dumps(document, indent=1).encode()
        directory = self.path.parent
        fd, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        # The rename is durable once the directory entry is.
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
