"""The keys a running server accepts, re-read when a key file changes.

Rotation needs no restart: write the new key to a file the server reads (write
a temporary file and rename it over the old one, so no reader ever sees half a
key), or add the new key in a second ``--api-key-file`` first and empty the old
one out later. At most once per :data:`CHECK_INTERVAL_SECONDS`, the next check
of a presented key looks at every key file's identity (inode, size, modification
time) and loads them all again when one changed. A reload that fails (a file
missing, empty or of several lines) keeps the keys accepted so far, logs the
reason once and is counted: a half-done rotation never locks every client out,
nor lets everyone in.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lmcache_core.security.key_sources import KeySourceError, KeySources, load_keys

logger = logging.getLogger("lmcache.security")

CHECK_INTERVAL_SECONDS = 1.0
"""How often the key files are looked at (a stat per file, on the next check)."""

Signature = tuple[tuple[int, int, int] | None, ...]


@dataclass
class AuthStats:
    """What the key checks did, for ``/status`` and ``/metrics``.

    Attributes:
        rejected: Requests refused for a missing or invalid key, by transport
            (``zmq``, ``http``).
        reloads: Times the key files were loaded again after a change.
        reload_failures: Reloads that failed (the previous keys stayed).
    """

    rejected: dict[str, int] = field(default_factory=dict)
    reloads: int = 0
    reload_failures: int = 0


def _signature(sources: KeySources) -> Signature:
    result: list[tuple[int, int, int] | None] = []
    for path in sources.files:
        try:
            info = os.stat(path)
        except OSError:
            result.append(None)
        else:
            result.append((info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(result)


class ApiKeyRing:
    """Checks presented keys against the configured ones, in constant time per key.

    Args:
        sources: Where the keys come from.
        check_interval: Seconds between looks at the key files.
        clock: Monotonic clock (a test may pass its own).

    Raises:
        KeySourceError: A key file cannot be used at construction (start-up
            fails then, with the reason).
    """

    def __init__(
        self,
        sources: KeySources,
        *,
        check_interval: float = CHECK_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sources = sources
        self.stats = AuthStats()
        self._interval, self._clock = check_interval, clock
        self._lock = threading.Lock()
        self._signature = _signature(sources)
        self._keys = self._encode(load_keys(sources))
        self._next_check = clock() + check_interval
        self._failed_signature: Signature | None = None

    @classmethod
    def disabled(cls) -> ApiKeyRing:
        """A ring with no keys: every check passes (authentication is off)."""
        return cls(KeySources())

    @staticmethod
    def _encode(keys: tuple[str, ...]) -> tuple[bytes, ...]:
        return tuple(dict.fromkeys(key.encode("utf-8") for key in keys))

    @property
    def enabled(self) -> bool:
        """Whether keys are required (some key source is configured)."""
        return self.sources.configured

    @property
    def key_count(self) -> int:
        """How many distinct keys are accepted now."""
        return len(self._keys)

    def accepts(self, presented: bytes | str | None) -> bool:
        """Whether ``presented`` is one of the accepted keys (``True`` when disabled).

        Every accepted key is compared, whatever matched, so the time taken does
        not tell which key (or which prefix) was close.
        """
        if not self.sources.configured:
            return True
        if self.sources.files and self._clock() >= self._next_check:
            self._maybe_reload()
        if presented is None:
            return False
        token = presented.encode("utf-8") if isinstance(presented, str) else presented
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(token, key)
        return matched

    def reject(self, transport: str) -> None:
        """Count one refused request on ``transport``."""
        with self._lock:
            self.stats.rejected[transport] = self.stats.rejected.get(transport, 0) + 1

    def rejections(self) -> dict[str, int]:
        """A copy of the refusal counts by transport."""
        with self._lock:
            return dict(self.stats.rejected)

    def _maybe_reload(self) -> None:
        with self._lock:
            now = self._clock()
            if now < self._next_check:
                return  # another thread just looked
            self._next_check = now + self._interval
            signature = _signature(self.sources)
            if signature in (self._signature, self._failed_signature):
                return
            try:
                keys = load_keys(self.sources)
            except KeySourceError as exc:
                self._failed_signature = signature
                self.stats.reload_failures += 1
                logger.error("API keys not reloaded, the previous keys stay accepted: %s", exc)
                return
            self._keys, self._signature, self._failed_signature = (
                self._encode(keys),
                signature,
                None,
            )
            self.stats.reloads += 1
            logger.info("API keys reloaded: %d key(s) accepted", len(self._keys))

    def status(self) -> dict[str, object]:
        """JSON-ready summary (never a key)."""
        with self._lock:
            return {
                "enabled": self.enabled,
                "keys": len(self._keys),
                "key_files": [str(path) for path in self.sources.files],
                "rejected": dict(self.stats.rejected),
                "reloads": self.stats.reloads,
                "reload_failures": self.stats.reload_failures,
            }

    def __repr__(self) -> str:
        return f"ApiKeyRing(enabled={self.enabled}, keys={len(self._keys)})"
