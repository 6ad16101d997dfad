"""The eviction policy contract between the L1 manager and policy plugins.

A policy only *orders* keys; it never frees anything. The L1 manager (and later
each L2 eviction controller) tells it what happened, in batches, and asks it for
candidates when memory must be reclaimed. The manager decides which candidates
may actually go (never a read-locked or staged object), frees them, and reports
each one back with :meth:`EvictionPolicy.on_removed`.

Every call comes from one thread at a time (the L1 manager calls the policy
under its own lock), so a policy needs no locking of its own, and must never call
back into the manager.

Policies are plugins (``LRU``, ``noop``, ...). A policy spec's factory receives an
:class:`EvictionSettings`: ``spec.factory(settings)``.

A policy may also be *isolated* (:class:`IsolatedEvictionPolicy`, ``IsolatedLRU``):
it keeps one order per ``cache_salt`` and knows each salt's quota. The controllers
recognise it and, in every eviction cycle, evict each salt that reached its quota's
watermark from that salt's own order (:func:`quota_eviction_targets`), before the
tier-wide watermark eviction that protects the capacity.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from lmcache_core.storage.keys import ObjectKey

if TYPE_CHECKING:
    from lmcache_core.config.eviction import EvictionConfig


@runtime_checkable
class EvictionPolicy(Protocol):
    """What the L1 manager needs from an eviction policy.

    Keys arrive in batches: the chunks of one request, in prefix order (chunk 0
    first). A policy that keeps prefixes evicts the later chunks of a batch
    before the earlier ones, because a chunk is useless without its prefix.
    """

    def on_stored(self, keys: Sequence[ObjectKey]) -> None:
        """Start tracking the keys of one request just made resident, in prefix order."""

    def on_accessed(self, keys: Sequence[ObjectKey]) -> None:
        """Note a lookup hit or a retrieve of tracked keys, in prefix order.

        Keys the policy does not track are ignored.
        """

    def on_removed(self, keys: Sequence[ObjectKey]) -> None:
        """Stop tracking keys that were deleted or evicted; unknown keys are ignored."""

    def candidates(self) -> Iterator[ObjectKey]:
        """Tracked keys in eviction order: the first one should go first.

        The caller may stop early and skip keys it cannot evict (locked ones).
        Once it stops iterating it calls :meth:`on_removed` for the keys it
        evicted, so the iteration must not depend on the live structure staying
        unchanged afterwards (iterate over a snapshot, or use
        :func:`iter_candidates`, which even tolerates removals between two
        ``next()`` calls). The caller never resumes an iterator after calling
        another method of the policy.
        """


@runtime_checkable
class QuotaLimits(Protocol):
    """Where an isolated policy reads per-salt limits (the server's ``QuotaManager``)."""

    def limit_bytes(self, cache_salt: str) -> int:
        """The salt's limit in bytes; 0 for a salt without a quota (allowlist semantics)."""


@runtime_checkable
class IsolatedEvictionPolicy(EvictionPolicy, Protocol):
    """An :class:`EvictionPolicy` that also orders each ``cache_salt`` on its own.

    :meth:`EvictionPolicy.candidates` still gives one order over every key, for
    the tier-wide watermark eviction that protects the capacity; the methods
    below serve the per-salt quota eviction. The same threading rules apply.
    """

    def salt_candidates(self, cache_salt: str) -> Iterator[ObjectKey]:
        """The salt's tracked keys in eviction order (same iteration rules as ``candidates``)."""

    def limit_bytes(self, cache_salt: str) -> int:
        """The salt's quota in bytes; 0 when it has none (its data must all go)."""


def quota_eviction_targets(
    policy: IsolatedEvictionPolicy,
    bytes_by_salt: Mapping[str, int],
    trigger_watermark: float,
    eviction_ratio: float,
) -> dict[str, int]:
    """Bytes each salt must free in this eviction cycle of one tier.

    A salt with bytes in the tier and ``bytes >= trigger_watermark * limit``
    frees ``eviction_ratio`` of its bytes, and at least enough to fall below
    ``trigger_watermark * limit`` (so one cycle enforces a lowered quota);
    a salt with limit 0 (no quota) frees everything.

    Args:
        policy: Supplies each salt's limit.
        bytes_by_salt: The tier's bytes per salt.
        trigger_watermark: Fraction of the limit that triggers eviction.
        eviction_ratio: Fraction of the salt's bytes freed when triggered.

    Returns:
        Salt to bytes to free (> 0), for the salts that must evict.
    """
    targets: dict[str, int] = {}
    for salt, used in bytes_by_salt.items():
        if used <= 0:
            continue
        limit = policy.limit_bytes(salt)
        if limit <= 0:
            targets[salt] = used
            continue
        threshold = trigger_watermark * limit
        if used < threshold:
            continue
        # The largest byte count that does not trigger is ceil(threshold) - 1.
        keep = max(math.ceil(threshold) - 1, 0)
        targets[salt] = min(used, max(math.ceil(eviction_ratio * used), used - keep))
    return targets


@dataclass(frozen=True)
class EvictionSettings:
    """What a policy factory receives: ``spec.factory(settings)``.

    Attributes:
        trigger_watermark: Usage ratio (0..1) of ``capacity_bytes`` above which
            the controller evicts (``--eviction-trigger-watermark``).
        eviction_ratio: Fraction (0..1) of ``capacity_bytes`` freed per
            eviction round (``--eviction-ratio``): bytes, not keys.
        capacity_bytes: The capacity of the tier the policy serves (the final
            L1 size, not the lazily grown part; or an L2 adapter's capacity).
        quotas: The per-salt limits an isolated policy enforces (the server's
            quota manager); None where there is none, and ignored by others.
    """

    trigger_watermark: float
    eviction_ratio: float
    capacity_bytes: int
    quotas: QuotaLimits | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.trigger_watermark <= 1.0:
            raise ValueError(f"trigger_watermark must be in [0, 1], not {self.trigger_watermark}")
        if not 0.0 <= self.eviction_ratio <= 1.0:
            raise ValueError(f"eviction_ratio must be in [0, 1], not {self.eviction_ratio}")
        if self.capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, not {self.capacity_bytes}")

    @classmethod
    def from_config(
        cls, config: EvictionConfig, capacity_bytes: int, quotas: QuotaLimits | None = None
    ) -> EvictionSettings:
        """Settings from the ``Eviction Policy`` flag group, the tier's capacity and quotas."""
        return cls(
            trigger_watermark=config.eviction_trigger_watermark,
            eviction_ratio=config.eviction_ratio,
            capacity_bytes=capacity_bytes,
            quotas=quotas,
        )


def iter_candidates(order: Mapping[ObjectKey, object], chunk: int = 32) -> Iterator[ObjectKey]:
    """Yield the keys of ``order`` front to back, tolerating removals in between.

    A plain ``iter(dict)`` raises once the dict changes, and a full snapshot costs
    O(n) even when the caller needs only the first few keys. This takes small
    snapshots of the live front instead (doubling their size), skips keys it
    already yielded and keys removed since the snapshot, so the caller may call
    ``on_removed`` between two ``next()`` calls. Keys moved or added meanwhile
    are yielded at most once.

    Args:
        order: The policy's ordered keys, first = evict first (a dict or
            ``OrderedDict``; only iteration and membership are used).
        chunk: Size of the first snapshot.

    Yields:
        Keys still in ``order``, each at most once.
    """
    yielded: set[ObjectKey] = set()
    size = max(1, chunk)
    while True:
        snapshot: list[ObjectKey] = []
        # Rescan from the front: the keys yielded before and not removed (the
        # caller skipped them, e.g. locked ones) are passed over cheaply.
        for key in order:
            if key not in yielded:
                snapshot.append(key)
                if len(snapshot) == size:
                    break
        if not snapshot:
            return
        for key in snapshot:
            if key in order and key not in yielded:
                yielded.add(key)
                yield key
        size *= 2
