"""Per-``cache_salt`` quotas: the limits the ``IsolatedLRU`` policy enforces.

The :class:`QuotaManager` is a thread-safe table ``cache_salt -> limit``, set
at run time over the HTTP quota API. It lives in memory and, with a
:class:`QuotaStore` (``--quota-state-file``, see
:mod:`lmcache_core.storage.quota_state`), is saved after every change and
restored at start-up, so a restart keeps the limits. A salt without an entry has
an effective limit of 0 bytes (allowlist semantics): a tier that enforces quotas
evicts all of its data at its next eviction cycle.

The manager also knows the tiers (L1, each L2 adapter), how many bytes each
holds per salt, and whether each enforces the limits (its eviction policy is
isolated), so the API can report usage and say honestly when no tier enforces
anything.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from lmcache_core.storage.keys import validate_cache_salt

GIB = 1024**3
"""A "GB" of the quota API is a GiB."""

MAX_QUOTAS = 10_000
"""Most salts the table holds: every resource is bounded."""

MAX_LIMIT_GB = float(1024**3)
"""The largest limit accepted (1 EiB), so byte counts stay machine-sized."""

DEFAULT_SALT_NAME = "_default"
"""How the empty salt is written in the quota API's paths and listings."""


class QuotaTableFull(Exception):
    """A new salt would exceed :data:`MAX_QUOTAS` entries."""


def salt_from_path(name: str) -> str:
    """The salt a quota API path segment names (``_default`` is the empty salt).

    Raises:
        ValueError: The salt is invalid (forbidden characters, too long).
    """
    return "" if name == DEFAULT_SALT_NAME else validate_cache_salt(name)


def salt_to_path(salt: str) -> str:
    """How the API writes a salt: the empty salt as ``_default``."""
    return salt or DEFAULT_SALT_NAME


def check_limit_gb(value: object) -> float:
    """Validate a ``limit_gb`` from a request; returns it as a float.

    Raises:
        ValueError: Not a number (booleans and strings are not), NaN or infinite,
            negative, or above :data:`MAX_LIMIT_GB`.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"limit_gb must be a number, not {type(value).__name__}")
    try:
        limit = float(value)
    except OverflowError:  # an integer too large for a float
        raise ValueError("limit_gb must be finite") from None
    if not math.isfinite(limit):
        raise ValueError("limit_gb must be finite")
    if limit < 0:
        raise ValueError("limit_gb must be >= 0")
    if limit > MAX_LIMIT_GB:
        raise ValueError(f"limit_gb must be <= {MAX_LIMIT_GB:.0f}")
    return limit


@dataclass(frozen=True)
class QuotaLimit:
    """One salt's quota.

    Attributes:
        limit_gb: The limit as set (GiB), echoed back unchanged.
        limit_bytes: The limit in bytes, rounded down.
    """

    limit_gb: float
    limit_bytes: int


def _entry(limit_gb: float) -> QuotaLimit:
    """A validated limit as a table entry."""
    return QuotaLimit(limit_gb, int(limit_gb * GIB))


@dataclass(frozen=True)
class QuotaTier:
    """A tier whose bytes the quota API reports.

    Attributes:
        name: ``l1``, or ``l2[<index>]:<adapter type>``.
        usage: Returns the tier's bytes per salt (must be thread-safe).
        enforcing: Whether the tier's eviction policy enforces the limits.
    """

    name: str
    usage: Callable[[], Mapping[str, int]]
    enforcing: bool


class QuotaStore(Protocol):
    """Where the table is saved after each change (``--quota-state-file``)."""

    def save(self, limits: Mapping[str, float]) -> None:
        """Replace the saved table with ``limits`` (``salt -> limit_gb``).

        Raises:
            OSError: It could not be saved; the change is then not applied.
        """


class QuotaManager:
    """The in-memory quota table, and where to read per-salt usage.

    Thread-safe: routes write it, eviction controllers read it through
    :meth:`limit_bytes` under their own locks (this lock is taken last and never
    held while calling out, so there is no lock-order problem).

    Args:
        max_entries: Most salts the table holds.
        store: Saves the table after each change; None keeps it in memory only.
    """

    def __init__(self, max_entries: int = MAX_QUOTAS, store: QuotaStore | None = None) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, not {max_entries}")
        self.max_entries = max_entries
        self.store = store
        self._lock = threading.Lock()
        # Writers take this one first, so saves happen in the order of the changes.
        self._write_lock = threading.Lock()
        self._limits: dict[str, QuotaLimit] = {}
        self._tiers: list[QuotaTier] = []

    @property
    def persistent(self) -> bool:
        """Whether changes are saved (and survive a restart)."""
        return self.store is not None

    def restore(self, limits: Mapping[str, float]) -> None:
        """Load a saved table (at start-up, before any tier evicts); nothing is saved.

        Raises:
            ValueError: An invalid salt or limit, or more salts than ``max_entries``.
        """
        restored = {validate_cache_salt(s): _entry(check_limit_gb(v)) for s, v in limits.items()}
        if len(restored) > self.max_entries:
            count, most = len(restored), self.max_entries
            raise ValueError(f"{count} salts, more than the table holds ({most})")
        with self._lock:
            self._limits = restored

    def _commit(self, limits: dict[str, QuotaLimit]) -> None:
        """Save ``limits`` (when persistent), then make them the table (under the write lock).

        Raises:
            OSError: Saving failed; the table is unchanged.
        """
        if self.store is not None:
            self.store.save({salt: entry.limit_gb for salt, entry in limits.items()})
        with self._lock:
            self._limits = limits

    # -- limits -------------------------------------------------------------------------

    def set_limit(self, cache_salt: str, limit_gb: float) -> QuotaLimit:
        """Set (or replace) a salt's limit.

        Raises:
            ValueError: Invalid salt or limit.
            QuotaTableFull: A new salt and the table is full.
            OSError: The table could not be saved; nothing changed.
        """
        validate_cache_salt(cache_salt)
        entry = _entry(check_limit_gb(limit_gb))
        with self._write_lock:
            limits = self.limits()
            if cache_salt not in limits and len(limits) >= self.max_entries:
                raise QuotaTableFull(f"the quota table is full ({self.max_entries} salts)")
            limits[cache_salt] = entry
            self._commit(limits)
        return entry

    def get(self, cache_salt: str) -> QuotaLimit | None:
        """The salt's quota, or None when it has none."""
        with self._lock:
            return self._limits.get(cache_salt)

    def remove(self, cache_salt: str) -> bool:
        """Forget a salt's quota (its limit becomes 0); True if it had one.

        Raises:
            OSError: The table could not be saved; nothing changed.
        """
        with self._write_lock:
            limits = self.limits()
            if limits.pop(cache_salt, None) is None:
                return False
            self._commit(limits)
            return True

    def limits(self) -> dict[str, QuotaLimit]:
        """A snapshot of every quota."""
        with self._lock:
            return dict(self._limits)

    def limit_bytes(self, cache_salt: str) -> int:
        """The salt's limit in bytes; 0 without a quota (the ``QuotaLimits`` protocol)."""
        entry = self._limits.get(cache_salt)  # one dict read is atomic: no lock needed
        return entry.limit_bytes if entry is not None else 0

    # -- tiers and usage ----------------------------------------------------------------

    def add_tier(
        self, name: str, usage: Callable[[], Mapping[str, int]], *, enforcing: bool
    ) -> None:
        """Register a tier (at start-up, in cascade order: L1 first).

        Raises:
            ValueError: A tier of that name was added already.
        """
        with self._lock:
            if any(tier.name == name for tier in self._tiers):
                raise ValueError(f"quota tier {name!r} was added already")
            self._tiers.append(QuotaTier(name, usage, enforcing))

    @property
    def tiers(self) -> list[QuotaTier]:
        """The registered tiers, in order."""
        with self._lock:
            return list(self._tiers)

    @property
    def enforced_by(self) -> list[str]:
        """Names of the tiers that enforce the limits (empty: none does)."""
        return [tier.name for tier in self.tiers if tier.enforcing]

    def usage_by_tier(self) -> dict[str, dict[str, int]]:
        """Every tier's bytes per salt (a snapshot per tier)."""
        # Called outside our lock: a tier's usage takes that tier's own lock.
        return {tier.name: dict(tier.usage()) for tier in self.tiers}

    @staticmethod
    def compared_usage(
        cache_salt: str, usage: Mapping[str, Mapping[str, int]], enforcing: list[str]
    ) -> int:
        """The usage a salt's limit is compared with: its largest in any enforcing tier.

        Each enforcing tier keeps the salt under the limit on its own, so the
        figure that matters is the fullest of them. Where no tier enforces, the
        largest over all tiers is reported instead.
        """
        names = enforcing or list(usage)
        return max((usage[name].get(cache_salt, 0) for name in names if name in usage), default=0)
